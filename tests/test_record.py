"""Recording, replay and export: crash safety, fidelity, timestamps, failures, the replay window."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from live_attention.config import Config, RecordConfig
from live_attention.core.engine import AttentionEngine
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings, Status, View
from live_attention.errors import UserError
from live_attention.io.encoders import bench_recording
from live_attention.io.recorder import Recorder
from live_attention.io.recording import MANIFEST, Session
from live_attention.io.session_dir import new_session_dir
from live_attention.io.writers import write_gif
from live_attention.pipeline.replay import Player, export_video, grid_picture, layers_frames
from live_attention.ui.controller import next_target
from live_attention.ui.frame import render
from live_attention.ui.hud import hud_layout
from tests.conftest import MEDIA, tiny_vit

HERE = Path(__file__).resolve().parent


def _engine() -> AttentionEngine:
    return AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32", name="tiny", weights_label="random",
                                untrained=True)


def _frames(n: int, w: int = 320, h: int = 240) -> list[np.ndarray]:
    """Frames cut from the shared tour video when present, else a moving synthetic pattern."""
    out = []
    tour = MEDIA / "tour.mp4"
    if tour.exists():
        import av

        with av.open(str(tour)) as c:
            for f in c.decode(video=0):
                import cv2

                out.append(cv2.resize(f.to_ndarray(format="bgr24"), (w, h), interpolation=cv2.INTER_AREA))
                if len(out) == n:
                    break
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    while len(out) < n:
        out.append(np.roll(base, 5 * len(out), axis=1))
    return out


def _cfg(queue_size: int = 1000, raw_codec: str = "ffv1") -> Config:
    """Lossless raw frames by default: the round trips compare pixels exactly."""
    return replace(Config(), record=RecordConfig(queue_size=queue_size, raw_codec=raw_codec))


def _record(base: Path, engine: AttentionEngine, frames: list[np.ndarray], view: View | None = None,
            step_ns: list[int] | None = None):
    """Record ``frames`` through the maps + renderer + recorder; return (recorder, results)."""
    rec = Recorder.create(base, engine, _cfg())
    rec.start()
    view = view or View()
    t = time.monotonic_ns()
    results = []
    for i, img in enumerate(frames):
        t += step_ns[i] if step_ns else 33_366_667 + (i % 3) * 1_000_000  # variable frame rate
        res = process(engine, Frame(image=img, seq=i, t_capture_ns=t, source="test"))
        rgb = render(img, res, view)
        assert rec.submit(res, rgb, view)
        results.append(res)
    rec.stop()
    return rec, results


def process(engine: AttentionEngine, frame: Frame, settings: MapSettings | None = None):
    return process_frames(engine, [frame], settings or MapSettings())[0]


def _ffprobe_times(path: Path) -> list[float]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
         "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60,
    )
    return [float(x.split(",")[0]) for x in out.stdout.split() if x.strip() and x.strip() != "N/A"]


def _ffprobe_count(path: Path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(path)], capture_output=True, text=True, timeout=60,
    )
    return int(out.stdout.strip().split(",")[0])


# --------------------------------------------------------------------------------------------------


def test_roundtrip_same_maps_and_manifest(tmp_path):
    engine = _engine()
    frames = _frames(12)
    view = View(mode="rollout", layer=1, head=0)
    rec, results = _record(tmp_path, engine, frames, view)
    assert rec.error is None and rec.dropped == 0
    s = Session(rec.path)
    assert len(s) == len(results)
    man = json.loads((rec.path / MANIFEST).read_text())
    assert man["layers"] == 3 and man["heads"] == 2 and man["grid"] == [4, 4]
    assert man["frame_size"] == [320, 240] and man["model"]["categories"] == 10
    assert man["software"]["torch"] and man["config"]["record"]["queue_size"] == 1000
    assert man["end"]["frames"] == len(results)
    for i in (0, 5, len(results) - 1):
        r = results[i]
        got = s.result(i)
        assert np.array_equal(got.frame, r.frame)  # FFV1: lossless
        for name in ("cls", "rollout", "entropy", "patch_entropy"):
            np.testing.assert_allclose(getattr(got, name), getattr(r, name), rtol=2e-3, atol=2e-3)
        assert [n for n, _ in got.topk] == [n for n, _ in r.topk]
        # The class indices too: T and a click on a label in replay explain the class shown there.
        assert got.top_ids == r.top_ids and len(r.top_ids) == len(r.topk) == 5
        assert next_target(got, None) == r.top_ids[1]
        rows = hud_layout(960, 720, got, View(mode="relevance"), Status()).rows
        assert [cls for _, cls in rows] == list(r.top_ids)  # a click on a label picks that label's class
        unknown = hud_layout(960, 720, replace(got, top_ids=()), View(mode="relevance"), Status()).rows
        assert [cls for _, cls in unknown] == [-1] * 5  # ids unknown: not clickable, never a wrong class
        assert got.seq == r.seq and got.t_capture_ns == r.t_capture_ns and got.box == r.box
        assert s.view(i) == view
    del s.data["top_ids"]  # a session recorded before the ids were: they come from the model's class names
    assert s.result(3).top_ids == results[3].top_ids
    # Sessions recorded while the settings named the shown modes ("views", now "maps"): still read.
    s.data["settings"] = np.array([json.dumps({"views": ["rollout"], "fusion": "max", "relevance": False})] * len(s))
    assert s.result(3).settings == MapSettings(fusion="max") and s.result(3).rollout is not None
    for i in (7, 2, 11, 0, 3):  # random access: seeks back and forth in raw.mkv
        assert np.array_equal(s.raw.get(i), results[i].frame), i
    s.close()


def test_export_frame_count_and_timestamps(tmp_path):
    engine = _engine()
    steps = [30_000_000, 45_000_000, 33_000_000, 70_000_000, 33_000_000, 20_000_000, 33_000_000, 33_000_000,
             50_000_000, 33_000_000]
    rec, _ = _record(tmp_path / "rec", engine, _frames(len(steps)), step_ns=steps)
    s = Session(rec.path)
    rec_times = [p / 1000 for p in s.pts_ms]
    # The overlay as recorded has the capture timestamps.
    assert _ffprobe_count(rec.path / "overlay.mp4") == len(steps)
    np.testing.assert_allclose(_ffprobe_times(rec.path / "overlay.mp4"), rec_times, atol=0.002)
    out = tmp_path / "out.mp4"
    export_video(s, out, {"mode": "entropy", "layer": 0, "head": 1})
    assert _ffprobe_count(out) == len(steps)
    np.testing.assert_allclose(_ffprobe_times(out), rec_times, atol=0.002)
    # Query needs the model: recomputed from the lossless raw frame.
    out2 = tmp_path / "q.mp4"
    export_video(s, out2, {"mode": "query"}, engine=engine)
    assert _ffprobe_count(out2) == len(steps)
    s.close()


def test_export_grid_and_layers_gif(tmp_path):
    rec, _ = _record(tmp_path, _engine(), _frames(3))
    s = Session(rec.path)
    img = grid_picture(s, 1)
    assert img.ndim == 3 and img.shape[0] > 3 * 96 and img.shape[1] > 2 * 96
    frames = layers_frames(s, 1, View())
    assert len(frames) == 3
    gif = write_gif(frames, tmp_path / "l.gif")
    assert _ffprobe_count(gif) == 3
    s.close()


def test_cli_export(tmp_path):
    rec, _ = _record(tmp_path, _engine(), _frames(4))
    from live_attention.commands.cli import main

    assert main(["export", str(rec.path), "-o", str(tmp_path / "g.png"), "--frame", "2", "--grid"]) == 0
    assert (tmp_path / "g.png").stat().st_size > 1000
    assert main(["export", str(rec.path), "-o", str(tmp_path / "a.mp4"), "--mode", "rollout", "--layer", "2"]) == 0
    assert _ffprobe_count(tmp_path / "a.mp4") == 4
    assert main(["export", str(rec.path), "-o", str(tmp_path / "a.mp4")]) == 2  # never overwrite
    assert main(["export", str(rec.path), "-o", str(tmp_path / "b.mp4"), "--layer", "9"]) == 2
    # Wrong extensions and frame numbers are one-line errors, not tracebacks.
    assert main(["export", str(rec.path), "-o", str(tmp_path / "g.mp4"), "--frame", "2", "--grid"]) == 2
    assert main(["export", str(rec.path), "-o", str(tmp_path / "l.png"), "--frame", "2", "--layers-gif"]) == 2
    assert main(["export", str(rec.path), "-o", str(tmp_path / "g2.png"), "--frame", "0", "--grid"]) == 2
    assert main(["export", str(rec.path), "-o", str(tmp_path / "g2.png"), "--frame", "5", "--grid"]) == 2
    assert main(["export", str(rec.path), "-o", str(tmp_path / "l.gif"), "--frame", "4", "--layers-gif"]) == 0


CHILD = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from dataclasses import replace
    import numpy as np
    from conftest import tiny_vit
    from live_attention.config import Config, RecordConfig
    from live_attention.core.engine import AttentionEngine
    from live_attention.core.step import process_frames
    from live_attention.ui.frame import render
    from live_attention.ui.hud import hud_layout
    from live_attention.datatypes import Frame, MapSettings, Status, View
    from live_attention.io.recorder import Recorder

    engine = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32", name="tiny")
    rec = Recorder.create({base!r}, engine, replace(Config(), record=RecordConfig(queue_size=1000)))
    print(rec.path, flush=True)
    rec.start()
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    i = 0
    t0 = time.monotonic_ns()
    while True:
        img = np.roll(base, 4 * i, axis=1)
        res = process_frames(engine, [Frame(image=img, seq=i, t_capture_ns=time.monotonic_ns(), source="child")],
                             MapSettings())[0]
        rec.submit(res, render(img, res, View()), View())
        print(i, (res.t_capture_ns - t0) / 1e9, rec.written, flush=True)
        i += 1
        time.sleep(0.04)
""")



def test_sigkill_mid_recording(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(tests=str(HERE), base=str(tmp_path / "rec")))
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        path = Path(p.stdout.readline().strip())
        last_t = 0.0
        while True:
            line = p.stdout.readline()
            assert line, "the child stopped early"
            _, t, _ = line.split()
            last_t = float(t)
            if last_t >= 4.0:
                break
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(10)
    times = _ffprobe_times(path / "overlay.mp4")
    assert times and times[-1] >= last_t - 1.5, (times[-1:], last_t)
    s = Session(path)  # replay's loader opens it
    data_end = float(s.pts_ms[-1]) / 1000
    assert data_end >= last_t - 1.5, (data_end, last_t)
    raw_n = s.raw.count()
    assert raw_n >= 1 and float(s.pts_ms[min(raw_n, len(s)) - 1]) / 1000 >= last_t - 1.5
    assert s.result(0).cls.shape == (3, 2, 16)
    s.close()


def test_full_disk_stops_cleanly(tmp_path, monkeypatch, caplog):
    """The disk fills during the second chunk: one message, what was written stays readable, the
    manifest is finalised (the recorder gives its reserve back for it), no .tmp is left, and a stale
    .tmp never blocks reading."""
    import logging

    from live_attention.io import recorder, recording

    engine = _engine()
    disk = {"chunks": 0, "full": False}
    write_chunk = recording.ChunkWriter.write_chunk
    write_json = recording.write_json_atomic

    def chunk_on_a_filling_disk(self, path, arrays):
        disk["chunks"] += 1
        if disk["chunks"] >= 2:
            disk["full"] = True
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        write_chunk(self, path, arrays)

    def json_on_a_full_disk(path, data):
        if disk["full"] and disk["rec"].reserve.held:  # the disk is full until the reserve is given back
            path.with_name(path.name + ".tmp").write_bytes(b"")  # what a full disk leaves: an empty tmp
            try:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            finally:
                path.with_name(path.name + ".tmp").unlink()  # as write_json_atomic does
        write_json(path, data)

    monkeypatch.setattr(recording.ChunkWriter, "write_chunk", chunk_on_a_filling_disk)
    monkeypatch.setattr(recorder, "write_json_atomic", json_on_a_full_disk)
    monkeypatch.setattr(recording, "CHUNK_FRAMES", 4)
    caplog.set_level(logging.WARNING)
    rec = disk["rec"] = Recorder.create(tmp_path, engine, _cfg())
    # The reserve holds its megabyte unlinked: nothing a kill could leave behind.
    assert rec.reserve.held and not (rec.path / recording.RESERVE).exists()
    rec.start()
    t = time.monotonic_ns()
    for i, img in enumerate(_frames(20)):
        t += 33_000_000
        res = process(engine, Frame(image=img, seq=i, t_capture_ns=t, source="test"))
        rec.submit(res, render(img, res, View()), View())  # never raises
        time.sleep(0.005)
    rec.join(10)
    rec.stop()  # no raise
    assert rec.error and "disk full" in rec.error and "\n" not in rec.error
    assert not rec.reserve.held
    assert "REC" in rec.hud_text()
    assert not rec.submit(res, render(img, res, View()), View())
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "disk full" in errors[0].getMessage() and errors[0].exc_info is None
    manifest = json.loads((rec.path / MANIFEST).read_text())
    assert manifest["end"] is not None and manifest["end"]["error"] == rec.error
    assert not list(rec.path.glob("*.tmp")) and not list((rec.path / "attention").glob("*.tmp"))
    (rec.path / (MANIFEST + ".tmp")).write_bytes(b"")  # a crash's leftover: ignored by readers
    s = Session(rec.path)
    assert 1 <= len(s) <= 4 and s.result(len(s) - 1).cls.shape == (3, 2, 16)  # the first chunk
    assert _ffprobe_count(rec.path / "overlay.mp4") >= len(s)
    s.close()


def test_unwritable_and_existing_session(tmp_path):
    engine = _engine()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="cannot"):
        Recorder.create(blocker / "sub", engine, _cfg())
    rec, _ = _record(tmp_path / "rec", engine, _frames(2))
    with pytest.raises(UserError, match="existing recording session"):
        Recorder.create(rec.path, engine, _cfg())
    # The same second twice: a new name, never the same folder.
    from datetime import datetime

    now = datetime(2026, 1, 2, 3, 4, 5)
    a, b = new_session_dir(tmp_path / "s", now), new_session_dir(tmp_path / "s", now)
    assert a != b and a.name == "session-20260102-030405" and b.name == "session-20260102-030405-1"


def test_live_session_recording_and_failure_in_status(tmp_path):
    """LiveSession.status shows REC and the recorder's one-line error; the app goes on."""
    from live_attention.io.capture import open_source
    from live_attention.pipeline.live import LiveSession

    engine = _engine()
    cfg = replace(_cfg(), source=replace(Config().source, source="demo"))
    source = open_source("demo", width=320, height=240, fps=30)
    session = LiveSession(cfg, engine, source)
    session.start()
    try:
        path = session.start_recording(tmp_path, lambda: View())
        for _ in range(20):
            res = session.results.get(timeout=1.0)
            if res is not None:
                session.recorder.submit(res, render(res.frame, res, View()), View())
        st = session.status()
        assert st.recording and st.recording.startswith("REC ") and "dropped" in st.recording
        session.recorder.error = "recording stopped: disk full"
        assert session.status().error == "recording stopped: disk full"
        session.recorder.error = None
        assert session.stop_recording() == path
    finally:
        session.stop()
    assert len(Session(path)) >= 1


def test_queue_is_bounded_by_count_and_by_capture_time(tmp_path):
    """Not started, so nothing drains: the queue keeps the newest frames, never more than queue_size of
    them nor more than max_lag_s of capture time; the rest are dropped, oldest first, and counted."""
    engine = _engine()
    cfg = replace(Config(), record=RecordConfig(queue_size=2, max_lag_s=0.4))
    rec = Recorder.create(tmp_path, engine, cfg)
    img = _frames(1)[0]
    t0 = time.monotonic_ns()
    res = process(engine, Frame(image=img, seq=0, t_capture_ns=t0, source="t"))
    rgb = render(img, res, View())
    t = time.perf_counter()
    ok = [rec.submit(replace(res, seq=i, t_capture_ns=t0 + i), rgb, View()) for i in range(10)]
    # Never blocks: the recorder is not started, so a submit that waited for room would wait for good (or
    # its timeout, per frame); 1 s for ten calls allows a loaded machine and tells the two apart.
    assert time.perf_counter() - t < 1.0
    assert all(ok) and rec.queued == 2 and rec.dropped == 8 and "dropped 8" in rec.hud_text()
    rec.stop()

    by_time = Recorder.create(tmp_path / "t", engine, replace(Config(), record=RecordConfig(queue_size=1000, max_lag_s=0.4)))
    for i in range(30):  # 30 fps for a second: only the last 0.4 s stays queued
        by_time.submit(replace(res, seq=i, t_capture_ns=t0 + i * 33_333_333), rgb, View())
    assert by_time.queued == 13 and by_time.dropped == 17
    by_time.stop()


def test_player_keys():
    p = Player(np.array([0, 33, 70, 100, 140]), playing=False)
    p.press(".")
    p.press(".")
    assert p.index == 2
    p.press(",")
    assert p.index == 1
    p.press("end")
    assert p.index == 4
    p.press("home")
    assert p.index == 0
    p.press("]")
    p.press("]")
    assert p.speed == 4.0
    for _ in range(5):
        p.press("[")
    assert p.speed == 0.25
    p.press("p")
    assert p.playing


def test_bench_recording(tmp_path):
    r = bench_recording(frames=6, width=320, height=240, tmp_dir=tmp_path)
    assert r["overlay_ms_per_frame"] > 0 and r["raw_ffv1_bytes_per_s"] > 0
    # Against the interval at 30 fps: what record.raw_codec = "auto" would take with these costs.
    assert r["interval_ms"] == pytest.approx(1000 / 30) and r["auto_codec"] in ("ffv1", "mjpeg")
    assert r["auto_share_of_interval"] > 0
    L, H, P = 12, 12, 196
    assert r["attention_bytes_per_frame"] <= 200_000
    assert r["attention_bytes_per_frame"] >= L * H * P * 2  # cls in fp16


@pytest.mark.gui
@pytest.mark.timeout(400)
def test_replay_window_steps_and_seeks(tmp_path):
    """Under Xvfb: replay opens paused, `.`/`,` step, End jumps, the timeline slider seeks, Q quits."""
    from live_attention.core.models import load_model
    from tests.gui_helpers import App, XServer

    engine = load_model("vit_b_32", weights="random", device="cpu", precision="fp32")
    rec, _ = _record(tmp_path, engine, _frames(8))
    x = XServer()
    app = App(x, ["replay", str(rec.path), "--paused", "--no-model"], tmp_path, title="live-attention replay")
    try:
        app.wait(lambda s: s.get("frame_index") == 0, 60, "first frame")
        app.key("period")
        app.wait(lambda s: s["frame_index"] == 1, 20, "step forward")
        app.key("period", "period", "comma")
        app.wait(lambda s: s["frame_index"] == 2, 20, "step back")
        app.key("End")
        app.wait(lambda s: s["frame_index"] == 7, 20, "end")
        app.key("Home")
        app.wait(lambda s: s["frame_index"] == 0, 20, "start")
        app.click(0.5, 0.985)  # the timeline slider along the bottom
        app.wait(lambda s: 2 <= s["frame_index"] <= 5, 20, "seek by slider")
        app.key("bracketright")
        app.wait(lambda s: s["speed"] == 2.0, 20, "speed x2")
        app.key("p")
        app.wait(lambda s: s["playing"], 20, "play")
        app.key("q")
        assert app.close(15) == 0
    finally:
        app.close(1)
        x.stop()
