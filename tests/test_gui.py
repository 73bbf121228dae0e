"""The real window under Xvfb: keys change what is shown (pixels and HUD state); quit quits."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest

from tests.conftest import cut_clip
from tests.gui_helpers import App, center, differs

pytestmark = [pytest.mark.gui, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media):
    return cut_clip(tmp_path_factory.mktemp("clip"), media, 2, "tour2.mp4")


def test_window_on_video_with_random_vit_b_16(xserver, clip, tmp_path):
    app = App(xserver, ["--source", str(clip), "--loop", "--model", "vit_b_16", "--weights", "random"], tmp_path)
    try:
        s = app.wait(lambda s: s.get("seq") is not None, 120, "first result")
        assert s["status"]["untrained"] is True and "UNTRAINED" in s["status"]["model"]
        assert s["view"]["layer"] == 11 and s["view"]["mode"] == "attention"
        assert s["status"]["capture_state"] == "running"

        app.key("space")
        s = app.wait(lambda s: s["view"]["frozen"], 20, "freeze")
        seq = s["seq"]
        a = app.screenshot("frozen")
        b = app.screenshot("frozen")
        assert not differs(center(a), center(b), 0.001), "a frozen frame must not change"
        assert app.state()["seq"] == seq

        app.key("Down")
        app.wait(lambda s: s["view"]["layer"] == 10, 20, "layer 11")
        c = app.screenshot("layer")
        assert differs(b, c), "changing the layer must change the overlay"

        app.key("Right")
        app.wait(lambda s: s["view"]["head"] == 0, 20, "head 1")
        d = app.screenshot("head")
        assert differs(c, d)

        app.key("2")
        app.wait(lambda s: s["view"]["mode"] == "rollout", 20, "rollout")
        e = app.screenshot("rollout")
        assert differs(d, e)

        app.key("3")
        app.wait(lambda s: s["view"]["mode"] == "heads", 20, "heads")
        f = app.screenshot("heads")
        assert differs(e, f, 0.05)

        app.key("f")
        app.wait(lambda s: s["view"]["fusion"] == "max", 20, "fusion max")

        app.key("4")
        app.wait(lambda s: s["view"]["mode"] == "entropy", 20, "entropy")

        app.click(0.5, 0.5)
        app.wait(lambda s: s["view"]["mode"] == "query" and s["view"]["query_patch"] is not None, 20, "query")

        app.key("6")
        app.wait(lambda s: s.get("flow_done"), 120, "attention flow")
        g = app.screenshot("flow")
        assert differs(f, g)

        app.key("h")
        app.wait(lambda s: s["view"]["show_help"], 20, "help")

        app.key("space")
        app.wait(lambda s: not s["view"]["frozen"], 20, "unfreeze")
        app.wait(lambda s: s["seq"] != seq, 60, "live again")

        app.key("q")
        assert app.close(15) == 0
    finally:
        app.close(1)


def test_screenshot_key_writes_png(xserver, clip, tmp_path):
    app = App(xserver, ["--source", str(clip), "--model", "vit_b_32", "--weights", "random"], tmp_path)
    try:
        app.wait(lambda s: s.get("seq") is not None, 120, "first result")
        app.key("s")
        s = app.wait(lambda s: (s["status"].get("message") or "").startswith("screenshot saved"), 20, "message")
        pngs = list((tmp_path / "screenshots").glob("live-attention-*.png"))
        assert len(pngs) == 1 and str(pngs[0].name) in s["status"]["message"]
        app.key("Escape")
        assert app.close(15) == 0
    finally:
        app.close(1)


def test_window_on_demo_source_keys_and_recording(xserver, tmp_path):
    """--source demo with the demo model: mode cycling, animation, opacity, colormap, fused heads,
    and R to record a session that decodes."""
    app = App(xserver, ["--source", "demo"], tmp_path)
    try:
        s = app.wait(lambda s: s.get("seq") is not None, 60, "first result")
        assert s["status"]["model"].startswith("demo [synthetic-shapes (toy)]")
        assert not s["status"]["untrained"]
        assert s["view"]["layer"] == 3  # the demo model has 4 layers: the last is shown first

        app.key("m")
        app.wait(lambda s: s["view"]["mode"] == "rollout", 20, "M cycles to rollout")
        app.key("Right", "Right")
        app.wait(lambda s: s["view"]["head"] == 1, 20, "head 2")
        app.key("BackSpace")
        app.wait(lambda s: s["view"]["head"] == -1, 20, "fused again")
        app.key("plus")
        app.wait(lambda s: s["view"]["opacity"] == 0.65, 20, "opacity up")
        app.key("minus", "minus")
        app.wait(lambda s: s["view"]["opacity"] == 0.45, 20, "opacity down")
        app.key("c")
        app.wait(lambda s: s["view"]["colormap"] == "jet", 20, "colormap")

        # Smoothing over time is on by default; J turns it off and on, and the HUD says so with its figure.
        app.wait(lambda s: (s["status"].get("smoothing") or "").startswith("smoothing on: stability"), 20, "HUD")
        app.key("j")
        app.wait(lambda s: not s["view"]["smooth"]
                 and (s["status"].get("smoothing") or "").startswith("smoothing off: stability"), 20, "J: off")
        app.key("j")
        app.wait(lambda s: s["view"]["smooth"], 20, "J: on again")

        app.key("a")
        app.wait(lambda s: s["view"]["animating"], 20, "animating")
        layers = set()
        app.wait(lambda s: layers.add(s["view"]["layer"]) or len(layers) >= 3, 30, "animation through layers")
        app.key("a")
        app.wait(lambda s: not s["view"]["animating"], 20, "animation off")

        app.key("r")
        s = app.wait(lambda s: s.get("recording"), 30, "recording")
        assert "REC" in (s["status"]["recording"] or "")
        session = s["recording"]
        # Frames shown while recording, counted, not waited for by the clock (a loaded machine shows fewer).
        app.wait(lambda t: t["seq"] is not None and s["seq"] is not None and t["seq"] >= s["seq"] + 8, 60,
                 "frames shown while recording")
        app.key("r")
        app.wait(lambda s: not s.get("recording"), 30, "recording stopped")
        app.key("Escape")
        assert app.close(15) == 0
    finally:
        app.close(1)
    folder = tmp_path / session  # relative to the app's working folder, unless absolute
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["end"]["frames"] >= 3
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(folder / "overlay.mp4")],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert int(out) == manifest["end"]["frames"]

    # Replay the session: T explains the next of the recorded top-5, and a click on a label its own class
    # (a replay once had no class indices: T did nothing and a click picked the class of another row).
    app = App(xserver, ["replay", "--paused", str(folder)], tmp_path, title="live-attention replay")
    try:
        s = app.wait(lambda s: s.get("seq") is not None and s.get("top_ids"), 60, "replay's first frame")
        app.key("7")
        s = app.wait(lambda s: s["view"]["mode"] == "relevance" and s.get("hud_rows"), 30, "relevance")
        app.key("t")
        s = app.wait(lambda s: s["view"]["target"] is not None, 30, "T in replay")
        assert s["view"]["target"] == s["top_ids"][1]
        row = s["hud_rows"][2]
        app.click_canvas(s, (row[0] + row[2]) / 2, (row[1] + row[3]) / 2)
        s = app.wait(lambda s: s["view"]["target"] == s["top_ids"][2], 30, "a click on the third label")
        assert row[4] == s["top_ids"][2]
        app.wait(lambda s: s.get("explaining") == row[4], 30, "its relevance, recomputed from the raw frame")
        app.key("q")
        assert app.close(15) == 0
    finally:
        app.close(1)


def _in_box(point, box, margin: float) -> bool:
    x, y = point
    x0, y0, x1, y1 = box
    return x0 - margin <= x <= x1 + margin and y0 - margin <= y <= y1 + margin


def test_relevance_target_follows_t_and_clicks_on_the_demo(xserver, tmp_path):
    """Class relevance in the real window (demo source, several shapes at once): T moves the explained
    class through the top-5 and the map moves to that shape; a click on a top-5 label picks its class."""
    from live_attention.demo.synthetic import DemoScene

    app = App(xserver, ["--source", "demo"], tmp_path)
    try:
        scene = DemoScene(width=960, height=720, seed=0, num_targets=3)  # what --source demo draws
        s = app.wait(lambda s: s.get("seq") is not None and s.get("pts_s") is not None, 60, "first result")
        for _ in range(20):  # freeze on a frame with at least two shapes
            s = app.wait(lambda s: s.get("pts_s") is not None, 10, "a frame")
            if len(scene.target_boxes(s["pts_s"])) >= 2:
                app.key("space")
                s = app.wait(lambda s: s["view"]["frozen"], 20, "freeze")
                if len(scene.target_boxes(s["pts_s"])) >= 2:
                    break
                app.key("space")
            time.sleep(0.5)
        boxes = dict(scene.target_boxes(s["pts_s"]))
        assert len(boxes) >= 2, boxes
        app.key("7")
        s = app.wait(lambda s: s["view"]["mode"] == "relevance" and s.get("relevance_peak"), 30, "relevance")
        first = s["explaining"]
        peaks = {first: s["relevance_peak"]}
        shots = [app.screenshot("relevance-a")]
        app.key("t")
        s = app.wait(lambda s: s.get("explaining") is not None and s["explaining"] != first, 30, "T: next class")
        peaks[s["explaining"]] = s["relevance_peak"]
        shots.append(app.screenshot("relevance-b"))
        assert s["view"]["target"] == s["top_ids"][1]
        margin = 960 / 8 / 2  # a patch cell may overlap a box by half a patch
        for cls, peak in peaks.items():
            assert cls in boxes and _in_box(peak, boxes[cls], margin), (cls, peak, boxes)
        assert np.hypot(*np.subtract(*peaks.values())) > 60, "the map moves between the shapes"
        assert differs(center(shots[0]), center(shots[1]))
        # A click on the label of a present class that is not explained now.
        row = next(r for r in s["hud_rows"] if r[4] in boxes and r[4] != s["explaining"])
        app.click_canvas(s, (row[0] + row[2]) / 2, (row[1] + row[3]) / 2)
        s = app.wait(lambda s: s.get("explaining") == row[4], 30, "click on a label")
        assert s["view"]["target"] == row[4] and _in_box(s["relevance_peak"], boxes[row[4]], margin)
        app.key("q")
        assert app.close(15) == 0
    finally:
        app.close(1)
