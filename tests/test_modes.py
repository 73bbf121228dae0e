"""The modes' registry: a mode is one class, and everything else (the worker's settings, the keys, the help,
the HUD, the frame loop, replay, the web page's keys) asks the registry. A toy mode registered here, with
no other file edited, reaches all of them."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import numpy as np
import pytest

from live_attention import config
from live_attention.config import Config
from live_attention.core.engine import AttentionEngine
from live_attention.datatypes import Extras, Result, Status, View
from live_attention.modes import (
    Mode,
    all_modes,
    map_settings,
    mode,
    needs_model,
    register_mode,
    settings_for,
    unregister_mode,
)
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop
from live_attention.ui.controller import Controller
from live_attention.ui.hud import hud_layout
from live_attention.ui.keys import actions, help_lines, page_keys
from live_attention.web.display import parse_message
from tests.conftest import tiny_vit
from tests.fakes import FakeCamera, KeyDisplay

pytestmark = pytest.mark.timeout(60)


class Toy(Mode):
    """The last layer's class-token attention squared: keeps full attention, uses every layer's slot."""

    name = "toy"
    key = "9"
    title = "Toy map"
    explain = "a mode registered by a test"
    picks_layer = False
    calls = 0

    def keeps(self, view: View) -> dict:
        return {"need": ("attn",)}

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        type(self).calls += 1
        return result.cls[-1].mean(axis=0) ** 2, "toy caption"

    def heads_label(self, view: View, result: Result) -> str:
        return "toy heads"

    def needs_model(self, view: View, rec: Result) -> bool:
        return rec.attn is None


@pytest.fixture
def toy():
    register_mode(Toy)
    Toy.calls = 0
    try:
        yield mode("toy")
    finally:
        unregister_mode("toy")


def test_the_built_in_modes_are_registered_in_key_order():
    assert [m.name for m in all_modes()] == list(config.MODES)
    assert [m.key for m in all_modes()] == [str(i + 1) for i in range(8)]


def test_a_mode_cannot_take_a_key_or_name_already_taken(toy):
    class Again(Toy):
        name = "again"

    with pytest.raises(ValueError, match="clashes"):
        register_mode(Again)
    assert [m.name for m in all_modes()][-1] == "toy"


def test_the_view_settings_come_from_the_mode(toy):
    assert settings_for(View(mode="toy")) == {"maps": (), "fusion": "mean", "entropy_layer": -1,
                                              "query_patch": None, "target": None, "relevance": False,
                                              "need": ("attn",)}
    assert map_settings(View(mode="toy"), recording=True).maps is None  # a recording keeps every map
    assert settings_for(View(mode="rollout"))["maps"] == ("rollout",)  # the optional maps a mode shows
    assert settings_for(View(mode="entropy"))["maps"] == ("patch_entropy",)
    assert settings_for(View(mode="norms"))["maps"] == ("token_norm",)
    assert settings_for(View(mode="query", query_patch=4))["query_patch"] == 4
    assert settings_for(View(mode="attention", query_patch=4))["query_patch"] is None  # kept only while queried


def test_a_new_mode_has_a_key_a_help_line_and_page_key(toy):
    c = Controller(3, 2, View(mode="norms"))
    c.press("9")
    assert c.view.mode == "toy"
    c.press("m")
    assert c.view.mode == "attention"  # M cycles through every mode, the new one included
    c.press("8")
    c.press("m")
    assert c.view.mode == "toy"
    c.press("a")
    assert not c.view.animating  # it uses every layer: nothing to animate
    lines = dict(help_lines())
    assert lines["1-9, M"].endswith("relevance norms toy")
    assert lines["A"] == "animate through the layers (not 6, 7 and 9, which use every layer)"
    assert "9" in page_keys() and actions()["9"] == "mode" and parse_message('{"key": "9"}') == ("key", "9")
    assert View(mode="toy").mode == "toy" and "toy" in config.MODES  # a config and --mode accept it


def test_without_it_its_name_is_refused():
    with pytest.raises(ValueError, match="unknown mode 'toy'"):
        View(mode="toy")
    assert "9" not in page_keys() and parse_message('{"key": "9"}') is None


def test_the_frame_loop_shows_a_new_mode_with_what_it_keeps(toy, tmp_path):
    """Key 9 in the live loop: the worker keeps what the toy asks for (full attention), the picture is
    drawn from the toy's map, and the HUD names it with its key and heads label."""
    eng = AttentionEngine(tiny_vit(layers=3, heads=2), device="cpu", precision="fp32")
    s = LiveSession(Config(), eng, FakeCamera([10_000], period=0.02))
    state_file = tmp_path / "state.json"
    display = KeyDisplay(["9"], wants_pixels=True)
    loop = FrameLoop(s, display, View(mode="attention"), state_file=str(state_file))
    s.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            loop.step()
            res = loop.shown
            if res is not None and res.attn is not None and display.rgb is not None and Toy.calls:
                break
        assert s.worker.settings.maps == () and s.worker.settings.need == ("attn",)
        assert res is not None and res.attn is not None and Toy.calls > 0
        assert json.loads(state_file.read_text())["view"]["mode"] == "toy"
        line = hud_layout(960, 720, res, loop.view, Status()).lines[0][0]
        assert line == "mode 9 toy | all layers | toy heads"
        assert not needs_model(loop.view, res) and needs_model(loop.view, replace(res, attn=None))  # replay
    finally:
        s.stop()
