"""Mode 8: each patch token's output norm after a layer; the high-norm outliers (what registers remove) boxed."""

from __future__ import annotations

import numpy as np
import torch

from live_attention import names
from live_attention.core import maps
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Marks, Mode, layer_name, register_mode

OUTLIER = (255, 60, 200)  # the outline of a high-norm token


def norm_outliers(norms: np.ndarray) -> np.ndarray:
    """Bool [P]: high-norm outlier tokens (:func:`live_attention.core.maps.norm_outliers`)."""
    return maps.norm_outliers(torch.from_numpy(np.asarray(norms, np.float32))).numpy()


@register_mode
class Norms(Mode):
    name = names.NORMS
    maps = (names.TOKEN_NORM,)
    key = "8"
    title = "Token norms"
    explain = "boxes: high-norm outlier tokens (what registers remove)"

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        if result.token_norm is None:
            return None, "token norms were not kept for this frame"
        layer = view.resolved_layer(result.num_layers)
        n = int(norm_outliers(result.token_norm[layer]).sum())
        return result.token_norm[layer], f"after {layer_name(result, view)}: {n} high-norm outlier token{'s' if n != 1 else ''}"

    def heads_label(self, view: View, result: Result) -> str:
        return "tokens (no heads)"

    def needs_model(self, view: View, rec: Result) -> bool:
        return rec.token_norm is None

    def marks(self, result: Result, view: View) -> Marks:
        if result.token_norm is None:
            return []
        layer = view.resolved_layer(result.num_layers)
        return [(int(p), OUTLIER) for p in np.flatnonzero(norm_outliers(result.token_norm[layer]))]
