"""File sources: a video file (or animated GIF) at its own frame rate, a still image, a folder of images."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from live_attention.errors import SourceError
from live_attention.io.sources import SOURCE_HINT
from live_attention.io.video import IMAGE_EXTENSIONS, VideoReader, read_image

logger = logging.getLogger(__name__)

STILL_FPS = 10.0  # stills are re-emitted at this rate: low latency for view changes, CPU mostly idle


class VideoFileSource:
    """A video file (or an animated GIF), played at its own frame rate (the capture thread paces it).

    Decoded by :class:`~live_attention.io.video.VideoReader`, the reader ``render`` and export use too.
    ``pts_s`` is the media time of the frame last read. At the end ``read`` returns ``None`` and
    :attr:`ended` is True, unless ``loop``, which starts again from the beginning (media time too).
    """

    is_live = False

    def __init__(self, path: str | os.PathLike[str], loop: bool = False) -> None:
        self._path = Path(path)
        self.loop = loop
        self._reader: VideoReader | None = None
        self._pending: tuple[np.ndarray, float] | None = None  # first frame, decoded by open() to validate
        self._pts: float | None = None
        self.ended = False
        self.frames_read = 0

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def fps(self) -> float | None:
        return self._reader.fps if self._reader is not None else None

    @property
    def pts_s(self) -> float | None:
        return self._pts

    def open(self) -> None:
        if self._reader is not None:
            return
        if not self._path.is_file():
            raise SourceError(f"video {self._path} not found: check the path, or {SOURCE_HINT}")
        try:
            reader = VideoReader(self._path)
        except SourceError as exc:
            raise SourceError(f"{exc}: {SOURCE_HINT}") from None
        first = reader.read()
        if first is None:
            reader.close()
            raise SourceError(f"{self._path} has no frames that can be decoded (corrupt or unsupported codec): {SOURCE_HINT}")
        self._reader, self._pending, self._pts = reader, first, None
        self.ended = False

    def read(self) -> np.ndarray | None:
        if self._reader is None or self.ended:
            return None
        item, self._pending = self._pending, None
        if item is None:
            item = self._reader.read()
        if item is None and self.loop and self.frames_read:
            self._reader.seek(0.0)  # media time restarts (the capture thread re-anchors its pacing)
            item = self._reader.read()
        if item is None:
            self.ended = True
            return None
        image, self._pts = item
        self.frames_read += 1
        return image

    def release(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._pending = None


def _natural_key(path: Path) -> list[int | str]:
    """Sort ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageSource:
    """A still image, repeated at a low rate, or a folder of images shown as a slideshow.

    Unreadable files are skipped with a warning (once per file). ``read`` returns the same read-only
    array while the picture stays (:attr:`still`): the worker preprocesses a still once, however large,
    and no one copies it ten times a second. The slideshow advances every ``slideshow_seconds`` of
    reads at :attr:`fps` (the capture thread paces reads at that rate).
    """

    is_live = False
    still = True

    def __init__(self, path_or_folder: str | os.PathLike[str], slideshow_seconds: float = 3.0) -> None:
        self._path = Path(path_or_folder)
        self.slideshow_seconds = float(slideshow_seconds)
        self._files: list[Path] = []
        self._bad: set[Path] = set()
        self._index = 0
        self._image: np.ndarray | None = None
        self._reads = 0
        self._opened = False

    @property
    def name(self) -> str:
        return self._path.name or str(self._path)

    @property
    def fps(self) -> float:
        return STILL_FPS

    @property
    def current_file(self) -> Path | None:
        """The file the latest frame came from."""
        return self._files[self._index] if self._opened else None

    def open(self) -> None:
        if self._opened:
            return
        if self._path.is_dir():
            files = sorted(
                (p for p in self._path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
                key=_natural_key,
            )
            if not files:
                exts = "/".join(sorted(e[1:] for e in IMAGE_EXTENSIONS))
                raise SourceError(f"no images ({exts}) in folder {self._path}: add some, or {SOURCE_HINT}")
        elif self._path.is_file():
            files = [self._path]
        else:
            raise SourceError(f"{self._path} not found: check the path, or {SOURCE_HINT}")
        self._files, self._bad = files, set()
        for i in range(len(files)):
            image = self._load(i)
            if image is not None:
                self._index, self._image, self._reads, self._opened = i, image, 0, True
                return
        where = f"in folder {self._path}" if len(files) > 1 or self._path.is_dir() else f"at {self._path}"
        raise SourceError(f"no readable image {where} (corrupt or unsupported): {SOURCE_HINT}")

    def _load(self, i: int) -> np.ndarray | None:
        path = self._files[i]
        if path in self._bad:
            return None
        try:
            image = read_image(path)
        except SourceError as exc:  # too large to decode: skipped like an unreadable one, saying why
            logger.warning("skipping %s", exc)
            self._bad.add(path)
            return None
        if image is None:
            logger.warning("skipping unreadable image %s", path)
            self._bad.add(path)
            return None
        image.flags.writeable = False  # shared by every frame of this picture
        return image

    def read(self) -> np.ndarray | None:
        if not self._opened or self._image is None:
            return None
        per_image = max(1, round(self.slideshow_seconds * STILL_FPS))
        if len(self._files) > 1 and self._reads >= per_image:
            self._reads = 0
            for step in range(1, len(self._files) + 1):
                j = (self._index + step) % len(self._files)
                image = self._load(j) if j != self._index else self._image
                if image is not None:
                    self._index, self._image = j, image
                    break
        self._reads += 1
        return self._image

    def release(self) -> None:
        self._image = None
        self._opened = False
