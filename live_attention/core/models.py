"""Model names to engines: torchvision's ViTs, any timm ViT, Hugging Face vision transformers, the demo model.

``load_model`` runs once, on the caller's thread, before any frame; every problem is a one-line
:class:`~live_attention.errors.UserError`. Weights come through each library's own cache (torchvision's
weights API and ``$TORCH_HOME/hub``; timm and transformers through the Hugging Face hub cache,
``$HF_HOME/hub``) or from a local file. Offline (``LIVE_ATTENTION_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or
``TRANSFORMERS_OFFLINE=1``) nothing is downloaded, and a missing file names the cache folder and the
``--weights PATH`` fix. Pre-processing comes from the model's own configuration.

Names::

    vit_b_16 | vit_b_32 | vit_l_16 | vit_l_32 | vit_h_14     torchvision, ImageNet weights
    timm:NAME[.TAG]                                           e.g. timm:vit_small_patch8_224.dino
    hf:ORG/NAME | hf:LOCAL_DIR                                e.g. hf:facebook/dinov2-small
    demo                                                      the project's own toy ViT
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from live_attention.config import Config
from live_attention.core.engine import AttentionEngine
from live_attention.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from live_attention.core.weights import (
    apply_state_dict,
    file_sha256,
    first_sentence,
    load_weights_file,
    offline,
)
from live_attention.demo.model import build_demo_engine
from live_attention.errors import UserError, WeightsError

logger = logging.getLogger(__name__)

TORCHVISION_MODELS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
DEMO_MODEL = "demo"
PRETRAINED = ("imagenet", "default", "pretrained")  # --weights words for "the model's own published weights"
MODEL_HELP = "vit_b_16 (default), vit_b_32, vit_l_16, vit_l_32, vit_h_14, timm:NAME[.TAG], hf:ORG/NAME, hf:DIR, or demo"
_PIL_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


def load_model(
    name: str = "vit_b_16",
    weights: str | os.PathLike[str] = "imagenet",
    device: str | torch.device = "auto",
    precision: str = "auto",
    input_size: int | None = None,
    full_frame: bool = False,
) -> AttentionEngine:
    """Build a ViT with weights and wrap it in an :class:`AttentionEngine`.

    Args:
        name: see the module docstring.
        weights: ``imagenet`` (or ``default``/``pretrained``: the model's published weights, through its
            library's cache), a path to a local checkpoint (``.pth``, ``.bin``, ``.safetensors``), or
            ``random`` (untrained; flagged as such on screen).
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        precision: ``auto``, ``fp32``, ``fp16``, ``bf16``.
        input_size: run at this input side (a multiple of the patch size) instead of the model's own.
        full_frame: the whole frame at its own aspect ratio, no centre crop.
    """
    name = str(name).strip()
    w = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights).strip()
    opts: dict[str, Any] = {"device": device, "precision": precision}
    if name == DEMO_MODEL:
        engine = build_demo_engine(weights=w, device=device, precision=precision)
    elif name.startswith("timm:"):
        engine = _load_timm(name[len("timm:"):].strip(), w, opts)
    elif name.startswith("hf:"):
        engine = _load_hf(name[len("hf:"):].strip(), w, opts)
    elif name in TORCHVISION_MODELS:
        engine = _load_torchvision(name, w, opts)
    else:
        raise UserError(f"unknown model {name!r}: use {MODEL_HELP}")
    if input_size is not None or full_frame:
        engine.configure_input(input_size, full_frame)
    return engine


def engine_from_config(cfg: Config) -> AttentionEngine:
    """The configured model (``[model]``), with the configured layer and head (``[view]``) checked against it."""
    m = cfg.model
    engine = load_model(m.name, m.weights, m.device, m.precision, input_size=m.input_size or None,
                        full_frame=m.full_frame)
    if cfg.view.layer >= engine.num_layers:
        raise UserError(f"--layer {cfg.view.layer + 1}: {engine.name} has layers 1..{engine.num_layers}")
    if cfg.view.head >= engine.num_heads:
        raise UserError(f"--head {cfg.view.head + 1}: {engine.name} has heads 1..{engine.num_heads}")
    return engine


def _local_weights(module: nn.Module, w: str, kind: str, name: str, label: str) -> tuple[str, str | None]:
    """A ``--weights`` file applied to ``module``; returns the HUD label and the file's SHA-256."""
    if kind == "random":
        return "random", None
    if kind != "file":
        return label, None
    path = Path(w).expanduser()
    apply_state_dict(module, load_weights_file(path), name=name, source=f"file {path}")
    return path.name, file_sha256(path)


def _weights_kind(w: str) -> str:
    low = w.lower()
    if low == "random":
        return "random"
    if low in PRETRAINED:
        return "pretrained"
    return "file"


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------


def hub_checkpoint_path(url: str) -> Path:
    """Where torchvision's weights API caches a download: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _ensure_hub_file(name: str, weights: Any) -> Path:
    url = weights.url
    path = hub_checkpoint_path(url)
    if path.exists():
        return path
    if offline():
        reason = "offline mode is set"
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=None, progress=True)
            return path
        except (urllib.error.URLError, OSError, TimeoutError, ValueError) as exc:
            reason = f"download failed ({type(exc).__name__})"
            path.unlink(missing_ok=True)
    raise WeightsError(
        f"ImageNet weights for {name} are not cached and {reason}: put {os.path.basename(url)} "
        f"(from {url}) into {path.parent}, or pass --weights PATH to a local file, "
        f"or --weights random for an untrained model"
    )


def _load_torchvision(name: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    from torchvision import models

    default_weights = models.get_model_weights(name).DEFAULT
    tf = default_weights.transforms()
    crop = int(tf.crop_size[0])
    preprocess = Preprocess(crop_size=crop, resize_size=int(tf.resize_size[0]), mean=tuple(tf.mean),
                            std=tuple(tf.std), interpolation=tf.interpolation.value)
    # The DEFAULT weights of vit_h_14 are 518 px; build the module for the weights' own size.
    module = getattr(models, name)(weights=None, image_size=crop)
    kind, sha = _weights_kind(w), None
    if kind == "random":
        label = "random"
    elif kind == "pretrained":
        path = _ensure_hub_file(name, default_weights)
        apply_state_dict(module, load_weights_file(path), name=name, source=f"in {path}")
        label, sha = str(default_weights).split(".")[-1], file_sha256(path)
    else:
        path = Path(w).expanduser()
        apply_state_dict(module, load_weights_file(path), name=name, source=f"file {path}")
        label, sha = path.name, file_sha256(path)
    return AttentionEngine(module, preprocess=preprocess, categories=list(default_weights.meta["categories"]),
                           name=name, weights_label=label, weights_sha256=sha, untrained=kind == "random", **opts)


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------


def _need(module_name: str, extra: str):
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{module_name} is not installed: pip install 'live-attention[{extra}]' (or pip install {extra})"
        ) from exc


def _hub_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")


def _offline_env() -> None:
    """Our offline switch also switches the hub libraries' own (set before they read it)."""
    if offline():
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _missing_pretrained(what: str, exc: BaseException) -> WeightsError:
    reason = "offline mode is set" if offline() else f"the download failed ({first_sentence(exc, 120)})"
    return WeightsError(
        f"pretrained weights for {what} are not in the Hugging Face hub cache ({_hub_cache()}) and {reason}: "
        "run once online to cache them, or pass --weights PATH to a local checkpoint, or --weights random"
    )


def _timm_preprocess(module: nn.Module) -> Preprocess:
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    crop_pct = float(cfg.get("crop_pct") or 1.0)
    if cfg.get("crop_mode", "center") != "center":
        logger.info("timm crop_mode %r approximated by a centre crop", cfg.get("crop_mode"))
    interp = cfg.get("interpolation", "bicubic")
    return Preprocess(crop_size=size, resize_size=max(size, int(size / crop_pct)), mean=tuple(cfg["mean"]),
                      std=tuple(cfg["std"]), interpolation=interp if interp in ("bilinear", "bicubic", "nearest") else "bicubic")


def _timm_categories(module: nn.Module) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module)
        if subset:
            return [d.split(",")[0] for d in ImageNetInfo(subset).label_descriptions()]
    except Exception:  # label metadata is a nicety; never fatal
        logger.debug("no ImageNet labels for this timm model", exc_info=True)
    names = getattr(module, "pretrained_cfg", {}).get("label_names")
    return list(names) if names else None


def _load_timm(spec: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    if not spec:
        raise UserError("timm: needs a model name, e.g. --model timm:vit_small_patch8_224.dino")
    _offline_env()
    timm = _need("timm", "timm")
    arch = spec.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UserError(f"timm has no model {arch!r}: see timm.list_models('vit_*') for names")
    kind = _weights_kind(w)
    try:
        module = timm.create_model(spec, pretrained=kind == "pretrained")
    except RuntimeError as exc:
        if "pretrained" in str(exc).lower() or "no pretrained" in str(exc).lower():
            raise UserError(f"timm has no pretrained weights for {spec}: check the tag, or use --weights PATH") from exc
        raise
    except (OSError, ValueError) as exc:  # the hub's errors are OSError (LocalEntryNotFoundError, HTTP)
        raise _missing_pretrained(f"timm:{spec}", exc) from exc
    label, sha = _local_weights(module, w, kind, f"timm:{spec}", spec.split(".", 1)[1] if "." in spec else "timm default")
    tag = spec.split(".", 1)[1] if "." in spec else ""
    if "clip" in arch and "ft_in" not in tag and getattr(module, "num_classes", 0):
        module.reset_classifier(0)  # a CLIP tower's head is an embedding projection, not classes
    return AttentionEngine(module, preprocess=_timm_preprocess(module), categories=_timm_categories(module),
                           name=f"timm:{spec}", weights_label=label, weights_sha256=sha, untrained=kind == "random",
                           **opts)


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------


_HF_BY_TYPE = {
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "deit": "DeiTModel",
}
_HF_DEFAULT_PRE = {  # the image processors' defaults, where a checkpoint has no preprocessor_config.json
    "vit": dict(crop=224, resize=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interp="bilinear"),
    "dinov2": dict(crop=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD, interp="bicubic"),
    "clip": dict(crop=224, resize=224, mean=(0.48145466, 0.4578275, 0.40821073),
                 std=(0.26862954, 0.26130258, 0.27577711), interp="bicubic"),
}


def _hf_class(config: Any):
    transformers = _need("transformers", "hf")
    from live_attention.core.families import HF_CLASSES

    for arch in getattr(config, "architectures", None) or []:
        arch = "CLIPVisionModel" if arch in ("CLIPModel", "CLIPVisionModelWithProjection") else arch
        if arch in HF_CLASSES:
            return getattr(transformers, arch)
    name = _HF_BY_TYPE.get(getattr(config, "model_type", ""))
    if name is None:
        raise UserError(f"Hugging Face model type {config.model_type!r} is not supported: use a ViT, DINOv2 "
                        "(with or without registers), DeiT or CLIP vision model")
    return getattr(transformers, name)


def _hf_preprocess(source: str, config: Any, size: int) -> Preprocess:
    data = None
    local = Path(source).expanduser()
    try:
        if local.is_dir():
            f = local / "preprocessor_config.json"
            data = json.loads(f.read_text()) if f.exists() else None
        else:
            from huggingface_hub import hf_hub_download

            data = json.loads(Path(hf_hub_download(source, "preprocessor_config.json")).read_text())
    except Exception:  # no processor config: the model type's defaults
        logger.debug("no preprocessor_config.json for %s", source, exc_info=True)
    mtype = getattr(config, "model_type", "vit")
    base = _HF_DEFAULT_PRE.get("dinov2" if mtype.startswith("dinov2") else "clip" if mtype.startswith("clip") else "vit")
    if not data:
        return Preprocess(crop_size=size, resize_size=max(size, base["resize"] * size // base["crop"]),
                          mean=base["mean"], std=base["std"], interpolation=base["interp"])

    def side(v: Any, default: int) -> int:
        if isinstance(v, dict):
            return int(v.get("shortest_edge") or v.get("height") or default)
        return int(v) if v else default

    crop = side(data.get("crop_size"), size) if data.get("do_center_crop", False) else side(data.get("size"), size)
    resize = max(crop, side(data.get("size"), crop))
    return Preprocess(crop_size=crop, resize_size=resize, mean=tuple(data.get("image_mean", base["mean"])),
                      std=tuple(data.get("image_std", base["std"])),
                      interpolation=_PIL_RESAMPLE.get(int(data.get("resample", 2)), "bilinear"))


def _load_hf(source: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    if not source:
        raise UserError("hf: needs a model id or folder, e.g. --model hf:facebook/dinov2-small")
    _offline_env()
    transformers = _need("transformers", "hf")
    local = Path(source).expanduser()
    if not local.is_dir() and ("/" not in source or source.startswith((".", "/", "~"))):
        raise UserError(f"hf:{source}: no such folder, and not a hub id (ORG/NAME)")
    where = str(local) if local.is_dir() else source
    kind = _weights_kind(w)
    try:
        config = transformers.AutoConfig.from_pretrained(where)
        cls = _hf_class(config)
        if kind == "pretrained":
            module = cls.from_pretrained(where, attn_implementation="eager")
        else:
            module = cls(getattr(config, "vision_config", config) if cls.__name__ == "CLIPVisionModel" else config)
    except UserError:
        raise
    except (OSError, ValueError) as exc:
        if local.is_dir():
            raise WeightsError(f"cannot load the Hugging Face model in {local}: {first_sentence(exc)} "
                               "(is it a save_pretrained folder?)") from exc
        raise _missing_pretrained(f"hf:{source}", exc) from exc
    label, sha = _local_weights(module, w, kind, f"hf:{source}", local.name if local.is_dir() else source.split("/")[-1])
    vision = getattr(module.config, "vision_config", None) or module.config
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    id2label = getattr(module.config, "id2label", None) or {}
    categories = [id2label.get(i, id2label.get(str(i), f"class {i}")) for i in range(len(id2label))]
    return AttentionEngine(module, preprocess=_hf_preprocess(where, module.config, int(size)),
                           categories=categories if type(module).__name__.endswith("ForImageClassification") else None,
                           name=f"hf:{source}", weights_label=label, weights_sha256=sha,
                           untrained=kind == "random", **opts)
