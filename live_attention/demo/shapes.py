"""The demo world's drawing: the four shapes as polygons, drawn filled and outlined with sub-pixel
precision, their colours, and the textured background. :mod:`live_attention.demo.synthetic` composes them
into still scenes (the training set) and the animated scene of the live ``demo`` source."""

from __future__ import annotations

import math

import cv2
import numpy as np

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
SHIFT = 4  # fixed-point bits for OpenCV's sub-pixel drawing


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def shape_polygon(label: int, cx: float, cy: float, r: float, theta: float) -> np.ndarray:
    """Vertices (float, K×2) of shape ``label`` with circumradius ``r`` centred on (cx, cy), rotated."""
    name = CLASS_NAMES[label]
    a: np.ndarray  # vertex angles
    rad: np.ndarray  # vertex radii
    if name == "circle":
        a = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
        rad = np.full_like(a, r * 0.9)  # a circle fills its radius; shrink so areas stay comparable
    elif name == "square":
        a = np.arange(4) * (math.pi / 2) + math.pi / 4
        rad = np.full(4, r * 0.95)
    elif name == "triangle":
        a = np.arange(3) * (2 * math.pi / 3) - math.pi / 2
        rad = np.full(3, r * 1.05)
        cy = cy + 0.2 * r  # centre the triangle's box, not its circumcentre
    elif name == "cross":
        w = 0.36
        pts = np.array(
            [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
             (-w, -w)], dtype=np.float64,
        ) * (r * 0.8)
        c, s = math.cos(theta), math.sin(theta)
        rot = pts @ np.array([[c, s], [-s, c]])
        return rot + np.array([cx, cy])
    else:  # pragma: no cover - CLASS_NAMES and this function change together
        raise ValueError(f"unknown shape {name!r}")
    a = a + theta
    return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], axis=1)


def fixed_points(pts: np.ndarray) -> np.ndarray:
    return np.round(pts * (1 << SHIFT)).astype(np.int32).reshape(-1, 1, 2)


def draw_shape(
    img: np.ndarray,
    poly: np.ndarray,
    fill: tuple[int, int, int] | None,
    outline: tuple[int, int, int] | None,
    thickness: int,
    mask: np.ndarray | None = None,
) -> None:
    """Fill and/or outline ``poly`` on ``img`` (and, when given, on the uint8 ``mask`` with 255)."""
    p = fixed_points(poly)
    if fill is not None:
        cv2.fillPoly(img, [p], fill, lineType=cv2.LINE_AA, shift=SHIFT)
        if mask is not None:
            cv2.fillPoly(mask, [p], 255, lineType=cv2.LINE_8, shift=SHIFT)
    if outline is not None and thickness > 0:
        cv2.polylines(img, [p], True, outline, thickness=thickness, lineType=cv2.LINE_AA, shift=SHIFT)
        if mask is not None:
            cv2.polylines(mask, [p], True, 255, thickness=thickness, lineType=cv2.LINE_8, shift=SHIFT)


def hsv_to_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    px = np.array([[[int(h) % 180, int(np.clip(s, 0, 255)), int(np.clip(v, 0, 255))]]], dtype=np.uint8)
    b, g, r = cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def target_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A bright, fully saturated fill of random hue (BGR)."""
    return hsv_to_bgr(rng.uniform(0, 180), rng.uniform(225, 255), rng.uniform(215, 255))


def dull_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(55, 150))


def outline_grey(rng: np.random.Generator) -> tuple[int, int, int]:
    g = int(rng.uniform(200, 255))
    return (g, g, g)


# --------------------------------------------------------------------------------------------------
# Background
# --------------------------------------------------------------------------------------------------


def background(rng: np.random.Generator, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """A textured float32 BGR background: low-frequency colour blobs and faint lines (no noise).

    ``scale`` is output pixels per model pixel; line widths follow it.
    """
    gh, gw = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    base = rng.uniform(40, 200, size=3)
    grid = base + rng.normal(0, 45, size=(gh, gw, 3))
    grey = grid.mean(-1, keepdims=True)
    grid = grey + rng.uniform(0.3, 0.7) * (grid - grey)  # keep blobs well below a target's saturation
    # The colour field is smooth: build it on a coarse grid, then resize once.
    ch = 16
    cw = max(4, int(round(ch * width / height)))
    field = cv2.resize(grid.astype(np.float32), (cw, ch), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float32) + 0.5
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, cw), rng.uniform(0, ch)
        sig = rng.uniform(0.12, 0.3) * min(ch, cw)
        amp = rng.normal(0, 40, size=3).astype(np.float32)
        g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sig * sig))
        field += g[..., None] * amp
    img = cv2.resize(field, (width, height), interpolation=cv2.INTER_CUBIC)
    # faint lines
    for _ in range(int(rng.integers(2, 6))):
        p0 = (rng.uniform(-0.2, 1.2) * width, rng.uniform(-0.2, 1.2) * height)
        p1 = (rng.uniform(-0.2, 1.2) * width, rng.uniform(-0.2, 1.2) * height)
        layer = np.zeros((height, width), np.uint8)
        t = max(1, int(round(rng.uniform(0.6, 1.6) * scale)))
        cv2.line(layer, _pt(p0), _pt(p1), 255, thickness=t, lineType=cv2.LINE_AA, shift=SHIFT)
        alpha = rng.uniform(0.15, 0.4) * layer.astype(np.float32)[..., None] / 255.0
        col = rng.uniform(0, 255) if rng.random() < 0.5 else rng.uniform(0, 255, size=3)
        img = img * (1 - alpha) + alpha * np.asarray(col, np.float32)
    return np.clip(img, 0, 255).astype(np.float32)


def _pt(p: tuple[float, float]) -> tuple[int, int]:
    return int(round(p[0] * (1 << SHIFT))), int(round(p[1] * (1 << SHIFT)))
