"""Mode 4: attention entropy, how spread out each patch's attention is, with the layer x head grid and the
per-layer curve over the last seconds."""

from __future__ import annotations

import cv2
import numpy as np

from live_attention import names
from live_attention.core.frame_maps import patch_entropy_for
from live_attention.core.render import GREY, WHITE, axis_labels, colormap_lut, panel, text, text_w
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Mode, head_index, heads_name, layer_name, register_mode

GRID_TITLE = "CLS entropy: layer x head"


@register_mode
class Entropy(Mode):
    name = names.ENTROPY
    maps = (names.PATCH_ENTROPY,)
    key = "4"
    title = "Attention entropy"
    explain = "bright = spread out, dark = focused"
    legend = ("focused", "spread")

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        layer = view.resolved_layer(result.num_layers)
        lname = layer_name(result, view)
        pe = patch_entropy_for(result, layer)
        if pe is None:
            return None, f"{lname}: per-patch entropy not in this frame yet"
        head = head_index(result, view)
        m = pe[head] if head >= 0 else pe.mean(axis=0)
        return m, f"{lname}, {heads_name(result, view) if head >= 0 else 'heads averaged'}"

    def heads_label(self, view: View, result: Result) -> str:
        return f"head {view.head + 1}" if view.head >= 0 else "heads averaged"

    def needs_model(self, view: View, rec: Result) -> bool:
        # patch entropy was recorded for one layer only
        return rec.patch_entropy is None or view.resolved_layer(rec.num_layers) != rec.patch_entropy_layer

    def draw(self, img: np.ndarray, result: Result, view: View, extras: Extras, box: tuple[int, int, int, int],
             scale: float, shown: np.ndarray | None, caption: str) -> str | None:
        out = super().draw(img, result, view, extras, box, scale, shown, caption)
        entropy_panels(img, result, view, extras, scale, box)
        return out


def entropy_panels(img: np.ndarray, result: Result, view: View, extras: Extras, scale: float,
                   box: tuple[int, int, int, int]) -> None:
    """The layer x head grid of CLS entropy (the shown layer and head outlined), and under it each layer's
    entropy over the last seconds."""
    h, w = img.shape[:2]
    L, H = result.entropy.shape
    # Fit the layer x head grid into the margin right of the picture the model saw when there is one,
    # or at least into the width of its panel's title (which covers the picture anyway), so that a small
    # model's grid is still readable from the back of a room.
    title_w = text_w(GRID_TITLE, 0.5 * scale)
    room = max(w - box[2] - int(90 * scale), title_w)
    cell = min(22 * scale, (h * 0.42) / L)
    if room >= 8 * scale * H:
        cell = min(cell, room / H)
    cell = int(max(6, cell))
    pw, ph = H * cell, L * cell
    # The grid sits right; the panel is at least as wide as its title.
    x0 = min(w - pw - int(30 * scale), w - int(16 * scale) - title_w + int(50 * scale))
    y0 = int(195 * scale)
    panel(img, x0 - int(60 * scale), y0 - int(40 * scale), w - int(10 * scale), y0 + ph + int(38 * scale), 0.7)
    text(img, GRID_TITLE, (x0 - int(50 * scale), y0 - int(14 * scale)), 0.5 * scale, WHITE)
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
        text(img, f"L{li + 1}", (x0 - int(40 * scale), y0 + li * cell + int(cell * 0.8)), 0.42 * scale, GREY)
    for label, x, _ in axis_labels("H1", f"H{H}", x0, x0 + pw, 0.42 * scale):
        text(img, label, (x, y0 + ph + int(18 * scale)), 0.42 * scale, GREY)
    _curves(img, extras, layer, x0 - int(60 * scale), y0 + ph + int(48 * scale), scale)


def _curves(img: np.ndarray, extras: Extras, layer: int, cx0: int, cy0: int, scale: float) -> None:
    """Each layer's CLS entropy over the last seconds (the shown layer white and thick)."""
    w = img.shape[1]
    hist, times = extras.entropy_history, extras.entropy_times
    if hist is None or times is None or len(hist) < 2:
        return  # a still image or the first frame: no curve yet
    cw, chh = w - int(10 * scale) - cx0, int(130 * scale)
    panel(img, cx0, cy0, cx0 + cw, cy0 + chh, 0.7)
    text(img, f"entropy per layer, last {extras.entropy_seconds:.0f} s", (cx0 + int(8 * scale), cy0 + int(18 * scale)),
         0.45 * scale, WHITE)
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
