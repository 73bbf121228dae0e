"""Inference worker: takes the newest frame, runs the engine, computes every map, publishes a result.

Threads:
* ``InferenceWorker`` (thread "inference") owns the :class:`AttentionEngine`; nothing else calls it
  while the worker runs. One forward pass gives every map, computed on the engine's device, packed
  into one tensor and copied to the CPU once.
* Readers (the GUI, the recorder) only ever see immutable :class:`Result` objects through a
  :class:`~live_attention.capture.LatestSlot`; the GUI never waits on inference.

The maps settings that change what the worker computes (head fusion for rollout, residual, discard
ratio, query patch) live in :class:`MapSettings`, swapped atomically by the GUI.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from live_attention import maps
from live_attention.capture import Frame, LatestSlot
from live_attention.engine import AttentionEngine

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapSettings:
    fusion: str = "mean"
    residual: float = 0.5
    discard_ratio: float = 0.0
    query_patch: int | None = None
    entropy_layer: int = -1  # the layer whose per-patch entropy map is computed (-1: the last)


@dataclass(frozen=True, eq=False)
class Result:
    """Everything the renderer needs for one frame, on the CPU (except ``attn``).

    Shapes: ``cls`` [L, H, P]; ``rollout`` [L, P] (cumulative, CLS row); ``entropy`` [L, H] (CLS row);
    ``patch_entropy`` [H, P] for layer ``patch_entropy_layer`` (every patch's own row; one layer per
    frame keeps the maps within budget); ``query`` [L, H, P] or None.
    """

    seq: int
    t_capture_ns: int
    t_done_ns: int
    frame: np.ndarray
    box: tuple[int, int, int, int]
    model_rgb: np.ndarray
    grid: tuple[int, int]
    cls: np.ndarray
    rollout: np.ndarray
    entropy: np.ndarray
    patch_entropy: np.ndarray
    patch_entropy_layer: int
    query: np.ndarray | None
    query_patch: int | None
    topk: list[tuple[str, float]]
    infer_ms: float
    settings: MapSettings
    pts_s: float | None = None  # media time of the frame (files, demo), None for cameras
    attn: Tensor | None = field(default=None, repr=False)  # [L, H, N, N] on the engine's device

    @property
    def num_layers(self) -> int:
        return int(self.cls.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.cls.shape[1])

    @property
    def num_prefix(self) -> int:
        """Tokens before the patches (the class token, and registers for some timm models)."""
        return int(self.attn.shape[-1] - self.cls.shape[-1]) if self.attn is not None else 1

    def patch_entropy_for(self, layer: int) -> np.ndarray | None:
        """Per-patch entropy [H, P] of ``layer``: computed by the worker, or from the kept attention."""
        if layer == self.patch_entropy_layer:
            return self.patch_entropy
        if self.attn is None:
            return None
        return maps.patch_entropy(self.attn[layer : layer + 1], self.num_prefix)[0].cpu().numpy()

    def flow(self, residual: float = 0.5, fusion: str = "mean", progress=None, cancel=None) -> np.ndarray:
        """Attention flow [P] of this frame from the kept attention (slow: seconds for ViT-B/16)."""
        if self.attn is None:
            raise RuntimeError("this frame kept no attention to compute flow from")
        return maps.attention_flow(self.attn, head_fusion=fusion, residual=residual, num_prefix=self.num_prefix,
                                   progress=progress, cancel=cancel).cpu().numpy()

    def query_for(self, patch: int) -> np.ndarray:
        """Attention of ``patch`` to every patch [L, H, P], from the kept attention."""
        if self.query is not None and self.query_patch == patch:
            return self.query
        if self.attn is None:
            raise RuntimeError("this result kept no attention to compute a query row from")
        return maps.query_attention(self.attn, patch, self.num_prefix).cpu().numpy()


def compute_maps(
    engine: AttentionEngine, attn: Tensor, logits: Tensor, settings: MapSettings, k: int = 5
) -> dict[str, np.ndarray | None]:
    """All per-frame maps for one frame (``attn`` [1, L, H, N, N]), on the device, then one CPU copy."""
    np_ = engine.num_prefix
    a = attn[0]
    cls = maps.cls_attention(a, np_)  # [L, H, P]
    roll = maps.rollout_cls_cumulative(a, settings.fusion, settings.residual, settings.discard_ratio, np_)  # [L, P]
    ent = maps.entropy(a, "cls")  # [L, H]
    layer = settings.entropy_layer % engine.num_layers
    pent = maps.patch_entropy(a[layer : layer + 1], np_)[0]  # [H, P]
    parts = [cls, roll, ent, pent]
    q = settings.query_patch
    if q is not None and 0 <= q < engine.num_patches:
        parts.append(maps.query_attention(a, q, np_))
    else:
        q = None
    probs = logits[0].float().softmax(-1)
    kk = min(k, probs.shape[-1])
    top_p, top_i = probs.topk(kk)
    parts += [top_p, top_i.float()]
    flat = torch.cat([p.reshape(-1).float() for p in parts]).cpu().numpy()  # the one device->host copy
    out: dict[str, np.ndarray | None] = {}
    pos = 0
    names = ["cls", "rollout", "entropy", "patch_entropy"] + (["query"] if q is not None else []) + ["top_p", "top_i"]
    for name, p in zip(names, parts, strict=True):
        n = p.numel()
        out[name] = flat[pos : pos + n].reshape(tuple(p.shape))
        pos += n
    out.setdefault("query", None)
    return out


class InferenceWorker(threading.Thread):
    """Runs the engine on the newest frame and publishes :class:`Result` objects.

    Args:
        engine: the attention engine (owned by this thread from ``start()`` on).
        frames: the capture thread's latest-frame slot.
        results: the latest-result slot read by the GUI and the recorder.
        keep_attn: keep the full attention tensor in each result (for flow and query on a frozen frame).
    """

    def __init__(
        self,
        engine: AttentionEngine,
        frames: LatestSlot[Frame],
        results: LatestSlot[Result],
        stop_event: threading.Event | None = None,
        settings: MapSettings | None = None,
        keep_attn: bool = True,
    ) -> None:
        super().__init__(name="inference", daemon=True)
        self.engine = engine
        self.frames = frames
        self.results = results
        self.stop_event = stop_event or threading.Event()
        self._settings = settings or MapSettings()
        self.keep_attn = keep_attn
        self._lock = threading.Lock()
        self.error: str | None = None
        self.infer_ms = 0.0
        self.processed = 0
        self._done_times: deque[float] = deque(maxlen=30)
        self.paused = threading.Event()  # set: leave frames alone (frozen view)

    @property
    def fps(self) -> float:
        """Results per second over the last (up to 30) frames; 0.0 before two results."""
        t = list(self._done_times)
        if len(t) < 2 or t[-1] <= t[0]:
            return 0.0
        return (len(t) - 1) / (t[-1] - t[0])

    # Settings are swapped whole (immutable), so a reader never sees half an update.
    @property
    def settings(self) -> MapSettings:
        return self._settings

    def update_settings(self, **changes: object) -> None:
        with self._lock:
            self._settings = replace(self._settings, **changes)

    def process(self, frame: Frame) -> Result:
        """One frame through preprocess, the model and the maps (also used by ``render``)."""
        t0 = time.perf_counter()
        settings = self._settings
        x, view = self.engine.preprocess_with_view(frame.image)
        out = self.engine.run(x)
        m = compute_maps(self.engine, out.attn, out.logits, settings)
        top = [
            (self.engine.categories[int(i)], float(p)) for p, i in zip(m["top_p"], m["top_i"], strict=True)
        ]
        dt = (time.perf_counter() - t0) * 1000.0
        return Result(
            seq=frame.seq,
            t_capture_ns=frame.t_capture_ns,
            t_done_ns=time.monotonic_ns(),
            frame=frame.image,
            box=view.box,
            model_rgb=view.rgb,
            grid=self.engine.grid,
            cls=m["cls"],
            rollout=m["rollout"],
            entropy=m["entropy"],
            patch_entropy=m["patch_entropy"],
            patch_entropy_layer=settings.entropy_layer % self.engine.num_layers,
            query=m["query"],
            query_patch=settings.query_patch if m["query"] is not None else None,
            topk=top,
            infer_ms=dt,
            settings=settings,
            pts_s=frame.pts_s,
            attn=out.attn[0] if self.keep_attn else None,
        )

    def run(self) -> None:
        try:
            torch.set_grad_enabled(False)
            while not self.stop_event.is_set():
                if self.paused.is_set():
                    self.stop_event.wait(0.02)
                    continue
                frame = self.frames.get(timeout=0.1)
                if frame is None:
                    continue
                result = self.process(frame)
                self._done_times.append(time.perf_counter())
                self.infer_ms = result.infer_ms
                self.processed += 1
                self.results.put(result)
        except Exception as exc:  # publish, never kill the window
            logger.exception("inference worker crashed")
            self.error = f"inference stopped: {type(exc).__name__}: {exc}"

    def stop(self, timeout: float = 2.0) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)
