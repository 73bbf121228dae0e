"""The demo source: the synthetic scene of :mod:`live_attention.demo.synthetic`, as a frame source.

Registered as ``--source demo`` by :mod:`live_attention.demo` (see :func:`~live_attention.io.sources.register_source`).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from live_attention.errors import SourceError
from live_attention.io.video import to_bgr8


class DemoSource:
    """Moving coloured objects on a textured background (``live_attention.demo.synthetic.DemoScene``).

    Not live: it never disconnects, and the capture thread paces it at ``fps``. Frame n shows the
    scene at t = n / fps, reported as ``pts_s``: the scene's own clock, which paces it like a video
    file and lets tests look up where the objects were in any frame.
    """

    is_live = False
    name = "demo"

    def __init__(self, width: int = 640, height: int = 480, fps: float = 30, seed: int = 0) -> None:
        self.width, self.height, self.seed = int(width), int(height), int(seed)
        self._fps = float(fps)
        self._scene: _Scene | None = None
        self._n = 0
        self._t: float | None = None

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def pts_s(self) -> float | None:
        return self._t

    @property
    def scene(self) -> _Scene | None:
        return self._scene

    def open(self) -> None:
        if self._scene is not None:
            return
        try:
            # At open, not at import: registering the demo stays light, and a test can stub the scene.
            from live_attention.demo.synthetic import DemoScene
        except ImportError as exc:
            raise SourceError(
                f"the demo scene is unavailable ({exc}): reinstall live-attention, or use a video file"
            ) from exc
        # One to three targets of different classes, as in training: the multi-label model names each, and
        # class-specific relevance (--target) picks out one.
        self._scene = DemoScene(width=self.width, height=self.height, seed=self.seed, num_targets=3)
        self._n = 0

    def read(self) -> np.ndarray | None:
        if self._scene is None:
            return None
        self._t = self._n / self._fps
        self._n += 1
        return to_bgr8(self._scene.frame(self._t))

    def release(self) -> None:
        self._scene = None


class _Scene(Protocol):
    def frame(self, t: float) -> np.ndarray: ...
