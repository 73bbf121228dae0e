"""The live session and the keyboard controller, shared by the window, headless mode and replay.

Threads:
* :class:`LiveSession` starts and owns the capture thread, the inference worker and (when recording)
  the recorder; it stops them in reverse order with timeouts.
* :class:`FlowJob` computes attention flow of a frozen frame on its own thread, with progress.
* :class:`Controller` is plain state (the :class:`~live_attention.render.View`), changed by named keys
  on the main thread; it has no GUI code, so it is unit-tested without a window.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from live_attention.capture import CaptureState, CaptureThread, Frame, FrameSource, LatestSlot
from live_attention.config import COLORMAPS, FUSIONS, MODES, Config
from live_attention.engine import AttentionEngine
from live_attention.render import Extras, Status, View
from live_attention.worker import InferenceWorker, MapSettings, Result

logger = logging.getLogger(__name__)


def view_from_config(cfg: Config) -> View:
    v = cfg.view
    return View(
        mode=v.mode,
        layer=v.layer,
        head=v.head,
        fusion=v.fusion,
        opacity=v.opacity,
        colormap=v.colormap,
        show_help=cfg.window.show_help,
    )


@dataclass
class KeyOutcome:
    """What the caller must do after a key, beyond the new view."""

    quit: bool = False
    screenshot: bool = False
    toggle_record: bool = False
    flow: bool = False
    freeze_changed: bool = False


class Controller:
    """Keyboard navigation over layers, heads, modes and display options.

    Args:
        num_layers, num_heads: the model's size.
        view: the starting view.
    """

    KEYS = (
        "up", "down", "left", "right", "1", "2", "3", "4", "5", "6", "m", "f", "0", "backspace",
        "a", "space", "s", "+", "-", "c", "h", "q", "esc", "r",
    )

    def __init__(self, num_layers: int, num_heads: int, view: View | None = None) -> None:
        self.num_layers = num_layers
        self.num_heads = num_heads
        v = view or View()
        self.view = replace(v, layer=v.resolved_layer(num_layers), head=min(v.head, num_heads - 1))

    def press(self, key: str) -> KeyOutcome:
        v = self.view
        out = KeyOutcome()
        k = key.lower()
        if k == "up":
            v = replace(v, layer=min(self.num_layers - 1, v.layer + 1), animating=False)
        elif k == "down":
            v = replace(v, layer=max(0, v.layer - 1), animating=False)
        elif k == "right":  # -1 (fused) -> 0 -> ... -> H-1 -> -1
            v = replace(v, head=v.head + 1 if v.head < self.num_heads - 1 else -1)
        elif k == "left":
            v = replace(v, head=v.head - 1 if v.head > -1 else self.num_heads - 1)
        elif k in ("0", "backspace"):
            v = replace(v, head=-1)
        elif k in ("1", "2", "3", "4", "5", "6"):
            v = replace(v, mode=MODES[int(k) - 1])
            if k == "6":
                out.flow = True
                if not v.frozen:
                    v = replace(v, frozen=True)
                    out.freeze_changed = True
        elif k == "m":
            v = replace(v, mode=MODES[(MODES.index(v.mode) + 1) % len(MODES)])
        elif k == "f":
            v = replace(v, fusion=FUSIONS[(FUSIONS.index(v.fusion) + 1) % len(FUSIONS)])
        elif k == "a":
            v = replace(v, animating=not v.animating)
        elif k == "space":
            v = replace(v, frozen=not v.frozen)
            out.freeze_changed = True
        elif k == "+":
            v = replace(v, opacity=round(min(1.0, v.opacity + 0.1), 2))
        elif k == "-":
            v = replace(v, opacity=round(max(0.0, v.opacity - 0.1), 2))
        elif k == "c":
            v = replace(v, colormap=COLORMAPS[(COLORMAPS.index(v.colormap) + 1) % len(COLORMAPS)])
        elif k == "h":
            v = replace(v, show_help=not v.show_help)
        elif k in ("q", "esc"):
            out.quit = True
        elif k == "s":
            out.screenshot = True
        elif k == "r":
            out.toggle_record = True
        self.view = v
        return out

    def step_animation(self) -> None:
        """Advance the animated layer by one, wrapping around."""
        self.view = replace(self.view, layer=(self.view.layer + 1) % self.num_layers)

    def select_patch(self, patch: int | None) -> None:
        self.view = replace(self.view, query_patch=patch, mode="query" if patch is not None else self.view.mode)


def patch_at(result: Result, x: float, y: float) -> int | None:
    """The patch under frame pixel (x, y), or None outside the region the model saw."""
    x0, y0, x1, y1 = result.box
    if not (x0 <= x < x1 and y0 <= y < y1):
        return None
    gh, gw = result.grid
    c = min(gw - 1, int((x - x0) / (x1 - x0) * gw))
    r = min(gh - 1, int((y - y0) / (y1 - y0) * gh))
    return r * gw + c


class EntropyHistory:
    """Per-layer CLS entropy (heads averaged) over the last seconds, for the entropy curve."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._t: deque[float] = deque()
        self._v: deque[np.ndarray] = deque()

    def add(self, t: float, result: Result) -> None:
        self._t.append(t)
        self._v.append(result.entropy.mean(axis=1))
        while self._t and self._t[0] < t - self.seconds * 1.5:
            self._t.popleft()
            self._v.popleft()

    def arrays(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        if len(self._t) < 2:
            return None, None
        return np.stack(self._v), np.asarray(self._t)

    def extras(self, flow: np.ndarray | None = None, flow_seq: int | None = None) -> Extras:
        """What the renderer needs beyond one result: this history, and a flow map if there is one."""
        hist, times = self.arrays()
        return Extras(entropy_history=hist, entropy_times=times, entropy_seconds=self.seconds, flow=flow,
                      flow_seq=flow_seq if flow is not None else None)


class FlowJob(threading.Thread):
    """Attention flow of one result on a background thread; ``progress`` in 0..1, ``flow`` when done."""

    def __init__(self, result: Result, residual: float = 0.5, fusion: str = "mean") -> None:
        super().__init__(name="flow", daemon=True)
        self.result = result
        self.residual = residual
        self.fusion = fusion
        self.progress = 0.0
        self.flow: np.ndarray | None = None
        self.error: str | None = None
        self.cancel = threading.Event()

    def run(self) -> None:
        from live_attention.flow import FlowCancelled

        def progress(done: int, total: int) -> None:
            self.progress = done / max(1, total)

        try:
            self.flow = self.result.flow(self.residual, self.fusion, progress=progress, cancel=self.cancel)
            self.progress = 1.0
        except FlowCancelled:
            logger.info("flow cancelled")
        except Exception as exc:
            logger.exception("attention flow failed")
            self.error = f"flow failed: {exc}"


class LiveSession:
    """Capture thread + inference worker (+ recorder), started and stopped together.

    Args:
        cfg: the configuration (map settings come from ``cfg.view``).
        engine: the loaded attention engine.
        source: an opened frame source (see :func:`~live_attention.capture.open_source`).
    """

    def __init__(self, cfg: Config, engine: AttentionEngine, source: FrameSource) -> None:
        self.cfg = cfg
        self.engine = engine
        self.source = source
        self.stop_event = threading.Event()
        self.frames: LatestSlot[Frame] = LatestSlot()
        self.results: LatestSlot[Result] = LatestSlot()
        self.capture = CaptureThread(
            source, self.frames, stop_event=self.stop_event,
            backoff=(0.5, cfg.source.reconnect_max_s),
        )
        self.worker = InferenceWorker(
            engine, self.frames, self.results, stop_event=self.stop_event,
            settings=MapSettings(fusion=cfg.view.fusion, residual=cfg.view.residual,
                                 discard_ratio=cfg.view.discard_ratio, entropy_layer=cfg.view.layer),
        )
        self.recorder = None  # set by start_recording
        self.latency_ms: float | None = None
        self._started = False

    def start(self, window: bool = False) -> None:
        """Start capture and inference. With ``window``, the model leaves one core to the window
        (``model.threads = 0``): on a small CPU an oversubscribed thread pool costs the model more
        than the extra thread gains, and the window keeps its frame rate."""
        if self.engine.device.type == "cpu":
            n = self.cfg.model.threads or max(1, (os.cpu_count() or 1) - (1 if window else 0))
            torch.set_num_threads(n)
        self.capture.start()
        self.worker.start()
        self._started = True

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

    # Recording --------------------------------------------------------------------------------
    def start_recording(self, base_dir: str | Path, view_fn: Callable[[], View]) -> str:
        from live_attention.record import Recorder

        self.recorder = Recorder.create(base_dir, self.engine, self.cfg, view_fn=view_fn)
        self.recorder.start()
        return str(self.recorder.path)

    def stop_recording(self) -> str | None:
        rec, self.recorder = self.recorder, None
        if rec is None:
            return None
        rec.stop()
        return str(rec.path)

    # Status -----------------------------------------------------------------------------------
    def note_displayed(self, result: Result) -> None:
        lat = (time.monotonic_ns() - result.t_capture_ns) / 1e6
        self.latency_ms = lat if self.latency_ms is None else 0.8 * self.latency_ms + 0.2 * lat

    def status(self, message: str | None = None, flow_progress: float | None = None) -> Status:
        state = self.capture.state
        err = self.worker.error
        if state == CaptureState.FAILED and self.capture.last_error:
            err = err or f"capture failed: {self.capture.last_error}"
        rec = None
        if self.recorder is not None:
            rec = self.recorder.hud_text()
            if self.recorder.error:
                err = err or self.recorder.error
        return Status(
            model=self.engine.describe(),
            untrained=self.engine.untrained,
            source=self.source.name,
            capture_state=state.name.lower(),
            capture_fps=self.capture.fps,
            infer_fps=self.worker.fps,
            latency_ms=self.latency_ms,
            dropped=self.frames.overwritten,
            recording=rec,
            message=message,
            error=err,
            flow_progress=flow_progress,
        )


def unique_path(directory: str | Path, stem: str, suffix: str) -> Path:
    """A path in ``directory`` that does not exist yet (never overwrite a user's file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{stem}{suffix}"
    i = 1
    while p.exists():
        p = d / f"{stem}-{i}{suffix}"
        i += 1
    return p
