"""Model names to engines: torchvision's ViTs, any timm ViT, Hugging Face vision transformers, the demo model.

``load_model`` runs once, on the caller's thread, before any frame; every problem is a one-line
:class:`~live_attention.errors.UserError`. Weights come through each library's own cache (torchvision's
weights API and ``$TORCH_HOME/hub``; timm and transformers through the Hugging Face hub cache,
``$HF_HOME/hub``) or from a local file. Offline (``LIVE_ATTENTION_OFFLINE=1``, ``HF_HUB_OFFLINE=1`` or
``TRANSFORMERS_OFFLINE=1``) nothing is downloaded, and a missing file names the cache folder and the
``--weights PATH`` fix. Pre-processing comes from the model's own configuration.

The torchvision and timm loaders are here; Hugging Face models in :mod:`~live_attention.core.hf_models`,
the hub cache in :mod:`~live_attention.core.hub`.

Names::

    vit_b_16 | vit_b_32 | vit_l_16 | vit_l_32 | vit_h_14     torchvision, ImageNet weights
    timm:NAME[.TAG]                                           e.g. timm:vit_small_patch8_224.dino
    hf:ORG/NAME | hf:LOCAL_DIR                                e.g. hf:facebook/dinov2-small
    demo                                                      the project's own toy ViT (registered by
                                                              live_attention.demo, see core.registry)
"""

from __future__ import annotations

import logging
import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn

from live_attention.config import MODEL_HELP, Config
from live_attention.core.device import resolve_device, same_device
from live_attention.core.engine import AttentionEngine
from live_attention.core.families import timm_head_is_projection, timm_preprocess
from live_attention.core.hf_models import load_hf
from live_attention.core.hub import hub_cache, hub_session, missing_pretrained, need_library
from live_attention.core.preprocess import Preprocess
from live_attention.core.registry import model_builder
from live_attention.core.weights import (
    PRETRAINED,  # noqa: F401  (pipeline.replay reads it here)
    apply_state_dict,
    file_sha256,
    first_sentence,
    load_weights_file,
    local_weights,
    offline,
    weights_kind,
)
from live_attention.errors import UserError, WeightsError

logger = logging.getLogger(__name__)

TORCHVISION_MODELS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


RANDOM_WEIGHTS_SEED = 0  # --weights random: one untrained model per name, the same every time


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
            ``random`` (untrained; flagged as such on screen): initialised from a fixed seed, so that the
            same name gives the same untrained model every time (replay and export compute again what
            was recorded; two runs compare like with like). The caller's random state is left as it was.
        device: ``auto``, ``cpu``, ``cuda``, ``mps``.
        precision: ``auto``, ``fp32``, ``fp16``, ``bf16``.
        input_size: run at this input side (a multiple of the patch size) instead of the model's own.
        full_frame: the whole frame at its own aspect ratio, no centre crop.
    """
    name = str(name).strip()
    w = os.fspath(weights) if isinstance(weights, os.PathLike) else str(weights).strip()
    opts: dict[str, Any] = {"device": device, "precision": precision}
    with torch.random.fork_rng(devices=[]):  # the module is built on the CPU
        if weights_kind(w) == "random":
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
        if (builder := model_builder(name)) is not None:  # e.g. demo, registered by live_attention.demo
            engine = builder(w, device, precision)
        elif name.startswith("timm:"):
            engine = _load_timm(name[len("timm:"):].strip(), w, opts)
        elif name.startswith("hf:"):
            engine = load_hf(name[len("hf:"):].strip(), w, opts)
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


def compare_engine_from_config(cfg: Config, first: AttentionEngine) -> AttentionEngine | None:
    """The second model (``[compare]``, ``--compare``) with the first one's precision and input settings,
    on its own device (``--compare-device``) or the first one's, or None. Any failure to load it is one
    line that names ``--compare``."""
    c = cfg.compare
    if not c.model:
        for key in ("compare.weights", "compare.device"):
            if key in cfg.origins:  # given, but there is no second model for it
                raise UserError(f"{cfg.where(key)} needs a second model: add --compare MODEL "
                                "(or model in the config's [compare] section), or leave it out")
        return None
    m = cfg.model
    device = first.device
    if c.device:
        try:
            device = resolve_device(c.device)
        except UserError as exc:
            raise UserError(f"{cfg.where('compare.device')}: {str(exc).split(': use --device')[0]}") from None
    # The first model's precision as it resolved ("auto" may mean fp32 for one model, bf16 for another),
    # so that both sides are computed alike; on another device, the precision asked for.
    precision = first.precision if same_device(device, first.device) else m.precision
    named = cfg.where("compare.model") + (f" ({cfg.where('compare.weights')})" if "compare.weights" in cfg.origins else "")
    try:
        return load_model(c.model, c.weights, device, precision, input_size=m.input_size or None,
                          full_frame=m.full_frame)
    except UserError as exc:
        raise UserError(f"{named}: the second model cannot load: {exc}") from None
    except (OSError, RuntimeError, ValueError, KeyError) as exc:  # a damaged checkpoint, a shape mismatch
        raise UserError(f"{named}: the second model "
                        f"cannot load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


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
    kind, sha = weights_kind(w), None
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
    timm = need_library("timm", "timm")
    arch = spec.split(".", 1)[0]
    if not timm.is_model(arch):
        raise UserError(f"timm has no model {arch!r}: see timm.list_models('vit_*') for names")
    where = timm.models.model_entrypoint(arch).__module__
    if where not in _TIMM_VIT_MODULES:  # before any download: a ResNet's weights would be wasted
        raise UserError(f"timm:{arch} is not a ViT with a class token ({where}): use a timm vit_* or deit_* model")
    kind = weights_kind(w)
    cfg = _timm_pretrained_cfg(timm, spec)
    if kind == "pretrained" and (cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file)):
        raise UserError(f"timm has no published weights for {spec}: use --weights PATH or --weights random")
    try:
        with hub_session():
            module = timm.create_model(spec, pretrained=kind == "pretrained")
    except OSError as exc:  # the hub's errors: LocalEntryNotFoundError, HTTP errors, URLError
        raise missing_pretrained(f"timm:{spec}", exc, cfg.hf_hub_id if cfg is not None else None) from exc
    except RuntimeError as exc:  # a cached file that does not fit (load_state_dict)
        if kind != "pretrained":
            raise
        raise WeightsError(f"the cached weights of timm:{spec} do not fit the model: {first_sentence(exc)} "
                           f"(delete them from {hub_cache()}, or pass --weights PATH)") from exc
    tag = str(module.pretrained_cfg.get("tag") or "")
    label, sha = local_weights(module, w, kind, f"timm:{spec}", tag or "timm default")
    if timm_head_is_projection(module):
        module.reset_classifier(0)  # a CLIP tower's head is an image-text projection, not classes
    return AttentionEngine(module, preprocess=timm_preprocess(module), categories=_timm_categories(module),
                           name=f"timm:{spec}", weights_label=label, weights_sha256=sha, untrained=kind == "random",
                           **opts)


# --------------------------------------------------------------------------------------------------
