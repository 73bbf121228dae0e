"""Train the ``demo`` model: a small torchvision ViT on synthetic shape scenes (:mod:`live_attention.synthetic`).

    python -m live_attention.demo.train [--out PATH] [--epochs N] [--seed S]

CPU-only is fine: the default run (30k scenes, 14 epochs, ~6.5k steps of 64) takes 7-8 minutes on two cores.
Data, initialisation, shuffling and augmentation are seeded by ``--seed``; bit-exact reruns additionally need
the same thread count and torch build. Writes a ``weights_only``-loadable checkpoint
(fp16 tensors, under 1 MB) and, by default, replaces the shipped ``live_attention/assets/demo_vit.pt``. At
the end it reloads the file through :func:`live_attention.demo_model.build_demo_engine` and reports held-out
accuracy and the pointing game (does the attention argmax land on the target?).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from live_attention.core import maps
from live_attention.core.engine import AttentionEngine
from live_attention.demo.model import DEFAULT_CONFIG, DEMO_CHECKPOINT, build_demo_engine, build_demo_module
from live_attention.demo.synthetic import CLASS_NAMES, MODEL_SIZE, make_dataset

VAL_SEED_OFFSET = 500_000  # training data uses seed*1000 + 1; held-out data seed*1000 + VAL_SEED_OFFSET


def _to_rgb_tensor(images: np.ndarray) -> torch.Tensor:
    """BGR uint8 [N, S, S, 3] -> RGB uint8 [N, 3, S, S]."""
    return torch.from_numpy(np.ascontiguousarray(images[..., ::-1])).permute(0, 3, 1, 2).contiguous()


def _dihedral(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and transposes per sample; every class is invariant under them."""
    n = x.shape[0]
    for op in (lambda t: t.flip(-1), lambda t: t.flip(-2), lambda t: t.transpose(-1, -2)):
        m = (torch.rand(n, generator=g) < 0.5).view(n, 1, 1, 1)
        x = torch.where(m, op(x), x)
    return x


def sincos_pos_embedding(grid: int, dim: int, num_prefix: int = 1) -> torch.Tensor:
    """Fixed 2D sine-cosine position embedding [1, num_prefix + grid², dim] (as in MAE / MoCo v3); prefix rows 0.

    Used to initialise (and freeze) the ViT's ``pos_embedding``: with few training steps a fixed 2D code makes
    neighbourhoods easy to learn, so shapes spanning several patches are read out sooner.
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


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "pos_embedding" in name or "class_token" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def pointing_game(
    engine: AttentionEngine, images_bgr: np.ndarray, boxes: np.ndarray, batch: int = 200
) -> tuple[float, float, torch.Tensor]:
    """The pointing game on scenes rendered at the model's size; also returns the logits [N, C].

    Returns the fraction of images whose argmax patch of (a) last-layer CLS attention, heads mean-fused, and
    (b) rollout, lies on the target: patch (r, c) covers pixels [c·ps, (c+1)·ps) × [r·ps, (r+1)·ps) and hits
    when that cell intersects the box (x0, y0, x1, y1; x1/y1 exclusive).
    """
    ps = engine.patch_size
    gw = engine.grid[1]
    cls_hits = roll_hits = 0
    logits = []
    for i in range(0, len(images_bgr), batch):
        x = torch.cat([engine.preprocess(im) for im in images_bgr[i : i + batch]])
        out = engine.run(x)
        logits.append(out.logits)
        last = maps.fuse_heads(maps.cls_attention(out.attn)[:, -1], "mean", dim=-2)  # [B, P]
        roll = maps.rollout_cls(maps.rollout(out.attn))  # [B, P]
        for name, m in (("cls", last), ("roll", roll)):
            idx = m.argmax(-1)
            for j, p in enumerate(idx.tolist()):
                r, c = divmod(p, gw)
                x0, y0, x1, y1 = (int(v) for v in boxes[i + j])
                hit = c * ps < x1 and (c + 1) * ps > x0 and r * ps < y1 and (r + 1) * ps > y0
                if name == "cls":
                    cls_hits += hit
                else:
                    roll_hits += hit
    n = len(images_bgr)
    return cls_hits / n, roll_hits / n, torch.cat(logits)


def train(
    out: Path,
    epochs: int = 14,
    seed: int = 0,
    train_size: int = 30_000,
    val_size: int = 2_000,
    batch_size: int = 64,
    lr: float = 2.5e-3,
    weight_decay: float = 0.05,
    log_every: int = 0,
) -> dict[str, float]:
    """Train, save to ``out``, reload and evaluate; returns the held-out metrics."""
    t0 = time.time()
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    size = MODEL_SIZE
    imgs, labels, _ = make_dataset(train_size, size, seed=seed * 1000 + 1)
    val_imgs, val_labels, val_boxes = make_dataset(val_size, size, seed=seed * 1000 + VAL_SEED_OFFSET)
    x_all = _to_rgb_tensor(imgs)
    y_all = torch.from_numpy(labels)
    del imgs
    f = x_all.float().div_(255.0)
    mean = [round(float(v), 4) for v in f.mean(dim=(0, 2, 3))]
    std = [round(float(v), 4) for v in f.std(dim=(0, 2, 3))]
    del f
    print(f"data: {train_size} train + {val_size} held-out scenes in {time.time() - t0:.0f}s; "
          f"mean {mean} std {std}", flush=True)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)

    config = dict(DEFAULT_CONFIG)
    model = build_demo_module(config)
    grid = config["image_size"] // config["patch_size"]
    with torch.no_grad():
        model.encoder.pos_embedding.copy_(sincos_pos_embedding(grid, config["hidden_dim"]))
    model.encoder.pos_embedding.requires_grad_(False)
    opt = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
    steps_per_epoch = train_size // batch_size
    total = steps_per_epoch * epochs
    warmup = max(1, int(0.05 * total))

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        q = (step - warmup) / max(1, total - warmup)
        return lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * q)))

    step = 0
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(train_size, generator=g)
        seen = correct = 0
        loss_sum = 0.0
        for b in range(steps_per_epoch):
            idx = perm[b * batch_size : (b + 1) * batch_size]
            x = _dihedral(x_all[idx], g).float().div_(255.0).sub_(mean_t).div_(std_t)
            y = y_all[idx]
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            seen += len(y)
            if log_every and step % log_every == 0:
                print(f"  step {step}/{total}: loss {loss_sum / seen:.4f} acc {correct / seen:.4f} "
                      f"({time.time() - t0:.0f}s)", flush=True)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss_sum / seen:.4f} train acc {correct / seen:.4f} "
              f"({time.time() - t0:.0f}s)", flush=True)

    train_s = time.time() - t0
    config.update({"seed": seed, "epochs": epochs, "train_size": train_size, "train_seconds": round(train_s, 1)})
    state = {k: (v.detach().half() if v.is_floating_point() else v.detach()).clone()
             for k, v in model.state_dict().items()}
    ckpt = {"state_dict": state, "config": config, "classes": list(CLASS_NAMES), "mean": mean, "std": std}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(out)

    engine = build_demo_engine(weights=str(out), device="cpu", precision="fp32")
    hit_cls, hit_roll, logits = pointing_game(engine, val_imgs, val_boxes)
    acc = float((logits.argmax(-1).numpy() == val_labels).mean())
    metrics = {"accuracy": acc, "pointing_cls": hit_cls, "pointing_rollout": hit_roll,
               "train_seconds": train_s, "bytes": out.stat().st_size}
    print(f"saved {out} ({metrics['bytes'] / 1024:.0f} KiB) after {train_s:.0f}s of training")
    print(f"held-out ({val_size} scenes): accuracy {acc:.4f}, pointing game: last-layer CLS "
          f"{hit_cls:.4f}, rollout {hit_roll:.4f}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m live_attention.demo.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEMO_CHECKPOINT, help=f"checkpoint path (default {DEMO_CHECKPOINT})")
    ap.add_argument("--epochs", type=int, default=14)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-size", type=int, default=30_000)
    ap.add_argument("--val-size", type=int, default=2_000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2.5e-3)
    ap.add_argument("--log-every", type=int, default=0, help="print running loss every N steps")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    train(args.out, epochs=args.epochs, seed=args.seed, train_size=args.train_size, val_size=args.val_size,
          batch_size=args.batch_size, lr=args.lr, log_every=args.log_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
