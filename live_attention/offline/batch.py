"""The offline path of ``render`` and ``export``: decode, batched inference, rendering and encoding overlap.

Stages and threads, with a bounded queue between each, so memory stays flat whatever the video's length:

1. **decode** (thread ``"decode"``): reads frames in order (:class:`~live_attention.io.video.VideoReader`,
   a still image, or a recorded session's raw frames);
2. **results** (the caller's thread, which owns the engine and all device work): batches of frames
   through preprocessing (on a GPU: inside the captured step), one forward pass and the per-frame maps
   (:func:`~live_attention.core.step.process_frames`), or a recording's stored maps; results hold host
   data only;
3. **draw** (a pool of threads ``"draw_N"``): :func:`~live_attention.ui.frame.render` of each frame
   (OpenCV releases the GIL), attention flow where the view asks for it (on host copies); the shown map's smoothing
   over time (``View.smooth``) is computed before, on the results thread, in frame order;
4. **encode** (thread ``"encode"``): writes the pictures in input order at the input's timestamps, and
   hands each frame's shown map to ``maps`` (``--save-maps``) when asked.

One output frame per input frame, in order. An error in any stage stops the others and is raised on
the caller's thread; a partial output file is the caller's to keep or remove.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import cv2
import numpy as np
from torch import Tensor

from live_attention.core.compare import PairedModels, pair_view
from live_attention.core.engine import AttentionEngine
from live_attention.core.frame_maps import flow_for
from live_attention.core.preprocess import Box
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Extras, Frame, MapSettings, Result, Status, View
from live_attention.io.mapfile import MapsSink, PairMap
from live_attention.modes import mode, shown_map, view_smoother
from live_attention.pipeline.loop_parts import EntropyHistory, PairSide, smooth_shown
from live_attention.ui.frame import canvas_for, render

logger = logging.getLogger(__name__)

_END = object()


@dataclass(frozen=True)
class Item:
    """One input frame: its position, picture and media time; ``prepared`` is its model input (a host
    tensor) and box when the decode thread already made them (CPU engines only)."""

    index: int
    image: np.ndarray
    pts_s: float
    prepared: tuple[Tensor, Box] | None = None


def default_batch(engine: AttentionEngine) -> int:
    """Frames per forward pass: large on a GPU (launches amortised), small on a CPU (little to gain,
    and a small batch keeps the other stages fed)."""
    return 32 if engine.device.type == "cuda" else 8


# What the frames of one render may hold at once (decoded, in the model, drawn): a long video at any
# --batch stays within it. Less on a machine with little memory (an eighth of it).
MEMORY_BUDGET = 1 << 30


def memory_budget() -> int:
    """:data:`MEMORY_BUDGET`, or an eighth of the machine's memory where that is less (64 MB at least)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not POSIX
        return MEMORY_BUDGET
    return max(64 << 20, min(MEMORY_BUDGET, total // 8))


def bytes_per_frame(engine: AttentionEngine, frame_hw: tuple[int, int], canvas_wh: tuple[int, int]) -> int:
    """What one frame of a batch costs in flight, an upper bound: each batch slot has up to three decoded
    frames with their model input (the decode queue holds two batches, the model one), the attention
    of every layer while the model runs, and two drawn pictures (the encode queue holds two batches)."""
    h, w = frame_hw
    gh, gw = engine.grid_for(h, w)
    p = engine.patch_size
    tokens = gh * gw + engine.num_prefix
    frame, model_in = h * w * 3, 3 * (gh * p) * (gw * p) * 4
    attention = engine.num_layers * engine.num_heads * tokens * tokens * 4
    return 3 * (frame + model_in) + attention + 2 * canvas_wh[0] * canvas_wh[1] * 3


def capped_batch(requested: int, per_frame: int, budget: int) -> int:
    """The largest batch up to ``requested`` whose frames fit in ``budget`` bytes (1 at least)."""
    return max(1, min(requested, budget // max(1, per_frame)))


def default_workers() -> int:
    return max(2, min(4, os.cpu_count() or 2))


class _Stage(threading.Thread):
    """A thread that runs ``fn`` and keeps its exception for the caller."""

    def __init__(self, name: str, fn: Callable[[], None]) -> None:
        super().__init__(name=name, daemon=True)
        self.fn = fn
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.fn()
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put, waiting while the queue is full, unless asked to stop."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if stop.is_set():
                return _END


def preprocessor(engine: AttentionEngine) -> Callable[[Item], Item] | None:
    """For the decode thread, on a CPU engine: each frame's model input made there (host work: the
    resize and normalisation run beside the model instead of before it; only the immutable transform
    is used, never the module). None on a device: there preprocessing is device work, which belongs to
    the thread that owns the engine (it runs inside the step), and the decode thread hands over bytes."""
    if not engine.on_host:
        return None
    spec, device = engine.preprocess_spec, engine.device
    return lambda it: replace(it, prepared=spec.apply(it.image, device))


def engine_results(engine: AttentionEngine, settings: MapSettings, source: str,
                   compare: AttentionEngine | None = None) -> Callable[[list[Item]], list[Result]]:
    """The results stage of ``render``: a batch of frames through the engine (frames of one size), and
    through ``compare`` on the same frames (``--compare``: each result's ``pair``; after the first on
    the same device, at the same time on another)."""
    runner = StepRunner(engine)  # on a GPU each batch shape is captured once and replayed
    paired = PairedModels(engine, compare) if compare is not None else None

    def fn(items: list[Item]) -> list[Result]:
        out: list[Result] = []
        # One forward pass per run of same-sized frames (a video's frames all are).
        start = 0
        while start < len(items):
            shape = items[start].image.shape
            end = start
            while end < len(items) and items[end].image.shape == shape:
                end += 1
            run = items[start:end]
            frames = [Frame(image=it.image, seq=it.index, t_capture_ns=0, source=source, pts_s=it.pts_s) for it in run]
            kept = [it.prepared for it in run if it.prepared is not None]
            prepared = kept if len(kept) == len(run) else None
            first = partial(process_frames, engine, frames, settings, prepared, runner)
            out.extend(paired.run(frames, settings, first) if paired is not None else first())
            start = end
        return out

    return fn


def run(
    items: Iterable[Item],
    results: Callable[[list[Item]], list[Result]],
    view: View | Callable[[Result], View],
    status: Status,
    sink: Callable[[np.ndarray, float], None],
    *,
    batch: int = 4,
    workers: int | None = None,
    entropy_seconds: float = 10.0,
    residual: float = 0.5,
    size: tuple[int, int] | None = None,
    progress: Callable[[int], None] | None = None,
    prepare: Callable[[Item], Item] | None = None,
    maps: MapsSink | None = None,
) -> int:
    """Run every item through ``results``, the renderer and ``sink(rgb, pts_s)``; returns the frames written.

    ``view`` is one view for every frame or a function of the result (export: each frame's recorded
    view). ``size``: the output size (default: :func:`canvas_size` of the first frame). ``prepare``
    runs on the decode thread (:func:`preprocessor`). ``maps(result, view, shown, pair)`` gets each frame's
    shown map [P] (what the picture overlays, None where there is none), and with ``--compare`` the second
    model's view and shown map (else None), in input order, on the encode thread.
    """
    p = _Pipeline(status, sink, view if callable(view) else (lambda _r, v=view: v), batch, residual, size)
    p.maps = maps
    if prepare is not None:
        items = map(prepare, items)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # frames are drawn in parallel: OpenCV's own threads would only fight them
    try:
        return p.run(items, results, workers or default_workers(), EntropyHistory(entropy_seconds), progress)
    finally:
        cv2.setNumThreads(threads)


class _Pipeline:
    """The stages of :func:`run` and the bounded queues between them."""

    def __init__(self, status: Status, sink, view_of, batch: int, residual: float, size) -> None:
        self.status, self.sink, self.view_of = status, sink, view_of
        self.batch, self.residual, self.size = batch, residual, size
        self.stop = threading.Event()
        self.decoded: queue.Queue = queue.Queue(maxsize=max(2, 2 * batch))
        self.drawn: queue.Queue = queue.Queue(maxsize=max(4, 2 * batch))
        self.written = 0
        self.maps: MapsSink | None = None
        self.smoother = view_smoother()  # used on the results thread only, in frame order
        self.pair_side: PairSide | None = None  # the second model's history and smoothing (--compare)

    def decode(self, items: Iterable[Item]) -> None:
        for item in items:
            if not _put(self.decoded, item, self.stop):
                return
        _put(self.decoded, _END, self.stop)

    def encode(self) -> None:
        while (fut := _get(self.drawn, self.stop)) is not _END:
            rgb, pts, res, v, shown, pair = fut.result()  # in input order, whichever drawing thread finished first
            self.sink(rgb, pts)
            if self.maps is not None:
                self.maps(res, v, shown, pair)
            self.written += 1

    def draw(self, res: Result, v: View, extras: Extras, status: Status,
             size: tuple[int, int]) -> tuple[np.ndarray, float, Result, View, np.ndarray | None, PairMap | None]:
        shows = mode(v.mode)
        if shows.later and (res.fused is not None or res.attn is not None):  # offline: computed at once
            extras = replace(extras, flow=flow_for(res, self.residual), flow_seq=res.seq)
        b = res.pair
        if shows.later and b is not None and extras.pair is not None and (b.fused is not None or b.attn is not None):
            extras = replace(extras, pair=replace(extras.pair, flow=flow_for(b, self.residual), flow_seq=b.seq))
        shown, pair = None, None
        if self.maps is not None and shows.one_map:  # --save-maps: what each half overlays
            shown = shown_map(res, v, extras)[0]
            if b is not None:
                vb = pair_view(v, res, b)
                pair = (vb, shown_map(b, vb, extras.pair)[0])
        return render(res.frame, res, v, status, extras, size=size), float(res.pts_s or 0.0), res, v, shown, pair

    def take(self) -> tuple[list[Item], bool]:
        """Up to a batch of decoded items, and whether the input has ended."""
        chunk: list[Item] = []
        while len(chunk) < self.batch:
            item = _get(self.decoded, self.stop)
            if item is _END:
                return chunk, True
            chunk.append(item)
        return chunk, False

    def run(self, items, results, workers: int, history: EntropyHistory, progress) -> int:
        stages = [_Stage("decode", lambda: self.decode(items)), _Stage("encode", self.encode)]
        for s in stages:
            s.start()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="draw")
        try:
            done = False
            while not done:
                chunk, done = self.take()
                _raise_from(stages)
                for res in results(chunk) if chunk else []:
                    history.add(float(res.pts_s or 0.0), res)  # in order, on this thread
                    if res.pair is not None and self.pair_side is None:
                        self.pair_side = PairSide(history.seconds, view_smoother())
                    if self.pair_side is not None:
                        self.pair_side.add(float(res.pts_s or 0.0), res)
                    self.size = self.size or canvas_for(res.frame.shape, res.pair is not None)
                    v = self.view_of(res)
                    extras, status = smooth_shown(self.smoother, res, v, history.extras(), self.status)
                    if self.pair_side is not None:
                        extras, status = self.pair_side.extras(res, v, extras, status)
                    if not _put(self.drawn, pool.submit(self.draw, res, v, extras, status, self.size), self.stop):
                        break
                if progress is not None:
                    progress(self.written)
            _put(self.drawn, _END, self.stop)
            stages[1].join()
            _raise_from(stages)
            if progress is not None:
                progress(self.written)
            return self.written
        finally:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for s in stages:
                s.join(timeout=5)


def _raise_from(stages: list[_Stage]) -> None:
    for s in stages:
        if s.error is not None:
            raise s.error


def video_items(reader: Any) -> Iterator[Item]:
    """The frames of a :class:`~live_attention.io.video.VideoReader` as items."""
    for i, (image, pts) in enumerate(reader):
        yield Item(i, image, pts)
