"""Capture thread + inference worker + status, with fake cameras and a tiny ViT: what the HUD shows."""

from __future__ import annotations

import time

import numpy as np
import pytest

from live_attention.config import Config
from live_attention.core.engine import AttentionEngine
from live_attention.core.render import render
from live_attention.datatypes import View
from live_attention.io.capture import CaptureState
from live_attention.pipeline.live import LiveSession
from tests.conftest import tiny_vit
from tests.test_capture import BlockingSource, FakeCamera, wait_until

pytestmark = pytest.mark.timeout(60)


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


def engine(delay=0.0, failing=range(0)) -> SlowEngine:
    e = SlowEngine(tiny_vit(), device="cpu", precision="fp32")
    e.delay, e.failing = delay, failing
    return e


def test_fast_camera_slow_model_latest_wins_and_latency_stays_bounded():
    cam = FakeCamera([10_000], period=0.005)  # ~200 fps camera
    s = LiveSession(Config(), engine(delay=0.05), cam)  # ~20 fps model
    s.start()
    try:
        lat = []
        seen = []
        t_end = time.monotonic() + 1.5
        while time.monotonic() < t_end:
            r = s.results.get(timeout=0.5)
            if r is not None:
                s.note_displayed(r)
                seen.append(r.seq)
                lat.append((time.monotonic_ns() - r.t_capture_ns) / 1e6)
        st = s.status()
        assert st.dropped > 20, "frames the model could not take are dropped, not queued"
        assert seen == sorted(seen) and len(set(seen)) == len(seen)
        assert np.median(lat) < 200, "latest-frame-wins keeps the latency near one inference step"
        assert st.capture_fps > st.infer_fps > 0
    finally:
        s.stop()


def test_slow_camera_every_frame_inferred():
    cam = FakeCamera([12], period=0.06)
    s = LiveSession(Config(), engine(), cam)
    s.start()
    try:
        assert wait_until(lambda: s.worker.processed >= 12, 10)
        assert s.frames.overwritten == 0 and s.status().dropped == 0
    finally:
        s.stop()


def test_camera_drop_shows_no_signal_then_resumes():
    cam = FakeCamera([5, "drop", 200], open_failures=2, period=0.01)
    s = LiveSession(Config(), engine(), cam)
    s.capture.backoff = (0.05, 0.1)
    s.start()
    try:
        assert wait_until(lambda: s.capture.state == CaptureState.RECONNECTING, 5)
        st = s.status()
        assert st.capture_state == "reconnecting"
        img = render(None, None, View(), st)  # what the window shows meanwhile
        assert img.mean() < 40  # a dark "NO SIGNAL" screen, not a fake camera frame
        assert wait_until(lambda: s.capture.state == CaptureState.RUNNING and s.worker.processed > 6, 5)
    finally:
        s.stop()


def test_failing_frames_are_shown_skipped_and_the_worker_goes_on():
    """Frames 4-9 fail in the model: the HUD says so, the last good result stays up, and once the
    model works again new results come: one bad frame never stops the worker."""
    cam = FakeCamera([10_000], period=0.01)
    s = LiveSession(Config(), engine(failing=range(4, 10)), cam)
    s.start()
    try:
        assert wait_until(lambda: s.worker.problem is not None, 5)
        st = s.status()
        assert "skipped a frame" in st.error and "simulated CUDA error" in st.error
        assert s.capture.is_alive(), "capture goes on; the window stays up"
        assert s.results.peek() is not None  # the last good result is still there to show
        seq = s.results.peek().seq
        assert wait_until(lambda: s.results.peek().seq > seq and s.worker.skipped == 6, 10), "inference resumes"
    finally:
        s.stop()


def test_a_frame_too_small_to_resize_is_skipped_and_the_next_is_processed():
    """A 1x1 picture (a broken camera mode, a 1x1 image in a slideshow) is skipped with a message;
    the frames after it are processed."""
    cam = FakeCamera([50], period=0.05)
    cam.sizes = [(1, 1)] * 3 + [(48, 64)] * 47  # three 1x1 frames, then normal ones
    s = LiveSession(Config(), engine(), cam)
    s.start()
    try:
        assert wait_until(lambda: s.worker.skipped >= 1, 10)
        assert "too small" in s.status().error  # shown while it is recent
        assert wait_until(lambda: s.worker.processed >= 3, 10)
        assert s.results.peek().frame.shape[:2] == (48, 64)
    finally:
        s.stop()


def test_stop_is_prompt_while_read_blocks():
    src = BlockingSource()
    s = LiveSession(Config(), engine(), src)
    s.start()
    assert src.in_read.wait(2)
    t = time.monotonic()
    s.stop()
    assert time.monotonic() - t <= 1.5
    assert not src.released_while_reading
    src.unblock.set()


def test_demo_source_rollout_hotspot_follows_the_moving_object():
    """The live pipeline on --source demo with the demo model: the rollout hotspot sits on a target
    in most frames, and moves with it."""
    from live_attention.core.models import load_model
    from live_attention.io.capture import open_source

    src = open_source("demo")
    eng = load_model("demo", device="cpu", precision="fp32")
    s = LiveSession(Config(), eng, src)
    s.start()
    scene = src.scene  # the same scene object the capture thread draws
    results = []
    try:
        t_end = time.monotonic() + 4.0
        while time.monotonic() < t_end:
            r = s.results.get(timeout=0.5)
            if r is not None:
                results.append(r)
    finally:
        s.stop()
    assert len(results) >= 10
    hits, spots = 0, []
    for r in results:
        patch = int(r.rollout[-1].argmax())
        gh, gw = r.grid
        row, col = divmod(patch, gw)
        x0, y0, x1, y1 = r.box
        cx = x0 + (col + 0.5) * (x1 - x0) / gw
        cy = y0 + (row + 0.5) * (y1 - y0) / gh
        spots.append((cx, cy))
        half = (x1 - x0) / gw / 2  # the patch cell may overlap the box by half a patch
        boxes = [b for _, b in scene.target_boxes(r.pts_s)]
        hits += any(bx0 - half <= cx <= bx1 + half and by0 - half <= cy <= by1 + half for bx0, by0, bx1, by1 in boxes)
    assert hits / len(results) >= 0.8, f"hotspot on a target in {hits}/{len(results)} frames"
    spread = np.ptp(np.array(spots), axis=0).max()
    assert spread > 20, "the hotspot moves with the object"
