"""Capture: the latest-frame slot, sources, open_source parsing, and the capture thread.

Thread tests use fake sources that implement the FrameSource protocol; the file tests write a tiny
video with cv2.VideoWriter. Every wait is bounded, so a regression fails instead of hanging.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from live_attention.datatypes import Frame
from live_attention.demo.source import DemoSource
from live_attention.errors import SourceError
from live_attention.io.capture import NO_SIGNAL_S, CaptureState, CaptureThread, LatestSlot, open_source
from live_attention.io.file_sources import ImageSource, VideoFileSource
from live_attention.io.live_sources import CameraSource, StreamSource
from live_attention.io.sources import FrameSource
from tests.fakes import WAIT_S, BlockingSource, FakeCamera, wait_until

FAST = (0.01, 0.04)  # reconnect backoff for tests


def drain(slot: LatestSlot[Frame], until: Callable[[list[Frame]], bool], timeout: float = WAIT_S) -> list[Frame]:
    """Consume frames from ``slot`` until ``until(frames)`` or the timeout."""
    frames: list[Frame] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not until(frames):
        f = slot.get(timeout=0.05)
        if f is not None:
            frames.append(f)
    return frames


def assert_real(frames: list[Frame], cam: FakeCamera) -> None:
    """Every delivered image is one the fake produced (no black or substitute frames)."""
    ids = {id(a) for a in cam.produced}
    for f in frames:
        assert id(f.image) in ids, f"frame seq={f.seq} was not produced by the source"


# ---- LatestSlot --------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_slot_latest_wins_and_counts_overwrites() -> None:
    slot: LatestSlot[int] = LatestSlot()
    assert slot.peek() is None
    assert slot.get(timeout=0.01) is None
    for i in range(3):
        slot.put(i)
    assert slot.overwritten == 2
    assert slot.peek() == 2
    assert slot.get(timeout=0) == 2
    assert slot.get(timeout=0.01) is None  # already consumed
    assert slot.peek() == 2  # peek still sees it
    slot.put(3)
    assert slot.overwritten == 2  # the previous one had been read
    assert slot.puts == 4


@pytest.mark.timeout(60)
def test_slot_get_waits_for_put_and_close_wakes() -> None:
    slot: LatestSlot[str] = LatestSlot()
    threading.Timer(0.05, slot.put, args=("x",)).start()
    t0 = time.monotonic()
    assert slot.get(timeout=2) == "x"
    assert time.monotonic() - t0 < 1.0

    got: list[str | None] = []
    waiter = threading.Thread(target=lambda: got.append(slot.get()))
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(WAIT_S)
    assert not waiter.is_alive() and got == [None]
    assert slot.closed and slot.get() is None


def test_frame_is_frozen() -> None:
    f = Frame(image=np.zeros((2, 2, 3), np.uint8), seq=0, t_capture_ns=1, source="x")
    assert f.pts_s is None
    with pytest.raises(AttributeError):
        f.seq = 1  # type: ignore[misc]


# ---- CaptureThread with fake sources --------------------------------------------------------------


@pytest.mark.timeout(60)
def test_disconnect_reconnects_without_fake_frames() -> None:
    cam = FakeCamera(script=[10, "drop", "drop", 10, "drop", 200], open_failures=3)
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(cam, slot, backoff=FAST)
    cam.thread = th
    th.start()
    try:
        frames = drain(slot, lambda fs: len(cam.produced) >= 100 and th.state is CaptureState.RUNNING)
        assert th.state is CaptureState.RUNNING
    finally:
        assert th.stop()
    assert cam.failed_opens >= 3  # open() failed a few times during each outage
    # every reopen attempt happened while the thread said "no signal"
    assert cam.states_at_open[0] is CaptureState.STARTING
    assert set(cam.states_at_open[1:]) == {CaptureState.RECONNECTING}
    assert CaptureState.RECONNECTING.label == "no signal"
    assert "unplugged" in th.last_error or "no signal" in th.last_error
    assert_real(frames, cam)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs)), "seq must strictly increase"
    assert seqs[-1] >= 20  # continued across both outages, no reset
    # seq counts successful reads only; a read that returns once stop() was asked is dropped uncounted
    # (stopping does not wait to deliver it), so the source may have made one frame more.
    assert len(cam.produced) - 1 <= th.frames <= len(cam.produced)
    assert not cam.released_while_reading
    assert th.state is CaptureState.STOPPED and not cam.is_open


@pytest.mark.timeout(60)
def test_open_failing_at_start_keeps_reconnecting_then_runs() -> None:
    cam = FakeCamera(script=[10**6], period=0.001)
    cam._pending_failures = 4  # unplugged when the app starts
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(cam, slot, backoff=FAST)
    cam.thread = th
    th.start()
    try:
        assert wait_until(lambda: th.state is CaptureState.RECONNECTING)
        assert slot.peek() is None  # nothing while there is no signal
        assert wait_until(lambda: th.state is CaptureState.RUNNING)
        assert slot.get(timeout=WAIT_S) is not None
    finally:
        th.stop()
    assert cam.failed_opens == 4


@pytest.mark.timeout(60)
def test_slow_camera_every_frame_once() -> None:
    cam = FakeCamera(script=[15], period=0.02)  # ~50 fps producer, consumer waits on get()
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(cam, slot, reconnect=False, backoff=FAST)
    th.start()
    frames = drain(slot, lambda fs: len(fs) >= 15)
    th.stop()
    assert [f.seq for f in frames] == list(range(15))
    assert slot.overwritten == 0
    assert_real(frames, cam)
    ts = [f.t_capture_ns for f in frames]
    assert ts == sorted(ts)


@pytest.mark.timeout(60)
def test_fast_camera_latest_wins_gaps_equal_overwritten() -> None:
    cam = FakeCamera(script=[10**9], period=0.0005)
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(cam, slot, backoff=FAST)
    th.start()
    frames: list[Frame] = []
    try:
        for _ in range(20):
            f = slot.get(timeout=WAIT_S)
            assert f is not None
            frames.append(f)
            time.sleep(0.01)  # a consumer slower than the camera
        assert th.fps > 100
    finally:
        assert th.stop()
    last = slot.get(timeout=0)
    if last is not None:
        frames.append(last)
    seqs = [f.seq for f in frames]
    assert seqs == sorted(set(seqs))
    gaps = seqs[0] + sum(b - a - 1 for a, b in zip(seqs, seqs[1:], strict=False))
    assert slot.overwritten > 0
    assert gaps == slot.overwritten
    assert seqs[-1] + 1 == th.frames == slot.puts
    assert_real(frames, cam)
    # latest wins: the consumer ends on the newest frame put (a read that returns after stop is dropped)
    assert frames[-1] is slot.peek()


@pytest.mark.timeout(60)
def test_stop_returns_within_a_second_while_read_blocks() -> None:
    src = BlockingSource()
    th = CaptureThread(src, LatestSlot())
    th.start()
    assert src.in_read.wait(WAIT_S)
    t0 = time.monotonic()
    finished = th.stop(timeout=1.0)
    assert time.monotonic() - t0 <= 5.0  # its 1 s, not the read's 10 s (a loaded machine may add seconds)
    assert not finished and th.daemon
    assert src.releases == 0  # never released under a blocked read
    src.unblock.set()
    th.join(WAIT_S)
    assert not th.is_alive()
    assert src.releases == 1 and not src.released_while_reading
    assert th.state is CaptureState.STOPPED


@pytest.mark.timeout(30)
@pytest.mark.parametrize("live", [True, False])
def test_a_blocked_read_is_no_signal_for_a_live_source_only(live: bool) -> None:
    """A camera or stream whose read blocks has no signal (though it reported no error); a file or the
    demo that is slow to read has a low capture rate, and NO SIGNAL would be wrong there."""
    src = BlockingSource()
    src.is_live = live
    th = CaptureThread(src, LatestSlot())
    th.start()
    try:
        assert src.in_read.wait(5)
        if live:
            assert wait_until(lambda: th.silent_s is not None, 10)
            assert th.silent_s >= NO_SIGNAL_S and th.fps == 0.0
        else:
            time.sleep(2 * NO_SIGNAL_S)  # still blocked: the source is only set free below
            assert src.reading and th.silent_s is None
        assert th.state is CaptureState.STARTING  # nothing failed
    finally:
        src.unblock.set()
        th.stop()


@pytest.mark.timeout(30)
def test_an_outage_being_reconnected_reads_no_signal_with_its_seconds() -> None:
    """Three frames, then the camera is gone (a stream that stopped): NO SIGNAL, counting on."""
    cam = FakeCamera(script=[3], open_failures=10_000)
    th = CaptureThread(cam, LatestSlot(), backoff=FAST)
    th.start()
    try:
        assert wait_until(lambda: th.state is CaptureState.RECONNECTING and th.silent_s is not None, 10)
        first = th.silent_s
        assert first >= NO_SIGNAL_S and th.fps == 0.0
        assert wait_until(lambda: (th.silent_s or 0) > first + 0.2, 10)
    finally:
        th.stop()


@pytest.mark.timeout(60)
def test_stop_during_backoff_is_prompt() -> None:
    cam = FakeCamera(script=[1])  # one frame, then no signal forever
    cam.open_failures = 10**6
    th = CaptureThread(cam, LatestSlot(), backoff=(5.0, 5.0))
    th.start()
    assert wait_until(lambda: th.state is CaptureState.RECONNECTING)
    t0 = time.monotonic()
    assert th.stop(timeout=1.0)
    assert time.monotonic() - t0 < 0.5
    assert th.state is CaptureState.STOPPED


@pytest.mark.timeout(60)
def test_exception_in_read_is_published_not_raised() -> None:
    class Exploding(FakeCamera):
        def read(self) -> np.ndarray | None:
            raise RuntimeError("driver exploded\nsecond line")

    cam = Exploding()
    th = CaptureThread(cam, LatestSlot())
    th.start()
    th.join(WAIT_S)
    assert not th.is_alive()
    assert th.state is CaptureState.FAILED
    assert th.last_error == "RuntimeError: driver exploded"
    assert cam.releases == 1


@pytest.mark.timeout(60)
def test_live_without_reconnect_ends() -> None:
    cam = FakeCamera(script=[3, "drop"])
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(cam, slot, reconnect=False)
    th.start()
    th.join(WAIT_S)
    assert th.state is CaptureState.ENDED and "lost the signal" in th.last_error
    assert th.frames == 3


def test_fakes_and_sources_satisfy_protocol() -> None:
    for src in (
        FakeCamera(),
        BlockingSource(),
        CameraSource(0),
        StreamSource("rtsp://x/y"),
        VideoFileSource("x.mp4"),
        ImageSource("x.png"),
        DemoSource(),
    ):
        assert isinstance(src, FrameSource)


# ---- video files --------------------------------------------------------------------------------


def write_video(path: Path, n: int = 20, fps: float = 20.0, size: tuple[int, int] = (64, 48)) -> Path:
    """Frame i is uniform grey 10*i, so order survives MJPG compression."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened(), "cv2.VideoWriter cannot write MJPG here"
    for i in range(n):
        w.write(np.full((size[1], size[0], 3), 10 * i, np.uint8))
    w.release()
    return path


def grey(f: Frame) -> int:
    return round(float(f.image.mean()) / 10)


@pytest.mark.timeout(60)
def test_video_file_plays_in_order_at_its_rate_then_ends(tmp_path: Path) -> None:
    src = open_source(str(write_video(tmp_path / "clip.avi")))
    assert isinstance(src, VideoFileSource) and not src.is_live and src.fps == pytest.approx(20.0)
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(src, slot)
    th.start()
    frames = drain(
        slot, lambda fs: th.state is CaptureState.ENDED and slot.peek() is (fs[-1] if fs else None), timeout=10
    )
    th.join(WAIT_S)
    assert th.state is CaptureState.ENDED
    assert [f.seq for f in frames] == list(range(20))
    assert [grey(f) for f in frames] == list(range(20))
    assert [f.pts_s for f in frames] == pytest.approx([i / 20 for i in range(20)])
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    span = (frames[-1].t_capture_ns - frames[0].t_capture_ns) / 1e9
    # At its rate, not as fast as it decodes (0.95 s); late frames on a loaded machine only add time.
    assert 0.75 <= span <= 2.5, f"19 frame periods at 20 fps took {span:.2f} s"
    assert src.ended


@pytest.mark.timeout(60)
def test_video_file_loop_continues(tmp_path: Path) -> None:
    src = open_source(str(write_video(tmp_path / "clip.avi", n=6, fps=30.0)), loop=True)
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(src, slot)
    th.start()
    frames = drain(slot, lambda fs: len(fs) >= 15)
    th.stop()
    assert len(frames) >= 15
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert [grey(f) for f in frames[:15]] == [i % 6 for i in range(15)]
    assert frames[6].pts_s == pytest.approx(0.0)  # media time restarts, seq does not
    assert th.state is CaptureState.STOPPED


def test_tour_video_opens(media: Path) -> None:
    src = open_source(str(media / "tour.mp4"))
    try:
        img = src.read()
        assert img is not None and img.shape == (480, 640, 3)
        assert src.fps == pytest.approx(30.0)
    finally:
        src.release()


# ---- open_source parsing and errors ---------------------------------------------------------------


def one_line(exc: pytest.ExceptionInfo[SourceError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as e:
        open_source(str(tmp_path / "nope.mp4"))
    msg = one_line(e)
    assert "not found" in msg and "--source demo" in msg


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SourceError) as e:
        open_source(str(tmp_path))
    assert "no images" in one_line(e)


@pytest.mark.timeout(60)
def test_bad_camera_index_fails_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(SourceError) as e:
        open_source("99")
    assert time.monotonic() - t0 < 2.0
    msg = one_line(e)
    assert "no camera at index 99" in msg and "--source demo" in msg
    with pytest.raises(SourceError):
        open_source("/dev/video99")
    if sys.platform.startswith("linux"):
        assert os.environ.get("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT")


def test_corrupt_video(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(SourceError) as e:
        open_source(str(bad))
    assert "broken.mp4" in one_line(e)


@pytest.mark.timeout(60)
def test_unreachable_stream_and_bad_scheme() -> None:
    with pytest.raises(SourceError) as e:
        open_source("rtsp://user:secret@127.0.0.1:9/cam")
    msg = one_line(e)
    assert "secret" not in msg and "127.0.0.1" in msg
    with pytest.raises(SourceError) as e:
        open_source("gopher://example/x")
    assert "unsupported URL scheme" in one_line(e)
    with pytest.raises(SourceError):
        open_source("  ")


def test_spec_dispatch(tmp_path: Path, media: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[object] = []
    for cls in (CameraSource, StreamSource, VideoFileSource, ImageSource, DemoSource):
        monkeypatch.setattr(cls, "open", lambda self: opened.append(self))
    assert isinstance(open_source("0"), CameraSource)
    assert open_source("2", width=320).name == "camera 2"
    assert isinstance(open_source("/dev/video3"), CameraSource)
    assert isinstance(open_source("http://host/stream.mjpg"), StreamSource)
    assert isinstance(open_source("RTSP://host/x"), StreamSource)
    assert isinstance(open_source("Demo"), DemoSource)
    assert isinstance(open_source(str(media)), ImageSource)
    assert isinstance(open_source(str(media / "coffee.jpg")), ImageSource)
    assert isinstance(open_source(str(media / "tour.mp4")), VideoFileSource)
    assert isinstance(open_source(f"file://{media / 'tour.mp4'}"), VideoFileSource)
    assert len(opened) == 10  # open_source hands back opened sources
    assert StreamSource("rtsp://admin:pw@cam.local/live").name == "rtsp://admin:***@cam.local/live"


# ---- images ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_single_image_is_a_low_rate_still(media: Path) -> None:
    src = open_source(str(media / "chelsea.jpg"))
    assert isinstance(src, ImageSource) and src.fps == 10.0 and not src.is_live
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(src, slot)
    th.start()
    frames = drain(slot, lambda fs: len(fs) >= 4)
    th.stop()
    assert len(frames) >= 4 and th.state is CaptureState.STOPPED
    span = (frames[3].t_capture_ns - frames[0].t_capture_ns) / 1e9
    assert 0.2 <= span <= 0.6  # ~10 fps, not a busy loop
    # One read-only picture for every frame: never copied ten times a second, preprocessed once.
    assert all(f.image is frames[0].image and f.still for f in frames)
    assert not frames[0].image.flags.writeable


def test_folder_slideshow_cycles_and_skips_unreadable(
    tmp_path: Path, media: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i, name in enumerate(["coffee.jpg", "rocket.jpg"]):
        shutil.copy(media / name, tmp_path / f"img{i * 10 + 2}.jpg")  # img2, img12: natural order
    (tmp_path / "img5.png").write_bytes(b"not a png")
    (tmp_path / "readme.txt").write_text("ignored")
    src = ImageSource(tmp_path, slideshow_seconds=0.2)  # 2 reads per image at 10 fps
    src.open()
    seen = []
    for _ in range(8):
        img = src.read()
        assert img is not None
        seen.append(src.current_file.name if src.current_file else None)
    assert seen == ["img2.jpg", "img2.jpg", "img12.jpg", "img12.jpg"] * 2
    assert "img5.png" in caplog.text  # warned about, once
    assert caplog.text.count("img5.png") == 1
    src.release()


def test_folder_without_readable_images(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"junk")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(SourceError) as e:
        open_source(str(tmp_path))
    assert "no readable image" in one_line(e)
    with pytest.raises(SourceError):
        open_source(str(tmp_path / "a.jpg"))


# ---- demo -----------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_demo_source_with_stub_scene(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []

    class StubScene:
        def __init__(self, width: int, height: int, seed: int, num_targets: int = 2) -> None:
            self.shape = (height, width, 3)

        def frame(self, t: float) -> np.ndarray:
            calls.append(t)
            return np.zeros(self.shape, np.uint8)

    stub = types.ModuleType("live_attention.demo.synthetic")
    stub.DemoScene = StubScene  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "live_attention.demo.synthetic", stub)
    src = open_source("demo", width=32, height=24, fps=50)
    assert src.read().shape == (24, 32, 3)  # type: ignore[union-attr]
    time.sleep(0.02)
    src.read()
    assert 0 <= calls[0] < calls[1] < 1.0  # t = elapsed seconds since open


@pytest.mark.timeout(60)
def test_demo_source_real_scene() -> None:
    src = DemoSource(width=160, height=120, fps=30)
    slot: LatestSlot[Frame] = LatestSlot()
    th = CaptureThread(src, slot)
    th.start()
    frames = drain(slot, lambda fs: len(fs) >= 5)
    th.stop()
    assert len(frames) >= 5
    img = frames[-1].image
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8 and img.std() > 0
    assert not np.array_equal(frames[0].image, frames[-1].image)  # things move


def test_named_sources_come_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--source NAME`` opens what was registered under NAME (any case): how the demo plugs in."""
    from live_attention.io import sources
    from live_attention.io.sources import named_source, register_source

    monkeypatch.setattr(sources, "_NAMED", dict(sources._NAMED))  # this test's registration goes afterwards

    made: list[tuple[int | None, int | None, float | None]] = []

    def factory(width: int | None, height: int | None, fps: float | None) -> FrameSource:
        made.append((width, height, fps))
        return FakeCamera([0])

    assert named_source("test-pattern") is None
    register_source("test-pattern", factory)
    src = open_source("Test-Pattern", width=32, fps=5.0)
    assert isinstance(src, FakeCamera) and made == [(32, None, 5.0)]
    assert isinstance(open_source("demo", width=64, height=48), DemoSource)  # registered by the package
