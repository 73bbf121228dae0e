"""The renderer: a pure function of (frame, result, view, status) that returns an RGB uint8 image.

No GUI and no threads here: the window, screenshots, the recorder and the headless ``render`` and
``export`` commands all call :func:`render`, so what you see is what you record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from live_attention.config import MODES
from live_attention.core import maps
from live_attention.core.frame_maps import FLOW_MAX_TOKENS, patch_entropy_for, query_for
from live_attention.datatypes import Extras, Result, Status, View

MODE_TITLES = {
    "attention": "CLS attention",
    "rollout": "Attention rollout",
    "heads": "All heads",
    "entropy": "Attention entropy",
    "query": "Patch query",
    "flow": "Attention flow",
    "relevance": "Class relevance",
    "norms": "Token norms",
}
MODE_EXPLAIN = {
    "attention": "where the class token looks in this layer",
    "rollout": "what the class token has gathered up to this layer",
    "heads": "each head's class-token attention in this layer",
    "entropy": "bright = spread out, dark = focused",
    "query": "where the selected patch looks",
    "flow": "max-flow from each patch to the class token",
    "relevance": "which patches made the model say this class (gradients x attention)",
    "norms": "boxes: high-norm outlier tokens (what registers remove)",
}
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

HELP_LINES = (
    ("Up / Down", "layer"),
    ("Left / Right", "head (past the ends: all heads)"),
    ("0 / Backspace", "all heads fused"),
    ("F", "fusion: mean / max / min"),
    ("1-8, M", "mode: attention rollout heads entropy query flow relevance norms"),
    ("T / click a label", "the class relevance explains (7)"),
    ("J", "smoothing over time on / off"),
    ("A", "animate through the layers (not 6 and 7, which use every layer)"),
    ("Space", "freeze the frame"),
    ("Click", "pick the query patch (mode 5)"),
    ("6 while frozen", "compute attention flow"),
    ("+ / -", "overlay opacity"),
    ("C", "colormap"),
    ("R", "start / stop recording"),
    ("S", "save a screenshot"),
    ("H", "this help"),
    ("Q / Esc", "quit"),
)


# --------------------------------------------------------------------------------------------------
# Map selection
# --------------------------------------------------------------------------------------------------


def _fuse(x: np.ndarray, how: str, axis: int = 0) -> np.ndarray:
    if how == "mean":
        return x.mean(axis=axis)
    if how == "max":
        return x.max(axis=axis)
    return x.min(axis=axis)


def select_map(result, view: View, extras: Extras | None = None) -> tuple[np.ndarray | None, str]:
    """The patch map [P] that the view asks for, and its caption. ``None`` when not available."""
    layer = view.resolved_layer(result.num_layers)
    lname = f"layer {layer + 1}/{result.num_layers}"
    hname = f"head {view.head + 1}/{result.num_heads}" if view.head >= 0 else f"all heads ({view.fusion})"
    head = min(view.head, result.num_heads - 1)
    if view.mode in ("attention", "heads"):
        m = result.cls[layer, head] if head >= 0 else _fuse(result.cls[layer], view.fusion)
        return m, f"{lname}, {hname}"
    if view.mode == "rollout":
        if result.rollout is None:
            return None, f"rollout does not fit in memory at {result.num_patches + result.num_prefix} tokens: use a smaller --input-size"
        fusion = result.settings.fusion
        return result.rollout[layer], f"layers 1-{layer + 1}, heads fused ({fusion})"
    if view.mode == "entropy":
        pe = patch_entropy_for(result, layer)
        if pe is None:
            return None, f"{lname}: per-patch entropy not in this frame yet"
        m = pe[head] if head >= 0 else pe.mean(axis=0)
        return m, f"{lname}, {hname if head >= 0 else 'heads averaged'}"
    if view.mode == "query":
        if view.query_patch is None:
            return None, "click a patch to query it"
        q = query_for(result, view.query_patch)
        if q is None:
            return None, "this frame kept no rows for that patch"
        q = q[layer]
        m = q[head] if head >= 0 else _fuse(q, view.fusion)
        r, c = divmod(view.query_patch, result.grid[1])
        return m, f"patch row {r + 1}, col {c + 1}, {lname}, {hname}"
    if view.mode == "flow":
        tokens = result.num_patches + result.num_prefix
        if tokens > FLOW_MAX_TOKENS:
            return None, f"attention flow over {tokens} tokens would take hours: use an --input-size with at most {FLOW_MAX_TOKENS}"
        if extras is None or extras.flow is None or extras.flow_seq != result.seq:
            return None, "freeze (Space) and press 6 to compute flow"
        return extras.flow, f"all layers, heads fused ({result.settings.fusion})"
    if view.mode == "relevance":
        if not result.classifier:
            return None, "this model has no classifier: there is no class to explain"
        if result.relevance is None:
            return None, "computing relevance..."
        return result.relevance, f"for {explained(result)}, all layers"
    if view.mode == "norms":
        if result.token_norm is None:
            return None, "token norms were not kept for this frame"
        n = int(norm_outliers(result.token_norm[layer]).sum())
        return result.token_norm[layer], f"after {lname}: {n} high-norm outlier token{'s' if n != 1 else ''}"
    raise ValueError(view.mode)


def shown_map(result, view: View, extras: Extras | None = None) -> tuple[np.ndarray | None, str]:
    """What :func:`render` overlays: :func:`select_map`'s map, or its smoothing over time when the view
    asks for it and ``extras`` carries it for this frame (:mod:`live_attention.core.temporal`)."""
    m, caption = select_map(result, view, extras)
    if (view.smooth and m is not None and extras is not None and extras.smoothed is not None
            and extras.smoothed_seq == result.seq and np.size(extras.smoothed) == np.size(m)):
        return extras.smoothed, f"{caption}, smoothed"
    return m, caption


def explained(result: Result) -> str:
    """``tabby cat (62%)``: the class relevance explains, and its probability."""
    name = result.target_label or "the top class"
    return f"{name} ({result.target_p * 100:.0f}%)" if result.target_p is not None else name


def norm_outliers(norms: np.ndarray) -> np.ndarray:
    """Bool [P]: high-norm outlier tokens (:func:`live_attention.core.maps.norm_outliers`)."""
    return maps.norm_outliers(torch.from_numpy(np.asarray(norms, np.float32))).numpy()


def heads_label(view: View, result) -> str:
    """How the heads enter what is shown, per mode (rollout, flow and relevance always fuse them)."""
    if view.mode in ("rollout", "flow"):
        return f"heads {result.settings.fusion}"
    if view.mode == "relevance":
        return "heads mean"
    if view.mode == "norms":
        return "tokens (no heads)"
    if view.mode == "heads":  # every head is drawn; a chosen one is outlined
        return f"all {result.num_heads} heads" + (f", head {view.head + 1} marked" if view.head >= 0 else "")
    if view.head >= 0:
        return f"head {view.head + 1}"
    return "heads averaged" if view.mode == "entropy" else f"heads {view.fusion}"


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


def _text(img, s, org, scale, color=WHITE, thick=1):
    x, y = org
    # Same thickness for the shadow: OpenCV 5 renders a real font whose advance grows with thickness.
    d = max(1, int(round(2 * scale)))
    cv2.putText(img, s, (x + d, y + d), FONT, scale, (0, 0, 0), thick, cv2.LINE_AA)
    cv2.putText(img, s, (x, y), FONT, scale, color, thick, cv2.LINE_AA)


def _panel(img, x0, y0, x1, y1, alpha=0.6):
    h, w = img.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if x1 <= x0 or y1 <= y0:
        return
    roi = img[y0:y1, x0:x1]
    cv2.convertScaleAbs(roi, dst=roi, alpha=1.0 - alpha)


def _text_w(s, scale, thick=1):
    return cv2.getTextSize(s, FONT, scale, thick)[0][0]


def _colorbar(img, x, y, w, h, cmap, low, high, scale):
    ramp = np.linspace(0, 255, w, dtype=np.float32).astype(np.uint8).reshape(1, w)
    bar = cv2.applyColorMap(np.repeat(ramp, h, axis=0), colormap_lut(cmap))
    img[y : y + h, x : x + w] = bar
    cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), WHITE, 1)
    _text(img, low, (x, y + h + int(22 * scale)), 0.5 * scale, GREY)
    _text(img, high, (x + w - _text_w(high, 0.5 * scale), y + h + int(22 * scale)), 0.5 * scale, GREY)


# --------------------------------------------------------------------------------------------------
# Canvas
# --------------------------------------------------------------------------------------------------


def canvas_size(frame_shape: tuple[int, ...], min_height: int = 720, max_height: int = 1080) -> tuple[int, int]:
    """(w, h) of the output: the frame's aspect, at least 720 and at most 1080 pixels tall."""
    h, w = frame_shape[:2]
    th = int(min(max(h, min_height), max_height))
    tw = int(round(w * th / h))
    return tw + (tw % 2), th + (th % 2)  # even sizes keep H.264 encoders happy


def render(
    frame: np.ndarray | None,
    result=None,
    view: View | None = None,
    status: Status | None = None,
    extras: Extras | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Compose one output image (RGB uint8, C-contiguous).

    Args:
        frame: the BGR camera frame (None: no signal).
        result: the worker's :class:`~live_attention.worker.Result` for this frame, or None.
        view: what to show; status: HUD figures; extras: entropy history and flow.
        size: (w, h) of the output; by default :func:`canvas_size` of the frame.
    """
    view = view or View()
    status = status or Status()
    extras = extras or Extras()
    if frame is None:
        w, h = size or (1280, 720)
        img = np.zeros((h, w, 3), np.uint8)
        scale = h / 720.0
        _no_signal(img, status, scale)
        _hud(img, None, view, status, scale)
        return img

    w, h = size or canvas_size(frame.shape)
    scale = h / 720.0
    sy, sx = h / frame.shape[0], w / frame.shape[1]
    img = cv2.resize(frame, (w, h), interpolation=cv2.INTER_LINEAR) if (w, h) != frame.shape[1::-1] else frame
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)  # a new array: never draws into the caller's frame

    if result is not None:
        x0, y0, x1, y1 = result.box
        box = (int(round(x0 * sx)), int(round(y0 * sy)), int(round(x1 * sx)), int(round(y1 * sy)))
        if view.mode == "heads":
            _draw_heads(img, result, view, scale)
        else:
            m, caption = shown_map(result, view, extras)
            _dim_outside(img, box)
            if m is not None:
                _overlay(img, box, normalize(m), result.grid, view)
            if view.mode == "query" and view.query_patch is not None:
                _mark_patch(img, box, result.grid, view.query_patch)
            if view.mode == "norms" and result.token_norm is not None:
                layer = view.resolved_layer(result.num_layers)
                for patch in np.flatnonzero(norm_outliers(result.token_norm[layer])):
                    _mark_patch(img, box, result.grid, int(patch), color=(255, 60, 200))
            if view.mode == "entropy":
                _entropy_panels(img, result, view, extras, scale, box)
            if view.show_hud:
                _caption(img, view, caption, scale, flow_progress=status.flow_progress)
    if status.silent_s is not None and not view.frozen:  # the last picture, dimmed: it is not live any more
        cv2.convertScaleAbs(img, dst=img, alpha=0.35)
        _no_signal(img, status, scale)
    _hud(img, result, view, status, scale)
    if view.show_help:
        _help(img, scale)
    return np.ascontiguousarray(img)


def _dim_outside(img, box):
    """Dim what the model does not see (outside its centre crop) and outline what it does."""
    x0, y0, x1, y1 = box
    h, w = img.shape[:2]
    for sl in (np.s_[:y0, :], np.s_[y1:, :], np.s_[y0:y1, :x0], np.s_[y0:y1, x1:]):
        roi = img[sl]
        if roi.size:
            cv2.convertScaleAbs(roi, dst=roi, alpha=0.35)
    if (x0, y0, x1, y1) != (0, 0, w, h):
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (110, 110, 110), 1)


def _overlay(img, box, values01, grid, view):
    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    heat = heat_rgb(values01, grid, (x1 - x0, y1 - y0), view.colormap)
    roi = img[y0:y1, x0:x1]
    cv2.addWeighted(roi, 1.0 - view.opacity, heat, view.opacity, 0.0, dst=roi)


def _mark_patch(img, box, grid, patch, color=CYAN):
    x0, y0, x1, y1 = box
    r, c = divmod(patch, grid[1])
    pw, ph = (x1 - x0) / grid[1], (y1 - y0) / grid[0]
    p0 = (int(x0 + c * pw), int(y0 + r * ph))
    p1 = (int(x0 + (c + 1) * pw), int(y0 + (r + 1) * ph))
    cv2.rectangle(img, p0, p1, (0, 0, 0), 4)
    cv2.rectangle(img, p0, p1, color, 2)


def _caption(img, view, caption, scale, flow_progress=None):
    h, w = img.shape[:2]
    title = MODE_TITLES[view.mode]
    s1, s2 = 1.0 * scale, 0.62 * scale
    line2 = f"{caption}  -  {MODE_EXPLAIN[view.mode]}"
    if view.mode == "flow" and flow_progress is not None:
        line2 = f"computing attention flow... {int(flow_progress * 100)}%"
    tw = max(_text_w(title, s1, 2), _text_w(line2, s2))
    # Colour legend bottom left; the caption is centred in the space to its right.
    bw, bh = int(150 * scale), int(12 * scale)
    bx = int(16 * scale)
    low, high = ("focused", "spread") if view.mode == "entropy" else ("low", "high")
    _colorbar(img, bx, h - int(52 * scale), bw, bh, view.colormap, low, high, scale)
    left = bx + bw + int(30 * scale)
    avail = w - left - int(20 * scale)
    if tw > avail:  # a narrow canvas: shrink the caption to fit beside the legend
        s1, s2 = s1 * avail / tw, s2 * avail / tw
        tw = max(_text_w(title, s1, 2), _text_w(line2, s2))
    x = max(left, (w - tw) // 2)
    y = h - int(62 * scale)
    _panel(img, x - int(14 * scale), y - int(34 * scale), x + tw + int(14 * scale), h - int(8 * scale))
    _text(img, title, (x + (tw - _text_w(title, s1, 2)) // 2, y), s1, WHITE, 2)
    _text(img, line2, (x + (tw - _text_w(line2, s2)) // 2, y + int(34 * scale)), s2,
          YELLOW if flow_progress is not None else GREY)
    if flow_progress is not None and view.mode == "flow":
        pw = int(tw * min(1.0, max(0.0, flow_progress)))
        cv2.rectangle(img, (x, h - int(12 * scale)), (x + pw, h - int(9 * scale)), YELLOW, -1)


def _draw_heads(img, result, view, scale):
    h, w = img.shape[:2]
    layer = view.resolved_layer(result.num_layers)
    nh = result.num_heads
    gh, gw = result.grid
    aspect = gw / gh  # tiles keep the picture's shape (full-frame grids are not square)
    # Below the HUD and the top-5 panel, the full width.
    top, bottom = int(200 * scale), int(12 * scale)
    avail_h, avail_w = h - top - bottom, w - int(20 * scale)
    gap = max(2, int(6 * scale))
    best = None
    for cols in range(1, nh + 1):
        rows = math.ceil(nh / cols)
        cell_w = min(avail_w / cols, (avail_h / rows - gap) * aspect + gap)
        if best is None or cell_w > best[0]:
            best = (cell_w, cols, rows)
    cell_w, cols, rows = best
    tile_w = max(8, int(cell_w) - gap)
    tile_h = max(8, int(tile_w / aspect))
    img[:] = 18  # dark background: the tiles are the picture
    base = cv2.resize(model_rgb(result), (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    gx0 = (w - cols * (tile_w + gap)) // 2
    gy0 = top + (avail_h - rows * (tile_h + gap)) // 2
    cls = result.cls[layer]
    for hd in range(nh):
        r, c = divmod(hd, cols)
        x, y = gx0 + c * (tile_w + gap), gy0 + r * (tile_h + gap)
        heat = heat_rgb(normalize(cls[hd]), result.grid, (tile_w, tile_h), view.colormap)
        img[y : y + tile_h, x : x + tile_w] = cv2.addWeighted(base, 1.0 - view.opacity, heat, view.opacity, 0.0)
        sel = hd == view.head
        cv2.rectangle(img, (x - 1, y - 1), (x + tile_w, y + tile_h), YELLOW if sel else (60, 60, 60), 3 if sel else 1)
        label = f"head {hd + 1}"
        _panel(img, x, y, x + _text_w(label, 0.5 * scale) + int(10 * scale), y + int(24 * scale), 0.5)
        _text(img, label, (x + int(5 * scale), y + int(18 * scale)), 0.5 * scale, YELLOW if sel else WHITE)
    title = f"All {nh} heads of layer {layer + 1}/{result.num_layers}: where the class token looks"
    st = _fit(title, 0.75 * scale, 2, w - int(20 * scale))
    _text(img, title, ((w - _text_w(title, st, 2)) // 2, gy0 - int(14 * scale)), st, WHITE, 2)


def _entropy_panels(img, result, view, extras, scale, box):
    h, w = img.shape[:2]
    L, H = result.entropy.shape
    # Fit the layer x head grid into the margin right of the picture the model saw when there is one,
    # or at least into the width of its panel's title (which covers the picture anyway), so that a small
    # model's grid is still readable from the back of a room.
    title_w = _text_w("CLS entropy: layer x head", 0.5 * scale)
    room = max(w - box[2] - int(90 * scale), title_w)
    cell = min(22 * scale, (h * 0.42) / L)
    if room >= 8 * scale * H:
        cell = min(cell, room / H)
    cell = int(max(6, cell))
    pw, ph = H * cell, L * cell
    # The grid sits right; the panel is at least as wide as its title.
    x0 = min(w - pw - int(30 * scale), w - int(16 * scale) - title_w + int(50 * scale))
    y0 = int(195 * scale)
    _panel(img, x0 - int(60 * scale), y0 - int(40 * scale), w - int(10 * scale), y0 + ph + int(38 * scale), 0.7)
    _text(img, "CLS entropy: layer x head", (x0 - int(50 * scale), y0 - int(14 * scale)), 0.5 * scale, WHITE)
    ent = np.clip(result.entropy, 0.0, 1.0)
    u8 = (ent * 255).astype(np.uint8)
    grid_img = cv2.applyColorMap(u8, colormap_lut(view.colormap))
    grid_img = cv2.resize(grid_img, (pw, ph), interpolation=cv2.INTER_NEAREST)
    img[y0 : y0 + ph, x0 : x0 + pw] = grid_img
    layer = view.resolved_layer(L)
    if view.head >= 0:
        cx = x0 + min(view.head, H - 1) * cell
        cv2.rectangle(img, (cx, y0 + layer * cell), (cx + cell, y0 + (layer + 1) * cell), WHITE, 2)
    else:
        cv2.rectangle(img, (x0, y0 + layer * cell), (x0 + pw, y0 + (layer + 1) * cell), WHITE, 2)
    for li in (0, L - 1):
        _text(img, f"L{li + 1}", (x0 - int(40 * scale), y0 + li * cell + int(cell * 0.8)), 0.42 * scale, GREY)
    _axis_labels(img, "H1", f"H{H}", x0, x0 + pw, y0 + ph + int(18 * scale), 0.42 * scale)
    # Per-layer curve over the last seconds.
    hist, times = extras.entropy_history, extras.entropy_times
    if hist is None or times is None or len(hist) < 2:
        return  # a still image or the first frame: no curve yet
    cx0, cy0 = x0 - int(60 * scale), y0 + ph + int(48 * scale)
    cw, chh = w - int(10 * scale) - cx0, int(130 * scale)
    _panel(img, cx0, cy0, cx0 + cw, cy0 + chh, 0.7)
    _text(img, f"entropy per layer, last {extras.entropy_seconds:.0f} s", (cx0 + int(8 * scale), cy0 + int(18 * scale)), 0.45 * scale, WHITE)
    t_end = times[-1]
    keep = times >= t_end - extras.entropy_seconds
    hist, times = hist[keep], times[keep]
    if len(hist) < 2:
        return
    px0, py0 = cx0 + int(8 * scale), cy0 + int(26 * scale)
    pw2, ph2 = cw - int(16 * scale), chh - int(34 * scale)
    xs = px0 + (1.0 - (t_end - times) / extras.entropy_seconds) * pw2
    lut = colormap_lut("viridis")[:, 0, :]
    for li in range(hist.shape[1]):
        ys = py0 + (1.0 - np.clip(hist[:, li], 0, 1)) * ph2
        pts = np.stack([xs, ys], axis=1).astype(np.int32).reshape(-1, 1, 2)
        color = tuple(int(c) for c in lut[int(40 + 215 * li / max(1, hist.shape[1] - 1))])
        thick = 3 if li == layer else 1
        cv2.polylines(img, [pts], False, WHITE if li == layer else color, thick, cv2.LINE_AA)


def axis_labels(first: str, last: str, x0: int, x1: int, scale: float) -> list[tuple[str, int, int]]:
    """Where an axis's end labels go: ``(text, x, width)``. ``first`` under the left end and ``last``
    right-aligned under the right end; one centred ``first-last`` where the axis is too short for the
    two to stand apart (the entropy grid of a 4-head model once read "head41")."""
    w_first, w_last = _text_w(first, scale), _text_w(last, scale)
    if w_first + w_last + _text_w("  ", scale) <= x1 - x0:
        return [(first, x0, w_first), (last, x1 - w_last, w_last)]
    both = f"{first}-{last}"
    w = _text_w(both, scale)
    return [(both, (x0 + x1 - w) // 2, w)]


def _axis_labels(img, first: str, last: str, x0: int, x1: int, y: int, scale: float) -> None:
    for text, x, _ in axis_labels(first, last, x0, x1, scale):
        _text(img, text, (x, y), scale, GREY)


@dataclass(frozen=True)
class HudLayout:
    """Where the HUD's parts go on a canvas: the status panel's lines and bottom edge, the top-5 panel,
    and each of its rows with the class it names (a click on a row picks that class)."""

    lines: tuple[tuple[str, tuple[int, int, int]], ...]
    status_w: int
    status_bottom: int
    top5: tuple[int, int, int, int] | None
    rows: tuple[tuple[tuple[int, int, int, int], int], ...]  # ((x0, y0, x1, y1), class index)


def _status_lines(result, view: View, status: Status) -> list[tuple[str, tuple[int, int, int]]]:
    lines: list[tuple[str, tuple[int, int, int]]] = []
    if status.model:
        lines.append((status.model, WHITE))
    mode_line = f"mode {MODES.index(view.mode) + 1} {view.mode}"
    if result is not None:
        layer = view.resolved_layer(result.num_layers)
        layers = f"layer {layer + 1}/{result.num_layers}" if view.picks_layer else "all layers"
        mode_line += f" | {layers} | {heads_label(view, result)}"
    lines.append((mode_line, YELLOW))
    if result is not None and view.mode == "relevance" and result.classifier:
        lines.append((f"explaining: {explained(result)}", YELLOW))
    perf = []
    if status.capture_fps is not None:
        perf.append(f"capture {status.capture_fps:4.1f} fps")
    if status.infer_fps is not None:
        perf.append(f"model {status.infer_fps:4.1f} fps")
    if perf:
        lines.append(("  ".join(perf), GREY))
    perf2 = []
    if status.latency_ms is not None:
        perf2.append(f"latency {status.latency_ms:4.0f} ms")
    if status.capture_fps is not None:  # live figures only; offline renders process every frame
        perf2.append(f"dropped {status.dropped}")
    if perf2:
        lines.append(("  ".join(perf2), GREY))
    if status.source:
        lines.append((f"source {status.source}", GREY))
    if status.smoothing:
        lines.append((status.smoothing, GREY))
    if result is not None and result.num_prefix > 1 and result.prefix_share is not None:
        layer = view.resolved_layer(result.num_layers)
        share = result.prefix_share[layer]
        v = share[view.head] if 0 <= view.head < len(share) else share.mean()
        lines.append((f"class token -> other prefix tokens: {v * 100:.0f}% (layer {layer + 1})", CYAN))
    flags = []
    if status.capture_state == "ended":
        flags.append("END OF INPUT")
    if view.frozen:
        flags.append("FROZEN (model paused)" if status.capture_fps is not None else "FROZEN")
        if status.silent_s is not None:  # the frozen picture stays bright: the user is studying it
            flags.append(no_signal_text(status.silent_s))
    if view.animating:
        flags.append("ANIMATING")
    if flags:
        lines.append((" ".join(flags), CYAN))
    return lines


def hud_layout(w: int, h: int, result, view: View, status: Status) -> HudLayout:
    """The HUD's layout on a ``w``×``h`` canvas (what :func:`render` draws; the frame loop hit-tests it)."""
    scale = h / 720.0
    s = 0.55 * scale
    lh = int(24 * scale)
    lines = _status_lines(result, view, status)
    tw = max(_text_w(t, s) for t, _ in lines) + int(20 * scale)
    bottom = lh * len(lines) + int(12 * scale)
    top5, rows = None, []
    entries = _top5_entries(result)
    if entries:
        bar_w = int(120 * scale)
        tw5 = max(_text_w(n[:22], s) for n, _, _ in entries) + bar_w + int(80 * scale)
        x0, y0 = w - tw5, 0
        if x0 < tw + int(10 * scale):  # too narrow for both: under the status panel
            x0, y0 = 0, bottom + int(6 * scale)
        top5 = (x0, y0, x0 + tw5, y0 + lh * (len(entries) + 1) + int(10 * scale))
        for i, (_, _, cls) in enumerate(entries):
            y = y0 + int(20 * scale) + (i + 1) * lh
            rows.append(((x0, y - int(17 * scale), x0 + tw5, y + int(7 * scale)), cls))
    return HudLayout(tuple(lines), tw, bottom, top5, tuple(rows))


def _top5_entries(result) -> list[tuple[str, float, int]]:
    if result is None:
        return []
    if not result.classifier:
        return [("no classifier", -1.0, -1)]
    ids = result.top_ids or (-1,) * len(result.topk)  # class indices unknown: the labels are not clickable
    return [(name, p, int(i)) for (name, p), i in zip(result.topk, ids, strict=False)]


def _hud(img, result, view, status, scale):
    if not view.show_hud:
        return
    h, w = img.shape[:2]
    lay = hud_layout(w, h, result, view, status)
    s = 0.55 * scale
    lh = int(24 * scale)
    _panel(img, 0, 0, lay.status_w, lay.status_bottom)
    for i, (t, c) in enumerate(lay.lines):
        _text(img, t, (int(10 * scale), int(20 * scale) + i * lh), s, c)
    if lay.top5 is not None:
        _top5(img, lay, _top5_entries(result), result, view, status, scale)
    _banners(img, result, status, lay, scale)


def _top5(img, lay: HudLayout, entries, result, view: View, status: Status, scale: float) -> None:
    """The model's guesses with bars; the class relevance explains is outlined (and clickable)."""
    s = 0.55 * scale
    x0, y0 = lay.top5[:2]
    _panel(img, *lay.top5)
    if not result.classifier:
        _text(img, "no classifier", (x0 + int(10 * scale), y0 + int(20 * scale)), s, GREY)
        _text(img, "(features only: no class scores)", (x0 + int(10 * scale), y0 + int(44 * scale)), s * 0.8, GREY)
        return
    bar_w = int(120 * scale)
    clickable = view.mode == "relevance" and status.takes_clicks and entries[0][2] >= 0
    title = "click a class to explain it" if clickable else "model's guess"
    _text(img, title, (x0 + int(10 * scale), y0 + int(20 * scale)), s, GREY)
    explaining = result.target if view.mode == "relevance" else None
    for i, ((name, p, cls), (row, _)) in enumerate(zip(entries, lay.rows, strict=True)):
        y = row[3] - int(7 * scale)
        bx = x0 + int(10 * scale)
        cv2.rectangle(img, (bx, y - int(12 * scale)), (bx + int(bar_w * p), y + int(2 * scale)),
                      GREEN if i == 0 else (70, 130, 80), -1)
        _text(img, f"{p * 100:3.0f}%", (bx + bar_w + int(6 * scale), y), s, WHITE)
        _text(img, name[:22], (bx + bar_w + int(60 * scale), y), s, WHITE if i == 0 else GREY)
        if cls == explaining:
            cv2.rectangle(img, row[:2], (row[2] - 1, row[3]), YELLOW, max(1, int(2 * scale)))


def _banners(img, result, status: Status, lay: HudLayout, scale: float) -> None:
    """Untrained, recording, errors, messages: one under the other, below whatever they would cover."""
    w = img.shape[1]
    banners = []
    if status.untrained:
        banners.append(("UNTRAINED MODEL (random weights): these maps mean nothing", RED))
    if status.recording:
        banners.append((status.recording, RED))
    if status.error:
        banners.append((status.error, RED))
    if result is not None and result.problem:
        banners.append((result.problem, RED))
    if status.message:
        banners.append((status.message, CYAN))
    y = lay.status_bottom + int(8 * scale)
    bh = int(34 * scale)
    top5 = lay.top5
    for text, color in banners:
        sb = _fit(text, 0.6 * scale, 2, w - int(30 * scale))
        bw = _text_w(text, sb, 2) + int(24 * scale)
        if top5 is not None and top5[0] < bw and y < top5[3] and y + bh > top5[1]:
            y = top5[3] + int(8 * scale)
        cv2.rectangle(img, (0, y), (bw, y + bh), (0, 0, 0), -1)
        cv2.rectangle(img, (0, y), (int(8 * scale), y + bh), color, -1)
        _text(img, text, (int(16 * scale), y + int(24 * scale)), sb, color if color != RED else (255, 90, 90), 2)
        y += bh + int(6 * scale)


def _fit(text: str, scale: float, thick: int, max_w: int) -> float:
    """The font scale (at most ``scale``) at which ``text`` fits in ``max_w`` pixels."""
    tw = _text_w(text, scale, thick)
    return scale if tw <= max_w else scale * max_w / tw


def no_signal_text(silent_s: float | None) -> str:
    """``NO SIGNAL 8 s``: what the window, the headless line and a frozen HUD say while the source is silent."""
    return "NO SIGNAL" if silent_s is None else f"NO SIGNAL {max(1, round(silent_s))} s"


def _no_signal(img, status, scale):
    """NO SIGNAL, how long, and what the capture is doing, centred on a dark band readable across a room."""
    h, w = img.shape[:2]
    title = no_signal_text(status.silent_s)
    sub = {
        "reconnecting": "the source stopped - reconnecting...",
        "running": "the source sends nothing - waiting for it...",
        "ended": "end of input",
        "failed": "capture failed - see the log",
        "starting": "opening the source...",
    }.get(status.capture_state.lower(), status.capture_state)
    ts = _fit(title, 2.2 * scale, 4, w - int(40 * scale))
    ss = _fit(sub, 0.9 * scale, 2, w - int(40 * scale))
    _panel(img, 0, h // 2 - int(80 * scale), w, h // 2 + int(75 * scale), 0.7)
    _text(img, title, ((w - _text_w(title, ts, 4)) // 2, h // 2), ts, RED, 4)
    _text(img, sub, ((w - _text_w(sub, ss, 2)) // 2, h // 2 + int(50 * scale)), ss, GREY, 2)


def _help(img, scale):
    h, w = img.shape[:2]
    s = 0.62 * scale
    lh = int(30 * scale)
    kw = max(_text_w(k, s, 2) for k, _ in HELP_LINES)
    tw = kw + max(_text_w(v, s) for _, v in HELP_LINES) + int(60 * scale)
    th = lh * (len(HELP_LINES) + 1) + int(20 * scale)
    x0, y0 = (w - tw) // 2, (h - th) // 2
    _panel(img, x0, y0, x0 + tw, y0 + th, 0.82)
    _text(img, "Keys", (x0 + int(20 * scale), y0 + int(32 * scale)), 0.8 * scale, YELLOW, 2)
    for i, (k, v) in enumerate(HELP_LINES):
        y = y0 + int(32 * scale) + (i + 1) * lh
        _text(img, k, (x0 + int(20 * scale), y), s, YELLOW, 2)
        _text(img, v, (x0 + int(40 * scale) + kw, y), s, WHITE)


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
