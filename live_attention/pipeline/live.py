"""The live session: capture thread + inference worker (+ recorder), the :class:`Feed` of the live window,
headless mode and the bench.

Threads: :class:`LiveSession` starts and owns the capture thread, the inference worker and (when
recording) the recorder, and stops them in reverse order with timeouts. Its :class:`Feed` methods are
called by the frame loop on the main thread; they only peek at slots and swap settings, never wait on
inference (except :meth:`LiveSession.wait`, which headless mode uses to sleep until a result comes).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from live_attention.config import Config
from live_attention.core.compare import Pairing
from live_attention.core.engine import AttentionEngine
from live_attention.datatypes import Frame, MapSettings, Result, Status, View
from live_attention.io.capture import CaptureState, CaptureThread, LatestSlot
from live_attention.io.recorder import Recorder
from live_attention.io.sources import FrameSource
from live_attention.pipeline.worker import InferenceWorker

logger = logging.getLogger(__name__)


def model_threads(cfg: Config, window: bool) -> int:
    """CPU threads for the model: ``model.threads``, or all cores (all but one with a window, which keeps
    its frame rate; on a small CPU an oversubscribed pool costs the model more than the thread gains)."""
    return cfg.model.threads or max(1, (os.cpu_count() or 1) - (1 if window else 0))


class LiveSession:
    """Capture thread + inference worker (+ recorder), started and stopped together.

    Args:
        cfg: the configuration (map settings come from ``cfg.view``).
        engine: the loaded attention engine.
        source: an opened frame source (see :func:`~live_attention.io.capture.open_source`).
        compare: a second engine run after the first on every frame (``--compare``), or None.
    """

    can_record = True

    def __init__(self, cfg: Config, engine: AttentionEngine, source: FrameSource,
                 compare: AttentionEngine | None = None) -> None:
        self.cfg = cfg
        self.engine = engine
        self.compare = compare
        self.pairing = Pairing.of(engine, compare) if compare is not None else None
        self.source = source
        self.num_layers, self.num_heads = engine.num_layers, engine.num_heads
        self.stop_event = threading.Event()
        self.frames: LatestSlot[Frame] = LatestSlot()
        self.results: LatestSlot[Result] = LatestSlot()
        self.capture = CaptureThread(source, self.frames, stop_event=self.stop_event,
                                     backoff=(0.5, cfg.source.reconnect_max_s))
        v = cfg.view
        self.worker = InferenceWorker(
            engine, self.frames, self.results, stop_event=self.stop_event,
            settings=MapSettings(fusion=v.fusion, residual=v.residual, discard_ratio=v.discard_ratio,
                                 entropy_layer=v.layer_index),
            compare=compare,
        )
        self.recorder: Recorder | None = None
        self.record_errors: list[str] = []  # each recording that stopped on an error: the exit status says so
        self.latency_ms: float | None = None
        self._seen_puts = 0
        self._frozen: Result | None = None  # the result on screen when the view froze

    # ---- lifetime ---------------------------------------------------------------------------------

    def start(self, window: bool = False) -> None:
        """Start capture and inference (see :func:`model_threads` for the CPU threads)."""
        if self.engine.device.type == "cpu":
            torch.set_num_threads(model_threads(self.cfg, window))
        self.capture.start()
        self.worker.start()

    def stop(self) -> None:
        """Stop everything in reverse start order; each join has a timeout."""
        self.stop_event.set()
        try:
            if self.recorder is not None:
                self.stop_recording()
        finally:
            self.worker.stop(timeout=2.0)
            self.capture.stop(timeout=1.0)
            self.frames.close()
            self.results.close()

    # ---- recording --------------------------------------------------------------------------------

    def start_recording(self, base_dir: str | Path, view_fn: Callable[[], View]) -> str:
        self.recorder = Recorder.create(base_dir, self.engine, self.cfg, view_fn=view_fn, compare=self.compare)
        self.recorder.start()
        return str(self.recorder.path)

    def stop_recording(self) -> str | None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        rec.stop()
        if rec.error:
            self.record_errors.append(f"{rec.error} ({rec.path}: {rec.chunks.frames} frames saved)")
        return str(rec.path)

    def toggle_record(self, view_fn: Callable[[], View]) -> str:
        if self.recorder is None:
            return f"recording to {self.start_recording(self.cfg.record.dir, view_fn)}"
        return f"recording saved in {self.stop_recording()}"

    @property
    def recording(self) -> bool:
        return self.recorder is not None

    def submit(self, result: Result, rgb: np.ndarray, view: View) -> None:
        if self.recorder is not None:
            self.recorder.submit(result, rgb, view)

    # ---- the Feed the frame loop reads -------------------------------------------------------------

    def latest(self) -> Result | None:
        res = self.results.peek()
        frozen = self._frozen
        if frozen is not None and (res is None or res.seq != frozen.seq):
            return frozen  # a frame that was in flight when the view froze is not shown
        return res

    def wait(self, timeout: float) -> None:
        """Sleep until a result newer than the last one waited for arrives (or ``timeout``)."""
        self._seen_puts = self.results.wait_newer(self._seen_puts, timeout)

    def freeze(self, result: Result | None) -> None:
        """Hold the worker on ``result``'s frame (computed again when settings change), or go live."""
        self._frozen = result
        if result is None:
            self.worker.freeze(None)
            return
        self.worker.freeze(Frame(image=result.frame, seq=result.seq, t_capture_ns=result.t_capture_ns,
                               source=self.source.name, pts_s=result.pts_s))

    def set_settings(self, **changes: Any) -> None:
        self.worker.update_settings(**changes)

    def prepare(self, result: Result, view: View) -> Result:
        return result  # the worker already computes what the view asks for

    def media_time(self, result: Result) -> float:
        return result.t_capture_ns / 1e9

    def note_displayed(self, result: Result) -> None:
        lat = (time.monotonic_ns() - result.t_capture_ns) / 1e6
        self.latency_ms = lat if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * lat

    @property
    def finished(self) -> bool:
        """The input ended (or failed) and its last frame has been processed."""
        if self.capture.state not in (CaptureState.ENDED, CaptureState.FAILED):
            return False
        return self.worker.processed + self.worker.skipped >= self.capture.frames or self.frames.peek() is None

    def status(self, message: str | None = None, flow_progress: float | None = None) -> Status:
        state = self.capture.state
        err = self.worker.problem
        if state == CaptureState.FAILED and self.capture.last_error:
            err = err or f"capture failed: {self.capture.last_error}"
        rec = None
        if self.recorder is not None:
            rec = self.recorder.hud_text()
            err = err or self.recorder.error
        frozen = self.worker.frozen
        silent = self.capture.silent_s  # no frames: nothing for the model either, and no latency to speak of
        status = Status(
            model=self.engine.describe(),
            untrained=self.engine.untrained,
            source=self.source.name,
            capture_state=state.name.lower(),
            silent_s=silent,
            capture_fps=0.0 if silent is not None else self.capture.fps,
            infer_fps=None if frozen else 0.0 if silent is not None else self.worker.fps,
            latency_ms=None if frozen or silent is not None else self.latency_ms,
            dropped=self.worker.dropped,
            recording=rec,
            message=message,
            error=err,
            flow_progress=flow_progress,
        )
        if self.compare is not None:  # the pair's figures: both models work on every frame, in turn
            status = replace(status, pair=replace(status, model=self.compare.describe(), untrained=self.compare.untrained,
                                                  message=None, error=None, recording=None))
        return status

    def state(self) -> dict[str, Any]:
        return {
            "capture_state": self.capture.state.name,
            "recording": str(self.recorder.path) if self.recorder is not None else None,
            "processed": self.worker.processed,
            "skipped": self.worker.skipped,
        }
