"""Fakes shared by the tests: sources that script a camera's behaviour, an engine slower than the camera,
and a bounded wait. Every wait is bounded, so a regression fails instead of hanging."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from live_attention.core.engine import AttentionEngine
from live_attention.errors import SourceError
from live_attention.io.capture import CaptureState, CaptureThread
from live_attention.pipeline.ports import Inputs
from tests.conftest import tiny_vit

# Waits end as soon as their condition holds: only a failure waits this long. A loaded machine can stall
# a thread for seconds; the tests' own limits (pytest.mark.timeout) are above it.
WAIT_S = 10.0


def wait_until(cond: Callable[[], bool], timeout: float = WAIT_S) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.002)
    return cond()


class FakeCamera:
    """A live source whose frames are distinct arrays it remembers; scripted outages and open failures.

    ``script`` is consumed one entry per read: an int n means n good frames, "drop" means read() returns
    None once. ``open_failures`` is how many open() calls fail after each release.
    """

    is_live = True
    name = "fake camera"
    fps = 30.0

    def __init__(self, script: list[int | str] | None = None, open_failures: int = 0, period: float = 0.0):
        self.script = list(script) if script is not None else []
        self.open_failures = open_failures
        self.period = period
        self.produced: list[np.ndarray] = []
        self.is_open = False
        self.opens = 0
        self.failed_opens = 0
        self.releases = 0
        self.reading = False
        self.released_while_reading = False
        self.thread: CaptureThread | None = None
        self.states_at_open: list[CaptureState] = []
        self._pending_failures = 0
        self.sizes: list[tuple[int, int]] = []  # (h, w) of each frame in turn; then 4x4

    def open(self) -> None:
        if self.thread is not None:
            self.states_at_open.append(self.thread.state)
        if self.is_open:
            return
        if self._pending_failures > 0:
            self._pending_failures -= 1
            self.failed_opens += 1
            raise SourceError("fake camera unplugged")
        self.opens += 1
        self.is_open = True

    def _next(self) -> int | str | None:
        while self.script and self.script[0] == 0:
            self.script.pop(0)
        if not self.script:
            return None
        head = self.script[0]
        if head == "drop":
            self.script.pop(0)
            return "drop"
        self.script[0] = int(head) - 1
        return 1

    def read(self) -> np.ndarray | None:
        self.reading = True
        try:
            if self.period:
                time.sleep(self.period)
            if not self.is_open:
                return None
            step = self._next()
            if step is None:
                time.sleep(0.001)  # script exhausted: behave like an idle camera
                return None
            if step == "drop":
                return None
            n = len(self.produced)
            h, w = self.sizes[n] if n < len(self.sizes) else (4, 4)
            image = np.full((h, w, 3), n % 256, np.uint8)
            self.produced.append(image)
            return image
        finally:
            self.reading = False

    def release(self) -> None:
        if self.reading:
            self.released_while_reading = True
        if self.is_open:
            self._pending_failures = self.open_failures
        self.is_open = False
        self.releases += 1


class BlockingSource:
    """A live source whose read() blocks until ``unblock`` is set, like a stalled driver."""

    is_live = True
    name = "stuck"
    fps = None

    def __init__(self) -> None:
        self.unblock = threading.Event()
        self.in_read = threading.Event()
        self.reading = False
        self.released_while_reading = False
        self.releases = 0

    def open(self) -> None:
        pass

    def read(self) -> np.ndarray | None:
        self.reading = True
        self.in_read.set()
        self.unblock.wait(10)
        self.reading = False
        return np.zeros((2, 2, 3), np.uint8)

    def release(self) -> None:
        self.released_while_reading |= self.reading
        self.releases += 1


class SlowEngine(AttentionEngine):
    """A tiny ViT whose forward pass takes ``delay`` seconds: inference slower than the camera."""

    delay = 0.0
    failing: range = range(0)  # calls (1-based) that fail
    calls = 0

    def run(self, images, keep=None, select=None):
        self.calls += 1
        if self.calls in self.failing:
            raise RuntimeError("simulated CUDA error")
        time.sleep(self.delay)
        return super().run(images, keep, select)


def slow_engine(delay=0.0, failing=range(0)) -> SlowEngine:
    e = SlowEngine(tiny_vit(), device="cpu", precision="fp32")
    e.delay, e.failing = delay, failing
    return e


class KeyDisplay:
    """A frame-loop display that presses ``keys`` (and makes ``clicks``) on its next iteration and keeps the
    last picture it was shown (``wants_pixels``: whether the loop draws one)."""

    running = True
    waits_for_results = False
    takes_clicks = False

    def __init__(self, keys: list[str], wants_pixels: bool = False) -> None:
        self.keys = keys
        self.clicks: list[tuple[float, float]] = []  # pressed with the keys: fractions of the picture
        self.wants_pixels = wants_pixels
        self.rgb: np.ndarray | None = None

    def poll(self) -> Inputs:
        (keys, self.keys), (clicks, self.clicks) = (self.keys, []), (self.clicks, [])
        return Inputs(keys=keys, clicks=clicks)

    def show(self, rgb: np.ndarray, position: tuple[int, int] | None = None) -> None:
        self.rgb = rgb

    def update(self, status, result, view) -> None:
        pass

    def present(self) -> None:
        time.sleep(0.01)

    def close(self) -> None:
        pass

