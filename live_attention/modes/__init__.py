"""The modes: one class per way of looking at a frame, each in its own module, found through a registry.

``modes.mode(name)`` is the :class:`~live_attention.modes.base.Mode` that owns what differs between
views; ``all_modes()`` lists them in key order. A new mode is one new module that subclasses ``Mode``
and decorates it with :func:`register_mode`, imported below (or anywhere before it is used): its key,
help line, HUD line, the loop's settings, replay and export follow.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from live_attention.core.temporal import ViewSmoother
from live_attention.datatypes import Extras, Result, View

# The built-in modes: importing each registers it (their keys set their order).
from live_attention.modes import attention, entropy, flow, heads, norms, query, relevance, rollout  # noqa: F401
from live_attention.modes.base import (
    Mode,
    all_modes,
    first,
    map_settings,
    mode,
    mode_for_key,
    register_mode,
    settings_for,
    unregister_mode,
)


def select_map(result: Result, view: View, extras: Extras | None = None) -> tuple[np.ndarray | None, str]:
    """The patch map [P] that the view asks for, and its caption. ``None`` when not available."""
    return mode(view.mode).select(result, view, extras)


def shown_map(result: Result, view: View, extras: Extras | None = None) -> tuple[np.ndarray | None, str]:
    """What the picture overlays: :func:`select_map`'s map, or its smoothing over time when the view asks
    for it and ``extras`` carries it for this frame (:mod:`live_attention.core.temporal`)."""
    m, caption = select_map(result, view, extras)
    if (view.smooth and m is not None and extras is not None and extras.smoothed is not None
            and extras.smoothed_seq == result.seq and np.size(extras.smoothed) == np.size(m)):
        return extras.smoothed, f"{caption}, smoothed"
    return m, caption


def needs_model(view: View, rec: Result) -> bool:
    """Whether showing ``view`` on the recorded ``rec`` needs maps that were not recorded."""
    return mode(view.mode).needs_model(view, rec)


def default_view(view: View, grid: tuple[int, int]) -> View:
    """``view`` for an offline picture on a ``grid`` of patches: what the user left unset chosen (the
    centre patch for a query)."""
    return mode(view.mode).default_view(view, grid)


def _smoothed_map(result: Result, view: View, extras: Extras | None) -> np.ndarray | None:
    return select_map(result, view, extras)[0]


def view_smoother() -> ViewSmoother:
    """A :class:`~live_attention.core.temporal.ViewSmoother` of the views' maps (the modes with one map a
    frame)."""
    smooths: Callable[[View], bool] = lambda v: mode(v.mode).smoothed  # noqa: E731
    return ViewSmoother(_smoothed_map, smooths)


__all__ = [
    "Mode", "all_modes", "default_view", "first", "map_settings", "mode", "mode_for_key", "needs_model",
    "register_mode", "select_map", "settings_for", "shown_map", "unregister_mode", "view_smoother",
]
