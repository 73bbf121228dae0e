"""The attention engine: a ViT that returns its logits and the parts of its attention the views need.

Owned by whichever thread calls it (in the app: the inference worker). Nothing here does I/O on the
per-frame path; loading weights happens once in :mod:`live_attention.core.models`.

One forward pass reports every layer's attention to a collector, which keeps only what a
:class:`Keep` asks for: all of it (``[B, L, H, N, N]``, the documented default), the class token's
rows, per-layer head-fused matrices for rollout and flow, one layer's row entropies, token norms, in
fp32 or fp16 storage. At 4,801 tokens (640×480 at patch 8) the full attention would be 6.6 GB a
frame; what the live views keep is a few MB. :meth:`AttentionEngine.relevance` adds the backward pass
for class-specific relevance (Chefer, Gur & Wolf, ICCV 2021) on a gradient path of its own.

The model families (torchvision, timm, Hugging Face) are in :mod:`live_attention.core.families`;
the input transform in :mod:`live_attention.core.preprocess`; :class:`Keep`, :class:`Selection`,
:class:`RunOutput` and the collector in :mod:`live_attention.core.keep`; the device and precision
in :mod:`live_attention.core.device`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from live_attention.core import maps
from live_attention.core.device import DTYPES, resolve_device, resolve_precision
from live_attention.core.families import Family, family_of
from live_attention.core.keep import Collector, Keep, RunOutput, Selection
from live_attention.core.preprocess import Box, Preprocess
from live_attention.errors import UserError

_MAX_INDICES = 4096  # cached index tensors (one per query patch, layer, fusion and target seen)


class AttentionEngine:
    """A ViT whose :meth:`run` returns logits and attention, and :meth:`relevance` class-specific maps.

    Args:
        module: a torchvision, timm or Hugging Face ViT (see :mod:`live_attention.core.families`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (``auto``: see :func:`resolve_precision`).
        preprocess: the model's own transform; default: resize to the model's input size, ImageNet mean/std.
        categories: class names, index-aligned with the logits.
        name, weights_label: shown in the HUD and recorded in manifests.
        untrained: True for randomly initialised weights; the UI labels it.
        multilabel: the classes are independent (one sigmoid each) rather than one softmax.
        input_size: run at this input side (a multiple of the patch size) instead of the model's own.
        full_frame: no centre crop: the whole frame at its aspect ratio, shorter side ``input_size``.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        device: str | torch.device = "auto",
        precision: str = "auto",
        preprocess: Preprocess | None = None,
        categories: Sequence[str] | None = None,
        name: str | None = None,
        weights_label: str = "custom",
        weights_sha256: str | None = None,
        untrained: bool = False,
        multilabel: bool = False,
        input_size: int | None = None,
        full_frame: bool = False,
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = DTYPES[self.precision]
        self.family: Family = family_of(module)
        self.kind = self.family.kind
        self.module = module.eval().to(device=self.device, dtype=self.dtype)
        for p in self.module.parameters():
            p.requires_grad_(False)
        f = self.family
        self.num_layers, self.num_heads, self.patch_size = f.num_layers, f.num_heads, f.patch_size
        self.num_prefix, self.num_classes = f.num_prefix, f.num_classes
        self.has_classifier = f.num_classes > 0
        self.multilabel = bool(multilabel)
        own = f.image_size[0]
        spec = preprocess or f.default_preprocess() or Preprocess(crop_size=own, resize_size=own)
        self.preprocess_spec = spec
        self.configure_input(input_size, full_frame)
        if not self.has_classifier:
            self.categories: list[str] = []
        elif categories:
            if len(categories) != self.num_classes:
                raise UserError(f"{len(categories)} class names for a model with {self.num_classes} classes")
            self.categories = list(categories)
        else:
            self.categories = [f"class {i}" for i in range(self.num_classes)]
        self._indices: dict[tuple[int, ...], Tensor] = {}
        self.name = name or type(module).__name__
        self.weights_label = weights_label
        self.weights_sha256 = weights_sha256
        self.untrained = untrained

    @classmethod
    def wrap(cls, module: nn.Module, device: str | torch.device = "auto", precision: str = "auto",
             **kwargs) -> AttentionEngine:
        """Wrap any torchvision, timm or Hugging Face ViT (see :class:`AttentionEngine` for the options)."""
        return cls(module, device=device, precision=precision, **kwargs)

    # ---------------------------------------------------------------------------------------------
    def configure_input(self, input_size: int | None = None, full_frame: bool = False) -> None:
        """Run at ``input_size`` (a multiple of the patch size; None: the model's own) and/or on the full frame."""
        spec = self.preprocess_spec
        p = self.patch_size
        if input_size is not None:
            n = int(input_size)
            if n < p or n % p:
                raise UserError(f"--input-size {n} must be a positive multiple of the patch size {p}")
            resize = max(n, math.floor(n * spec.resize_size / spec.crop_size))  # timm: floor(size / crop_pct)
            spec = replace(spec, crop_size=n, resize_size=resize)
        if spec.crop_size % p:
            raise UserError(f"the model takes {spec.crop_size} px, not a multiple of its patch size {p}")
        self.preprocess_spec = replace(spec, full_frame=bool(full_frame), multiple=p)
        side = self.preprocess_spec.crop_size
        self.grid = (side // p, side // p)

    @property
    def image_size(self) -> int:
        """The input side (the square crop), or the shorter side with ``full_frame``."""
        return self.preprocess_spec.crop_size

    @property
    def on_host(self) -> bool:
        """True on a CPU: the engine's tensors are host memory, so preprocessing is host work that any
        thread may do (the offline path's decode thread does). Elsewhere every piece of device work,
        preprocessing included, belongs to the thread that owns the engine, and other threads get host
        copies."""
        return self.device.type == "cpu"

    @property
    def full_frame(self) -> bool:
        return self.preprocess_spec.full_frame

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_patches + self.num_prefix

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid (rows, cols) of a ``height``×``width`` frame."""
        h, w = self.preprocess_spec.plan(height, width).input_hw
        return h // self.patch_size, w // self.patch_size

    def describe(self) -> str:
        tag = " UNTRAINED" if self.untrained else ""
        size = " full frame" if self.full_frame else ""
        return f"{self.name} [{self.weights_label}{tag}] {self.precision} on {self.device.type}{size}"

    # ---------------------------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> Tensor:
        """A BGR/BGRA/grayscale uint8 frame of any size to the model's input tensor [1, 3, h, w] on the device."""
        return self.preprocess_with_box(frame)[0]

    def preprocess_with_box(self, frame: np.ndarray) -> tuple[Tensor, Box]:
        """Like :meth:`preprocess`, and also the region ``(x0, y0, x1, y1)`` of the frame the model sees."""
        x, box = self.preprocess_spec.apply(frame, self.device)
        return x, box

    # ---------------------------------------------------------------------------------------------
    def _input(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"images must have sides that are multiples of the patch size {p}, got {h}×{w}: "
                "use engine.preprocess(frame)"
            )
        return images.to(device=self.device, dtype=self.dtype, non_blocking=True)

    def selection(self, rows: Sequence[int] = (0,), layer: int = 0, fusion: int = 0) -> Selection:
        """The :class:`Selection` of these values on the engine's device, made once per distinct value
        (a copy from the host is a synchronisation: never inside a step)."""
        rows = tuple(int(r) for r in rows)
        return Selection(self.index_tensor((*rows, int(layer), int(fusion))), len(rows))

    def index_tensor(self, values: Sequence[int]) -> Tensor:
        """``values`` as an int64 tensor on the engine's device, made once per distinct tuple (copying
        from the host synchronises, so never inside a step). Owned by the engine's thread."""
        key = tuple(int(v) for v in values)
        t = self._indices.get(key)
        if t is None:
            if len(self._indices) >= _MAX_INDICES:
                self._indices.clear()
            with torch.inference_mode(False):  # a normal tensor: relevance's autograd may save it
                t = self._indices[key] = torch.tensor(key, dtype=torch.long, device=self.device)
        return t

    def _selection_for(self, keep: Keep) -> Selection:
        fusion = maps.FUSIONS.index(keep.fused) if keep.fused in maps.FUSIONS else 0
        return self.selection(keep.rows, 0, fusion)

    @torch.inference_mode()
    def run(self, images: Tensor, keep: Keep | None = None, select: Selection | None = None) -> RunOutput:
        """One forward pass on ``images`` [B, 3, H, W] (sides multiples of the patch size).

        Returns the logits and what ``keep`` asks for: by default every layer's and head's attention,
        ``out.attn`` [B, L, H, N, N] fp32 probabilities. ``select``: the rows and fusion as device data
        (see :class:`Selection`; default: ``keep``'s own).
        """
        keep = keep or Keep()
        x = self._input(images)
        col = Collector(keep, self.num_layers, select or self._selection_for(keep))
        logits = self.family.forward(x, col)
        return col.output(logits, self._record_grid(x), self.num_prefix)

    def relevance(self, images: Tensor, targets: int | Sequence[int] | Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Class-specific relevance (Chefer, Gur & Wolf, ICCV 2021, the self-attention rule).

        ``targets``: None for each image's top-1 class, one class index, or one per image.
        Returns ``(logits [B, C], relevance [B, P])``: fp32 patch relevance, not normalised.
        """
        out = self.explain(images, Keep.parts(), targets)
        assert out.logits is not None and out.relevance is not None  # explain(): a classifier, and its relevance
        return out.logits, out.relevance

    def explain(self, images: Tensor, keep: Keep | None = None,
                targets: int | Sequence[int] | Tensor | None = None, select: Selection | None = None) -> RunOutput:
        """:meth:`run` and :meth:`relevance` from one forward pass (and one backward pass), with no
        synchronisation with the host (the targets are checked on the host before the pass)."""
        if not self.has_classifier:
            raise UserError(f"{self.name} has no classifier: class-specific relevance needs class scores")
        keep = keep or Keep.parts()
        select = select or self._selection_for(keep)
        fixed = self._check_targets(targets)
        with torch.inference_mode(False), torch.enable_grad():
            x = self._input(images).detach().clone().requires_grad_(True)
            col = Collector(keep, self.num_layers, select, grad=True)
            graph = col.graph
            assert graph is not None  # grad=True: the probabilities as they are in the autograd graph
            logits = self.family.forward(x, col)
            assert logits is not None  # has_classifier, checked above
            t = self._targets(fixed, logits)
            score = logits.float().gather(1, t[:, None]).sum()
            grads = torch.autograd.grad(score, graph)
        rel = maps.chefer_relevance([a.detach() for a in graph], [g.detach() for g in grads], self.num_prefix)
        out = col.output(logits, self._record_grid(x), self.num_prefix)
        return replace(out, relevance=rel, targets=t)

    def _check_targets(self, targets) -> Tensor | None:
        """The targets as an int64 tensor on the engine's device (made once per value), range-checked
        where they are: on the host for numbers, on the device (one synchronisation) for a tensor there.
        None: each image's top-1."""
        if targets is None:
            return None
        c = self.num_classes
        if isinstance(targets, Tensor) and targets.device.type != "cpu":
            t = targets.to(dtype=torch.long).reshape(-1)
            if bool(((t < 0) | (t >= c)).any()):
                raise ValueError(f"target class out of range 0..{c - 1}: {t.tolist()}")
            return t
        if isinstance(targets, Tensor):
            values = [int(v) for v in targets.reshape(-1).tolist()]
        else:
            values = [int(targets)] if np.ndim(targets) == 0 else [int(v) for v in np.ravel(targets)]
        if any(not 0 <= v < c for v in values):
            raise ValueError(f"target class out of range 0..{c - 1}: {values}")
        return self.index_tensor(values)

    def _targets(self, fixed: Tensor | None, logits: Tensor) -> Tensor:
        b = logits.shape[0]
        if fixed is None:
            return logits.detach().argmax(-1)  # in range by construction: nothing to check
        if fixed.numel() == 1:
            return fixed.expand(b)
        if fixed.numel() != b:
            raise ValueError(f"targets: one class index or one per image ({b}), got {fixed.numel()}")
        return fixed

    def _record_grid(self, x: Tensor) -> tuple[int, int]:
        """The patch grid of input ``x``, recorded as :attr:`grid` (the grid of the last pass)."""
        grid = (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size)
        self.grid = grid
        return grid

    def class_index(self, target: str | int | None) -> int | None:
        """A class given as an index or a label (case-insensitive; a unique prefix will do); None or ''
        for each frame's top-1. A :class:`UserError` names what is wrong."""
        t = "" if target is None else str(target).strip()
        if not t:
            return None
        if not self.has_classifier:
            raise UserError(f"--target {t}: {self.name} has no classifier, so there is no class to explain")
        if t.isdigit():
            if int(t) >= self.num_classes:
                raise UserError(f"--target {t}: {self.name} has classes 0..{self.num_classes - 1}")
            return int(t)
        names = [c.lower() for c in self.categories]
        if t.lower() in names:
            return names.index(t.lower())
        hits = [i for i, n in enumerate(names) if n.startswith(t.lower())]
        if len(hits) == 1:
            return hits[0]
        if hits:
            some = ", ".join(self.categories[i] for i in hits[:4])
            raise UserError(f"--target {t!r} matches several classes ({some}...): give more of the name or an index")
        if len(self.categories) <= 12:
            raise UserError(f"--target {t!r} is not one of {self.name}'s classes: give one of "
                            f"{', '.join(self.categories)}, or an index 0..{self.num_classes - 1}")
        raise UserError(f"--target {t!r} is not one of {self.name}'s {self.num_classes} classes: give a label "
                        f"(such as {self.categories[0]!r}) or an index 0..{self.num_classes - 1}")

    # ---------------------------------------------------------------------------------------------
    def probabilities(self, logits: Tensor) -> Tensor:
        """Class probabilities: a sigmoid per class for a multi-label model, else a softmax."""
        return logits.float().sigmoid() if self.multilabel else logits.float().softmax(-1)

    def topk(self, logits: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per batch item, labels from the weights' metadata."""
        probs = self.probabilities(logits)
        k = min(k, probs.shape[-1])
        p, idx = probs.topk(k, dim=-1)
        return [
            [(self.categories[int(i)], float(v)) for v, i in zip(pr, ix, strict=True)]
            for pr, ix in zip(p.cpu(), idx.cpu(), strict=True)
        ]
