"""Video files through PyAV: the one reader of video files, and the one image loader.

Reading: :class:`VideoReader` decodes any file FFmpeg knows (mp4, mkv, mov, avi, webm, animated GIF)
into BGR frames with their media time; the live file source, ``render``, replay and export all read
through it. :func:`read_image` loads still images the same way everywhere (16-bit scaled by
255/65535, huge images shrunk once), so a file gives the same maps in every command.

Both give the picture upright, as a player shows it: a video's display matrix (every portrait phone
video is stored landscape with one) and a still's EXIF orientation (every portrait phone photo) are
applied here, where frames are read, so nothing downstream sees a sideways frame or a sideways size.

The writers (H.264, GIF) are in :mod:`live_attention.io.writers`.
"""

from __future__ import annotations

import logging
import math
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import cv2
import numpy as np

from live_attention.errors import SourceError

# Still importable from here for offline.renderer and pipeline.replay (moved during another restructuring);
# new code imports it from live_attention.io.writers.
from live_attention.io.writers import H264Writer  # noqa: F401

if TYPE_CHECKING:
    import av
    from av.container import InputContainer
    from av.sidedata.sidedata import SideDataContainer

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MAX_IMAGE_SIDE = 4096  # larger stills are shrunk once on load: the canvas is at most 1080 px tall
DEFAULT_FPS = 30.0  # for files that do not say
# OpenCV applies a still's EXIF orientation (all eight, mirrors too) with every flag but IMREAD_UNCHANGED;
# these keep what UNCHANGED kept that matters (16-bit and float depth; alpha is dropped either way).
IMAGE_READ_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def to_bgr8(image: np.ndarray | None) -> np.ndarray | None:
    """Whatever a decoder returned to H×W×3 uint8 BGR (``None`` stays ``None``).

    16-bit images scale by 255/65535 (their full range, whatever the picture's own maximum), floats
    by 255 (a [0, 1] image); gray and BGRA become BGR.
    """
    if image is None or image.size == 0:
        return None
    if image.dtype == np.uint16:
        image = cv2.convertScaleAbs(image, alpha=255.0 / 65535.0)
    elif image.dtype in (np.float32, np.float64):
        image = cv2.convertScaleAbs(np.nan_to_num(image), alpha=255.0)
    elif image.dtype != np.uint8:
        image = cv2.convertScaleAbs(image)
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def read_image(path: str | os.PathLike[str]) -> np.ndarray | None:
    """A still image as BGR uint8, or None when it cannot be decoded. Larger than
    :data:`MAX_IMAGE_SIDE` on a side: shrunk once here (area averaging), so no later step pays for it;
    a huge JPEG is decoded at reduced size, and an image too large to decode raises :class:`SourceError`
    (:func:`decode_image_bounded`)."""
    try:
        image = decode_image_bounded(path)
    except (OSError, cv2.error):
        image = None
    image = to_bgr8(image)
    if image is None:
        return None
    h, w = image.shape[:2]
    if max(h, w) > MAX_IMAGE_SIDE:
        s = MAX_IMAGE_SIDE / max(h, w)
        logger.info("%s is %dx%d: shrunk to %dx%d once", path, w, h, round(w * s), round(h * s))
        image = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return image


# -- Huge stills: decoded at reduced size, or refused, so memory stays bounded (issue 15) -------------

MAX_DECODE_PIXELS = 100_000_000  # a full decode of more (300 MB at 8-bit RGB, 800 MB at 16-bit RGBA) is refused
_REDUCED = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4), (2, cv2.IMREAD_REDUCED_COLOR_2))
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame markers (not DHT, JPG, DAC)
# Progressive and the like: libjpeg holds every coefficient of the full-size image, whatever the output size.
_JPEG_FULL_BUFFER = frozenset({0xC2, 0xC6, 0xCA, 0xCE})


def image_header(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    """``(format, width, height)`` of a PNG or JPEG from its header (a few bytes read, nothing decoded),
    of other formats through Pillow's lazy open; None when the header says nothing. A progressive JPEG is
    ``jpeg-progressive``."""
    with open(path, "rb") as f:
        head = f.read(24)
        if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
            return "png", int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
        if head[:2] == b"\xff\xd8":
            return _jpeg_size(f)
    return _other_size(path)


def _jpeg_size(f) -> tuple[str, int, int] | None:
    """Walk a JPEG's segments (EXIF and ICC ones are skipped by their length) to its frame header."""
    f.seek(2)
    for _ in range(10_000):
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length
            continue
        length = f.read(2)
        if len(length) < 2 or marker in (0xD9, 0xDA):  # end, or scan data before any frame header
            return None
        if marker in _JPEG_SOF:
            sof = f.read(5)
            kind = "jpeg-progressive" if marker in _JPEG_FULL_BUFFER else "jpeg"
            return (kind, int.from_bytes(sof[3:5], "big"), int.from_bytes(sof[1:3], "big")) if len(sof) == 5 else None
        f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)
    return None


def _other_size(path: str | os.PathLike[str]) -> tuple[str, int, int] | None:
    import warnings

    from PIL import Image  # a dependency of torchvision; reads only the header here

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return (im.format or "image").lower(), int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:  # over Pillow's own limit (twice ours): too large, size unsaid
        return "image", MAX_DECODE_PIXELS + 1, 1
    except Exception:  # Pillow does not know it: OpenCV may
        return None


def decode_image_bounded(path: str | os.PathLike[str]) -> np.ndarray | None:
    """Decode a still (as OpenCV returns it, any depth), never holding much more than the picture the
    model can use: a JPEG larger than :data:`MAX_IMAGE_SIDE` is decoded at 1/2, 1/4 or 1/8 of its size
    (libjpeg scales while decoding), still at least that large; any other image (a progressive JPEG
    included) of more than :data:`MAX_DECODE_PIXELS` raises :class:`SourceError` before it is read."""
    header = image_header(path)
    reduce = IMAGE_READ_FLAGS  # upright: OpenCV applies the EXIF orientation
    if header is not None:
        kind, w, h = header
        if kind != "jpeg" and w * h > MAX_DECODE_PIXELS:
            size = f"{w}×{h} ({w * h / 1e6:.0f} MP)" if h > 1 else f"over {MAX_DECODE_PIXELS / 1e6:.0f} MP"
            raise SourceError(f"image {path} is {size}: too large to decode (at most {MAX_DECODE_PIXELS / 1e6:.0f} MP "
                              f"unless a baseline JPEG); shrink it first, the model uses at most {MAX_IMAGE_SIDE} px a side")
        if kind.startswith("jpeg") and max(w, h) >= 2 * MAX_IMAGE_SIDE:
            k, reduce = next((k, flag) for k, flag in _REDUCED if max(w, h) // k >= MAX_IMAGE_SIDE)
            # the reduced decode applies the EXIF orientation too: only the size differs from a full one
            logger.info("%s is %dx%d: decoded at 1/%d of its size", path, w, h, k)
    data = np.fromfile(str(path), dtype=np.uint8)  # also copes with non-ASCII paths on Windows
    return cv2.imdecode(data, reduce) if data.size else None



# --------------------------------------------------------------------------------------------------
# Orientation: a stored picture turned upright, in the eight EXIF orientations (1: as stored; 2: mirrored
# left-right; 3: upside down; 4: mirrored top-bottom; 5: transposed; 6: turn 90° clockwise; 7: transversed;
# 8: turn 90° counter-clockwise). Stills get theirs from OpenCV; videos from their display matrix.
# --------------------------------------------------------------------------------------------------

QUARTER_TURNS = frozenset({5, 6, 7, 8})  # the orientations that swap width and height


def orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """``image`` as shown for an EXIF ``orientation`` (1..8; anything else: as stored), C-contiguous."""
    if orientation == 2:
        return cv2.flip(image, 1)
    if orientation == 3:
        return cv2.rotate(image, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(image, 0)
    if orientation == 5:
        return cv2.transpose(image)
    if orientation == 6:
        return cv2.rotate(image, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(image), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(image, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return image


def matrix_orientation(matrix: tuple[int, ...]) -> int:
    """The EXIF orientation of an FFmpeg display matrix (``AV_FRAME_DATA_DISPLAYMATRIX``, 9 int32).

    The matrix maps a stored pixel (x, y) to the shown (a·x + c·y, b·x + d·y) plus a shift, with
    a, b, c, d = matrix[0], [1], [3], [4] (FFmpeg's display.h; y downwards, as ``ffmpeg`` and players read
    it). Only their signs matter here, of the larger pair: a tilt that is not a quarter turn goes to the
    nearest one, and a scale is ignored (the frame keeps its pixels).
    """
    a, b, c, d = matrix[0], matrix[1], matrix[3], matrix[4]
    if abs(a) + abs(d) >= abs(b) + abs(c):  # no quarter turn: as stored, mirrored or upside down
        return {(True, True): 1, (False, True): 2, (False, False): 3, (True, False): 4}[(a >= 0, d >= 0)]
    return {(True, True): 5, (True, False): 6, (False, False): 7, (False, True): 8}[(b >= 0, c >= 0)]


def frame_orientation(frame: av.VideoFrame) -> int:
    """The EXIF orientation of a decoded PyAV frame, from its display matrix side data (1 when none).

    FFmpeg attaches the stream's display matrix (for instance an MP4/MOV track's matrix) to every decoded
    frame.
    """
    # PyAV's stub types side_data as a TypedDict of motion vectors; at run time it is a SideDataContainer.
    for side in cast("SideDataContainer", frame.side_data):
        if getattr(side.type, "name", str(side.type)).endswith("DISPLAYMATRIX"):
            data = bytes(side)
            if len(data) >= 36:
                return matrix_orientation(struct.unpack("=9i", data[:36]))
    return 1


class VideoReader:
    """Decodes a video file into ``(bgr, pts_s)`` pairs, in order, upright; seekable. One thread at a time.

    Args:
        path: the file.

    Attributes:
        fps: the stream's average rate (``DEFAULT_FPS`` when the file does not say).
        frames_announced: the frame count the container states, or None.
        size: (width, height) as shown, so a phone's portrait video is portrait (see :attr:`orientation`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import av

        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"video {self.path} not found: check the path")
        self._container: InputContainer | None  # None once closed
        try:
            self._container = av.open(str(self.path))
            self._stream = self._container.streams.video[0]
        except (av.error.FFmpegError, IndexError, OSError, UnicodeDecodeError) as exc:
            raise SourceError(f"cannot open {self.path} as a video (corrupt or unsupported format)") from exc
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        fps = float(rate) if rate else 0.0
        self.fps = fps if math.isfinite(fps) and 0 < fps <= 1000 else DEFAULT_FPS
        self.frames_announced = int(self._stream.frames) or None
        self._coded_size = (int(self._stream.codec_context.width), int(self._stream.codec_context.height))
        self._orientation: int | None = None  # known from the first decoded frame
        self._peeked: av.VideoFrame | None = None  # that frame, when it was decoded to learn the orientation before a read
        self._frames: Iterator | None = None
        self._last_pts: float | None = None
        self.decoded = 0

    @property
    def orientation(self) -> int:
        """The EXIF orientation (1..8) the display matrix gives, learnt from the first frame (decoded
        now if it was not yet, and kept for the next :meth:`read`)."""
        if self._orientation is None:
            self._peeked = self._decode()
            self._orientation = frame_orientation(self._peeked) if self._peeked is not None else 1
        return self._orientation

    @property
    def size(self) -> tuple[int, int]:
        w, h = self._coded_size
        return (h, w) if self.orientation in QUARTER_TURNS else (w, h)

    def _decode(self) -> av.VideoFrame | None:
        """The next decoded PyAV frame, or None at the end (or where a damaged file stops decoding)."""
        import av

        if self._container is None:
            return None
        if self._frames is None:
            self._frames = self._container.decode(self._stream)
        try:
            return next(self._frames)
        except StopIteration:
            return None
        except (av.error.FFmpegError, EOFError, OSError) as exc:  # a truncated or damaged file ends here
            logger.info("%s: decoding stopped after %d frames: %s", self.path.name, self.decoded, exc)
            return None

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next frame, upright, and its media time in seconds (strictly increasing), or None at the end."""
        frame, self._peeked = self._peeked, None
        if frame is None:
            frame = self._decode()
        if frame is None:
            return None
        t = float(frame.time) if frame.time is not None else None
        if t is None or not math.isfinite(t) or (self._last_pts is not None and t <= self._last_pts):
            t = 0.0 if self._last_pts is None else self._last_pts + 1.0 / self.fps
        self._last_pts = t
        self.decoded += 1
        orientation = frame_orientation(frame)
        if self._orientation is None:
            self._orientation = orientation
        return orient(frame.to_ndarray(format="bgr24"), orientation), t

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        while (item := self.read()) is not None:
            yield item

    def seek(self, pts_s: float = 0.0) -> None:
        """Continue from the keyframe at or before ``pts_s`` (0: the start)."""
        if self._container is None:
            return
        tb = self._stream.time_base
        offset = (int(pts_s / tb) if tb else 0) + int(self._stream.start_time or 0)
        self._container.seek(max(0, offset), stream=self._stream, backward=True, any_frame=False)
        self._frames = None
        self._peeked = None
        self._last_pts = None

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def probe_frames(path: str | os.PathLike[str]) -> list[float]:
    """Decode a video and return every frame's timestamp in seconds (for tests and checks)."""
    import av

    times = []
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            times.append(float(frame.pts * frame.time_base) if frame.pts is not None else float("nan"))
    return times
