"""Live sources through OpenCV: local cameras (V4L2 on Linux) and network streams (FFmpeg).

Both may stall or drop out; the capture thread reconnects them (see :mod:`live_attention.io.capture`).
"""

from __future__ import annotations

import logging
import os
import sys

import cv2
import numpy as np

from live_attention.errors import SourceError
from live_attention.io.sources import SOURCE_HINT, redact, valid_fps
from live_attention.io.video import to_bgr8

logger = logging.getLogger(__name__)

STREAM_SCHEMES = frozenset({"http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt"})
STREAM_TIMEOUT_MS = 5000  # FFmpeg open/read timeout for network streams
# V4L2 read() blocks up to this many seconds (OpenCV's default: 10) on a stalled camera. OpenCV reads
# it once per process (a function-level static in cap_v4l.cpp, tv_sec of select()), so it must be in
# the environment before the first V4L2 capture is used. setdefault: a user's own value wins.
V4L_SELECT_TIMEOUT_S = "1"



class OpenCVSource:
    """Reading and releasing a ``cv2.VideoCapture`` (cameras and streams open it their own way)."""

    _cap: cv2.VideoCapture | None = None
    _fps: float | None = None

    @property
    def fps(self) -> float | None:
        return self._fps

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            return None
        ok, image = self._cap.read()
        return to_bgr8(image) if ok else None

    def release(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class CameraSource(OpenCVSource):
    """A local camera by index (``0``) or device path (``/dev/video2``).

    Args:
        index_or_path: camera index, or a device path.
        width, height, fps: requested mode; the camera may pick another, read back after opening
            into :attr:`width`, :attr:`height` and :attr:`fps`.
    """

    is_live = True

    def __init__(
        self,
        index_or_path: int | str,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
    ) -> None:
        self._target = index_or_path
        self._want = (width, height, fps)
        self._cap: cv2.VideoCapture | None = None
        self.width: int | None = None
        self.height: int | None = None
        self._fps: float | None = None

    @property
    def name(self) -> str:
        return f"camera {self._target}"

    def _missing(self) -> SourceError:
        if isinstance(self._target, int):
            return SourceError(
                f"no camera at index {self._target}: connect one, pick another with --source N, or {SOURCE_HINT}"
            )
        if not os.path.exists(self._target):
            return SourceError(
                f"no camera at {self._target}: connect one, pick another with --source N, or {SOURCE_HINT}"
            )
        return SourceError(
            f"cannot open camera {self._target}: check its permissions (video group) and that no other app "
            f"holds it, or {SOURCE_HINT}"
        )

    def open(self) -> None:
        if self._cap is not None:
            return
        if sys.platform.startswith("linux"):
            os.environ.setdefault("OPENCV_VIDEOIO_V4L_SELECT_TIMEOUT", V4L_SELECT_TIMEOUT_S)
            backend = cv2.CAP_V4L2
        else:
            backend = cv2.CAP_ANY
        if isinstance(self._target, str) and not os.path.exists(self._target):
            raise self._missing()
        cap = cv2.VideoCapture(self._target, backend)
        if not cap.isOpened():
            cap.release()
            raise self._missing()
        width, height, fps = self._want
        if width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(width))
        if height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(height))
        if fps:
            cap.set(cv2.CAP_PROP_FPS, float(fps))
        # Only some backends honour this; the capture thread drains continuously anyway.
        if not cap.set(cv2.CAP_PROP_BUFFERSIZE, 1):
            logger.info("%s: backend %s ignores CAP_PROP_BUFFERSIZE", self.name, cap.getBackendName())
        # A camera can open yet deliver nothing (busy elsewhere, idle loopback device): probe once.
        ok, probe = cap.read()
        if not ok or probe is None:
            cap.release()
            raise SourceError(
                f"{self.name} opened but sends no frames: close other apps using it, pick another with "
                f"--source N, or {SOURCE_HINT}"
            )
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or probe.shape[1]
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or probe.shape[0]
        self._fps = valid_fps(cap.get(cv2.CAP_PROP_FPS))
        asked = f" (asked {width}x{height} @ {fps})" if (width or height or fps) else ""
        logger.info("%s: %dx%d @ %s fps%s", self.name, self.width, self.height, self._fps, asked)
        self._cap = cap



class StreamSource(OpenCVSource):
    """A network stream (http/https/rtsp/rtmp/udp/...) through FFmpeg. Live."""

    is_live = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None

    @property
    def name(self) -> str:
        return redact(self._url)

    def open(self) -> None:
        if self._cap is not None:
            return
        # Timeouts keep open() and a stalled read() from hanging for FFmpeg's defaults (30 s or more).
        params = [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
            cv2.CAP_PROP_READ_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
        ]
        cap = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"cannot open stream {self.name}: check the address and that it is reachable, or {SOURCE_HINT}"
            )
        self._fps = valid_fps(cap.get(cv2.CAP_PROP_FPS))
        self._cap = cap
