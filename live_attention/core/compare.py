"""Two models on the same frames (``--compare``): what the second model is asked for, and what its side shows.

The first model's view is the one the user drives; the second follows it: the layer by relative depth
(layer 6 of 12 is layer 12 of 24), the head as it is where both have as many heads (else its own,
``View.compare_head``), the query patch at the same point of the picture (the grids may differ), and
the class relevance explains where the label sets match (else its own top class). The difference view
puts both maps on one grid: the same grid as it is, else both resampled to the finer one over the part
of the picture both models saw. No GUI here: the worker, ``render`` and the frame loop call these
functions. On one device the two models run in turn; on two devices (``--compare-device``) the second
runs on its own thread, the one owner of its device's work, while the first runs on the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, replace

import cv2
import numpy as np
import torch

from live_attention.core.device import same_device
from live_attention.core.engine import AttentionEngine
from live_attention.core.preprocess import Box
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings, Result, View
from live_attention.errors import UserError


@dataclass(frozen=True)
class Pairing:
    """What the second model needs to know about the first: their depths, head counts and whether they
    name the same classes (then relevance explains the same class on both)."""

    layers: tuple[int, int]
    heads: tuple[int, int]
    same_labels: bool

    @classmethod
    def of(cls, a: AttentionEngine, b: AttentionEngine) -> Pairing:
        same = a.has_classifier and b.has_classifier and list(a.categories) == list(b.categories)
        return cls((a.num_layers, b.num_layers), (a.num_heads, b.num_heads), same)


class PairedModels:
    """The second model (``b``) on the very same frames as the first (``a``): each result of ``a`` gets
    ``b``'s result for its frame as ``Result.pair`` (same ``seq``), so the two sides always show the same
    frame.

    On one device the two run in turn, on the caller's thread (the owner of that device's work). On two
    devices (``parallel``, by default when their devices differ) ``b`` runs on its own thread while ``a``
    runs on the caller's, so a pair takes as long as the slower model, not the sum of both; ``b``'s work
    is only ever done on that thread. Relevance that follows ``a``'s class on each frame waits for ``a``'s
    results first (the class comes from them)."""

    def __init__(self, a: AttentionEngine, b: AttentionEngine, *, parallel: bool | None = None) -> None:
        self.a, self.b = a, b
        self.pairing = Pairing.of(a, b)
        self.runner = StepRunner(b)  # CUDA graphs on a GPU, kept between frames
        self.parallel = not same_device(a.device, b.device) if parallel is None else parallel
        self._thread = (ThreadPoolExecutor(1, thread_name_prefix="compare", initializer=_own_device, initargs=(b.device,))
                        if self.parallel else None)

    def run(self, frames: list[Frame], settings: MapSettings, first: Callable[[], list[Result]]) -> list[Result]:
        """``first()`` (``a`` on ``frames``, all of one size, with ``settings``; called on this thread) with
        each of its results paired with ``b``'s."""
        if not frames:
            return first()
        h, w = frames[0].image.shape[:2]
        box_a, grid_a = self.a.preprocess_spec.crop_box(h, w), self.a.grid_for(h, w)
        sb = pair_settings(settings, self.pairing, box_a, grid_a, self.b.preprocess_spec.crop_box(h, w),
                           self.b.grid_for(h, w))
        # Relevance of each frame's own top class (no fixed target): where both models name the same
        # classes, the second explains the class the first explains on that frame, not its own top-1.
        follow = sb.relevance and self.pairing.same_labels and sb.target is None
        if self._thread is not None and not follow:  # two devices at once
            pending = self._thread.submit(self._second, frames, sb, None)
            try:
                results = first()
            finally:
                wait([pending])  # never two of b's frames in flight, even when a's failed
            others = pending.result()
        else:  # in turn: one device, or b needs a's classes
            results = first()
            targets = [r.target for r in results] if follow else None
            others = (self._second(frames, sb, targets) if self._thread is None
                      else self._thread.submit(self._second, frames, sb, targets).result())
        return [replace(r, pair=o) for r, o in zip(results, others, strict=True)]

    def add(self, frames: list[Frame], settings: MapSettings, results: list[Result]) -> list[Result]:
        """``results`` (``a`` on ``frames`` with ``settings``, already computed) each paired with ``b``'s."""
        return self.run(frames, settings, lambda: results)

    def close(self) -> None:
        """Ends the second model's thread (if it has one) once its work is done."""
        if self._thread is not None:
            self._thread.shutdown(wait=False)

    def _second(self, frames: list[Frame], sb: MapSettings, targets: list[int | None] | None) -> list[Result]:
        """``b`` on ``frames``: with ``sb``, or explaining ``targets`` (one per frame), grouped by class."""
        if targets is None:
            return process_frames(self.b, frames, sb, None, self.runner)
        groups: dict[int | None, list[int]] = {}
        for i, target in enumerate(targets):
            groups.setdefault(target, []).append(i)
        others: list[Result | None] = [None] * len(frames)
        for target, idx in groups.items():
            done = process_frames(self.b, [frames[i] for i in idx], replace(sb, target=target), None, self.runner)
            for i, o in zip(idx, done, strict=True):
                others[i] = o
        return [o for o in others if o is not None]


def _own_device(device: torch.device) -> None:
    """Set up the second model's thread: no autograd but where relevance asks for it, and its GPU as the
    thread's current one (new CUDA streams and events are made there)."""
    torch.set_grad_enabled(False)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def relative_layer(layer: int, from_layers: int, to_layers: int) -> int:
    """Layer ``layer`` (0-based; -1 the last) of a ``from_layers`` model at the same relative depth in a
    ``to_layers`` one: layer 6 of 12 (index 5) is layer 12 of 24 (index 11)."""
    if layer < 0:
        return layer
    depth = (min(layer, from_layers - 1) + 1) / from_layers
    return max(0, min(to_layers - 1, int(round(depth * to_layers)) - 1))


def same_point(patch: int, box_a: Box, grid_a: tuple[int, int], box_b: Box, grid_b: tuple[int, int]) -> int | None:
    """The patch of grid ``b`` (over ``box_b``) under the centre of ``patch`` of grid ``a`` (over
    ``box_a``): the same point of the picture; None where model b does not see it."""
    r, c = divmod(int(patch), grid_a[1])
    x = box_a[0] + (c + 0.5) * (box_a[2] - box_a[0]) / grid_a[1]
    y = box_a[1] + (r + 0.5) * (box_a[3] - box_a[1]) / grid_a[0]
    x0, y0, x1, y1 = box_b
    if not (x0 <= x < x1 and y0 <= y < y1):
        return None
    cb = min(grid_b[1] - 1, int((x - x0) / (x1 - x0) * grid_b[1]))
    rb = min(grid_b[0] - 1, int((y - y0) / (y1 - y0) * grid_b[0]))
    return rb * grid_b[1] + cb


def check_aligned(a: AttentionEngine, b: AttentionEngine, height: int, width: int) -> None:
    """Raise a one-line error naming ``--compare`` where the two models' views of a ``width``×``height``
    picture share too little to be compared (each must see at least half of what the other sees)."""
    try:
        box_a, box_b = a.preprocess_spec.crop_box(height, width), b.preprocess_spec.crop_box(height, width)
        b.grid_for(height, width)
    except (ValueError, UserError) as exc:
        raise UserError(f"--compare {b.name}: cannot place its patch grid on a {width}×{height} picture ({exc})") from None
    inter = _intersection(box_a, box_b)
    area = (inter[2] - inter[0]) * (inter[3] - inter[1]) if inter is not None else 0
    for box in (box_a, box_b):
        if area * 2 < (box[2] - box[0]) * (box[3] - box[1]):
            raise UserError(f"--compare {b.name}: its patch grid cannot be aligned with {a.name}'s on a "
                            f"{width}×{height} picture (they see {box_a} and {box_b}): use the same --full-frame "
                            "setting for both, or a model with the same input shape")


def pair_settings(s: MapSettings, pairing: Pairing, box_a: Box, grid_a: tuple[int, int], box_b: Box,
                  grid_b: tuple[int, int]) -> MapSettings:
    """The second model's settings for a frame the first computes with ``s``."""
    query = s.query_patch
    if query is not None:
        query = same_point(query, box_a, grid_a, box_b, grid_b)
    return replace(s, entropy_layer=relative_layer(s.entropy_layer, *pairing.layers), query_patch=query,
                   target=s.target if pairing.same_labels else None)


def pair_view(view: View, a: Result, b: Result) -> View:
    """What the second model's side shows when the first shows ``view``: its layer at the same relative
    depth, its head (the same where the head counts match), its query patch and explained class."""
    layer = relative_layer(view.resolved_layer(a.num_layers), a.num_layers, b.num_layers)
    head = view.head if a.num_heads == b.num_heads else min(view.compare_head, b.num_heads - 1)
    return replace(view, layer=layer, head=head, query_patch=b.query_patch if view.query_patch is not None else None,
                   target=b.target if view.target is not None else None)


def _intersection(a: Box, b: Box) -> Box | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _norm(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float32)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)


def _on_region(m: np.ndarray, grid: tuple[int, int], box: Box, region: Box, out_grid: tuple[int, int]) -> np.ndarray:
    """Map ``m`` [P] on ``grid`` over ``box`` resampled to ``out_grid`` cells over ``region`` (inside ``box``)."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    full = cv2.resize(_norm(m).reshape(grid), (bw, bh), interpolation=cv2.INTER_LINEAR)
    crop = full[region[1] - box[1]:region[3] - box[1], region[0] - box[0]:region[2] - box[0]]
    return cv2.resize(crop, (out_grid[1], out_grid[0]), interpolation=cv2.INTER_AREA)


@dataclass(frozen=True)
class Difference:
    """The signed difference of two maps over ``box`` on ``grid``, positive where the first model's map is
    higher. Each map is first scaled to 0..1 and taken as a share of its total (the models' scales differ;
    shares compare where each concentrates), and the difference is scaled so that its largest magnitude
    is 1. ``note`` says how the two were aligned."""

    values: np.ndarray  # [P] in -1..1
    grid: tuple[int, int]
    box: Box
    note: str


def _signed(da: np.ndarray, db: np.ndarray) -> np.ndarray:
    pa, pb = da / max(float(da.sum()), 1e-12), db / max(float(db.sum()), 1e-12)
    d = (pa - pb).astype(np.float32).reshape(-1)
    peak = float(np.abs(d).max())
    return d / peak if peak > 1e-12 else np.zeros_like(d)


def difference(ma: np.ndarray, a: Result, mb: np.ndarray, b: Result) -> Difference | None:
    """``ma - mb`` on a common grid: the same grid as it is; else both resampled to the finer grid over
    the part of the picture both saw. None where the two saw nothing in common."""
    if a.grid == b.grid and a.box == b.box:
        return Difference(_signed(_norm(ma), _norm(mb)), a.grid, a.box, f"same {a.grid[0]}×{a.grid[1]} grid")
    region = _intersection(a.box, b.box)
    if region is None:
        return None
    fine = a.grid if a.grid[0] * a.grid[1] >= b.grid[0] * b.grid[1] else b.grid
    da = _on_region(ma, a.grid, a.box, region, fine)
    db = _on_region(mb, b.grid, b.box, region, fine)
    return Difference(_signed(da, db), fine, region,
                      f"resampled to the finer {fine[0]}×{fine[1]} grid ({a.grid[0]}×{a.grid[1]} vs {b.grid[0]}×{b.grid[1]})")
