"""Video writers through PyAV: H.264 in a fragmented MP4 (recordings, renders, exports) and animated GIFs.

Why PyAV: OpenCV's wheel has no H.264 encoder, and an OpenCV ``mp4v`` .mp4 is unreadable after a
crash ("moov atom not found"). A fragmented MP4 (``frag_keyframe+empty_moov+default_base_moof``)
stays playable up to its last fragment. Timestamps are real: each frame's ``pts`` comes from the
caller (capture time for recordings, media time for renders) on a 1/1000 s time base, so the
file has a variable frame rate when the capture had one.

Owned by whichever thread writes (the recorder's own thread, or the CLI's main thread).
"""

from __future__ import annotations

import errno
import io
import logging
import os
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import cv2
import numpy as np

from live_attention.errors import UserError

if TYPE_CHECKING:  # PyAV is imported where a file is opened: importing the package stays light
    from av.container import OutputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream

logger = logging.getLogger(__name__)

TIME_BASE = Fraction(1, 1000)
GIF_TIME_BASE = Fraction(1, 100)
FRAG_FLAGS = "frag_keyframe+empty_moov+default_base_moof"


class CheckedFile(io.RawIOBase):
    """The file under a PyAV muxer, written by Python so that no write error is lost.

    FFmpeg drops the error of the last buffered write when it closes a file it opened itself: on a full
    disk a render ended "wrote clip.mp4 (12 frames)" with 10 frames on disk. Every failed write here is
    raised to the muxer and kept in :attr:`error`, which :meth:`StreamWriter.close` raises.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = open(path, "wb", buffering=0)  # closed by close()
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            done = 0
            while done < len(view):
                n = self._file.write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "the file took no bytes")
                done += n
            return done
        except OSError as exc:
            self.error = self.error or OSError(exc.errno, exc.strerror, str(self.path))
            raise self.error from None

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()


MUXERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}


class StreamWriter:
    """One PyAV output stream: encode, mux, flush on close; a context manager. Subclasses open
    ``self._container`` and ``self._stream`` (on a :class:`CheckedFile` ``self._file``, or on a path)."""

    _container: OutputContainer | None = None  # None before a subclass opens it and once closed
    _stream: VideoStream | None = None
    _file: CheckedFile | None = None
    frames = 0

    def _encode(self, frame: VideoFrame) -> None:
        container, stream = self._container, self._stream
        if container is None or stream is None:
            raise ValueError(f"{type(self).__name__}: write after close")
        for packet in stream.encode(frame):
            container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:  # None: the stream was never added (the open failed half-way)
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            try:
                self._container.close()
            finally:
                self._container = None
                if self._file is not None:
                    self._file.close()
        if self._file is not None and self._file.error is not None:  # a write the muxer did not report
            raise self._file.error

    def __enter__(self):
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class H264Writer(StreamWriter):
    """Write RGB uint8 frames to an H.264 MP4 (or MKV) with explicit timestamps.

    Args:
        path: output file (.mp4 or .mkv); must not exist unless ``overwrite``.
        width, height: frame size (even numbers; odd sizes are padded by one pixel).
        fps: nominal rate, used for frames written without a timestamp.
        crf, preset: libx264 quality and speed.
        gop: keyframe interval in frames; each keyframe starts a new fragment.
        key_ms: also force a keyframe (a new fragment) at least every ``key_ms`` of media time, so a
            crash loses at most that much whatever the frame rate (None: by ``gop`` only).
        flush_packets: hand every muxed packet to the OS at once (else a kill loses the last 32 KB
            I/O buffer: seconds of a small or static video).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        width: int,
        height: int,
        fps: float = 30.0,
        crf: int = 23,
        preset: str = "veryfast",
        gop: int | None = None,
        overwrite: bool = False,
        key_ms: int | None = None,
        flush_packets: bool = False,
    ) -> None:
        import av

        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise UserError(f"{self.path} already exists: choose another name or pass --overwrite")
        self.width, self.height = int(width) + int(width) % 2, int(height) + int(height) % 2
        self.fps = float(fps) if fps and fps > 0 else 30.0
        self.frames = 0
        self._last_pts = -1
        self.key_ms = key_ms
        self._last_key = -(10**9)
        options = {"movflags": FRAG_FLAGS} if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else {}
        try:
            self._file = CheckedFile(self.path)
            self._container = av.open(self._file, mode="w", format=MUXERS.get(self.path.suffix.lower()),
                                      options=options)
        except (OSError, av.error.FFmpegError) as exc:
            if self._file is not None:
                self._file.close()
            raise UserError(f"cannot write {self.path}: {getattr(exc, 'strerror', None) or exc} (check the folder "
                            "exists and is writable)") from exc
        if flush_packets:
            # PyAV's stub types a Flags member's .value as Flags; at run time it is an int, as flags is.
            self._container.flags |= av.container.Flags.flush_packets.value  # type: ignore[operator]
        stream = self._container.add_stream("libx264", rate=Fraction(round(self.fps * 1000), 1000))
        stream.width, stream.height = self.width, self.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        g = gop or max(1, int(round(self.fps)))  # a keyframe (and a fragment) about every second
        stream.codec_context.gop_size = g
        # One encoder thread: the model already keeps every core busy, and oversubscribed cores cost
        # it more than the encoder gains.
        stream.options = {"crf": str(crf), "preset": preset, "tune": "zerolatency", "g": str(g),
                          "keyint_min": str(g), "threads": "1"}
        self._stream = stream

    def write(self, rgb: np.ndarray, pts_s: float | None = None) -> None:
        """Encode one RGB frame at ``pts_s`` seconds (default: frame index / fps)."""
        import av
        from av.video.frame import PictureType

        if rgb.shape[0] != self.height or rgb.shape[1] != self.width:
            rgb = _fit(rgb, self.width, self.height)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        t = self.frames / self.fps if pts_s is None else pts_s
        pts = int(round(t * 1000))
        if pts <= self._last_pts:  # strictly increasing, whatever the clock did
            pts = self._last_pts + 1
        frame.pts = pts
        frame.time_base = TIME_BASE
        if self.key_ms is not None and pts - self._last_key >= self.key_ms:
            frame.pict_type = PictureType.I
            self._last_key = pts
        self._last_pts = pts
        self._encode(frame)


def write_gif(frames: list[np.ndarray], out: str | os.PathLike[str], seconds_per_frame: float = 0.6,
              max_width: int = 640) -> Path:
    """An animated GIF through PyAV's ``gif`` encoder (8-bit palette)."""
    import av

    out = Path(out)
    h0, w0 = frames[0].shape[:2]
    s = min(1.0, max_width / w0)
    w, h = int(w0 * s) // 2 * 2, int(h0 * s) // 2 * 2
    with av.open(str(out), "w") as c:
        st = c.add_stream("gif", rate=max(1, round(1 / seconds_per_frame)))
        st.width, st.height, st.pix_fmt = w, h, "rgb8"
        st.time_base = GIF_TIME_BASE
        st.codec_context.time_base = GIF_TIME_BASE
        for i, f in enumerate(frames):
            img: np.ndarray = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="rgb8")
            vf.pts = int(round(i * seconds_per_frame * 100))
            vf.time_base = GIF_TIME_BASE
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return out


def _fit(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pad or crop to the stream size (sizes only differ by the odd-pixel padding)."""
    out = np.zeros((height, width, 3), np.uint8)
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]
    return out
