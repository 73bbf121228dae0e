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
    demo                                                      the project's own toy ViT (registered by
                                                              live_attention.demo, see core.registry)
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import sys
import urllib.error
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from live_attention.config import MODEL_HELP, Config
from live_attention.core.engine import AttentionEngine
from live_attention.core.families import (
    HF_CLASSES,
    hf_default_preprocess,
    rgb3,
    timm_head_is_projection,
    timm_preprocess,
)
from live_attention.core.preprocess import Preprocess
from live_attention.core.registry import model_builder
from live_attention.core.weights import (
    apply_state_dict,
    file_sha256,
    first_sentence,
    load_weights_file,
    offline,
)
from live_attention.errors import UserError, WeightsError

logger = logging.getLogger(__name__)

TORCHVISION_MODELS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")
PRETRAINED = ("imagenet", "default", "pretrained")  # --weights words for "the model's own published weights"


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
    if (builder := model_builder(name)) is not None:  # e.g. demo, registered by live_attention.demo
        engine = builder(w, device, precision)
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
    # Counted from 1 in both; the error names the flag or the config file's key that set the value.
    if cfg.view.layer > engine.num_layers:
        raise UserError(f"{cfg.where('view.layer')}: {engine.name} has layers 1..{engine.num_layers}")
    if cfg.view.head > engine.num_heads:
        raise UserError(f"{cfg.where('view.head')}: {engine.name} has heads 1..{engine.num_heads}")
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
# The optional libraries and the Hugging Face hub cache
# --------------------------------------------------------------------------------------------------


def _need(module_name: str, extra: str, package: str | None = None):
    """Import an optional library, or a one-line error naming the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(
            f"{module_name} is not installed: pip install 'live-attention[{extra}]' "
            f"(or pip install {package or module_name})"
        ) from exc


def _hub_cache() -> str:
    """The Hugging Face hub cache folder in use (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        return str(Path(os.environ.get("HF_HOME", "~/.cache/huggingface")).expanduser() / "hub")


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy")


def hub_unreachable(endpoint: str) -> bool:
    """True when the hub's host cannot be resolved or connected to (no network): then nothing is
    downloaded and what is cached is used, instead of huggingface_hub retrying for a minute. Behind a
    proxy there is no probe: the proxy decides. Probed once per process."""
    if any(os.environ.get(v) for v in PROXY_VARIABLES):
        return False
    return _cannot_connect(endpoint)


@functools.lru_cache(maxsize=4)
def _cannot_connect(endpoint: str, timeout: float = 3.0) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    try:
        with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout):
            return False
    except OSError:
        return True


def forget_hub_probe() -> None:
    """Probe the hub again next time (after the network came back; tests)."""
    _cannot_connect.cache_clear()


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT)
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@contextmanager
def _hub_session() -> Iterator[None]:
    """While a model loads: our offline switch also switches huggingface_hub's (which reads
    ``HF_HUB_OFFLINE`` once, at import, into ``huggingface_hub.constants`` and consults that at every
    call), so does a hub that cannot be reached; the libraries' progress bars, load reports and retry
    warnings stay off the console unless ``-v``."""
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    before = constants.HF_HUB_OFFLINE if constants is not None else None
    if constants is not None and (offline() or hub_unreachable(_hub_endpoint())):
        constants.HF_HUB_OFFLINE = True
    quiet = _quiet_transformers()
    hub_log = logging.getLogger("huggingface_hub")
    hub_level = hub_log.level
    if not logger.isEnabledFor(logging.DEBUG):
        hub_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        quiet()
        hub_log.setLevel(hub_level)
        if constants is not None:
            constants.HF_HUB_OFFLINE = before


def _quiet_transformers():
    """Silence transformers' progress bars and load reports (what did not load is checked here, and
    logged at debug level); returns the function that restores them."""
    tf = sys.modules.get("transformers")
    if tf is None:  # timm alone: nothing to quiet (and no reason to import transformers)
        return lambda: None
    tlog = tf.utils.logging
    level, bars = tlog.get_verbosity(), tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()

    def restore() -> None:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()

    return restore


def _missing_pretrained(what: str, exc: BaseException, repo: str | None = None) -> WeightsError:
    if offline():
        reason = "offline mode is set"
    elif hub_unreachable(_hub_endpoint()):
        reason = f"{urllib.parse.urlsplit(_hub_endpoint()).hostname} cannot be reached (no network?)"
    else:
        reason = f"the download failed ({first_sentence(exc, 120)})"
    where = f"{_hub_cache()}, repo {repo}" if repo else _hub_cache()
    return WeightsError(
        f"{what} is not in the Hugging Face hub cache ({where}) and {reason}: run once online to cache it, "
        "or pass --weights PATH to a local checkpoint, or --weights random"
    )


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------

_TIMM_VIT_MODULES = ("timm.models.vision_transformer", "timm.models.deit")


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


def _timm_pretrained_cfg(timm: Any, spec: str) -> Any:
    """The pretrained configuration ``spec`` names (its default tag without one), or a one-line error
    listing the tags there are."""
    arch, _, tag = spec.partition(".")
    try:
        cfg = timm.models.get_pretrained_cfg(spec)
    except RuntimeError as exc:  # "Invalid pretrained tag (x) for arch."
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(arch) if "." in n]
        some = ", ".join(tags[:6]) + (", ..." if len(tags) > 6 else "")
        hint = f"use one of {some}" if tags else "it has no published weights: use --weights random or PATH"
        raise UserError(f"timm has no tag {tag!r} for {arch}: {hint}") from exc
    return cfg


def _load_timm(spec: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    if not spec:
        raise UserError("timm: needs a model name, e.g. --model timm:vit_small_patch8_224.dino")
    timm = _need("timm", "timm")
    arch = spec.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UserError(f"timm has no model {arch!r}: see timm.list_models('vit_*') for names")
    where = timm.models.model_entrypoint(arch).__module__
    if where not in _TIMM_VIT_MODULES:  # before any download: a ResNet's weights would be wasted
        raise UserError(f"timm:{arch} is not a ViT with a class token ({where}): use a timm vit_* or deit_* model")
    kind = _weights_kind(w)
    cfg = _timm_pretrained_cfg(timm, spec)
    if kind == "pretrained" and (cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise UserError(f"timm has no published weights for {spec}: use --weights PATH or --weights random")
    try:
        with _hub_session():
            module = timm.create_model(spec, pretrained=kind == "pretrained")
    except OSError as exc:  # the hub's errors: LocalEntryNotFoundError, HTTP errors, URLError
        raise _missing_pretrained(f"timm:{spec}", exc, cfg.hf_hub_id if cfg is not None else None) from exc
    except RuntimeError as exc:  # a cached file that does not fit (load_state_dict)
        if kind != "pretrained":
            raise
        raise WeightsError(f"the cached weights of timm:{spec} do not fit the model: {first_sentence(exc)} "
                           f"(delete them from {_hub_cache()}, or pass --weights PATH)") from exc
    tag = str(module.pretrained_cfg.get("tag") or "")
    label, sha = _local_weights(module, w, kind, f"timm:{spec}", tag or "timm default")
    if timm_head_is_projection(module):
        module.reset_classifier(0)  # a CLIP tower's head is an image-text projection, not classes
    return AttentionEngine(module, preprocess=timm_preprocess(module), categories=_timm_categories(module),
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
# PIL's resampling codes, as a preprocessor_config.json gives them (LANCZOS, BOX and HAMMING approximated).
_PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}


def _hf_class(config: Any):
    transformers = _need("transformers", "hf", "transformers")

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

        with _hub_session():
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


def _load_hf(source: str, w: str, opts: dict[str, Any]) -> AttentionEngine:
    if not source:
        raise UserError("hf: needs a model id or folder, e.g. --model hf:facebook/dinov2-small")
    transformers = _need("transformers", "hf", "transformers")
    local = Path(source).expanduser()
    is_dir = local.is_dir()
    if not is_dir and (source.count("/") != 1 or source.startswith((".", "/", "~"))):
        raise UserError(f"hf:{source}: no such folder, and not a hub id (ORG/NAME)")
    if is_dir and not (local / "config.json").is_file():
        raise WeightsError(f"hf:{source}: no config.json in {local}: give a folder written by save_pretrained "
                           "(config.json and the weights), or a hub id ORG/NAME")
    where = str(local) if is_dir else source
    kind = _weights_kind(w)
    try:
        with _hub_session():
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
        raise _missing_pretrained(f"hf:{source}", exc, source) from exc
    except (ValueError, RuntimeError, KeyError) as exc:  # a configuration or checkpoint transformers refuses
        raise WeightsError(f"cannot load hf:{source}: {first_sentence(exc)} (a ViT, DINOv2, DeiT or CLIP "
                           "checkpoint saved by transformers is needed)") from exc
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
