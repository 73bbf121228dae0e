"""Per-frame maps: what one forward pass gives every view, computed on the device and copied once.

:func:`keep_for` says which parts of the attention a frame needs (so the engine stores nothing else),
:func:`compute_maps` turns a batch's :class:`~live_attention.core.keep.RunOutput` into per-frame
arrays with one device-to-host copy for the whole batch, and :func:`process_frames` does both for a
batch of camera frames and returns :class:`~live_attention.datatypes.Result` objects. The inference
worker, replay, export, ``render`` and ``evaluate`` all go through here.

Also the helpers the renderer uses for what a result may compute later from kept attention (a
query row, one layer's patch entropy, flow).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from live_attention import names
from live_attention.core import maps
from live_attention.core.engine import AttentionEngine
from live_attention.core.flow import attention_flow_mixed
from live_attention.core.keep import ANY_FUSION, Keep, RunOutput, Selection
from live_attention.datatypes import MapSettings, Result

# Rollout and flow need every layer's head-fused N×N matrix. Past this many bytes of them (fp16 at
# large sizes) a frame says "too many tokens" instead of running out of memory.
FUSED_BUDGET_BYTES = 768 * 2**20
FLOW_MAX_TOKENS = 1025  # max-flow over L·N² edges: beyond about 1,000 tokens it takes minutes
FP16_FUSED_TOKENS = 1024  # store the fused matrices in fp16 from this many tokens on


def fused_dtype(engine: AttentionEngine, num_tokens: int) -> torch.dtype:
    """How the fused layer matrices are stored: fp16 on an accelerator past 1,024 tokens, else fp32."""
    return torch.float16 if num_tokens >= FP16_FUSED_TOKENS and engine.device.type != "cpu" else torch.float32


def fused_bytes(engine: AttentionEngine, num_tokens: int) -> int:
    """Bytes of one frame's fused layer matrices (what rollout and flow need) at ``num_tokens`` tokens."""
    return engine.num_layers * num_tokens * num_tokens * fused_dtype(engine, num_tokens).itemsize


def _graphed(engine: AttentionEngine, graphed: bool | None) -> bool:
    return engine.device.type == "cuda" if graphed is None else bool(graphed)


def keep_layers(engine: AttentionEngine, settings: MapSettings, graphed: bool | None = None) -> tuple[int, ...]:
    """The layers whose row entropies a frame keeps: the chosen one for an eager step (a CPU); all of
    them for a captured one (a GPU), where they cost little and keep the shown layer out of what a graph
    is keyed by (the input's shape, what the mode keeps, rollout's parameters: see
    :mod:`live_attention.core.step`), so changing the layer (animation, arrow keys) replays the graph
    already captured. ``graphed``: None for the engine's device's default."""
    if _graphed(engine, graphed):
        return tuple(range(engine.num_layers))
    return (settings.entropy_layer % engine.num_layers,)


def query_patch_kept(engine: AttentionEngine, settings: MapSettings, num_tokens: int | None = None) -> int | None:
    """The query patch whose rows a frame keeps: ``settings.query_patch`` when it lies on the grid."""
    n = engine.num_tokens if num_tokens is None else num_tokens
    q = settings.query_patch
    return q if q is not None and 0 <= q < n - engine.num_prefix else None


def keep_for(engine: AttentionEngine, settings: MapSettings, num_tokens: int | None = None,
             graphed: bool | None = None) -> Keep:
    """What a frame needs kept: the class token's rows (and the query patch's) always; head-fused layers
    for rollout and flow (when they fit), row entropies (:func:`keep_layers`) and token norms when their
    views are asked for; full attention only when asked. In the live attention or heads view that is the
    class token's rows alone, and the model runs its fused attention kernel.

    For a captured step (``graphed``; default: on CUDA) what is kept depends on the view's mode only,
    not on what it shows of it: every layer's entropies, the fusion chosen when the pass runs
    (:data:`~live_attention.core.keep.ANY_FUSION`), and in the query view a second row whatever the
    patch (the class token's while none is chosen), so navigating never needs another capture.
    """
    n = engine.num_tokens if num_tokens is None else num_tokens
    graph = _graphed(engine, graphed)
    rows = [0]
    q = query_patch_kept(engine, settings, n)
    if q is not None:
        rows.append(engine.num_prefix + q)
    elif graph and settings.maps is not None and names.QUERY in settings.maps:
        rows.append(0)  # a placeholder: the same graph serves the patch chosen later
    fused = settings.wants(names.ROLLOUT) or "fused" in settings.need
    return Keep(
        attn="attn" in settings.need,
        rows=tuple(rows),
        fused=(ANY_FUSION if graph else settings.fusion) if fused and fused_bytes(engine, n) <= FUSED_BUDGET_BYTES else None,
        entropy_layers=keep_layers(engine, settings, graph) if settings.wants(names.PATCH_ENTROPY) else (),
        norms=settings.wants(names.TOKEN_NORM),
        dtype=fused_dtype(engine, n),
    )


def selection_for(engine: AttentionEngine, keep: Keep, settings: MapSettings) -> Selection:
    """The :class:`~live_attention.core.keep.Selection` that shows ``settings`` from what ``keep`` keeps:
    its rows, the patch-entropy layer's position among the kept layers, the fusion's index."""
    layers = sorted({i % engine.num_layers for i in keep.entropy_layers})
    layer = settings.entropy_layer % engine.num_layers
    position = layers.index(layer) if layer in layers else 0
    fusion = maps.FUSIONS.index(settings.fusion) if settings.fusion in maps.FUSIONS else 0
    return engine.selection(keep.rows, position, fusion)


@dataclass(frozen=True)
class MapsLayout:
    """How :func:`maps_tensor` packs one item's maps into a row: names and shapes, in order; the
    names of maps that were not computed are listed too (unpacked as None)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    absent: tuple[str, ...]


def maps_tensor(engine: AttentionEngine, out: RunOutput, settings: MapSettings, k: int = 5,
                select: Selection | None = None) -> tuple[Tensor, MapsLayout]:
    """Every per-frame map of a batch, computed on the device and packed into one fp32 tensor [B, K].

    Pure device work (no host synchronisation), so a CUDA graph can capture it with the forward pass;
    :func:`unpack_maps` reads a row back. The maps: ``cls`` [L, H, P], ``prefix_share`` [L, H],
    ``entropy`` [L, H], ``rollout`` [L, P], ``patch_entropy`` [H, P] (of the layer ``select.layer``
    points at among those kept; default: ``settings.entropy_layer``), ``query`` [L, H, P],
    ``token_norm`` [L, P], ``relevance`` [P], ``top_p``/``top_i`` [k], ``target``, ``target_p``,
    ``finite``; those the output does not allow are absent. What ``settings`` changes here (rollout's
    residual and discard ratio) is part of what a captured step is keyed by.
    """
    npf = out.num_prefix
    rows = out.rows  # [B, L, H, R, N]
    assert rows is not None, "compute_maps needs the token rows kept"
    cls_rows = rows[:, :, :, 0, :]
    pe = None
    if out.row_entropy is not None:
        if out.row_entropy.shape[1] > 1:
            if select is None:
                select = selection_for(engine, Keep.parts(entropy_layers=tuple(range(out.row_entropy.shape[1]))),
                                       settings)
            pe = out.row_entropy.index_select(1, select.layer)[:, 0, :, npf:]
        else:
            pe = out.row_entropy[:, 0, :, npf:]
    parts: dict[str, Tensor | None] = {
        names.CLS: cls_rows[..., npf:],
        names.PREFIX_SHARE: maps.prefix_share(cls_rows, npf),
        names.ENTROPY: maps.row_entropy(cls_rows),
        names.ROLLOUT: (maps.rollout_cls_from_fused(out.fused, settings.residual, settings.discard_ratio, npf)
                    if out.fused is not None else None),
        names.PATCH_ENTROPY: pe,
        names.QUERY: rows[:, :, :, 1, npf:] if rows.shape[3] > 1 else None,
        names.TOKEN_NORM: out.norms[..., npf:] if out.norms is not None else None,
        names.RELEVANCE: out.relevance,
        "top_p": None,
        "top_i": None,
    }
    b = rows.shape[0]
    finite = torch.isfinite(cls_rows).flatten(1).all(-1)
    if out.logits is not None:
        probs = engine.probabilities(out.logits)
        top_p, top_i = probs.topk(min(k, probs.shape[-1]), dim=-1)
        parts["top_p"], parts["top_i"] = top_p, top_i.float()
        finite = finite & torch.isfinite(out.logits).all(-1)
        if out.targets is not None:
            parts["target"] = out.targets.float()
            parts["target_p"] = probs.gather(1, out.targets[:, None])[:, 0]
    parts["finite"] = finite.float()
    present = {n: t for n, t in parts.items() if t is not None}
    keys = tuple(present)
    tensors = [t.reshape(b, -1).float() for t in present.values()]
    layout = MapsLayout(keys, tuple(tuple(t.shape[1:]) for t in present.values()),
                        tuple(n for n, t in parts.items() if t is None))
    return torch.cat(tensors, dim=1), layout


def unpack_maps(flat: np.ndarray, layout: MapsLayout) -> list[dict]:
    """The rows of :func:`maps_tensor` (on the host) as one dict of arrays per item."""
    items = []
    for row in flat:
        item: dict = dict.fromkeys(layout.absent)
        pos = 0
        for name, shape in zip(layout.names, layout.shapes, strict=True):
            size = int(np.prod(shape, dtype=np.int64))
            item[name] = row[pos : pos + size].reshape(shape)
            pos += size
        items.append(item)
    return items


def compute_maps(engine: AttentionEngine, out: RunOutput, settings: MapSettings, k: int = 5) -> list[dict]:
    """Per-item maps of one batch (see :func:`maps_tensor`), with the one device-to-host copy."""
    flat, layout = maps_tensor(engine, out, settings, k)
    return unpack_maps(flat.cpu().numpy(), layout)


# --------------------------------------------------------------------------------------------------
# What a result can compute later, from what it kept
# --------------------------------------------------------------------------------------------------


def patch_entropy_for(result: Result, layer: int) -> np.ndarray | None:
    """Per-patch entropy [H, P] of ``layer``: computed by the worker, or from the kept attention."""
    if layer == result.patch_entropy_layer and result.patch_entropy is not None:
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
