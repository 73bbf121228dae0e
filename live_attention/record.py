"""Recording a live session: overlay video, raw frames, per-frame attention data and a manifest.

Threads:
* The caller's thread (the GUI main thread, or the headless loop) calls :meth:`Recorder.submit`, which
  only puts ``(result, rgb, view)`` into a bounded queue; when the queue is full the frame is dropped and
  counted. ``submit`` never blocks and never raises.
* The recorder thread (``"recorder"``) owns every file of the session: the H.264 overlay
  (:class:`~live_attention.video.H264Writer`), the raw-frame writer (:class:`RawWriter`) and the attention
  chunk writer (:class:`ChunkWriter`). An error there (full disk, vanished folder) becomes one line in
  :attr:`Recorder.error`; the recording stops, what was written stays readable, the app goes on.

A session folder (never reused, never overwritten)::

    session-YYYYmmdd-HHMMSS/
      manifest.json          model, weights (label, sha256), precision, device, config, versions, sizes
      overlay.mp4            what was shown: H.264, fragmented MP4, pts = capture time (ms, VFR)
      raw.mkv                the camera frames: FFV1 (lossless, bgr0) or MJPEG q2 in Matroska, same pts
      attention/chunk-NNNNNN.npz   per-frame maps, fp16, one file per <= 1 s, written tmp + rename
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from live_attention.config import Config, RecordConfig
from live_attention.errors import UserError
from live_attention.render import View
from live_attention.video import TIME_BASE, StreamWriter

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
OVERLAY = "overlay.mp4"
RAW = "raw.mkv"
ATTN_DIR = "attention"
FORMAT_VERSION = 1
CHUNK_FRAMES = 30  # a chunk is flushed after this many frames ...
CHUNK_SECONDS = 1.0  # ... or this long after its first frame, whichever comes first
_SESSION_RE = re.compile(r"^session-\d{8}-\d{6}(-\d+)?$")


# --------------------------------------------------------------------------------------------------
# Writers (used on the recorder thread only)
# --------------------------------------------------------------------------------------------------


class RawWriter(StreamWriter):
    """Camera frames (BGR uint8) into Matroska with explicit ms timestamps.

    ``ffv1``: lossless (bgr0, every frame a keyframe, slice CRCs). ``mjpeg``: q2, 4:4:4, near-lossless
    and about 7x faster. Matroska writes a cluster every few frames, so a killed process leaves a file
    that decodes up to its last complete cluster.
    """

    def __init__(self, path: str | os.PathLike[str], width: int, height: int, codec: str = "ffv1") -> None:
        import av

        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        # A cluster (and so what survives a crash) closes at least every second.
        self._container = av.open(str(self.path), mode="w",
                                  options={"cluster_time_limit": "1000", "cluster_size_limit": "8000000"})
        self._container.flags |= av.container.Flags.flush_packets.value  # see H264Writer
        if codec == "ffv1":
            stream = self._container.add_stream("ffv1", rate=30)
            stream.pix_fmt = "bgr0"
            stream.options = {"g": "1", "level": "3", "slices": "4", "slicecrc": "1", "threads": "1"}
        elif codec == "mjpeg":
            stream = self._container.add_stream("mjpeg", rate=30)
            stream.pix_fmt = "yuvj444p"
            stream.options = {"q:v": "2"}
            stream.codec_context.qmin = 1
            stream.codec_context.qmax = 2
        else:
            raise UserError(f"raw codec {codec!r}: use ffv1 or mjpeg")
        stream.width, stream.height = self.width, self.height
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        self._stream = stream
        self.frames = 0

    def write(self, bgr: np.ndarray, pts_ms: int) -> None:
        import av

        if bgr.shape[0] != self.height or bgr.shape[1] != self.width:
            import cv2

            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if bgr.ndim == 2:
            import cv2

            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr[..., :3]), format="bgr24")
        frame.pts = int(pts_ms)
        frame.time_base = TIME_BASE
        self._encode(frame)


def _lower_thread_priority(nice: int = 10) -> None:
    """Let the model win the CPU: the encoder thread runs at a lower priority (Linux: per thread).

    The bounded queue absorbs the lag; frames are dropped (and counted) only when it fills.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (OSError, AttributeError):
        logger.debug("could not lower the recorder's priority", exc_info=True)


def overlay_writer(path: Path, width: int, height: int, crf: int, preset: str, key_ms: int = 500):
    """The overlay video: H.264 with a keyframe (so a new MP4 fragment) at least every ``key_ms`` of
    media time whatever the recorded frame rate, every packet flushed to the OS."""
    from live_attention.video import H264Writer

    # gop in frames is a fallback only: keyframes are forced by time.
    return H264Writer(path, width, height, fps=30.0, crf=crf, preset=preset, gop=600, key_ms=key_ms,
                      flush_packets=True)


class ChunkWriter:
    """Per-frame arrays buffered in memory and written as one ``.npz`` per chunk (tmp file + rename).

    A reader only ever sees complete chunks; a crash loses at most the chunk being filled (<= 1 s).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir()
        self.index = 0
        self.frames = 0
        self.bytes = 0
        self._rows: list[dict[str, Any]] = []
        self._t_first = 0.0

    def append(self, row: dict[str, Any]) -> None:
        if not self._rows:
            self._t_first = time.monotonic()
        self._rows.append(row)
        if len(self._rows) >= CHUNK_FRAMES or time.monotonic() - self._t_first >= CHUNK_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        arrays = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        self.write_chunk(self.dir / f"chunk-{self.index:06d}.npz", arrays)
        self.index += 1
        self.frames += len(rows)

    def write_chunk(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self.bytes += path.stat().st_size


def frame_row(result: Any, view: View, pts_ms: int, t0_ns: int) -> dict[str, Any]:
    """One frame's record: maps in fp16, top-5, timestamps, seq, box, view and map settings (JSON)."""
    top_p = np.zeros(5, np.float32)
    top_names = [""] * 5
    for i, (name, p) in enumerate(result.topk[:5]):
        top_p[i] = p
        top_names[i] = name
    return {
        "seq": np.int64(result.seq),
        "t_capture_ns": np.int64(result.t_capture_ns),
        "t_done_ns": np.int64(result.t_done_ns),
        "pts_ms": np.int64(pts_ms),
        "t_rel_ms": np.float64((result.t_capture_ns - t0_ns) / 1e6),
        "infer_ms": np.float32(result.infer_ms),
        "box": np.asarray(result.box, np.int32),
        "cls": np.asarray(result.cls, np.float16),
        "rollout": np.asarray(result.rollout, np.float16),
        "entropy": np.asarray(result.entropy, np.float16),
        "patch_entropy": np.asarray(result.patch_entropy, np.float16),
        "patch_entropy_layer": np.int16(getattr(result, "patch_entropy_layer", -1)),
        "top_p": top_p,
        "top_names": np.asarray(top_names, dtype="<U64"),
        "view": np.asarray(json.dumps(asdict(view), sort_keys=True)),
        "settings": np.asarray(json.dumps(asdict(result.settings), sort_keys=True)),
    }


# --------------------------------------------------------------------------------------------------
# Session folder and manifest
# --------------------------------------------------------------------------------------------------


def software_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import live_attention

    out: dict[str, str | None] = {"python": platform.python_version(), "live_attention": live_attention.__version__}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("av", "av"), ("numpy", "numpy"),
                      ("opencv", "opencv-python"), ("dearpygui", "dearpygui")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # e.g. opencv-python-headless: ask the module
            out[key] = None
    if out["opencv"] is None:
        import cv2

        out["opencv"] = cv2.__version__
    return out


def is_session_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / MANIFEST).exists() or (p / ATTN_DIR).is_dir() or (p / OVERLAY).exists()


def new_session_dir(base_dir: str | os.PathLike[str], now: datetime | None = None) -> Path:
    """Create and return a new, empty ``session-YYYYmmdd-HHMMSS[-N]`` folder under ``base_dir``.

    Refuses ``base_dir`` when it is itself a session folder; never reuses an existing folder
    (``os.mkdir`` without ``exist_ok`` is the atomic check).
    """
    base = Path(base_dir).expanduser()
    if is_session_dir(base):
        raise UserError(f"{base} is an existing recording session: pass the folder to record into, "
                        "a new session folder is created inside it")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the recording folder {base}: {exc.strerror or exc} (pass --record a writable folder)") from exc
    stem = (now or datetime.now()).strftime("session-%Y%m%d-%H%M%S")
    for i in range(1000):
        p = base / (stem if i == 0 else f"{stem}-{i}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot record into {base}: {exc.strerror or exc}") from exc
    raise UserError(f"too many sessions named {stem}* in {base}")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def build_manifest(engine: Any, cfg: Config, view: View | None) -> dict[str, Any]:
    weights = cfg.model.weights
    if weights.lower() not in ("imagenet", "default", "random", "demo") and Path(weights).expanduser().exists():
        weights = str(Path(weights).expanduser().resolve())
    return {
        "format": "live-attention-session",
        "format_version": FORMAT_VERSION,
        "start_time": datetime.now(timezone.utc).astimezone().isoformat(),
        "model": {
            "name": engine.name,
            "weights": weights,  # what to pass to load_model again
            "weights_label": engine.weights_label,
            "weights_sha256": engine.weights_sha256,
            "untrained": bool(engine.untrained),
            "precision": engine.precision,
            "device": str(engine.device),
            "image_size": engine.image_size,
            "patch_size": engine.patch_size,
            "num_prefix": engine.num_prefix,
            "categories": len(engine.categories),
        },
        "grid": list(engine.grid),
        "layers": engine.num_layers,
        "heads": engine.num_heads,
        "patches": engine.num_patches,
        "frame_size": None,  # [w, h], set with the first frame
        "overlay_size": None,
        "files": {"overlay": OVERLAY, "raw": RAW, "attention": ATTN_DIR},
        "raw_codec": cfg.record.raw_codec,
        "attention_dtype": "float16",
        "chunk_frames": CHUNK_FRAMES,
        "time_base": "1/1000",
        "initial_view": asdict(view) if view is not None else None,
        "config": cfg.to_dict(),
        "software": software_versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "argv": sys.argv},
        "end": None,
    }


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError):
        what = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            what = "disk full"
        name = f" ({Path(str(exc.filename)).name})" if getattr(exc, "filename", None) else ""
        return f"{what}{name}"
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# --------------------------------------------------------------------------------------------------
# Recorder
# --------------------------------------------------------------------------------------------------


class Recorder(threading.Thread):
    """Writes a session on its own thread; :meth:`submit` never blocks the caller.

    Use :meth:`create` (makes the session folder and the manifest), then :meth:`start`,
    :meth:`submit` per shown frame, :meth:`stop`.
    """

    def __init__(self, path: Path, engine: Any, cfg: Config, view_fn: Callable[[], View] | None = None) -> None:
        super().__init__(name="recorder", daemon=True)
        self.path = path
        self.engine = engine
        self.cfg = cfg
        self.view_fn = view_fn
        self.queue: queue.Queue[tuple[Any, np.ndarray, View | None]] = queue.Queue(maxsize=cfg.record.queue_size)
        self.error: str | None = None
        self.dropped = 0
        self.submitted = 0
        self.written = 0
        self._stop_evt = threading.Event()
        self._failed = threading.Event()
        self._t_start = time.monotonic()
        self._t0_ns: int | None = None
        self._last_pts = -1
        self._overlay = None
        self._raw: RawWriter | None = None
        self.chunks = ChunkWriter(path / ATTN_DIR)
        self.manifest = build_manifest(engine, cfg, view_fn() if view_fn else None)
        self.encode_ms = 0.0  # smoothed encoder time per frame (overlay + raw + data)
        write_json_atomic(path / MANIFEST, self.manifest)

    @classmethod
    def create(
        cls, base_dir: str | os.PathLike[str], engine: Any, cfg: Config, view_fn: Callable[[], View] | None = None
    ) -> Recorder:
        """A recorder for a new session folder under ``base_dir`` (raises :class:`UserError` if it cannot)."""
        path = new_session_dir(base_dir)
        try:
            return cls(path, engine, cfg, view_fn)
        except OSError as exc:
            raise UserError(f"cannot record into {path}: {_one_line(exc)}") from exc

    # Caller's thread ----------------------------------------------------------------------------
    def submit(self, result: Any, rgb: np.ndarray, view: View | None = None) -> bool:
        """Queue one shown frame; False when dropped (queue full) or not recording. Never blocks."""
        if result is None or self._stop_evt.is_set() or self._failed.is_set():
            return False
        self.submitted += 1
        try:
            self.queue.put_nowait((result, rgb, view))
            return True
        except queue.Full:
            self.dropped += 1
            return False

    def hud_text(self) -> str:
        el = int(time.monotonic() - self._t_start)
        m, s = divmod(el, 60)
        t = f"{m:02d}:{s:02d}" if m < 60 else f"{m // 60}:{m % 60:02d}:{s:02d}"
        state = "REC" if not self._failed.is_set() else "REC STOPPED"
        return f"{state} {t}  dropped {self.dropped}"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting frames, write what is queued, close the files (joins with a timeout)."""
        self._stop_evt.set()
        if self.is_alive():
            self.join(timeout)
            if self.is_alive():
                logger.warning("recorder did not finish within %.0f s", timeout)
        elif self.ident is None and not self._failed.is_set():
            self._finish()  # never started: still write the end of the manifest

    # Recorder thread ----------------------------------------------------------------------------
    def run(self) -> None:
        _lower_thread_priority()
        try:
            while True:
                try:
                    item = self.queue.get(timeout=0.05)
                except queue.Empty:
                    if self._stop_evt.is_set():
                        break
                    continue
                self._write(*item)
        except Exception as exc:
            self._fail(exc)
            return
        self._finish()

    def _open_writers(self, result: Any, rgb: np.ndarray) -> None:
        fh, fw = result.frame.shape[:2]
        rec = self.cfg.record
        self._overlay = overlay_writer(self.path / OVERLAY, rgb.shape[1], rgb.shape[0], rec.crf, rec.preset)
        self._raw = RawWriter(self.path / RAW, fw, fh, rec.raw_codec)
        self._t0_ns = result.t_capture_ns
        self.manifest["frame_size"] = [fw, fh]
        self.manifest["overlay_size"] = [int(rgb.shape[1]), int(rgb.shape[0])]
        self.manifest["t0_capture_ns"] = int(result.t_capture_ns)
        write_json_atomic(self.path / MANIFEST, self.manifest)

    def _write(self, result: Any, rgb: np.ndarray, view: View | None) -> None:
        t = time.perf_counter()
        if self._overlay is None:
            self._open_writers(result, rgb)
        assert self._overlay is not None and self._raw is not None and self._t0_ns is not None
        pts = int(round((result.t_capture_ns - self._t0_ns) / 1e6))
        pts = max(pts, self._last_pts + 1)  # strictly increasing: the same pts in all three files
        self._last_pts = pts
        if view is None:
            view = self.view_fn() if self.view_fn else View()
        self._overlay.write(rgb, pts / 1000.0)
        self._raw.write(result.frame, pts)
        self.chunks.append(frame_row(result, view, pts, self._t0_ns))
        self.written += 1
        ms = (time.perf_counter() - t) * 1000.0
        self.encode_ms = ms if self.written == 1 else 0.9 * self.encode_ms + 0.1 * ms

    def _finish(self) -> None:
        errors = []
        for closer in (self.chunks.flush, self._close_overlay, self._close_raw):
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        try:
            self.manifest["end"] = {
                "time": datetime.now(timezone.utc).astimezone().isoformat(),
                "frames": self.chunks.frames, "dropped": self.dropped,
                "duration_s": round(time.monotonic() - self._t_start, 3),
                "error": self.error,
            }
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except Exception as exc:
            errors.append(exc)
        if errors and self.error is None:
            self._fail(errors[0], finishing=True)
        logger.info("recording saved in %s (%d frames, %d dropped)", self.path, self.chunks.frames, self.dropped)

    def _close_overlay(self) -> None:
        w, self._overlay = self._overlay, None
        if w is not None:
            w.close()

    def _close_raw(self) -> None:
        w, self._raw = self._raw, None
        if w is not None:
            w.close()

    def _fail(self, exc: BaseException, finishing: bool = False) -> None:
        self.error = f"recording stopped: {_one_line(exc)}"
        self._failed.set()
        logger.error("%s (session %s)", self.error, self.path, exc_info=exc)
        if finishing:
            return
        # Close what we can so the files written so far stay readable; a second failure is only logged.
        for closer in (self._close_overlay, self._close_raw):
            try:
                closer()
            except Exception:
                logger.debug("closing after failure", exc_info=True)
        try:
            self.manifest["end"] = {"time": datetime.now(timezone.utc).astimezone().isoformat(),
                                    "frames": self.chunks.frames, "dropped": self.dropped, "error": self.error}
            write_json_atomic(self.path / MANIFEST, self.manifest)
        except Exception:
            logger.debug("manifest after failure", exc_info=True)
        while True:  # free the queued frames
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break


# --------------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------------


def bench_recording(frames: int = 60, width: int = 1280, height: int = 720, raw_codec: str | None = None,
                    tmp_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Encoder cost and disk rates of a recording, on synthetic moving 720p frames.

    Returns ms per frame for the overlay (H.264), the raw writer (ffv1 and mjpeg) and the attention
    chunk, bytes per second on disk for each part at the measured rate of 30 fps, and attention bytes
    per frame for ViT-B/16-sized arrays (L=12, H=12, P=196).
    """
    import tempfile

    import cv2

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_CUBIC)
    imgs = [np.roll(base, 7 * i, axis=1) for i in range(frames)]
    L, H, P = 12, 12, 196
    out: dict[str, Any] = {"frames": frames, "size": [width, height]}
    with tempfile.TemporaryDirectory(dir=tmp_dir) as d:
        dd = Path(d)
        t = time.perf_counter()
        rc = RecordConfig()
        w = overlay_writer(dd / "o.mp4", width, height, crf=rc.crf, preset=rc.preset)
        for i, im in enumerate(imgs):
            w.write(im, round(i * 1000 / 30) / 1000.0)
        w.close()
        out["overlay_ms_per_frame"] = (time.perf_counter() - t) * 1000 / frames
        out["overlay_bytes_per_s"] = (dd / "o.mp4").stat().st_size / (frames / 30)
        for codec in ([raw_codec] if raw_codec else ["ffv1", "mjpeg"]):
            t = time.perf_counter()
            rw = RawWriter(dd / f"r-{codec}.mkv", width, height, codec)
            for i, im in enumerate(imgs):
                rw.write(im, round(i * 1000 / 30))
            rw.close()
            out[f"raw_{codec}_ms_per_frame"] = (time.perf_counter() - t) * 1000 / frames
            out[f"raw_{codec}_bytes_per_s"] = (dd / f"r-{codec}.mkv").stat().st_size / (frames / 30)
        cw = ChunkWriter(dd / "a")
        attn = rng.dirichlet(np.ones(P), size=(L, H)).astype(np.float32)
        row = {"cls": attn.astype(np.float16), "rollout": attn[:, 0].astype(np.float16),
               "entropy": np.ones((L, H), np.float16), "patch_entropy": attn[-1].astype(np.float16),
               "patch_entropy_layer": np.int16(L - 1),
               "top_p": np.zeros(5, np.float32), "seq": np.int64(0), "t_capture_ns": np.int64(0),
               "pts_ms": np.int64(0), "top_names": np.asarray([""] * 5, dtype="<U64"),
               "view": np.asarray(json.dumps(asdict(View())))}
        t = time.perf_counter()
        n = CHUNK_FRAMES * 2
        for _ in range(n):
            cw._rows.append(dict(row))
            if len(cw._rows) >= CHUNK_FRAMES:
                cw.flush()
        cw.flush()
        out["attention_ms_per_frame"] = (time.perf_counter() - t) * 1000 / n
        out["attention_bytes_per_frame"] = cw.bytes / n
        out["attention_bytes_per_s"] = out["attention_bytes_per_frame"] * 30
    out["note"] = "bytes per second at 30 recorded frames per second; recordings run at the model's rate"
    return out
