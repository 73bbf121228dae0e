"""Inference worker: takes the newest frame, runs the engine, computes every map, publishes a result.

Threads:
* ``InferenceWorker`` (thread "inference") owns the :class:`~live_attention.core.engine.AttentionEngine`
  and every piece of device work: nothing else calls it while the worker runs. Preprocessing (on a
  GPU, inside the captured step), one forward pass and every map happen here, and the maps are copied
  to the CPU once (:mod:`live_attention.core.step`); what a result keeps of the attention for later
  (flow, other query patches) is a host copy.
* Readers (the frame loop, the recorder) only ever see immutable :class:`~live_attention.datatypes.Result`
  objects through a :class:`~live_attention.io.capture.LatestSlot`; the window never waits on inference.

The settings that change what the worker computes (head fusion for rollout, residual, discard ratio,
query patch, relevance target) live in :class:`~live_attention.datatypes.MapSettings`, swapped whole
by the frame loop. Freezing holds one frame: the worker leaves the camera alone and computes that
frame again whenever the settings change, so a frozen picture still answers every key.

One bad frame (too small to resize, a transient device error) never stops the worker: it is skipped,
the problem is published for the HUD, and the next frame is processed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

import torch

from live_attention.core.compare import PairedModels
from live_attention.core.engine import AttentionEngine
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings, Result
from live_attention.io.capture import LatestSlot

logger = logging.getLogger(__name__)

PROBLEM_SHOWN_S = 3.0  # how long a skipped frame's message stays up after the last failure
_FAILURE_PAUSE_S = 0.2  # after a failed frame: no busy loop when every frame fails


class RateMeter:
    """Events per second (the HUD's model fps) over the last ``count`` events, as the user means it.

    A plain "events / their time span" reads wrong twice: after a pause (a frozen view) the span takes
    in the paused time, so the rate reads a fraction of the real one until the window refills; and when
    events stop coming it keeps its last value forever. Here paused time is left out (the rate right
    after a pause is the rate before it), a wait longer than the usual interval counts as the interval
    it is (the rate falls while nothing comes), and after ``stall`` usual intervals (at least
    ``min_stall_s``) with nothing the rate is 0. Events while paused are not counted. Thread-safe.
    """

    def __init__(self, count: int = 30, stall: float = 4.0, min_stall_s: float = 1.0) -> None:
        self.stall, self.min_stall_s = stall, min_stall_s
        self._t: deque[float] = deque(maxlen=count)
        self._paused_at: float | None = None
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            if self._paused_at is None:
                self._t.append(time.perf_counter())

    def pause(self) -> None:
        with self._lock:
            if self._paused_at is None:
                self._paused_at = time.perf_counter()

    def resume(self) -> None:
        with self._lock:
            if self._paused_at is not None:
                gap = time.perf_counter() - self._paused_at
                self._t = deque((t + gap for t in self._t), maxlen=self._t.maxlen)
                self._paused_at = None

    def rate(self) -> float:
        with self._lock:
            t = list(self._t)
            now = self._paused_at if self._paused_at is not None else time.perf_counter()
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        span = t[-1] - t[0]
        usual = span / (len(t) - 1)
        wait = now - t[-1]
        if wait > max(self.min_stall_s, self.stall * usual):
            return 0.0
        return (len(t) - 1) / (span + max(0.0, wait - usual))


class InferenceWorker(threading.Thread):
    """Runs the engine on the newest frame (or the held one) and publishes :class:`Result` objects.

    Args:
        engine: the attention engine (owned by this thread from ``start()`` on).
        frames: the capture thread's latest-frame slot.
        results: the latest-result slot read by the frame loop and the recorder.
        stop_event: set to stop; shared with the other threads of a session.
        settings: what to compute beyond the standard maps.
        compare: a second engine run on the same frame (``--compare``): each result carries its result
            as ``Result.pair``, so both sides always show the same frame. On the same device it runs
            after the first; on another device at the same time, on a thread of its own.
    """

    def __init__(
        self,
        engine: AttentionEngine,
        frames: LatestSlot[Frame],
        results: LatestSlot[Result],
        stop_event: threading.Event | None = None,
        settings: MapSettings | None = None,
        compare: AttentionEngine | None = None,
    ) -> None:
        super().__init__(name="inference", daemon=True)
        self.engine = engine
        self.paired = PairedModels(engine, compare) if compare is not None else None
        self.frames = frames
        self.results = results
        self.stop_event = stop_event or threading.Event()
        self._settings = settings or MapSettings()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._held: Frame | None = None
        self._held_done: MapSettings | None = None  # the settings the held frame was last computed with
        self._hold_mark = 0  # frames.overwritten when the freeze began
        self._ignored = 0  # frames left unread during earlier freezes
        self._problem: tuple[str, float] | None = None
        self._still: tuple[object, tuple, torch.Tensor] | None = None  # (image, box, input) of a still
        self._last: Result | None = None
        self.runner = StepRunner(engine)  # CUDA graphs on a GPU, kept between frames
        self.infer_ms = 0.0
        self.processed = 0
        self.skipped = 0
        self.rate = RateMeter()  # results per second, frozen time left out

    # ---- any thread -------------------------------------------------------------------------------

    @property
    def fps(self) -> float:
        """Live results per second over the last (up to 30): 0.0 before two, falls to 0 when they stop
        coming; the time frozen and the frozen frame's recomputations are left out (:class:`RateMeter`)."""
        return self.rate.rate()

    @property
    def problem(self) -> str | None:
        """The latest per-frame problem while it is recent (one line), else None."""
        p = self._problem
        return p[0] if p is not None and time.monotonic() - p[1] < PROBLEM_SHOWN_S else None

    # Settings are swapped whole (immutable), so a reader never sees half an update.
    @property
    def settings(self) -> MapSettings:
        return self._settings

    def update_settings(self, **changes: Any) -> None:  # MapSettings fields, each of its own type
        with self._lock:
            new = replace(self._settings, **changes)
            changed = new != self._settings
            self._settings = new
        if changed:
            self._wake.set()

    def freeze(self, frame: Frame | None) -> None:
        """Freeze on ``frame`` (computed again whenever the settings change), or go live again with None."""
        with self._lock:
            if frame is not None and self._held is None:
                self._hold_mark = self.frames.overwritten
            elif frame is None and self._held is not None:
                self._ignored += self.frames.overwritten - self._hold_mark
            self._held, self._held_done = frame, None
        if frame is not None:
            self.rate.pause()
        else:
            self.rate.resume()
        self._wake.set()

    @property
    def dropped(self) -> int:
        """Camera frames the model could not keep up with. Frames that arrive while frozen are left
        unread on purpose: they are not counted."""
        with self._lock:
            now = self.frames.overwritten
            frozen = now - self._hold_mark if self._held is not None else 0
            return now - self._ignored - frozen

    @property
    def frozen(self) -> bool:
        return self._held is not None

    # ---- the worker's thread ----------------------------------------------------------------------

    def process(self, frame: Frame, settings: MapSettings | None = None) -> Result:
        """One frame through preprocessing, the model and the maps (callers' thread when not started)."""
        settings = settings or self._settings
        prepared = None
        if not self.engine.on_host:
            pass  # on a device the step preprocesses inside itself (captured with it): nothing to keep
        elif frame.still and self._still is not None and self._still[0] is frame.image:
            prepared = [(self._still[2], self._still[1])]  # a still image: preprocessed once
        elif frame.still:
            x, box = self.engine.preprocess_with_box(frame.image)
            self._still = (frame.image, box, x)
            prepared = [(x, box)]
        else:
            self._still = None
        def first() -> list[Result]:
            return process_frames(self.engine, [frame], settings, prepared, self.runner)

        return (self.paired.run([frame], settings, first) if self.paired is not None else first())[0]

    def _next(self) -> tuple[Frame, MapSettings, bool] | None:
        """The next job: (frame, settings, live); live is False for the held (frozen) frame."""
        with self._lock:
            held, settings = self._held, self._settings
            if held is not None:
                if self._held_done == settings:
                    return None
                self._held_done = settings
                return held, settings, False
        frame = self.frames.get(timeout=0.05)
        return (frame, self._settings, True) if frame is not None else None

    def run(self) -> None:
        torch.set_grad_enabled(False)
        while not self.stop_event.is_set():
            try:
                job = self._next()
                if job is None:
                    if self._held is not None:
                        self._wake.wait(0.05)
                        self._wake.clear()
                    continue
                frame, settings, live = job
                last = self._last
                if (frame.still and last is not None and last.frame is frame.image and last.settings == settings
                        and not self.frozen):
                    # The same still picture with the same settings: the same maps, stamped anew.
                    done = time.monotonic_ns()
                    pair = (replace(last.pair, seq=frame.seq, t_capture_ns=frame.t_capture_ns, t_done_ns=done)
                            if last.pair is not None else None)
                    result = replace(last, seq=frame.seq, t_capture_ns=frame.t_capture_ns, t_done_ns=done, pair=pair)
                else:
                    result = self.process(frame, settings)
            except Exception as exc:  # one bad frame never stops the worker
                self.skipped += 1
                message = f"skipped a frame: {type(exc).__name__}: {exc}".splitlines()[0]
                if self._problem is None or self._problem[0] != message:
                    logger.warning("%s", message, exc_info=not isinstance(exc, ValueError))
                self._problem = (message, time.monotonic())
                self.stop_event.wait(_FAILURE_PAUSE_S)
                continue
            self._last = result
            if live:  # the frozen frame computed again is no live rate
                self.rate.add()
            self.infer_ms = result.infer_ms
            self.processed += 1
            self.results.put(result)

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        self._wake.set()
        if self.is_alive():
            self.join(timeout)
        if self.paired is not None:
            self.paired.close()
