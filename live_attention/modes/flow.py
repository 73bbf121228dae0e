"""Mode 6: attention flow, the max-flow from each patch to the class token through every layer; computed
on a frozen frame from its kept attention (a background job live, at once offline)."""

from __future__ import annotations

from typing import Any

import numpy as np

from live_attention import names
from live_attention.core.frame_maps import FLOW_MAX_TOKENS
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Mode, register_mode


@register_mode
class Flow(Mode):
    name = names.FLOW
    key = "6"
    title = "Attention flow"
    explain = "max-flow from each patch to the class token"
    picks_layer = False
    smoothed = False  # computed once, on a frozen frame
    freezes = True
    later = True
    progress = "computing attention flow..."

    def keeps(self, view: View) -> dict[str, Any]:
        return {"need": ("fused",)}

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        tokens = result.num_patches + result.num_prefix
        if tokens > FLOW_MAX_TOKENS:
            return None, (f"attention flow over {tokens} tokens would take hours: use an --input-size with at "
                          f"most {FLOW_MAX_TOKENS}")
        if extras is None or extras.flow is None or extras.flow_seq != result.seq:
            return None, f"freeze (Space) and press {self.key} to compute flow"
        return extras.flow, f"all layers, heads fused ({result.settings.fusion})"

    def heads_label(self, view: View, result: Result) -> str:
        return f"heads {result.settings.fusion}"

    def needs_model(self, view: View, rec: Result) -> bool:
        return True  # the fused matrices it is computed from are not recorded
