"""How attention is read out of each model family, one layer at a time.

Each family runs a forward pass and hands every layer's attention probabilities ``[B, H, N, N]`` to a
:class:`LayerSink` as soon as they exist, so the engine keeps only what the views need (a 640×480
frame at patch 8 has 4,801 tokens: all layers' full attention would not fit in memory).

* **torchvision** ``VisionTransformer``: its ``EncoderBlock`` calls ``nn.MultiheadAttention`` with
  ``need_weights=False``, so hooks see nothing. We run the encoder ourselves, block by block, with the
  module's own parameters, computing ``softmax(q·kᵀ·scale)`` explicitly where the sink wants whole
  matrices, and the fused kernel plus the few rows it wants elsewhere.
* **timm** ``VisionTransformer`` (and subclasses: DeiT with a distillation token, DINO, DINOv2 with
  registers, CLIP towers): timm decides ``fused_attn`` when the model is built and fused attention never
  produces weights, so every block is switched to the eager path and ``attn_drop`` is hooked (its input is
  the softmax). A forward pass that reaches fewer blocks than the model has raises.
* **Hugging Face** transformers (``ViTModel``, ``ViTForImageClassification``, ``Dinov2Model``, Dinov2
  with registers, ``CLIPVisionModel``, DeiT with its distillation token): the model is switched to eager
  attention and each layer's attention module is hooked; its second output is the probabilities.

Each family also knows its model's own pre-processing where the module carries it
(:meth:`Family.default_preprocess`: timm's data config, a transformers model type's image-processor
defaults).

Position embeddings are interpolated for other input sizes the way each library does it (bicubic over
the patch grid, prefix tokens untouched), so any multiple of the patch size works, square or not.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from live_attention.core.preprocess import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess
from live_attention.errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class LayerSink(Protocol):
    """What a family's forward pass reports to (the engine's collector)."""

    def wants_full(self, layer: int) -> bool:
        """True when the whole ``[B, H, N, N]`` matrix of ``layer`` is needed, not only some rows."""

    rows: tuple[int, ...]  # token rows wanted from every layer when the whole matrix is not
    row_index: Tensor  # the same rows as an int64 tensor on the model's device (no host copy per layer)

    def attention(self, layer: int, probs: Tensor) -> None:
        """The probabilities of ``layer`` ``[B, H, N, N]`` (rows sum to 1)."""

    def attention_rows(self, layer: int, probs: Tensor) -> None:
        """Only the rows ``self.rows`` of ``layer``: ``[B, H, R, N]``."""

    def block_output(self, layer: int, tokens: Tensor) -> None:
        """The tokens ``[B, N, D]`` after block ``layer``."""


class Family:
    """A wrapped model of one library: sizes, and a forward pass that reports to a :class:`LayerSink`."""

    kind = ""
    num_layers: int
    num_heads: int
    hidden_dim: int
    patch_size: int
    image_size: tuple[int, int]  # the size the model was built for (h, w)
    num_prefix: int
    num_classes: int  # 0: no classifier (the forward returns None)

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self._blocks: list[nn.Module] = []

    def forward(self, x: Tensor, sink: LayerSink) -> Tensor | None:
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:
        """The transformer blocks, first to last (the model-randomisation test re-initialises the top ones)."""
        return list(self._blocks)

    def default_preprocess(self) -> Preprocess | None:
        """The model's own input transform as far as the module knows it (None: it does not)."""
        return None

    # Hooked families (timm, transformers): the hooks report through these.
    _sink: LayerSink | None = None
    _seen = 0

    def _report_attention(self, layer: int, probs: Tensor) -> None:
        self._seen += 1
        sink = self._sink
        if sink is None:
            return
        if sink.wants_full(layer):
            sink.attention(layer, probs)
        elif sink.rows:
            sink.attention_rows(layer, probs.index_select(2, sink.row_index))

    def _report_block(self, layer: int, tokens: Tensor) -> None:
        if self._sink is not None:
            self._sink.block_output(layer, tokens)

    def _hooked_forward(self, run: Callable[[], T]) -> T:
        """Run ``run()`` with the hooks reporting to ``sink``; raise if a layer reported nothing."""
        self._seen = 0
        try:
            out = run()
        finally:
            self._sink = None
        if self._seen != self.num_layers:
            raise RuntimeError(
                f"captured attention from {self._seen} of {self.num_layers} blocks: this {self.kind} version "
                "computes attention another way; pin the library version or report it"
            )
        return out

    def check_grid(self, h: int, w: int) -> None:
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {w}×{h} is not a multiple of the patch size {p}")


def resample_pos_embed(pos: Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix: int) -> Tensor:
    """Bicubic interpolation of the patch part of a position embedding ``[1, prefix + gh·gw, D]`` to
    another grid, prefix rows unchanged (as timm's ``resample_abs_pos_embed`` and DINO do)."""
    if tuple(new_grid) == tuple(old_grid):
        return pos
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    d = grid.shape[-1]
    g = grid.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=tuple(new_grid), mode="bicubic", antialias=True, align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos.dtype)
    return torch.cat([prefix, g], dim=1)


# --------------------------------------------------------------------------------------------------
# torchvision
# --------------------------------------------------------------------------------------------------


class TorchvisionFamily(Family):
    kind = "torchvision"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        m: Any = module  # torchvision's VisionTransformer (untyped; nn.Module types its attributes as Tensor | Module)
        enc = m.encoder
        self._blocks = list(enc.layers)
        self.num_layers = len(enc.layers)
        self.num_heads = int(enc.layers[0].num_heads)
        self.hidden_dim = int(m.hidden_dim)
        self.patch_size = int(m.patch_size)
        self.image_size = (int(m.image_size), int(m.image_size))
        self.num_prefix = 1
        self.num_classes = int(m.num_classes)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}

    def pos_embedding(self, grid: tuple[int, int]) -> Tensor:
        m: Any = self.module  # torchvision's VisionTransformer (untyped)
        pos: Tensor = m.encoder.pos_embedding
        if pos.requires_grad:  # training (the demo model): never cache a tensor in the graph
            return resample_pos_embed(pos, grid, self._own_grid(), 1)
        cached = self._pos_cache.get(grid)
        if cached is None or cached.device != pos.device or cached.dtype != pos.dtype:
            cached = resample_pos_embed(pos, grid, self._own_grid(), 1)
            self._pos_cache[grid] = cached
        return cached

    def _own_grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def forward(self, x: Tensor, sink: LayerSink | None) -> Tensor:
        m: Any = self.module  # torchvision's VisionTransformer (untyped)
        self.check_grid(*x.shape[-2:])
        p = self.patch_size
        grid = (x.shape[-2] // p, x.shape[-1] // p)
        t = m.conv_proj(x).flatten(2).transpose(1, 2)  # [B, P, D]
        b = t.shape[0]
        t = torch.cat([m.class_token.expand(b, -1, -1), t], dim=1)
        enc = m.encoder
        t = enc.dropout(t + self.pos_embedding(grid))
        for i, blk in enumerate(enc.layers):
            y = blk.ln_1(t)
            y = _self_attention(blk.self_attention, y, i, sink)
            t = t + blk.dropout(y)
            t = t + blk.mlp(blk.ln_2(t))
            if sink is not None:
                sink.block_output(i, t)
        t = enc.ln(t)
        return m.heads(t[:, 0])


def _self_attention(mha: nn.MultiheadAttention, x: Tensor, layer: int, sink: LayerSink | None) -> Tensor:
    """Self-attention exactly as ``nn.MultiheadAttention`` (batch_first, packed in_proj), reporting the
    probabilities to ``sink``: the whole matrix where it wants it, else only its rows beside the fused kernel."""
    b, n, e = x.shape
    h = mha.num_heads
    d = e // h
    qkv = F.linear(x, mha.in_proj_weight, mha.in_proj_bias)
    q, k, v = qkv.view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, N, D]
    scale = 1.0 / math.sqrt(d)
    if sink is None or not sink.wants_full(layer):
        ctx = F.scaled_dot_product_attention(q, k, v)
        if sink is not None and sink.rows:
            scores = torch.matmul(q.index_select(2, sink.row_index), k.transpose(-2, -1)) * scale
            sink.attention_rows(layer, torch.softmax(scores, dim=-1, dtype=torch.float32))
    else:
        scores = torch.matmul(q * scale, k.transpose(-2, -1))  # scaling q: a third of the work of scaling scores
        # The softmax accumulates in fp32 whatever the model precision and returns the model's dtype, as
        # timm's and transformers' eager paths do: the product with v needs no copy, and the collector
        # turns what it keeps into fp32 (a bf16 row sums to 1 within 0.4 %; the map maths renormalises).
        probs = torch.softmax(scores, dim=-1)
        sink.attention(layer, probs)
        ctx = torch.matmul(probs, v)  # [B, H, N, D]
    ctx = ctx.transpose(1, 2).reshape(b, n, e)
    return F.linear(ctx, mha.out_proj.weight, mha.out_proj.bias)


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------


class TimmFamily(Family):
    kind = "timm"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        from timm.layers import Attention, PatchEmbed

        if getattr(module, "cls_token", None) is None:
            raise UserError("this timm model has no class token: live-attention needs a ViT with a class token")
        m: Any = module  # a timm VisionTransformer: its blocks' attributes are typed only as Tensor | Module
        pe = m.patch_embed
        if not isinstance(pe, PatchEmbed):
            raise UserError(f"this timm model embeds patches with {type(pe).__name__} (a CNN stem?): "
                            "live-attention reads plain ViTs (one convolution per patch)")
        blocks = m.blocks
        for blk in blocks:
            attn = getattr(blk, "attn", None)
            # Attention subclasses only: DiffAttention's map is a difference of two softmaxes, and the
            # parallel blocks compute attention inline; neither has one probability matrix to hook.
            if not isinstance(attn, Attention) or not hasattr(attn, "attn_drop"):
                kind = type(attn).__name__ if attn is not None else type(blk).__name__
                raise UserError(f"this timm model computes attention with {kind}: live-attention reads timm ViTs "
                                "with the standard softmax attention")
        self._blocks = list(blocks)
        self.num_layers = len(blocks)
        self.num_heads = int(blocks[0].attn.num_heads)
        self.hidden_dim = int(m.embed_dim)
        self.patch_size = int(pe.patch_size[0])
        self.image_size = (int(pe.img_size[0]), int(pe.img_size[1])) if pe.img_size is not None else (224, 224)
        self.num_prefix = int(getattr(module, "num_prefix_tokens", 1))
        # A CLIP-style tower's head projects into the text-image space: no classes to name.
        self.num_classes = 0 if timm_head_is_projection(module) else int(getattr(module, "num_classes", 0) or 0)
        self._enable_any_size()
        for i, blk in enumerate(blocks):
            attn = blk.attn
            if hasattr(attn, "fused_attn"):
                attn.fused_attn = False  # fused attention never produces weights
            attn.attn_drop.register_forward_hook(lambda _m, _i, out, i=i: self._report_attention(i, out))
            blk.register_forward_hook(lambda _m, _i, out, i=i: self._report_block(i, out))

    def _enable_any_size(self) -> None:
        """timm's ``dynamic_img_size``: position embeddings resampled per input size (any multiple of the
        patch), set on a model built without it (what ``create_model(..., dynamic_img_size=True)`` sets)."""
        from timm.layers import Format

        m: Any = self.module  # a timm VisionTransformer (patch_embed typed as Tensor | Module)
        if getattr(m, "dynamic_img_size", None) is False and getattr(m, "pos_embed", None) is not None:
            m.dynamic_img_size = True
            m.patch_embed.strict_img_size = False
            m.patch_embed.flatten = False
            m.patch_embed.output_fmt = Format.NHWC

    def forward(self, x: Tensor, sink: LayerSink | None) -> Tensor | None:
        self.check_grid(*x.shape[-2:])
        self._sink = sink
        out = self._hooked_forward(lambda: self.module(x))
        return out if self.num_classes else None

    def default_preprocess(self) -> Preprocess:
        return timm_preprocess(self.module)


# Words in a timm name or tag that mark a contrastive image-text tower (CLIP, MetaCLIP, TinyCLIP, Apple's
# MobileCLIP, Perception Encoder core): without "ft" in the tag its head is a projection, not classes.
_TOWER_WORDS = ("clip", "pe_core")


def timm_head_is_projection(module: nn.Module) -> bool:
    """True for a timm CLIP-style image tower whose ``head`` is the image-text projection its pretrained
    configuration names (e.g. ``vit_base_patch16_clip_224.openai``: 512 outputs, no classes); False for
    fine-tuned tags (``..._ft_in1k``), a head built with another ``num_classes``, and everything else."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    arch = str(cfg.get("architecture") or "")
    tag = str(cfg.get("tag") or "")
    classes = int(getattr(module, "num_classes", 0) or 0)
    if not classes or classes != int(cfg.get("num_classes") or 0):
        return False  # no head, or a head of the user's own (built with another num_classes)
    tower = any(w in arch or w in tag for w in _TOWER_WORDS)
    return tower and "ft" not in tag.split("_")


def timm_preprocess(module: nn.Module) -> Preprocess:
    """timm's eval transform for ``module`` (``resolve_data_config`` + ``transforms_imagenet_eval``): resize
    the shorter side to ``floor(size / crop_pct)``, centre-crop ``size``, the configured mean, std and
    interpolation. ``size``: the data config's, or the size the module was built for when that differs."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    built = getattr(getattr(module, "patch_embed", None), "img_size", None)
    if built is not None and int(built[-1]) != size:
        size = int(built[-1])  # built for another size than its weights' (a custom model): use its own
    crop_pct = float(cfg.get("crop_pct") or 0.875)  # timm's DEFAULT_CROP_PCT when the config has none
    mode = cfg.get("crop_mode") or "center"
    if mode != "center":
        logger.info("timm crop_mode %r approximated by a centre crop of the shorter side", mode)
    interp = cfg.get("interpolation") or "bicubic"
    if interp not in INTERPOLATIONS:
        logger.info("timm interpolation %r approximated by bicubic", interp)
        interp = "bicubic"
    return Preprocess(crop_size=size, resize_size=max(size, math.floor(size / crop_pct)), mean=rgb3(cfg["mean"]),
                      std=rgb3(cfg["std"]), interpolation=interp)


def rgb3(v) -> tuple[float, float, float]:
    """A per-channel value (three numbers, or one for all three)."""
    vals = [float(x) for x in v] if isinstance(v, (list, tuple)) else [float(v)]
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise UserError(f"the model's configuration gives {len(vals)} channel values, not 3 (RGB)")
    return vals[0], vals[1], vals[2]


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------


HF_CLASSES = ("ViTModel", "ViTForImageClassification", "Dinov2Model", "Dinov2ForImageClassification",
              "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification", "CLIPVisionModel",
              "DeiTModel", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher")

# The image processors' own defaults per model type, for a model without a preprocessor_config.json:
# (resize of the shorter side at crop 224, mean, std, interpolation). ViTImageProcessor resizes to
# 224×224 without a crop; DeiT's to 256 then crops 224; BiT (DINOv2) and CLIP resize the shorter side.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HF_DEFAULT_PREPROCESS: dict[str, tuple[int, tuple[float, ...], tuple[float, ...], str]] = {
    "vit": (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear"),
    "deit": (256, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    "dinov2": (256, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    "clip": (224, CLIP_MEAN, CLIP_STD, "bicubic"),
}


def hf_model_type(config) -> str:
    """``vit``, ``deit``, ``dinov2`` (with or without registers) or ``clip`` (any CLIP vision config)."""
    t = str(getattr(config, "model_type", "") or "vit")
    for k in ("dinov2", "clip", "deit"):
        if t.startswith(k):
            return k
    return "vit"


def hf_default_preprocess(config, size: int) -> Preprocess:
    """The model type's image-processor defaults, scaled to the model's input ``size``."""
    resize, mean, std, interp = HF_DEFAULT_PREPROCESS[hf_model_type(config)]
    return Preprocess(crop_size=size, resize_size=max(size, resize * size // 224), mean=rgb3(mean), std=rgb3(std),
                      interpolation=interp)


class HFFamily(Family):
    kind = "hf"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        m: Any = module  # a transformers model: its config's fields are read by name
        cfg = m.config
        vision = getattr(cfg, "vision_config", None) or cfg
        # Eager attention, so the probabilities exist (SDPA returns none, and output_attentions
        # silently gives an empty tuple).
        if hasattr(m, "set_attn_implementation"):
            m.set_attn_implementation("eager")
        else:  # transformers before 4.56
            cfg._attn_implementation = "eager"
        self.num_layers = int(vision.num_hidden_layers)
        self.num_heads = int(vision.num_attention_heads)
        self.hidden_dim = int(vision.hidden_size)
        self.patch_size = int(vision.patch_size)
        size = vision.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        name = type(module).__name__
        emb = _hf_embeddings(module)
        # Class token, then DeiT's distillation token, then DINOv2's registers.
        distill = getattr(emb, "distillation_token", None) is not None
        self.num_prefix = 1 + int(distill) + int(getattr(vision, "num_register_tokens", 0) or 0)
        self.num_classes = int(cfg.num_labels) if "ForImageClassification" in name else 0
        # ViT, DeiT and CLIP interpolate position embeddings only when asked; DINOv2 always does.
        self._interpolate = "interpolate_pos_encoding" in inspect.signature(module.forward).parameters
        attns, layers = _hf_modules(module)
        if len(attns) != self.num_layers or len(layers) != self.num_layers:
            raise UserError(f"{name}: found {len(attns)} attention modules for {self.num_layers} layers: "
                            "live-attention cannot read this model's attention")
        self._blocks = list(layers)
        for i, (a, layer) in enumerate(zip(attns, layers, strict=True)):
            a.register_forward_hook(lambda _m, _i, out, i=i: self._on_attn(i, out))
            layer.register_forward_hook(lambda _m, _i, out, i=i: self._report_block(i, out[0] if isinstance(out, tuple) else out))

    def _on_attn(self, layer: int, out) -> None:
        probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        if probs is not None:  # None: not eager attention, and the count check says so
            self._report_attention(layer, probs)

    def forward(self, x: Tensor, sink: LayerSink | None) -> Tensor | None:
        self.check_grid(*x.shape[-2:])
        self._sink = sink
        kwargs = {"interpolate_pos_encoding": True} if self._interpolate else {}
        out = self._hooked_forward(lambda: self.module(pixel_values=x, **kwargs))
        return out.logits if self.num_classes else None

    def default_preprocess(self) -> Preprocess:
        """The model type's image-processor defaults (a checkpoint's preprocessor_config.json, which
        :func:`live_attention.core.models.load_model` reads, says more)."""
        return hf_default_preprocess(self.module.config, self.image_size[0])


def _hf_embeddings(module: nn.Module) -> nn.Module | None:
    """The patch-embedding module (the one holding the class token)."""
    for _name, mod in module.named_modules():
        if any(hasattr(mod, a) for a in ("cls_token", "class_embedding")):
            return mod
    return None


def _hf_modules(module: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """The per-layer attention modules and layer modules of a transformers vision model, in order."""
    layers: list[nn.Module] = []
    for name, mod in module.named_modules():
        if isinstance(mod, nn.ModuleList) and name.rsplit(".", 1)[-1] in ("layer", "layers"):
            layers = list(mod)
            break
    attns = []
    for layer in layers:
        found = [m for n, m in layer.named_children() if n in ("attention", "self_attn")]
        if found:
            attns.append(found[0])
    return attns, layers


def family_of(module: nn.Module) -> Family:
    """The :class:`Family` that reads ``module``'s attention; a :class:`UserError` for anything else."""
    from torchvision.models.vision_transformer import VisionTransformer as TVViT

    if isinstance(module, TVViT):
        return TorchvisionFamily(module)
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:
        pass  # timm is optional: then the module is not one of its ViTs
    else:
        if isinstance(module, TimmViT):
            return TimmFamily(module)
    if type(module).__name__ in HF_CLASSES and hasattr(module, "config"):
        return HFFamily(module)
    raise UserError(
        f"{type(module).__name__} is not a torchvision, timm or Hugging Face ViT: live-attention cannot "
        "read its attention"
    )
