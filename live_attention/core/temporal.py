"""Maps that hold still: motion-compensated, speed-adaptive temporal smoothing, and the flicker measures.

Pure numpy and OpenCV, no I/O, no threads; each object belongs to the thread that calls it.

Why: every frame's map is computed from that frame alone, and a ViT is not shift-equivariant below a
patch. A hand-held camera moving a few pixels moves content across patch borders, and hot patches jump
(on the demo model, 4 px of jitter moves the normalised rollout map as much as the moving demo's own
change between frames). A plain exponential moving average trades that flicker for smear.

How (:class:`TemporalFilter`), per frame, on the normalised map of the patch grid:

1. **Motion** (:class:`MotionEstimator`): OpenCV's DIS optical flow between this frame and the last, on
   small grey images of the region the model sees (about 160 px across), averaged per patch. Its median
   is the camera's motion; what differs from it is the objects' own motion. The picture's change left
   after moving the last image by the camera's motion (over its contrast) marks what moves by itself,
   and, when large, what is new (an object appeared, a cut).
2. **Warp**: the previous smoothed map follows the motion before it is blended in: the camera's motion
   when it is steady (a pan, not a shaking hand, which would shake the map), and each moving patch's
   own motion.
3. **Blend adaptively**, as the 1€ filter does (Casiez et al., CHI 2012): a still patch settles (its new
   value weighs :attr:`TemporalParams.still`); a patch that moves relative to the camera (what the
   camera's motion leaves unexplained in its picture) is followed closely, one whose picture changed
   beyond any motion (a new object) at once, and so are their neighbours. A cut resets the filter.

The measures (:func:`flicker`, :func:`consistency`, :func:`warping_error`, :func:`peak_lag`) are what
``live-attention evaluate --temporal`` reports; the warping error follows Lai et al. (ECCV 2018).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from live_attention.datatypes import Extras, Result, View

__all__ = [
    "MotionEstimator", "MotionField", "TemporalFilter", "TemporalParams", "ViewSmoother",
    "consistency", "correlation", "ema", "flicker", "normalise", "peak_lag", "peak_positions", "warp_grid",
    "warping_error",
]

DEFAULT_DT = 0.1  # seconds between results when the frames carry no time (a CPU model's live rate)


@dataclass(frozen=True)
class TemporalParams:
    """The filter's constants, per frame (measured on the demo scenes; see the README's flicker section).

    Attributes:
        still: the blend weight of a still patch's new value (settles in about 2 / ``still`` frames).
        moving: how far a moving patch's weight goes from ``still`` towards 1 (1: its raw value at
            once; below, it is smoothed along its motion too).
        moving_lo, moving_hi: the change a patch's picture shows beyond the camera's motion
            (:attr:`MotionField.change`) from which it counts as moving, and fully. 4 px of jitter leaves
            at most 0.2 (the demo) to 0.36 (a photo); the demo's objects moving 5 px a frame (10 results
            a second) 0.4 to 1.3.
        new_lo, new_hi: the same from which a patch is new (an object appeared, a class changed, a cut)
            and shown raw: 5 to 35 there.
        cut: the fraction of patches that are new from which the frame is a cut (the filter restarts).
        trend_k: the weight of each frame in the averages of the camera's motion and of its size.
        trend_lo, trend_hi: how steady the camera's motion is (the size of its average over the average
            of its size: about 0.35 for a shaking hand, 1 for a pan), below which the map stays put and
            above which it follows the camera fully.
        image_side: about the longer side of the grey images the flow runs on, pixels.
    """

    still: float = 0.15
    moving: float = 0.8
    moving_lo: float = 0.3
    moving_hi: float = 0.6
    new_lo: float = 1.5
    new_hi: float = 3.0
    cut: float = 0.5
    trend_k: float = 0.2
    trend_lo: float = 0.6
    trend_hi: float = 0.85
    image_side: int = 160


def normalise(m: np.ndarray) -> np.ndarray:
    """Min-max normalised to [0, 1] in float32 (zeros for a constant map), as the renderer shows it."""
    m = np.asarray(m, np.float32)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if not hi - lo > 1e-12 else (m - lo) / (hi - lo)


@functools.lru_cache(maxsize=16)
def _grid_coords(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    gy, gx = np.mgrid[0 : grid[0], 0 : grid[1]].astype(np.float32)
    gx.flags.writeable = gy.flags.writeable = False  # shared between calls
    return gx, gy


def warp_grid(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``values`` [rows, cols] sampled where ``flow`` [rows, cols, 2] (x, y, in patches) points:
    ``out[p] = values[p + flow[p]]`` (bilinear, edges replicated). With the flow from this frame to
    the previous one, this brings the previous frame's map onto this frame."""
    gx, gy = _grid_coords(tuple(values.shape[:2]))
    return cv2.remap(np.ascontiguousarray(values, np.float32), gx + flow[..., 0], gy + flow[..., 1],
                     cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class MotionField:
    """The motion from one frame to the one before, on the patch grid.

    Attributes:
        flow: [rows, cols, 2] float32, in patches: patch ``p`` of this frame was at ``p + flow[p]``.
        camera: [2] the median flow (the camera's motion), in patches.
        change: [rows, cols] what the camera's motion does not explain: each patch's mean absolute
            grey-level change once the last frame is moved by the camera's motion, over its grey-level
            gradient (+5), about how many pixels of the grey image it moved by itself (or is new).
    """

    flow: np.ndarray
    camera: np.ndarray
    change: np.ndarray


class MotionEstimator:
    """DIS optical flow (OpenCV, ultrafast preset) between consecutive frames' model regions.

    ``step(frame, box, grid)`` returns the motion from the previous frame given, or None for the first
    frame and after the region or grid changed.
    """

    def __init__(self, image_side: int = TemporalParams.image_side) -> None:
        self.image_side = int(image_side)
        self._dis = cv2.DISOpticalFlow.create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST)
        self._prev: np.ndarray | None = None
        self._key: tuple | None = None

    def reset(self) -> None:
        self._prev = self._key = None

    def factor(self, box: Sequence[int]) -> int:
        """The whole-number downscale of the model's region to about ``image_side`` px across (a whole
        number keeps OpenCV's area resize on its fast path)."""
        return max(1, round(max(box[2] - box[0], box[3] - box[1], 1) / self.image_side))

    def grey(self, frame: np.ndarray, box: Sequence[int]) -> np.ndarray:
        """The region ``box`` of ``frame`` as a small grey image (area-averaged: camera noise averages out)."""
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            x0, y0, x1, y1 = 0, 0, frame.shape[1], frame.shape[0]
        k = self.factor((x0, y0, x1, y1))
        w, h = max(1, (x1 - x0) // k), max(1, (y1 - y0) // k)
        crop = frame[y0 : y0 + h * k, x0 : x0 + w * k]
        grey = crop if crop.ndim == 2 else cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY)
        if k == 1:
            return np.ascontiguousarray(grey)
        # The mean of each k×k block (what an area resize by a whole number gives, three times faster).
        return np.ascontiguousarray(cv2.blur(grey, (k, k))[k // 2 :: k, k // 2 :: k][:h, :w])

    def step(self, frame: np.ndarray, box: Sequence[int], grid: tuple[int, int]) -> MotionField | None:
        key = (tuple(int(v) for v in box), tuple(grid), frame.shape)
        grey = self.grey(frame, box)
        prev, self._prev = self._prev, grey
        if prev is None or key != self._key:
            self._key = key
            return None
        return self.between(grey, prev, grid)

    def between(self, grey: np.ndarray, prev: np.ndarray, grid: tuple[int, int]) -> MotionField:
        """The motion from grey image ``prev`` to ``grey`` (both from :meth:`grey`), on ``grid``."""
        # grey(p) ~ prev(p + flow(p)), pixels. None: calc allocates the flow (OpenCV's stub wants an array).
        flow = self._dis.calc(grey, prev, None)  # type: ignore[call-overload]
        h, w = grey.shape
        cell = np.array([w / grid[1], h / grid[0]], np.float32)
        patches = (cv2.resize(flow, grid[::-1], interpolation=cv2.INTER_AREA) / cell).astype(np.float32)
        camera = np.sort(patches.reshape(-1, 2), axis=0)[patches.shape[0] * patches.shape[1] // 2]  # the median
        cx, cy = (camera * cell).tolist()
        shifted = cv2.warpAffine(prev, np.array([[1, 0, cx], [0, 1, cy]], np.float32), (w, h),
                                 flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)
        # Grey-level change over grey-level gradient (+5 against noise in flat patches): about how many pixels
        # the patch is off, whatever its contrast (a sharp edge a tenth of a pixel off changes a lot).
        sobel = np.abs(cv2.Sobel(grey, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(grey, cv2.CV_32F, 0, 1))
        both = cv2.resize(cv2.merge([cv2.absdiff(grey, shifted).astype(np.float32), sobel]), grid[::-1],
                          interpolation=cv2.INTER_AREA).reshape(*grid, 2)
        left, grad = both[..., 0], both[..., 1] / 8.0
        return MotionField(patches, camera, left / (grad + 5.0))


def _ramp(v: np.ndarray | float, lo: float, hi: float) -> np.ndarray:
    return np.clip((np.asarray(v, np.float32) - lo) / max(hi - lo, 1e-9), 0.0, 1.0)


class TemporalFilter:
    """Motion-compensated, speed-adaptive smoothing of one map kind (see the module docstring).

    ``step(raw, motion, dt)`` takes the raw map [P] (any units), the frame's :class:`MotionField` (None
    for the first frame or unknown motion) and the seconds since the previous frame (None: 0.1), and
    returns the smoothed map in the raw map's units (its min and max). The figures
    :attr:`stability` and :attr:`raw_stability` are the motion-compensated frame-to-frame correlation
    of the shown and of the raw map, averaged over about a second.
    """

    def __init__(self, grid: tuple[int, int], params: TemporalParams | None = None) -> None:
        self.grid = (int(grid[0]), int(grid[1]))
        self.params = params or TemporalParams()
        self.alpha: np.ndarray | None = None  # the last blend weights [rows, cols] (for measures)
        self.stability: float | None = None
        self.raw_stability: float | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the past (a new view, a seek, a cut); the stability figures restart too."""
        self._y: np.ndarray | None = None  # smoothed, normalised [rows, cols]
        self._x: np.ndarray | None = None  # previous raw, normalised
        self._trend = np.zeros(2, np.float32)  # the camera's average motion
        self._pace = 0.0  # the average size of the camera's motion
        self._frames = 0  # motions seen since the reset (steadiness needs a few)
        self.stability = self.raw_stability = None

    def step(self, raw: np.ndarray, motion: MotionField | None, dt: float | None = None,
             smooth: bool = True) -> np.ndarray:
        """The map to show for this frame (``smooth=False``: the raw map; the figures still update)."""
        raw = np.asarray(raw, np.float32)
        if raw.size != self.grid[0] * self.grid[1] or not np.isfinite(raw).all():
            self.reset()
            return raw
        x = normalise(raw).reshape(self.grid)
        prev_y, prev_x = self._y, self._x
        if prev_y is None or prev_x is None or motion is None:
            self.reset()
            y = x
        elif not smooth:
            y = x
        else:
            y = self._blend(x, prev_y, motion)
        if prev_y is not None and prev_x is not None and motion is not None:
            self._measure(x, y, prev_x, prev_y, motion, self._dt(dt))
        self._x, self._y = x, y
        lo, hi = float(raw.min()), float(raw.max())
        return (lo + y * (hi - lo)).reshape(raw.shape).astype(np.float32)

    @staticmethod
    def _dt(dt: float | None) -> float:
        return DEFAULT_DT if dt is None or not math.isfinite(dt) or dt <= 0 else min(float(dt), 1.0)

    def _blend(self, x: np.ndarray, y: np.ndarray, motion: MotionField) -> np.ndarray:
        p = self.params
        changed = _ramp(motion.change, p.new_lo, p.new_hi)
        if float(changed.mean()) >= p.cut:  # a cut: nothing of the last shot belongs here
            self.reset()
            return x
        own = motion.flow - motion.camera  # each patch's motion relative to the camera
        moving = _ramp(motion.change, p.moving_lo, p.moving_hi)
        self._trend = p.trend_k * motion.camera + (1.0 - p.trend_k) * self._trend
        self._pace = p.trend_k * float(np.linalg.norm(motion.camera)) + (1.0 - p.trend_k) * self._pace
        self._frames += 1
        steady = np.linalg.norm(self._trend) / (self._pace + 1e-6) if self._frames >= 3 else 0.0
        follow = float(_ramp(steady, p.trend_lo, p.trend_hi))
        field = follow * motion.camera + own * moving[..., None]
        warped = warp_grid(y, field)
        weight = cv2.dilate(np.maximum(moving * p.moving, changed), np.ones((3, 3), np.uint8))
        self.alpha = p.still + (1.0 - p.still) * weight
        return (warped + self.alpha * (x - warped)).astype(np.float32)

    def _measure(self, x, y, prev_x, prev_y, motion: MotionField, dt: float) -> None:
        k = 1.0 - math.exp(-dt / 1.0)  # about a second of frames
        s = correlation(y, warp_grid(prev_y, motion.flow))
        r = correlation(x, warp_grid(prev_x, motion.flow))
        self.stability = s if self.stability is None else k * s + (1 - k) * self.stability
        self.raw_stability = r if self.raw_stability is None else k * r + (1 - k) * self.raw_stability


# --------------------------------------------------------------------------------------------------
# The shown map over time (the frame loop and the offline path)
# --------------------------------------------------------------------------------------------------

MAX_GAP_S = 1.0  # frames further apart than this (a seek, a stall) start the filter again


def result_time(result: Result) -> float:
    """A result's time in seconds: its media time, else its capture clock."""
    return float(result.pts_s) if result.pts_s is not None else result.t_capture_ns / 1e9


class ViewSmoother:
    """The view's map over time: through a :class:`TemporalFilter` when ``view.smooth`` (else raw, still
    measured for the HUD's stability figure). Call it once per result, in order; the same result again
    (a redraw) gives the same map. It starts again when the view shows another map (mode, layer, head,
    fusion, patch, class), the frame is computed again (frozen, new settings), or the frames go back in
    time or skip more than :data:`MAX_GAP_S`.

    Args:
        select: the view's raw map [P] of a result (None: not available in this frame).
        smooths: whether a view shows one map a frame that can be smoothed (the heads do not).
        params: the filter's parameters.
    """

    def __init__(self, select: Callable[[Result, View, Extras | None], np.ndarray | None],
                 smooths: Callable[[View], bool], params: TemporalParams | None = None) -> None:
        self.select, self.smooths = select, smooths
        self.params = params or TemporalParams()
        self.motion = MotionEstimator(self.params.image_side)
        self.filter: TemporalFilter | None = None
        self._key: tuple | None = None
        self._t: float | None = None
        self._last: tuple[Result, bool, np.ndarray | None] | None = None  # result, smooth, map

    def __call__(self, result: Result, view: View, extras: Extras | None = None) -> np.ndarray | None:
        """The smoothed map [P] to show for ``result`` (None: show the raw map, or the view has no single map)."""
        if not self.smooths(view):
            self.filter = self._key = self._last = None
            return None
        key = (view.mode, view.resolved_layer(result.num_layers), view.head, view.fusion, view.query_patch,
               view.target, result.grid, tuple(result.box), result.frame.shape)
        last = self._last
        if last is not None and key == self._key and last[0] is result and last[1] == view.smooth:
            return last[2]
        t = result_time(result)
        # The same frame computed again (frozen, new settings) starts again too: its first map is raw.
        again = last is not None and last[0].seq == result.seq
        jump = again or self._t is None or not 0.0 < t - self._t <= MAX_GAP_S
        if jump:
            self.motion.reset()
        motion = self.motion.step(result.frame, result.box, result.grid)
        raw = self.select(result, view, extras)
        if raw is None or key != self._key or jump or self.filter is None:
            self.filter = TemporalFilter(result.grid, self.params) if raw is not None else None
        out = None
        if self.filter is not None and raw is not None:
            shown = self.filter.step(raw, motion, None if jump or self._t is None else t - self._t, smooth=view.smooth)
            out = shown if view.smooth else None
        self._key, self._t, self._last = key, t, (result, view.smooth, out)
        return out

    def hud(self, view: View) -> str | None:
        """The HUD's line: whether smoothing is on and the frame-to-frame stability (about the last second;
        no figure until a second frame since the start: the first frame, a cut, a frame computed again)."""
        f = self.filter
        if not self.smooths(view) or f is None:
            return None
        if f.raw_stability is None:
            return f"smoothing {'on' if view.smooth else 'off'}"
        if view.smooth and f.stability is not None:
            return f"smoothing on: stability {f.stability:.3f} (raw {f.raw_stability:.3f})"
        return f"smoothing off: stability {f.raw_stability:.3f}"


# --------------------------------------------------------------------------------------------------
# Measures (``evaluate --temporal``)
# --------------------------------------------------------------------------------------------------


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps; 1.0 for two constant maps that are equal, 0.0 when only one is
    constant."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.size < 2:
        return 1.0
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    if den < 1e-18:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / den)


def flicker(maps: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of the normalised maps [T, ...] (0: perfectly still)."""
    n = np.stack([normalise(m) for m in maps])
    return float(np.abs(np.diff(n, axis=0)).mean()) if len(n) > 1 else 0.0


def consistency(maps: np.ndarray, flows: Sequence[np.ndarray | None]) -> float:
    """Motion-compensated consistency: the mean correlation between each map [T, rows, cols] and the
    previous one warped by ``flows[t]`` (this frame to the previous, in patches; None: skipped)."""
    vals = [correlation(maps[t], warp_grid(maps[t - 1], f)) for t in range(1, len(maps)) if (f := flows[t]) is not None]
    return float(np.mean(vals)) if vals else float("nan")


def warping_error(maps: np.ndarray, flows: Sequence[np.ndarray | None], masks: Sequence[np.ndarray | None]) -> float:
    """Lai et al.'s warping error: the mean over frames of the mean squared difference between each
    normalised map and the previous one warped by the motion, over the patches ``masks[t]`` marks as
    seen in both frames (not occluded)."""
    n = np.stack([normalise(m) for m in maps])
    errs = []
    for t in range(1, len(n)):
        f = flows[t]
        if f is None:
            continue
        d = (n[t] - warp_grid(n[t - 1], f)) ** 2
        m = np.ones(d.shape, bool) if masks[t] is None else np.asarray(masks[t], bool)
        if m.any():
            errs.append(float(d[m].mean()))
    return float(np.mean(errs)) if errs else float("nan")


def ema(maps: np.ndarray, alpha: float) -> np.ndarray:
    """The plain exponential moving average of the normalised maps [T, ...] (the baseline)."""
    out = np.empty((len(maps), *np.shape(maps[0])), np.float32)
    for t, m in enumerate(maps):
        n = normalise(m)
        out[t] = n if t == 0 else alpha * n + (1.0 - alpha) * out[t - 1]
    return out


def peak_positions(maps: np.ndarray) -> np.ndarray:
    """Each map's peak [T, 2] (row, col in patches, below a patch): the centroid of the 3×3 patches
    around its maximum."""
    out = np.empty((len(maps), 2), np.float64)
    for t, m in enumerate(maps):
        g = np.asarray(m, np.float64)
        g = g - g.min()
        r, c = np.unravel_index(int(np.argmax(g)), g.shape)
        r0, r1, c0, c1 = max(0, r - 1), min(g.shape[0], r + 2), max(0, c - 1), min(g.shape[1], c + 2)
        w = g[r0:r1, c0:c1]
        yy, xx = np.mgrid[r0:r1, c0:c1]
        s = float(w.sum())
        out[t] = ((w * yy).sum() / s, (w * xx).sum() / s) if s > 0 else (r, c)
    return out


def peak_lag(raw: np.ndarray, shown: np.ndarray, max_lag: int = 5) -> float:
    """How many frames the peak of ``shown`` [T, rows, cols] trails the peak of ``raw``: the shift that
    brings the two peak paths closest (mean distance), refined below a frame by a parabola."""
    pr, ps = peak_positions(raw), peak_positions(shown)
    n = len(pr)
    lags = range(0, max(1, min(max_lag, n - 2)) + 1)
    err = np.array([np.linalg.norm(ps[k:] - pr[: n - k], axis=1).mean() for k in lags])
    k = int(np.argmin(err))
    if 0 < k < len(err) - 1:
        a, b, c = err[k - 1], err[k], err[k + 1]
        den = a - 2 * b + c
        if den > 1e-12:
            return float(k + 0.5 * (a - c) / den)
    return float(k)
