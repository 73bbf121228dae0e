"""Recording a live session: overlay video, raw frames, per-frame attention data and a manifest.

Threads:
* The caller's thread (the frame loop) calls :meth:`Recorder.submit`, which only appends
  ``(result, rgb, view)`` to a queue bounded by time: it never holds more than ``record.max_lag_s`` of
  capture time (nor ``record.queue_size`` frames); older frames are dropped and counted. ``submit`` never
  blocks and never raises. So however loaded the machine, a killed process loses at most about a
  second: the queue, the attention chunk being filled (<= 0.4 s) and the last video fragment (<= 0.5 s).
* The recorder thread (``"recorder"``) owns every file of the session: the H.264 overlay
  (:class:`~live_attention.io.writers.H264Writer`), the raw-frame writer (:class:`~live_attention.io.encoders.RawWriter`) and the attention
  chunks (:class:`~live_attention.io.recording.ChunkWriter`). An error there (a full disk, a vanished
  folder) becomes one line in :attr:`Recorder.error`; the recording stops, what was written stays
  readable, the manifest is finalised (a 1 MB reserve is given back to the disk for it), the app
  goes on. The reserve is an unlinked file held open, so a killed process cannot leave it behind.
* ``record.raw_codec = "auto"``: on the first frame the recorder thread times the raw codecs (and the
  overlay) on that frame, waits for the frame rate to show, and takes lossless FFV1 when everything
  fits the frame interval with headroom, else MJPEG (:func:`~live_attention.io.encoders.choose_raw_codec`).
  While recording, the HUD line says when frames are being dropped and why
  (:func:`~live_attention.io.encoders.drop_reason`).

The format (what a row and the manifest hold, and how they are read back) is
:mod:`live_attention.io.recording`.
"""

from __future__ import annotations

import errno
import logging
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from live_attention.config import Config
from live_attention.datatypes import Result, View
from live_attention.errors import UserError
from live_attention.io.encoders import (
    HEADROOM,
    RawWriter,
    choose_raw_codec,
    drop_reason,
    overlay_writer,
    time_encoders,
)
from live_attention.io.manifest import build_manifest
from live_attention.io.recording import (
    ChunkWriter,
    frame_row,
    write_json_atomic,
)
from live_attention.io.reserve import Reserve
from live_attention.io.session_dir import (
    ATTN_COMPARE_DIR,
    ATTN_DIR,
    MANIFEST,
    OVERLAY,
    RAW,
    lock_session,
    new_session_dir,
    unlock_session,
)
from live_attention.io.writers import H264Writer

logger = logging.getLogger(__name__)

RATE_FRAMES = 4  # "auto" waits for this many frames (at most RATE_WAIT_S) to see the frame rate
RATE_WAIT_S = 0.5
DROP_WINDOW = 60  # the HUD's drop rate is over the last this many frames submitted ...
DROP_SHOWN = 0.05  # ... and said with its reason from this share on ...
DROP_MIN_FRAMES = 10  # ... once this many frames have come since the codec was chosen
# The encoders yield to the model a little (nice 10 starved them under load: 4-8 s lost to a crash),
# and the queue's time bound keeps what a crash can lose to about a second whatever they get.
RECORDER_NICE = 4


def _lower_priority(nice: int) -> None:
    """Lower this thread's scheduling priority (Linux: per thread); elsewhere nothing."""
    if not sys.platform.startswith("linux") or nice <= 0:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        logger.debug("could not lower the recorder's priority", exc_info=True)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC or "No space left" in str(exc):
            what = "disk full"
        name = f" ({Path(str(exc.filename)).name})" if getattr(exc, "filename", None) else ""
        return f"{what}{name}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# --------------------------------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------------------------------


@dataclass
class Costs:
    """The recorder thread's smoothed ms per frame of each part (what the HUD explains drops with)."""

    overlay: float = 0.0
    raw: float = 0.0
    data: float = 0.0
    frames: int = 0

    def add(self, overlay: float, raw: float, data: float) -> None:
        a = 1.0 if self.frames == 0 else 0.1
        self.overlay += a * (overlay - self.overlay)
        self.raw += a * (raw - self.raw)
        self.data += a * (data - self.data)
        self.frames += 1


@dataclass
class Submissions:
    """What the caller's thread saw: capture-time gaps between frames and the drops of the last frames."""

    gaps_ms: deque[float] = field(default_factory=lambda: deque(maxlen=30))
    drops: deque[int] = field(default_factory=lambda: deque(maxlen=DROP_WINDOW))
    last_ns: int | None = None
    first_s: float | None = None  # monotonic time of the first frame
    last_s: float = 0.0  # ... and of the latest


class Recorder(threading.Thread):
    """Writes a session on its own thread; :meth:`submit` never blocks the caller.

    Use :meth:`create` (makes the session folder and the manifest), then :meth:`start`,
    :meth:`submit` per shown frame, :meth:`stop`.
    """

    def __init__(self, path: Path, engine: Any, cfg: Config, view_fn: Callable[[], View] | None = None,
                 compare: Any = None) -> None:
        super().__init__(name="recorder", daemon=True)
        self.path = path
        self.engine = engine
        self.cfg = cfg
        self.view_fn = view_fn
        self.max_lag_ns = int(cfg.record.max_lag_s * 1e9)
        self.max_frames = cfg.record.queue_size
        self._queue: deque[tuple[Result, np.ndarray, View | None]] = deque()
        self._cond = threading.Condition()
        self.error: str | None = None
        self.dropped = 0
        self.submitted = 0
        self.written = 0
        self.raw_codec: str | None = None  # the codec in use, once the first frame chose it
        self.costs = Costs()
        self._seen = Submissions()
        self._stop_evt = threading.Event()
        self._failed = threading.Event()
        self._t_start = time.monotonic()
        self._t0_ns: int | None = None
        self._last_pts = -1
        self._overlay: H264Writer | None = None
        self._raw: RawWriter | None = None
        self._lock = lock_session(path)  # tells readers the session is being recorded
        reserve = None
        try:
            self.chunks = ChunkWriter(path / ATTN_DIR)
            # --compare: the second model's maps, a row for each row of the first's (the same frame).
            self.pair_chunks = ChunkWriter(path / ATTN_COMPARE_DIR) if compare is not None else None
            self.manifest = build_manifest(engine, cfg, view_fn() if view_fn else None, compare)
            self.reserve = reserve = Reserve(path)
            write_json_atomic(path / MANIFEST, self.manifest)
        except BaseException:
            if reserve is not None:
                reserve.release()
            unlock_session(self._lock)
            raise

    @property
    def encode_ms(self) -> float:
        """Smoothed encoder time per frame (overlay + raw + data)."""
        return self.costs.overlay + self.costs.raw + self.costs.data

    @classmethod
    def create(
        cls, base_dir: str | os.PathLike[str], engine: Any, cfg: Config, view_fn: Callable[[], View] | None = None,
        compare: Any = None,
    ) -> Recorder:
        """A recorder for a new session folder under ``base_dir`` (raises :class:`UserError` if it cannot)."""
        path = new_session_dir(base_dir)
        try:
            return cls(path, engine, cfg, view_fn, compare)
        except OSError as exc:
            raise UserError(f"cannot record into {path}: {_one_line(exc)}") from exc

    # Caller's thread ----------------------------------------------------------------------------
    def submit(self, result: Result, rgb: np.ndarray, view: View | None = None) -> bool:
        """Queue one shown frame; False when not recording. Never blocks. Frames older than the queue's
        time bound are dropped (and counted), oldest first."""
        if result is None or self._stop_evt.is_set() or self._failed.is_set():
            return False
        self.submitted += 1
        seen = self._seen
        with self._cond:
            now = time.monotonic()
            seen.first_s = now if seen.first_s is None else seen.first_s
            seen.last_s = now
            if seen.last_ns is not None and result.t_capture_ns > seen.last_ns:
                seen.gaps_ms.append((result.t_capture_ns - seen.last_ns) / 1e6)
            seen.last_ns = result.t_capture_ns
            self._queue.append((result, rgb, view))
            newest = result.t_capture_ns
            dropped = 0
            while len(self._queue) > 1 and (len(self._queue) > self.max_frames
                                            or newest - self._queue[0][0].t_capture_ns > self.max_lag_ns):
                self._queue.popleft()
                dropped += 1
            self.dropped += dropped
            seen.drops.append(dropped)
            self._cond.notify()
        return True

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._queue)

    def interval_ms(self) -> float | None:
        """The median capture-time gap between recorded frames lately (None before the second frame)."""
        with self._cond:
            gaps = list(self._seen.gaps_ms)
        return statistics.median(gaps) if gaps else None

    def drop_rate(self) -> float:
        """The share of the last frames submitted that were dropped (0 before there are enough of them to
        tell, or when none came for 2 s)."""
        with self._cond:
            drops, last = list(self._seen.drops), self._seen.last_s
        if len(drops) < DROP_MIN_FRAMES or time.monotonic() - last > 2.0:
            return 0.0
        return min(1.0, sum(drops) / len(drops))

    def hud_text(self) -> str:
        """``REC mm:ss  dropped N``, and while frames are being dropped, how many and why."""
        el = int(time.monotonic() - self._t_start)
        m, s = divmod(el, 60)
        t = f"{m:02d}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"
        if self._failed.is_set():
            return f"REC STOPPED {t}  dropped {self.dropped}"
        rate = self.drop_rate()
        interval = self.interval_ms()
        if rate < DROP_SHOWN or self.raw_codec is None or interval is None:
            return f"REC {t}  dropped {self.dropped}"
        c = self.costs
        return (f"REC {t}  dropped {self.dropped}, {rate:.0%} now: "
                f"{drop_reason(self.raw_codec, c.overlay, c.raw, c.data, interval)}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting frames, write what is queued, close the files (joins with a timeout)."""
        self._stop_evt.set()
        with self._cond:
            self._cond.notify()
        if self.is_alive():
            self.join(timeout)
            if self.is_alive():
                logger.warning("recorder did not finish within %.0f s", timeout)
        elif self.ident is None and not self._failed.is_set():
            self._finish()  # never started: still write the end of the manifest

    # Recorder thread ----------------------------------------------------------------------------
    def run(self) -> None:
        _lower_priority(RECORDER_NICE)
        try:
            while True:
                with self._cond:
                    if not self._queue:
                        if self._stop_evt.is_set():
                            break
                        self._cond.wait(0.05)
                        continue
                    item = self._queue.popleft()
                self._write(*item)
        except Exception as exc:
            self._fail(exc)
            return
        self._finish()

    def _choose_codec(self, bgr: np.ndarray, rgb: np.ndarray) -> dict[str, Any]:
        """``auto``: time the encoders on the first frame, wait for the frame rate to show, choose.

        FFV1 costs about three times MJPEG, so it is timed only where overlay + MJPEG leave it room: on a
        machine that cannot keep up anyway, choosing costs four frames' encoding, not six."""
        rec = self.cfg.record
        try:
            costs = time_encoders(bgr, rgb, rec.crf, rec.preset, codecs=("mjpeg",))
        except Exception as exc:  # e.g. no room for the overlay's temporary file: the cheap codec, said why
            reason = f"mjpeg: the encoders could not be timed ({_one_line(exc)})"
            logger.warning("raw codec %s", reason)
            return {"asked": "auto", "codec": "mjpeg", "reason": reason}
        first = self._seen.first_s if self._seen.first_s is not None else time.monotonic()
        while (self.submitted < RATE_FRAMES and time.monotonic() < first + RATE_WAIT_S
               and not self._stop_evt.is_set()):
            time.sleep(0.01)
        # No second frame yet: they come at least this far apart.
        interval = self.interval_ms() or max(1.0, (time.monotonic() - first) * 1000.0)
        if costs["overlay"] + costs["mjpeg"] <= HEADROOM * interval:
            costs.update(time_encoders(bgr, codecs=("ffv1",)))
        codec, reason = choose_raw_codec(costs, interval)
        logger.info("raw codec %s", reason)
        return {"asked": "auto", "codec": codec, "reason": reason, "interval_ms": round(interval, 2),
                "costs_ms": {k: round(v, 2) for k, v in costs.items()}, "headroom": HEADROOM}

    def _open_writers(self, result: Result, rgb: np.ndarray) -> None:
        fh, fw = result.frame.shape[:2]
        rec = self.cfg.record
        codec = rec.raw_codec
        if codec == "auto":
            self.manifest["raw_codec_choice"] = self._choose_codec(result.frame, rgb)
            codec = self.manifest["raw_codec_choice"]["codec"]
        self._overlay = overlay_writer(self.path / OVERLAY, rgb.shape[1], rgb.shape[0], rec.crf, rec.preset)
        self._raw = RawWriter(self.path / RAW, fw, fh, codec)
        self.raw_codec = codec
        with self._cond:
            self._seen.drops.clear()  # what was dropped while choosing says nothing about keeping up
        self._t0_ns = result.t_capture_ns
        self.manifest["raw_codec"] = codec
        self.manifest["frame_size"] = [fw, fh]
        self.manifest["overlay_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
        self.manifest["grid"] = list(result.grid)
        if self.manifest.get("compare") and result.pair is not None:
            self.manifest["compare"]["grid"] = list(result.pair.grid)
        self.manifest["patches"] = int(result.num_patches)
        self.manifest["t0_capture_ns"] = int(result.t_capture_ns)
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def _write(self, result: Result, rgb: np.ndarray, view: View | None) -> None:
        if self._overlay is None:
            self._open_writers(result, rgb)
        assert self._overlay is not None and self._raw is not None and self._t0_ns is not None
        pts = int(round((result.t_capture_ns - self._t0_ns) / 1e6))
        pts = max(pts, self._last_pts + 1)  # strictly increasing: the same pts in all three files
        self._last_pts = pts
        if view is None:
            view = self.view_fn() if self.view_fn else View()
        t0 = time.perf_counter()
        self._overlay.write(rgb, pts / 1000.0)
        t1 = time.perf_counter()
        self._raw.write(result.frame, pts)
        t2 = time.perf_counter()
        self.chunks.append(frame_row(result, view, pts, self._t0_ns))
        if self.pair_chunks is not None:
            if result.pair is None:
                raise ValueError("a frame without the second model's maps in a --compare recording")
            self.pair_chunks.append(frame_row(result.pair, view, pts, self._t0_ns))
        t3 = time.perf_counter()
        self.written += 1
        self.costs.add((t1 - t0) * 1000.0, (t2 - t1) * 1000.0, (t3 - t2) * 1000.0)

    def _end_manifest(self, **extra: Any) -> None:
        """Finalise the manifest; on a full disk, give the reserve back first and try again."""
        self.manifest["end"] = {"time": datetime.now(timezone.utc).astimezone().isoformat(),
                                "frames": self.chunks.frames, "dropped": self.dropped, "error": self.error, **extra}
        try:
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except OSError:
            self.reserve.release()
            write_json_atomic(self.path / MANIFEST, self.manifest)
        finally:
            self.reserve.release()
            unlock_session(self._lock)
            self._lock = None

    def _finish(self) -> None:
        errors = []
        pair_flush = self.pair_chunks.flush if self.pair_chunks is not None else (lambda: None)
        for closer in (self.chunks.flush, pair_flush, self._close_overlay, self._close_raw):
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        if errors and self.error is None:
            self.error = f"recording stopped: {_one_line(errors[0])}"
            self._failed.set()
            logger.error("%s (session %s)", self.error, self.path)
        try:
            self._end_manifest(duration_s=round(time.monotonic() - self._t_start, 3))
        except Exception as exc:
            logger.error("could not finalise %s: %s", self.path / MANIFEST, _one_line(exc))
        logger.info("recording saved in %s (%d frames, %d dropped)", self.path, self.chunks.frames, self.dropped)

    def _close_overlay(self) -> None:
        w, self._overlay = self._overlay, None
        if w is not None:
            w.close()

    def _close_raw(self) -> None:
        w, self._raw = self._raw, None
        if w is not None:
            w.close()

    def _fail(self, exc: BaseException) -> None:
        """One message, everything written so far kept readable, the manifest finalised where the disk allows."""
        self.error = f"recording stopped: {_one_line(exc)}"
        self._failed.set()
        logger.error("%s (session %s)", self.error, self.path)
        logger.debug("recorder failure", exc_info=exc)
        lost = self.chunks.drop_pending()
        if self.pair_chunks is not None:
            self.pair_chunks.drop_pending()
        with self._cond:
            self._queue.clear()
        for closer in (self._close_overlay, self._close_raw):
            try:
                closer()
            except Exception:
                logger.debug("closing after failure", exc_info=True)
        try:
            self._end_manifest(unwritten_frames=lost)
        except Exception as exc2:
            logger.error("could not finalise %s: %s", self.path / MANIFEST, _one_line(exc2))
