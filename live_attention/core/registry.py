"""Models known by name (``--model demo``): a builder per name, registered by whoever provides the model.

As timm's models do with ``register_model``: the demo package registers ``demo`` when it is imported, so
the library never imports the demo. Light on purpose (no torch at import): the package root imports the
demo package, and with it this module, whenever anything of ``live_attention`` is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from live_attention.core.engine import AttentionEngine

# (weights, device, precision) -> engine; weights is the ``--weights`` word or path, already stripped.
ModelBuilder = Callable[[str, "str | torch.device", str], "AttentionEngine"]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str, builder: ModelBuilder) -> None:
    """Make ``load_model(name)`` (and ``--model NAME``) call ``builder(weights, device, precision)``."""
    _BUILDERS[name] = builder


def model_builder(name: str) -> ModelBuilder | None:
    """The builder registered for ``name``, or ``None``."""
    return _BUILDERS.get(name)
