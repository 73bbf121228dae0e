"""Attention flow (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020).

Pure computation, no I/O: torch in, torch out, with SciPy's Dinic max-flow in between.

The network is a layered graph. Node ``(l, i)`` is token ``i`` after block ``l`` (``l = 0`` the input
tokens, ``l = L`` the output of the last block); the edge ``(l-1, j) -> (l, i)`` has capacity
``A_l[i, j]``, where ``A_l`` are the mixed, renormalised layer matrices of
:func:`live_attention.core.maps.mixed_layers`. The flow of patch ``p`` is the maximum flow from the input
node ``(0, num_prefix + p)`` to the class token at the top, ``(L, 0)``.

Precision: SciPy's max-flow needs integer capacities, so every capacity ``c`` becomes
``floor(c * scale)`` units. The max-flow of that floored graph is computed exactly (integer arithmetic)
and returned as ``units / scale``. Flooring only lowers capacities, so the result never exceeds the
real-valued flow, and falls short of it by less than (edges in a minimum cut) / ``scale``; it never
exceeds the top class token's row sum (1 up to fp32 rounding) either. The default scale is ``2**20``
(one unit ~9.5e-7), lowered for 2047 tokens or more so that the capacities into and out of any node
sum below ``2**31``. A power of two keeps ``units / scale`` exact in floating point.

Speed, all exact: the graph is built once per batch item and reused for every patch (only the source's
edges change). Layer 0 collapses to one source node (the other input tokens have no incoming edges) and
layer ``L`` to the sink (only the class token is read). Edges that floor to 0 or lie on no path from an
input patch to the sink are left out. Each patch is first solved on sparse subgraphs (every node's 16,
then 64, strongest in- and out-links and its residual link): a flow there is a flow in the full graph,
so when it reaches the trivial cut bound ``min(out-capacity of the patch, in-capacity of the sink)`` it
is the maximum. Otherwise the full graph decides. On dense attention the subgraphs settle nearly every
patch; a subgraph that keeps failing is dropped, so the worst case costs little more than the full
graph alone.
"""

from __future__ import annotations

import operator
import threading
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import torch
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_flow
from torch import Tensor

from live_attention.core.maps import check_attention, mixed_layers

__all__ = ["DEFAULT_SCALE", "FlowCancelled", "attention_flow", "attention_flow_mixed", "default_scale"]

DEFAULT_SCALE = 2**20
_INT32_MAX = int(np.iinfo(np.int32).max)
_SPARSE_KS: tuple[int, ...] = (16, 64)  # strongest links kept per node (in and out), per subgraph tier
_SPARSE_GIVE_UP = 8  # a tier is dropped once it failed this many times, and more often than not


class FlowCancelled(Exception):
    """Raised by :func:`attention_flow` when its ``cancel`` signal is set."""


def default_scale(num_tokens: int) -> int:
    """The default capacity scale for ``num_tokens`` tokens: ``2**20``, or the largest power of two
    for which ``num_tokens + 1`` full-capacity edges still sum below ``2**31``."""
    limit = _INT32_MAX // (max(int(num_tokens), 1) + 1)
    return min(DEFAULT_SCALE, 1 << (limit.bit_length() - 1))


def attention_flow(
    attn: Tensor,
    head_fusion: str = "mean",
    residual: float = 0.5,
    discard_ratio: float = 0.0,
    num_prefix: int = 1,
    scale: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Tensor:
    """Attention flow: the max-flow from each input patch to the class token at the top.

    ``[..., L, H, N, N]`` -> ``[..., P]`` (``P = N - num_prefix``), float32 on the input's device. The
    values are raw flows in [0, 1], not rescaled (:func:`live_attention.core.maps.normalize_map` is for
    display). The graph maths runs on the CPU in float64 and int32.

    Args:
        attn: attention probabilities ``[..., L, H, N, N]``, class token first; any float dtype/device.
        head_fusion: ``mean``, ``max`` or ``min`` over heads (:func:`live_attention.core.maps.mixed_layers`).
        residual: weight of the identity mixed into every layer, in [0, 1].
        discard_ratio: fraction of the weakest patch-to-patch links dropped per layer, in [0, 1).
        num_prefix: number of prefix tokens (class, registers) before the patches.
        scale: capacity units per unit of attention, a positive int; None for :func:`default_scale`.
            The result is exact for the capacities floored to multiples of ``1 / scale``.
        progress: called as ``progress(done, total)`` after each flow, on the calling thread;
            ``total`` counts the patches of every batch item.
        cancel: a ``threading.Event``, or a callable returning True, checked before each flow.

    Raises:
        TypeError, ValueError: bad attention or arguments, or a scale that would overflow int32.
        FlowCancelled: ``cancel`` was set.
    """
    a = check_attention(attn)
    if a.shape[-4] < 1 or a.shape[-3] < 1:
        raise ValueError(f"attention needs at least one layer and one head, got {tuple(a.shape)}")
    num_prefix = operator.index(num_prefix)
    if not 0 <= num_prefix <= a.shape[-1]:
        raise ValueError(f"num_prefix must be in 0..{a.shape[-1]} for {a.shape[-1]} tokens, got {num_prefix}")
    mixed = mixed_layers(a, head_fusion, residual, discard_ratio, num_prefix)
    return attention_flow_mixed(mixed, num_prefix, scale, progress, cancel).to(attn.device)


def attention_flow_mixed(
    mixed: Tensor,
    num_prefix: int = 1,
    scale: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | Callable[[], bool] | None = None,
) -> Tensor:
    """Attention flow from the mixed layer matrices of :func:`live_attention.core.maps.mixed_layers`
    (or :func:`~live_attention.core.maps.mix_fused`): ``[..., L, N, N]`` -> ``[..., P]`` float32, on the
    input's device. The other arguments as in :func:`attention_flow`."""
    *batch, num_layers, n, _ = mixed.shape
    if num_layers < 1:
        raise ValueError(f"need at least one layer, got {tuple(mixed.shape)}")
    num_prefix = operator.index(num_prefix)
    if not 0 <= num_prefix <= n:
        raise ValueError(f"num_prefix must be in 0..{n} for {n} tokens, got {num_prefix}")
    if scale is None:
        scale = default_scale(n)
    else:
        scale = operator.index(scale)
        if not 1 <= scale <= _INT32_MAX:
            raise ValueError(f"scale must be an integer in 1..{_INT32_MAX}, got {scale}")
    is_cancelled = _cancel_check(cancel)
    m = mixed.detach().to("cpu", torch.float64).numpy().reshape(-1, num_layers, n, n)
    if not np.isfinite(m).all():
        raise ValueError("attention contains NaN or Inf")
    if (m < 0).any():
        raise ValueError("attention probabilities must be non-negative")

    p = n - num_prefix
    total = m.shape[0] * p
    out = np.zeros((m.shape[0], p), dtype=np.float64)
    done = 0
    for b, item in enumerate(m):
        for k, units in enumerate(_item_flows(item, num_prefix, scale)):
            if is_cancelled():
                raise FlowCancelled(f"attention flow cancelled after {done} of {total} flows")
            out[b, k] = units() / scale
            done += 1
            if progress is not None:
                progress(done, total)
    return torch.from_numpy(out.astype(np.float32)).reshape(*batch, p).to(mixed.device)


def _cancel_check(cancel: threading.Event | Callable[[], bool] | None) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if isinstance(cancel, threading.Event):
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError(f"cancel must be a threading.Event or a callable, got {type(cancel).__name__}")


def _floor_units(x: np.ndarray, scale: int) -> np.ndarray:
    units = np.floor(x * scale).astype(np.int64)
    if units.size and max(units.sum(0).max(), units.sum(-1).max()) > _INT32_MAX:
        raise ValueError(f"scale {scale} overflows the int32 max-flow capacities: use a smaller scale")
    return units


class _Network:
    """The pruned layered graph as a CSR matrix: node 0 the source (its slots are rewritten for each
    patch), then the kept nodes of layers 1..L-1, then the sink.

    ``blocks[l]`` holds the capacities from the kept nodes of layer ``l + 1`` (rows) to those of layer
    ``l + 2`` (columns); ``top`` the capacities from the kept nodes of layer ``L - 1`` to the sink.
    """

    def __init__(self, first: int, blocks: list[np.ndarray], top: np.ndarray) -> None:
        offset = 1 + first
        indices = [1 + np.arange(first)]
        counts: list[np.ndarray] = [np.array([first])]
        data = [np.zeros(first, np.int64)]
        for block in blocks:
            rows, cols = np.nonzero(block)  # row-major: columns sorted within each row
            indices.append(offset + cols)  # offset: the id of the head layer's first node
            counts.append(np.bincount(rows, minlength=block.shape[0]))
            data.append(block[rows, cols])
            offset += block.shape[1]
        self.sink = offset
        indices.append(np.full(top.size, self.sink))
        counts.append(np.ones(top.size, np.int64))
        data.append(top)
        counts.append(np.zeros(1, np.int64))  # the sink's row
        indptr = np.concatenate([[0], np.cumsum(np.concatenate(counts))])
        self.graph = csr_matrix(
            (np.concatenate(data).astype(np.int32), np.concatenate(indices).astype(np.int32),
             indptr.astype(np.int32)),
            shape=(self.sink + 1, self.sink + 1),
        )
        self._source = self.graph.data[:first]  # a view into the CSR data

    @property
    def nnz(self) -> int:
        return int(self.graph.nnz)

    def flow(self, source_caps: np.ndarray) -> int:
        self._source[:] = source_caps
        return int(maximum_flow(self.graph, 0, self.sink, method="dinic").flow_value)


class _Tier:
    """A subgraph tried before the full graph: a flow there is a flow in the full graph, so one that
    reaches a cut's capacity is the maximum. Built on first use; dropped once it fails more often than
    not (after ``_SPARSE_GIVE_UP`` failures)."""

    def __init__(self, first: int, blocks: list[np.ndarray], top: np.ndarray) -> None:
        self._args: tuple[int, list[np.ndarray], np.ndarray] | None = (first, blocks, top)
        self._network: _Network | None = None
        self.tries = self.misses = 0

    def reaches(self, source_caps: np.ndarray, bound: int) -> bool:
        if self.misses >= _SPARSE_GIVE_UP and 2 * self.misses > self.tries:
            return False
        if self._network is None:
            assert self._args is not None  # kept until the network is built
            self._network = _Network(*self._args)
            self._args = None
        self.tries += 1
        if self._network.flow(source_caps) == bound:
            return True
        self.misses += 1
        return False


def _strongest(caps: np.ndarray, k: int) -> np.ndarray:
    """``caps`` ``[N, N]`` (tail, head) with only each row's and each column's ``k`` largest entries,
    and the diagonal (the residual links), kept."""
    n = caps.shape[0]
    if k >= n:
        return caps
    keep = np.zeros(caps.shape, dtype=bool)
    np.put_along_axis(keep, np.argpartition(-caps, k - 1, axis=1)[:, :k], True, axis=1)
    np.put_along_axis(keep, np.argpartition(-caps, k - 1, axis=0)[:k, :], True, axis=0)
    np.fill_diagonal(keep, True)
    return np.where(keep, caps, 0)


def _item_flows(mixed: np.ndarray, num_prefix: int, scale: int) -> Iterator[Callable[[], int]]:
    """For one item (``mixed`` ``[L, N, N]``), yield for each patch a thunk computing its max-flow in
    capacity units (thunks let the caller check for cancellation before each solve)."""
    num_layers, n, _ = mixed.shape
    p = n - num_prefix
    src = _floor_units(mixed[0][:, num_prefix:], scale)  # [N, P]: input patch s -> (1, i), A_1[i, s]
    if num_layers == 1:  # the only path is the single edge (0, s) -> (1, 0)
        for k in range(p):
            yield partial(int, src[0, k])
        return

    # (l, j) -> (l+1, i) with capacity A_(l+1)[i, j], as [tail j, head i], for l = 1..L-2.
    mids = [_floor_units(mixed[layer].T, scale) for layer in range(1, num_layers - 1)]
    top = _floor_units(mixed[-1][0], scale)  # (L-1, j) -> sink

    # Keep the nodes of layers 1..L-1 that some input patch reaches and that reach the sink.
    # np.any(a, axis) rather than a.any(axis): numpy's stub types the method's result as a bool or an array.
    reach: list[np.ndarray] = [np.any(src, axis=1)]
    for c in mids:
        reach.append(np.any(reach[-1][:, None] & (c > 0), axis=0))
    alive = [top > 0]
    for c in reversed(mids):
        alive.insert(0, ((c > 0) & alive[0][None, :]).any(1))
    kept = [np.flatnonzero(r & a) for r, a in zip(reach, alive, strict=True)]
    if kept[0].size == 0:
        for _ in range(p):
            yield lambda: 0
        return

    def blocks(layers: list[np.ndarray]) -> list[np.ndarray]:
        return [c[np.ix_(kept[i], kept[i + 1])] for i, c in enumerate(layers)]

    src_kept, top_kept = src[kept[0]], top[kept[-1]]
    full_blocks = blocks(mids)
    full_nnz = sum(map(np.count_nonzero, full_blocks))
    tiers = []
    for k in _SPARSE_KS:
        sub = blocks([_strongest(c, k) for c in mids])
        if 2 * sum(map(np.count_nonzero, sub)) <= full_nnz:  # else not worth a try
            tiers.append(_Tier(kept[0].size, sub, top_kept))
    full: _Network | None = None  # built on first need
    sink_in = int(top_kept.sum())

    def solve(k: int) -> int:
        nonlocal full
        caps = src_kept[:, k]
        bound = min(int(caps.sum()), sink_in)  # the cut around the source, or around the sink
        if bound == 0:
            return 0
        for tier in tiers:
            if tier.reaches(caps, bound):
                return bound
        if full is None:
            full = _Network(kept[0].size, full_blocks, top_kept)
        return full.flow(caps)

    for k in range(p):
        yield partial(solve, k)
