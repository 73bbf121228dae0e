"""The browser's camera as a frame source (``serve --source browser``).

Threads: the web server's thread :meth:`~BrowserSource.offer`s each decoded video frame (a PyAV
``VideoFrame``, or a BGR array); the capture thread, which owns the source like any other, converts
the newest one in :meth:`~BrowserSource.read`. Frames that are too large or not pictures are dropped
and counted. While no page sends its camera, ``read`` waits: the capture thread reports NO SIGNAL, as
for a camera that went quiet.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from live_attention.io.capture import LatestSlot

MAX_SIDE = 2560  # a page may send up to 2560x1440 (or 1440x2560); larger frames are dropped
MAX_PIXELS = 2560 * 1440


class BrowserSource:
    """Frames the pages send; the newest wins (as in every capture path).

    ``close`` (the server, at shutdown) ends a ``read`` that waits, so the capture thread stops.
    """

    is_live = True
    name = "browser camera"
    fps = None

    def __init__(self) -> None:
        self._slot: LatestSlot[Any] = LatestSlot()
        self._lock = threading.Lock()
        self.received = 0  # frames accepted from pages
        self.rejected = 0  # frames dropped: too large, not a picture, or failed to convert

    def offer(self, frame: Any) -> bool:
        """A frame from a page (web server's thread): queued when its size is sane, else counted."""
        w, h = _size(frame)
        if w <= 0 or h <= 0 or max(w, h) > MAX_SIDE or w * h > MAX_PIXELS:
            with self._lock:
                self.rejected += 1
            return False
        with self._lock:
            self.received += 1
        self._slot.put(frame)
        return True

    def reject(self) -> None:
        """A frame the server could not take (not a picture): counted."""
        with self._lock:
            self.rejected += 1

    def open(self) -> None:
        pass  # nothing to acquire: pages connect by themselves

    def read(self) -> np.ndarray | None:
        while True:
            frame = self._slot.get(timeout=None)
            if frame is None:  # closed
                return None
            image = _to_bgr(frame)
            if image is not None:
                return image
            with self._lock:
                self.rejected += 1

    def release(self) -> None:
        pass  # the capture thread releases on reconnect; frames keep coming from the server

    def close(self) -> None:
        """Stop for good: a waiting ``read`` returns None at once."""
        self._slot.close()

    @property
    def dropped(self) -> int:
        """Frames that came faster than the capture thread read them."""
        return self._slot.overwritten


def _size(frame: Any) -> tuple[int, int]:
    if isinstance(frame, np.ndarray):
        return (frame.shape[1], frame.shape[0]) if frame.ndim == 3 and frame.shape[2] == 3 else (0, 0)
    try:
        return int(frame.width), int(frame.height)
    except (AttributeError, TypeError, ValueError):
        return 0, 0


def _to_bgr(frame: Any) -> np.ndarray | None:
    if isinstance(frame, np.ndarray):
        return np.ascontiguousarray(frame, dtype=np.uint8) if frame.dtype == np.uint8 else None
    try:
        return frame.to_ndarray(format="bgr24")
    except Exception:  # a frame PyAV cannot convert: dropped, counted by the caller
        return None
