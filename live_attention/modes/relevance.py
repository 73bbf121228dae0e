"""Mode 7: class relevance (gradients x attention, Chefer et al.): which patches made the model say a class."""

from __future__ import annotations

from typing import Any

import numpy as np

from live_attention import names
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Mode, register_mode


def explained(result: Result) -> str:
    """``tabby cat (62%)``: the class relevance explains, and its probability."""
    name = result.target_label or "the top class"
    return f"{name} ({result.target_p * 100:.0f}%)" if result.target_p is not None else name


@register_mode
class Relevance(Mode):
    name = names.RELEVANCE
    key = "7"
    title = "Class relevance"
    explain = "which patches made the model say this class (gradients x attention)"
    picks_layer = False
    explains_class = True

    def keeps(self, view: View) -> dict[str, Any]:
        return {"relevance": True}  # a backward pass: only while it is shown (or recorded)

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        if not result.classifier:
            return None, "this model has no classifier: there is no class to explain"
        if result.relevance is None:
            return None, "computing relevance..."
        return result.relevance, f"for {explained(result)}, all layers"

    def heads_label(self, view: View, result: Result) -> str:
        return "heads mean"

    def needs_model(self, view: View, rec: Result) -> bool:
        return rec.relevance is None or (view.target is not None and view.target != rec.target)

    def hud_lines(self, result: Result) -> list[str]:
        return [f"explaining: {explained(result)}"] if result.classifier else []
