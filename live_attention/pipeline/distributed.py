"""Many inputs on a Ray cluster (optional extra ``live-attention[ray]``): filled in with the batch work."""

from __future__ import annotations

from typing import Any


def render_on_ray(jobs: list[Any], cfg: Any, address: str, hud: bool = True, batch_size: int | None = None) -> int:
    raise NotImplementedError
