"""``live-attention evaluate --temporal``: how much each map kind flickers, and what smoothing costs.

Four clips, from the demo scene (which knows each shape's motion) or from a video:

* **still + jitter**: one frame shaken by hand-held jitter (a random shift of up to 4 px every frame)
  with camera noise (σ = 4 grey levels); **noise alone**: the same frame with the noise only;
* **moving**: the moving scene (the demo at a CPU model's live rate of 10 results a second; a video's
  own frames), with its motion: exact for the demo (:meth:`~live_attention.demo.synthetic.DemoScene.motion`),
  OpenCV's DIS optical flow with a forward-backward check for a video;
* **lag**: one target moving fast (the demo; a video's moving clip again).

Each map kind is shown raw, through the motion-compensated filter
(:class:`~live_attention.core.temporal.TemporalFilter`, what ``--smooth on`` shows) and through plain
exponential moving averages at α = 0.5, 0.3 and 0.2 (the frontier to beat). Measures
(:mod:`live_attention.core.temporal`): flicker on the still clips, correlation with the raw map of the
same frame, motion-compensated consistency and warping error on the moving clip, the peak's lag; and
what smoothing costs: deletion and insertion AUC and the pointing game of raw and smoothed maps
(:mod:`live_attention.core.faithfulness`). Runs on the caller's thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from live_attention import names
from live_attention.core import faithfulness as fth
from live_attention.core import temporal as tmp
from live_attention.core.engine import AttentionEngine, Keep
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings, Result
from live_attention.demo.synthetic import DemoScene
from live_attention.errors import UserError

KINDS = names.TEMPORAL_KINDS
KIND_NAMES = {
    names.CLS: "CLS attention, last layer",
    names.ROLLOUT: "attention rollout",
    names.RELEVANCE: "class relevance (Chefer)",
    names.ENTROPY: "patch entropy, last layer",
    names.NORMS: "token norms, last layer",
}
EMA_ALPHAS = (0.5, 0.3, 0.2)
JITTER_PX = 4.0
NOISE_SIGMA = 4.0
DEMO_FPS = 10.0  # results a second of a CPU model live: the demo's moving clip is sampled at this rate
LAG_SPEEDUP = 4.0  # the lag clip plays the demo this much faster, so that a frame of lag is measurable

Box = tuple[int, int, int, int]
Motion = tuple[np.ndarray, np.ndarray]  # pixel flow to the previous frame [H, W, 2], valid [H, W]


@dataclass
class Clip:
    """One test clip: frames (BGR), their times in seconds, and what is known of them: the motion to
    the previous frame (None for the first) and the targets' boxes (frame pixels)."""

    name: str
    frames: list[np.ndarray]
    times: list[float]
    motion: list[Motion | None] | None = None
    boxes: list[list[Box]] | None = None


# --------------------------------------------------------------------------------------------------
# Clips
# --------------------------------------------------------------------------------------------------


def shaken(base: np.ndarray, n: int, rng: np.random.Generator, shift: float = JITTER_PX,
           sigma: float = NOISE_SIGMA) -> list[np.ndarray]:
    """``n`` copies of ``base``, each moved by a random shift of up to ``shift`` px in x and y (edges
    mirrored) with Gaussian noise of ``sigma`` grey levels; ``shift=0``: the noise alone."""
    h, w = base.shape[:2]
    out = []
    for _ in range(n):
        img = base
        if shift > 0:
            dx, dy = rng.uniform(-shift, shift, 2)
            img = cv2.warpAffine(base, np.array([[1, 0, dx], [0, 1, dy]], np.float32), (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REFLECT)
        out.append(np.clip(img + rng.normal(0.0, sigma, img.shape), 0, 255).astype(np.uint8))
    return out


def _still_clips(base: np.ndarray, n: int, fps: float, rng: np.random.Generator) -> dict[str, Clip]:
    times = [i / fps for i in range(n)]
    return {"jitter": Clip("still + 4 px jitter + noise", shaken(base, n, rng), times),
            "noise": Clip("still + noise", shaken(base, n, rng, shift=0.0), times)}


def _scene_clip(name: str, scene: DemoScene, times: list[float]) -> Clip:
    motion: list[Motion | None] = [None] + [scene.motion(t0, t1) for t0, t1 in zip(times, times[1:], strict=False)]
    return Clip(name, [scene.frame(t) for t in times], [i / DEMO_FPS for i in range(len(times))], motion,
                [[b for _, b in scene.target_boxes(t)] for t in times])


def demo_clips(n: int = 40, seed: int = 0, size: tuple[int, int] = (640, 480)) -> dict[str, Clip]:
    """The demo's clips: still ones of ``n`` frames, moving ones of ``2 n`` (at 10 results a second
    the moving one spans two class changes from 40 frames on)."""
    rng = np.random.default_rng(seed)
    scene = DemoScene(*size, seed=seed)
    clips = _still_clips(scene.frame(1.0), n, DEMO_FPS, rng)
    clips["moving"] = _scene_clip("moving demo", scene, [i / DEMO_FPS for i in range(2 * n)])
    fast = DemoScene(*size, seed=seed + 1, num_targets=1, period=1e9)  # one target, never changing class
    clips["lag"] = _scene_clip("one fast target", fast, [1.0 + i * LAG_SPEEDUP / DEMO_FPS for i in range(2 * n)])
    return clips


def video_motion(prev: np.ndarray, cur: np.ndarray, side: int = 320) -> Motion:
    """Optical flow from ``cur`` back to ``prev`` (DIS, medium preset, at ``side`` px across), with the
    pixels whose forward and backward flows disagree (occlusions) marked invalid, at frame size."""
    h, w = cur.shape[:2]
    s = side / max(h, w)
    size = (max(16, round(w * s)), max(16, round(h * s)))
    a, b = (cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY) for f in (cur, prev))
    dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    # None: calc allocates the flow (OpenCV's stub wants an array there).
    back, fwd = dis.calc(a, b, None), dis.calc(b, a, None)  # type: ignore[call-overload]
    px, py = np.meshgrid(np.arange(size[0], dtype=np.float32), np.arange(size[1], dtype=np.float32))
    fwd_at = cv2.remap(fwd, px + back[..., 0], py + back[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = np.linalg.norm(back + fwd_at, axis=-1)
    valid = err < 0.5 + 0.05 * (np.linalg.norm(back, axis=-1) + np.linalg.norm(fwd_at, axis=-1))
    flow = cv2.resize(back, (w, h), interpolation=cv2.INTER_LINEAR) / s
    return flow, cv2.resize(valid.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST).astype(bool)


def video_clips(path: str | Path, n: int = 40, stride: int = 1, seed: int = 0) -> dict[str, Clip]:
    """A video's clips: its first ``2 n`` frames (every ``stride``-th) as the moving and lag clips, and
    its first frame shaken for the still ones."""
    from live_attention.io.video import VideoReader  # lazy: PyAV only for --video

    frames, times = [], []
    with VideoReader(path) as reader:
        for i, (img, pts) in enumerate(reader):
            if i % stride == 0:
                frames.append(img)
                times.append(pts)
            if len(frames) >= 2 * n:
                break
    if len(frames) < 3:
        raise UserError(f"--video {path}: needs at least 3 frames, found {len(frames)}")
    fps = (len(times) - 1) / max(times[-1] - times[0], 1e-6)
    clips = _still_clips(frames[0], n, fps, np.random.default_rng(seed))
    motion: list[Motion | None] = [None] + [video_motion(a, b) for a, b in zip(frames, frames[1:], strict=False)]
    clips["moving"] = Clip(f"{Path(path).name}", frames, times, motion)
    clips["lag"] = clips["moving"]
    return clips


# --------------------------------------------------------------------------------------------------
# Maps and measures
# --------------------------------------------------------------------------------------------------


def kind_map(res: Result, kind: str) -> np.ndarray | None:
    """One map kind [P] of a result: the last layer's, heads mean-fused where there are heads."""
    if kind == names.CLS:
        return res.cls[-1].mean(0)
    if kind == names.ROLLOUT:
        return None if res.rollout is None else res.rollout[-1]
    if kind == names.RELEVANCE:
        return res.relevance
    if kind == names.ENTROPY:
        return None if res.patch_entropy is None else res.patch_entropy.mean(0)
    if kind == names.NORMS:
        return None if res.token_norm is None else res.token_norm[-1]
    raise ValueError(kind)


def grid_motion(motion: Motion | None, box: Box, grid: tuple[int, int], seen: float = 0.9) -> tuple[np.ndarray, np.ndarray] | None:
    """A pixel motion on the patch grid of the model's region ``box``: the mean flow of each patch in
    patches [rows, cols, 2], and whether at least ``seen`` of its pixels were visible before [rows, cols]."""
    if motion is None:
        return None
    flow, valid = motion
    x0, y0, x1, y1 = box
    gh, gw = grid
    f = cv2.resize(flow[y0:y1, x0:x1], (gw, gh), interpolation=cv2.INTER_AREA)
    v = cv2.resize(valid[y0:y1, x0:x1].astype(np.float32), (gw, gh), interpolation=cv2.INTER_AREA)
    cell = np.array([(x1 - x0) / gw, (y1 - y0) / gh], np.float32)
    return (f / cell).astype(np.float32), v >= seen


def smoothed(clip: Clip, raw: dict[str, np.ndarray], box: Box, grid: tuple[int, int],
             params: tmp.TemporalParams | None = None) -> dict[str, np.ndarray]:
    """Every kind of ``raw`` ([T, rows, cols] each) through the filter, with the motion it estimates
    itself from the frames (as live)."""
    params = params or tmp.TemporalParams()
    est = tmp.MotionEstimator(params.image_side)
    filters = {k: tmp.TemporalFilter(grid, params) for k in raw}
    out = {k: np.empty_like(v) for k, v in raw.items()}
    for t, frame in enumerate(clip.frames):
        motion = est.step(frame, box, grid)
        dt = clip.times[t] - clip.times[t - 1] if t else None
        for k, f in filters.items():
            out[k][t] = f.step(raw[k][t], motion, dt).reshape(grid)
    return out


@dataclass
class Row:
    """One map kind through one filter."""

    kind: str
    filter: str
    flicker_jitter: float
    flicker_noise: float
    corr_raw: float
    consistency: float
    warping_error: float
    lag: float
    deletion: float | None = None
    insertion: float | None = None
    pointing: float | None = None
    auc_noise: float | None = None  # smoothed rows: the larger standard error of the per-frame AUC change

@dataclass
class TemporalEvaluation:
    model: str
    source: str
    frames: dict[str, int]
    seconds: float
    rows: list[Row]
    auc_frames: int = 0
    params: dict = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)  # kinds whose maps were constant: not measured

    def row(self, kind: str, filt: str) -> Row:
        return next(r for r in self.rows if r.kind == kind and r.filter == filt)


def filter_names() -> list[str]:
    return ["raw", "smoothed", *(f"EMA α={a}" for a in EMA_ALPHAS)]


class TemporalEvaluator:
    """Computes every map kind on the clips, smooths them, and measures them.

    Args:
        engine: the model.
        kinds: map kinds (default: all that the model has; relevance needs a classifier).
        batch: frames per forward pass.
        auc_frames: frames of the moving clip whose raw and smoothed maps get deletion and insertion
            curves (each costs 22 forward passes per map kind and filter); 0: none.
        params: the filter's constants.
    """

    def __init__(self, engine: AttentionEngine, kinds: Sequence[str] | None = None, batch: int = 32,
                 auc_frames: int = 16, params: tmp.TemporalParams | None = None) -> None:
        if kinds is None:
            kinds = [k for k in KINDS if k != names.RELEVANCE or engine.has_classifier]
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise UserError(f"unknown map kind {sorted(unknown)[0]!r} for --temporal: use {', '.join(KINDS)}")
        if names.RELEVANCE in kinds and not engine.has_classifier:
            raise UserError(f"{engine.name} has no classifier: leave relevance out of --kinds")
        self.engine, self.kinds, self.batch = engine, tuple(kinds), batch
        self.auc_frames = auc_frames if engine.has_classifier else 0
        self.params = params or tmp.TemporalParams()

    def maps(self, clip: Clip) -> tuple[dict[str, np.ndarray], Box, tuple[int, int], list[int]]:
        """Each kind's raw maps [T, rows, cols] of ``clip``, the model's region, the grid, each frame's top-1."""
        settings = MapSettings(relevance=names.RELEVANCE in self.kinds, maps=None)
        results: list[Result] = []
        for i in range(0, len(clip.frames), self.batch):
            chunk = clip.frames[i : i + self.batch]
            frames = [Frame(image=f, seq=i + j, t_capture_ns=0, source=clip.name, pts_s=clip.times[i + j])
                      for j, f in enumerate(chunk)]
            results += process_frames(self.engine, frames, settings)
        box, grid = results[0].box, results[0].grid
        out = {}
        for kind in self.kinds:
            ms = [m for r in results if (m := kind_map(r, kind)) is not None]
            if len(ms) != len(results):
                raise UserError(f"{KIND_NAMES[kind]} does not fit in memory at this input size: leave it out with --kinds")
            out[kind] = np.stack(ms).reshape(len(ms), *grid).astype(np.float32)
        return out, box, grid, [r.top_ids[0] if r.top_ids else -1 for r in results]

    def variants(self, clip: Clip, raw: dict[str, np.ndarray], box: Box, grid: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
        """Each filter's maps: raw (normalised), smoothed, and the EMAs."""
        out = {"raw": {k: np.stack([tmp.normalise(m) for m in v]) for k, v in raw.items()},
               "smoothed": {k: np.stack([tmp.normalise(m) for m in v])
                            for k, v in smoothed(clip, raw, box, grid, self.params).items()}}
        for a in EMA_ALPHAS:
            out[f"EMA α={a}"] = {k: tmp.ema(v, a) for k, v in raw.items()}
        return out

    def auc_index(self, n: int) -> list[int]:
        """The frames (of ``n``) that get deletion and insertion curves: ``auc_frames`` spread evenly."""
        return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(self.auc_frames, n))}) if self.auc_frames else []

    def _probability(self, targets: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        eng = self.engine

        def fn(images: torch.Tensor) -> torch.Tensor:
            out = []
            for i in range(0, len(images), 128):
                logits = eng.run(images[i : i + 128], Keep.parts()).logits
                assert logits is not None  # the AUC curves run only with a classifier (auc_frames is 0 without)
                out.append(eng.probabilities(logits).gather(1, targets[i : i + 128, None].to(logits.device))[:, 0].cpu())
            return torch.cat(out)

        return fn

    def faithfulness(self, clip: Clip, variants: dict[str, dict[str, np.ndarray]], top1: list[int], box: Box,
                     grid: tuple[int, int]) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, float | None]]:
        """Deletion and insertion AUC of each frame (for its top-1 class) and the pointing game (where
        the targets are known) of the raw and smoothed maps, on ``auc_frames`` frames spread over the clip."""
        idx = self.auc_index(len(clip.frames))
        x = torch.cat([self.engine.preprocess(clip.frames[i]) for i in idx])
        pairs = [(kind, filt) for kind in self.kinds for filt in ("raw", "smoothed")]
        # Every (kind, filter) in one batch: each perturbation step is one pass over all of them.
        prob = self._probability(torch.tensor([top1[i] for i in idx] * len(pairs)))
        maps = torch.cat([torch.from_numpy(variants[f][k][idx].reshape(len(idx), -1)) for k, f in pairs])
        xs = x.repeat(len(pairs), 1, 1, 1)
        areas = {o: fth.area(fth.perturbation_curves(prob, xs, maps, grid, self.engine.patch_size, o)).reshape(len(pairs), -1)
                 for o in fth.ORDERS}
        x0, y0, x1, y1 = box
        cell = ((x1 - x0) / grid[1], (y1 - y0) / grid[0])
        out = {}
        for p, (kind, filt) in enumerate(pairs):
            m = maps[p * len(idx) : (p + 1) * len(idx)]
            point = None
            if clip.boxes is not None:
                hits = [any(fth.pointing_hit(m[j], grid, (bx0 - x0, by0 - y0, bx1 - x0, by1 - y0), cell)
                            for bx0, by0, bx1, by1 in clip.boxes[i]) for j, i in enumerate(idx) if clip.boxes[i]]
                point = float(np.mean(hits)) if hits else None
            out[(kind, filt)] = (areas["deletion"][p], areas["insertion"][p], point)
        return out

    def run(self, clips: dict[str, Clip], progress: Callable[[str], None] | None = None) -> TemporalEvaluation:
        """Measure every kind through every filter on ``clips`` (jitter, noise, moving, lag)."""
        t0 = time.perf_counter()
        say = progress or (lambda _m: None)
        done: dict[int, tuple] = {}
        for name in ("jitter", "noise", "moving", "lag"):
            clip = clips[name]
            if id(clip) not in done:
                say(f"maps of the {clip.name} clip ({len(clip.frames)} frames)")
                raw, box, grid, top1 = self.maps(clip)
                done[id(clip)] = (raw, box, grid, top1, self.variants(clip, raw, box, grid))
        var = {name: done[id(clips[name])][4] for name in clips}
        _, box, grid, top1, _ = done[id(clips["moving"])]
        moving = [grid_motion(m, box, grid) for m in (clips["moving"].motion or [None] * len(clips["moving"].frames))]
        flows, masks = [g[0] if g else None for g in moving], [g[1] if g else None for g in moving]
        auc = {}
        if self.auc_frames:
            say(f"deletion and insertion curves on {min(self.auc_frames, len(clips['moving'].frames))} frames")
            auc = self.faithfulness(clips["moving"], var["moving"], top1, box, grid)
        rows, constant = [], []
        for kind in self.kinds:
            raw_mov, raw_lag = var["moving"]["raw"][kind], var["lag"]["raw"][kind]
            if not (raw_mov.any() or var["jitter"]["raw"][kind].any()):  # normalised: all zero when constant
                constant.append(kind)  # e.g. relevance of an untrained model: nothing to smooth or measure
                continue
            for filt in filter_names():
                mov = var["moving"][filt][kind]
                rows.append(Row(kind, filt, tmp.flicker(var["jitter"][filt][kind]), tmp.flicker(var["noise"][filt][kind]),
                                float(np.mean([tmp.correlation(a, b) for a, b in zip(mov, raw_mov, strict=True)])),
                                tmp.consistency(mov, flows), tmp.warping_error(mov, flows, masks),
                                tmp.peak_lag(raw_lag, var["lag"][filt][kind]), *_costs(auc, kind, filt)))
        frames = {name: len(c.frames) for name, c in clips.items()}
        return TemporalEvaluation(self.engine.describe(), clips["moving"].name, frames, time.perf_counter() - t0, rows,
                                  len(self.auc_index(frames["moving"])), asdict(self.params), constant)


def _costs(auc: dict, kind: str, filt: str) -> tuple[float | None, float | None, float | None, float | None]:
    """Mean deletion and insertion AUC, pointing, and (smoothed) the standard error of the AUC change."""
    if (kind, filt) not in auc:
        return None, None, None, None
    dele, ins, point = auc[(kind, filt)]
    noise = None
    if filt != "raw" and len(dele) > 1:
        rd, ri, _ = auc[(kind, "raw")]
        noise = float(max(np.std(dele - rd, ddof=1), np.std(ins - ri, ddof=1)) / np.sqrt(len(dele)))
    return float(dele.mean()), float(ins.mean()), point, noise


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------

FLICKER_TARGET = 0.25  # smoothed flicker on the still shaken clip, as a fraction of raw
CORR_TARGET = 0.97  # smoothed against raw on the moving clip
LAG_TARGET = 1.0  # frames
COST_TARGET = 0.01  # AUC and pointing, smoothed against raw
TARGET_KINDS = (names.CLS, names.ROLLOUT, names.RELEVANCE)


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "-" if v is None or not np.isfinite(v) else format(v, fmt)


def table(ev: TemporalEvaluation) -> str:
    """The results as a Markdown table: a row per map kind and filter."""
    head = ("| map | filter | flicker, still + jitter | flicker, noise alone | moving: corr. with raw "
            "| moving: consistency | warping error ×10³ | peak lag (frames) | deletion AUC | insertion AUC | pointing |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in ev.rows:
        raw = ev.row(r.kind, "raw")
        ratio = "" if r.filter == "raw" else f" ({r.flicker_jitter / max(raw.flicker_jitter, 1e-12):.2f}×)"
        ratio_n = "" if r.filter == "raw" else f" ({r.flicker_noise / max(raw.flicker_noise, 1e-12):.2f}×)"
        name = f"**{r.filter}**" if r.filter == "smoothed" else r.filter
        lines.append(f"| {KIND_NAMES[r.kind]} | {name} | {r.flicker_jitter:.4f}{ratio} | {r.flicker_noise:.4f}{ratio_n} "
                     f"| {r.corr_raw:.3f} | {_f(r.consistency)} | {_f(r.warping_error * 1e3, '.2f')} | {r.lag:.1f} "
                     f"| {_f(r.deletion)} | {_f(r.insertion)} | {_f(r.pointing)} |")
    for kind in ev.constant:
        lines.append(f"| {KIND_NAMES[kind]} | - | constant maps in every frame: nothing to measure |" + " - |" * 8)
    return "\n".join(lines)


def verdict(ev: TemporalEvaluation) -> list[str]:
    """One line per target of the issue, met or not, with the figures."""
    lines = [f"{KIND_NAMES[k]}: constant maps in every frame (an untrained model?), not measured" for k in ev.constant]
    for kind in (k for k in TARGET_KINDS if any(r.kind == k for r in ev.rows)):
        raw, sm = ev.row(kind, "raw"), ev.row(kind, "smoothed")
        ratio = sm.flicker_jitter / max(raw.flicker_jitter, 1e-12)
        ok = ratio <= FLICKER_TARGET and sm.corr_raw >= CORR_TARGET and sm.lag <= LAG_TARGET
        ema = [ev.row(kind, f"EMA α={a}") for a in EMA_ALPHAS]
        beaten = [e.filter for e in ema if sm.flicker_jitter <= e.flicker_jitter and sm.corr_raw >= e.corr_raw
                  and sm.lag <= e.lag]
        lines.append(f"{KIND_NAMES[kind]}: flicker {ratio:.2f}× raw (target ≤ {FLICKER_TARGET}), corr. with raw "
                     f"{sm.corr_raw:.3f} (≥ {CORR_TARGET}), lag {sm.lag:.1f} frames (≤ {LAG_TARGET:g}): "
                     f"{'met' if ok else 'NOT met'}; at least as good on all three as "
                     + (f"{len(beaten)} of the {len(ema)} EMAs" if beaten else "none of the EMAs"))
        costs = [(n, getattr(sm, n), getattr(raw, n)) for n in ("deletion", "insertion", "pointing")
                 if getattr(sm, n) is not None and getattr(raw, n) is not None]
        if costs:
            worse = [n for n, s, r in costs if (s - r > COST_TARGET if n == "deletion" else r - s > COST_TARGET)]
            beyond = [n for n in worse if n == "pointing" or sm.auc_noise is None
                      or abs(getattr(sm, n) - getattr(raw, n)) > 2 * sm.auc_noise]
            noise = f" (noise: ±{2 * sm.auc_noise:.3f})" if sm.auc_noise is not None else ""
            verdict_ = (f"within {COST_TARGET} of raw or better" if not worse else
                        f"worse than raw by more than {COST_TARGET} on {', '.join(worse)}"
                        + ("" if beyond else ", within noise"))
            lines.append(f"  faithfulness of the smoothed maps: {', '.join(f'{n} {s:.3f} (raw {r:.3f})' for n, s, r in costs)}"
                         f"{noise}: {verdict_}")
    return lines
