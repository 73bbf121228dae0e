"""Mode 3: every head's class-token attention in one layer, side by side (a chosen head outlined)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from live_attention import names
from live_attention.core.render import WHITE, YELLOW, fit, heat_rgb, model_rgb, normalize, panel, text, text_w
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.attention import cls_map
from live_attention.modes.base import Mode, register_mode


@register_mode
class Heads(Mode):
    name = names.HEADS
    key = "3"
    title = "All heads"
    explain = "each head's class-token attention in this layer"
    one_map = False
    smoothed = False

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        return cls_map(result, view)

    def heads_label(self, view: View, result: Result) -> str:
        # every head is drawn; a chosen one is outlined
        return f"all {result.num_heads} heads" + (f", head {view.head + 1} marked" if view.head >= 0 else "")

    def draw(self, img: np.ndarray, result: Result, view: View, extras: Extras, box: tuple[int, int, int, int],
             scale: float, shown: np.ndarray | None, caption: str) -> str | None:
        draw_heads(img, result, view, scale)
        return None  # the tiles carry their own title


def draw_heads(img: np.ndarray, result: Result, view: View, scale: float) -> None:
    """Every head of the view's layer as a tile over the picture the model saw, below the HUD."""
    h, w = img.shape[:2]
    layer = view.resolved_layer(result.num_layers)
    nh = result.num_heads
    gh, gw = result.grid
    aspect = gw / gh  # tiles keep the picture's shape (full-frame grids are not square)
    # Below the HUD, the top-5 panel and one banner under it (UNTRAINED, REC), the full width.
    top, bottom = int(218 * scale), int(12 * scale)
    avail_h, avail_w = h - top - bottom, w - int(20 * scale)
    gap = max(2, int(6 * scale))
    best = None
    for cols in range(1, nh + 1):
        rows = math.ceil(nh / cols)
        cell_w = min(avail_w / cols, (avail_h / rows - gap) * aspect + gap)
        if best is None or cell_w > best[0]:
            best = (cell_w, cols, rows)
    assert best is not None
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
        panel(img, x, y, x + text_w(label, 0.5 * scale) + int(10 * scale), y + int(24 * scale), 0.5)
        text(img, label, (x + int(5 * scale), y + int(18 * scale)), 0.5 * scale, YELLOW if sel else WHITE)
    title = f"All {nh} heads of layer {layer + 1}/{result.num_layers}: where the class token looks"
    st = fit(title, 0.75 * scale, 2, w - int(20 * scale))
    text(img, title, ((w - text_w(title, st, 2)) // 2, gy0 - int(14 * scale)), st, WHITE, 2)
