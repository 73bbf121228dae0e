"""What a mode is, and the registry every mode adds itself to (as timm's models do with ``register_model``).

A :class:`Mode` owns everything that differs between views: what it asks the worker to keep (its
:class:`~live_attention.datatypes.MapSettings` fields), how it selects its map from a result and
captions it, its title, explanation and colour legend, how the heads enter it, whether replay needs the
model to show it on a recorded frame, and how it draws itself on the picture the model saw. The frame
loop, replay, export, ``render``, the controller and the HUD ask the registry, never a mode's name.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar, TypeVar

import numpy as np

from live_attention import config
from live_attention.core.render import dim_outside, mark_patch, normalize, overlay
from live_attention.datatypes import Extras, MapSettings, Result, View

Marks = list[tuple[int, tuple[int, int, int]]]  # (patch, RGB colour) outlined on the picture


def fuse(x: np.ndarray, how: str, axis: int = 0) -> np.ndarray:
    """Heads fused by ``how`` (mean, max or min) along ``axis``."""
    if how == "mean":
        return x.mean(axis=axis)
    if how == "max":
        return x.max(axis=axis)
    return x.min(axis=axis)


def layer_name(result: Result, view: View) -> str:
    """``layer 12/12``: the shown layer, counted from 1."""
    return f"layer {view.resolved_layer(result.num_layers) + 1}/{result.num_layers}"


def heads_name(result: Result, view: View) -> str:
    """``head 3/12`` or ``all heads (mean)``."""
    return f"head {view.head + 1}/{result.num_heads}" if view.head >= 0 else f"all heads ({view.fusion})"


def head_index(result: Result, view: View) -> int:
    """The view's head on this model (-1: fused)."""
    return min(view.head, result.num_heads - 1)


class Mode:
    """One way of looking at a frame. Subclass it, set the class attributes, override what differs, and
    decorate the class with :func:`register_mode`: the key, the help, the HUD, the loop, replay and
    export then know it. The defaults suit a mode that shows one map of one layer."""

    name: ClassVar[str]
    key: ClassVar[str]  # the key that shows it ("1", "2", ...)
    title: ClassVar[str]  # the caption's first line
    explain: ClassVar[str]  # what the map means, after the caption
    legend: ClassVar[tuple[str, str]] = ("low", "high")  # the colour bar's ends
    picks_layer: ClassVar[bool] = True  # False: the map combines every layer (the layer changes nothing)
    one_map: ClassVar[bool] = True  # one map a frame (what --save-maps saves)
    smoothed: ClassVar[bool] = True  # smoothed over time when the view asks (J): a map every frame
    fusion_sets_map: ClassVar[bool] = False  # the map is computed with the worker's fusion (F recomputes it)
    freezes: ClassVar[bool] = False  # choosing it freezes the frame (a map computed on a still frame)
    later: ClassVar[bool] = False  # computed from kept attention after the frame (flow): see map_later
    explains_class: ClassVar[bool] = False  # the top-5 labels choose the class it explains
    picks_patch: ClassVar[bool] = False  # a click picks the patch it queries
    progress: ClassVar[str | None] = None  # what the caption says while the map is computed later
    maps: ClassVar[tuple[str, ...]] = ()  # the optional maps it shows (MapSettings.maps; live_attention.names)

    def keeps(self, view: View) -> dict[str, Any]:
        """The :class:`MapSettings` fields this mode sets beyond the common ones (see :func:`settings_for`)."""
        return {}

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        """The patch map [P] to show and its caption; ``None`` and why when it is not available."""
        raise NotImplementedError

    def heads_label(self, view: View, result: Result) -> str:
        """How the heads enter what is shown (the HUD's mode line)."""
        return f"head {view.head + 1}" if view.head >= 0 else f"heads {view.fusion}"

    def needs_model(self, view: View, rec: Result) -> bool:
        """Whether showing ``view`` on the recorded ``rec`` needs maps that were not recorded."""
        return False

    def default_view(self, view: View, grid: tuple[int, int]) -> View:
        """The view an offline picture shows (render, export), with what the user left unset chosen."""
        return view

    def hud_lines(self, result: Result) -> list[str]:
        """Lines the HUD adds under the mode line."""
        return []

    def marks(self, result: Result, view: View) -> Marks:
        """Patches outlined on the picture."""
        return []

    def draw(self, img: np.ndarray, result: Result, view: View, extras: Extras, box: tuple[int, int, int, int],
             scale: float, shown: np.ndarray | None, caption: str) -> str | None:
        """Draw the mode on ``img`` (RGB, the canvas) where the model's box is ``box``; returns the caption
        to show under it (``None``: none). ``shown`` is the map to overlay (smoothed when asked)."""
        dim_outside(img, box)
        if shown is not None:
            overlay(img, box, normalize(shown), result.grid, view)
        for patch, color in self.marks(result, view):
            mark_patch(img, box, result.grid, patch, color)
        return caption


ModeT = TypeVar("ModeT", bound=type[Mode])

_MODES: dict[str, Mode] = {}


def register_mode(cls: ModeT) -> ModeT:
    """Class decorator: add a mode to the registry (its name to the names a config and ``--mode`` accept).
    A second mode with the same name or key replaces nothing: it is an error."""
    m = cls()
    for other in _MODES.values():
        if other.name == m.name or other.key == m.key:
            raise ValueError(f"mode {m.name!r} (key {m.key}) clashes with {other.name!r} (key {other.key})")
    _MODES[m.name] = m
    if m.name not in config.MODES:
        config.MODES.append(m.name)
    return cls


def unregister_mode(name: str) -> None:
    """Remove a mode (tests that register one of their own)."""
    _MODES.pop(name, None)
    if name in config.MODES:
        config.MODES.remove(name)


def all_modes() -> list[Mode]:
    """Every registered mode, in key order."""
    return sorted(_MODES.values(), key=lambda m: (len(m.key), m.key))


def mode(name: str) -> Mode:
    """The mode named ``name``."""
    try:
        return _MODES[name]
    except KeyError:
        raise ValueError(f"unknown mode {name!r}: use one of {', '.join(m.name for m in all_modes())}") from None


def mode_for_key(key: str) -> Mode | None:
    """The mode a key shows, or None."""
    return next((m for m in _MODES.values() if m.key == key), None)


def first(flag: str) -> Mode:
    """The mode with ``flag`` set (``explains_class``: what T and a click on a label show)."""
    return next(m for m in all_modes() if getattr(m, flag))


def settings_for(view: View, recording: bool = False) -> dict[str, Any]:
    """The map settings a view asks the worker for: only the shown mode's maps, every map while recording
    (a session keeps them all, so replay and export need no model). The one mapping from a view to
    :class:`MapSettings` fields: the live loop, ``render``, replay and export all use it."""
    fields: dict[str, Any] = {
        "maps": None if recording else mode(view.mode).maps,
        "fusion": view.fusion,
        "entropy_layer": view.layer,
        "query_patch": None,
        "target": view.target,
        "relevance": False,
        "need": (),
    }
    fields.update(mode(view.mode).keeps(view))
    return fields


def map_settings(view: View, base: MapSettings | None = None, recording: bool = False) -> MapSettings:
    """``base`` (residual, discard ratio) with what ``view`` asks for (:func:`settings_for`)."""
    return replace(base or MapSettings(), **settings_for(view, recording))
