"""One picture: the frame, the shown mode's map over the part the model saw, and the HUD.

A pure function of (frame, result, view, status, extras) that returns an RGB uint8 image. No GUI and
no threads: the window, screenshots, the recorder and the headless ``render`` and ``export`` all call
:func:`render`, so what you see is what you record. The mode draws its own part
(:meth:`~live_attention.modes.base.Mode.draw`); the HUD is :mod:`live_attention.ui.hud`.
"""

from __future__ import annotations

import cv2
import numpy as np

from live_attention.core.render import canvas_size
from live_attention.datatypes import Extras, Result, Status, View
from live_attention.modes import mode, shown_map
from live_attention.ui.hud import draw_caption, draw_help, draw_hud, draw_no_signal


def render(
    frame: np.ndarray | None,
    result: Result | None = None,
    view: View | None = None,
    status: Status | None = None,
    extras: Extras | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Compose one output image (RGB uint8, C-contiguous).

    Args:
        frame: the BGR camera frame (None: no signal).
        result: the worker's :class:`~live_attention.datatypes.Result` for this frame, or None.
        view: what to show; status: HUD figures; extras: entropy history and flow.
        size: (w, h) of the output; by default :func:`canvas_size` of the frame.
    """
    view = view or View()
    status = status or Status()
    extras = extras or Extras()
    if frame is None:
        w, h = size or (1280, 720)
        blank = np.zeros((h, w, 3), np.uint8)
        scale = h / 720.0
        draw_no_signal(blank, status, scale)
        draw_hud(blank, None, view, status, scale)
        return blank

    w, h = size or canvas_size(frame.shape)
    scale = h / 720.0
    sy, sx = h / frame.shape[0], w / frame.shape[1]
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR) if (w, h) != frame.shape[1::-1] else frame
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # a new array: never draws into the caller's frame

    if result is not None:
        x0, y0, x1, y1 = result.box
        box = (int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy)))
        m, caption = shown_map(result, view, extras)
        shown = mode(view.mode).draw(img, result, view, extras, box, scale, m, caption)
        if shown is not None and view.show_hud:
            draw_caption(img, view, shown, scale, flow_progress=status.flow_progress)
    if status.silent_s is not None and not view.frozen:  # the last picture, dimmed: it is not live any more
        cv2.convertScaleAbs(img, dst=img, alpha=0.35)
        draw_no_signal(img, status, scale)
    draw_hud(img, result, view, status, scale)
    if view.show_help:
        draw_help(img, scale)
    return np.ascontiguousarray(img)
