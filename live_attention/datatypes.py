"""The data that flows between the threads: frames, map settings, results, the view and the HUD status.

This module sits at the bottom: it imports nothing from the package but the config's names, so the
capture thread, the engine, the renderer, the recorder and every front end can share these types
without importing each other. Every type is immutable (frozen dataclasses): a reader on another
thread never sees half an update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from live_attention import names
from live_attention.config import COLORMAPS, FUSIONS, MODES


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame.

    Attributes:
        image: BGR uint8 array, H×W×3.
        seq: 0, 1, 2, ... per successful read; a gap means frames dropped in the slot.
        t_capture_ns: ``time.monotonic_ns()`` taken right after ``read()`` returned.
        source: the source's display name.
        pts_s: media time in seconds (video files, the demo), else ``None``.
        still: the same picture as the frame before (a still image re-emitted); the worker reuses
            its preprocessing instead of doing it again.
    """

    image: np.ndarray
    seq: int
    t_capture_ns: int
    source: str
    pts_s: float | None = None
    still: bool = False


@dataclass(frozen=True)
class MapSettings:
    """What the inference worker computes beyond the maps every frame gets.

    ``entropy_layer`` is the layer whose per-patch entropy is computed (-1: the last);
    ``query_patch`` the patch whose attention rows are kept; ``target`` the class that relevance
    explains (None: each frame's top-1); ``relevance`` whether to compute it at all (it costs a
    backward pass, so only while a view shows it); ``need`` extra parts the views want kept:
    ``"attn"`` (full attention, for flow and any query), ``"fused"`` (per-layer fused matrices);
    ``maps`` the optional maps of :class:`Result` to compute (names from :mod:`live_attention.names`:
    rollout, patch entropy, token norms; query keeps a row for a patch chosen later), ``None``: all of
    them (what a recording keeps). The shown mode decides them (``Mode.maps``); relevance and a query's
    rows are asked by ``relevance`` and ``query_patch``.
    """

    fusion: str = "mean"
    residual: float = 0.5
    discard_ratio: float = 0.0
    query_patch: int | None = None
    entropy_layer: int = -1
    target: int | None = None
    relevance: bool = False
    need: tuple[str, ...] = ()
    maps: tuple[str, ...] | None = None

    def wants(self, name: str) -> bool:
        """Whether the optional map ``name`` (a :class:`Result` field) is to be computed."""
        return self.maps is None or name in self.maps


@dataclass(frozen=True, eq=False)
class Result:
    """Everything the renderer needs for one frame, all of it on the CPU (any thread may read it).

    Shapes (L layers, H heads, P patches, N = P + prefix tokens):
    ``cls`` [L, H, P] the class token's attention to the patches; ``prefix_share`` [L, H] the part of
    the class token's attention that goes to the other prefix tokens (distillation, registers);
    ``rollout`` [L, P] cumulative rollout, class row; ``entropy`` [L, H] (class row);
    ``patch_entropy`` [H, P] for layer ``patch_entropy_layer`` (each patch's own row); ``query``
    [L, H, P] for ``query_patch`` or None; ``token_norm`` [L, P] each patch token's output norm after
    each block, or None; ``relevance`` [P] for class ``target`` or None.
    ``topk``: (label, probability) for the model's top classes, empty for a model without a classifier.
    ``rollout``, ``patch_entropy`` and ``token_norm`` are None where the settings did not ask for
    them (only the shown view's maps are computed live). ``rollout`` is also None where the fused
    layer matrices would not fit in memory (see
    :mod:`live_attention.core.frame_maps`). ``attn`` [L, H, N, N] full attention and ``fused``
    [L, N, N] head-fused layer matrices (host tensors: copies when the engine runs on a device) are
    kept only when asked, for flow and queries of other patches.
    """

    seq: int
    t_capture_ns: int
    t_done_ns: int
    frame: np.ndarray
    box: tuple[int, int, int, int]
    grid: tuple[int, int]
    cls: np.ndarray
    rollout: np.ndarray | None
    entropy: np.ndarray
    patch_entropy: np.ndarray | None
    patch_entropy_layer: int
    topk: list[tuple[str, float]]
    infer_ms: float
    settings: MapSettings
    query: np.ndarray | None = None
    query_patch: int | None = None
    pts_s: float | None = None
    num_prefix: int = 1
    prefix_share: np.ndarray | None = None
    token_norm: np.ndarray | None = None
    relevance: np.ndarray | None = None
    target: int | None = None
    target_label: str | None = None
    target_p: float | None = None
    classifier: bool = True
    top_ids: tuple[int, ...] = ()  # the class indices of ``topk``
    problem: str | None = None  # e.g. non-finite model output: shown as a banner
    attn: Any = field(default=None, repr=False)
    fused: Any = field(default=None, repr=False)
    pair: Result | None = field(default=None, repr=False)  # the second model on the same frame (--compare)

    @property
    def num_layers(self) -> int:
        return int(self.cls.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.cls.shape[1])

    @property
    def num_patches(self) -> int:
        return int(self.cls.shape[2])


@dataclass(frozen=True)
class View:
    """What the user chose to see. ``layer`` is 0-based; ``head`` -1 means the heads fused."""

    mode: str = names.ATTENTION
    layer: int = -1
    head: int = -1
    fusion: str = "mean"
    opacity: float = 0.55
    colormap: str = "inferno"
    query_patch: int | None = None
    target: int | None = None  # the class relevance explains (None: each frame's top-1)
    frozen: bool = False
    animating: bool = False
    show_help: bool = False
    show_hud: bool = True
    smooth: bool = False  # the map smoothed over time (motion-compensated, :mod:`live_attention.core.temporal`)
    # --compare: the second model's head where the head counts differ, the side the head keys move (0 the
    # first, 1 the second: Tab), and the difference of the two maps in place of the second's picture (D).
    compare_head: int = -1
    head_side: int = 0
    difference: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {self.fusion!r}: use one of {', '.join(FUSIONS)}")
        if self.colormap not in COLORMAPS:
            raise ValueError(f"unknown colormap {self.colormap!r}: use one of {', '.join(COLORMAPS)}")

    def resolved_layer(self, num_layers: int) -> int:
        return self.layer % num_layers if self.layer < 0 else min(self.layer, num_layers - 1)


@dataclass(frozen=True)
class Status:
    """Live figures for the HUD; every field is optional so offline renders can leave them out."""

    model: str = ""
    untrained: bool = False
    source: str = ""
    capture_state: str = "running"
    silent_s: float | None = None  # seconds since the source's last frame, once it has gone silent (NO SIGNAL)
    capture_fps: float | None = None
    infer_fps: float | None = None
    latency_ms: float | None = None
    dropped: int = 0
    recording: str | None = None  # e.g. "REC 00:12  dropped 0"
    message: str | None = None
    error: str | None = None
    flow_progress: float | None = None  # 0..1 while computing
    takes_clicks: bool = False  # shown in a window: the HUD may invite clicks on its labels
    smoothing: str | None = None  # e.g. "smoothing on: stability 0.98 (raw 0.91)"
    pair: Status | None = None  # the second model's figures (--compare)


@dataclass(frozen=True)
class Extras:
    """Data that is not in one frame's result: entropy history and a computed flow map."""

    entropy_history: np.ndarray | None = None  # [T, L] per-layer CLS entropy (heads averaged)
    entropy_times: np.ndarray | None = None  # [T] seconds, increasing
    entropy_seconds: float = 10.0
    flow: np.ndarray | None = None  # [P] raw flow values for the shown frame
    flow_seq: int | None = None
    smoothed: np.ndarray | None = None  # [P] the shown map smoothed over time (``View.smooth``)
    smoothed_seq: int | None = None  # the frame it belongs to
    pair: Extras | None = None  # the second model's (--compare)


__all__ = ["Extras", "Frame", "MapSettings", "Result", "Status", "View"]
