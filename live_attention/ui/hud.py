"""The HUD: the status panel, the model's top-5, the banners, the caption under the map, NO SIGNAL and
the help, drawn over a composed picture (:func:`live_attention.ui.frame.render`).

What each mode adds (its title, explanation, legend, heads line, extra lines) comes from
:mod:`live_attention.modes`; the keys of the help from :mod:`live_attention.ui.keys`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from live_attention.core.render import (
    CYAN,
    GREEN,
    GREY,
    RED,
    WHITE,
    YELLOW,
    colorbar,
    fit,
    panel,
    text,
    text_w,
)
from live_attention.datatypes import Result, Status, View
from live_attention.modes import mode
from live_attention.ui.keys import help_lines


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
    shown = mode(view.mode)
    mode_line = f"mode {shown.key} {view.mode}"
    if result is not None:
        layer = view.resolved_layer(result.num_layers)
        layers = f"layer {layer + 1}/{result.num_layers}" if shown.picks_layer else "all layers"
        mode_line += f" | {layers} | {shown.heads_label(view, result)}"
    lines.append((mode_line, YELLOW))
    if result is not None:
        lines.extend((line, YELLOW) for line in shown.hud_lines(result))
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
    tw = max(text_w(t, s) for t, _ in lines) + int(20 * scale)
    bottom = lh * len(lines) + int(12 * scale)
    top5, rows = None, []
    entries = _top5_entries(result)
    if entries:
        bar_w = int(120 * scale)
        tw5 = max(text_w(n[:22], s) for n, _, _ in entries) + bar_w + int(80 * scale)
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


def draw_hud(img: np.ndarray, result: Result | None, view: View, status: Status, scale: float) -> None:
    """The status panel, the top-5 and the banners (nothing when the view hides the HUD)."""
    if not view.show_hud:
        return
    h, w = img.shape[:2]
    lay = hud_layout(w, h, result, view, status)
    s = 0.55 * scale
    lh = int(24 * scale)
    panel(img, 0, 0, lay.status_w, lay.status_bottom)
    for i, (t, c) in enumerate(lay.lines):
        text(img, t, (int(10 * scale), int(20 * scale) + i * lh), s, c)
    if lay.top5 is not None:
        _top5(img, lay, lay.top5, _top5_entries(result), result, view, status, scale)
    _banners(img, result, status, lay, scale)


def _top5(img, lay: HudLayout, box: tuple[int, int, int, int], entries, result, view: View, status: Status, scale: float) -> None:
    """The model's guesses with bars in ``box``; the class relevance explains is outlined (and clickable)."""
    s = 0.55 * scale
    x0, y0 = box[:2]
    panel(img, *box)
    if not result.classifier:
        text(img, "no classifier", (x0 + int(10 * scale), y0 + int(20 * scale)), s, GREY)
        text(img, "(features only: no class scores)", (x0 + int(10 * scale), y0 + int(44 * scale)), s * 0.8, GREY)
        return
    bar_w = int(120 * scale)
    explains = mode(view.mode).explains_class
    clickable = explains and status.takes_clicks and entries[0][2] >= 0
    title = "click a class to explain it" if clickable else "model's guess"
    text(img, title, (x0 + int(10 * scale), y0 + int(20 * scale)), s, GREY)
    explaining = result.target if explains else None
    for i, ((name, p, cls), (row, _)) in enumerate(zip(entries, lay.rows, strict=True)):
        y = row[3] - int(7 * scale)
        bx = x0 + int(10 * scale)
        cv2.rectangle(img, (bx, y - int(12 * scale)), (bx + int(bar_w * p), y + int(2 * scale)),
                      GREEN if i == 0 else (70, 130, 80), -1)
        text(img, f"{p * 100:3.0f}%", (bx + bar_w + int(6 * scale), y), s, WHITE)
        text(img, name[:22], (bx + bar_w + int(60 * scale), y), s, WHITE if i == 0 else GREY)
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
    for banner, color in banners:
        sb = fit(banner, 0.6 * scale, 2, w - int(30 * scale))
        bw = text_w(banner, sb, 2) + int(24 * scale)
        if top5 is not None and top5[0] < bw and y < top5[3] and y + bh > top5[1]:
            y = top5[3] + int(8 * scale)
        cv2.rectangle(img, (0, y), (bw, y + bh), (0, 0, 0), -1)
        cv2.rectangle(img, (0, y), (int(8 * scale), y + bh), color, -1)
        text(img, banner, (int(16 * scale), y + int(24 * scale)), sb, color if color != RED else (255, 90, 90), 2)
        y += bh + int(6 * scale)


def no_signal_text(silent_s: float | None) -> str:
    """``NO SIGNAL 8 s``: what the window, the headless line and a frozen HUD say while the source is silent."""
    return "NO SIGNAL" if silent_s is None else f"NO SIGNAL {max(1, round(silent_s))} s"


def draw_no_signal(img: np.ndarray, status: Status, scale: float) -> None:
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
    ts = fit(title, 2.2 * scale, 4, w - int(40 * scale))
    ss = fit(sub, 0.9 * scale, 2, w - int(40 * scale))
    panel(img, 0, h // 2 - int(80 * scale), w, h // 2 + int(75 * scale), 0.7)
    text(img, title, ((w - text_w(title, ts, 4)) // 2, h // 2), ts, RED, 4)
    text(img, sub, ((w - text_w(sub, ss, 2)) // 2, h // 2 + int(50 * scale)), ss, GREY, 2)


def draw_help(img: np.ndarray, scale: float) -> None:
    """The keys, centred over the picture."""
    h, w = img.shape[:2]
    s = 0.62 * scale
    lh = int(30 * scale)
    lines = help_lines()
    kw = max(text_w(k, s, 2) for k, _ in lines)
    tw = kw + max(text_w(v, s) for _, v in lines) + int(60 * scale)
    th = lh * (len(lines) + 1) + int(20 * scale)
    x0, y0 = (w - tw) // 2, (h - th) // 2
    panel(img, x0, y0, x0 + tw, y0 + th, 0.82)
    text(img, "Keys", (x0 + int(20 * scale), y0 + int(32 * scale)), 0.8 * scale, YELLOW, 2)
    for i, (k, v) in enumerate(lines):
        y = y0 + int(32 * scale) + (i + 1) * lh
        text(img, k, (x0 + int(20 * scale), y), s, YELLOW, 2)
        text(img, v, (x0 + int(40 * scale) + kw, y), s, WHITE)


def draw_caption(img: np.ndarray, view: View, caption: str, scale: float, flow_progress: float | None = None) -> None:
    """The mode's title, the map's caption and what it means, beside the colour legend; while the map is
    computed later (flow), its progress."""
    h, w = img.shape[:2]
    shown = mode(view.mode)
    title = shown.title
    s1, s2 = 1.0 * scale, 0.62 * scale
    line2 = f"{caption}  -  {shown.explain}"
    progress = flow_progress if shown.progress is not None else None
    if progress is not None:
        line2 = f"{shown.progress} {int(progress * 100)}%"
    tw = max(text_w(title, s1, 2), text_w(line2, s2))
    # Colour legend bottom left; the caption is centred in the space to its right.
    bw, bh = int(150 * scale), int(12 * scale)
    bx = int(16 * scale)
    low, high = shown.legend
    colorbar(img, bx, h - int(52 * scale), bw, bh, view.colormap, low, high, scale)
    left = bx + bw + int(30 * scale)
    avail = w - left - int(20 * scale)
    for _ in range(8):  # a narrow canvas: shrink the caption until it fits beside the legend (a font's
        if tw <= avail:  # width is not exactly proportional to its scale, hence a few steps)
            break
        shrink = min(0.97, avail / tw)
        s1, s2 = s1 * shrink, s2 * shrink
        tw = max(text_w(title, s1, 2), text_w(line2, s2))
    x = max(left, (w - tw) // 2)
    y = h - int(62 * scale)
    panel(img, x - int(14 * scale), y - int(34 * scale), x + tw + int(14 * scale), h - int(8 * scale))
    text(img, title, (x + (tw - text_w(title, s1, 2)) // 2, y), s1, WHITE, 2)
    text(img, line2, (x + (tw - text_w(line2, s2)) // 2, y + int(34 * scale)), s2,
          YELLOW if flow_progress is not None else GREY)
    if progress is not None:
        pw = int(tw * min(1.0, max(0.0, progress)))
        cv2.rectangle(img, (x, h - int(12 * scale)), (x + pw, h - int(9 * scale)), YELLOW, -1)


