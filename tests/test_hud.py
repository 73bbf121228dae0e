"""What the HUD says about the view: the heads label per mode, and what A does where the map uses every
layer (the controller and the frame loop; no window)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from live_attention.config import Config
from live_attention.core.engine import AttentionEngine
from live_attention.datatypes import Frame, Status, View
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop
from live_attention.ui.controller import Controller
from live_attention.ui.hud import hud_layout
from tests.conftest import tiny_vit
from tests.fakes import FakeCamera, KeyDisplay, wait_until

pytestmark = pytest.mark.timeout(60)


def _session() -> LiveSession:
    eng = AttentionEngine(tiny_vit(layers=3, heads=2), device="cpu", precision="fp32")
    return LiveSession(Config(), eng, FakeCamera([10_000], period=0.02))


def _mode_line(view: View) -> str:
    s = _session()
    res = s.worker.process(Frame(image=np.full((48, 64, 3), 90, np.uint8), seq=0, t_capture_ns=0, source="x"))
    return hud_layout(960, 720, res, view, Status()).lines[0][0]


def test_heads_mode_says_every_head_is_shown_not_a_fusion():
    assert _mode_line(View(mode="heads")).endswith("| all 2 heads")
    assert _mode_line(View(mode="heads", head=1)).endswith("| all 2 heads, head 2 marked")
    assert _mode_line(View(mode="attention")).endswith("| heads mean")  # the fused view still says how


def test_views_of_every_layer_say_so_instead_of_a_layer_number():
    assert "| all layers |" in _mode_line(View(mode="relevance", layer=1))
    assert "| all layers |" in _mode_line(View(mode="flow"))
    assert "| layer 2/3 |" in _mode_line(View(mode="rollout", layer=1))


def test_a_animates_only_views_of_one_layer():
    c = Controller(3, 2, View(mode="relevance"))
    out = c.press("a")
    assert not c.view.animating and "every layer" in out.note
    c.press("1")
    c.press("a")
    assert c.view.animating  # attention: one layer at a time, so A animates
    out = c.press("7")  # to relevance while animating: the layer number stops running
    assert c.view.mode == "relevance" and not c.view.animating and "animation stopped" in out.note
    c.press("6")
    assert not c.view.animating
    c.press("1")
    c.press("a")
    c.set_target(2)  # a click on a label goes to relevance: the animation stops there too
    assert c.view.mode == "relevance" and not c.view.animating


def test_a_in_the_relevance_view_leaves_the_layer_alone_and_says_why(tmp_path):
    """Through the frame loop at 1000 animation steps a second: the layer in the state file never moves,
    and the HUD's message says why."""
    s = _session()
    state_file = tmp_path / "state.json"
    loop = FrameLoop(s, KeyDisplay(["a"]), View(mode="relevance", layer=1), animate_fps=1000.0, state_file=str(state_file))
    s.start()
    try:
        assert wait_until(lambda: s.results.peek() is not None, 20)
        layers = set()
        for _ in range(30):
            loop.step()
            state = json.loads(state_file.read_text())
            layers.add(state["view"]["layer"])
        assert layers == {1} and not state["view"]["animating"]
        assert "relevance uses every layer" in state["status"]["message"]
    finally:
        s.stop()


@pytest.mark.parametrize("width", [960, 640, 480])
def test_the_caption_fits_inside_the_picture(width):
    """The mode's caption shrinks until it fits beside the legend: nothing is drawn in the right margin
    (each half of a --compare picture is 960 wide, where the rollout caption ran off the edge)."""
    from live_attention.ui.hud import draw_caption

    img = np.full((720, width, 3), 128, np.uint8)
    draw_caption(img, View(mode="rollout"), "layers 1-4, heads fused (mean), smoothed", 1.0)
    assert (img[600:, -5:] == 128).all()
