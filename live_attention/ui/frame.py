"""One picture: the frame, the shown mode's map over the part the model saw, and the HUD.

A pure function of (frame, result, view, status, extras) that returns an RGB uint8 image. A result with
a second model's result for the same frame (``Result.pair``, ``--compare``) is drawn as two halves side
by side, each with its own HUD; ``View.difference`` puts the signed difference of the two maps in the
second half. No GUI and
no threads: the window, screenshots, the recorder and the headless ``render`` and ``export`` all call
:func:`render`, so what you see is what you record. The mode draws its own part
(:meth:`~live_attention.modes.base.Mode.draw`); the HUD is :mod:`live_attention.ui.hud`.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np

from live_attention.core.compare import Difference, difference, pair_view
from live_attention.core.render import GREY, WHITE, canvas_size, dim_outside, panel, text
from live_attention.datatypes import Extras, Result, Status, View
from live_attention.modes import all_modes, mode, shown_map
from live_attention.ui.hud import draw_caption, draw_help, draw_hud, draw_no_signal

DIFF_POS = np.array((235, 60, 40), np.float32)  # the first model's map higher
DIFF_NEG = np.array((40, 110, 245), np.float32)  # the second model's map higher


def canvas_for(frame_shape: tuple[int, ...], paired: bool = False) -> tuple[int, int]:
    """(w, h) of the picture of a frame: :func:`canvas_size`, twice as wide for two models side by side."""
    w, h = canvas_size(frame_shape)
    return (2 * w, h) if paired else (w, h)


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

    if result is not None and result.pair is not None:
        return _render_pair(frame, result, result.pair, view, status, extras, size or canvas_for(frame.shape, True))
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


def _render_pair(frame: np.ndarray, a: Result, b: Result, view: View, status: Status, extras: Extras,
                 size: tuple[int, int]) -> np.ndarray:
    """Two halves side by side: the first model with ``view``, the second with the view that follows it
    (:func:`~live_attention.core.compare.pair_view`), or the difference of their maps (``view.difference``)."""
    w, h = size
    half = (w // 2, h)
    first = replace(a, pair=None)
    left = render(frame, first, view, replace(status, pair=None), replace(extras, pair=None), half)
    vb = replace(pair_view(view, first, b), show_help=False)
    sb = status.pair or Status(model="second model")
    if view.difference:
        right = _difference_picture(frame, first, b, view, vb, extras, half, status, sb)
    else:
        right = render(frame, b, vb, sb, extras.pair or Extras(), half)
    out = np.hstack([left, right])
    out[:, half[0] - 1:half[0] + 1] = 255  # the seam
    return np.ascontiguousarray(out)


def _difference_picture(frame: np.ndarray, a: Result, b: Result, va: View, vb: View, extras: Extras,
                        size: tuple[int, int], sa: Status, sb: Status) -> np.ndarray:
    """The second half in the difference view (key D): the signed difference of the two shown maps over
    the picture, red where the first model's map is higher, blue where the second's is."""
    w, h = size
    scale = h / 720.0
    img = cv2.cvtColor(cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)
    shown = mode(va.mode)
    ma, why_a = shown_map(a, va, extras) if shown.one_map else (None, "")
    mb, why_b = shown_map(b, vb, extras.pair) if shown.one_map else (None, "")
    d = difference(ma, a, mb, b) if ma is not None and mb is not None else None
    sx, sy = w / frame.shape[1], h / frame.shape[0]
    if d is not None:
        x0, y0, x1, y1 = d.box
        box = (int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy)))
        dim_outside(img, box)
        _signed_overlay(img, box, d, va.opacity)
    lines = [("DIFFERENCE (D): left map minus right map", WHITE),
             (f"red: left higher ({_short(sa.model)})", (255, 140, 120)),
             (f"blue: right higher ({_short(sb.model)})", (140, 180, 255))]
    if d is not None:
        lines.append((f"each map as a share of its total; {d.note}", GREY))
        lines.append((f"{va.mode}: left {_where(va, a)}, right {_where(vb, b)}", GREY))
    elif not shown.one_map:
        keys = ", ".join(m.key for m in all_modes() if m.one_map)
        lines.append((f"no difference to show: {va.mode} has no single map a side (modes {keys} have one)", GREY))
    elif ma is None or mb is None:
        side, why = ("left", why_a) if ma is None else ("right", why_b)
        lines.append((f"no difference to show: no {va.mode} map on the {side}" + (f" ({why})" if why else ""), GREY))
    else:
        lines.append(("the two models see no common part of the picture", GREY))
    if va.show_hud:
        s, lh = 0.55 * scale, int(24 * scale)
        panel(img, 0, 0, w, lh * len(lines) + int(12 * scale))
        for i, (t, c) in enumerate(lines):
            text(img, t, (int(10 * scale), int(20 * scale) + i * lh), s, c)
    return np.ascontiguousarray(img)


def _where(view: View, r: Result) -> str:
    """Which layer and heads a side's map comes from, as the difference's legend says it."""
    layers = (f"layer {view.resolved_layer(r.num_layers) + 1}/{r.num_layers}" if mode(view.mode).picks_layer
              else f"all {r.num_layers} layers")
    return layers + (f", head {view.head + 1}" if view.head >= 0 else ", heads fused")


def _short(model: str) -> str:
    return model.split(" [")[0] + (" UNTRAINED" if "UNTRAINED" in model else "") if model else "?"


def _signed_overlay(img: np.ndarray, box: tuple[int, int, int, int], d: Difference, opacity: float) -> None:
    """``d``'s values (-1..1) over ``box``: the colour of the sign, as strong as the difference."""
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    up = cv2.resize(d.values.reshape(d.grid).astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    alpha = np.clip(np.abs(up), 0.0, 1.0)[..., None] * max(opacity, 0.35) * 1.6
    alpha = np.minimum(alpha, 0.95)
    colour = np.where(up[..., None] >= 0, DIFF_POS, DIFF_NEG)
    roi = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = (roi * (1.0 - alpha) + colour * alpha).astype(np.uint8)
