"""The real window under Xvfb: keys change what is shown (pixels and HUD state); quit quits."""

from __future__ import annotations

import subprocess

import pytest

from tests.gui_helpers import App, XServer, center, differs

pytestmark = [pytest.mark.gui, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def xserver():
    x = XServer()
    yield x
    x.stop()


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media):
    out = tmp_path_factory.mktemp("clip") / "tour2.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-t", "2", "-i", str(media / "tour.mp4"), "-an",
                    str(out)], check=True)
    return out


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
