"""Drawing on a picture: colour maps, a map over the part the model saw, text on shaded panels.

The primitives every picture is made of, with no mode and no HUD in them: the composition of a frame
(:func:`live_attention.ui.frame.render`), the modes' own drawing (:mod:`live_attention.modes`) and
export's still pictures use them. No GUI and no threads here.
"""

from __future__ import annotations

import cv2
import numpy as np

from live_attention.datatypes import Result, View

_CV_MAPS = {
    "inferno": cv2.COLORMAP_INFERNO,
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "magma": cv2.COLORMAP_MAGMA,
    "hot": cv2.COLORMAP_HOT,
}
FONT = cv2.FONT_HERSHEY_SIMPLEX
WHITE = (255, 255, 255)
GREY = (190, 190, 190)
YELLOW = (255, 214, 10)
RED = (230, 40, 40)
GREEN = (80, 220, 100)
CYAN = (80, 220, 255)


def model_rgb(result: Result) -> np.ndarray:
    """The part of the frame the model saw (its box), RGB: the picture under the heads' tiles."""
    x0, y0, x1, y1 = result.box
    crop = result.frame[y0:y1, x0:x1] if y1 > y0 and x1 > x0 else result.frame
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)


def normalize(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float32, copy=False)
    lo, hi = float(m.min()), float(m.max())
    if hi - lo < 1e-12:
        return np.zeros_like(m)
    return (m - lo) / (hi - lo)


# --------------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------------


_LUT_CACHE: dict[str, np.ndarray] = {}


def colormap_lut(name: str) -> np.ndarray:
    """A 256×1×3 RGB lookup table usable as an OpenCV user colormap."""
    lut = _LUT_CACHE.get(name)
    if lut is None:
        ramp = np.arange(256, dtype=np.uint8).reshape(256, 1)
        bgr = cv2.applyColorMap(ramp, _CV_MAPS[name])
        lut = np.ascontiguousarray(bgr[:, :, ::-1]).reshape(256, 1, 3)
        _LUT_CACHE[name] = lut
    return lut


def heat_rgb(values01: np.ndarray, grid: tuple[int, int], size: tuple[int, int], cmap: str) -> np.ndarray:
    """A [P] map in [0, 1] smoothly upsampled (bicubic) to ``size`` (w, h), coloured, RGB uint8."""
    g = values01.reshape(grid).astype(np.float32)
    up = cv2.resize(g, size, interpolation=cv2.INTER_CUBIC)
    u8 = cv2.convertScaleAbs(up, alpha=255.0)  # saturates the bicubic overshoot
    return cv2.applyColorMap(u8, colormap_lut(cmap))


def text(img: np.ndarray, s: str, org: tuple[int, int], scale: float, color: tuple[int, int, int] = WHITE,
         thick: int = 1) -> None:
    """``s`` at ``org`` with a dark shadow, readable on any picture."""
    x, y = org
    # Same thickness for the shadow: OpenCV 5 renders a real font whose advance grows with thickness.
    d = max(1, int(round(2 * scale)))
    cv2.putText(img, s, (x + d, y + d), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(img, s, (x, y), FONT, scale, color, thick, cv2.LINE_AA)


def panel(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.6) -> None:
    """Darken a rectangle (clipped to the picture) so that text on it reads."""
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    cv2.convertScaleAbs(roi, dst=roi, alpha=1.0 - alpha)


def text_w(s: str, scale: float, thick: int = 1) -> int:
    """The width of ``s`` in pixels."""
    return cv2.getTextSize(s, FONT, scale, thick)[0][0]


def colorbar(img: np.ndarray, x: int, y: int, w: int, h: int, cmap: str, low: str, high: str, scale: float) -> None:
    """A colour legend with its ends named."""
    ramp = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8).reshape(1, w)
    bar = cv2.applyColorMap(np.repeat(ramp, h, axis=0), colormap_lut(cmap))
    img[y : y + h, x : x + w] = bar
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), WHITE, 1)
    text(img, low, (x, y + h + int(22 * scale)), 0.5 * scale, GREY)
    text(img, high, (x + w - text_w(high, 0.5 * scale), y + h + int(22 * scale)), 0.5 * scale, GREY)


def fit(text: str, scale: float, thick: int, max_w: int) -> float:
    """The font scale (at most ``scale``) at which ``text`` fits in ``max_w`` pixels."""
    tw = text_w(text, scale, thick)
    return scale if tw <= max_w else scale * max_w / tw


def axis_labels(first: str, last: str, x0: int, x1: int, scale: float) -> list[tuple[str, int, int]]:
    """Where an axis's end labels go: ``(text, x, width)``. ``first`` under the left end and ``last``
    right-aligned under the right end; one centred ``first-last`` where the axis is too short for the
    two to stand apart (the entropy grid of a 4-head model once read "head41")."""
    w_first, w_last = text_w(first, scale), text_w(last, scale)
    if w_first + w_last + text_w("  ", scale) <= x1 - x0:
        return [(first, x0, w_first), (last, x1 - w_last, w_last)]
    both = f"{first}-{last}"
    w = text_w(both, scale)
    return [(both, (x0 + x1 - w) // 2, w)]



# --------------------------------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------------------------------


def canvas_size(frame_shape: tuple[int, ...], min_height: int = 720, max_height: int = 1080) -> tuple[int, int]:
    """(w, h) of the output: the frame's aspect, at least 720 and at most 1080 pixels tall."""
    h, w = frame_shape[:2]
    th = int(min(max(h, min_height), max_height))
    tw = int(round(w * th / h))
    return tw + (tw % 2), th + (th % 2)  # even sizes keep H.264 encoders happy


def dim_outside(img: np.ndarray, box: tuple[int, int, int, int]) -> None:
    """Dim what the model does not see (outside its centre crop) and outline what it does."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    for sl in (np.s_[:y0, :], np.s_[y1:, :], np.s_[y0:y1, :x0], np.s_[y0:y1, x1:]):
        roi = img[sl]
        if roi.size:
            cv2.convertScaleAbs(roi, dst=roi, alpha=0.35)
    if (x0, y0, x1, y1) != (0, 0, w, h):
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (110, 110, 110), 1)


def overlay(img: np.ndarray, box: tuple[int, int, int, int], values01: np.ndarray, grid: tuple[int, int],
            view: View) -> None:
    """A [P] map in [0, 1] over the part of the picture the model saw, at the view's opacity and colormap."""
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    heat = heat_rgb(values01, grid, (x1 - x0, y1 - y0), view.colormap)
    roi = img[y0:y1, x0:x1]
    cv2.addWeighted(roi, 1.0 - view.opacity, heat, view.opacity, 0.0, dst=roi)


def mark_patch(img: np.ndarray, box: tuple[int, int, int, int], grid: tuple[int, int], patch: int,
               color: tuple[int, int, int] = CYAN) -> None:
    """Outline one patch."""
    x0, y0, x1, y1 = box
    r, c = divmod(patch, grid[1])
    pw, ph = (x1 - x0) / grid[1], (y1 - y0) / grid[0]
    p0 = (int(x0 + c * pw), int(y0 + r * ph))
    p1 = (int(x0 + (c + 1) * pw), int(y0 + (r + 1) * ph))
    cv2.rectangle(img, p0, p1, (0, 0, 0), 4)
    cv2.rectangle(img, p0, p1, color, 2)


# --------------------------------------------------------------------------------------------------
# Still pictures of one frame (export)
# --------------------------------------------------------------------------------------------------


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    cv2.putText(img, text, (org[0] + 1, org[1] + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def heads_grid(res: Result, title: str, colormap: str = "inferno", opacity: float = 0.6, tile: int = 96) -> np.ndarray:
    """RGB image of every head's CLS attention for one frame: rows = layers, columns = heads, labelled."""
    L, H = res.num_layers, res.num_heads
    gh, gw = res.grid
    tw, th = (tile, max(8, round(tile * gh / gw))) if gw >= gh else (max(8, round(tile * gw / gh)), tile)
    left, top, gap = 70, 60, 4
    title_w = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0]
    w = max(left + H * (tw + gap) + gap, title_w + 20)
    h = top + L * (th + gap) + gap
    img = np.full((h, w, 3), 18, np.uint8)
    base = cv2.resize(model_rgb(res), (tw, th), interpolation=cv2.INTER_AREA)
    for li in range(L):
        y = top + li * (th + gap)
        _label(img, f"L{li + 1}", (10, y + th // 2 + 6), 0.6)
        for hd in range(H):
            x = left + hd * (tw + gap)
            heat = heat_rgb(normalize(res.cls[li, hd]), res.grid, (tw, th), colormap)
            img[y : y + th, x : x + tw] = cv2.addWeighted(base, 1 - opacity, heat, opacity, 0.0)
    for hd in range(H):
        _label(img, f"H{hd + 1}", (left + hd * (tw + gap) + tw // 2 - 12, top - 10), 0.55)
    _label(img, title, (10, 24), 0.6)
    return img
