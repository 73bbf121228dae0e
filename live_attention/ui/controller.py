"""The keyboard controller: plain view state changed by named keys, on the frame loop's thread.

No GUI code: the window turns key presses into names (``"up"``, ``"6"``, ``"space"``), so the
controller is unit-tested without a window, and replay and the live window share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from live_attention.config import COLORMAPS, FUSIONS, Config
from live_attention.core.compare import Pairing
from live_attention.datatypes import Result, View
from live_attention.modes import all_modes, first, mode, mode_for_key
from live_attention.ui.keys import actions


def view_from_config(cfg: Config) -> View:
    """The starting view: the config counts layers and heads from 1, a View from 0."""
    v = cfg.view
    return View(mode=v.mode, layer=v.layer_index, head=v.head_index, fusion=v.fusion, opacity=v.opacity,
                colormap=v.colormap, show_help=cfg.window.show_help, smooth=v.smooth)


@dataclass
class KeyOutcome:
    """What the frame loop must do after a key, beyond the new view."""

    quit: bool = False
    screenshot: bool = False
    toggle_record: bool = False
    freeze_changed: bool = False
    cycle_target: bool = False
    note: str | None = None  # a short HUD note on what the key did (or why it did nothing)


def _cycle(values: Sequence[str], current: str) -> str:
    return values[(list(values).index(current) + 1) % len(values)]


class Controller:
    """Keyboard navigation over layers, heads, modes and display options: each key's action comes from
    the one table of bindings (:func:`live_attention.ui.keys.actions`), each mode's key from its class.

    Args:
        num_layers, num_heads: the model's size.
        view: the starting view.
        pairing: the two models' sizes with ``--compare`` (Tab and D act only then).
    """

    def __init__(self, num_layers: int, num_heads: int, view: View | None = None,
                 pairing: Pairing | None = None) -> None:
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.pairing = pairing
        v = view or View()
        self.view = replace(v, layer=v.resolved_layer(num_layers), head=min(v.head, num_heads - 1))

    def press(self, key: str) -> KeyOutcome:
        k = key.lower()
        out = KeyOutcome()
        action = actions().get(k)
        v = self._act(action, k, self.view, out) if action is not None else self.view
        if v.animating and not mode(v.mode).picks_layer:  # a view of every layer: the layer must not run on
            v = replace(v, animating=False)
            out.note = f"{v.mode} uses every layer: animation stopped"
        self.view = v
        return out

    def _act(self, action: str, k: str, v: View, out: KeyOutcome) -> View:
        """The view after ``action`` (the key ``k``); what the loop must do goes into ``out``."""
        views = {
            "layer_up": lambda: replace(v, layer=min(self.num_layers - 1, v.layer + 1), animating=False),
            "layer_down": lambda: replace(v, layer=max(0, v.layer - 1), animating=False),
            "head_next": lambda: replace(v, head=v.head + 1 if v.head < self.num_heads - 1 else -1),  # -1 -> 0 .. H-1 -> -1
            "head_prev": lambda: replace(v, head=v.head - 1 if v.head > -1 else self.num_heads - 1),
            "heads_fused": lambda: replace(v, head=-1),
            "next_mode": lambda: replace(v, mode=_cycle([m.name for m in all_modes()], v.mode)),
            "fusion": lambda: replace(v, fusion=_cycle(FUSIONS, v.fusion)),
            "opacity_up": lambda: replace(v, opacity=round(min(1.0, v.opacity + 0.1), 2)),
            "opacity_down": lambda: replace(v, opacity=round(max(0.0, v.opacity - 0.1), 2)),
            "colormap": lambda: replace(v, colormap=_cycle(COLORMAPS, v.colormap)),
            "help": lambda: replace(v, show_help=not v.show_help),
            "smooth": lambda: replace(v, smooth=not v.smooth),
        }
        if action in ("head_next", "head_prev", "heads_fused", "head_side", "difference") and self.pairing is not None:
            return self._pair_act(action, v, out)
        if action in views:
            return views[action]()
        if action == "mode":
            chosen = mode_for_key(k)
            assert chosen is not None  # the table binds the registered modes' keys
            v = replace(v, mode=chosen.name)
            if chosen.freezes and not v.frozen:
                v = replace(v, frozen=True)
                out.freeze_changed = True
        elif action == "animate":
            if mode(v.mode).picks_layer:
                v = replace(v, animating=not v.animating)
            else:
                out.note = f"{v.mode} uses every layer: nothing to animate (A animates the views of one layer)"
        elif action == "freeze":
            v = replace(v, frozen=not v.frozen)
            out.freeze_changed = True
        elif action == "quit":
            out.quit = True
        elif action == "screenshot":
            out.screenshot = True
        elif action == "record":
            out.toggle_record = True
        elif action == "target":
            out.cycle_target = True
        elif action in ("head_side", "difference"):
            out.note = "Tab and D act with two models side by side (--compare MODEL)"
        return v

    def _pair_act(self, action: str, v: View, out: KeyOutcome) -> View:
        """Head keys, Tab and D with ``--compare``: the head keys move the side Tab chose where the head
        counts differ (both where they match); D shows the difference of the two maps."""
        assert self.pairing is not None
        ha, hb = self.pairing.heads
        if action == "difference":
            out.note = "difference of the two maps: red left higher, blue right higher" if not v.difference else "side by side"
            return replace(v, difference=not v.difference)
        if action == "head_side":
            if ha == hb:
                out.note = f"both models have {ha} heads: the head keys move both"
                return v
            side = 1 - v.head_side
            out.note = f"the head keys move the {'right' if side else 'left'} model ({hb if side else ha} heads)"
            return replace(v, head_side=side)
        second = v.head_side == 1 and ha != hb
        n, head = (hb, v.compare_head) if second else (ha, v.head)
        if action == "head_next":
            head = head + 1 if head < n - 1 else -1
        elif action == "head_prev":
            head = head - 1 if head > -1 else n - 1
        else:
            head = -1
        return replace(v, compare_head=head) if second else replace(v, head=head)

    def set_target(self, target: int | None) -> None:
        """Explain ``target`` (a class index; None: each frame's top-1) in the mode that explains a class."""
        self.view = replace(self.view, target=target, mode=first("explains_class").name, animating=False)

    def step_animation(self) -> None:
        """Advance the animated layer by one, wrapping around."""
        self.view = replace(self.view, layer=(self.view.layer + 1) % self.num_layers)

    def select_patch(self, patch: int | None) -> None:
        """Query ``patch`` (None: leave the mode as it is)."""
        self.view = replace(self.view, query_patch=patch,
                            mode=first("picks_patch").name if patch is not None else self.view.mode)


def patch_at(result: Result, x: float, y: float) -> int | None:
    """The patch under frame pixel (x, y), or None outside the region the model saw."""
    x0, y0, x1, y1 = result.box
    if not (x0 <= x < x1 and y0 <= y < y1):
        return None
    gh, gw = result.grid
    c = min(gw - 1, int((x - x0) / (x1 - x0) * gw))
    r = min(gh - 1, int((y - y0) / (y1 - y0) * gh))
    return r * gw + c


def patch_center(result: Result, patch: int) -> tuple[float, float]:
    """The frame pixel at the centre of ``patch`` (the inverse of :func:`patch_at`)."""
    x0, y0, x1, y1 = result.box
    gh, gw = result.grid
    r, c = divmod(int(patch), gw)
    return x0 + (c + 0.5) * (x1 - x0) / gw, y0 + (r + 0.5) * (y1 - y0) / gh


def next_target(result: Result, current: int | None) -> int | None:
    """``T``: the next of the frame's top-5 classes to explain; after the fifth, back to following the
    top-1 (None)."""
    ids = list(result.top_ids)
    if not ids:
        return current
    k = ids.index(current) if current in ids else 0
    return None if k + 1 >= len(ids) else ids[k + 1]


def top_label(result: Result, cls: int) -> str:
    """The label of class ``cls`` among the frame's top-5 ('?' when it is not among them)."""
    return dict(zip(result.top_ids, (n for n, _ in result.topk), strict=False)).get(cls, "?")


def describe_change(before: View, after: View) -> str | None:
    """A short HUD note for changes that are otherwise hard to see (opacity, colormap, fusion)."""
    if after.smooth != before.smooth:
        return f"smoothing {'on: still maps settle, moving ones follow' if after.smooth else 'off: raw maps'}"
    if after.opacity != before.opacity:
        return f"opacity {after.opacity:.1f}"
    if after.colormap != before.colormap:
        return f"colormap {after.colormap}"
    if after.fusion != before.fusion:
        by_fusion = " and in ".join(m.name for m in all_modes() if m.fusion_sets_map)
        note = (f" (shown when all heads are fused, and in {by_fusion})"
                if after.head >= 0 and not mode(after.mode).fusion_sets_map else "")
        return f"head fusion {after.fusion}{note}"
    return None
