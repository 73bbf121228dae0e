"""Hugging Face transformers vision models (ViT, DINOv2 with or without registers, DeiT, CLIP) as engines:
``hf:ORG/NAME`` from the hub cache, or ``hf:LOCAL_DIR`` written by ``save_pretrained``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from live_attention.core.engine import AttentionEngine
from live_attention.core.families import HF_CLASSES, hf_default_preprocess, rgb3
from live_attention.core.hub import hub_session, missing_pretrained, need_library
from live_attention.core.preprocess import Preprocess
from live_attention.core.weights import file_sha256, first_sentence, load_weights_file, weights_kind
from live_attention.errors import UserError, WeightsError

logger = logging.getLogger(__name__)


_HF_BY_TYPE = {
    "vit": "ViTModel",
    "dinov2": "Dinov2Model",
    "dinov2_with_registers": "Dinov2WithRegistersModel",
    "clip": "CLIPVisionModel",
    "clip_vision_model": "CLIPVisionModel",
    "deit": "DeiTModel",
}
# PIL's resampling codes, as a preprocessor_config.json gives them (LANCZOS, BOX and HAMMING approximated).
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def _hf_class(config: Any):
    transformers = need_library("transformers", "hf", "transformers")

    for arch in getattr(config, "architectures", None) or []:
        arch = "CLIPVisionModel" if arch in ("CLIPModel", "CLIPVisionModelWithProjection") else arch
        if arch in HF_CLASSES:
            return getattr(transformers, arch)
    name = _HF_BY_TYPE.get(getattr(config, "model_type", ""))
    if name is None:
        raise UserError(f"Hugging Face model type {config.model_type!r} is not supported: use a ViT, DINOv2 "
                        "(with or without registers), DeiT or CLIP vision model")
    return getattr(transformers, name)


def _hf_preprocess_data(where: str) -> dict | None:
    """The checkpoint's ``preprocessor_config.json`` (from the folder, or the hub cache), or None."""
    local = Path(where)
    try:
        if local.is_dir():
            f = local / "preprocessor_config.json"
            return json.loads(f.read_text()) if f.exists() else None
        from huggingface_hub import hf_hub_download

        with hub_session():
            return json.loads(Path(hf_hub_download(where, "preprocessor_config.json")).read_text())
    except Exception:  # no processor config (or not cached): the model type's defaults
        logger.debug("no preprocessor_config.json for %s", where, exc_info=True)
        return None


def hf_preprocess(data: dict | None, config: Any, size: int) -> Preprocess:
    """A Hugging Face image processor's eval transform, from its ``preprocessor_config.json`` ``data``:
    resize (``size.shortest_edge``, or ``size.height``/an int: the processor squashes to that size, we keep
    the aspect and crop), centre crop ``crop_size`` when ``do_center_crop``, ``resample`` (a PIL code),
    ``image_mean``/``image_std`` when ``do_normalize``. Without ``data``: the model type's defaults."""
    if not data:
        return hf_default_preprocess(config, size)
    base = hf_default_preprocess(config, size)

    def side(v: Any) -> int | None:
        if isinstance(v, dict):
            n = v.get("shortest_edge") or v.get("height") or v.get("width")
            return int(n) if n else None
        if isinstance(v, (list, tuple)) and v:
            return int(min(v))
        return int(v) if v else None

    resize = side(data.get("size")) if data.get("do_resize", True) else None
    crop = side(data.get("crop_size")) if data.get("do_center_crop", "crop_size" in data) else None
    if crop is None:
        crop = resize or size  # no crop: the resized image is the input (its square centre, here)
    resize = max(crop, resize or crop)
    if data.get("do_normalize", True):
        mean, std = rgb3(data.get("image_mean", base.mean)), rgb3(data.get("image_std", base.std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    resample = data.get("resample")
    interp = _PIL_RESAMPLE.get(int(resample), base.interpolation) if resample is not None else base.interpolation
    return Preprocess(crop_size=crop, resize_size=resize, mean=mean, std=std, interpolation=interp)


def _hf_check_loaded(info: dict, what: str) -> None:
    """Weights that left part of the model at its random initialisation (a tensor absent, or of another
    shape) are an error, not a warning; the pooler of a ``ViTModel``, unused here, may be absent."""
    bad = []
    for item in info.get("mismatched_keys") or ():
        if isinstance(item, (tuple, list)) and len(item) == 3:
            key, ckpt, model = item
            bad.append(f"{key}: file {tuple(ckpt)}, model {tuple(model)}")
        else:
            bad.append(str(item))
    if bad:
        bad.sort()
        raise WeightsError(f"{what} do not fit: {len(bad)} tensors of another shape (e.g. {bad[0]}). "
                           "Pass --model matching the weights")
    missing = sorted(k for k in info.get("missing_keys") or () if "pooler." not in f".{k}")
    if missing:
        raise WeightsError(f"{what} do not fit: they lack {len(missing)} tensors of the model (e.g. {missing[0]}). "
                           "Pass --model matching the weights")
    if info.get("unexpected_keys"):
        logger.debug("%s: %d tensors not used (e.g. %s)", what, len(info["unexpected_keys"]),
                     sorted(info["unexpected_keys"])[0])


def load_hf(source: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    if not source:
        raise UserError("hf: needs a model id or folder, e.g. --model hf:facebook/dinov2-small")
    transformers = need_library("transformers", "hf", "transformers")
    local = Path(source).expanduser()
    is_dir = local.is_dir()
    if not is_dir and (source.count("/") != 1 or source.startswith((".", "/", "~"))):
        raise UserError(f"hf:{source}: no such folder, and not a hub id (ORG/NAME)")
    if is_dir and not (local / "config.json").is_file():
        raise WeightsError(f"hf:{source}: no config.json in {local}: give a folder written by save_pretrained "
                           "(config.json and the weights), or a hub id ORG/NAME")
    where = str(local) if is_dir else source
    kind = weights_kind(w)
    try:
        with hub_session():
            config = transformers.AutoConfig.from_pretrained(where)
            cls = _hf_class(config)
            if cls.__name__ == "CLIPVisionModel":
                config = getattr(config, "vision_config", config)
            config._attn_implementation = "eager"
            if kind == "pretrained":
                module, info = cls.from_pretrained(where, config=config, attn_implementation="eager",
                                                   ignore_mismatched_sizes=True, output_loading_info=True)
                _hf_check_loaded(info, f"the weights of hf:{source}")
            elif kind == "random":
                module = cls(config)
            else:
                module = _hf_from_file(cls, config, Path(w).expanduser(), source)
    except UserError:
        raise
    except OSError as exc:  # the hub's errors (not cached, offline, HTTP), or a folder without a config
        if is_dir:
            raise WeightsError(f"cannot load the Hugging Face model in {local}: {first_sentence(exc)} "
                               "(is it a save_pretrained folder?)") from exc
        raise missing_pretrained(f"hf:{source}", exc, source) from exc
    except (ValueError, RuntimeError, KeyError) as exc:  # a configuration or checkpoint transformers refuses
        raise WeightsError(f"cannot load hf:{source}: {first_sentence(exc)} (a ViT, DINOv2, DeiT or CLIP "
                           "checkpoint saved by transformers is needed)") from exc
    sha: str | None
    if kind == "file":
        label, sha = Path(w).expanduser().name, file_sha256(Path(w).expanduser())
    else:
        label, sha = ("random", None) if kind == "random" else (local.name if is_dir else source.split("/")[-1], None)
    vision = getattr(module.config, "vision_config", None) or module.config
    size = vision.image_size if isinstance(vision.image_size, int) else vision.image_size[0]
    id2label = getattr(module.config, "id2label", None) or {}
    categories = [id2label.get(i, id2label.get(str(i), f"class {i}")) for i in range(len(id2label))]
    classifier = "ForImageClassification" in type(module).__name__
    return AttentionEngine(module, preprocess=hf_preprocess(_hf_preprocess_data(where), module.config, int(size)),
                           categories=categories if classifier else None,
                           name=f"hf:{source}", weights_label=label, weights_sha256=sha,
                           untrained=kind == "random", **opts)


def _hf_from_file(cls: Any, config: Any, path: Path, source: str) -> nn.Module:
    """``--weights PATH`` for a Hugging Face model: loaded safely here, then through transformers' own
    loader, which maps the checkpoint's key names (a file saved by ``save_pretrained`` or from the hub
    uses the library's original names) onto the model; every tensor must fit."""
    state = load_weights_file(path)
    module, info = cls.from_pretrained(None, config=config, state_dict=state, attn_implementation="eager",
                                       ignore_mismatched_sizes=True, output_loading_info=True)
    _hf_check_loaded(info, f"weights file {path} for hf:{source}")
    return module
