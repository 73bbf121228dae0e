"""``--compare``: a second model on the very same frames, side by side (issue 20)."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace

import av
import cv2
import numpy as np
import pytest
from conftest import cut_clip, tiny_vit

from live_attention.commands.cli import main
from live_attention.core.compare import (
    PairedModels,
    Pairing,
    difference,
    pair_settings,
    pair_view,
    relative_layer,
    same_point,
)
from live_attention.core.engine import AttentionEngine
from live_attention.datatypes import Frame, MapSettings, Status, View
from live_attention.pipeline.loop import status_line
from live_attention.ui.frame import canvas_for, render


def test_layer_follows_by_relative_depth():
    assert relative_layer(5, 12, 24) == 11  # layer 6 of 12 is layer 12 of 24
    assert relative_layer(11, 12, 24) == 23
    assert relative_layer(0, 12, 24) == 1
    assert relative_layer(23, 24, 12) == 11
    assert relative_layer(-1, 12, 24) == -1
    assert relative_layer(2, 3, 3) == 2


def test_query_patch_is_the_same_point_of_the_picture():
    # The centre of patch (1, 2) of a 4x4 grid over (0, 0, 100, 100) is (62.5, 37.5): patch (3, 5) of 8x8.
    assert same_point(1 * 4 + 2, (0, 0, 100, 100), (4, 4), (0, 0, 100, 100), (8, 8)) == 3 * 8 + 5
    # A point the second model does not see (it sees only the right half).
    assert same_point(0, (0, 0, 100, 100), (4, 4), (50, 0, 100, 100), (4, 2)) is None


def _engines():
    a = AttentionEngine.wrap(tiny_vit(0, image_size=32, patch_size=8, layers=3, heads=2), device="cpu", precision="fp32")
    b = AttentionEngine.wrap(tiny_vit(1, image_size=32, patch_size=4, layers=6, heads=4), device="cpu", precision="fp32")
    return a, b


def test_pair_settings_map_layer_query_and_target():
    a, b = _engines()
    pairing = Pairing.of(a, b)
    assert pairing.layers == (3, 6) and pairing.heads == (2, 4)
    assert not pairing.same_labels or a.categories == b.categories
    s = MapSettings(entropy_layer=1, query_patch=5, target=3)
    sb = pair_settings(s, replace(pairing, same_labels=True), (0, 0, 32, 32), (4, 4), (0, 0, 32, 32), (8, 8))
    assert sb.entropy_layer == 3 and sb.query_patch == same_point(5, (0, 0, 32, 32), (4, 4), (0, 0, 32, 32), (8, 8))
    assert sb.target == 3
    assert pair_settings(s, replace(pairing, same_labels=False), (0, 0, 32, 32), (4, 4), (0, 0, 32, 32),
                         (8, 8)).target is None  # label sets differ: each explains its top class


def test_paired_results_are_the_same_frame_and_the_view_follows():
    a, b = _engines()
    rng = np.random.default_rng(0)
    frames = [Frame(image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), seq=s, t_capture_ns=s, source="t")
              for s in (7, 8)]
    from live_attention.core.step import process_frames

    settings = MapSettings(entropy_layer=1)
    results = PairedModels(a, b).add(frames, settings, process_frames(a, frames, settings))
    for f, r in zip(frames, results, strict=True):
        assert r.pair is not None and r.pair.seq == r.seq == f.seq and r.pair.frame is f.image
        assert r.grid == (4, 4) and r.pair.grid == (8, 8) and r.pair.num_layers == 6
    # Headless: the status line names each model's top-1, the untrained one labelled as such.
    line = status_line(Status(pair=Status(untrained=True)), results[0])
    assert f"top-1 {results[0].topk[0][0]}; second model {results[0].pair.topk[0][0]} (UNTRAINED model)" in line
    vb = pair_view(View(layer=1, head=1, compare_head=3), results[0], results[0].pair)
    assert vb.layer == 3 and vb.head == 3  # head counts differ: the second side's own head
    # The difference of a map with itself is zero; against another grid it is resampled to the finer one.
    r = results[0]
    same = difference(r.cls[2].mean(0), r, r.cls[2].mean(0), r)
    assert same is not None and np.abs(same.values).max() < 1e-6 and "same" in same.note
    other = difference(r.cls[2].mean(0), r, r.pair.cls[5].mean(0), r.pair)
    assert other is not None and other.grid == (8, 8) and "finer 8×8" in other.note
    assert other.values.shape == (64,) and np.abs(other.values).max() <= 1.0 + 1e-6
    # The picture: two halves, each with its own HUD; D puts the difference in the second half.
    size = canvas_for(r.frame.shape, True)
    status = Status(model="A", pair=Status(model="B [random UNTRAINED]", untrained=True))
    two = render(r.frame, r, View(mode="attention"), status, size=size)
    diff = render(r.frame, r, View(mode="attention", difference=True), status, size=size)
    assert two.shape == (size[1], size[0], 3) and size[0] == 2 * canvas_for(r.frame.shape)[0]
    half = size[0] // 2
    assert np.array_equal(two[:, : half - 1], diff[:, : half - 1])  # the first half is the same
    assert np.abs(two[:, half + 1:].astype(int) - diff[:, half + 1:].astype(int)).mean() > 2.0


def test_relevance_explains_the_first_models_class_on_both_sides_when_the_labels_match():
    """No fixed target: each frame's class is the first model's top-1, and the second model (same class
    names) explains that class too, frame by frame, not its own top-1 (a random model's ties pick class 0)."""
    import torch

    from live_attention.core.step import process_frames

    a, _ = _engines()
    second = tiny_vit(1, image_size=32, patch_size=4, layers=6, heads=4)
    with torch.no_grad():
        second.heads.head.bias[5] += 10.0  # its own top-1 is class 5 on every frame (the first's is not)
    b = AttentionEngine.wrap(second, device="cpu", precision="fp32")
    assert list(a.categories) == list(b.categories)
    rng = np.random.default_rng(3)
    frames = [Frame(image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), seq=s, t_capture_ns=s, source="t")
              for s in range(8)]
    settings = MapSettings(relevance=True)
    first = process_frames(a, frames, settings)
    own = process_frames(b, frames, settings)
    results = PairedModels(a, b).add(frames, settings, first)
    assert all(r.pair is not None and r.pair.target == r.target for r in results)
    # The test can fail: on some frame the second model's own top-1 differs from the first's.
    assert any(o.target != r.target for o, r in zip(own, first, strict=True))


def test_on_two_devices_the_second_model_runs_beside_the_first_on_its_own_thread(monkeypatch):
    """``--compare-device``: on another device the second model runs at the same time as the first, on a
    thread of its own (the one owner of its device's work), so a pair takes as long as the slower model.
    Proved by order, not by the clock: the first model's forward pass waits until the second's has
    started, which in turn it never would. The maps are those computed in turn."""
    import threading

    import torch

    from live_attention.core.device import same_device
    from live_attention.core.step import process_frames

    a, b = _engines()
    rng = np.random.default_rng(5)
    frames = [Frame(image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), seq=s, t_capture_ns=s, source="t")
              for s in range(3)]
    settings = MapSettings(entropy_layer=1)
    assert not PairedModels(a, b).parallel  # one device: in turn
    assert same_device(torch.device("cpu"), torch.device("cpu")) and not same_device(torch.device("cuda:0"),
                                                                                     torch.device("cuda:1"))
    in_turn = PairedModels(a, b).add(frames, settings, process_frames(a, frames, settings))

    started, threads = threading.Event(), {"a": set(), "b": set()}
    real_run = AttentionEngine.run

    def run(self, *args, **kwargs):
        threads["b" if self is b else "a"].add(threading.current_thread().name)
        if self is b:
            started.set()
        elif not started.wait(30.0):
            raise AssertionError("the first model ran alone: the second did not start beside it")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(AttentionEngine, "run", run)
    paired = PairedModels(a, b, parallel=True)
    try:
        got = paired.run(frames, settings, lambda: process_frames(a, frames, settings))
        for _ in range(2):  # every pair, not only the first
            started.clear()
            again = paired.run(frames[:1], settings, lambda: process_frames(a, frames[:1], settings))
    finally:
        paired.close()
    assert threads["a"] == {threading.current_thread().name}
    assert len(threads["b"]) == 1 and next(iter(threads["b"])).startswith("compare")
    assert again[0].pair is not None and again[0].pair.seq == 0
    for g, w in zip(got, in_turn, strict=True):
        assert g.pair is not None and w.pair is not None and g.pair.seq == g.seq
        np.testing.assert_array_equal(g.cls, w.cls)
        np.testing.assert_array_equal(g.pair.cls, w.pair.cls)
        assert g.pair.topk == w.pair.topk


def test_on_two_devices_relevance_that_follows_the_first_models_class_waits_for_it():
    """The second model explains the class the first explains on each frame: that class comes from the
    first's results, so there the second runs after it (still on its own thread)."""
    import torch

    from live_attention.core.step import process_frames

    a, _ = _engines()
    second = tiny_vit(1, image_size=32, patch_size=4, layers=6, heads=4)
    with torch.no_grad():
        second.heads.head.bias[5] += 10.0  # its own top-1 is class 5 on every frame (the first's is not)
    b = AttentionEngine.wrap(second, device="cpu", precision="fp32")
    rng = np.random.default_rng(3)
    frames = [Frame(image=rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), seq=s, t_capture_ns=s, source="t")
              for s in range(8)]
    settings = MapSettings(relevance=True)
    paired = PairedModels(a, b, parallel=True)
    try:
        results = paired.run(frames, settings, lambda: process_frames(a, frames, settings))
    finally:
        paired.close()
    assert all(r.pair is not None and r.pair.target == r.target for r in results)
    assert any(r.target != 5 for r in results)  # the first's class, not the second's own top-1


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media):
    return cut_clip(tmp_path_factory.mktemp("clip"), media, None, "tour8.mp4", start=2, frames=8)


def _frames(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_render_compare_side_by_side(clip, tmp_path, capsys):
    ab, one = tmp_path / "ab.mp4", tmp_path / "one.mp4"
    rc = main(["render", str(clip), "-o", str(ab), "--model", "demo", "--compare", "demo",
               "--compare-weights", "random", "--mode", "rollout"])
    assert rc == 0, capsys.readouterr().err
    assert main(["render", str(clip), "-o", str(one), "--model", "demo", "--mode", "rollout"]) == 0
    pair, single = _frames(ab), _frames(one)
    assert len(pair) == len(single) == 8  # one output frame per input frame
    h, w = single[0].shape[:2]
    assert pair[0].shape == (h, 2 * w, 3)
    # The left half is the first model alone (H.264 on both: a few levels of difference are coding noise).
    assert np.abs(pair[4][:, : w - 2].astype(int) - single[4][:, : w - 2].astype(int)).mean() < 4.0
    # The two halves differ: the second model is another (untrained) one.
    assert np.abs(pair[4][:, : w - 2].astype(int) - pair[4][:, w + 2:].astype(int)).mean() > 4.0
    # The second half is labelled UNTRAINED (its banner is red where the first half's is not).
    red = lambda img: ((img[..., 0] > 180) & (img[..., 1] < 90) & (img[..., 2] < 90)).sum()  # noqa: E731
    assert red(pair[4][: h // 4, w:]) > 200 and red(pair[4][: h // 4, :w]) < 50


def test_save_maps_keeps_both_halves(clip, tmp_path, capsys):
    """``render --compare --save-maps``: the second model's maps beside the first's, one per frame, on its
    own grid, layer and head. The same model on both sides saves the same maps twice."""
    same, other = tmp_path / "same.npz", tmp_path / "other.npz"
    base = ["render", str(clip), "--model", "demo", "--mode", "rollout", "--layer", "2"]
    assert main([*base, "-o", str(tmp_path / "same.mp4"), "--compare", "demo", "--save-maps", str(same)]) == 0, \
        capsys.readouterr().err
    assert main([*base, "-o", str(tmp_path / "other.mp4"), "--compare", "demo", "--compare-weights", "random",
                 "--save-maps", str(other)]) == 0, capsys.readouterr().err
    a, b = np.load(same), np.load(other)
    assert a["compare_maps"].shape == a["maps"].shape == (8, *a["grid"]) and list(a["compare_grid"]) == list(a["grid"])
    assert list(a["compare_layer"]) == list(a["layer"]) == [2] * 8 and list(b["compare_head"]) == [0] * 8
    np.testing.assert_allclose(a["compare_maps"].astype(np.float32), a["maps"].astype(np.float32), atol=1e-3)
    assert np.isfinite(b["compare_maps"]).all()
    assert np.abs(b["compare_maps"].astype(np.float32) - b["maps"].astype(np.float32)).max() > 1e-3  # untrained
    assert "random" in str(b["compare_model"]) or "untrained" in str(b["compare_model"]).lower()
    np.testing.assert_array_equal(a["maps"], b["maps"])  # the first half is the first model alone


def test_compare_that_cannot_load_is_one_line_naming_compare(clip, tmp_path, capsys):
    rc = main(["render", str(clip), "-o", str(tmp_path / "x.mp4"), "--model", "demo", "--compare", "nope"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--compare nope: the second model cannot load" in err and len(err.splitlines()) == 1
    missing = tmp_path / "missing.pth"
    rc = main(["render", str(clip), "-o", str(tmp_path / "x.mp4"), "--model", "demo", "--compare", "demo",
               "--compare-weights", str(missing)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--compare demo (--compare-weights" in err and "the second model cannot load" in err
    assert "missing.pth" in err and len(err.splitlines()) == 1
    # The second model's options without a second model are a mistake, not silently ignored.
    for extra in (["--compare-weights", "random"], ["--compare-device", "cpu"]):
        rc = main(["render", str(clip), "-o", str(tmp_path / "y.mp4"), "--model", "demo", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and f"{' '.join(extra)} needs a second model: add --compare MODEL" in err
        assert len(err.splitlines()) == 1 and not (tmp_path / "y.mp4").exists()
    rc = main(["render", str(clip), "-o", str(tmp_path / "x.mp4"), "--model", "demo", "--compare", "demo",
               "--compare-device", "tpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("live-attention: error: --compare-device tpu: unknown device")
    assert len(err.splitlines()) == 1


def test_compare_config_section_is_validated(tmp_path):
    from live_attention.config import ConfigError, load_config

    good = tmp_path / "good.toml"
    good.write_text('[compare]\nmodel = "demo"\nweights = "random"\ndevice = "cpu"\n')
    cfg = load_config(good)
    assert (cfg.compare.model, cfg.compare.weights, cfg.compare.device) == ("demo", "random", "cpu")
    bad = tmp_path / "bad.toml"
    bad.write_text('[compare]\nmodle = "demo"\n')
    with pytest.raises(ConfigError, match="compare.modle"):
        load_config(bad)


def test_controller_one_set_of_keys_for_two_models():
    from live_attention.ui.controller import Controller

    pairing = Pairing(layers=(12, 24), heads=(6, 12), same_labels=False)
    c = Controller(12, 6, View(layer=5), pairing)
    c.press("right")
    assert (c.view.head, c.view.compare_head) == (0, -1)  # the left model's head first
    out = c.press("tab")
    assert c.view.head_side == 1 and "right" in (out.note or "")
    c.press("left")
    assert (c.view.head, c.view.compare_head) == (0, 11)  # past the fused view: the right model's last head
    c.press("backspace")
    assert c.view.compare_head == -1 and c.view.head == 0
    c.press("up")
    assert c.view.layer == 6  # the left model's layer 7 of 12 ...
    assert relative_layer(c.view.layer, 12, 24) == 13  # ... is layer 14 of 24 on the right
    c.press("d")
    assert c.view.difference
    # Same head counts: the head keys move both, Tab says so.
    same = Controller(4, 2, View(), Pairing((4, 4), (2, 2), True))
    assert "both" in (same.press("tab").note or "") and same.view.head_side == 0
    # Without --compare, Tab and D say what they are for and change nothing.
    alone = Controller(4, 2, View())
    assert "--compare" in (alone.press("d").note or "") and not alone.view.difference


def test_grids_that_cannot_be_aligned_are_one_line_naming_compare():
    from live_attention.core.compare import check_aligned
    from live_attention.errors import UserError

    a, b = _engines()
    check_aligned(a, b, 48, 64)  # two centre crops of a 4:3 picture: the smaller is inside the larger
    a.configure_input(32, full_frame=True)  # the whole of a 4:1 picture against b's centre square
    with pytest.raises(UserError, match="^--compare .*cannot be aligned"):
        check_aligned(a, b, 40, 160)


def test_bench_compare_part_reports_the_ratio(clip, tmp_path):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "compare", "--seconds", "1", "--source", str(clip), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["compare.alone_fps"] > 0 and data["compare.paired_fps"] > 0 and data["compare.ratio"] > 0


def test_recording_keeps_both_models_and_replay_and_export_draw_both(tmp_path, capsys, caplog):
    import json

    from live_attention.io.recording import Session
    from live_attention.pipeline.replay import ReplayFeed, engine_for_session

    rc = main(["--source", "demo", "--compare", "demo", "--compare-weights", "random", "--headless",
               "--max-seconds", "4", "--record", str(tmp_path / "sessions")])
    assert rc == 0, capsys.readouterr().err
    folder = next((tmp_path / "sessions").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"]["weights_label"] != "random" and not manifest["model"]["untrained"]
    second = manifest["compare"]
    assert second["model"]["name"] == "demo" and second["model"]["untrained"] and second["model"]["weights"] == "random"
    assert (second["layers"], second["heads"]) == (4, 4) and (folder / second["attention"]).is_dir()
    assert manifest["overlay_size"] == [2 * 960, 720]

    session = Session(folder)
    n = len(session)
    assert n >= 2 and len(session.pair_data["seq"]) == n
    for i in range(n):  # the same frame on both sides, and different maps (another model)
        res = session.result(i)
        assert res.pair is not None and res.pair.seq == res.seq
        assert not np.allclose(res.cls, res.pair.cls)
    assert session.status().pair is not None and session.status().pair.untrained

    feed = ReplayFeed(session, None, paused=True)
    assert feed.pairing is not None and feed.pairing.layers == (4, 4) and feed.pairing.same_labels
    shown = feed.latest()
    assert shown is not None and shown.pair is not None and shown.pair.seq == shown.seq
    # With the model, replay computes a view whose maps were not recorded on both sides (rollout fused by
    # max; mean was recorded), the second model with its recorded (seeded random) weights.
    feed = ReplayFeed(session, engine_for_session(session, None, "cpu"), paused=True)
    assert feed.recompute is not None
    rec = session.result(1)
    again = feed.recompute.result(1, rec, View(mode="rollout", fusion="max"))
    assert again.pair is not None and again.pair.seq == rec.seq and again.pair.settings.fusion == "max"
    assert not np.allclose(again.pair.rollout, rec.pair.rollout, atol=1e-3)
    same = feed.recompute.result(1, rec, View(mode="rollout", fusion=rec.settings.fusion))  # as recorded
    np.testing.assert_allclose(same.pair.rollout, rec.pair.rollout, atol=2e-3)  # fp16 in the recording
    session.close()

    out = tmp_path / "export.mp4"
    maps = tmp_path / "export.npz"
    assert main(["export", str(folder), "-o", str(out), "--save-maps", str(maps)]) == 0, capsys.readouterr().err
    frames = _frames(out)
    assert len(frames) == n and frames[0].shape == (720, 2 * 960, 3)
    z = np.load(maps)  # both halves' maps, each on its own model's grid
    assert z["maps"].shape == z["compare_maps"].shape[:1] + tuple(z["grid"]) and len(z["compare_maps"]) == n
    assert "demo [random]" in str(z["compare_model"]) and np.isfinite(z["compare_maps"]).all()
    # A view whose maps were not recorded (rollout fused by max: mean was recorded) is computed again on
    # both sides: the second model is loaded too, not left showing its recorded maps.
    mean_maps, max_maps = tmp_path / "mean.npz", tmp_path / "max.npz"
    for fusion, path in (("mean", mean_maps), ("max", max_maps)):
        assert main(["export", str(folder), "-o", str(tmp_path / f"{fusion}.mp4"), "--mode", "rollout",
                     "--fusion", fusion, "--save-maps", str(path)]) == 0, capsys.readouterr().err
    zmean, zmax = np.load(mean_maps), np.load(max_maps)
    assert np.abs(zmean["maps"].astype(float) - zmax["maps"].astype(float)).max() > 1e-3
    assert np.abs(zmean["compare_maps"].astype(float) - zmax["compare_maps"].astype(float)).max() > 1e-3
    partial = tmp_path / "partial"  # the second model's maps cover the first frames only: those are recomputed
    shutil.copytree(folder, partial)
    chunks = sorted((partial / "attention-compare").iterdir())
    assert len(chunks) >= 2
    chunks[-1].unlink()
    partial_maps = tmp_path / "partial.npz"
    capsys.readouterr()
    assert main(["export", str(partial), "-o", str(tmp_path / "partial.mp4"), "--mode", "rollout", "--fusion", "max",
                 "--batch", "64", "--save-maps", str(partial_maps)]) == 0, capsys.readouterr().err
    covered = len(Session(partial).pair_data["seq"])
    zpart = np.load(partial_maps)
    assert 0 < covered < n and np.isnan(zpart["compare_maps"][covered:]).all()
    np.testing.assert_allclose(zpart["compare_maps"][:covered].astype(float), zmax["compare_maps"][:covered].astype(float),
                               atol=1e-3)  # computed again with max, as in the whole session's export
    unloadable = tmp_path / "unloadable"  # a second model that cannot be loaded: said once, its side as recorded
    shutil.copytree(folder, unloadable)
    m = json.loads((unloadable / "manifest.json").read_text())
    m["compare"]["model"]["weights"] = str(tmp_path / "gone.pth")
    (unloadable / "manifest.json").write_text(json.dumps(m))
    with caplog.at_level(logging.WARNING):
        assert main(["export", str(unloadable), "-o", str(tmp_path / "unloadable.mp4"), "--mode", "rollout",
                     "--fusion", "max"]) == 0
    said = [r.getMessage() for r in caplog.records if "second model" in r.getMessage()]
    assert len(said) == 1 and "cannot be loaded, so its side shows only what was recorded" in said[0]
    assert "gone.pth (put it back where it was recorded)" in said[0]
    # One frame's heads grid: both models side by side, each titled; the layers animation: both halves.
    grid, gif = tmp_path / "grid.png", tmp_path / "layers.gif"
    assert main(["export", str(folder), "-o", str(grid), "--grid", "--frame", "2"]) == 0, capsys.readouterr().err
    assert main(["export", str(folder), "-o", str(gif), "--layers-gif", "--frame", "2"]) == 0, capsys.readouterr().err
    from live_attention.core.render import heads_grid
    from live_attention.pipeline.replay import grid_picture

    again = Session(folder)
    one, both = heads_grid(again.result(1), "x"), grid_picture(again, 1)
    again.close()
    assert both.shape[1] > 2 * one.shape[1] and np.array_equal(both[60:, : one.shape[1]][: one.shape[0] - 60],
                                                               one[60:])  # the left grid is the first model's
    assert cv2.imread(str(grid)).shape == both.shape
    with av.open(str(gif)) as c:
        first = next(c.decode(c.streams.video[0])).to_ndarray(format="rgb24")
    assert first.shape[1] / first.shape[0] > 2.5  # two 960x720 halves side by side (the GIF is scaled down)
    assert session.notes() == []
    # Without the second model's maps the session still exports (the first model alone), and says so.
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    shutil.rmtree(damaged / "attention-compare")
    capsys.readouterr()
    assert main(["export", str(damaged), "-o", str(tmp_path / "damaged.mp4")]) == 0
    err = capsys.readouterr().err
    assert f"the second model's maps (demo, attention-compare/) cover 0 of {n} frames" in err
