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
  with registers, ``CLIPVisionModel``): the model is switched to eager attention and each layer's
  attention module is hooked; its second output is the probabilities.

Position embeddings are interpolated for other input sizes the way each library does it (bicubic over
the patch grid, prefix tokens untouched), so any multiple of the patch size works, square or not.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from live_attention.errors import UserError


class LayerSink(Protocol):
    """What a family's forward pass reports to (the engine's collector)."""

    def wants_full(self, layer: int) -> bool:
        """True when the whole ``[B, H, N, N]`` matrix of ``layer`` is needed, not only some rows."""

    rows: tuple[int, ...]  # token rows wanted from every layer when the whole matrix is not

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

    def forward(self, x: Tensor, sink: LayerSink) -> Tensor | None:
        raise NotImplementedError

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
            sink.attention_rows(layer, probs[:, :, list(sink.rows)].float())

    def _report_block(self, layer: int, tokens: Tensor) -> None:
        if self._sink is not None:
            self._sink.block_output(layer, tokens)

    def _hooked_forward(self, run) -> object:
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
        enc = module.encoder
        self.num_layers = len(enc.layers)
        self.num_heads = int(enc.layers[0].num_heads)
        self.hidden_dim = int(module.hidden_dim)
        self.patch_size = int(module.patch_size)
        self.image_size = (int(module.image_size), int(module.image_size))
        self.num_prefix = 1
        self.num_classes = int(module.num_classes)
        self._pos_cache: dict[tuple[int, int], Tensor] = {}

    def pos_embedding(self, grid: tuple[int, int]) -> Tensor:
        pos = self.module.encoder.pos_embedding
        if pos.requires_grad:  # training (the demo model): never cache a tensor in the graph
            return resample_pos_embed(pos, grid, self._own_grid(), 1)
        cached = self._pos_cache.get(grid)
        if cached is None or cached.device != pos.device or cached.dtype != pos.dtype:
            cached = resample_pos_embed(pos, grid, self._own_grid(), 1)
            self._pos_cache[grid] = cached
        return cached

    def _own_grid(self) -> tuple[int, int]:
        return self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size

    def clear_cache(self) -> None:
        self._pos_cache.clear()

    def forward(self, x: Tensor, sink: LayerSink | None) -> Tensor:
        m = self.module
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
            rows = list(sink.rows)
            scores = torch.matmul(q[:, :, rows], k.transpose(-2, -1)) * scale
            sink.attention_rows(layer, torch.softmax(scores, dim=-1, dtype=torch.float32))
    else:
        scores = torch.matmul(q, k.transpose(-2, -1)) * scale
        # Softmax in fp32 whatever the model precision: map maths wants fp32 and rows summing to 1.
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
        sink.attention(layer, probs)
        ctx = torch.matmul(probs.to(v.dtype), v)  # [B, H, N, D]
    ctx = ctx.transpose(1, 2).reshape(b, n, e)
    return F.linear(ctx, mha.out_proj.weight, mha.out_proj.bias)


# --------------------------------------------------------------------------------------------------
# timm
# --------------------------------------------------------------------------------------------------


class TimmFamily(Family):
    kind = "timm"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        if getattr(module, "cls_token", None) is None:
            raise UserError("this timm model has no class token: live-attention needs a ViT with a class token")
        blocks = module.blocks
        self.num_layers = len(blocks)
        self.num_heads = int(blocks[0].attn.num_heads)
        self.hidden_dim = int(module.embed_dim)
        pe = module.patch_embed
        self.patch_size = int(pe.patch_size[0])
        self.image_size = (int(pe.img_size[0]), int(pe.img_size[1])) if pe.img_size is not None else (224, 224)
        self.num_prefix = int(getattr(module, "num_prefix_tokens", 1))
        self.num_classes = int(getattr(module, "num_classes", 0) or 0)
        self._enable_any_size()
        for i, blk in enumerate(blocks):
            attn = blk.attn
            if hasattr(attn, "fused_attn"):
                attn.fused_attn = False  # fused attention never produces weights
            if not hasattr(attn, "attn_drop"):
                raise UserError("this timm model's attention has no attn_drop: cannot capture its weights")
            attn.attn_drop.register_forward_hook(lambda _m, _i, out, i=i: self._report_attention(i, out))
            blk.register_forward_hook(lambda _m, _i, out, i=i: self._report_block(i, out))

    def _enable_any_size(self) -> None:
        """timm's ``dynamic_img_size``: position embeddings resampled per input size (any multiple of the
        patch), set on a model built without it."""
        from timm.layers import Format

        m = self.module
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


# --------------------------------------------------------------------------------------------------
# Hugging Face transformers
# --------------------------------------------------------------------------------------------------


HF_CLASSES = ("ViTModel", "ViTForImageClassification", "Dinov2Model", "Dinov2ForImageClassification",
              "Dinov2WithRegistersModel", "Dinov2WithRegistersForImageClassification", "CLIPVisionModel",
              "DeiTModel", "DeiTForImageClassification")


class HFFamily(Family):
    kind = "hf"

    def __init__(self, module: nn.Module) -> None:
        super().__init__(module)
        cfg = module.config
        vision = getattr(cfg, "vision_config", None) or cfg
        # Eager attention, so the probabilities exist (SDPA returns none, and output_attentions
        # silently gives an empty tuple).
        if hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation("eager")
        else:  # transformers before 4.56
            module.config._attn_implementation = "eager"
        self.num_layers = int(vision.num_hidden_layers)
        self.num_heads = int(vision.num_attention_heads)
        self.hidden_dim = int(vision.hidden_size)
        self.patch_size = int(vision.patch_size)
        size = vision.image_size
        self.image_size = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        name = type(module).__name__
        self.num_prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0) + (1 if name.startswith("DeiT") else 0)
        self.num_classes = int(cfg.num_labels) if name.endswith("ForImageClassification") else 0
        self._interpolate = not name.startswith("Dinov2")  # Dinov2 always interpolates
        attns, layers = _hf_modules(module)
        if len(attns) != self.num_layers or len(layers) != self.num_layers:
            raise UserError(f"{name}: found {len(attns)} attention modules for {self.num_layers} layers: "
                            "live-attention cannot read this model's attention")
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
        TimmViT = None  # noqa: N806
    if TimmViT is not None and isinstance(module, TimmViT):
        return TimmFamily(module)
    if type(module).__name__ in HF_CLASSES and hasattr(module, "config"):
        return HFFamily(module)
    raise UserError(
        f"{type(module).__name__} is not a torchvision, timm or Hugging Face ViT: live-attention cannot "
        "read its attention"
    )
