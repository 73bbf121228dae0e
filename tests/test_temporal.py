"""Maps that hold still: the temporal filter, its measures, the demo's known motion, ``evaluate --temporal``,
``--smooth`` through render and export, ``--save-maps``, and the window key."""

from __future__ import annotations

import json
from dataclasses import replace

import cv2
import numpy as np
import pytest

from live_attention.commands.cli import main
from live_attention.core import temporal as tmp
from live_attention.datatypes import MapSettings, Result, View
from live_attention.demo.synthetic import DemoScene
from live_attention.modes import view_smoother
from live_attention.offline.temporal_eval import shaken

BOX, GRID = (80, 0, 560, 480), (8, 8)  # the demo model's centre crop of a 640x480 frame


def blob(centre: tuple[float, float], grid=GRID, sigma: float = 0.7) -> np.ndarray:
    """A smooth hot spot at (row, col) in patches, [P]."""
    yy, xx = np.mgrid[0 : grid[0], 0 : grid[1]]
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma**2)).ravel().astype(np.float32)


def hot_patches_jump(rng, n: int, centre=(3.0, 4.0)) -> np.ndarray:
    """[T, P]: a still hot spot whose hottest patch jumps to a neighbour at random (what 4 px of jitter
    does to a ViT's map), with a little noise."""
    out = []
    for _ in range(n):
        dr, dc = (rng.integers(-1, 2, 2) * (rng.random() < 0.4)).tolist()
        m = blob(centre) + 0.8 * blob((centre[0] + dr, centre[1] + dc), sigma=0.5) + rng.normal(0, 0.02, GRID[0] * GRID[1])
        out.append(m.astype(np.float32))
    return np.stack(out)


def run_filter(frames, maps, box=BOX, grid=GRID, params=None) -> np.ndarray:
    est, f = tmp.MotionEstimator(), tmp.TemporalFilter(grid, params)
    return np.stack([f.step(m, est.step(fr, box, grid), 0.1).reshape(grid) for fr, m in zip(frames, maps, strict=True)])


def norm_all(maps) -> np.ndarray:
    return np.stack([tmp.normalise(m) for m in maps]).reshape(len(maps), *GRID)


# --------------------------------------------------------------------------------------------------
# The filter on the demo's scenes (maps drawn where the scene's objects are)
# --------------------------------------------------------------------------------------------------


def test_a_still_shaken_scene_settles():
    """4 px of jitter and camera noise on a still scene: the hot patch's jumps are smoothed away to at
    most a quarter of their flicker; a plain EMA needs α = 0.2 (and its lag) for the same."""
    rng = np.random.default_rng(0)
    frames = shaken(DemoScene(640, 480, seed=0).frame(1.0), 40, rng)
    raw = hot_patches_jump(rng, 40)
    out = run_filter(frames, raw)
    assert tmp.flicker(out) <= 0.25 * tmp.flicker(raw), (tmp.flicker(out), tmp.flicker(raw))
    assert tmp.flicker(tmp.ema(raw, 0.5)) > 0.25 * tmp.flicker(raw)  # the test can fail: half-way is not enough


def moving_target(n: int = 30, speedup: float = 4.0):
    """Frames of one target moving fast (the evaluation's lag clip) and a raw map with a hot spot on it."""
    scene = DemoScene(640, 480, seed=1, num_targets=1, period=1e9)
    times = [1.0 + i * speedup / 10 for i in range(n)]
    frames, maps = [], []
    for t in times:
        (_, (x0, y0, x1, y1)), = scene.target_boxes(t)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        centre = ((cy - BOX[1]) / (BOX[3] - BOX[1]) * GRID[0] - 0.5, (cx - BOX[0]) / (BOX[2] - BOX[0]) * GRID[1] - 0.5)
        frames.append(scene.frame(t))
        maps.append(blob(centre))
    return frames, np.stack(maps)


def test_a_moving_target_is_followed_without_lag():
    """The hot spot rides a target moving about a fifth of a patch a frame: the smoothed map keeps a
    correlation of at least 0.97 with the raw one and its peak trails by at most one frame, where an EMA
    at α = 0.3 trails by more."""
    frames, raw = moving_target()
    out = run_filter(frames, raw)
    corr = np.mean([tmp.correlation(a, b) for a, b in zip(out, raw, strict=True)])
    assert corr >= 0.97
    grid_raw = raw.reshape(len(raw), *GRID)
    assert tmp.peak_lag(grid_raw, out) <= 1.0
    assert tmp.peak_lag(grid_raw, tmp.ema(raw, 0.3).reshape(len(raw), *GRID)) > 1.0  # the measure can fail


def test_a_cut_is_shown_at_once():
    """A new shot (another scene) restarts the filter: the first frame after the cut is the raw map."""
    a, b = DemoScene(640, 480, seed=0), DemoScene(640, 480, seed=5)
    frames = [a.frame(1.0)] * 6 + [b.frame(2.0)]
    maps = [blob((2, 2))] * 6 + [blob((6, 6))]
    out = run_filter(frames, maps)
    assert tmp.correlation(out[-1], maps[-1]) > 0.999


def test_filter_basics():
    f = tmp.TemporalFilter(GRID)
    raw = blob((3, 3)) * 5 + 2
    assert np.allclose(f.step(raw, None), raw, atol=1e-5)  # the first frame is the raw map, in its units
    motion = tmp.MotionField(np.zeros((*GRID, 2), np.float32), np.zeros(2, np.float32), np.zeros(GRID, np.float32))
    other = blob((5, 5)) * 5 + 2
    out = f.step(other, motion)
    assert other.min() - 1e-5 <= out.min() and out.max() <= other.max() + 1e-5  # in the raw map's units
    assert tmp.correlation(out, raw) > tmp.correlation(out, other)  # still: mostly the past
    assert f.raw_stability is not None and f.stability is not None
    assert np.allclose(f.step(other, motion, smooth=False), other)  # off: raw, figures still kept
    bad = other.copy()
    bad[3] = np.nan
    assert np.isnan(f.step(bad, motion)[3]) and f.stability is None  # non-finite: passed through, restarted


def test_warp_and_measures():
    m = np.zeros(GRID, np.float32)
    m[2, 3] = 1.0
    right = np.zeros((*GRID, 2), np.float32)
    right[..., 0] = -1.0  # this frame's patch p was at p - (1, 0): the content moved one patch right
    moved = tmp.warp_grid(m, right)
    assert moved[2, 4] == 1.0 and moved.sum() == 1.0
    maps = np.stack([m, moved])
    assert tmp.consistency(maps, [None, right]) > 0.999 and tmp.warping_error(maps, [None, right], [None, None]) < 1e-9
    assert tmp.consistency(maps, [None, np.zeros_like(right)]) < 0.1
    assert tmp.flicker(np.stack([m, m, m])) == 0.0
    path = [blob((3, 1 + 0.25 * t)).reshape(GRID) for t in range(20)]
    late = path[:2] + path[:-2]  # two frames behind
    assert tmp.peak_lag(np.stack(path), np.stack(late)) == pytest.approx(2.0, abs=0.3)
    assert tmp.peak_lag(np.stack(path), np.stack(path)) == 0.0


def test_demo_scene_knows_its_motion():
    """The demo's ground-truth motion brings frame t0 onto frame t1 (up to its grain) and marks what was
    not visible before (a target that changed class at t = 4 s)."""
    scene = DemoScene(640, 480, seed=0)
    for t0, t1 in ((1.0, 1.1), (3.95, 4.05)):
        a, b = scene.frame(t0), scene.frame(t1)
        flow, valid = scene.motion(t0, t1)
        xs, ys = np.meshgrid(np.arange(640, dtype=np.float32), np.arange(480, dtype=np.float32))
        back = cv2.remap(a, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
        err = np.abs(back.astype(float) - b.astype(float)).mean(-1)
        # Two frames of grain (sigma 5 each) leave a mean absolute difference of about 5.6.
        assert err[valid].mean() < 7.0 and err[valid].mean() < np.abs(a.astype(float) - b.astype(float)).mean()
    assert (~valid).mean() > 0.02 and err[~valid].mean() > 30  # the changed targets are marked


# --------------------------------------------------------------------------------------------------
# The shown map over time (frame loop, offline path)
# --------------------------------------------------------------------------------------------------


def result(seq: int, frame: np.ndarray, rollout: np.ndarray, t: float) -> Result:
    L, H, P = 2, 2, GRID[0] * GRID[1]
    return Result(seq=seq, t_capture_ns=int(t * 1e9), t_done_ns=0, frame=frame, box=BOX, grid=GRID,
                  cls=np.ones((L, H, P), np.float32), rollout=np.stack([rollout, rollout]), entropy=np.zeros((L, H)),
                  patch_entropy=None, patch_entropy_layer=0, topk=[], infer_ms=0.0, settings=MapSettings(), pts_s=t)


def test_view_smoother_follows_the_view_and_the_frames():
    rng = np.random.default_rng(1)
    frames = shaken(DemoScene(640, 480, seed=0).frame(1.0), 12, rng)
    maps = hot_patches_jump(rng, 12)
    sm = view_smoother()
    on, off = View(mode="rollout", smooth=True), View(mode="rollout")
    results = [result(i, f, m, i / 10) for i, (f, m) in enumerate(zip(frames, maps, strict=True))]
    outs = [sm(r, on) for r in results]
    assert np.allclose(outs[0], maps[0], atol=1e-5)  # the first frame is raw
    assert tmp.flicker(np.stack(outs)) < tmp.flicker(maps)
    assert sm(results[-1], on) is outs[-1]  # a redraw of the same result gives the same map
    assert sm.hud(on).startswith("smoothing on: stability")
    other = blob((1, 1))
    again = sm(result(11, frames[11], other, 1.1), on)  # the frame computed again (frozen, new settings)
    assert np.allclose(again, other, atol=1e-5)  # is shown as computed, not as the old frame's map
    assert sm.hud(on) == "smoothing on"  # one frame since the restart: no stability figure yet, still said
    assert sm(result(12, frames[0], maps[0], 1.2), off) is None and sm.hud(off).startswith("smoothing off")
    assert sm(result(13, frames[1], maps[1], 1.3), View(mode="heads", smooth=True)) is None  # many maps
    back = sm(result(3, frames[3], maps[3], 0.3), on)  # a seek back starts again: raw
    assert np.allclose(back, maps[3], atol=1e-5)


def test_render_draws_the_smoothed_map_only_when_the_view_asks():
    from live_attention.datatypes import Extras
    from live_attention.modes import shown_map

    frame = DemoScene(640, 480, seed=0).frame(1.0)
    res = result(5, frame, blob((2, 2)), 0.5)
    ex = Extras(smoothed=blob((6, 6)), smoothed_seq=5)
    m, caption = shown_map(res, View(mode="rollout", smooth=True), ex)
    assert np.array_equal(m, ex.smoothed) and caption.endswith("smoothed")
    assert np.array_equal(shown_map(res, View(mode="rollout"), ex)[0], res.rollout[-1])
    assert np.array_equal(shown_map(res, View(mode="rollout", smooth=True), replace(ex, smoothed_seq=4))[0],
                          res.rollout[-1])  # another frame's map is never drawn


def test_j_toggles_smoothing():
    from live_attention.config import load_config
    from live_attention.ui.controller import Controller, describe_change, view_from_config

    view = view_from_config(load_config())
    assert view.smooth is True  # on by default (the README's flicker section says why)
    c = Controller(4, 4, view)
    c.press("j")
    assert c.view.smooth is False and describe_change(view, c.view).startswith("smoothing off")
    c.press("J")
    assert c.view.smooth is True
    from live_attention.ui.keys import help_lines

    assert any(k == "J" for k, _ in help_lines())


# --------------------------------------------------------------------------------------------------
# Commands: evaluate --temporal, render and export with --smooth and --save-maps, bad input
# --------------------------------------------------------------------------------------------------


def test_evaluate_temporal_prints_and_saves_the_table(tmp_path, capsys):
    from live_attention.commands.evaluate import TEMPORAL_KINDS
    from live_attention.offline.temporal_eval import KINDS, filter_names

    assert TEMPORAL_KINDS == KINDS
    rc = main(["evaluate", "--temporal", "--demo", "-n", "6", "--auc-frames", "2", "--kinds", "cls,rollout",
               "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| attention rollout | **smoothed** |" in out and "EMA α=0.2" in out and "flicker, still + jitter" in out
    md, js = sorted(tmp_path.glob("evaluate-demo-*.md")), sorted(tmp_path.glob("evaluate-demo-*.json"))
    assert len(md) == len(js) == 1 and "warping error" in md[0].read_text()
    data = json.loads(js[0].read_text())
    rows = {(r["kind"], r["filter"]): r for r in data["rows"]}
    assert set(rows) == {(k, f) for k in ("cls", "rollout") for f in filter_names()}
    assert rows[("rollout", "smoothed")]["deletion"] is not None and rows[("rollout", "EMA α=0.5")]["deletion"] is None
    assert data["frames"] == {"jitter": 6, "noise": 6, "moving": 12, "lag": 12}
    for r in data["rows"]:
        assert 0 <= r["flicker_jitter"] and -1 <= r["corr_raw"] <= 1 and r["lag"] >= 0
    assert rows[("rollout", "raw")]["corr_raw"] == pytest.approx(1.0)


def write_video(path, frames, fps: float = 10.0) -> None:
    from live_attention.io.video import H264Writer

    with H264Writer(path, frames[0].shape[1], frames[0].shape[0], fps=fps, crf=12, overwrite=True) as w:
        for i, f in enumerate(frames):
            w.write(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), i / fps)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("temporal")
    shaken_path, moving_path = d / "shaken.mp4", d / "moving.mp4"
    write_video(shaken_path, shaken(DemoScene(640, 480, seed=0).frame(1.0), 24, np.random.default_rng(3)))
    write_video(moving_path, moving_target(24)[0])
    return shaken_path, moving_path


def render_maps(video, tmp_path, smooth: str) -> dict:
    out = tmp_path / f"{video.stem}-{smooth}.npz"
    assert main(["render", str(video), "-o", str(tmp_path / f"{video.stem}-{smooth}.mp4"), "--model", "demo",
                 "--mode", "rollout", "--smooth", smooth, "--save-maps", str(out)]) == 0
    with np.load(out) as z:
        return {k: z[k] for k in z.files}


def test_render_smooth_and_save_maps_end_to_end(videos, tmp_path):
    """``render shaken.mp4 --smooth off/on --save-maps``: the saved maps are the engine's (off), their
    flicker on the still shaken video falls to at most a quarter (on), and on a moving video the smoothed
    maps follow the target (correlation with raw >= 0.97, peak lag <= 1 frame)."""
    from live_attention.core.models import load_model
    from live_attention.core.step import process_frames
    from live_attention.datatypes import Frame
    from live_attention.io.video import VideoReader

    shaken_path, moving_path = videos
    off, on = render_maps(shaken_path, tmp_path, "off"), render_maps(shaken_path, tmp_path, "on")
    assert off["maps"].dtype == np.float16 and off["maps"].shape == (24, 8, 8)
    assert list(off["grid"]) == [8, 8] and list(off["frame_size"]) == [640, 480]
    assert np.all(np.diff(off["pts_s"]) > 0) and list(off["seq"]) == list(range(24))
    assert str(off["mode"][0]) == "rollout" and off["layer"][0] == 4 and off["head"][0] == 0
    assert not off["smooth"].any() and on["smooth"].all() and "demo" in str(off["model"])
    eng = load_model("demo", device="cpu", precision="fp32")
    with VideoReader(shaken_path) as r:
        frames = [Frame(img, i, 0, "v", pts) for i, (img, pts) in enumerate(r)]
    ref = process_frames(eng, frames[:4], MapSettings(maps=("rollout",)))
    assert list(off["box"][0]) == list(ref[0].box)
    for i, res in enumerate(ref):  # float16 keeps 3 significant digits
        assert np.allclose(off["maps"][i].ravel(), res.rollout[-1], rtol=2e-3, atol=1e-6)
    f_off, f_on = tmp.flicker(off["maps"].astype(np.float32)), tmp.flicker(on["maps"].astype(np.float32))
    assert f_on <= 0.25 * f_off, (f_on, f_off)

    off, on = render_maps(moving_path, tmp_path, "off"), render_maps(moving_path, tmp_path, "on")
    a, b = off["maps"].astype(np.float32), on["maps"].astype(np.float32)
    assert np.mean([tmp.correlation(x, y) for x, y in zip(a, b, strict=True)]) >= 0.97
    assert tmp.peak_lag(a, b) <= 1.0


def run_err(args, capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_bad_smooth_and_save_maps_are_one_line(videos, tmp_path, capsys):
    shaken_path, _ = videos
    out = str(tmp_path / "o.mp4")
    base = ["render", str(shaken_path), "-o", out, "--model", "demo"]
    assert "--smooth" in run_err([*base, "--smooth", "maybe"], capsys)
    assert "--save-maps" in run_err([*base, "--save-maps", str(tmp_path / "no" / "m.npz")], capsys)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert "--save-maps" in run_err([*base, "--save-maps", str(blocker / "m.npz")], capsys)
    assert "--save-maps" in run_err([*base, "--save-maps", "/proc/live-attention-maps.npz"], capsys)  # unwritable
    assert ".npz" in run_err([*base, "--save-maps", str(tmp_path / "m.txt")], capsys)
    exists = tmp_path / "m.npz"
    exists.write_bytes(b"keep me")
    assert "already exists" in run_err([*base, "--save-maps", str(exists)], capsys)
    assert exists.read_bytes() == b"keep me" and not (tmp_path / "o.mp4").exists()  # checked before any work
    assert "--smooth" in run_err(["replay", str(tmp_path), "--smooth", "x"], capsys)
    assert "--video" in run_err(["evaluate", "--video", str(shaken_path)], capsys)
    assert "--images" in run_err(["evaluate", "--temporal", "--images", str(tmp_path)], capsys)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[view]\nsmooth = 'sometimes'\n")
    assert "view.smooth" in run_err([*base, "--config", str(cfg)], capsys)


def test_export_smooths_or_not_and_saves_maps(tmp_path, capsys):
    """A recording keeps the raw maps; export shows them smoothed or not and saves what it shows."""
    session = tmp_path / "rec"
    rc = main(["--source", "demo", "--headless", "--max-seconds", "6", "--record", str(session), "--mode", "rollout"])
    assert rc == 0
    folder = next(session.glob("session-*"))
    maps = {}
    for smooth in ("off", "on"):
        out = tmp_path / f"maps-{smooth}.npz"
        assert main(["export", str(folder), "-o", str(tmp_path / f"e-{smooth}.mp4"), "--smooth", smooth,
                     "--save-maps", str(out)]) == 0
        with np.load(out) as z:
            maps[smooth] = (z["maps"].astype(np.float32), z["smooth"])
    from live_attention.io.recording import Session

    s = Session(folder)
    try:
        recorded = np.stack([s.result(i).rollout[-1] for i in range(len(s))])
    finally:
        s.close()
    off, on = maps["off"][0].reshape(len(recorded), -1), maps["on"][0].reshape(len(recorded), -1)
    assert len(recorded) >= 3 and not maps["off"][1].any() and maps["on"][1].all()
    assert np.allclose(off, recorded, rtol=2e-3, atol=1e-6)  # the recording's raw maps
    assert not np.allclose(on[1:], recorded[1:], rtol=2e-3, atol=1e-6)  # smoothed after the first frame
    capsys.readouterr()
    assert "--save-maps" in run_err(["export", str(folder), "-o", str(tmp_path / "g.png"), "--grid",
                                     "--save-maps", str(tmp_path / "g.npz")], capsys)


class SequenceFeed:
    """A feed that shows one new result per look, in order (a worker as fast as the window)."""

    num_layers, num_heads, can_record, recording = 4, 4, False, False

    def __init__(self, results: list[Result]) -> None:
        self.results, self.i = results, -1

    def latest(self):
        self.i = min(self.i + 1, len(self.results) - 1)
        return self.results[self.i]

    def status(self, message=None, flow_progress=None):
        from live_attention.datatypes import Status

        return Status(model="demo", message=message)

    def prepare(self, result, view):
        return result

    def media_time(self, result):
        return float(result.pts_s)

    def __getattr__(self, name):  # the rest of the Feed: no-ops
        return {"playing": None, "finished": False}.get(name, lambda *a, **k: {} if name == "state" else None)


class KeyDisplay:
    running, wants_pixels, waits_for_results, takes_clicks = True, True, False, False

    def __init__(self, keys: dict[int, list[str]]) -> None:
        from live_attention.pipeline.ports import Inputs

        self.keys, self.i, self.inputs = keys, 0, Inputs

    def poll(self):
        self.i += 1
        return self.inputs(keys=self.keys.get(self.i, []))

    def show(self, rgb, position=None) -> None:
        pass

    def update(self, status, result, view) -> None:
        pass

    def present(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_frame_loop_smooths_the_shown_map_and_j_turns_it_off(monkeypatch, tmp_path):
    """The one frame loop (window, headless, replay) draws the smoothed map of each new result, says
    so on the HUD, and J shows the raw maps again."""
    from live_attention.core.models import load_model
    from live_attention.core.step import process_frames
    from live_attention.datatypes import Frame
    from live_attention.pipeline import loop as loop_mod

    frames = shaken(DemoScene(640, 480, seed=0).frame(1.0), 16, np.random.default_rng(4))
    eng = load_model("demo", device="cpu", precision="fp32")
    results = process_frames(eng, [Frame(f, i, int(i * 1e8), "t", pts_s=i / 10) for i, f in enumerate(frames)],
                             MapSettings(maps=("rollout",)))
    drawn = []

    def spy(frame, result=None, view=None, status=None, extras=None, size=None):
        drawn.append((result.seq, view.smooth, extras.smoothed if extras is not None else None, status.smoothing))
        return np.zeros((8, 8, 3), np.uint8)

    monkeypatch.setattr(loop_mod, "render", spy)
    loop = loop_mod.FrameLoop(SequenceFeed(results), KeyDisplay({13: ["j"]}), View(mode="rollout", smooth=True),
                              state_file=str(tmp_path / "s.json"))
    for _ in range(16):
        loop.step()
    on = [d for d in drawn if d[1]]
    off = [d for d in drawn if not d[1]]
    assert len(on) >= 10 and off, drawn
    assert all(m is not None for _, _, m, _ in on) and all(m is None for _, _, m, _ in off)
    assert on[-1][3].startswith("smoothing on: stability") and off[-1][3].startswith("smoothing off")
    smoothed = np.stack([m for _, _, m, _ in on])
    raw = np.stack([results[s].rollout[-1] for s, _, _, _ in on])
    assert tmp.flicker(smoothed) <= 0.5 * tmp.flicker(raw)
    state = json.loads((tmp_path / "s.json").read_text())
    assert state["view"]["smooth"] is False and state["status"]["smoothing"].startswith("smoothing off")


def test_a_kind_with_constant_maps_is_reported_not_measured():
    from live_attention.offline.temporal_eval import Row, TemporalEvaluation, filter_names, table, verdict

    rows = [Row("rollout", f, 0.01, 0.001, 1.0 if f == "raw" else 0.99, 0.9, 0.001, 0.0) for f in filter_names()]
    ev = TemporalEvaluation("m", "clip", {}, 1.0, rows, constant=["relevance"])
    assert "| class relevance (Chefer) | - | constant maps in every frame" in table(ev)
    assert any(line.startswith("class relevance (Chefer): constant maps") for line in verdict(ev))
