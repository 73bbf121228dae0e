"""Mode 5: where one patch (clicked, or the centre offline) looks, in one layer."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from live_attention import names
from live_attention.core.frame_maps import query_for
from live_attention.core.render import CYAN
from live_attention.datatypes import Extras, Result, View
from live_attention.modes.base import Marks, Mode, fuse, head_index, heads_name, layer_name, register_mode


@register_mode
class Query(Mode):
    name = names.QUERY
    maps = (names.QUERY,)
    key = "5"
    title = "Patch query"
    explain = "where the selected patch looks"
    picks_patch = True

    def keeps(self, view: View) -> dict[str, Any]:
        return {"query_patch": view.query_patch}

    def select(self, result: Result, view: View, extras: Extras | None) -> tuple[np.ndarray | None, str]:
        if view.query_patch is None:
            return None, "click a patch to query it"
        q = query_for(result, view.query_patch)
        if q is None:
            return None, "this frame kept no rows for that patch"
        q = q[view.resolved_layer(result.num_layers)]
        head = head_index(result, view)
        m = q[head] if head >= 0 else fuse(q, view.fusion)
        r, c = divmod(view.query_patch, result.grid[1])
        return m, f"patch row {r + 1}, col {c + 1}, {layer_name(result, view)}, {heads_name(result, view)}"

    def needs_model(self, view: View, rec: Result) -> bool:
        return True  # the rows of a patch are kept only while it is queried

    def default_view(self, view: View, grid: tuple[int, int]) -> View:
        if view.query_patch is not None:
            return view
        gh, gw = grid
        return replace(view, query_patch=(gh // 2) * gw + gw // 2)  # the centre patch

    def marks(self, result: Result, view: View) -> Marks:
        return [(view.query_patch, CYAN)] if view.query_patch is not None else []
