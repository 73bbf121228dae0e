"""Per-frame maps: what one forward pass gives every view, computed on the device and copied once.

:func:`keep_for` says which parts of the attention a frame needs (so the engine stores nothing else),
:func:`compute_maps` turns a batch's :class:`~live_attention.core.engine.RunOutput` into per-frame
arrays with one device-to-host copy for the whole batch, and :func:`process_frames` does both for a
batch of camera frames and returns :class:`~live_attention.datatypes.Result` objects. The inference
worker, replay, export, ``render`` and ``evaluate`` all go through here.

Also the helpers the renderer uses for what a result may compute later from kept attention (a
query row, one layer's patch entropy, flow).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from live_attention.core import maps
from live_attention.core.engine import AttentionEngine, Keep, RunOutput
from live_attention.core.flow import attention_flow_mixed
from live_attention.datatypes import Frame, MapSettings, Result

# Rollout and flow need every layer's head-fused N×N matrix. Past this many bytes of them (fp16 at
# large sizes) a frame says "too many tokens" instead of running out of memory.
FUSED_BUDGET_BYTES = 768 * 2**20
FLOW_MAX_TOKENS = 1025  # max-flow over L·N² edges: beyond about 1,000 tokens it takes minutes
FP16_FUSED_TOKENS = 1024  # store the fused matrices in fp16 from this many tokens on


def fused_bytes(num_layers: int, num_tokens: int) -> int:
    return num_layers * num_tokens * num_tokens * (2 if num_tokens >= FP16_FUSED_TOKENS else 4)


def rollout_fits(num_layers: int, num_tokens: int) -> bool:
    return fused_bytes(num_layers, num_tokens) <= FUSED_BUDGET_BYTES


def too_big_note(what: str, num_layers: int, num_tokens: int) -> str:
    gb = fused_bytes(num_layers, num_tokens) / 2**30
    return f"{what} needs {gb:.1f} GB at {num_tokens} tokens: use a smaller --input-size"


def keep_for(engine: AttentionEngine, settings: MapSettings, num_tokens: int | None = None) -> Keep:
    """What a frame needs kept: the class token's rows (and the query patch's), head-fused layers for
    rollout (when they fit), one layer's row entropies, token norms; full attention only when asked."""
    n = engine.num_tokens if num_tokens is None else num_tokens
    rows = [0]
    if settings.query_patch is not None and 0 <= settings.query_patch < n - engine.num_prefix:
        rows.append(engine.num_prefix + settings.query_patch)
    fits = rollout_fits(engine.num_layers, n)
    return Keep(
        attn="attn" in settings.need,
        rows=tuple(rows),
        fused=settings.fusion if fits else None,
        entropy_layers=(settings.entropy_layer,),
        norms=True,
        dtype=torch.float16 if n >= FP16_FUSED_TOKENS and engine.device.type != "cpu" else torch.float32,
    )


def compute_maps(engine: AttentionEngine, out: RunOutput, settings: MapSettings, k: int = 5) -> list[dict]:
    """Per-item maps of one batch, computed on the device, then one device-to-host copy.

    Each item: ``cls`` [L, H, P], ``prefix_share`` [L, H], ``entropy`` [L, H], ``rollout`` [L, P] or
    None, ``patch_entropy`` [H, P], ``query`` [L, H, P] or None, ``token_norm`` [L, P], ``relevance``
    [P] or None, ``top_p``/``top_i`` [k] (empty without a classifier), ``target``, ``finite``.
    """
    npf = out.num_prefix
    rows = out.rows  # [B, L, H, R, N]
    cls_rows = rows[:, :, :, 0, :]
    parts: dict[str, Tensor | None] = {
        "cls": cls_rows[..., npf:],
        "prefix_share": maps.prefix_share(cls_rows, npf),
        "entropy": maps.row_entropy(cls_rows),
        "rollout": (maps.rollout_cls_from_fused(out.fused, settings.residual, settings.discard_ratio, npf)
                    if out.fused is not None else None),
        "patch_entropy": out.row_entropy[:, 0, :, npf:] if out.row_entropy is not None else None,
        "query": rows[:, :, :, 1, npf:] if rows.shape[3] > 1 else None,
        "token_norm": out.norms[..., npf:] if out.norms is not None else None,
        "relevance": out.relevance,
    }
    b = rows.shape[0]
    if out.logits is not None:
        probs = engine.probabilities(out.logits)
        top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
        parts["top_p"], parts["top_i"] = top_p, top_i.float()
        finite = torch.isfinite(out.logits).all(-1)
    else:
        parts["top_p"] = parts["top_i"] = None
        finite = torch.ones(b, dtype=torch.bool, device=rows.device)
    finite = finite & torch.isfinite(cls_rows).flatten(1).all(-1)
    parts["finite"] = finite.float()
    if out.targets is not None:
        parts["target"] = out.targets.float()
        if out.logits is not None:
            parts["target_p"] = engine.probabilities(out.logits).gather(1, out.targets[:, None])[:, 0]
    names = [n for n, t in parts.items() if t is not None]
    tensors = [parts[n].reshape(b, -1).float() for n in names]
    flat = torch.cat(tensors, dim=1).cpu().numpy()  # the one device-to-host copy
    items = []
    for i in range(b):
        item: dict = dict.fromkeys(parts)
        pos = 0
        for name, t in zip(names, tensors, strict=True):
            width = t.shape[1]
            item[name] = flat[i, pos : pos + width].reshape(tuple(parts[name].shape[1:]))
            pos += width
        items.append(item)
    return items


def process_frames(engine: AttentionEngine, frames: Sequence[Frame], settings: MapSettings,
                   boxes_inputs: list[tuple[tuple[int, int, int, int], Tensor]] | None = None) -> list[Result]:
    """A batch of frames (of one size) through preprocessing, one forward pass and the maps.

    ``boxes_inputs``: already preprocessed ``(box, tensor [1, 3, h, w])`` per frame (a still image
    reuses its own); by default each frame is preprocessed here.
    """
    t0 = time.perf_counter()
    prepared = boxes_inputs or [engine.preprocess_with_box(f.image)[::-1] for f in frames]
    x = torch.cat([t for _, t in prepared])
    n = engine.num_prefix + (x.shape[-2] // engine.patch_size) * (x.shape[-1] // engine.patch_size)
    keep = keep_for(engine, settings, n)
    if settings.relevance and engine.has_classifier:
        out = engine.explain(x, keep, settings.target)
    else:
        out = engine.run(x, keep)
    items = compute_maps(engine, out, settings)
    dt = (time.perf_counter() - t0) * 1000.0 / len(frames)
    done = time.monotonic_ns()
    results = []
    layer = settings.entropy_layer % engine.num_layers
    for i, (frame, (box, _), m) in enumerate(zip(frames, prepared, items, strict=True)):
        results.append(_result(engine, frame, box, out, i, m, settings, layer, dt, done))
    return results


def _result(engine: AttentionEngine, frame: Frame, box, out: RunOutput, i: int, m: dict,
            settings: MapSettings, layer: int, infer_ms: float, done_ns: int) -> Result:
    finite = bool(m["finite"] > 0.5)
    topk: list[tuple[str, float]] = []
    top_ids: tuple[int, ...] = ()
    if m["top_p"] is not None and finite:
        top_ids = tuple(int(j) for j in m["top_i"])
        topk = [(engine.categories[j], float(p)) for p, j in zip(m["top_p"], top_ids, strict=True)]
    target = int(m["target"]) if m.get("target") is not None else None
    maps_ = {k: (np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0) if isinstance(v, np.ndarray) and not finite else v)
             for k, v in m.items()}
    query_ok = maps_["query"] is not None
    return Result(
        seq=frame.seq,
        t_capture_ns=frame.t_capture_ns,
        t_done_ns=done_ns,
        frame=frame.image,
        box=box,
        grid=out.grid,
        cls=maps_["cls"],
        rollout=maps_["rollout"],
        entropy=maps_["entropy"],
        patch_entropy=maps_["patch_entropy"],
        patch_entropy_layer=layer,
        topk=topk,
        infer_ms=infer_ms,
        settings=settings,
        query=maps_["query"] if query_ok else None,
        query_patch=settings.query_patch if query_ok else None,
        pts_s=frame.pts_s,
        num_prefix=out.num_prefix,
        prefix_share=maps_["prefix_share"],
        token_norm=maps_["token_norm"],
        relevance=maps_["relevance"],
        target=target,
        target_label=engine.categories[target] if target is not None else None,
        target_p=float(m["target_p"]) if m.get("target_p") is not None else None,
        classifier=engine.has_classifier,
        top_ids=top_ids,
        problem=None if finite else "the model's output has NaN or inf values: these maps are blank",
        attn=out.attn[i] if out.attn is not None else None,
        fused=out.fused[i] if out.fused is not None and "fused" in settings.need else None,
    )


# --------------------------------------------------------------------------------------------------
# What a result can compute later, from what it kept
# --------------------------------------------------------------------------------------------------


def patch_entropy_for(result: Result, layer: int) -> np.ndarray | None:
    """Per-patch entropy [H, P] of ``layer``: computed by the worker, or from the kept attention."""
    if layer == result.patch_entropy_layer:
        return result.patch_entropy
    if result.attn is None:
        return None
    return maps.patch_entropy(result.attn[layer : layer + 1], result.num_prefix)[0].cpu().numpy()


def query_for(result: Result, patch: int) -> np.ndarray | None:
    """Attention of ``patch`` to every patch [L, H, P]: computed by the worker, or from the kept attention."""
    if result.query is not None and result.query_patch == patch:
        return result.query
    if result.attn is None:
        return None
    return maps.query_attention(result.attn, patch, result.num_prefix).cpu().numpy()


def flow_for(result: Result, residual: float = 0.5, progress=None, cancel=None) -> np.ndarray:
    """Attention flow [P] of this frame (slow: seconds for ViT-B/16), heads mean-fused."""
    if result.fused is not None:
        mixed = maps.mix_fused(result.fused.float(), residual, result.settings.discard_ratio, result.num_prefix)
    elif result.attn is not None:
        mixed = maps.mixed_layers(result.attn, "mean", residual, result.settings.discard_ratio, result.num_prefix)
    else:
        raise RuntimeError("this frame kept no attention to compute flow from")
    n = mixed.shape[-1]
    if n > FLOW_MAX_TOKENS:
        raise ValueError(f"attention flow over {n} tokens would take hours: use --input-size so that "
                         f"there are at most {FLOW_MAX_TOKENS}")
    return attention_flow_mixed(mixed, result.num_prefix, progress=progress, cancel=cancel).cpu().numpy()
