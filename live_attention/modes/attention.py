"""Mode 1: the class token's attention to each patch in one layer."""

from __future__ import annotations

import numpy as np

from live_attention import names
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Mode, fuse, head_index, heads_name, layer_name, register_mode


def cls_map(result: Result, view: View) -> tuple[np.ndarray, str]:
    """The class token's attention in the view's layer, for its head or fused: map and caption."""
    layer, head = view.resolved_layer(result.num_layers), head_index(result, view)
    m = result.cls[layer, head] if head >= 0 else fuse(result.cls[layer], view.fusion)
    return m, f"{layer_name(result, view)}, {heads_name(result, view)}"


@register_mode
class Attention(Mode):
    name = names.ATTENTION
    key = "1"
    title = "CLS attention"
    explain = "where the class token looks in this layer"

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        return cls_map(result, view)
