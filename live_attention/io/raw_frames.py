"""The raw frames of a session (``raw.mkv``): by frame index, and their timestamps without decoding."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from live_attention.errors import UserError
from live_attention.io.video import VideoReader

logger = logging.getLogger(__name__)


class RawReader:
    """The raw frames of ``raw.mkv`` by frame index (each frame's pts is known from the attention data).

    Sequential reads decode forward; a jump back or far ahead seeks (every FFV1/MJPEG frame is a keyframe).
    """

    def __init__(self, path: str | os.PathLike[str], pts_ms: np.ndarray) -> None:
        self.path = Path(path)
        self.pts_ms = pts_ms
        self._pos = {int(p): i for i, p in enumerate(pts_ms)}
        try:
            self._reader = VideoReader(self.path)
        except Exception as exc:
            raise UserError(f"cannot read the raw frames {self.path}: {exc}") from exc
        self._next = 0  # the index the reader yields next, when known
        self._cache: dict[int, np.ndarray] = {}

    def _decode_next(self) -> tuple[int, np.ndarray] | None:
        item = self._reader.read()
        if item is None:
            return None
        img, t = item
        return self._pos.get(int(round(t * 1000)), -1), img

    def get(self, index: int) -> np.ndarray | None:
        """The BGR frame ``index``, or None when the file ends before it."""
        if index in self._cache:
            return self._cache[index]
        if index < self._next - 1 or index > self._next + 60:
            self._reader.seek(float(self.pts_ms[index]) / 1000.0)
            self._next = -1
        restarted = False
        while True:
            got = self._decode_next()
            if got is None:
                return None
            i, img = got
            if i >= 0:
                self._next = i + 1
                if len(self._cache) > 8:
                    self._cache.pop(next(iter(self._cache)))
                self._cache[i] = img
            if i == index:
                return img
            if i > index and not restarted:  # the seek went too far: from the start
                self._reader.seek(0.0)
                self._next, restarted = 0, True

    def count(self) -> int:
        """Number of decodable frames (a full pass; for checks and tests)."""
        with VideoReader(self.path) as r:
            return sum(1 for _ in r)

    def close(self) -> None:
        self._reader.close()


def raw_pts_ms(path: Path) -> np.ndarray:
    """The timestamps (ms) of the frames in ``raw.mkv``, read from the packets without decoding them
    (the timeline of a session whose attention data is missing). Empty when the file cannot be read."""
    import av

    pts: list[int] = []
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            tb = float(stream.time_base) if stream.time_base else 1e-3
            for packet in c.demux(stream):
                if packet.pts is not None and packet.size:
                    pts.append(int(round(packet.pts * tb * 1000)))
    except (av.error.FFmpegError, IndexError, OSError, EOFError) as exc:  # truncated: what came before counts
        logger.debug("raw frames of %s end: %s", path, exc)
    return np.asarray(sorted(set(pts)), np.int64)
