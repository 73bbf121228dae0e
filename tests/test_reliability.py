"""Holding up on a busy laptop and against bad files (issue 11): each defect a QA pass found, pinned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from live_attention.commands.cli import main
from live_attention.config import Config, RecordConfig
from live_attention.core.engine import AttentionEngine
from live_attention.core.models import load_model
from live_attention.core.render import axis_labels
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings, Result, Status, View
from live_attention.errors import UserError, WeightsError
from live_attention.io import recording
from live_attention.io.capture import LatestSlot, open_source
from live_attention.io.file_sources import ImageSource
from live_attention.io.recorder import Recorder
from live_attention.io.recording import Session
from live_attention.io.video import read_image
from live_attention.io.writers import write_gif
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop
from live_attention.pipeline.ports import Inputs
from live_attention.pipeline.replay import ReplayFeed, export_video
from live_attention.pipeline.worker import InferenceWorker
from live_attention.ui.frame import render
from tests.conftest import cut_clip, tiny_vit

ENV = {**os.environ, "LIVE_ATTENTION_OFFLINE": "1"}
ENV.pop("DISPLAY", None)
# How long a child process may take to start (import torch, load a model) and do a few seconds of work.
# Seconds when the machine is idle; a machine shared with other test runs took over a minute. Only a
# failure waits this long.
START_S = 240


def run_cli(args: list[str], timeout: float = START_S, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "live_attention", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV, **kw)


def busy_loop() -> subprocess.Popen:
    """Another process holding a core, as a browser or a video call does on a demo laptop."""
    return subprocess.Popen(["sh", "-c", "while :; do :; done"])


def tiny_engine(**kw) -> AttentionEngine:
    return AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32", name="tiny", **kw)


# --------------------------------------------------------------------------------------------------
# 1. Another busy process must not make the model collapse
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(3 * START_S)
def test_openmp_threads_wait_passively_in_every_command():
    """Spinning OpenMP threads starved the model under one busy core (30 -> 2.5 fps). The package sets
    a passive wait policy before torch loads libgomp, whatever the command (unless the user set one)."""
    env = {k: v for k, v in ENV.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}  # as a user starts it
    env["OMP_DISPLAY_ENV"] = "verbose"
    code = "import live_attention, torch; torch.ones(64, 64) @ torch.ones(64, 64)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=START_S)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stderr and "GOMP_SPINCOUNT = '10000'" in out.stderr, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-c", "import torch; torch.ones(64, 64) @ torch.ones(64, 64)"],
                         capture_output=True, text=True, env=env, timeout=START_S)
    assert "GOMP_SPINCOUNT = '300000'" in out.stderr  # the control: torch alone spins 30 times longer
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, timeout=START_S)
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in out.stderr and "GOMP_SPINCOUNT = '10000'" not in out.stderr  # theirs wins


# --------------------------------------------------------------------------------------------------
# 2. At most about a second lost to a crash, whatever the load
# --------------------------------------------------------------------------------------------------


# What a kill may lose by design: the recorder's queue (record.max_lag_s of capture time) and the part
# not yet on disk (an attention chunk of <= CHUNK_SECONDS, an overlay fragment of <= KEY_MS). On top, a
# loaded machine delays the recorder thread: the frame it is writing is out of the queue, and the thread
# may wait for a core (on a 2-core machine shared with other test runs, 1.48 s were lost where 0.8 s are
# the design's most). SCHEDULING_S allows for that wait. The regression this guards against lost 4-8 s (an
# unbounded queue), far above either bound; how fast the recorder keeps up is measured by `bench`.
SCHEDULING_S = 1.5


@pytest.mark.timeout(START_S + 60)
def test_sigkill_while_recording_under_load_loses_at_most_a_second(tmp_path):
    """Under one busy core, SIGKILL during --record lost 4-8 s (64 frames queued, a niced encoder).
    The queue is bounded by capture time now: what was shown about a second before the kill is on disk
    (the bounds: the design's, plus what a loaded machine may delay a thread)."""
    from live_attention.io.encoders import KEY_MS
    from live_attention.io.recording import CHUNK_SECONDS

    queue_s = Config().record.max_lag_s
    state = tmp_path / "state.json"
    busy = busy_loop()
    try:
        p = subprocess.Popen([sys.executable, "-m", "live_attention", "--headless", "--source", "demo",
                              "--record", str(tmp_path / "rec"), "--state-file", str(state)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV, cwd=tmp_path)
        try:
            deadline = time.monotonic() + START_S
            shown = None
            while time.monotonic() < deadline:
                try:
                    shown = json.loads(state.read_text())
                except (OSError, ValueError):
                    shown = None
                if shown and shown.get("seq") and shown["seq"] >= 150:  # 5 s of the 30 fps demo
                    break
                time.sleep(0.05)
            assert shown and (shown.get("seq") or 0) >= 150, p.stderr.read() if p.poll() is not None else "too slow"
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        finally:
            p.kill()
    finally:
        busy.kill()
    (folder,) = (tmp_path / "rec").iterdir()
    last_shown = shown["t_capture_ns"] / 1e9
    s = Session(folder)
    lost_data = last_shown - s.data["t_capture_ns"].max() / 1e9
    assert lost_data <= queue_s + CHUNK_SECONDS + SCHEDULING_S, f"{lost_data:.2f} s of attention data lost"
    t0 = s.manifest["t0_capture_ns"] / 1e9
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=pts_time",
                          "-of", "csv=p=0", str(folder / "overlay.mp4")], capture_output=True, text=True)
    last_overlay = max(float(x.split(",")[0]) for x in out.stdout.split() if x.split(",")[0] not in ("", "N/A")) + t0
    lost_overlay = last_shown - last_overlay
    assert lost_overlay <= queue_s + KEY_MS / 1000 + SCHEDULING_S, f"{lost_overlay:.2f} s of overlay lost"
    s.close()


# --------------------------------------------------------------------------------------------------
# 3. Bad data
# --------------------------------------------------------------------------------------------------


def _record(base: Path, n: int = 12, chunk: int = 4, monkeypatch=None) -> Path:
    engine = tiny_engine(untrained=True, weights_label="random")
    rec = Recorder.create(base, engine, replace(Config(), record=RecordConfig(queue_size=1000, max_lag_s=10)))
    rec.start()
    rng = np.random.default_rng(0)
    t = time.monotonic_ns()
    for i in range(n):
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        t += 33_000_000
        res = process_frames(engine, [Frame(img, i, t, "test")], MapSettings())[0]
        rec.submit(res, render(img, res, View()), View())
    rec.stop()
    return rec.path


def test_a_damaged_chunk_is_skipped_with_one_warning_and_the_rest_exports_and_replays(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(recording, "CHUNK_FRAMES", 4)
    monkeypatch.setattr(recording, "CHUNK_SECONDS", 60.0)
    path = _record(tmp_path, n=12)
    chunks = sorted((path / "attention").glob("chunk-*.npz"))
    assert len(chunks) == 3
    data = bytearray(chunks[1].read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = np.random.default_rng(1).integers(0, 256, 64, dtype=np.uint8).tobytes()
    chunks[1].write_bytes(bytes(data))
    s = Session(path)
    assert len(s) == 8 and list(s.data["seq"]) == [0, 1, 2, 3, 8, 9, 10, 11]
    warnings = [r.getMessage() for r in caplog.records if "chunk" in r.getMessage()]
    assert len(warnings) == 1 and "chunk-000001.npz" in warnings[0]
    out = tmp_path / "out.mp4"
    export_video(s, out, {"mode": "rollout"})
    n = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_frames", "-of", "csv=p=0", str(out)], capture_output=True, text=True)
    assert int(n.stdout.strip()) == 8
    feed = ReplayFeed(s, None, paused=True)  # replay reaches every frame, past the gap
    for i in range(len(s)):
        feed.seek(i)
        assert feed.latest().seq == s.data["seq"][i]
    s.close()


@pytest.mark.parametrize("key, value", [("layers", "many"), ("heads", None), ("grid", [4]), ("model", "x")])
def test_a_manifest_with_wrong_types_is_one_line_naming_the_key(tmp_path, key, value, capsys):
    path = _record(tmp_path, n=2)
    m = json.loads((path / "manifest.json").read_text())
    m[key] = value
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match=key):
        Session(path)
    assert main(["export", str(path), "-o", str(tmp_path / "o.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert key in err and len(err.splitlines()) == 1


def test_a_1x1_image_is_a_one_line_render_error(tmp_path, capsys):
    img = tmp_path / "dot.png"
    cv2.imwrite(str(img), np.zeros((1, 1, 3), np.uint8))
    assert main(["render", str(img), "-o", str(tmp_path / "o.png"), "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "too small" in err and len(err.splitlines()) == 1


def test_weights_with_nan_are_refused_at_load_in_one_line(tmp_path):
    p2 = tmp_path / "nan_b32.pth"
    b32 = load_model("vit_b_32", weights="random", device="cpu", precision="fp32").module.state_dict()
    b32["encoder.layers.encoder_layer_3.mlp.0.weight"][0, 0] = float("inf")
    torch.save(b32, p2)
    with pytest.raises(WeightsError) as info:
        load_model("vit_b_32", weights=str(p2), device="cpu")
    msg = str(info.value)
    assert "encoder.layers.encoder_layer_3.mlp.0.weight" in msg and "NaN or inf" in msg and "\n" not in msg


def test_non_finite_model_output_is_a_banner_not_a_crash():
    engine = tiny_engine()
    with torch.no_grad():
        engine.module.heads.head.bias[0] = float("nan")  # as if weights went bad after loading
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    res = process_frames(engine, [Frame(frame, 0, 0, "t")], MapSettings())[0]
    assert res.problem and "NaN" in res.problem and res.topk == []
    assert np.isfinite(res.cls).all() and np.isfinite(res.rollout).all()
    for mode in ("attention", "rollout", "heads", "entropy"):
        img = render(frame, res, View(mode=mode), Status(model="tiny"))  # no int(NaN) anywhere
        assert img.shape[0] == 720


# --------------------------------------------------------------------------------------------------
# 4. Outputs and finishing
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(2 * START_S)
def test_render_interrupted_keeps_a_partial_file_and_never_blocks_a_rerun(tmp_path, media):
    clip = cut_clip(tmp_path, media, 6, "six.mp4")
    out = tmp_path / "out.mp4"
    args = ["render", str(clip), "-o", str(out), "--model", "vit_b_16", "--weights", "random", "--mode", "heads"]
    p = subprocess.Popen([sys.executable, "-m", "live_attention", *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=ENV)
    partial = tmp_path / "out.partial.mp4"
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size > 20_000):
        time.sleep(0.2)
    assert partial.exists() and partial.stat().st_size > 20_000, f"nothing written in {START_S} s"
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130 and "interrupted" in err and "out.partial.mp4" in err, err
    assert not out.exists() and partial.exists()
    n = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                        "stream=nb_read_frames", "-of", "csv=p=0", str(partial)], capture_output=True, text=True)
    assert int(n.stdout.strip()) > 0  # what was written plays
    # A killed run leaves only the partial name behind: the rerun is not blocked, and replaces it.
    short = cut_clip(tmp_path, media, 0.5, "short.mp4")
    proc = run_cli(["render", str(short), "-o", str(out), "--model", "demo"])
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and not partial.exists()


def test_export_writes_a_partial_name_then_renames(tmp_path, monkeypatch):
    path = _record(tmp_path, n=4)
    s = Session(path)
    out = tmp_path / "e.mp4"
    seen = []
    from live_attention.io import writers

    orig = writers.H264Writer.write

    def spy(self, rgb, pts_s=None):
        seen.append(self.path.name)
        return orig(self, rgb, pts_s)

    monkeypatch.setattr(writers.H264Writer, "write", spy)
    export_video(s, out)
    assert set(seen) == {"e.partial.mp4"} and out.exists() and not (tmp_path / "e.partial.mp4").exists()
    s.close()


class ScriptedDisplay:
    """A display that presses keys on given iterations and keeps what it was shown."""

    running = True
    wants_pixels = True
    waits_for_results = False
    takes_clicks = False

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script, self.i, self.shown = script, 0, []

    def poll(self) -> Inputs:
        self.i += 1
        return Inputs(keys=self.script.get(self.i, []))

    def show(self, rgb, position=None) -> None:
        self.shown.append(rgb)

    def update(self, status, result, view) -> None:
        pass

    def present(self) -> None:
        time.sleep(0.02)

    def close(self) -> None:
        pass


@pytest.mark.timeout(120)
def test_recording_started_while_frozen_records_the_frozen_frame(tmp_path):
    cfg = replace(Config(), record=replace(Config().record, dir=str(tmp_path / "rec")))
    engine = load_model("demo", device="cpu")
    session = LiveSession(cfg, engine, open_source("demo", width=320, height=240))
    display = ScriptedDisplay({40: ["space"], 45: ["r"], 60: ["r"]})  # freeze, record, stop
    loop = FrameLoop(session, display, View(), max_seconds=60)
    session.start()
    try:
        while display.i < 65:
            loop.step()
    finally:
        session.stop()
    (folder,) = (tmp_path / "rec").iterdir()
    s = Session(folder)  # replay and export accept it
    assert len(s) >= 1 and s.manifest["end"]["frames"] == len(s)
    s.close()


# --------------------------------------------------------------------------------------------------
# 5. Consistency and cosmetics
# --------------------------------------------------------------------------------------------------


class RacingFeed:
    """A feed whose newest result changes on every look (a worker faster than the window)."""

    num_layers, num_heads, can_record = 3, 2, True

    def __init__(self, results: list[Result]) -> None:
        self.results, self.n, self.submitted = results, 0, []

    def latest(self):
        self.n += 1
        return self.results[self.n % len(self.results)]

    def status(self, message=None, flow_progress=None):
        return Status(model="tiny", recording="REC 00:01  dropped 0")

    def submit(self, result, rgb, view):
        self.submitted.append((result, rgb))

    def prepare(self, result, view):
        return result

    def media_time(self, result):
        return result.seq / 30

    def __getattr__(self, name):  # the rest of the Feed: no-ops
        return {"playing": None, "finished": False}.get(name, lambda *a, **k: {} if name == "state" else None)


def test_the_hud_labels_and_the_maps_always_come_from_one_result(monkeypatch, tmp_path):
    engine = tiny_engine(categories=[f"c{i}" for i in range(10)])
    rng = np.random.default_rng(0)
    results = [process_frames(engine, [Frame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), i, i, "t")],
                              MapSettings())[0] for i in range(5)]
    results = [replace(r, topk=[(f"label-of-{r.seq}", 0.9)]) for r in results]
    drawn = []
    from live_attention.pipeline import loop as loop_mod

    def spy(frame, result=None, view=None, status=None, extras=None, size=None):
        rgb = render(frame, result, view, status, extras, size)
        drawn.append((id(rgb), result))
        return rgb

    monkeypatch.setattr(loop_mod, "render", spy)
    feed = RacingFeed(results)
    loop = FrameLoop(feed, ScriptedDisplay({}), View(), state_file=str(tmp_path / "s.json"))
    for _ in range(30):
        loop.step()
        state = json.loads((tmp_path / "s.json").read_text())
        assert state["top1"] == f"label-of-{state['seq']}"  # what the HUD says is about the shown frame
    by_picture = dict(drawn)
    assert feed.submitted
    for result, rgb in feed.submitted:
        assert by_picture[id(rgb)] is result  # the recorder gets the picture with the result it shows


def test_frozen_reads_as_frozen_no_model_fps_no_drops(tmp_path):
    engine = load_model("demo", device="cpu")
    session = LiveSession(Config(), engine, open_source("demo", width=320, height=240))
    session.start()
    try:
        assert wait_for(lambda: session.results.peek() is not None)
        assert session.status().infer_fps is not None
        session.freeze(session.results.peek())
        assert wait_for(lambda: session.worker.frozen)
        st = session.status()
        assert st.infer_fps is None and st.latency_ms is None
        # Frames that arrive while frozen are left unread on purpose: the HUD does not call them dropped.
        before, puts = st.dropped, session.frames.puts
        assert wait_for(lambda: session.frames.puts >= puts + 10)  # the demo source goes on at 30 fps
        assert session.frames.overwritten > 0
        assert session.status().dropped == before
    finally:
        session.stop()


def wait_for(pred, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_entropy_grid_axis_labels_never_overlap():
    for heads in (2, 4, 6, 12, 16):
        for cell in (6, 10, 22):
            labels = axis_labels("H1", f"H{heads}", 100, 100 + heads * cell, 0.42)
            spans = sorted((x, x + w) for _, x, w in labels)
            assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False))
            assert all(100 - 40 <= x and x + w <= 100 + heads * cell + 40 for _, x, w in labels)


def test_headless_lines_say_untrained(tmp_path):
    proc = run_cli(["--headless", "--source", "demo", "--model", "demo", "--weights", "random", "--max-seconds", "5"])
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "top-1" in line and "top-1 -" not in line]
    assert lines and all("UNTRAINED" in line for line in lines)


def test_16_bit_images_give_the_same_picture_everywhere(tmp_path):
    img16 = (np.arange(48 * 64 * 3, dtype=np.uint32).reshape(48, 64, 3) % 1000).astype(np.uint16)  # max far below 65535
    p = tmp_path / "deep.png"
    cv2.imwrite(str(p), img16)
    live = ImageSource(p)
    live.open()
    rendered = read_image(p)
    assert np.array_equal(live.read(), rendered)  # the live source and render load it alike
    assert int(rendered.max()) == round(999 * 255 / 65535)  # scaled by the full 16-bit range


def test_an_animated_gif_source_says_it_ended(tmp_path):
    frames = [np.full((48, 64, 3), 40 * i, np.uint8) for i in range(5)]
    gif = write_gif(frames, tmp_path / "a.gif", seconds_per_frame=0.1)
    proc = run_cli(["--headless", "--source", str(gif), "--model", "demo", "--max-seconds", "30"])
    assert proc.returncode == 0, proc.stderr
    assert "end of input" in proc.stderr and "a.gif" in proc.stderr


def test_a_still_image_is_preprocessed_once(tmp_path):
    big = np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)
    p = tmp_path / "big.png"
    cv2.imwrite(str(p), big)
    engine = tiny_engine()
    calls = []
    orig = engine.preprocess_with_box
    engine.preprocess_with_box = lambda f: calls.append(1) or orig(f)  # type: ignore[method-assign]
    src = open_source(str(p))
    worker = InferenceWorker(engine, LatestSlot(), LatestSlot())
    image = src.read()
    for i in range(5):
        frame = Frame(image=src.read(), seq=i, t_capture_ns=i, source="big", pts_s=None, still=True)
        worker.process(frame)
    assert src.read() is image and len(calls) == 1


def test_the_unsafe_pickle_error_is_whole(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    p = tmp_path / "evil.pth"
    with open(p, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(WeightsError) as info:
        load_model("vit_b_32", weights=str(p), device="cpu")
    msg = str(info.value)
    assert msg.endswith("(save the model's state_dict(), or use .safetensors)") and "Weights only load" not in msg


def test_a_frame_in_flight_when_the_view_freezes_is_not_shown():
    """Freeze while the worker is busy with the next frame: the frozen view keeps the frame it froze
    on, and the held frame's own recomputations (other settings) still come through."""
    from tests.fakes import FakeCamera, slow_engine

    cam = FakeCamera([10_000], period=0.01)
    s = LiveSession(Config(), slow_engine(delay=0.2), cam)
    s.start()
    try:
        assert wait_for(lambda: s.results.peek() is not None)
        shown = s.latest()
        s.freeze(shown)  # the worker is in the middle of a newer frame
        seen = set()
        end = time.monotonic() + 0.6  # the frame in flight lands, then the held one is computed again
        while time.monotonic() < end:
            seen.add(s.latest().seq)
            time.sleep(0.005)
        assert seen == {shown.seq}
        s.set_settings(fusion="max")
        assert wait_for(lambda: s.latest().settings.fusion == "max")
        assert s.latest().seq == shown.seq
        s.freeze(None)
        assert wait_for(lambda: s.latest().seq > shown.seq)
    finally:
        s.stop()
