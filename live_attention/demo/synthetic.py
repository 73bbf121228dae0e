"""Synthetic scenes for the demo model: one to three target shapes among look-alikes on a busy background.

Pure numpy and OpenCV. The task, at the model's input size (64 px by default):

* **Classes** (:data:`CLASS_NAMES`) are shapes: circle, square, triangle, cross, drawn nearly upright.
* **Targets** are the objects drawn in the *target style*: a bright, fully saturated fill of a random hue
  **and** a thick white outline. A scene holds 1 to :data:`MAX_TARGETS` of them, each of a different class;
  the labels are multi-hot (which shapes appear in the target style).
* **Distractors** (2 to 4, as many as fit) are the same four shapes, at the same sizes, in one of two decoy
  styles: *hollow* (a white/light-grey outline around the background, no fill) or *dull* (a dim, desaturated
  fill, no outline). Neither the outline alone nor a fill alone marks a target, and every shape occurs among
  the distractors, so the model has to find the targets before it can name them.
* **Background**: low-frequency colour blobs (moderately saturated, so never as vivid as a target), a few
  faint lines and pixel noise over everything, objects included.

No two objects overlap and none is clipped by the border. Scenes may be square or not (``size=(h, w)``);
object sizes follow the shorter side, as a full-frame view of a camera picture resized to a shorter side of
:data:`MODEL_SIZE` would show them. Images are rendered at 2× and downsampled with area averaging
(anti-aliased edges). Each target's box is the tight box of the output pixels its mask touches,
``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive.

:class:`DemoScene` animates the same world at camera size for the live ``demo`` source: a drifting background,
1-3 targets circling the centre on a wobbling orbit (evenly spaced, so they never overlap) whose classes and
number change every few seconds, and distractors on slow Lissajous paths, all inside the central square that
the model's centre crop sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from live_attention.demo.shapes import (
    CLASS_NAMES,
    SHIFT,
    background,
    draw_shape,
    dull_colour,
    fixed_points,
    hsv_to_bgr,
    outline_grey,
    shape_polygon,
    target_colour,
)

NUM_CLASSES = len(CLASS_NAMES)
MAX_TARGETS = 3  # a scene holds 1 to MAX_TARGETS targets, each of a different class
MODEL_SIZE = 64  # the demo model's input size, in pixels; object sizes below are in these units

# Object circumradius range in model pixels: target boxes of 13-25 px, about 1.6-3 patches of 8 px.
TARGET_RADIUS = (8.0, 11.5)
DISTRACTOR_RADIUS = (6.5, 11.0)
MAX_TILT = math.radians(8)  # shapes are drawn upright (or flipped/transposed by augmentation), tilted a little
_SUPERSAMPLE = 2
Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------------------------------
# Still scenes
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Scene:
    """One still scene.

    Attributes:
        image: BGR uint8 ``h``×``w``×3.
        labels: multi-hot int64 [C]: 1 for each class drawn in the target style.
        boxes: int64 [C, 4]: each present class's box (x0, y0, x1, y1; x1/y1 exclusive); (0, 0, 0, 0), an empty
            box, for an absent class.
    """

    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class _Obj:
    label: int
    r: float
    theta: float
    thickness: int
    reach: float  # radius around (cx, cy) that holds every pixel the object draws, outline included
    cx: float = 0.0
    cy: float = 0.0

    def polygon(self) -> np.ndarray:
        return shape_polygon(self.label, self.cx, self.cy, self.r, self.theta)


def _shape(rng: np.random.Generator, label: int, r: float) -> _Obj:
    """Shape ``label`` of circumradius ``r`` with a random tilt and outline thickness, not yet placed."""
    theta = float(rng.uniform(-MAX_TILT, MAX_TILT))
    th = max(1, int(round(r * rng.uniform(0.14, 0.22))))
    reach = float(np.hypot(*shape_polygon(label, 0.0, 0.0, r, theta).T).max()) + th / 2 + 1.0
    return _Obj(label, r, theta, th, reach)


def _place(rng: np.random.Generator, obj: _Obj, h: int, w: int, others: list[_Obj], gap: float) -> _Obj | None:
    """``obj`` at a random spot wholly inside ``h``×``w`` and more than ``gap`` clear of ``others``, or None."""
    m = obj.reach
    if 2 * m >= min(h, w):
        return None
    for _ in range(40):
        cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
        if all(math.hypot(cx - o.cx, cy - o.cy) > m + o.reach + gap for o in others):
            return replace(obj, cx=float(cx), cy=float(cy))
    return None


def _place_targets(rng: np.random.Generator, labels: list[int], h: int, w: int, k: float) -> list[_Obj]:
    """One target per label, none overlapping; a layout that does not fit is drawn again with new sizes."""
    for _ in range(200):
        placed: list[_Obj] = []
        for label in labels:
            o = _place(rng, _shape(rng, label, rng.uniform(*TARGET_RADIUS) * k), h, w, placed, gap=2.0 * k)
            if o is None:
                break
            placed.append(o)
        else:
            return placed
    raise RuntimeError(f"cannot fit {len(labels)} targets in a {w}×{h} scene")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(h, w) < 16:
        raise ValueError(f"scene too small: {w}×{h} (height and width must be at least 16)")
    return h, w


def make_scene(
    rng: np.random.Generator, size: int | tuple[int, int] = MODEL_SIZE, num_targets: int | None = None
) -> Scene:
    """One scene of ``size`` (an int for a square, or (height, width)) with ``num_targets`` targets of different
    classes (None: 1 to :data:`MAX_TARGETS`, uniformly) and 2-4 distractors where they fit.

    Object sizes scale with the shorter side: ``min(h, w) / MODEL_SIZE`` output pixels per model pixel.
    """
    h, w = _hw(size)
    n = int(rng.integers(1, MAX_TARGETS + 1)) if num_targets is None else int(num_targets)
    if not 1 <= n <= NUM_CLASSES:
        raise ValueError(f"num_targets must be 1..{NUM_CLASSES}, got {num_targets}")
    ss = _SUPERSAMPLE
    k = min(h, w) / MODEL_SIZE * ss  # supersampled pixels per model pixel
    bh, bw = h * ss, w * ss
    img = background(rng, bh, bw, scale=k).astype(np.uint8)
    labels = [int(c) for c in rng.choice(NUM_CLASSES, size=n, replace=False)]
    targets = _place_targets(rng, labels, bh, bw, k)
    placed = list(targets)
    for _ in range(int(rng.integers(2, 5))):
        d = _place(rng, _shape(rng, int(rng.integers(NUM_CLASSES)), rng.uniform(*DISTRACTOR_RADIUS) * k),
                   bh, bw, placed, gap=1.0 * k)
        if d is None:
            continue
        placed.append(d)
        if rng.random() < 0.5:  # hollow: outline only
            draw_shape(img, d.polygon(), None, outline_grey(rng), d.thickness)
        else:  # dull fill, no outline
            draw_shape(img, d.polygon(), dull_colour(rng), None, 0)
    multi_hot = np.zeros(NUM_CLASSES, np.int64)
    boxes = np.zeros((NUM_CLASSES, 4), np.int64)
    for t in targets:
        mask = np.zeros((bh, bw), np.uint8)
        draw_shape(img, t.polygon(), target_colour(rng), outline_grey(rng), t.thickness, mask=mask)
        multi_hot[t.label] = 1
        boxes[t.label] = _mask_box(mask, ss)
    out = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    noise = rng.normal(0, rng.uniform(4, 12), size=out.shape)
    out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return Scene(out, multi_hot, boxes)


def _mask_box(mask: np.ndarray, ss: int) -> Box:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()) // ss, int(ys.min()) // ss, -(-(int(xs.max()) + 1) // ss), -(-(int(ys.max()) + 1) // ss))


def make_dataset(
    n: int, size: int | tuple[int, int] = MODEL_SIZE, seed: int = 0, num_targets: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` scenes from :func:`make_scene`, deterministic per ``seed``: images uint8 [n, h, w, 3] (BGR),
    multi-hot labels int64 [n, C], per-class boxes int64 [n, C, 4] ((0, 0, 0, 0) for absent classes)."""
    h, w = _hw(size)
    rng = np.random.default_rng(seed)
    images = np.empty((n, h, w, 3), np.uint8)
    labels = np.empty((n, NUM_CLASSES), np.int64)
    boxes = np.empty((n, NUM_CLASSES, 4), np.int64)
    for i in range(n):
        s = make_scene(rng, (h, w), num_targets)
        images[i], labels[i], boxes[i] = s.image, s.labels, s.boxes
    return images, labels, boxes


# --------------------------------------------------------------------------------------------------
# Animated scene
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoTarget:
    """A target as drawn at time ``t``: class, box (x0, y0, x1, y1; x1/y1 exclusive) and fill colour (BGR)."""

    label: int
    box: Box
    fill: tuple[int, int, int]


@dataclass(frozen=True)
class _Orbit:
    """The one orbit the targets share: mean turns per second ``w``, angular wobble ``wa`` (radians) at
    ``wf`` Hz, radius oscillation at ``rf`` Hz, and three phases ``p``."""

    w: float
    wa: float
    wf: float
    rf: float
    p: np.ndarray


@dataclass(frozen=True)
class _Mover:
    """A target on the orbit: radius, tilt wobble (Hz), first class and hue; the class and hue advance
    each class period."""

    r: float
    wobble: float
    label0: int
    hue0: float


@dataclass(frozen=True)
class _Distractor:
    """A distractor on its own Lissajous path (``fx``, ``fy`` Hz; ``px``, ``py`` phases): hollow ones are
    an outline of ``colour`` and ``thick`` pixels, the others filled with ``dull``."""

    label: int
    r: float
    fx: float
    fy: float
    px: float
    py: float
    wobble: float
    theta: float
    hollow: bool
    colour: tuple[int, int, int]
    dull: tuple[int, int, int]
    thick: int


# An object as drawn: (identity, polygon, filled, outline thickness (0: none), centre).
_Drawn = tuple[tuple[object, ...], np.ndarray, bool, int, tuple[float, float]]


class DemoScene:
    """Moving synthetic objects for the live ``demo`` source; ``frame(t)`` is a pure function of ``t``.

    Everything moves inside the central ``min(width, height)`` square, the part a centre crop keeps, at a
    size that matches the training scenes once that square is resized to :data:`MODEL_SIZE`. Up to
    ``num_targets`` (1-3) targets of different classes share one orbit, evenly spaced so they never overlap;
    each class period (``period`` seconds) every target changes class and the number shown changes:
    all of them in the first period, then one, two, ... up to ``num_targets`` again.
    """

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        seed: int = 0,
        num_targets: int = MAX_TARGETS,
        num_distractors: int = 3,
        period: float = 4.0,
    ) -> None:
        if width < 32 or height < 32:
            raise ValueError(f"demo scene too small: {width}×{height}")
        if not 1 <= num_targets <= MAX_TARGETS:
            raise ValueError(f"num_targets must be 1..{MAX_TARGETS}, got {num_targets}")
        self.num_targets = int(num_targets)
        self.width, self.height, self.seed = int(width), int(height), int(seed)
        self.period = float(period)
        self.side = min(self.width, self.height)
        self.k = self.side / MODEL_SIZE  # frame pixels per model pixel
        self.x_off = (self.width - self.side) / 2.0
        self.y_off = (self.height - self.side) / 2.0
        rng = np.random.default_rng(self.seed)
        pad = int(round(0.15 * max(self.width, self.height)))
        self._pad = pad
        bg = background(rng, self.height + 2 * pad, self.width + 2 * pad, scale=self.k)
        # static grain at model resolution, so it survives the model's antialiased downscale
        gh, gw = math.ceil(bg.shape[0] / self.k), math.ceil(bg.shape[1] / self.k)
        grain: np.ndarray = rng.normal(0, 6, size=(gh, gw, 3)).astype(np.float32)
        grain = cv2.resize(grain, (bg.shape[1], bg.shape[0]), interpolation=cv2.INTER_NEAREST)
        self._bg = np.clip(bg + grain, 0, 255).astype(np.float32)
        self._bg_phase = rng.uniform(0, 2 * math.pi, size=2)
        # Targets share one orbit around the centre, evenly spaced, so they never overlap.
        self._orbit = _Orbit(
            w=rng.uniform(0.04, 0.06) * rng.choice([-1.0, 1.0]),  # mean turns per second
            wa=rng.uniform(0.6, 1.0),  # angular wobble, radians
            wf=rng.uniform(0.05, 0.08),
            rf=rng.uniform(0.09, 0.13),  # radius oscillation, Hz
            p=rng.uniform(0, 2 * math.pi, size=3),
        )
        self._targets: list[_Mover] = []
        first_label = int(rng.integers(NUM_CLASSES))
        for i in range(num_targets):
            self._targets.append(
                _Mover(
                    r=rng.uniform(9.5, 11.0) * self.k,
                    wobble=rng.uniform(0.1, 0.25),
                    label0=first_label + i,  # all change class together, so they never share one
                    hue0=rng.uniform(0, 180),
                )
            )
        self._distractors: list[_Distractor] = []
        for _ in range(num_distractors):
            self._distractors.append(
                _Distractor(
                    label=int(rng.integers(NUM_CLASSES)),
                    r=rng.uniform(*DISTRACTOR_RADIUS) * self.k,
                    fx=rng.uniform(0.04, 0.1),
                    fy=rng.uniform(0.04, 0.1),
                    px=rng.uniform(0, 2 * math.pi),
                    py=rng.uniform(0, 2 * math.pi),
                    wobble=rng.uniform(0.05, 0.2),
                    theta=rng.uniform(0, 2 * math.pi),
                    hollow=bool(rng.random() < 0.5),
                    colour=outline_grey(rng),
                    dull=dull_colour(rng),
                    thick=max(1, int(round(0.2 * 8.0 * self.k))),
                )
            )

    # ---------------------------------------------------------------------------------------------
    def _pos(self, d: _Distractor, r: float, t: float) -> tuple[float, float]:
        margin = r * 1.15 + 0.02 * self.side
        half = self.side / 2.0 - margin
        cx = self.x_off + self.side / 2.0 + half * math.sin(2 * math.pi * d.fx * t + d.px)
        cy = self.y_off + self.side / 2.0 + half * math.sin(2 * math.pi * d.fy * t + d.py)
        return cx, cy

    def _orbit_pos(self, i: int, r: float, t: float) -> tuple[float, float]:
        o = self._orbit
        margin = r * 1.15 + 0.02 * self.side
        r_max = self.side / 2.0 - margin  # the whole shape stays inside the central square
        # Targets 2π/n apart at radii >= 1.3 r / sin(π/n) are more than 1.3 (r_i + r_j) apart, which clears
        # every shape's reach (at most 1.25 r, outline included).
        n = max(2, self.num_targets)
        r_min = min(r_max, 1.3 * r / math.sin(math.pi / n))
        rho = r_min + (r_max - r_min) * 0.5 * (1 + math.sin(2 * math.pi * o.rf * t + o.p[0]))
        phi = 2 * math.pi * o.w * t + o.wa * math.sin(2 * math.pi * o.wf * t + o.p[1]) + o.p[2]
        phi += 2 * math.pi * i / n
        cx = self.x_off + self.side / 2.0 + rho * math.cos(phi)
        cy = self.y_off + self.side / 2.0 + rho * math.sin(phi)
        return cx, cy

    def _visible(self, i: int, t: float) -> bool:
        cycle = int(math.floor(t / self.period))
        return i < 1 + (cycle - 1) % self.num_targets  # all, then 1, 2, ... per class period

    def targets(self, t: float) -> list[DemoTarget]:
        """The visible targets at time ``t``, in drawing order."""
        return [tgt for _poly, _th, tgt in self._target_geometry(t)]

    def target_boxes(self, t: float) -> list[tuple[int, Box]]:
        """Ground truth at time ``t``: ``[(label, (x0, y0, x1, y1)), ...]`` in frame pixels."""
        return [(tg.label, tg.box) for tg in self.targets(t)]

    def _visible_targets(self, t: float) -> list[tuple[int, int, float, float, np.ndarray, int]]:
        """The targets on screen at ``t``: (index, class, centre x, centre y, polygon, outline thickness)."""
        out = []
        cycle = int(math.floor(t / self.period))
        for i, d in enumerate(self._targets):
            if not self._visible(i, t):
                continue
            label = (d.label0 + cycle) % NUM_CLASSES
            cx, cy = self._orbit_pos(i, d.r, t)
            poly = shape_polygon(label, cx, cy, d.r, MAX_TILT * math.sin(2 * math.pi * d.wobble * t))
            out.append((i, label, cx, cy, poly, max(1, int(round(0.18 * d.r)))))
        return out

    def _target_geometry(self, t: float) -> list[tuple[np.ndarray, int, DemoTarget]]:
        out = []
        cycle = int(math.floor(t / self.period))
        for i, label, _cx, _cy, poly, th in self._visible_targets(t):
            fill = hsv_to_bgr(self._targets[i].hue0 + 37 * cycle, 255, 245)
            mask = np.zeros((self.height, self.width), np.uint8)
            pts = fixed_points(poly)
            cv2.fillPoly(mask, [pts], 255, lineType=cv2.LINE_8, shift=SHIFT)
            cv2.polylines(mask, [pts], True, 255, thickness=th, lineType=cv2.LINE_8, shift=SHIFT)
            out.append((poly, th, DemoTarget(label, _mask_box(mask, 1), fill)))
        return out

    # ---------------------------------------------------------------------------------------------
    def _bg_shift(self, t: float) -> tuple[float, float]:
        pad = self._pad
        return (pad * 0.8 * math.sin(2 * math.pi * 0.03 * t + self._bg_phase[0]),
                pad * 0.8 * math.sin(2 * math.pi * 0.023 * t + self._bg_phase[1]))

    def _objects(self, t: float) -> list[_Drawn]:
        """What :meth:`frame` draws over the background at ``t``, in drawing order: (identity, polygon,
        filled, outline thickness (0: none), centre). A target's identity holds its class, so a target
        that changes class is a new object."""
        out: list[_Drawn] = []
        for i, d in enumerate(self._distractors):
            cx, cy = self._pos(d, d.r, t)
            poly = shape_polygon(d.label, cx, cy, d.r, MAX_TILT * math.sin(2 * math.pi * d.wobble * t + d.theta))
            out.append((("distractor", i), poly, not d.hollow, d.thick if d.hollow else 0, (cx, cy)))
        for i, label, cx, cy, poly, th in self._visible_targets(t):
            out.append((("target", i, label), poly, True, th, (cx, cy)))
        return out

    def _owners(self, objects: list) -> np.ndarray:
        """Which object covers each pixel (its index in ``objects`` plus 1; 0: the background)."""
        owner = np.zeros((self.height, self.width), np.int16)
        for k, (_ident, poly, filled, thick, _c) in enumerate(objects):
            pts = fixed_points(poly)
            if filled:
                cv2.fillPoly(owner, [pts], k + 1, lineType=cv2.LINE_8, shift=SHIFT)
            if thick:
                cv2.polylines(owner, [pts], True, k + 1, thickness=thick, lineType=cv2.LINE_8, shift=SHIFT)
        return owner

    def motion(self, t0: float, t1: float) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth motion from the frame at ``t1`` back to the frame at ``t0``: ``flow`` [H, W, 2]
        float32 in pixels (the point at pixel p at ``t1`` was at p + flow[p] at ``t0``), and ``valid``
        [H, W] bool, False where that point was not visible at ``t0`` (uncovered background, a target
        that appeared or changed class). The objects' small tilt wobble is left out (under a pixel)."""
        (bx0, by0), (bx1, by1) = self._bg_shift(t0), self._bg_shift(t1)
        flow = np.empty((self.height, self.width, 2), np.float32)
        flow[..., 0], flow[..., 1] = bx1 - bx0, by1 - by0
        before, after = self._objects(t0), self._objects(t1)
        own0, own1 = self._owners(before), self._owners(after)
        ids0 = {obj[0]: k + 1 for k, obj in enumerate(before)}
        match = np.zeros(len(after) + 1, np.int16)  # object at t1 -> its owner id at t0 (-1: absent)
        for k, (ident, _poly, _filled, _th, (cx, cy)) in enumerate(after):
            m = own1 == k + 1
            if ident in ids0:
                px, py = before[ids0[ident] - 1][4]
                flow[m] = (px - cx, py - cy)
            match[k + 1] = ids0.get(ident, -1)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width]
        sx = np.clip(np.rint(xs + flow[..., 0]).astype(np.int64), 0, self.width - 1)
        sy = np.clip(np.rint(ys + flow[..., 1]).astype(np.int64), 0, self.height - 1)
        valid = own0[sy, sx] == match[own1]
        inside = (xs + flow[..., 0] >= 0) & (xs + flow[..., 0] <= self.width - 1) & (ys + flow[..., 1] >= 0) \
            & (ys + flow[..., 1] <= self.height - 1)
        return flow, valid & inside & (match[own1] >= 0)

    def frame(self, t: float) -> np.ndarray:
        """The scene at time ``t`` seconds: BGR uint8 ``height``×``width``×3."""
        t = float(t)
        pad = self._pad
        dx, dy = self._bg_shift(t)
        m = np.array([[1, 0, -pad - dx], [0, 1, -pad - dy]], np.float32)
        img = cv2.warpAffine(self._bg, m, (self.width, self.height), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REFLECT)
        img = np.clip(img, 0, 255).astype(np.uint8)
        for d in self._distractors:
            cx, cy = self._pos(d, d.r, t)
            poly = shape_polygon(d.label, cx, cy, d.r, MAX_TILT * math.sin(2 * math.pi * d.wobble * t + d.theta))
            if d.hollow:
                draw_shape(img, poly, None, d.colour, d.thick)
            else:
                draw_shape(img, poly, d.dull, None, 0)
        for poly, th, tg in self._target_geometry(t):
            draw_shape(img, poly, tg.fill, (245, 245, 245), th)
        # temporal grain at model resolution
        rng = np.random.default_rng([self.seed, int(round(t * 1000.0)) & 0x7FFFFFFF])
        gh, gw = math.ceil(self.height / self.k), math.ceil(self.width / self.k)
        grain: np.ndarray = rng.normal(0, 5, size=(gh, gw, 3)).astype(np.float32)
        grain = cv2.resize(grain, (self.width, self.height), interpolation=cv2.INTER_NEAREST)
        return np.clip(img.astype(np.float32) + grain, 0, 255).astype(np.uint8)
