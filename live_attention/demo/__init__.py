"""The demo: synthetic scenes, the project's own small ViT trained on them, and its training script.

Importing this package registers ``--model demo`` and ``--source demo`` (the library and the I/O layer
never import the demo; they look names up in their registries). The package root imports it, so both
names work from every entry point. Registering is cheap: torch and the scene load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from live_attention.core.registry import register_model
from live_attention.io.sources import register_source

if TYPE_CHECKING:
    import torch

    from live_attention.core.engine import AttentionEngine
    from live_attention.io.sources import FrameSource


def demo_engine(weights: str, device: str | torch.device, precision: str) -> AttentionEngine:
    """``--model demo``: the shipped toy ViT (see :mod:`live_attention.demo.model`)."""
    from live_attention.demo.model import build_demo_engine

    return build_demo_engine(weights=weights, device=device, precision=precision)


def demo_source(width: int | None, height: int | None, fps: float | None) -> FrameSource:
    """``--source demo``: the synthetic scene, 640x480 at 30 fps unless asked otherwise."""
    from live_attention.demo.source import DemoSource

    return DemoSource(width=width or 640, height=height or 480, fps=fps or 30.0)


register_model("demo", demo_engine)
register_source("demo", demo_source)
