"""What the recorder encodes with, and what that costs: the raw-frame writer, the overlay writer, the
timing that picks the raw codec for this source and machine (``record.raw_codec = "auto"``), the words
the HUD uses when frames are dropped, and ``bench``'s recording figures.

The writers are used on the recorder thread only (see :mod:`live_attention.io.recorder`).
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any, BinaryIO

import cv2
import numpy as np

from live_attention.config import RecordConfig
from live_attention.datatypes import MapSettings, Result, View
from live_attention.errors import UserError
from live_attention.io.recording import CHUNK_FRAMES, ChunkWriter, frame_row
from live_attention.io.writers import TIME_BASE, H264Writer, StreamWriter

RAW_CODECS = ("ffv1", "mjpeg")  # best first: lossless, then near-lossless and about 3x cheaper
HEADROOM = 0.75  # "auto" takes a codec when the recorder's work per frame fits this share of the interval
KEY_MS = 500  # a keyframe, so a new MP4 fragment, at least this often: what a crash can lose of the overlay


class RawWriter(StreamWriter):
    """Camera frames (BGR uint8) into Matroska with explicit ms timestamps.

    ``ffv1``: lossless (bgr0, every frame a keyframe, slice CRCs). ``mjpeg``: q2, 4:4:4, near-lossless
    and about 3x cheaper. Matroska writes a cluster every few frames, so a killed process leaves a file
    that decodes up to its last complete cluster. ``path`` may be a binary file object (timing in memory).
    """

    def __init__(self, path: str | os.PathLike[str] | BinaryIO, width: int, height: int, codec: str = "ffv1") -> None:
        import av

        in_memory = hasattr(path, "write")
        self.path = None if in_memory else Path(path)  # type: ignore[arg-type]
        self.width, self.height = int(width), int(height)
        # A cluster (and so what survives a crash) closes at least every second.
        self._container = av.open(path if in_memory else str(self.path), mode="w", format="matroska",
                                  options={"cluster_time_limit": str(KEY_MS), "cluster_size_limit": "8000000"})
        self._container.flags |= av.container.Flags.flush_packets.value  # type: ignore[operator]  # see H264Writer
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
            self._container.close()
            raise UserError(f"raw codec {codec!r}: use auto, ffv1 or mjpeg")
        stream.width, stream.height = self.width, self.height
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        self._stream = stream
        self.frames = 0

    def write(self, bgr: np.ndarray, pts_ms: int) -> None:
        import av

        if bgr.shape[0] != self.height or bgr.shape[1] != self.width:
            bgr = cv2.resize(bgr, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if bgr.ndim == 2:
            bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(bgr[..., :3]), format="bgr24")
        frame.pts = int(pts_ms)
        frame.time_base = TIME_BASE
        self._encode(frame)


def overlay_writer(path: Path, width: int, height: int, crf: int, preset: str, key_ms: int = KEY_MS) -> H264Writer:
    """The overlay video: H.264 with a keyframe (so a new MP4 fragment) at least every ``key_ms`` of
    media time whatever the recorded frame rate, every packet flushed to the OS."""
    # gop in frames is a fallback only: keyframes are forced by time.
    return H264Writer(path, width, height, fps=30.0, crf=crf, preset=preset, gop=600, key_ms=key_ms,
                      flush_packets=True)


# --------------------------------------------------------------------------------------------------
# The raw codec for this source and machine, and why frames are dropped
# --------------------------------------------------------------------------------------------------


def time_encoders(bgr: np.ndarray, rgb: np.ndarray | None = None, crf: int = 23, preset: str = "ultrafast",
                  codecs: tuple[str, ...] = RAW_CODECS) -> dict[str, float]:
    """Milliseconds per frame of each raw codec in ``codecs`` on ``bgr`` and of the overlay on ``rgb``
    (key ``"overlay"``, when given).

    One frame warms each encoder up (its set-up is no per-frame cost: FFV1's first frame takes about
    1.7 times its next, x264's three times), the next is timed. Raw frames are encoded in memory, the
    overlay into a temporary file.
    """
    import tempfile

    out: dict[str, float] = {}
    h, w = bgr.shape[:2]
    for codec in codecs:
        writer = RawWriter(io.BytesIO(), w, h, codec)
        try:
            writer.write(bgr, 0)
            t = time.perf_counter()
            writer.write(bgr, 33)
            out[codec] = (time.perf_counter() - t) * 1000.0
        finally:
            writer.close()
    if rgb is not None:
        moved = np.roll(rgb, 8, axis=1)  # a P-frame of a moving picture, not of a still one
        with tempfile.TemporaryDirectory(prefix="la-rec-") as d:
            ow = overlay_writer(Path(d) / "o.mp4", rgb.shape[1], rgb.shape[0], crf, preset)
            try:
                ow.write(rgb, 0.0)
                t = time.perf_counter()
                ow.write(moved, 0.033)
                out["overlay"] = (time.perf_counter() - t) * 1000.0
            finally:
                ow.close()
    return out


def choose_raw_codec(costs_ms: dict[str, float], interval_ms: float, headroom: float = HEADROOM) -> tuple[str, str]:
    """The best raw codec whose frame, with the overlay's (``costs_ms["overlay"]``), is encoded within
    ``headroom`` of the interval between recorded frames; else the cheapest. Returns (codec, reason)."""
    other = costs_ms.get("overlay", 0.0)
    budget = headroom * interval_ms
    for codec in RAW_CODECS:
        if codec in costs_ms and other + costs_ms[codec] <= budget:
            return codec, (f"{codec}: {other + costs_ms[codec]:.0f} ms of encoding a frame fits the "
                           f"{interval_ms:.0f} ms between frames")
    cheapest = min((c for c in RAW_CODECS if c in costs_ms), key=lambda c: costs_ms[c])
    return cheapest, (f"{cheapest}, the cheapest: {other + costs_ms[cheapest]:.0f} ms of encoding a frame against "
                      f"{interval_ms:.0f} ms between frames, so frames will be dropped")


def drop_reason(codec: str, overlay_ms: float, raw_ms: float, data_ms: float, interval_ms: float) -> str:
    """Why the recorder drops frames, in a few words with the fix: the HUD's REC line."""
    total = overlay_ms + raw_ms + data_ms
    fix = 'try record.raw_codec = "mjpeg"' if codec == "ffv1" else "lower the source's size or fps"
    if total > interval_ms:
        slow = "raw encoder" if raw_ms >= overlay_ms else "overlay encoder"
        return f"{slow} too slow ({total:.0f} ms a frame, {interval_ms:.0f} ms apart): {fix}"
    return f"encoders short of CPU ({total:.0f} ms a frame, {interval_ms:.0f} ms apart): {fix}"


def bench_recording(frames: int = 60, width: int = 1280, height: int = 720, raw_codec: str | None = None,
                    tmp_dir: str | os.PathLike[str] | None = None, images: list[np.ndarray] | None = None,
                    fps: float = 30.0) -> dict[str, Any]:
    """Encoder cost and disk rates of a recording, on ``images`` (default: synthetic moving frames).

    Returns ms per frame for the overlay (H.264), the raw writer (ffv1 and mjpeg) and the attention
    chunk, bytes per second on disk for each part at ``fps``, attention bytes per frame for
    ViT-B/16-sized arrays (L=12, H=12, P=196), and against the interval at ``fps``: the codec
    ``record.raw_codec = "auto"`` takes with these costs, and the share of the interval it fills.
    """
    import tempfile

    rng = np.random.default_rng(0)
    if images:
        height, width = images[0].shape[:2]
        imgs = [images[i % len(images)] for i in range(frames)]
    else:
        base: np.ndarray = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
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
            w.write(im, round(i * 1000 / fps) / 1000.0)
        w.close()
        out["overlay_ms_per_frame"] = (time.perf_counter() - t) * 1000 / frames
        out["overlay_bytes_per_s"] = (dd / "o.mp4").stat().st_size / (frames / fps)
        for codec in ([raw_codec] if raw_codec else ["ffv1", "mjpeg"]):
            t = time.perf_counter()
            rw = RawWriter(dd / f"r-{codec}.mkv", width, height, codec)
            for i, im in enumerate(imgs):
                rw.write(im, round(i * 1000 / fps))
            rw.close()
            out[f"raw_{codec}_ms_per_frame"] = (time.perf_counter() - t) * 1000 / frames
            out[f"raw_{codec}_bytes_per_s"] = (dd / f"r-{codec}.mkv").stat().st_size / (frames / fps)
        cw = ChunkWriter(dd / "a")
        attn = rng.dirichlet(np.ones(P), size=(L, H)).astype(np.float32)
        res = Result(seq=0, t_capture_ns=0, t_done_ns=0, frame=imgs[0], box=(0, 0, width, height), grid=(14, 14),
                     cls=attn, rollout=attn[:, 0], entropy=np.ones((L, H), np.float32), patch_entropy=attn[-1],
                     patch_entropy_layer=L - 1, topk=[("a", 0.5)] * 5, infer_ms=0.0, settings=MapSettings(),
                     prefix_share=np.zeros((L, H), np.float32), token_norm=attn[:, 0])
        t = time.perf_counter()
        n = CHUNK_FRAMES * 2
        for i in range(n):
            cw.append(frame_row(res, View(), i, 0))
        cw.flush()
        out["attention_ms_per_frame"] = (time.perf_counter() - t) * 1000 / n
        out["attention_bytes_per_frame"] = cw.bytes / n
        out["attention_bytes_per_s"] = out["attention_bytes_per_frame"] * fps
    interval = 1000.0 / fps
    costs = {c: out[f"raw_{c}_ms_per_frame"] for c in RAW_CODECS if f"raw_{c}_ms_per_frame" in out}
    if costs:
        auto, _ = choose_raw_codec({**costs, "overlay": out["overlay_ms_per_frame"]}, interval)
        out["interval_ms"] = interval
        out["auto_codec"] = auto
        out["auto_share_of_interval"] = (out["overlay_ms_per_frame"] + costs[auto] + out["attention_ms_per_frame"]) / interval
    out["note"] = f"bytes per second at {fps:g} recorded frames per second; recordings run at the model's rate"
    return out
