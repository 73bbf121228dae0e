"""The per-frame step, from the camera's bytes to every map on the host: eager, or a replayed CUDA graph.

On a GPU one ViT-B/16 frame is a few hundred small kernels, and launching them one by one from Python
can cost more than running them; a CUDA graph launches them all at once (``live-attention bench`` on a
CUDA machine measures both). So on CUDA the step (preprocessing on the device, the forward pass with what the views keep, and every
map packed into one tensor by :func:`~live_attention.core.frame_maps.maps_tensor`) is captured once per
input shape and view mode and replayed; the host then copies one small tensor.

What a graph is keyed by is what changes its computation: the input's shape and what the pass keeps.
What the user navigates is data, not code: the shown layer and head are picked on the host from maps
of every layer; the query patch, the patch-entropy layer and the head fusion are a
:class:`~live_attention.core.engine.Selection` (an int64 tensor on the device) that each replay reads.
So arrow keys, heads, fusions, clicks and the layer animation replay the same graph. Graphs share one
memory pool. Inside the step nothing synchronises with the host (no ``.item()``, no tensor built from a
Python list, no indexing with a list): every index tensor is made once, before the step.

Where capture is not possible (a CPU, relevance, which needs autograd, flow or queries that keep whole
matrices, a library that synchronises inside its forward) the step runs eagerly. A failed capture says
why once, at warning level, and that key runs eagerly; one that ran out of memory is tried again later
(a few times) instead of for good.

Owned by whichever thread owns the engine (the inference worker; the caller of ``render``): all of its
device work, preprocessing included, happens on that thread. Other threads hand it host frames
(uint8 arrays) and get host arrays back.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from live_attention import names
from live_attention.core.engine import AttentionEngine, Keep, Selection
from live_attention.core.frame_maps import (
    MapsLayout,
    keep_for,
    maps_tensor,
    query_patch_kept,
    selection_for,
    unpack_maps,
)
from live_attention.core.preprocess import Box, FrameBatch
from live_attention.datatypes import Frame, MapSettings, Result

logger = logging.getLogger(__name__)

MAX_GRAPHS = 8  # captured steps kept (input shapes × view modes), sharing one memory pool
WARMUP = 3  # eager runs on a side stream before capture (cuDNN/cuBLAS choose their kernels)
OOM_RETRY_STEPS = 300  # after a capture ran out of memory: eager steps before it is tried again
OOM_TRIES = 3  # captures of one key that may run out of memory before graphs stop for that key


@dataclass(frozen=True)
class StepOutput:
    """One step's maps on the host (see :func:`~live_attention.core.frame_maps.unpack_maps`), and the
    whole matrices the pass kept when asked (full attention, fused layers), as host copies.
    ``query_patch``: the patch whose rows the ``query`` map holds (None: that map means nothing)."""

    flat: np.ndarray
    layout: MapsLayout
    grid: tuple[int, int]
    num_prefix: int
    attn: Tensor | None = None
    fused: Tensor | None = None
    graphed: bool = False
    query_patch: int | None = None


class GraphBackend:
    """What captures a step and replays it (:class:`CudaGraphs`; tests give a stand-in)."""

    def capture(self, step: Callable[[tuple[Tensor, ...]], tuple], static: tuple[Tensor, ...]) -> tuple[Callable[[], None], tuple]:
        """Returns ``(replay, outputs)``: ``replay()`` recomputes ``outputs`` from ``static`` in place."""
        raise NotImplementedError

    def release(self) -> None:
        """Give cached memory back after an out-of-memory (default: nothing to give)."""


class CudaGraphs(GraphBackend):
    """Captures a step as a CUDA graph: warm-up runs on a side stream, then one captured run whose
    kernels a replay launches again on the same (static) input and output memory. Every graph of one
    runner shares this backend's memory pool and capture stream (they never run concurrently, and each
    replay's output is copied out before the next replay)."""

    def __init__(self) -> None:
        self.pool = None
        self.stream: torch.cuda.Stream | None = None

    def capture(self, step, static):
        device = static[0].device
        with torch.cuda.device(device):
            if self.stream is None:
                self.stream = torch.cuda.Stream(device=device)
                self.pool = torch.cuda.graph_pool_handle()
            current = torch.cuda.current_stream(device)
            self.stream.wait_stream(current)
            with torch.cuda.stream(self.stream):
                for _ in range(WARMUP):
                    step(static)
            current.wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                outputs = step(static)
        return graph.replay, outputs

    def release(self) -> None:
        torch.cuda.empty_cache()


class _Graph:
    def __init__(self, replay, static: tuple[Tensor, Tensor], out: Tensor, layout: MapsLayout,
                 grid: tuple[int, int]) -> None:
        self._replay, self.static, self.out = replay, static, out
        self.layout, self.grid = layout, grid

    def __call__(self, data: Tensor, select: Selection) -> Tensor:
        self.static[0].copy_(data, non_blocking=True)
        self.static[1].copy_(select.packed, non_blocking=True)
        self._replay()
        return self.out


@dataclass(frozen=True)
class _Input:
    """What a step starts from: a model input [B, 3, h, w], or uint8 frames [B, H, W(, C)] with the
    :class:`FrameBatch` that preprocesses them on the device."""

    data: Tensor
    frames: FrameBatch | None = None
    copied: torch.cuda.Event | None = None  # recorded once ``data`` (pinned staging) is copied to the device

    @property
    def hw(self) -> tuple[int, int]:
        return self.frames.plan.input_hw if self.frames is not None else (self.data.shape[-2], self.data.shape[-1])

    def key(self) -> tuple:
        return ("frames" if self.frames is not None else "input", tuple(self.data.shape), self.data.dtype)


def _reason(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:200]


def _out_of_memory(exc: BaseException | None) -> bool:
    """An out-of-memory anywhere in the chain (a failed capture raises again when it ends)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


class StepRunner:
    """Runs the per-frame step for one engine, through cached CUDA graphs where it can. Owned by the
    engine's thread.

    Args:
        engine: the engine (its device decides: graphs on CUDA only).
        graphs: False to always run eagerly; None (default) for CUDA graphs on a CUDA device.
        backend: what captures and replays (default :class:`CudaGraphs`; tests give a stand-in).
    """

    def __init__(self, engine: AttentionEngine, graphs: bool | None = None, backend: GraphBackend | None = None) -> None:
        self.engine = engine
        self.enabled = engine.device.type == "cuda" if graphs is None else bool(graphs)
        self.backend = backend or CudaGraphs()
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._failed: dict[tuple, str] = {}  # keys that run eagerly for good, and why
        self._oom: dict[tuple, tuple[int, int]] = {}  # key -> (captures out of memory, step to try again)
        self._said: set[str] = set()
        self._batches: dict[tuple, FrameBatch] = {}
        self._staging: dict[tuple, tuple[Tensor, torch.cuda.Event]] = {}
        self.fallback_reason: str | None = None  # why the last capture failed, if one did
        self.captures = 0
        self.steps = 0

    @staticmethod
    def graphable(settings: MapSettings) -> bool:
        """Relevance needs autograd; flow and full attention keep whole matrices past the step."""
        return not settings.relevance and not settings.need

    # ---- entry points -----------------------------------------------------------------------------

    def __call__(self, x: Tensor, settings: MapSettings) -> StepOutput:
        """The step on a model input ``x`` [B, 3, h, w] (already preprocessed)."""
        return self._step(_Input(x), settings)

    def frames(self, images: Sequence[np.ndarray], settings: MapSettings) -> tuple[StepOutput, list[Box]]:
        """The step on camera frames of one size (BGR/BGRA/grey uint8), and each frame's region the model
        sees. On a CPU each frame is preprocessed on the host as before; on a device the bytes are
        uploaded (through pinned memory) and preprocessed inside the step, on this thread."""
        if not images:
            raise ValueError("no frames to process")
        eng = self.engine
        if eng.on_host:
            prepared = [eng.preprocess_with_box(im) for im in images]
            return self(torch.cat([t for t, _ in prepared]), settings), [b for _, b in prepared]
        shape = tuple(images[0].shape)
        for im in images:
            if not isinstance(im, np.ndarray) or im.dtype != np.uint8:
                raise TypeError(f"frame must be a uint8 numpy array, got {getattr(im, 'dtype', type(im).__name__)}")
            if tuple(im.shape) != shape:
                raise ValueError(f"frames of one batch must have one size: {shape} and {tuple(im.shape)}")
        batch = self._batches.get(shape)
        if batch is None:
            batch = self._batches[shape] = FrameBatch(eng.preprocess_spec, shape, eng.device)
        data, copied = self._upload(images)
        return self._step(_Input(data, batch, copied), settings), [batch.box] * len(images)

    # ---- the step ---------------------------------------------------------------------------------

    def _step(self, inp: _Input, settings: MapSettings) -> StepOutput:
        eng = self.engine
        self.steps += 1
        h, w = inp.hw
        n = eng.num_prefix + (h // eng.patch_size) * (w // eng.patch_size)
        graphed = self.enabled and self.graphable(settings)
        keep = keep_for(eng, settings, n, graphed=graphed)
        select = selection_for(eng, keep, settings)  # made once per value, before any step runs
        query = query_patch_kept(eng, settings, n)
        if graphed:
            key = self._key(inp, keep, settings)
            g = self._graphs.get(key)
            if g is None and self._may_capture(key):
                g = self._capture(key, inp, keep, settings, select)
            if g is not None:
                self._graphs.move_to_end(key)
                with torch.inference_mode():
                    maps_out = g(inp.data, select)
                    self._copied(inp)
                    flat = maps_out.cpu().numpy()
                return StepOutput(flat, g.layout, g.grid, eng.num_prefix, graphed=True, query_patch=query)
        data = inp.data.to(eng.device, non_blocking=True)
        self._copied(inp)
        flat, layout, out = self._compute(data, inp.frames, keep, settings, select)
        fused = out.fused if "fused" in settings.need else None
        return StepOutput(flat.cpu().numpy(), layout, out.grid, out.num_prefix, self._host(out.attn),
                          self._host(fused), query_patch=query)

    def _compute(self, data: Tensor, frames: FrameBatch | None, keep: Keep, settings: MapSettings, select: Selection):
        """Preprocessing (on the device, for frames), the forward pass and the maps: device work only."""
        eng = self.engine
        x = frames(data) if frames is not None else data
        if settings.relevance and eng.has_classifier:
            out = eng.explain(x, keep, settings.target, select)
        else:
            out = eng.run(x, keep, select)
        flat, layout = maps_tensor(eng, out, settings, select=select)
        return flat, layout, out

    def _host(self, t: Tensor | None) -> Tensor | None:
        """A host copy for other threads (flow, the renderer): never a tensor on the device."""
        if t is None or self.engine.on_host:
            return t
        return t.detach().to("cpu", copy=True)

    def _upload(self, images: Sequence[np.ndarray]) -> tuple[Tensor, torch.cuda.Event | None]:
        """The frames as one uint8 tensor [B, H, W(, C)] on the host: in pinned memory for a runner that
        keeps graphs on CUDA (the copy to the device is then a fast asynchronous one), one staging buffer
        per shape, reused once its last copy has finished (the event the step records after it)."""
        shape = (len(images), *images[0].shape)
        if not (self.enabled and self.engine.device.type == "cuda"):
            return torch.from_numpy(np.stack(images)), None
        staged = self._staging.get(shape)
        if staged is None:
            if len(self._staging) >= MAX_GRAPHS:
                self._staging.clear()
            staged = self._staging[shape] = (torch.empty(shape, dtype=torch.uint8, pin_memory=True), torch.cuda.Event())
        buf, copied = staged
        copied.synchronize()  # the previous copy out of this buffer has finished (at once if never recorded)
        host = buf.numpy()
        for i, im in enumerate(images):
            host[i] = im
        return buf, copied

    def _copied(self, inp: _Input) -> None:
        if inp.copied is not None:
            inp.copied.record(torch.cuda.current_stream(self.engine.device))

    # ---- graphs -----------------------------------------------------------------------------------

    @staticmethod
    def _key(inp: _Input, keep: Keep, settings: MapSettings) -> tuple:
        """What changes the computation: the input's shape and what is kept (how many rows, not which),
        and rollout's parameters when it is computed."""
        rollout = (settings.residual, settings.discard_ratio) if keep.fused is not None else None
        return (*inp.key(), replace(keep, rows=(0,) * len(keep.rows)), rollout)

    def _may_capture(self, key: tuple) -> bool:
        if key in self._failed:
            return False
        oom = self._oom.get(key)
        return oom is None or self.steps >= oom[1]

    def _capture(self, key: tuple, inp: _Input, keep: Keep, settings: MapSettings, select: Selection) -> _Graph | None:
        eng = self.engine
        num_rows = select.num_rows

        def step(static: tuple[Tensor, ...]) -> tuple[Tensor, MapsLayout, tuple[int, int]]:
            flat, layout, out = self._compute(static[0], inp.frames, keep, settings, Selection(static[1], num_rows))
            return flat, layout, out.grid

        try:
            static = (inp.data.to(eng.device, copy=True), select.packed.clone())
            with torch.inference_mode():
                replay, (out, layout, grid) = self.backend.capture(step, static)
        except Exception as exc:  # any failure: eager for this key, said once
            self._capture_failed(key, exc)
            return None
        self._oom.pop(key, None)
        g = _Graph(replay, static, out, layout, grid)
        self._graphs[key] = g
        self.captures += 1
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return g

    def _capture_failed(self, key: tuple, exc: BaseException) -> None:
        reason = self.fallback_reason = _reason(exc)
        if _out_of_memory(exc):
            tries = self._oom.get(key, (0, 0))[0] + 1
            self._graphs.clear()  # the other graphs' memory too: they are captured again when needed
            self.backend.release()
            if tries < OOM_TRIES:
                self._oom[key] = (tries, self.steps + OOM_RETRY_STEPS)
                if tries == 1:
                    logger.warning("CUDA graph capture ran out of GPU memory, running eagerly; trying again in "
                                   "%d steps: %s", OOM_RETRY_STEPS, reason)
                return
            self._oom.pop(key, None)
            self._failed[key] = reason
            logger.warning("CUDA graph capture ran out of GPU memory %d times: this input size and view run "
                           "eagerly from now on: %s", tries, reason)
            return
        self._failed[key] = reason
        if reason not in self._said:
            self._said.add(reason)
            logger.warning("CUDA graph capture failed, running eagerly: %s", reason)
        else:
            logger.debug("CUDA graph capture failed again (another input size or view): %s", reason)


# --------------------------------------------------------------------------------------------------
# Frames to results
# --------------------------------------------------------------------------------------------------


def process_frames(engine: AttentionEngine, frames: Sequence[Frame], settings: MapSettings,
                   prepared: list[tuple[Tensor, Box]] | None = None, runner: StepRunner | None = None) -> list[Result]:
    """A batch of frames (of one size) through preprocessing, the step and the maps: :class:`Result` objects.

    ``prepared``: already preprocessed ``(tensor [1, 3, h, w], box)`` per frame (host work on a CPU: the
    decode thread's, or a still image's own); by default the step preprocesses each frame (on a device,
    inside the step). ``runner``: a :class:`StepRunner` that keeps its captured graphs between calls
    (default: an eager one). Call it on the thread that owns the engine.
    """
    t0 = time.perf_counter()
    runner = runner or StepRunner(engine, graphs=False)
    if prepared is None:
        out, boxes = runner.frames([f.image for f in frames], settings)
    else:
        out, boxes = runner(torch.cat([t for t, _ in prepared]), settings), [b for _, b in prepared]
    items = unpack_maps(out.flat, out.layout)
    dt = (time.perf_counter() - t0) * 1000.0 / len(frames)
    done = time.monotonic_ns()
    layer = settings.entropy_layer % engine.num_layers
    return [_result(engine, frame, box, out, i, m, settings, layer, dt, done)
            for i, (frame, box, m) in enumerate(zip(frames, boxes, items, strict=True))]


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
    query_ok = maps_[names.QUERY] is not None and out.query_patch is not None
    return Result(
        seq=frame.seq,
        t_capture_ns=frame.t_capture_ns,
        t_done_ns=done_ns,
        frame=frame.image,
        box=box,
        grid=out.grid,
        cls=maps_[names.CLS],
        rollout=maps_[names.ROLLOUT],
        entropy=maps_[names.ENTROPY],
        patch_entropy=maps_[names.PATCH_ENTROPY],
        patch_entropy_layer=layer,
        topk=topk,
        infer_ms=infer_ms,
        settings=settings,
        query=maps_[names.QUERY] if query_ok else None,
        query_patch=out.query_patch if query_ok else None,
        pts_s=frame.pts_s,
        num_prefix=out.num_prefix,
        prefix_share=maps_[names.PREFIX_SHARE],
        token_norm=maps_[names.TOKEN_NORM],
        relevance=maps_[names.RELEVANCE],
        target=target,
        target_label=engine.categories[target] if target is not None else None,
        target_p=float(m["target_p"]) if m.get("target_p") is not None else None,
        classifier=engine.has_classifier,
        top_ids=top_ids,
        problem=None if finite else "the model's output has NaN or inf values: these maps are blank",
        attn=out.attn[i] if out.attn is not None else None,
        fused=out.fused[i] if out.fused is not None and "fused" in settings.need else None,
    )
