"""What the frame loop owns besides its steps: the entropy curve's history, the attention-flow job, the
state file, the figures the bench reads, and the shown map's smoothing over time. The offline path
(:mod:`live_attention.offline.batch`) shares the history and the smoothing.

Threads: :class:`FlowJob` computes attention flow on a thread of its own; the rest runs on the caller's.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from live_attention.core.compare import pair_view
from live_attention.core.flow import FlowCancelled
from live_attention.core.frame_maps import flow_for
from live_attention.core.temporal import ViewSmoother
from live_attention.datatypes import Extras, Result, Status, View

logger = logging.getLogger(__name__)


class EntropyHistory:
    """Per-layer CLS entropy (heads averaged) over the last seconds, for the entropy curve."""

    def __init__(self, seconds: float = 10.0) -> None:
        self.seconds = seconds
        self._t: deque[float] = deque()
        self._v: deque[np.ndarray] = deque()

    def add(self, t: float, result: Result) -> None:
        if self._t and t <= self._t[-1]:  # a seek back (replay): start the curve again
            self._t.clear()
            self._v.clear()
        self._t.append(t)
        self._v.append(result.entropy.mean(axis=1))
        while self._t and self._t[0] < t - self.seconds * 1.5:
            self._t.popleft()
            self._v.popleft()

    def extras(self, flow: np.ndarray | None = None, flow_seq: int | None = None) -> Extras:
        """What the renderer needs beyond one result: this history, and a flow map if there is one."""
        if len(self._t) < 2:
            hist = times = None
        else:
            hist, times = np.stack(self._v), np.asarray(self._t)
        return Extras(entropy_history=hist, entropy_times=times, entropy_seconds=self.seconds, flow=flow,
                      flow_seq=flow_seq if flow is not None else None)


class FlowJob(threading.Thread):
    """Attention flow of one result on a background thread; ``progress`` in 0..1, ``flow`` when done."""

    def __init__(self, result: Result, residual: float = 0.5) -> None:
        super().__init__(name="attention-flow", daemon=True)
        self.result = result
        self.residual = residual
        self.progress = 0.0
        self.flow: np.ndarray | None = None
        self.pair_flow: np.ndarray | None = None  # the second model's (--compare), computed after the first's
        self.error: str | None = None
        self.cancel = threading.Event()

    def run(self) -> None:
        pair = self.result.pair
        parts = 2 if pair is not None else 1
        part = 0

        def progress(done: int, total: int) -> None:
            self.progress = (part + done / max(1, total)) / parts

        try:
            flow = flow_for(self.result, self.residual, progress=progress, cancel=self.cancel)
            if pair is not None and (pair.fused is not None or pair.attn is not None):
                part = 1
                self.pair_flow = flow_for(pair, self.residual, progress=progress, cancel=self.cancel)
            self.flow = flow  # last: ``done`` means both sides are
            self.progress = 1.0
        except FlowCancelled:
            logger.info("flow cancelled")
        except Exception as exc:
            logger.warning("attention flow failed: %s", exc, exc_info=not isinstance(exc, ValueError))
            self.error = f"flow failed: {exc}"

    @property
    def done(self) -> bool:
        return self.flow is not None


class StateWriter:
    """Writes the shown state as JSON (``--state-file``) for automation and tests: what the HUD says."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self._last = ""

    def write(self, view: View, status: Status, extra: dict[str, Any]) -> None:
        if self.path is None:
            return
        data = {"view": asdict(view), "status": asdict(status), **extra}
        text = json.dumps(data, default=str, sort_keys=True)
        if text == self._last:
            return
        self._last = text
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


@dataclass
class LoopStats:
    """Figures the bench reads: per-iteration and per-render times, capture-to-display latencies."""

    iterations: int = 0
    iteration_ms: list[float] = field(default_factory=list)
    render_ms: list[float] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    shown: int = 0


class PairSide:
    """The second model's own entropy history and smoothing over time (``--compare``), fed in frame order
    like the first model's, so that its half of the picture is drawn as the first's is."""

    def __init__(self, seconds: float, smoother: ViewSmoother) -> None:
        self.history = EntropyHistory(seconds)
        self.smoother = smoother

    def add(self, t: float, result: Result) -> None:
        if result.pair is not None:
            self.history.add(t, result.pair)

    def extras(self, result: Result, view: View, extras: Extras, status: Status,
               flow: np.ndarray | None = None) -> tuple[Extras, Status]:
        """``extras`` and ``status`` with the second side's (``Extras.pair``, ``Status.pair``)."""
        b = result.pair
        if b is None:
            return extras, status
        bx = self.history.extras(flow, b.seq)
        bx, sb = smooth_shown(self.smoother, b, pair_view(view, result, b), bx, status.pair or Status())
        return replace(extras, pair=bx), replace(status, pair=sb)


def smooth_shown(smoother: ViewSmoother, result: Result, view: View, extras: Extras,
                 status: Status) -> tuple[Extras, Status]:
    """The shown map over time (:class:`~live_attention.core.temporal.ViewSmoother`, called in frame order):
    ``extras`` with the smoothed map when the view smooths, ``status`` with the HUD's stability line."""
    smoothed = smoother(result, view, extras)
    if smoothed is not None:
        extras = replace(extras, smoothed=smoothed, smoothed_seq=result.seq)
    return extras, replace(status, smoothing=smoother.hud(view))
