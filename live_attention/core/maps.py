"""Attention maths: pure torch functions, batched over leading dimensions, on any device, no I/O.

Shapes: ``attn`` is ``[..., L, H, N, N]`` (layers, heads, tokens with the class token first). ``P`` is the
number of patches, ``N - num_prefix``. Every function computes in fp32, whatever the input dtype, and
clamps before logarithms (in fp16 ``0·log 0`` is NaN).

Rollout follows Abnar & Zuidema, "Quantifying Attention Flow in Transformers" (ACL 2020); their attention
flow, a max-flow over the same layer matrices, is in :mod:`live_attention.core.flow`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

Fusion = Literal["mean", "max", "min"]
FUSIONS: tuple[str, ...] = ("mean", "max", "min")
_EPS = 1e-12


def check_attention(attn: Tensor, min_dims: int = 4) -> Tensor:
    """Validate attention probabilities ``[..., L, H, N, N]`` and return them as fp32."""
    if not isinstance(attn, Tensor):
        raise TypeError(f"attention must be a torch.Tensor, got {type(attn).__name__}")
    if not attn.is_floating_point():
        raise TypeError(f"attention must be floating point, got {attn.dtype}")
    if attn.ndim < min_dims:
        raise ValueError(f"attention must be [..., L, H, N, N] (at least {min_dims} dims), got {tuple(attn.shape)}")
    if attn.shape[-1] != attn.shape[-2]:
        raise ValueError(f"attention must be square in its last two dims, got {tuple(attn.shape[-2:])}")
    return attn.float()


def cls_attention(attn: Tensor, num_prefix: int = 1) -> Tensor:
    """Class-token attention to the patches: ``[..., L, H, N, N]`` -> ``[..., L, H, P]``."""
    a = check_attention(attn)
    return a[..., 0, num_prefix:]


def query_attention(attn: Tensor, patch: int, num_prefix: int = 1) -> Tensor:
    """Attention of patch ``patch`` (0-based, row-major over the grid) to every patch:
    ``[..., L, H, N, N]`` -> ``[..., L, H, P]``."""
    a = check_attention(attn)
    p = a.shape[-1] - num_prefix
    if not 0 <= int(patch) < p:
        raise ValueError(f"patch index {patch} out of range 0..{p - 1}")
    return a[..., num_prefix + int(patch), num_prefix:]


def to_grid(values: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
    """Shape a patch vector ``[..., P]`` onto the patch grid ``[..., gh, gw]`` (square when ``grid`` is None)."""
    p = values.shape[-1]
    if grid is None:
        side = math.isqrt(p)
        if side * side != p:
            raise ValueError(f"{p} patches do not form a square grid: pass grid=(rows, cols)")
        grid = (side, side)
    if grid[0] * grid[1] != p:
        raise ValueError(f"grid {grid} does not hold {p} patches")
    return values.reshape(*values.shape[:-1], grid[0], grid[1])


def fuse_heads(attn: Tensor, how: str = "mean", dim: int = -3) -> Tensor:
    """Fuse the head dimension by ``mean``, ``max`` or ``min``.

    ``dim`` is the head axis: -3 for full attention ``[..., H, N, N]``, -2 for maps ``[..., H, P]``.
    """
    a = attn.float()
    if how == "mean":
        return a.mean(dim=dim)
    if how == "max":
        return a.amax(dim=dim)
    if how == "min":
        return a.amin(dim=dim)
    raise ValueError(f"unknown head fusion {how!r}: use one of {', '.join(FUSIONS)}")


def _discard_weak(a: Tensor, ratio: float, num_prefix: int) -> Tensor:
    """Zero the weakest ``ratio`` of patch-to-patch links in each layer matrix ``[..., N, N]``.

    Links to or from prefix tokens (the class token) are never discarded: the class token's row is
    what rollout and flow read out, and its column carries the global information every patch mixes
    in. The quantile is taken per layer (and per batch item) over patch-to-patch links only.
    """
    if ratio <= 0.0:
        return a
    pp = a[..., num_prefix:, num_prefix:]
    flat = pp.flatten(-2)
    k = int(flat.shape[-1] * ratio)
    if k == 0:
        return a
    idx = flat.topk(k, dim=-1, largest=False).indices
    mask = torch.ones_like(flat, dtype=torch.bool).scatter_(-1, idx, False).view_as(pp)
    out = a.clone()
    out[..., num_prefix:, num_prefix:] = pp * mask
    return out


def _check_mix(residual: float, discard_ratio: float) -> None:
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def mix_fused(fused: Tensor, residual: float = 0.5, discard_ratio: float = 0.0, num_prefix: int = 1) -> Tensor:
    """Head-fused layer matrices ``[..., L, N, N]`` with weak links discarded, mixed with the identity and
    rows renormalised (:func:`mixed_layers` after its head fusion)."""
    _check_mix(residual, discard_ratio)
    a = _discard_weak(fused.float(), discard_ratio, num_prefix)
    # Renormalise after fusion/discard (max and min fusion break row sums), then mix the residual.
    a = a / a.sum(-1, keepdim=True).clamp_min(_EPS)
    n = a.shape[-1]
    eye = torch.eye(n, device=a.device, dtype=a.dtype)
    a = (1.0 - residual) * a + residual * eye
    return a / a.sum(-1, keepdim=True).clamp_min(_EPS)


def mixed_layers(attn: Tensor, head_fusion: str = "mean", residual: float = 0.5, discard_ratio: float = 0.0,
                 num_prefix: int = 1) -> Tensor:
    """Each layer's heads fused, weak links discarded, mixed with the identity, rows renormalised.

    ``[..., L, H, N, N]`` -> ``[..., L, N, N]``, rows summing to 1. These matrices are the edges of
    both rollout and flow.
    """
    _check_mix(residual, discard_ratio)
    return mix_fused(fuse_heads(check_attention(attn), head_fusion), residual, discard_ratio, num_prefix)


def rollout(attn: Tensor, head_fusion: str = "mean", residual: float = 0.5, discard_ratio: float = 0.0,
            cumulative: bool = False, num_prefix: int = 1) -> Tensor:
    """Attention rollout: ``R_l = A_l @ R_(l-1)`` over mixed layer matrices (:func:`mixed_layers`).

    Returns ``[..., N, N]`` (the whole network), or every ``R_l`` as ``[..., L, N, N]`` with
    ``cumulative=True``. Row 0 of ``R_l`` is the class token's attribution to the input tokens after
    layer ``l``; :func:`rollout_cls` takes its patch part.
    """
    a = mixed_layers(attn, head_fusion, residual, discard_ratio, num_prefix)
    num_layers = a.shape[-3]
    r = a[..., 0, :, :]
    outs = [r]
    for layer in range(1, num_layers):
        r = a[..., layer, :, :] @ r
        outs.append(r)
    return torch.stack(outs, dim=-3) if cumulative else r


def rollout_cls_cumulative(attn: Tensor, head_fusion: str = "mean", residual: float = 0.5,
                           discard_ratio: float = 0.0, num_prefix: int = 1) -> Tensor:
    """The class token's rollout row after every layer, patches only: ``[..., L, H, N, N]`` -> ``[..., L, P]``.

    Equal to ``rollout_cls(rollout(..., cumulative=True))``; see :func:`rollout_cls_from_fused`.
    """
    _check_mix(residual, discard_ratio)
    return rollout_cls_from_fused(fuse_heads(check_attention(attn), head_fusion), residual, discard_ratio,
                                  num_prefix)


def rollout_cls_from_fused(fused: Tensor, residual: float = 0.5, discard_ratio: float = 0.0,
                           num_prefix: int = 1) -> Tensor:
    """The class token's cumulative rollout rows from head-fused layer matrices: ``[..., L, N, N]`` -> ``[..., L, P]``.

    Computed from the top down as row-vector products (``e0ᵀ A_l A_(l-1) … A_1``), about L²/2 · N² work
    instead of L · N³, and without ever building the mixed matrices: with ``A_j = (1 - r) D_j⁻¹ F_j + r I``
    (``D_j`` the row sums of the fused ``F_j``), ``v A_j = (1 - r) (v / D_j) F_j + r v``. So ``fused`` may
    be stored in fp16 (at 4,801 tokens a layer is 46 MB instead of 92) while the vectors stay fp32.
    """
    _check_mix(residual, discard_ratio)
    f = _discard_weak(fused, discard_ratio, num_prefix) if discard_ratio > 0 else fused
    inv = 1.0 / f.sum(-1, dtype=torch.float32).clamp_min(_EPS)  # [..., L, N]
    num_layers = f.shape[-3]

    def times_mixed(v: Tensor, layers: slice) -> Tensor:  # v [..., k, 1, N] times the mixed A of k layers
        scaled = (v * inv[..., layers, None, :]).to(f.dtype)
        return (1.0 - residual) * torch.matmul(scaled, f[..., layers, :, :]).float() + residual * v

    # Row 0 of each mixed A_l: e0 times it.
    e0 = torch.zeros(*f.shape[:-3], num_layers, 1, f.shape[-1], dtype=torch.float32, device=f.device)
    e0[..., 0].fill_(1.0)  # fill_, not a Python scalar assigned: no host tensor inside a captured step
    v = times_mixed(e0, slice(0, num_layers))
    rows = [v[..., 0:1, :, :]]
    # After step s, v[..., l] holds e0ᵀ A_l … A_(l-s); layer l is complete after step l.
    for s_ in range(1, num_layers):
        v = times_mixed(v[..., 1:, :, :], slice(0, num_layers - s_))
        rows.append(v[..., 0:1, :, :])
    out = torch.cat(rows, dim=-3)[..., 0, :]  # [..., L, N]
    return out[..., num_prefix:]


def rollout_cls(r: Tensor, num_prefix: int = 1) -> Tensor:
    """The class token's row of a rollout matrix, patches only: ``[..., N, N]`` -> ``[..., P]``."""
    return r[..., 0, num_prefix:]


def row_entropy(attn: Tensor) -> Tensor:
    """Normalised Shannon entropy of every attention row: ``[..., N, N]`` -> ``[..., N]`` in [0, 1].

    Divided by ``log N``: 1.0 is uniform spread, 0.0 is all attention on one token.
    """
    a = attn.float()
    n = a.shape[-1]
    # xlogy(0, 0) = 0 and one fused pass; clamp first so fp16/bf16 zeros never give NaN.
    h = torch.special.xlogy(a, a.clamp_min(_EPS)).sum(-1).neg_()
    return (h / math.log(n)).clamp_(0.0, 1.0)


def entropy(attn: Tensor, query: str = "cls") -> Tensor:
    """Attention entropy per layer and head: ``[..., L, H, N, N]`` -> ``[..., L, H]``.

    ``query="cls"``: the class token's row. ``query="all"``: the mean over every query row.
    """
    a = check_attention(attn)
    if query == "cls":
        return row_entropy(a[..., 0:1, :])[..., 0]
    if query == "all":
        return row_entropy(a).mean(-1)
    raise ValueError(f"unknown entropy query {query!r}: use 'cls' or 'all'")


def patch_entropy(attn: Tensor, num_prefix: int = 1) -> Tensor:
    """Entropy of each patch's own attention row: ``[..., L, H, N, N]`` -> ``[..., L, H, P]``.

    Shaped onto the grid with :func:`to_grid`, it shows where the model spreads (high) against where
    it focuses (low).
    """
    a = check_attention(attn)
    return row_entropy(a[..., num_prefix:, :])


def normalize_map(values: Tensor, how: str = "minmax", dims: int = 1, q: float = 0.99) -> Tensor:
    """Display normalisation to [0, 1] over the last ``dims`` dimensions.

    ``minmax``: (x - min) / (max - min); ``max``: x / max; ``percentile``: clip at the ``q`` quantile,
    then minmax (robust to a single bright token). Constant maps become zeros.
    """
    x = values.float()
    flat = x.flatten(-dims) if dims > 1 else x
    if how == "percentile":
        hi = torch.quantile(flat, q, dim=-1, keepdim=True)
        flat = torch.minimum(flat, hi)
        how = "minmax"
    if how == "minmax":
        lo = flat.amin(-1, keepdim=True)
        hi = flat.amax(-1, keepdim=True)
        out = (flat - lo) / (hi - lo).clamp_min(_EPS)
        out = torch.where(hi - lo > _EPS, out, torch.zeros_like(out))
    elif how == "max":
        hi = flat.amax(-1, keepdim=True)
        out = flat / hi.clamp_min(_EPS)
    else:
        raise ValueError(f"unknown normalisation {how!r}: use minmax, max or percentile")
    return out.view_as(x)


def prefix_share(cls_rows: Tensor, num_prefix: int) -> Tensor:
    """The part of the class token's attention that goes to the other prefix tokens (distillation,
    registers): ``[..., N]`` class rows -> ``[...]``. Zero for a model with the class token alone."""
    if num_prefix <= 1:
        return torch.zeros(cls_rows.shape[:-1], dtype=torch.float32, device=cls_rows.device)
    return cls_rows[..., 1:num_prefix].float().sum(-1)


def norm_outliers(norms: Tensor, threshold: float = 5.0) -> Tensor:
    """High-norm outlier tokens (the artifacts registers remove, Darcet et al. 2024): a token whose norm
    lies more than ``threshold`` robust standard deviations (1.4826 · MAD) above the median of the
    last dimension. ``[..., P]`` -> bool ``[..., P]``."""
    x = norms.float()
    med = x.median(dim=-1, keepdim=True).values
    mad = (x - med).abs().median(dim=-1, keepdim=True).values * 1.4826
    spread = torch.maximum(mad, med.abs() * 1e-3).clamp_min(_EPS)
    return (x - med) / spread > threshold


def chefer_relevance(attn: Sequence[Tensor] | Tensor, grads: Sequence[Tensor] | Tensor, num_prefix: int = 1) -> Tensor:
    """Class-specific relevance, the self-attention rule of Chefer, Gur & Wolf (ICCV 2021).

    ``R = I``; for each layer ``Ā = mean over heads of (∇A ⊙ A)⁺`` and ``R ← R + Ā R``; the map is the
    class token's row of ``R`` over the patches. Computed in fp32 from the top down as a row vector,
    ``e0ᵀ (I + Ā_L) … (I + Ā_1)``: L·N² work instead of L·N³.

    ``attn`` and ``grads``: per layer ``[B, H, N, N]`` (a sequence, first layer first) or stacked
    ``[B, L, H, N, N]``; the gradient is that of the target class's logit. Returns ``[B, P]``, not
    normalised.
    """
    if isinstance(attn, Tensor):
        attn = check_attention(attn, 5).unbind(1)
    if isinstance(grads, Tensor):
        grads = grads.unbind(1)
    if len(attn) != len(grads) or not attn:
        raise ValueError(f"need one gradient per layer: {len(attn)} layers, {len(grads)} gradients")
    b, _, n, _ = attn[0].shape
    v = torch.zeros(b, 1, n, dtype=torch.float32, device=attn[0].device)
    v[:, 0, 0].fill_(1.0)
    for a, g in zip(reversed(attn), reversed(grads), strict=True):
        if a.shape != g.shape:
            raise ValueError(f"attention {tuple(a.shape)} and gradient {tuple(g.shape)} differ in shape")
        abar = (g.float() * a.float()).clamp_min_(0.0).mean(dim=1)  # [B, N, N]
        v = v + torch.bmm(v, abar)
    return v[:, 0, num_prefix:]
