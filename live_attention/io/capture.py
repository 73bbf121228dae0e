"""Frame capture: opening a ``--source``, the latest-frame slot and the capture thread.

The sources themselves live beside this module: :mod:`~live_attention.io.sources` (the protocol and the
named sources, such as ``demo``), :mod:`~live_attention.io.live_sources` (cameras, streams) and
:mod:`~live_attention.io.file_sources` (video files, images, folders).

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
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Generic, TypeVar

from live_attention.datatypes import Frame
from live_attention.errors import SourceError
from live_attention.io.file_sources import ImageSource, VideoFileSource
from live_attention.io.live_sources import STREAM_SCHEMES, CameraSource, StreamSource
from live_attention.io.sources import SOURCE_HINT, FrameSource, named_source, redact
from live_attention.io.video import IMAGE_EXTENSIONS

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_FILE_FPS = 30.0  # pacing for sources that do not give a frame rate


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
        self._listeners: list[Callable[[], None]] = []

    def add_listener(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` after each ``put`` (on the putting thread, outside the lock): a consumer that
        sleeps on something else as well (a display waiting for input) wakes for a new item at once."""
        self._listeners.append(wake)

    def put(self, item: T) -> None:
        """Store ``item``, replacing (and counting) an unread one, and wake a waiting ``get``."""
        with self._cond:
            if self._unread:
                self._overwritten += 1
            self._item = item
            self._unread = True
            self._puts += 1
            self._cond.notify_all()
        for wake in self._listeners:
            wake()

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
        raise SourceError(f"empty --source: give a camera index, a file, a folder or a URL, or {SOURCE_HINT}")
    if (factory := named_source(spec)) is not None:  # e.g. demo, registered by live_attention.demo
        source = factory(width, height, fps)
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
                f"unsupported URL scheme {scheme!r} in {redact(spec)}: use one of "
                f"{', '.join(sorted(STREAM_SCHEMES))}, or {SOURCE_HINT}"
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
            raise SourceError(f"{spec} not found: check the path, give a camera index, or {SOURCE_HINT}")
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
    "CaptureState",
    "CaptureThread",
    "LatestSlot",
    "open_source",
]
