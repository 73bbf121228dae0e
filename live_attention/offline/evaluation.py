"""``live-attention evaluate``: every map kind scored by the faithfulness measures, on one engine.

Map kinds: ``cls`` (the class token's attention in the last layer, heads mean-fused), ``rollout``,
``flow`` (attention flow), ``relevance`` (class-specific, Chefer et al. 2021) and ``random`` (the floor).
Each is scored by the pointing game (where object boxes are known: the demo scenes), the deletion and
insertion curves and their areas, and the cascading model-randomisation check
(:mod:`live_attention.core.faithfulness`). Runs on the caller's thread; everything is batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from live_attention import names
from live_attention.core import faithfulness as fth
from live_attention.core import maps
from live_attention.core.engine import AttentionEngine, Keep
from live_attention.core.flow import attention_flow_mixed
from live_attention.demo.synthetic import make_dataset
from live_attention.errors import UserError
from live_attention.io.video import IMAGE_EXTENSIONS, read_image

KINDS = names.EVALUATION_KINDS  # defined in names, so that evaluate --help needs no torch
KIND_NAMES = {
    names.CLS: "CLS attention, last layer",
    names.ROLLOUT: "attention rollout",
    names.FLOW: "attention flow",
    names.RELEVANCE: "class relevance (Chefer)",
    names.RANDOM: "random (floor)",
}


@dataclass(frozen=True)
class Item:
    """One image and what to explain in it: ``targets`` are (class, box or None); none means the model's top-1."""

    image: np.ndarray
    targets: tuple[tuple[int, tuple[int, int, int, int] | None], ...] = ()
    name: str = ""


def demo_items(n: int, seed: int = 1234, size: int = 64, num_targets: int = 2) -> list[Item]:
    """Synthetic demo scenes with ``num_targets`` shapes of different classes, each with its box."""
    images, labels, boxes = make_dataset(n, size, seed=seed, num_targets=num_targets)
    return [Item(img, tuple((int(c), _box(boxes[i, c])) for c in np.flatnonzero(labels[i])),
                 f"scene {i}") for i, img in enumerate(images)]


def _box(b: np.ndarray) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in b)
    return x0, y0, x1, y1


def folder_items(folder: str | Path, limit: int | None = None,
                 skipped: Callable[[Path, str], None] | None = None) -> list[Item]:
    """The images of a folder (sorted), each explained for the model's top-1 class (no boxes). An image
    that cannot be read is left out, and ``skipped(path, why)`` is told: a table over fewer images than
    the folder holds must not look like one over all of them."""
    d = Path(folder).expanduser()
    if not d.is_dir():
        raise UserError(f"--images {d}: not a folder")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    items = []
    for p in files:
        img = read_image(p)
        if img is not None:
            items.append(Item(img, (), p.name))
        elif skipped is not None:
            skipped(p, unreadable_reason(p))
    if not items:
        raise UserError(f"--images {d}: no readable images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return items


def unreadable_reason(path: Path) -> str:
    """Why :func:`read_image` found no picture in ``path``, in a few words."""
    try:
        with open(path, "rb") as fh:
            empty = not fh.read(1)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if empty:
        return "the file is empty"
    return "not a picture that can be decoded (damaged, or not the format its name says)"


@dataclass
class KindScore:
    pointing: float | None = None
    pointed: int = 0
    curves: dict[str, list[float]] = field(default_factory=dict)  # mean probability per step, per order
    areas: dict[str, float] = field(default_factory=dict)
    randomisation: dict[int, float] = field(default_factory=dict)  # blocks re-initialised (from the top) -> ρ


@dataclass
class Evaluation:
    model: str
    images: int
    pairs: int
    seconds: float
    kinds: dict[str, KindScore]
    cascade: tuple[int, ...]  # how many top blocks were re-initialised at each randomisation step


class Evaluator:
    """Computes every map kind for (image, class) pairs and scores them.

    Args:
        engine: the model (with a classifier: deletion curves follow a class's probability).
        kinds: which map kinds (default all).
        batch: images per forward pass.
        seed: for the random map and the re-initialised weights.
    """

    def __init__(self, engine: AttentionEngine, kinds: Sequence[str] = KINDS, batch: int = 128, seed: int = 0) -> None:
        if not engine.has_classifier:
            raise UserError(f"{engine.name} has no classifier: faithfulness follows a class's probability")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise UserError(f"unknown map kind {sorted(unknown)[0]!r}: use {', '.join(KINDS)}")
        self.engine, self.kinds, self.batch, self.seed = engine, tuple(kinds), batch, seed

    # ---------------------------------------------------------------------------------------------
    def _batches(self, n: int):
        for i in range(0, n, self.batch):
            yield slice(i, min(n, i + self.batch))

    def _logits(self, x: Tensor) -> Tensor:
        logits = self.engine.run(x, Keep.parts()).logits
        assert logits is not None  # the constructor checked that the model has a classifier
        return logits

    def _probability(self, targets: Tensor) -> Callable[[Tensor], Tensor]:
        eng = self.engine

        def fn(images: Tensor) -> Tensor:
            out = []
            for sl in self._batches(len(images)):
                logits = self._logits(images[sl])
                out.append(eng.probabilities(logits).gather(1, targets[sl, None].to(logits.device))[:, 0].cpu())
            return torch.cat(out)

        return fn

    def maps(self, x: Tensor, targets: Tensor, kinds: Sequence[str]) -> dict[str, Tensor]:
        """Each kind's patch map [M, P] for the pairs (``x`` [M, 3, H, W], ``targets`` [M])."""
        eng = self.engine
        out: dict[str, list[Tensor]] = {k: [] for k in kinds}
        g = torch.Generator().manual_seed(self.seed)
        for sl in self._batches(len(x)):
            xb = x[sl]
            agnostic = {names.CLS, names.ROLLOUT, names.FLOW} & set(kinds)
            if agnostic:
                run = eng.run(xb, Keep.parts(rows=(0,), fused="mean"))
                npf, rows, fused = run.num_prefix, run.rows, run.fused
                assert rows is not None and fused is not None  # what this Keep asked for
                if names.CLS in kinds:
                    out[names.CLS].append(rows[:, -1, :, 0, npf:].mean(1).cpu())
                if names.ROLLOUT in kinds:
                    out[names.ROLLOUT].append(maps.rollout_cls_from_fused(fused, num_prefix=npf)[:, -1].cpu())
                if names.FLOW in kinds:
                    mixed = maps.mix_fused(fused.float(), num_prefix=npf)
                    out[names.FLOW].append(attention_flow_mixed(mixed, npf).cpu())
            if names.RELEVANCE in kinds:
                out[names.RELEVANCE].append(eng.relevance(xb, targets[sl])[1].cpu())
            if names.RANDOM in kinds:
                p = (x.shape[-2] // eng.patch_size) * (x.shape[-1] // eng.patch_size)
                out[names.RANDOM].append(torch.rand(len(xb), p, generator=g))
        return {k: torch.cat(v) for k, v in out.items()}

    def run(self, items: Sequence[Item], cascade: Sequence[int] | None = None,
            progress: Callable[[str], None] | None = None) -> Evaluation:
        """Score every kind on ``items``. ``cascade``: the randomisation check re-initialises the top
        blocks cumulatively, as Adebayo et al. do, and measures ρ after each step (default: the top
        block, the top half, all blocks)."""
        t0 = time.perf_counter()
        say = progress or (lambda _m: None)
        eng = self.engine
        boxes: list = []
        x_all = torch.cat([eng.preprocess(it.image) for it in items])
        if len({tuple(t.shape) for t in x_all}) != 1:
            raise UserError("evaluate needs images of one input size: use the centre crop (no --full-frame)")
        top1 = torch.cat([self._logits(x_all[sl]).argmax(-1).cpu() for sl in self._batches(len(x_all))])
        idx, targets = [], []
        for i, it in enumerate(items):
            for cls, box in it.targets or ((int(top1[i]), None),):
                idx.append(i)
                targets.append(cls)
                boxes.append(box)
        xs = x_all[torch.tensor(idx)]
        t = torch.tensor(targets)
        grid = (xs.shape[-2] // eng.patch_size, xs.shape[-1] // eng.patch_size)
        say(f"maps for {len(idx)} (image, class) pairs")
        maps_ = self.maps(xs, t, self.kinds)
        prob = self._probability(t)
        scores: dict[str, KindScore] = {}
        # A patch's size in the pixels of the box coordinates (the scenes are made at the model's size).
        cell = (items[0].image.shape[1] / grid[1], items[0].image.shape[0] / grid[0])
        for kind in self.kinds:
            say(f"perturbation curves: {KIND_NAMES[kind]}")
            sc = KindScore()
            with_box = [j for j, b in enumerate(boxes) if b is not None]
            if with_box:
                hits = [fth.pointing_hit(maps_[kind][j], grid, boxes[j], cell) for j in with_box]
                sc.pointing, sc.pointed = float(np.mean(hits)), len(hits)
            for order in fth.ORDERS:
                curves = fth.perturbation_curves(prob, xs, maps_[kind], grid, eng.patch_size, order)
                sc.curves[order] = [round(float(v), 4) for v in curves.mean(0)]
                sc.areas[order] = float(fth.area(curves).mean())
            scores[kind] = sc
        steps = cascade_steps(eng.num_layers, cascade)
        learned = {k: v for k, v in maps_.items() if k != names.RANDOM}
        blocks = eng.family.blocks()
        saved = [{k: v.clone() for k, v in b.state_dict().items()} for b in blocks]
        try:
            done = 0
            for n in steps:
                say(f"model randomisation: top {n} of {eng.num_layers} blocks re-initialised")
                fth.reinitialise(blocks[len(blocks) - n : len(blocks) - done], self.seed + n)
                done = n
                after = self.maps(xs, t, list(learned))
                for kind in learned:
                    scores[kind].randomisation[n] = float(np.mean(fth.spearman(learned[kind], after[kind])))
        finally:
            for b, state in zip(blocks, saved, strict=True):
                b.load_state_dict(state)
        return Evaluation(eng.name, len(items), len(idx), time.perf_counter() - t0, scores, steps)


def cascade_steps(num_layers: int, cascade: Sequence[int] | None = None) -> tuple[int, ...]:
    """The randomisation cascade: the top block, the top half, all blocks (or the steps given)."""
    steps = cascade or (1, max(1, num_layers // 2), num_layers)
    return tuple(sorted({min(max(1, int(n)), num_layers) for n in steps}))


RANDOMISATION_FAILS = 0.5  # ρ above this after every block is re-initialised: the map ignores the weights


def table(ev: Evaluation) -> str:
    """The results as a Markdown table: one column per randomisation step."""
    steps = " | ".join(f"ρ, top {n} re-init." for n in ev.cascade)
    head = (f"| map | pointing game | deletion AUC (lower is better) | insertion AUC (higher is better) | {steps} |\n"
            f"|---|---|---|---|{'---|' * len(ev.cascade)}")
    rows = []
    for kind, sc in ev.kinds.items():
        point = f"{sc.pointing:.3f} ({sc.pointed})" if sc.pointing is not None else "n/a (no boxes)"
        rhos = " | ".join(f"{sc.randomisation[n]:.3f}" if n in sc.randomisation else "-" for n in ev.cascade)
        if sc.randomisation and sc.randomisation[max(sc.randomisation)] > RANDOMISATION_FAILS:
            rhos += " (does not change: fails)"
        rows.append(f"| {KIND_NAMES[kind]} | {point} | {sc.areas['deletion']:.3f} | {sc.areas['insertion']:.3f} "
                    f"| {rhos} |")
    return "\n".join([head, *rows])


# Each measure and its direction: +1 higher is better, -1 lower is better.
_MEASURES = (("deletion", -1), ("insertion", 1), ("pointing", 1))


def most_faithful(ev: Evaluation) -> str:
    """One sentence naming the map that wins the most measures (pointing, deletion, insertion). The
    random map is the floor, never a candidate: a measure counts for the best map only where it beats
    the floor; where the floor is as good as every map, the sentence says so, and when that holds on
    every measure, no map is called faithful."""
    kinds = [k for k in ev.kinds if k != names.RANDOM]
    if not kinds:
        return "Only the random floor was measured: add map kinds with --kinds."
    floor = ev.kinds.get(names.RANDOM)
    wins: dict[str, int] = dict.fromkeys(kinds, 0)
    floored: list[str] = []  # measures on which no map beat the random floor
    for measure, better in _MEASURES:
        measured = {k: _score(ev.kinds[k], measure) for k in kinds}
        scores = {k: v for k, v in measured.items() if v is not None}
        if not scores:
            continue
        best = max(scores, key=lambda k: better * scores[k])
        chance = _score(floor, measure) if floor is not None else None
        if chance is not None and better * scores[best] <= better * chance:
            floored.append(measure)
        else:
            wins[best] += 1
    total = sum(wins.values()) + len(floored)
    if not any(wins.values()):
        return (f"No map beat the random floor on any measure ({', '.join(floored)}): by these measures none of "
                f"them is faithful here.")
    best = max(wins, key=lambda k: wins[k])
    note = f"; the random floor beat every map on {' and '.join(floored)}" if floored else ""
    return f"Most faithful by these measures: {KIND_NAMES[best]} (best on {wins[best]} of {total}{note})."



def _score(sc: KindScore | None, measure: str) -> float | None:
    if sc is None:
        return None
    return sc.pointing if measure == "pointing" else sc.areas.get(measure)
