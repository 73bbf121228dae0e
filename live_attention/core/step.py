"""The per-frame step, from the model's input to every map on the host: eager, or a replayed CUDA graph.

On a GPU one ViT-B/16 frame is a few hundred small kernels: launching them costs more than running
them (an H200 ran the eager forward in 3.7 ms, the same forward captured as a CUDA graph in 0.9 ms).
So on CUDA the step (forward pass with what the views keep, and every map packed into one tensor by
:func:`~live_attention.core.frame_maps.maps_tensor`) is captured once per input size and map settings
and replayed; the host then copies one small tensor. Where capture is not possible (a CPU, relevance,
which needs autograd, flow or queries that keep whole matrices, a library that synchronises inside its
forward) the step runs eagerly, and the first failed capture is logged with its reason.

Owned by whichever thread owns the engine (the inference worker).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from live_attention.core.engine import AttentionEngine
from live_attention.core.frame_maps import MapsLayout, keep_for, maps_tensor, unpack_maps
from live_attention.core.preprocess import Box
from live_attention.datatypes import Frame, MapSettings, Result

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8  # captured steps kept (input sizes × settings); each holds its own memory pool
WARMUP = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS choose their kernels)


@dataclass(frozen=True)
class StepOutput:
    """One step's maps on the host (see :func:`~live_attention.core.frame_maps.unpack_maps`), and what
    the forward pass kept on the device for later (full attention, fused layers) when asked."""

    flat: np.ndarray
    layout: MapsLayout
    grid: tuple[int, int]
    num_prefix: int
    attn: Tensor | None = None
    fused: Tensor | None = None
    graphed: bool = False


class CudaGraphs:
    """Captures a step as a CUDA graph: warm-up runs on a side stream, then one captured run whose
    kernels :meth:`replay` launches again on the same (static) input and output memory."""

    def capture(self, step, static_in: Tensor):
        """Returns ``(replay, outputs)``: ``replay()`` recomputes ``outputs`` from ``static_in`` in place."""
        device = static_in.device
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP):
                step(static_in)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = step(static_in)
        return graph.replay, outputs


class _Graph:
    def __init__(self, replay, static_in: Tensor, static_out: Tensor, layout: MapsLayout, grid: tuple[int, int]) -> None:
        self._replay, self.static_in, self.static_out = replay, static_in, static_out
        self.layout, self.grid = layout, grid

    def replay(self, x: Tensor) -> Tensor:
        self.static_in.copy_(x, non_blocking=True)
        self._replay()
        return self.static_out


class StepRunner:
    """Runs the per-frame step for one engine, through cached CUDA graphs where it can.

    Args:
        engine: the engine (its device decides: graphs on CUDA only).
        graphs: False to always run eagerly; None (default) for CUDA graphs on a CUDA device.
        backend: what captures and replays (default :class:`CudaGraphs`; tests give a stand-in).
    """

    def __init__(self, engine: AttentionEngine, graphs: bool | None = None, backend=None) -> None:
        self.engine = engine
        self.enabled = engine.device.type == "cuda" if graphs is None else bool(graphs)
        self.backend = backend or CudaGraphs()
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._failed: set[tuple] = set()
        self.fallback_reason: str | None = None  # why the last capture failed, if one did
        self.captures = 0

    @staticmethod
    def graphable(settings: MapSettings) -> bool:
        """Relevance needs autograd; flow and full attention keep device tensors past the step."""
        return not settings.relevance and not settings.need

    def __call__(self, x: Tensor, settings: MapSettings) -> StepOutput:
        eng = self.engine
        n = eng.num_prefix + (x.shape[-2] // eng.patch_size) * (x.shape[-1] // eng.patch_size)
        keep = keep_for(eng, settings, n)
        if self.enabled and self.graphable(settings):
            key = (tuple(x.shape), keep, settings)
            g = self._graphs.get(key)
            if g is None and key not in self._failed:
                g = self._capture(key, x, keep, settings)
            if g is not None:
                self._graphs.move_to_end(key)
                flat = g.replay(x).cpu().numpy()
                return StepOutput(flat, g.layout, g.grid, eng.num_prefix, graphed=True)
        if settings.relevance and eng.has_classifier:
            out = eng.explain(x, keep, settings.target)
        else:
            out = eng.run(x, keep)
        flat, layout = maps_tensor(eng, out, settings)
        return StepOutput(flat.cpu().numpy(), layout, out.grid, out.num_prefix, out.attn,
                          out.fused if "fused" in settings.need else None)

    def _capture(self, key: tuple, x: Tensor, keep, settings: MapSettings) -> _Graph | None:
        eng = self.engine

        def step(inp: Tensor) -> tuple[Tensor, MapsLayout, tuple[int, int]]:
            out = eng.run(inp, keep)
            flat, layout = maps_tensor(eng, out, settings)
            return flat, layout, out.grid

        try:
            static_in = x.detach().to(device=eng.device).clone()
            replay, (static_out, layout, grid) = self.backend.capture(step, static_in)
        except Exception as exc:  # any failure: eager from now on for this key, said once
            self._failed.add(key)
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
            if self.fallback_reason is None:
                logger.warning("CUDA graph capture failed, running eagerly: %s", reason)
            self.fallback_reason = reason
            return None
        g = _Graph(replay, static_in, static_out, layout, grid)
        self._graphs[key] = g
        self.captures += 1
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return g


# --------------------------------------------------------------------------------------------------
# Frames to results
# --------------------------------------------------------------------------------------------------


def process_frames(engine: AttentionEngine, frames: Sequence[Frame], settings: MapSettings,
                   prepared: list[tuple[Tensor, Box]] | None = None, runner: StepRunner | None = None) -> list[Result]:
    """A batch of frames (of one size) through preprocessing, the step and the maps: :class:`Result` objects.

    ``prepared``: already preprocessed ``(tensor [1, 3, h, w], box)`` per frame (a still image reuses its
    own); by default each frame is preprocessed here, on the engine's device. ``runner``: a
    :class:`StepRunner` that keeps its captured graphs between calls (default: an eager one).
    """
    t0 = time.perf_counter()
    if prepared is None:
        prepared = [engine.preprocess_with_box(f.image) for f in frames]
    x = torch.cat([t for t, _ in prepared])
    out = (runner or StepRunner(engine, graphs=False))(x, settings)
    items = unpack_maps(out.flat, out.layout)
    dt = (time.perf_counter() - t0) * 1000.0 / len(frames)
    done = time.monotonic_ns()
    layer = settings.entropy_layer % engine.num_layers
    return [_result(engine, frame, box, out, i, m, settings, layer, dt, done)
            for i, (frame, (_, box), m) in enumerate(zip(frames, prepared, items, strict=True))]


def _result(engine: AttentionEngine, frame: Frame, box: Box, out: StepOutput, i: int, m: dict,
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
