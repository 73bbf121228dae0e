"""What a frame source is, and the sources known by name (``--source demo``).

:class:`FrameSource` is the protocol the capture thread reads. Named sources register a factory here,
as timm's models do with ``register_model``: the demo package registers ``demo`` when it is imported, so
nothing in ``io/`` imports the demo. Light on purpose (no OpenCV, no numpy at import): the package root
imports it to register the demo.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

# Appended to the errors of every source that cannot open: the demo always works.
SOURCE_HINT = "try --source demo (make demo in a checkout) or a video file"

# A named source's factory: (width, height, fps) requested, each None when not given -> an unopened source.
SourceFactory = Callable[[int | None, int | None, float | None], "FrameSource"]

_NAMED: dict[str, SourceFactory] = {}


@runtime_checkable
class FrameSource(Protocol):
    """Anything that yields BGR uint8 frames. Used by one thread at a time.

    ``open()`` acquires the device or file and is a no-op when already open; it raises
    :class:`SourceError` with a one-line message when it cannot. ``read()`` returns the next frame,
    or ``None`` on failure or end. ``release()`` frees it (idempotent).

    Optional extras the capture thread uses when present: ``pts_s`` (media time in seconds of the
    frame last read) and ``ended`` (a file reached its end).
    """

    def open(self) -> None: ...

    def read(self) -> np.ndarray | None: ...

    def release(self) -> None: ...

    @property
    def name(self) -> str: ...

    @property
    def fps(self) -> float | None: ...

    @property
    def is_live(self) -> bool: ...



def register_source(name: str, factory: SourceFactory) -> None:
    """Make ``--source NAME`` (any case) build its source with ``factory(width, height, fps)``."""
    _NAMED[name.lower()] = factory


def named_source(name: str) -> SourceFactory | None:
    """The factory registered for ``name`` (any case), or ``None``."""
    return _NAMED.get(name.lower())


def valid_fps(value: float) -> float | None:
    """CAP_PROP_FPS can be 0, NaN or nonsense (e.g. 90000 for some streams): ``None`` then."""
    return float(value) if math.isfinite(value) and 0.0 < value <= 1000.0 else None


def redact(url: str) -> str:
    """Hide the password in ``scheme://user:password@host`` (names end up in logs and on screen)."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)
