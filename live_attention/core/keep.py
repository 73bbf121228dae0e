"""What a forward pass keeps (:class:`Keep`), what it shows of it (:class:`Selection`), what it returns
(:class:`RunOutput`), and the :class:`Collector` that each layer reports its attention to."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from live_attention.core import maps

ANY_FUSION = "any"  # Keep.fused: the fusion is data (Selection.fusion), chosen when the pass runs


@dataclass(frozen=True)
class Keep:
    """The parts of the attention one forward pass keeps; nothing else is stored.

    Args:
        attn: every layer's and head's full attention ``[B, L, H, N, N]``.
        rows: these token rows of every layer and head, ``[B, L, H, R, N]`` fp32 (0: the class token).
        fused: ``mean``, ``max`` or ``min``: per-layer head-fused matrices ``[B, L, N, N]`` (rollout, flow);
            ``any``: the one a :class:`Selection` names when the pass runs (a captured graph then serves
            all three).
        entropy_layers: the normalised entropy of every row of these layers, ``[B, len, H, N]``.
        norms: each token's norm after every block, ``[B, L, N]``.
        dtype: storage of ``attn`` and ``fused`` (fp32, or fp16 to halve their memory).
    """

    attn: bool = True
    rows: tuple[int, ...] = ()
    fused: str | None = None
    entropy_layers: tuple[int, ...] = ()
    norms: bool = False
    dtype: torch.dtype = torch.float32

    @classmethod
    def parts(cls, **kwargs) -> Keep:
        """Only the named parts (no full attention)."""
        return cls(attn=False, **kwargs)


@dataclass(frozen=True)
class RunOutput:
    """One forward pass. ``logits`` [B, C] fp32 (None without a classifier); the attention parts a
    :class:`Keep` asked for (else None); ``grid`` (rows, cols) of patches; ``num_prefix`` tokens before
    them (class, distillation, registers). ``relevance`` [B, P] and ``targets`` [B] when explained."""

    logits: Tensor | None
    attn: Tensor | None = None
    rows: Tensor | None = None
    fused: Tensor | None = None
    row_entropy: Tensor | None = None
    norms: Tensor | None = None
    grid: tuple[int, int] = (0, 0)
    num_prefix: int = 1
    relevance: Tensor | None = None
    targets: Tensor | None = None


@dataclass(frozen=True)
class Selection:
    """What a pass shows of what it keeps, as data on the device rather than code: the token rows kept
    (``rows`` [R]), the position of the patch-entropy layer among ``Keep.entropy_layers`` (``layer`` [1])
    and the head fusion's index in :data:`~live_attention.core.maps.FUSIONS` (``fusion`` [1]), all int64
    views of one tensor. A captured CUDA graph reads them from its own copy, so another query patch,
    layer or fusion replays the same graph; see :meth:`AttentionEngine.selection`."""

    packed: Tensor  # [R + 2] int64 on the engine's device
    num_rows: int

    @property
    def rows(self) -> Tensor:
        return self.packed[: self.num_rows]

    @property
    def layer(self) -> Tensor:
        return self.packed[self.num_rows : self.num_rows + 1]

    @property
    def fusion(self) -> Tensor:
        return self.packed[self.num_rows + 1 :]


def _fp32_rows(p: Tensor) -> Tensor:
    """Probabilities as fp32 rows summing to 1: a bf16 or fp16 softmax is renormalised after the cast."""
    if p.dtype == torch.float32:
        return p
    p = p.float()
    return p / p.sum(-1, keepdim=True).clamp_min(1e-12)


def _fuse(p: Tensor, how: str, dtype: torch.dtype) -> Tensor:
    """Heads fused, ``[B, H, N, N]`` -> ``[B, N, N]`` in ``dtype``: the mean accumulates in fp32 without an
    fp32 copy of the whole input; max and min are exact in any dtype."""
    if how == "mean":
        return p.mean(dim=1, dtype=torch.float32).to(dtype)
    if how == "max":
        return p.amax(dim=1).to(dtype)
    if how == "min":
        return p.amin(dim=1).to(dtype)
    return maps.fuse_heads(p, how)  # raises: an unknown fusion


class Collector:
    """Receives each layer's attention during a forward pass (a ``LayerSink``) and keeps what ``keep`` says."""

    def __init__(self, keep: Keep, num_layers: int, select: Selection, grad: bool = False) -> None:
        self.keep = keep
        self.num_layers = num_layers
        self.rows = tuple(keep.rows)
        self.row_index = select.rows  # the rows as a device tensor: indexing with a list would copy it each time
        self.select = select
        self.entropy_layers = tuple(sorted({int(i) % num_layers for i in keep.entropy_layers}))
        self.full: list[Tensor | None] = [None] * num_layers
        self.row_parts: list[Tensor | None] = [None] * num_layers
        self.fused: list[Tensor | None] = [None] * num_layers
        self.entropy: dict[int, Tensor] = {}
        self.norms: list[Tensor | None] = [None] * num_layers
        self.graph: list[Tensor] | None = [] if grad else None  # the in-graph probabilities, for gradients

    def wants_full(self, layer: int) -> bool:
        k = self.keep
        return k.attn or k.fused is not None or layer in self.entropy_layers or self.graph is not None

    def attention(self, layer: int, probs: Tensor) -> None:
        if self.graph is not None:
            self.graph.append(probs)
        p = probs.detach()
        k = self.keep
        if k.attn:
            self.full[layer] = _fp32_rows(p).to(k.dtype)
        if self.rows:
            self.row_parts[layer] = _fp32_rows(p.index_select(2, self.row_index))
        if k.fused == ANY_FUSION:
            # All three, then the selected one: [B, 3, N, N] only for as long as this layer takes.
            every = torch.stack([_fuse(p, how, k.dtype) for how in maps.FUSIONS], dim=1)
            self.fused[layer] = every.index_select(1, self.select.fusion)[:, 0]
        elif k.fused is not None:
            self.fused[layer] = _fuse(p, k.fused, k.dtype)
        if layer in self.entropy_layers:
            self.entropy[layer] = maps.row_entropy(p)

    def attention_rows(self, layer: int, probs: Tensor) -> None:
        self.row_parts[layer] = _fp32_rows(probs.detach())

    def block_output(self, layer: int, tokens: Tensor) -> None:
        if self.keep.norms:
            self.norms[layer] = tokens.detach().float().norm(dim=-1)

    def output(self, logits: Tensor | None, grid: tuple[int, int], num_prefix: int) -> RunOutput:
        def stack(parts: list[Tensor | None]) -> Tensor | None:
            kept = [p for p in parts if p is not None]
            return torch.stack(kept, dim=1) if kept and len(kept) == len(parts) else None

        k = self.keep
        ent = torch.stack([self.entropy[i] for i in self.entropy_layers], dim=1) if self.entropy_layers else None
        return RunOutput(
            logits=logits.detach().float() if logits is not None else None,
            attn=stack(self.full) if k.attn else None,
            rows=stack(self.row_parts) if self.rows else None,
            fused=stack(self.fused) if k.fused is not None else None,
            row_entropy=ent,
            norms=stack(self.norms) if k.norms else None,
            grid=grid,
            num_prefix=num_prefix,
        )
