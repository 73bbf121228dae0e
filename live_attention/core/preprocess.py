"""From a camera frame to the model's input tensor, on the model's device.

A :class:`Preprocess` is the model's own transform, read from its weights or configuration: resize
the shorter side, centre-crop, scale to [0, 1], normalise (torchvision's ``ImageClassification``,
timm's ``resolve_data_config``, a Hugging Face ``preprocessor_config.json``). With ``full_frame`` the
whole frame is kept at its own aspect ratio instead: the shorter side becomes ``crop_size`` and both
sides round to a multiple of the patch size, so the overlay covers the whole picture.

The uint8 frame is uploaded first, then resized, cropped and normalised where the model runs: on a
GPU the host only copies bytes. Pure functions; whichever thread owns the engine calls them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Plan:
    """How one frame size becomes the model input: resize to ``resized`` (h, w), then take the
    ``crop`` (top, left, h, w) of it; ``box`` (x0, y0, x1, y1) is that region in frame pixels."""

    resized: tuple[int, int]
    crop: tuple[int, int, int, int]
    box: Box

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.crop[2], self.crop[3]


@dataclass(frozen=True)
class Preprocess:
    """The model's input transform.

    Args:
        crop_size: the side of the square the model sees (or, with ``full_frame``, its shorter side).
        resize_size: the shorter side after resizing, before the centre crop (>= ``crop_size``).
        mean, std: per-channel normalisation of RGB in [0, 1].
        interpolation: ``bilinear``, ``bicubic`` or ``nearest`` (antialiased when shrinking).
        full_frame: keep the whole frame at its aspect ratio instead of a centre crop.
        multiple: with ``full_frame``, both sides round to a multiple of this (the patch size).
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    full_frame: bool = False
    multiple: int = 1

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.crop_size < 1 or self.resize_size < self.crop_size:
            raise ValueError(f"resize_size {self.resize_size} must be >= crop_size {self.crop_size} >= 1")

    def plan(self, height: int, width: int) -> Plan:
        """Where a ``height``×``width`` frame goes (cached by the engine per frame size)."""
        if self.full_frame:
            m = self.multiple
            s = self.crop_size / min(height, width)
            rh = max(m, int(round(height * s / m)) * m)
            rw = max(m, int(round(width * s / m)) * m)
            return Plan((rh, rw), (0, 0, rh, rw), (0, 0, width, height))
        rh, rw = resized_hw(height, width, self.resize_size)
        c = self.crop_size
        top = int(round((rh - c) / 2.0))
        left = int(round((rw - c) / 2.0))
        sy, sx = height / rh, width / rw
        box = (
            max(0, int(round(left * sx))),
            max(0, int(round(top * sy))),
            min(width, int(round((left + c) * sx))),
            min(height, int(round((top + c) * sy))),
        )
        return Plan((rh, rw), (top, left, c, c), box)

    def crop_box(self, height: int, width: int) -> Box:
        """The region ``(x0, y0, x1, y1)`` of a ``height``×``width`` frame that the model sees."""
        return self.plan(height, width).box

    def apply(self, frame: np.ndarray, device: torch.device | str = "cpu") -> tuple[Tensor, Box]:
        """A BGR/BGRA/grayscale uint8 frame to the normalised input [1, 3, h, w] (fp32) on ``device``.

        Exactly torchvision's ``ImageClassification`` on a uint8 tensor: antialiased resize of the
        shorter side, round-half centre crop, scale, normalise.
        """
        chw = frame_to_chw(frame, device)
        h, w = chw.shape[-2:]
        if h < 2 or w < 2:
            raise ValueError(f"frame too small: {w}×{h} pixels")
        plan = self.plan(h, w)
        return self.transform(chw.unsqueeze(0), plan, *normalisation(self, chw.device)), plan.box

    def transform(self, rgb: Tensor, plan: Plan, mean: Tensor, std: Tensor) -> Tensor:
        """RGB uint8 ``[B, 3, H, W]`` to the normalised input ``[B, 3, h, w]`` fp32 where it lies: resize,
        crop, scale, normalise (``mean``, ``std``: :func:`normalisation`). Pure device work, no
        synchronisation with the host, so a CUDA graph can capture it."""
        t = TF.resize(rgb, list(plan.resized), interpolation=InterpolationMode(self.interpolation), antialias=True)
        top, left, ch, cw = plan.crop
        if (top, left, ch, cw) != (0, 0, *plan.resized):
            t = t[..., top : top + ch, left : left + cw]
        return t.to(torch.float32).div_(255.0).sub_(mean).div_(std)


@functools.lru_cache(maxsize=16)
def normalisation(spec: Preprocess, device: torch.device) -> tuple[Tensor, Tensor]:
    """``spec``'s mean and std as ``[3, 1, 1]`` fp32 tensors on ``device``, made once (building them from
    Python numbers on a GPU is a host-to-device copy: two per frame before)."""
    with torch.inference_mode(False):
        mean = torch.tensor(spec.mean, dtype=torch.float32, device=device).view(3, 1, 1)
        std = torch.tensor(spec.std, dtype=torch.float32, device=device).view(3, 1, 1)
    return mean, std


class FrameBatch:
    """Device preprocessing of same-sized BGR(A)/grey uint8 frames, for the thread that owns the device.

    Made once per frame shape (the plan, mean and std are ready before any step runs); calling it on
    the frames as one uint8 tensor ``[B, H, W, C]`` (or ``[B, H, W]``) on the device gives the model's
    input ``[B, 3, h, w]`` with device work only, so it can run inside a captured step. Each frame's
    region is :attr:`box`.
    """

    def __init__(self, spec: Preprocess, frame_shape: tuple[int, ...], device: torch.device) -> None:
        channels = frame_shape[2] if len(frame_shape) == 3 else 1
        if len(frame_shape) not in (2, 3) or channels not in (1, 3, 4):
            raise ValueError(f"frame must be H×W, H×W×1, H×W×3 (BGR) or H×W×4 (BGRA), got shape {frame_shape}")
        h, w = frame_shape[:2]
        if h < 2 or w < 2:
            raise ValueError(f"frame too small: {w}×{h} pixels")
        self.spec, self.channels = spec, channels
        self.plan = spec.plan(h, w)
        self.box = self.plan.box
        self.mean, self.std = normalisation(spec, torch.device(device))

    def __call__(self, frames: Tensor) -> Tensor:
        if self.channels == 1:
            grey = frames.reshape(*frames.shape[:3])
            rgb = grey.unsqueeze(1).expand(-1, 3, -1, -1)
        else:
            rgb = frames[..., :3].flip(-1).permute(0, 3, 1, 2)  # BGR(A) -> RGB [B, 3, H, W]
        return self.spec.transform(rgb, self.plan, self.mean, self.std)


def resized_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision's ``resize`` with one int: the shorter side becomes ``size``, the longer keeps the ratio."""
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def frame_to_chw(frame: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """BGR, BGRA or grayscale uint8 (H×W, H×W×1, H×W×3, H×W×4) to an RGB uint8 tensor [3, H, W] on ``device``.

    On the CPU OpenCV reorders the channels (SIMD, 0.2 ms for 960×720; a torch gather takes 15 ms); on a
    GPU the bytes are uploaded as they are and reordered there. Either way the result is a C×H×W view
    of H×W×C memory: torchvision's uint8 resize then takes the same kernel as on a decoded image, so
    the input equals the weights' own transforms.
    """
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"frame must be uint8, got {frame.dtype}")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[..., 0]
    if frame.ndim == 2:
        t = torch.from_numpy(np.ascontiguousarray(frame)).to(device, non_blocking=True)
        return t.unsqueeze(0).expand(3, -1, -1)
    if frame.ndim != 3 or frame.shape[2] not in (3, 4):
        raise ValueError(f"frame must be H×W, H×W×1, H×W×3 (BGR) or H×W×4 (BGRA), got shape {frame.shape}")
    if torch.device(device).type == "cpu":
        code = cv2.COLOR_BGR2RGB if frame.shape[2] == 3 else cv2.COLOR_BGRA2RGB
        return torch.from_numpy(cv2.cvtColor(frame, code)).permute(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(frame)).to(device, non_blocking=True)
    return t[..., :3].flip(-1).permute(2, 0, 1)  # BGR(A) -> RGB on the device
