"""Frame capture: sources, the latest-frame slot and the capture thread.

Threads and ownership:

* :class:`CaptureThread` (its own daemon thread, named ``capture[<source>]``) owns the
  :class:`FrameSource` it is given, and through it the ``cv2.VideoCapture``. Once the thread has
  started nothing else calls ``open``/``read``/``release``; ``release`` only ever runs on the capture
  thread after its ``read`` has returned, so a capture is never freed under a blocked read.
* :class:`LatestSlot` is the only thing shared: the capture thread ``put``s, a consumer ``get``s
  (blocking, consumes) and anyone may ``peek`` (non-blocking, does not consume).
* :func:`open_source` runs on the caller's thread (the CLI, at startup) so a bad ``--source`` fails
  early with a one-line :class:`~live_attention.errors.SourceError`; hand the opened source to a
  :class:`CaptureThread` and stop touching it.

A dead camera never turns into black frames: the thread publishes ``RECONNECTING`` ("no signal"),
reopens with exponential backoff, and resumes on its own. Video files and images are paced by the
capture thread at the media's own rate; cameras and streams are read as fast as they deliver.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
from collections import deque
from enum import Enum
from pathlib import Path
from typing import Generic, Protocol, TypeVar, runtime_checkable

import cv2
import numpy as np

from live_attention.datatypes import Frame
from live_attention.errors import SourceError
from live_attention.io.video import IMAGE_EXTENSIONS, VideoReader, read_image, to_bgr8

logger = logging.getLogger(__name__)

T = TypeVar("T")

STREAM_SCHEMES = frozenset({"http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "tcp", "srt"})
STILL_FPS = 10.0  # stills are re-emitted at this rate: low latency for view changes, CPU mostly idle
DEFAULT_FILE_FPS = 30.0  # pacing for sources that do not give a frame rate
STREAM_TIMEOUT_MS = 5000  # FFmpeg open/read timeout for network streams
# V4L2 read() blocks up to this many seconds (OpenCV's default: 10) on a stalled camera. OpenCV reads
# it once per process (a function-level static in cap_v4l.cpp, tv_sec of select()), so it must be in
# the environment before the first V4L2 capture is used. setdefault: a user's own value wins.
V4L_SELECT_TIMEOUT_S = "1"

_TRY = "try --source demo (make demo in a checkout) or a video file"


# --------------------------------------------------------------------------------------------------
# Frame and slot


class LatestSlot(Generic[T]):
    """A thread-safe, size-1, latest-wins slot.

    ``put`` never blocks: a new item replaces an unread one (counted in :attr:`overwritten`).
    ``get`` waits for an item not yet taken by ``get`` and consumes it; ``peek`` returns the latest
    item without consuming it. Meant for one consumer that ``get``s and any number that ``peek``.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._unread = False
        self._closed = False
        self._overwritten = 0
        self._puts = 0

    def put(self, item: T) -> None:
        """Store ``item``, replacing (and counting) an unread one, and wake a waiting ``get``."""
        with self._cond:
            if self._unread:
                self._overwritten += 1
            self._item = item
            self._unread = True
            self._puts += 1
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """Wait for a new item and consume it; ``None`` on timeout or once the slot is closed."""
        with self._cond:
            self._cond.wait_for(lambda: self._unread or self._closed, timeout)
            if self._closed or not self._unread:
                return None
            self._unread = False
            return self._item

    def wait_newer(self, puts_seen: int, timeout: float) -> int:
        """Wait until more than ``puts_seen`` items were put in all (or ``timeout``, or close); returns
        the count of puts now. Consumes nothing: a way to sleep until something new arrives."""
        with self._cond:
            self._cond.wait_for(lambda: self._puts > puts_seen or self._closed, timeout)
            return self._puts

    def peek(self) -> T | None:
        """The latest item (read or not) without consuming it; ``None`` if nothing was put yet."""
        with self._cond:
            return self._item

    def close(self) -> None:
        """Wake every waiter; later ``get`` calls return ``None`` at once."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        with self._cond:
            return self._closed

    @property
    def overwritten(self) -> int:
        """Items replaced before anyone ``get``-ed them (dropped frames, for a frame slot)."""
        with self._cond:
            return self._overwritten

    @property
    def puts(self) -> int:
        """Items put so far."""
        with self._cond:
            return self._puts


# --------------------------------------------------------------------------------------------------
# Sources


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


def _valid_fps(value: float) -> float | None:
    """CAP_PROP_FPS can be 0, NaN or nonsense (e.g. 90000 for some streams): ``None`` then."""
    return float(value) if math.isfinite(value) and 0.0 < value <= 1000.0 else None


def _redact(url: str) -> str:
    """Hide the password in ``scheme://user:password@host`` (names end up in logs and on screen)."""
    return re.sub(r"(://[^/@:]*):[^/@]*@", r"\1:***@", url)


class _OpenCVSource:
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


class CameraSource(_OpenCVSource):
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
                f"no camera at index {self._target}: connect one, pick another with --source N, or {_TRY}"
            )
        if not os.path.exists(self._target):
            return SourceError(
                f"no camera at {self._target}: connect one, pick another with --source N, or {_TRY}"
            )
        return SourceError(
            f"cannot open camera {self._target}: check its permissions (video group) and that no other app "
            f"holds it, or {_TRY}"
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
                f"--source N, or {_TRY}"
            )
        self.width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or probe.shape[1]
        self.height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or probe.shape[0]
        self._fps = _valid_fps(cap.get(cv2.CAP_PROP_FPS))
        asked = f" (asked {width}x{height} @ {fps})" if (width or height or fps) else ""
        logger.info("%s: %dx%d @ %s fps%s", self.name, self.width, self.height, self._fps, asked)
        self._cap = cap



class StreamSource(_OpenCVSource):
    """A network stream (http/https/rtsp/rtmp/udp/...) through FFmpeg. Live."""

    is_live = True

    def __init__(self, url: str) -> None:
        self._url = url
        self._cap: cv2.VideoCapture | None = None
        self._fps: float | None = None

    @property
    def name(self) -> str:
        return _redact(self._url)

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
                f"cannot open stream {self.name}: check the address and that it is reachable, or {_TRY}"
            )
        self._fps = _valid_fps(cap.get(cv2.CAP_PROP_FPS))
        self._cap = cap



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
            raise SourceError(f"video {self._path} not found: check the path, or {_TRY}")
        try:
            reader = VideoReader(self._path)
        except SourceError as exc:
            raise SourceError(f"{exc}: {_TRY}") from None
        first = reader.read()
        if first is None:
            reader.close()
            raise SourceError(f"{self._path} has no frames that can be decoded (corrupt or unsupported codec): {_TRY}")
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
                raise SourceError(f"no images ({exts}) in folder {self._path}: add some, or {_TRY}")
        elif self._path.is_file():
            files = [self._path]
        else:
            raise SourceError(f"{self._path} not found: check the path, or {_TRY}")
        self._files, self._bad = files, set()
        for i in range(len(files)):
            image = self._load(i)
            if image is not None:
                self._index, self._image, self._reads, self._opened = i, image, 0, True
                return
        where = f"in folder {self._path}" if len(files) > 1 or self._path.is_dir() else f"at {self._path}"
        raise SourceError(f"no readable image {where} (corrupt or unsupported): {_TRY}")

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
            from live_attention.demo.synthetic import DemoScene  # lazy: only the demo needs it
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


_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def open_source(
    spec: str,
    *,
    loop: bool = False,
    width: int | None = None,
    height: int | None = None,
    fps: float | None = None,
    slideshow_seconds: float = 3.0,
) -> FrameSource:
    """Parse ``--source`` and return an opened source; raise :class:`SourceError` (one line) if not.

    ``demo`` | camera index (``0``) or ``/dev/video*`` | URL (http, https, rtsp, rtmp, udp, ...) |
    folder of images | image file | video file. ``width``/``height``/``fps`` are requested from a
    camera and size the demo; ``loop`` applies to video files, ``slideshow_seconds`` to folders.
    """
    spec = str(spec).strip()
    source: FrameSource
    if not spec:
        raise SourceError(f"empty --source: give a camera index, a file, a folder or a URL, or {_TRY}")
    if spec.lower() == "demo":
        source = DemoSource(width=width or 640, height=height or 480, fps=fps or 30.0)
    elif re.fullmatch(r"\d+", spec):
        source = CameraSource(int(spec), width=width, height=height, fps=fps)
    elif spec.startswith("/dev/video"):
        source = CameraSource(spec, width=width, height=height, fps=fps)
    elif m := _URL.match(spec):
        scheme = m.group(1).lower()
        if scheme == "file":
            return open_source(
                spec[len("file://") :],
                loop=loop,
                width=width,
                height=height,
                fps=fps,
                slideshow_seconds=slideshow_seconds,
            )
        if scheme not in STREAM_SCHEMES:
            raise SourceError(
                f"unsupported URL scheme {scheme!r} in {_redact(spec)}: use one of "
                f"{', '.join(sorted(STREAM_SCHEMES))}, or {_TRY}"
            )
        source = StreamSource(spec)
    else:
        path = Path(spec).expanduser()
        if path.is_dir():
            source = ImageSource(path, slideshow_seconds=slideshow_seconds)
        elif path.is_file():
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                source = ImageSource(path, slideshow_seconds=slideshow_seconds)
            else:
                source = VideoFileSource(path, loop=loop)
        else:
            raise SourceError(f"{spec} not found: check the path, give a camera index, or {_TRY}")
    source.open()
    return source


# --------------------------------------------------------------------------------------------------
# Capture thread


class CaptureState(Enum):
    """What the capture thread is doing; the value is what the HUD shows."""

    STARTING = "starting"
    RUNNING = "running"
    RECONNECTING = "no signal"
    ENDED = "ended"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def label(self) -> str:
        return self.value


_FPS_WINDOW = 30  # frames in the capture-rate window
# A live source (camera, stream) that sends nothing for this long (or for 4 of its usual frame intervals,
# if it is slower) has no signal, whether it reported an error or not: a stalled stream or driver blocks
# in read() for seconds. Files, stills and the demo are read here, not received: a slow one is a low
# capture rate, not NO SIGNAL. 0.5 s, plus the frame loop's redraw period (0.25 s), puts NO SIGNAL on
# screen within 1 s (0.7 s measured on a loaded 2-core machine, from a stalled stream to the state file).
NO_SIGNAL_S = 0.5
_SILENT_INTERVALS = 4
_BEHIND_S = 0.5  # a paced file this far behind schedule is re-anchored instead of rushed


class CaptureThread(threading.Thread):
    """Owns a :class:`FrameSource`: reads it, stamps frames and puts them in a :class:`LatestSlot`.

    Args:
        source: the source; opened here if not already open. Nothing else may touch it once started.
        slot: where frames go (latest wins; ``slot.overwritten`` counts dropped frames).
        stop_event: set to stop; shared with other threads if given.
        reconnect: live sources only: on a failed read, release and reopen with backoff.
        backoff: (first, max) seconds between reopen attempts; doubles after each failure.
    """

    def __init__(
        self,
        source: FrameSource,
        slot: LatestSlot[Frame],
        stop_event: threading.Event | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.5, 5.0),
    ) -> None:
        super().__init__(name=f"capture[{source.name}]", daemon=True)
        self.source = source
        self.slot = slot
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        self.reconnect = reconnect
        self.backoff = (float(backoff[0]), float(max(backoff)))
        self._lock = threading.Lock()
        self._state = CaptureState.STARTING
        self._last_error = ""
        self._stamps: deque[int] = deque(maxlen=_FPS_WINDOW)
        self._seq = 0
        self._delay = self.backoff[0]
        self._live = bool(source.is_live)
        self._waiting_ns: int | None = None  # since when the thread has waited for its next frame
        self._interval_s = 0.0  # the source's usual time between frames (kept through outages)
        # pacing of non-live sources (capture thread only)
        self._anchor: tuple[int, float] | None = None  # (monotonic ns, media s) of a reference frame
        self._last_media: float | None = None
        self._due_ns: int | None = None
        self._still = bool(getattr(source, "still", False))

    # ---- published state (any thread) ----------------------------------------------------------

    @property
    def state(self) -> CaptureState:
        with self._lock:
            return self._state

    @property
    def last_error(self) -> str:
        """The latest problem, one line ('' if none); kept after recovery for the log/HUD."""
        with self._lock:
            return self._last_error

    @property
    def fps(self) -> float:
        """Capture rate over the last frames; 0.0 unless RUNNING, and while the source is silent."""
        with self._lock:
            if self._state is not CaptureState.RUNNING or len(self._stamps) < 2 or self._silence() is not None:
                return 0.0
            span = self._stamps[-1] - self._stamps[0]
            return (len(self._stamps) - 1) * 1e9 / span if span > 0 else 0.0

    @property
    def silent_s(self) -> float | None:
        """Seconds the thread has waited for a live source's next frame, once that is longer than the
        source usually takes (see :data:`NO_SIGNAL_S`): a read that blocks, or an outage being
        reconnected. ``None`` while frames come, for sources that are not live, and once the input
        ended, failed or stopped."""
        with self._lock:
            return self._silence()

    def _silence(self) -> float | None:  # with the lock held
        over = (CaptureState.ENDED, CaptureState.FAILED, CaptureState.STOPPED)
        if not self._live or self._waiting_ns is None or self._state in over:
            return None
        waited = (time.monotonic_ns() - self._waiting_ns) / 1e9
        return waited if waited >= max(NO_SIGNAL_S, _SILENT_INTERVALS * self._interval_s) else None

    @property
    def frames(self) -> int:
        """Frames read successfully so far (the next frame's seq)."""
        with self._lock:
            return self._seq

    def _set_state(self, state: CaptureState, error: str | None = None) -> None:
        with self._lock:
            old = self._state
            self._state = state
            if error is not None:
                self._last_error = error
            if state is not CaptureState.RUNNING:
                self._stamps.clear()
        if old is not state:
            log = logger.warning if state in (CaptureState.RECONNECTING, CaptureState.FAILED) else logger.info
            log("%s: %s -> %s%s", self.name, old.name, state.name, f" ({error})" if error else "")

    # ---- control (any thread) --------------------------------------------------------------------

    def stop(self, timeout: float = 1.0) -> bool:
        """Ask the thread to stop and wait up to ``timeout`` s; True if it has finished.

        A ``read`` blocked inside a driver cannot be interrupted: then this returns False after the
        timeout, and the daemon thread releases the source itself once the read returns.
        """
        self.stop_event.set()
        if self.ident is not None:
            self.join(timeout)
        return not self.is_alive()

    # ---- the thread --------------------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:
            logger.exception("%s: capture failed", self.name)
            self._set_state(CaptureState.FAILED, f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            try:
                self.source.release()
            except Exception:
                logger.exception("%s: release failed", self.name)
        if self.stop_event.is_set() and self.state not in (CaptureState.ENDED, CaptureState.FAILED):
            self._set_state(CaptureState.STOPPED)

    def _run(self) -> None:
        stop = self.stop_event
        live = self.source.is_live
        if stop.is_set():
            return
        with self._lock:
            self._waiting_ns = time.monotonic_ns()
        try:
            self.source.open()
        except SourceError as exc:
            if not (live and self.reconnect):
                self._set_state(CaptureState.FAILED, str(exc))
                return
            if not self._reopen(str(exc)):
                return
        period = 1.0 / (self.source.fps or DEFAULT_FILE_FPS)  # pacing of non-live sources

        while not stop.is_set():
            if not live and self._due_ns is not None:
                wait_s = (self._due_ns - time.monotonic_ns()) / 1e9
                if wait_s > 0 and stop.wait(wait_s):
                    break
            with self._lock:  # silence counts from here (from the last frame: live sources are not paced)
                if self._waiting_ns is None:
                    self._waiting_ns = time.monotonic_ns()
            image = self.source.read()
            t_ns = time.monotonic_ns()
            if stop.is_set():
                break
            if image is None:
                if not live:
                    self._set_state(CaptureState.ENDED)
                    return
                if not self.reconnect:
                    self._set_state(CaptureState.ENDED, f"lost the signal from {self.source.name}")
                    return
                if not self._reopen(f"no signal from {self.source.name}"):
                    return
                continue
            pts = getattr(self.source, "pts_s", None)
            if not live:
                self._pace(t_ns, pts, period)
            with self._lock:
                seq = self._seq
                self._seq += 1
                self._stamps.append(t_ns)
                self._waiting_ns = None
                if len(self._stamps) >= 2:
                    self._interval_s = (self._stamps[-1] - self._stamps[0]) / (len(self._stamps) - 1) / 1e9
            self.slot.put(Frame(image=image, seq=seq, t_capture_ns=t_ns, source=self.source.name, pts_s=pts,
                                still=self._still))
            self._delay = self.backoff[0]  # a real frame arrived: the next outage starts from scratch
            if self.state is not CaptureState.RUNNING:
                self._set_state(CaptureState.RUNNING)

    def _pace(self, t_ns: int, pts: float | None, period: float) -> None:
        """Schedule the next read one frame period after this frame, on the media clock."""
        media = pts if pts is not None else (0.0 if self._last_media is None else self._last_media + period)
        if (
            self._anchor is None
            or self._last_media is None
            or media < self._last_media  # looped or seeked back
            or t_ns - (self._anchor[0] + (media - self._anchor[1]) * 1e9) > _BEHIND_S * 1e9
        ):
            self._anchor = (t_ns, media)
        self._last_media = media
        self._due_ns = self._anchor[0] + int((media + period - self._anchor[1]) * 1e9)

    def _reopen(self, reason: str) -> bool:
        """RECONNECTING until ``open`` succeeds (True) or stop is requested (False). No frames meanwhile."""
        self._set_state(CaptureState.RECONNECTING, reason)
        self.source.release()
        attempts = 0
        while not self.stop_event.wait(self._delay):
            attempts += 1
            try:
                self.source.open()
            except Exception as exc:  # a flaky device may throw cv2.error as well as SourceError
                message = " ".join(str(exc).split()) or type(exc).__name__
                with self._lock:
                    self._last_error = message
                # Warn once per outage (with a traceback if it was not a plain SourceError), then quietly.
                (logger.warning if attempts == 1 else logger.debug)(
                    "%s: reopen attempt %d failed, next in %.2g s: %s",
                    self.name,
                    attempts,
                    min(self._delay * 2, self.backoff[1]),
                    message,
                    exc_info=attempts == 1 and not isinstance(exc, SourceError),
                )
                self._delay = min(self._delay * 2, self.backoff[1])
                continue
            logger.info("%s: reopened after %d attempt(s)", self.name, attempts)
            self._delay = min(self._delay * 2, self.backoff[1])  # reset only once a frame arrives
            return True
        return False


__all__ = [
    "CameraSource",
    "CaptureState",
    "CaptureThread",
    "DemoSource",
    "FrameSource",
    "ImageSource",
    "LatestSlot",
    "StreamSource",
    "VideoFileSource",
    "open_source",
]
