"""The ``demo`` model: a small torchvision ``VisionTransformer`` trained on :mod:`live_attention.demo.synthetic`.

A multi-label classifier (one sigmoid per shape: which of circle, square, triangle, cross appear in the
target style) with 64 px input, 8 px patches made by a small conv stem (three 3×3 stride-2 convolutions), 4
layers, 4 heads, hidden size 64 (199k parameters), trained at several input sizes so that ``--input-size`` and
``--full-frame`` keep their meaning. It needs no download:
its checkpoint ships in the package (``assets/demo_vit.pt``, made by ``python -m live_attention.demo.train``,
whose docstring has the recipe and the held-out metrics). A checkpoint is a dict readable with
``weights_only=True``::

    {"state_dict": {name: tensor}, "config": {architecture ints, "multilabel": bool, training notes},
     "classes": [str], "mean": [3 floats], "std": [3 floats]}

Weights may be stored in fp16 to keep the file small; loading copies them into the fp32 module. A checkpoint
without ``multilabel`` (the first, single-label demo model) is read as single-label: a softmax.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torchvision.models.vision_transformer import ConvStemConfig, VisionTransformer

from live_attention.core.device import resolve_device
from live_attention.core.engine import AttentionEngine
from live_attention.core.preprocess import Preprocess
from live_attention.core.weights import (
    apply_state_dict,
    checkpoint_kind,
    file_sha256,
    first_sentence,
    safe_torch_load,
)
from live_attention.demo.synthetic import CLASS_NAMES
from live_attention.errors import WeightsError

DEMO_CHECKPOINT = Path(__file__).resolve().parent / "assets" / "demo_vit.pt"
WEIGHTS_LABEL = "synthetic-shapes (toy)"
ARCH_KEYS = ("image_size", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim", "num_classes")
DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 64,
    "patch_size": 8,
    "num_layers": 4,
    "num_heads": 4,
    "hidden_dim": 64,
    "mlp_dim": 192,
    "num_classes": len(CLASS_NAMES),
    "conv_stem": [16, 32, 64],
}
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.25, 0.25, 0.25)
_SHIPPED = ("imagenet", "default", "demo")


def _check_config(config: Any, source: str) -> dict[str, Any]:
    """The architecture in ``config``: the ints of :data:`ARCH_KEYS` and ``conv_stem``, checked.

    ``conv_stem`` lists the channels of 3×3 stride-2 conv + BatchNorm + ReLU layers that replace the patchify
    convolution (torchvision's ``conv_stem_configs``, after Xiao et al. 2021: the demo model learns its
    shapes several times faster with it); their strides multiply to the patch size. Absent or empty: patchify.
    """
    if not isinstance(config, dict):
        raise WeightsError(f"{source} has no model config: it is not a demo-model checkpoint")
    arch: dict[str, Any] = {}
    for key in ARCH_KEYS:
        v = config.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise WeightsError(f"{source}: config {key!r} must be a positive int, got {v!r}")
        arch[key] = v
    if arch["image_size"] % arch["patch_size"]:
        raise WeightsError(f"{source}: image_size {arch['image_size']} is not a multiple of patch_size")
    if arch["hidden_dim"] % arch["num_heads"]:
        raise WeightsError(f"{source}: hidden_dim {arch['hidden_dim']} is not a multiple of num_heads")
    stem = config.get("conv_stem") or []
    if not isinstance(stem, (list, tuple)) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in stem
    ):
        raise WeightsError(f"{source}: config 'conv_stem' must be a list of positive ints, got {stem!r}")
    if stem and 2 ** len(stem) != arch["patch_size"]:
        raise WeightsError(f"{source}: a conv stem of {len(stem)} stride-2 layers does not make patches of "
                           f"{arch['patch_size']} px")
    arch["conv_stem"] = list(stem)
    return arch


def build_demo_module(config: dict[str, Any] | None = None) -> VisionTransformer:
    """A randomly initialised torchvision ``VisionTransformer`` with the architecture in ``config``."""
    arch = _check_config(DEFAULT_CONFIG if config is None else config, "demo config")
    stem = [ConvStemConfig(out_channels=c, kernel_size=3, stride=2) for c in arch["conv_stem"]]
    return VisionTransformer(
        image_size=arch["image_size"],
        patch_size=arch["patch_size"],
        num_layers=arch["num_layers"],
        num_heads=arch["num_heads"],
        hidden_dim=arch["hidden_dim"],
        mlp_dim=arch["mlp_dim"],
        num_classes=arch["num_classes"],
        conv_stem_configs=stem or None,
    )


def _triple(v: Any, key: str, source: str) -> tuple[float, float, float]:
    if (
        not isinstance(v, (list, tuple))
        or len(v) != 3
        or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    ):
        raise WeightsError(f"{source}: {key!r} must be a list of 3 numbers, got {v!r}")
    out = tuple(float(x) for x in v)
    if key == "std" and min(out) <= 0:
        raise WeightsError(f"{source}: 'std' must be positive, got {v!r}")
    return out  # type: ignore[return-value]


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a demo checkpoint (``weights_only=True``); any problem is a one-line WeightsError.

    Returns ``{"state_dict", "config" (architecture ints), "multilabel", "classes", "mean", "std"}``.
    """
    p = Path(path)
    if not p.exists():
        raise WeightsError(f"demo weights file not found: {p}")
    if p.is_dir():
        raise WeightsError(f"demo weights path is a folder, not a file: {p}")
    source = f"demo weights {p}"
    if checkpoint_kind(p, source) != "torch":
        raise WeightsError(f"{source} is a safetensors file: a demo checkpoint is a .pt file made by "
                           "`python -m live_attention.demo.train`")
    try:
        obj = safe_torch_load(p)
    except pickle.UnpicklingError as exc:
        raise WeightsError(f"cannot read {source}: it holds Python objects, not only tensors, and a safe load "
                           "refuses them (a demo checkpoint is made by `python -m live_attention.demo.train`)") from exc
    except Exception as exc:  # zip errors, truncated files
        raise WeightsError(f"cannot read {source}: {first_sentence(exc)} (a damaged file? make it again with "
                           "`python -m live_attention.demo.train`)") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        raise WeightsError(f"{source} holds no 'state_dict': it is not a demo-model checkpoint")
    state = obj["state_dict"]
    if not state or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{source}: 'state_dict' is not a dict of tensors")
    arch = _check_config(obj.get("config"), source)
    multilabel = obj["config"].get("multilabel", False)
    if not isinstance(multilabel, bool):
        raise WeightsError(f"{source}: config 'multilabel' must be true or false, got {multilabel!r}")
    classes = obj.get("classes", list(CLASS_NAMES))
    if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
        raise WeightsError(f"{source}: 'classes' must be a list of names")
    if len(classes) != arch["num_classes"]:
        raise WeightsError(f"{source}: {len(classes)} class names for {arch['num_classes']} classes")
    return {
        "state_dict": state,
        "config": arch,
        "multilabel": multilabel,
        "classes": list(classes),
        "mean": _triple(obj.get("mean", DEFAULT_MEAN), "mean", source),
        "std": _triple(obj.get("std", DEFAULT_STD), "std", source),
    }


def build_demo_engine(
    weights: str | os.PathLike[str] = "imagenet",
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> AttentionEngine:
    """The demo model in an :class:`AttentionEngine`.

    ``weights``: ``imagenet``, ``default`` or ``demo`` (all mean the shipped, self-trained checkpoint),
    ``random`` (untrained, flagged), or a path to a checkpoint written by :mod:`live_attention.demo.train`.
    Class probabilities are a sigmoid per class when the checkpoint's config says ``multilabel``.
    """
    w = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights).strip()
    sha: str | None = None
    if w.lower() == "random":
        module = build_demo_module(DEFAULT_CONFIG)
        classes: list[str] = list(CLASS_NAMES)
        mean, std = DEFAULT_MEAN, DEFAULT_STD
        label, untrained, multilabel = "random", True, True  # the shipped model's head, untrained
    else:
        if w.lower() in _SHIPPED:
            path = DEMO_CHECKPOINT
            if not path.exists():
                raise WeightsError(
                    f"the demo model's checkpoint is missing ({path}): run `python -m live_attention.demo.train`"
                )
            label = WEIGHTS_LABEL
        else:
            path = Path(w).expanduser()
            label = path.name
        ck = read_checkpoint(path)
        module = build_demo_module(ck["config"])
        apply_state_dict(module, ck["state_dict"], name="demo", source=f"in {path}")
        module.float()
        classes, mean, std, multilabel = ck["classes"], ck["mean"], ck["std"], ck["multilabel"]
        untrained = False
        sha = file_sha256(path)
    size = int(module.image_size)
    if str(precision).lower() == "auto" and resolve_device(device).type == "cpu":
        # A 200k-parameter model gains nothing from bf16 on a CPU (bench, first demo model: 1.4x slower): fp32.
        precision = "fp32"
    return AttentionEngine(
        module,
        device=device,
        precision=precision,
        preprocess=Preprocess(crop_size=size, resize_size=size, mean=mean, std=std),
        categories=classes,
        name="demo",
        weights_label=label,
        weights_sha256=sha,
        untrained=untrained,
        multilabel=multilabel,
    )
