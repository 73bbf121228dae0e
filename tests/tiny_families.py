"""Tiny random models of every family the engine reads (torchvision, timm, Hugging Face), for the tests of
the GPU path: the same builders serve the CPU tests and the ``cuda`` ones. Prefix tokens of every kind
(registers, a distillation token), models without a classifier, both timm and transformers hooks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from tests.conftest import tiny_vit


def timm_tiny(name: str, **kw) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, depth=2, embed_dim=32, num_heads=2, **kw).eval()


def hf_tiny(cls_name: str, **extra) -> nn.Module:
    import transformers

    configs = {"ViT": "ViTConfig", "Dinov2WithRegisters": "Dinov2WithRegistersConfig", "DeiT": "DeiTConfig",
               "CLIPVision": "CLIPVisionConfig"}
    prefix = next(p for p in configs if cls_name.startswith(p))
    config = getattr(transformers, configs[prefix])(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, image_size=32, patch_size=8, **extra)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config).eval()


def sharpen(module: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Random weights far from the libraries' near-zero initialisation (as tests/test_models.py does), so
    attention is sharp and differs from layer to layer: a comparison of maps could otherwise not fail."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            r = torch.randn(p.shape, generator=g)
            gain = p.ndim == 1 and name.endswith("weight") and any(w in name for w in ("norm", "ln", "layernorm"))
            p.copy_(1.0 + 0.1 * r if gain else std * r)
    return module.eval()


_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "torchvision": lambda: tiny_vit(layers=3, heads=2),
    "timm dino": lambda: timm_tiny("vit_small_patch8_224.dino", img_size=32, num_classes=5),
    "timm registers": lambda: timm_tiny("vit_base_patch14_reg4_dinov2.lvd142m", img_size=28, num_classes=5),
    "timm distilled": lambda: timm_tiny("deit_base_distilled_patch16_224.fb_in1k", img_size=32, patch_size=8,
                                        num_classes=5),
    "timm clip tower": lambda: timm_tiny("vit_base_patch16_clip_224.openai", img_size=32, patch_size=8),
    "hf vit": lambda: hf_tiny("ViTForImageClassification", num_labels=4),
    "hf dinov2 registers": lambda: hf_tiny("Dinov2WithRegistersForImageClassification", num_labels=4,
                                           num_register_tokens=2),
    "hf deit teacher": lambda: hf_tiny("DeiTForImageClassificationWithTeacher", num_labels=4),
    "hf clip tower": lambda: hf_tiny("CLIPVisionModel"),
}
FAMILIES: dict[str, Callable[[], nn.Module]] = {name: (lambda b=b: sharpen(b())) for name, b in _BUILDERS.items()}

# The live modes whose step a CUDA graph captures.
GRAPHED_MODES = ("attention", "heads", "rollout", "entropy", "query", "norms")  # relevance and flow run eagerly
