"""Train the ``demo`` model: a small torchvision ViT, multi-label, on synthetic shape scenes (:mod:`.synthetic`).

    python -m live_attention.demo.train [--out PATH] [--epochs N] [--seed S]

The task: which of the four shapes appear in the target style (1 to 3 per scene, each of a different class);
one sigmoid per shape, trained with binary cross-entropy. Half of the scenes are 64×64, the model's own size;
the rest are other squares (48-96 px) and non-square frames (64×80 to 64×112, transposed half of the time), all
multiples of the patch size, so the model also works at ``--input-size`` and ``--full-frame``. Every batch runs
through :class:`~live_attention.core.families.TorchvisionFamily`, the engine's own forward pass, so the
position embedding (a frozen 2D sin-cos code for the 8×8 grid) is interpolated for other grids exactly as at
inference.

Two choices, both measured here. A conv stem instead of the patchify convolution: the patchify model reached
0.69 held-out exact-match after 2.5k steps, the conv stem 0.95 after 500. Stochastic depth (:func:`drop_path`):
without it the last layer's CLS attention drifted off the targets (see there).

The default run (24k scenes, 10 epochs, 3,690 steps of 64) took 11 min 0 s including 1.5 min of scene
rendering, and 12 min with the evaluation, on two CPU cores shared with other work. Data, initialisation,
shuffling and augmentation are seeded by ``--seed``; bit-exact reruns also need the same thread count and torch
build. Writes a ``weights_only``-loadable checkpoint (fp16 tensors, 414 KiB) and, by default, replaces the
shipped ``live_attention/demo/assets/demo_vit.pt``. At the end it reloads the file through
:func:`live_attention.demo.model.build_demo_engine` and prints held-out metrics. The shipped checkpoint's:

* 1-3 targets, probability > 0.5: exact-match 0.996, macro F1 0.999 (1,000 scenes); full frame on 320×240
  scenes (the engine resizes them to 88×64): exact-match 0.994 (500).
* One target (500 scenes), pointing game (argmax patch on the target's box): last-layer CLS attention 0.940,
  rollout 1.000.
* Two targets of different classes (500 scenes, each class asked about): relevance for that class 1.000 on that
  class's box; rollout 0.500 and last-layer CLS attention 0.496, which cannot be asked about a class. Full
  frame: relevance 0.999, rollout 0.499.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from live_attention import names
from live_attention.core import maps
from live_attention.core.engine import AttentionEngine
from live_attention.core.families import TorchvisionFamily
from live_attention.demo.model import DEFAULT_CONFIG, DEMO_CHECKPOINT, build_demo_engine, build_demo_module
from live_attention.demo.synthetic import CLASS_NAMES, MODEL_SIZE, make_dataset

VAL_SEED_OFFSET = 500_000  # training bucket j uses seed*1000 + 1 + j; held-out sets seed*1000 + VAL_SEED_OFFSET + j

# Training input sizes (h, w) and their share of the scenes. Non-square batches are transposed half of the
# time, so 64×88 also trains 88×64. 64×88 and 64×112 are what --full-frame makes of 4:3 and 16:9 frames.
TRAIN_SIZES: tuple[tuple[tuple[int, int], float], ...] = (
    ((64, 64), 0.50),
    ((48, 48), 0.05), ((56, 56), 0.05), ((72, 72), 0.05), ((80, 80), 0.05), ((96, 96), 0.05),
    ((64, 80), 0.0625), ((64, 88), 0.0625), ((64, 96), 0.0625), ((64, 112), 0.0625),
)
FULL_FRAME_HW = (240, 320)  # held-out full-frame scenes: resized to 64×88 by the engine's preprocessing


def _to_rgb_tensor(images: np.ndarray) -> torch.Tensor:
    """BGR uint8 [N, H, W, 3] -> RGB uint8 [N, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(images[..., ::-1])).permute(0, 3, 1, 2).contiguous()


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips per sample, and transposes (per sample when square, else per batch); labels don't change."""
    n = x.shape[0]
    ops = [lambda t: t.flip(-1), lambda t: t.flip(-2)]
    if x.shape[-1] == x.shape[-2]:
        ops.append(lambda t: t.transpose(-1, -2))
    elif torch.rand(1, generator=g).item() < 0.5:
        x = x.transpose(-1, -2)
    for op in ops:
        m = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1, 1)
        x = torch.where(m, op(x), x)
    return x


def sincos_pos_embedding(grid: int, dim: int, num_prefix: int = 1) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding [1, num_prefix + grid², dim] (as in MAE / MoCo v3); prefix rows 0.

    Used to initialise (and freeze) the ViT's ``pos_embedding``: with few training steps a fixed 2D code makes
    neighbourhoods easy to learn, so shapes spanning several patches are read out sooner. Other grids get it
    bicubically interpolated, in training as at inference.
    """
    if dim % 4:
        raise ValueError(f"dim {dim} must be a multiple of 4")
    omega = 1.0 / (10000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4)))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    parts = []
    for coord in (ys.reshape(-1), xs.reshape(-1)):
        ang = coord[:, None] * omega[None, :]
        parts += [ang.sin(), ang.cos()]
    emb = torch.cat(parts, dim=1).float()
    return torch.cat([torch.zeros(num_prefix, dim), emb]).unsqueeze(0)


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): zeroes a residual branch for a random part of the batch (rate
    ``p``) and rescales the rest; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1.0 - self.p)


@contextmanager
def drop_path(model: VisionTransformer, rate: float) -> Iterator[None]:
    """Stochastic depth on every encoder block's attention and MLP branch, rising linearly to ``rate`` in the
    last block, while the context lasts.

    Why: without it the model gathers its evidence in the first layers, and the last layer's CLS attention
    (the live view's default map) drifts off the targets: one-target pointing game 0.75 after the default run
    without it, 0.94 with rate 0.4 (in 1,500-step runs at 64 px: 0.77 without, 0.82 at 0.2, 0.96 at 0.4). It
    acts inside the engine's own forward pass, which adds ``blk.dropout(attention)`` and ``blk.mlp(...)`` (a
    Sequential ending in a Dropout) to the residual stream.
    """
    layers = list(model.encoder.layers)
    saved = [(blk.dropout, blk.mlp[-1]) for blk in layers]
    if not all(isinstance(m, nn.Dropout) for pair in saved for m in pair):
        raise RuntimeError("this torchvision EncoderBlock has no trailing Dropout modules to swap for DropPath")
    for i, blk in enumerate(layers):
        p = rate * (i + 1) / len(layers)
        blk.dropout, blk.mlp[-1] = DropPath(p), DropPath(p)
    try:
        yield
    finally:
        for blk, (attn_drop, mlp_drop) in zip(layers, saved, strict=True):
            blk.dropout, blk.mlp[-1] = attn_drop, mlp_drop


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "pos_embedding" in name or "class_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --------------------------------------------------------------------------------------------------
# Held-out metrics
# --------------------------------------------------------------------------------------------------


def cell_hits(m: torch.Tensor, boxes: np.ndarray, grid: tuple[int, int], cell: tuple[float, float]) -> np.ndarray:
    """Whether the argmax patch of each map ``m`` [N, P] meets its box [N, 4] (x0, y0, x1, y1; x1/y1 exclusive).

    Patch (r, c) covers the frame pixels [c·cw, (c+1)·cw) × [r·ch, (r+1)·ch), ``cell = (cw, ch)``.
    """
    r, c = np.divmod(m.argmax(-1).cpu().numpy(), grid[1])
    cw, ch = cell
    x0, y0, x1, y1 = np.asarray(boxes, np.float64).T
    return (c * cw < x1) & ((c + 1) * cw > x0) & (r * ch < y1) & ((r + 1) * ch > y0)


def _batches(engine: AttentionEngine, images: np.ndarray, batch: int = 250) -> Iterator[tuple[int, torch.Tensor]]:
    for i in range(0, len(images), batch):
        yield i, torch.cat([engine.preprocess(im) for im in images[i : i + batch]])


def attention_maps(engine: AttentionEngine, images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, C], last-layer CLS attention (heads mean-fused) [N, P] and rollout [N, P] of BGR frames."""
    logits, last, roll = [], [], []
    for _, x in _batches(engine, images):
        out = engine.run(x)
        assert out.logits is not None and out.attn is not None  # the demo model classifies; run() keeps all
        logits.append(out.logits)
        last.append(maps.fuse_heads(maps.cls_attention(out.attn)[:, -1], "mean", dim=-2))
        roll.append(maps.rollout_cls(maps.rollout(out.attn)))
    return torch.cat(logits), torch.cat(last), torch.cat(roll)


def relevance_maps(engine: AttentionEngine, images: np.ndarray, targets: np.ndarray) -> torch.Tensor:
    """Class-specific relevance [N, P] of BGR frames, for class ``targets[i]`` of frame i."""
    return torch.cat([engine.relevance(x, targets=torch.as_tensor(targets[i : i + len(x)]))[1]
                      for i, x in _batches(engine, images)])


def multilabel_scores(logits: torch.Tensor, labels: np.ndarray) -> tuple[float, float]:
    """Exact-match accuracy and macro per-class F1 of ``sigmoid(logits) > 0.5`` against multi-hot ``labels``."""
    pred = (logits > 0).numpy()
    truth = labels.astype(bool)
    exact = float((pred == truth).all(1).mean())
    tp = (pred & truth).sum(0)
    f1 = 2 * tp / np.maximum(1, pred.sum(0) + truth.sum(0))
    return exact, float(f1.mean())


def two_target_pointing(engine: AttentionEngine, images: np.ndarray, labels: np.ndarray, boxes: np.ndarray,
                        cell: tuple[float, float]) -> dict[str, float]:
    """Per-class pointing game on scenes with two targets: for each present class, does the map's argmax land
    on that class's box? Relevance is asked for that class; rollout and CLS attention cannot be asked, so they
    score only where their one argmax happens to lie on the asked class's box."""
    _, last, roll = attention_maps(engine, images)
    grid = engine.grid
    hits: dict[str, list[np.ndarray]] = {names.RELEVANCE: [], names.ROLLOUT: [], names.CLS: []}
    for j in range(2):
        cls = np.argsort(-labels, axis=1, kind="stable")[:, j]  # the j-th present class of each scene
        b = boxes[np.arange(len(boxes)), cls]
        hits[names.RELEVANCE].append(cell_hits(relevance_maps(engine, images, cls), b, grid, cell))
        hits[names.ROLLOUT].append(cell_hits(roll, b, grid, cell))
        hits[names.CLS].append(cell_hits(last, b, grid, cell))
    return {k: float(np.concatenate(v).mean()) for k, v in hits.items()}


def evaluate(engine: AttentionEngine, seed: int, n: int = 1000) -> dict[str, float]:
    """Held-out metrics of ``engine`` (see the module docstring); ``n`` scenes per set."""
    base = seed * 1000 + VAL_SEED_OFFSET
    ps = engine.patch_size
    out: dict[str, float] = {}
    images, labels, _ = make_dataset(n, MODEL_SIZE, seed=base)
    logits, _, _ = attention_maps(engine, images)
    out["exact_match"], out["f1"] = multilabel_scores(logits, labels)
    images, labels, boxes = make_dataset(n // 2, MODEL_SIZE, seed=base + 1, num_targets=1)
    _, last, roll = attention_maps(engine, images)
    b = boxes[np.arange(len(boxes)), labels.argmax(1)]
    out["pointing_cls_1"] = float(cell_hits(last, b, engine.grid, (ps, ps)).mean())
    out["pointing_rollout_1"] = float(cell_hits(roll, b, engine.grid, (ps, ps)).mean())
    images, labels, boxes = make_dataset(n // 2, MODEL_SIZE, seed=base + 2, num_targets=2)
    out.update({f"pointing_{k}_2": v for k, v in two_target_pointing(engine, images, labels, boxes, (ps, ps)).items()})
    # Full frame: 4:3 scenes the engine resizes (not crops) to 64×88.
    h, w = FULL_FRAME_HW
    engine.configure_input(full_frame=True)
    try:
        images, labels, _ = make_dataset(n // 2, (h, w), seed=base + 3)
        logits, _, _ = attention_maps(engine, images)
        out["full_frame_exact_match"], _ = multilabel_scores(logits, labels)
        gh, gw = engine.grid_for(h, w)
        images, labels, boxes = make_dataset(n // 2, (h, w), seed=base + 4, num_targets=2)
        pg = two_target_pointing(engine, images, labels, boxes, (w / gw, h / gh))
        out["full_frame_pointing_relevance_2"] = pg[names.RELEVANCE]
        out["full_frame_pointing_rollout_2"] = pg[names.ROLLOUT]
    finally:
        engine.configure_input()
    return out


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _bucket_sizes(total: int) -> list[tuple[tuple[int, int], int]]:
    return [(hw, int(round(total * share))) for hw, share in TRAIN_SIZES]


def train(
    out: Path,
    epochs: int = 10,
    seed: int = 0,
    train_size: int = 24_000,
    val_size: int = 1_000,
    batch_size: int = 64,
    lr: float = 2.5e-3,
    weight_decay: float = 0.05,
    drop_path_rate: float = 0.4,
    log_every: int = 0,
) -> dict[str, float]:
    """Train, save to ``out``, reload and evaluate; returns the held-out metrics."""
    t0 = time.time()
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    data: list[tuple[torch.Tensor, torch.Tensor]] = []
    for j, (hw, n) in enumerate(_bucket_sizes(train_size)):
        imgs, labels, _ = make_dataset(n, hw, seed=seed * 1000 + 1 + j)
        data.append((_to_rgb_tensor(imgs), torch.from_numpy(labels).float()))
    f = data[0][0].float().div_(255.0)  # the 64×64 bucket
    mean = [round(float(v), 4) for v in f.mean(dim=(0, 2, 3))]
    std = [round(float(v), 4) for v in f.std(dim=(0, 2, 3))]
    del f
    print(f"data: {sum(len(y) for _, y in data)} scenes at {len(data)} sizes in {time.time() - t0:.0f}s; "
          f"mean {mean} std {std}", flush=True)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    config: dict = dict(DEFAULT_CONFIG)
    model = build_demo_module(config)
    grid = config["image_size"] // config["patch_size"]
    with torch.no_grad():
        model.encoder.pos_embedding.copy_(sincos_pos_embedding(grid, config["hidden_dim"]))
    model.encoder.pos_embedding.requires_grad_(False)
    family = TorchvisionFamily(model)  # the engine's forward: other grids get the interpolated embedding
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = sum(len(y) // batch_size for _, y in data)
    total = steps_per_epoch * epochs
    warmup = max(1, int(0.05 * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        q = (step - warmup) / max(1, total - warmup)
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * q)))

    step = 0
    with drop_path(model, drop_path_rate):
        for epoch in range(epochs):
            model.train()
            plan: list[tuple[int, torch.Tensor]] = []  # (size bucket, sample indices): one input size per batch
            for k, (_, y) in enumerate(data):
                perm = torch.randperm(len(y), generator=g)
                plan += [(k, perm[b * batch_size : (b + 1) * batch_size]) for b in range(len(y) // batch_size)]
            order = torch.randperm(len(plan), generator=g).tolist()
            seen = exact = 0
            loss_sum = 0.0
            for i in order:
                k, idx = plan[i]
                x_all, y_all = data[k]
                x = _augment(x_all[idx], g).float().div_(255.0).sub_(mean_t).div_(std_t)
                y = y_all[idx]
                for group in opt.param_groups:
                    group["lr"] = lr_at(step)
                logits = family.forward(x, None)
                loss = F.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
                opt.step()
                step += 1
                loss_sum += float(loss.detach()) * len(y)
                exact += int(((logits.detach() > 0) == (y > 0.5)).all(1).sum())
                seen += len(y)
                if log_every and step % log_every == 0:
                    print(f"  step {step}/{total}: loss {loss_sum / seen:.4f} exact {exact / seen:.4f} "
                          f"({time.time() - t0:.0f}s)", flush=True)
            print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f} train exact-match {exact / seen:.4f} "
                  f"({time.time() - t0:.0f}s)", flush=True)

    train_s = time.time() - t0
    config.update({"multilabel": True, "seed": seed, "epochs": epochs, "train_size": train_size,
                   "drop_path": drop_path_rate, "train_seconds": round(train_s, 1)})
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone()
             for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "config": config, "classes": list(CLASS_NAMES), "mean": mean, "std": std}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)
    print(f"saved {out} ({out.stat().st_size / 1024:.0f} KiB) after {train_s:.0f}s of training", flush=True)

    engine = build_demo_engine(weights=str(out), device="cpu", precision="fp32")
    metrics = evaluate(engine, seed, val_size)
    metrics.update({"train_seconds": train_s, "bytes": out.stat().st_size})
    print(f"held-out, threshold 0.5 ({val_size} scenes of 1-3 targets): exact-match {metrics['exact_match']:.4f}, "
          f"macro F1 {metrics['f1']:.4f}; full frame {FULL_FRAME_HW[1]}×{FULL_FRAME_HW[0]}: exact-match "
          f"{metrics['full_frame_exact_match']:.4f}")
    print(f"pointing game, one target ({val_size // 2}): last-layer CLS {metrics['pointing_cls_1']:.4f}, "
          f"rollout {metrics['pointing_rollout_1']:.4f}")
    print(f"pointing game per class, two targets ({val_size // 2}): relevance {metrics['pointing_relevance_2']:.4f}, "
          f"rollout {metrics['pointing_rollout_2']:.4f}, last-layer CLS {metrics['pointing_cls_2']:.4f}; full frame: "
          f"relevance {metrics['full_frame_pointing_relevance_2']:.4f}, "
          f"rollout {metrics['full_frame_pointing_rollout_2']:.4f}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m live_attention.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_CHECKPOINT, help=f"checkpoint path (default {DEMO_CHECKPOINT})")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=24_000)
    ap.add_argument("--val-size", type=int, default=1_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--drop-path", type=float, default=0.4, help="stochastic depth rate of the last block")
    ap.add_argument("--log-every", type=int, default=0, help="print running loss every N steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train(args.out, epochs=args.epochs, seed=args.seed, train_size=args.train_size, val_size=args.val_size,
          batch_size=args.batch_size, lr=args.lr, drop_path_rate=args.drop_path, log_every=args.log_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
