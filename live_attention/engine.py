"""The attention engine: a ViT that returns every layer's and head's attention from one forward pass.

Owned by whichever thread calls it (in the app: the inference worker). Nothing here does I/O on
the per-frame path; loading weights happens once in :func:`load_model`.

Two model families are supported:

* torchvision ``VisionTransformer`` (any size). Its ``EncoderBlock`` calls ``nn.MultiheadAttention``
  with ``need_weights=False``, so hooks see nothing. We therefore run the encoder ourselves, block by
  block, with the module's own parameters, computing ``softmax(q·kᵀ·scale)`` explicitly. In fp32 the
  logits equal the stock forward (tested to 1e-4).
* timm ``VisionTransformer`` (optional). timm decides ``fused_attn`` when the model is built and fused
  attention never materialises weights, so we switch every block to the eager path and hook
  ``attn_drop``, whose input is the softmax. If a forward pass captures fewer maps than blocks we raise.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import urllib.error
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from live_attention.errors import UserError, WeightsError

TORCHVISION_MODELS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
DEMO_MODEL = "demo"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------------
# Device and precision
# --------------------------------------------------------------------------------------------------


def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.system() == "Darwin" and platform.machine() == "arm64" and _macos_has_bf16()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _macos_has_bf16() -> bool:
    import subprocess

    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=2
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return out == "1"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU. An unavailable explicit choice is a UserError."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here: use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r} asked for but MPS is not available here: use --device cpu or auto")
    return dev


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 on CUDA and MPS; bf16 on a CPU with native bf16; fp32 otherwise."""
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if p != "auto":
        return p  # as asked (fp16 on a CPU is emulated and slow, but allowed)
    if device.type in ("cuda", "mps"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


# --------------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, scale to [0, 1], normalise: torchvision's
    ``ImageClassification`` transform, which ViT weights carry, applied to a uint8 tensor.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def crop_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The region ``(x0, y0, x1, y1)`` of a ``height``×``width`` frame that the model sees."""
        rh, rw = _resized_hw(height, width, self.resize_size)
        top = int(round((rh - self.crop_size) / 2.0))
        left = int(round((rw - self.crop_size) / 2.0))
        sy, sx = height / rh, width / rw
        x0, y0 = left * sx, top * sy
        x1, y1 = (left + self.crop_size) * sx, (top + self.crop_size) * sy
        return (
            max(0, int(round(x0))),
            max(0, int(round(y0))),
            min(width, int(round(x1))),
            min(height, int(round(y1))),
        )


def _resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    # torchvision's F.resize with a single int: the shorter side becomes `size`, the longer keeps ratio.
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def to_rgb_uint8(frame: np.ndarray) -> np.ndarray:
    """BGR, BGRA or grayscale uint8 (H×W, H×W×1, H×W×3, H×W×4) to contiguous RGB uint8."""
    import cv2

    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 1):
        return cv2.cvtColor(frame.reshape(frame.shape[:2]), cv2.COLOR_GRAY2RGB)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    raise ValueError(f"frame must be H×W, H×W×1, H×W×3 (BGR) or H×W×4 (BGRA), got shape {frame.shape}")


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutput:
    """One forward pass. ``logits`` [B, C] fp32; ``attn`` [B, L, H, N, N] fp32 probabilities."""

    logits: Tensor
    attn: Tensor


@dataclass(frozen=True)
class ModelView:
    """What the model saw of one frame: the RGB crop at model size and where it lies in the frame."""

    rgb: np.ndarray  # S×S×3 uint8, the crop after resizing
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in frame pixels


class AttentionEngine:
    """A ViT wrapper whose :meth:`run` returns logits and every layer's and head's attention.

    Args:
        module: a torchvision or timm ``VisionTransformer``.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16`` (``auto``: see :func:`resolve_precision`).
        preprocess: the weights' own transform; defaults to a resize-to-input-size ImageNet transform.
        categories: class names, index-aligned with the logits.
        name, weights_label: shown in the HUD and recorded in manifests.
        untrained: True for randomly initialised weights; the UI labels it.
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
    ) -> None:
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.dtype = _DTYPES[self.precision]
        self.kind = _model_kind(module)
        self.module = module.eval().to(device=self.device, dtype=self.dtype)
        for p in self.module.parameters():
            p.requires_grad_(False)
        if self.kind == "torchvision":
            enc = module.encoder
            self.num_layers = len(enc.layers)
            self.num_heads = enc.layers[0].num_heads
            self.image_size = int(module.image_size)
            self.patch_size = int(module.patch_size)
            gh = gw = self.image_size // self.patch_size
            self.num_prefix = 1
            self.num_classes = int(module.num_classes)
        else:
            self._prepare_timm()
            gh, gw = (int(g) for g in module.patch_embed.grid_size)
            self.image_size = int(module.patch_embed.img_size[0])
            self.patch_size = int(module.patch_embed.patch_size[0])
            self.num_layers = len(module.blocks)
            self.num_heads = int(module.blocks[0].attn.num_heads)
            self.num_prefix = int(getattr(module, "num_prefix_tokens", 1))
            self.num_classes = int(module.num_classes)
            if getattr(module, "cls_token", None) is None:
                raise UserError("this timm model has no class token: live-attention needs a CLS-token ViT")
        self.grid = (gh, gw)
        self.num_patches = gh * gw
        self.num_tokens = self.num_patches + self.num_prefix
        self.preprocess_spec = preprocess or Preprocess(crop_size=self.image_size, resize_size=self.image_size)
        if self.preprocess_spec.crop_size != self.image_size:
            raise UserError(
                f"preprocess crops {self.preprocess_spec.crop_size} px but the model takes {self.image_size} px"
            )
        self._mean = torch.tensor(self.preprocess_spec.mean).view(3, 1, 1)
        self._std = torch.tensor(self.preprocess_spec.std).view(3, 1, 1)
        self.categories: list[str] = (
            list(categories) if categories else [f"class {i}" for i in range(self.num_classes)]
        )
        self.name = name or type(module).__name__
        self.weights_label = weights_label
        self.weights_sha256 = weights_sha256
        self.untrained = untrained

    @classmethod
    def wrap(
        cls,
        module: nn.Module,
        device: str | torch.device = "auto",
        precision: str = "auto",
        **kwargs: Any,
    ) -> AttentionEngine:
        """Wrap any torchvision ``VisionTransformer`` or timm ``VisionTransformer``."""
        return cls(module, device=device, precision=precision, **kwargs)

    # ---------------------------------------------------------------------------------------------
    def describe(self) -> str:
        tag = " UNTRAINED" if self.untrained else ""
        return f"{self.name} [{self.weights_label}{tag}] {self.precision} on {self.device.type}"

    # ---------------------------------------------------------------------------------------------
    def preprocess(self, frame: np.ndarray) -> Tensor:
        """A BGR/BGRA/grayscale uint8 frame of any size to the model's input tensor [1, 3, S, S]."""
        tensor, _ = self.preprocess_with_view(frame)
        return tensor

    def preprocess_with_view(self, frame: np.ndarray) -> tuple[Tensor, ModelView]:
        """Like :meth:`preprocess`, and also return what the model saw (RGB crop and its frame box)."""
        rgb = to_rgb_uint8(frame)
        h, w = rgb.shape[:2]
        if h < 2 or w < 2:
            raise ValueError(f"frame too small: {w}×{h}")
        spec = self.preprocess_spec
        # Exactly torchvision's ImageClassification on a uint8 tensor: antialiased resize of the
        # shorter side, round-half centre crop, scale, normalise.
        t = torch.from_numpy(rgb).permute(2, 0, 1)
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        interp = InterpolationMode(spec.interpolation)
        t = TF.resize(t, [spec.resize_size], interpolation=interp, antialias=True)
        t = TF.center_crop(t, [spec.crop_size, spec.crop_size])
        crop = np.ascontiguousarray(t.permute(1, 2, 0).numpy())
        x = t.to(torch.float32).div_(255.0).sub_(self._mean).div_(self._std)
        view = ModelView(rgb=crop, box=spec.crop_box(h, w))
        return x.unsqueeze(0), view

    # ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, images: Tensor) -> RunOutput:
        """One forward pass on ``images`` [B, 3, S, S]: logits [B, C] and attention [B, L, H, N, N]."""
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, S, S], got {tuple(images.shape)}")
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}×{self.image_size} for this model, got "
                f"{images.shape[-2]}×{images.shape[-1]}: use engine.preprocess(frame)"
            )
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
        x = images.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.kind == "torchvision":
            logits, attn = self._run_torchvision(x)
        else:
            logits, attn = self._run_timm(x)
        return RunOutput(logits=logits.float(), attn=attn)

    def _run_torchvision(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.module
        x = m._process_input(x)
        b = x.shape[0]
        x = torch.cat([m.class_token.expand(b, -1, -1), x], dim=1)
        enc = m.encoder
        x = enc.dropout(x + enc.pos_embedding)
        attn = torch.empty(
            (b, self.num_layers, self.num_heads, x.shape[1], x.shape[1]), device=x.device, dtype=torch.float32
        )
        for i, blk in enumerate(enc.layers):
            y = blk.ln_1(x)
            y = _mha_with_weights(blk.self_attention, y, attn[:, i])
            x = x + blk.dropout(y)
            x = x + blk.mlp(blk.ln_2(x))
        x = enc.ln(x)
        logits = m.heads(x[:, 0])
        return logits, attn

    def _prepare_timm(self) -> None:
        self._timm_store: list[Tensor] = []
        blocks = self.module.blocks
        for blk in blocks:
            attn_mod = blk.attn
            if hasattr(attn_mod, "fused_attn"):
                attn_mod.fused_attn = False  # fused attention never produces weights
            if not hasattr(attn_mod, "attn_drop"):
                raise UserError("this timm model's attention has no attn_drop: cannot capture its weights")
            attn_mod.attn_drop.register_forward_hook(lambda _m, _i, out: self._timm_store.append(out))

    def _run_timm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._timm_store.clear()
        logits = self.module(x)
        got = len(self._timm_store)
        if got != self.num_layers:
            self._timm_store.clear()
            raise RuntimeError(
                f"captured attention from {got} of {self.num_layers} blocks: this timm version computes "
                "attention without attn_drop; pin timm or report it"
            )
        attn = torch.stack([a.float() for a in self._timm_store], dim=1)
        self._timm_store.clear()
        return logits, attn

    # ---------------------------------------------------------------------------------------------
    def topk(self, logits: Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-k (label, probability) per batch item, labels from the weights' metadata."""
        probs = logits.float().softmax(-1)
        k = min(k, probs.shape[-1])
        p, idx = probs.topk(k, dim=-1)
        return [
            [(self.categories[int(i)], float(v)) for v, i in zip(pr, ix, strict=True)]
            for pr, ix in zip(p.cpu(), idx.cpu(), strict=True)
        ]


def _mha_with_weights(mha: nn.MultiheadAttention, x: Tensor, out_attn: Tensor) -> Tensor:
    """Self-attention exactly as ``nn.MultiheadAttention`` (batch_first, packed in_proj), writing the
    fp32 attention probabilities [B, H, N, N] into ``out_attn``."""
    b, n, e = x.shape
    h = mha.num_heads
    d = e // h
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D]
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(d))
    # Softmax in fp32 whatever the model precision: map maths wants fp32 and rows summing to 1.
    out_attn.copy_(torch.softmax(scores, dim=-1, dtype=torch.float32))
    ctx = torch.matmul(out_attn.to(v.dtype), v)  # [B, H, N, D]
    ctx = ctx.transpose(1, 2).reshape(b, n, e)
    return F.linear(ctx, mha.out_proj.weight, mha.out_proj.bias)


def _model_kind(module: nn.Module) -> str:
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    if isinstance(module, TVViT):
        return "torchvision"
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        TimmViT = None  # noqa: N806
    if TimmViT is not None and isinstance(module, TimmViT):
        return "timm"
    raise UserError(
        f"{type(module).__name__} is not a torchvision or timm VisionTransformer: live-attention cannot "
        "read its attention"
    )


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _tv_builder(name: str) -> tuple[Callable[..., nn.Module], Any]:
    from torchvision import models

    builder = getattr(models, name)
    weights_enum = models.get_model_weights(name)
    return builder, weights_enum.DEFAULT


def hub_checkpoint_path(url: str) -> Path:
    """Where torchvision's weights API caches a download: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a checkpoint safely (``weights_only=True``) and return its state dict.

    Accepts a plain state dict (what torchvision downloads) or a dict holding one under
    ``state_dict``/``model``. Missing, unreadable or corrupt files raise :class:`WeightsError`.
    """
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"weights file not found: {p} (check the path, or use --weights imagenet)")
    if p.is_dir():
        raise WeightsError(f"weights path is a folder, not a file: {p}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, refusals of unsafe globals
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"cannot read weights file {p}: {first[:160]} (is it a PyTorch state dict? re-download it)"
        ) from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    elif isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {p} does not hold a state dict of tensors")
    return obj


def apply_state_dict(module: nn.Module, state: dict[str, Tensor], *, name: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape_bad:
        parts = []
        if shape_bad:
            k = shape_bad[0]
            parts.append(
                f"{len(shape_bad)} tensors of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise WeightsError(
            f"weights {source} do not fit {name}: {'; '.join(parts)}. Pass --model matching the file"
        )
    module.load_state_dict(state, strict=True)


def _ensure_hub_file(name: str, weights: Any) -> Path:
    url = weights.url
    path = hub_checkpoint_path(url)
    if path.exists():
        return path
    if os.environ.get("LIVE_ATTENTION_OFFLINE") or os.environ.get("HF_HUB_OFFLINE") == "1":
        reason = "offline mode is set"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=True)
            return path
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            reason = f"download failed ({type(exc).__name__})"
            if path.exists():
                path.unlink(missing_ok=True)
    raise WeightsError(
        f"ImageNet weights for {name} are not cached and {reason}: put {os.path.basename(url)} "
        f"(from {url}) into {path.parent}, or pass --weights PATH to a local file, "
        f"or --weights random for an untrained model"
    )


def load_model(
    name: str = "vit_b_16",
    weights: str | os.PathLike[str] = "imagenet",
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> AttentionEngine:
    """Build a ViT with weights and wrap it in an :class:`AttentionEngine`.

    Args:
        name: ``vit_b_16`` (default), ``vit_b_32``, ``vit_l_16``, ``vit_l_32``, ``vit_h_14`` (torchvision),
            or ``demo`` (the project's own small ViT, trained on synthetic scenes).
        weights: ``imagenet`` (torchvision's weights API: downloaded once into the torch hub cache),
            a path to a local state dict, or ``random`` (untrained; flagged as such).
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        precision: ``auto``, ``fp32``, ``fp16``, ``bf16``.
    """
    name = str(name).strip()
    w = str(weights).strip() if not isinstance(weights, os.PathLike) else os.fspath(weights)
    if name == DEMO_MODEL:
        from live_attention.demo_model import build_demo_engine

        return build_demo_engine(weights=w, device=device, precision=precision)
    if name not in TORCHVISION_MODELS:
        raise UserError(f"unknown model {name!r}: use one of {', '.join((*TORCHVISION_MODELS, DEMO_MODEL))}")
    builder, default_weights = _tv_builder(name)
    meta = default_weights.meta
    categories = list(meta.get("categories") or [])
    tf = default_weights.transforms()
    crop = int(tf.crop_size[0])
    resize = int(tf.resize_size[0])
    interp = tf.interpolation.value
    preprocess = Preprocess(
        crop_size=crop, resize_size=resize, mean=tuple(tf.mean), std=tuple(tf.std), interpolation=interp
    )
    # The DEFAULT weights of vit_h_14 are 518 px; build the module for the weights' own size.
    module = builder(weights=None, image_size=crop)
    untrained = False
    sha = None
    if w.lower() == "random":
        label = "random"
        untrained = True
    elif w.lower() in ("imagenet", "default"):
        path = _ensure_hub_file(name, default_weights)
        apply_state_dict(module, load_state_dict_file(path), name=name, source=f"in {path}")
        label = str(default_weights).split(".")[-1]
        sha = file_sha256(path)
    else:
        path = Path(w).expanduser()
        apply_state_dict(module, load_state_dict_file(path), name=name, source=f"file {path}")
        label = path.name
        sha = file_sha256(path)
    return AttentionEngine(
        module,
        device=device,
        precision=precision,
        preprocess=preprocess,
        categories=categories,
        name=name,
        weights_label=label,
        weights_sha256=sha,
        untrained=untrained,
    )
