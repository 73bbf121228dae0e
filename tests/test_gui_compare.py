"""The real window under Xvfb with two models side by side (``--compare``): the same frame on both halves,
one set of controls, D for the difference."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.gui_helpers import App

pytestmark = [pytest.mark.gui, pytest.mark.timeout(400)]


def _halves(app: App, s: dict, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of the picture on screen (the state says where the picture is drawn)."""
    img = app.screenshot(name)
    x, y, w, h = (int(v) for v in s["picture_rect"])
    pic = img[y:y + h, x:x + w].astype(int)
    return pic[:, : w // 2 - 2], pic[:, w // 2 + 2: 2 * (w // 2)]


def test_compare_window_same_frames_one_set_of_keys_and_difference(xserver, tmp_path):
    app = App(xserver, ["--source", "demo", "--compare", "demo", "--compare-weights", "random"], tmp_path)
    try:
        s = app.wait(lambda s: s.get("seq") is not None and s.get("pair"), 90, "first paired result")
        assert s["status"]["model"].startswith("demo [synthetic-shapes (toy)]")
        assert "UNTRAINED" in s["pair"]["model"] and s["status"]["pair"]["untrained"]
        # Both halves always show the same frame: every state written carries one seq for both.
        seqs: set[int] = set()
        deadline = time.monotonic() + 60
        while len(seqs) < 4 and time.monotonic() < deadline:
            s = app.state()
            if s.get("pair"):
                assert s["pair"]["seq"] == s["seq"]
                seqs.add(s["seq"])
            time.sleep(0.05)
        assert len(seqs) >= 4, seqs
        assert s["canvas"][0] == 2 * 960 and s["canvas"][1] == 720  # two 960x720 halves

        # One set of keys: Down moves both layers (same depth here: the same layer), Right both heads.
        assert s["layer"] == 3 and s["pair"]["layer"] == 3
        app.key("Down")
        s = app.wait(lambda s: s.get("layer") == 2 and s["pair"]["layer"] == 2, 20, "Down on both sides")
        app.key("Right")
        s = app.wait(lambda s: s["view"]["head"] == 0 and s["pair"]["head"] == 0, 20, "Right on both sides")
        app.key("Tab")  # the head counts match: Tab says so and changes nothing
        app.wait(lambda s: "both" in (s["status"].get("message") or ""), 20, "Tab's note")
        app.key("BackSpace", "space")
        s = app.wait(lambda s: s["view"]["frozen"] and s["view"]["head"] == -1, 20, "frozen")
        time.sleep(1.0)
        s = app.state()
        left, right = _halves(app, s, "side-by-side")
        assert s["pair"]["seq"] == s["seq"]
        assert np.abs(left - right).mean() > 3.0  # another model: another map

        app.key("d")
        s = app.wait(lambda s: s["view"]["difference"] and s.get("difference"), 20, "D: difference")
        time.sleep(1.0)
        s = app.state()
        left2, right2 = _halves(app, s, "difference")
        assert np.abs(left2 - left).mean() < 2.0  # the frozen first half stays as it was
        assert np.abs(right2 - right).mean() > 3.0  # the second half now shows the difference
        app.key("d")
        s = app.wait(lambda s: not s["view"]["difference"], 20, "D again: side by side")
        # A click on either half picks the same point of the picture on both sides.
        cw, ch = s["canvas"]
        app.click_canvas(s, cw * 0.75, ch * 0.5)
        s = app.wait(lambda s: s["view"]["mode"] == "query" and s["view"]["query_patch"] is not None
                     and s["pair"]["query_patch"] is not None, 30, "a click on the right half")
        right_pick = s["view"]["query_patch"]
        assert s["pair"]["query_patch"] == right_pick  # the same grid here: the same patch
        app.click_canvas(s, cw * 0.25, ch * 0.5)  # the same point on the left half
        time.sleep(1.0)
        assert app.state()["view"]["query_patch"] == right_pick
        app.key("Escape")
        assert app.close(15) == 0
    finally:
        app.close(1)
