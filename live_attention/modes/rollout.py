"""Mode 2: attention rollout, what the class token has gathered up to a layer (heads fused by the worker)."""

from __future__ import annotations

import numpy as np

from live_attention import names
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Mode, register_mode


@register_mode
class Rollout(Mode):
    name = names.ROLLOUT
    maps = (names.ROLLOUT,)
    key = "2"
    title = "Attention rollout"
    explain = "what the class token has gathered up to this layer"
    fusion_sets_map = True

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        if result.rollout is None:
            return None, (f"rollout does not fit in memory at {result.num_patches + result.num_prefix} tokens: "
                          "use a smaller --input-size")
        layer = view.resolved_layer(result.num_layers)
        return result.rollout[layer], f"layers 1-{layer + 1}, heads fused ({result.settings.fusion})"

    def heads_label(self, view: View, result: Result) -> str:
        return f"heads {result.settings.fusion}"

    def needs_model(self, view: View, rec: Result) -> bool:
        return rec.rollout is None or view.fusion != rec.settings.fusion
