"""Offline figures (parts render, long): the ``render`` command on a clip against the engine alone, the
render pipeline on frames held in memory, and memory over a long video."""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from live_attention.commands.bench_parts.measure import Report, median_ms, random_frame, sync_of
from live_attention.core.engine import AttentionEngine
from live_attention.core.frame_maps import keep_for
from live_attention.core.models import load_model
from live_attention.core.render import canvas_size
from live_attention.datatypes import MapSettings, Status, View
from live_attention.io.video import VideoReader
from live_attention.modes import settings_for
from live_attention.offline import batch

TARGET_RENDER_CMD = 1.25  # render tour.mp4 wall (process start included) / engine alone at its best batch
TARGET_RENDER_CUDA_FPS = 300.0  # the render pipeline on 720p frames, ViT-B/16, H100/H200


def bench_render_command(rep: Report, source: str, model: str, device: str) -> None:
    """``live-attention render`` on the clip, wall time with process start, against the engine alone on
    the same frames at its best batch size."""
    rep.section(f"render {Path(source).name} with {model} (random weights)")
    with VideoReader(source) as r:
        frames = [img for img, _ in r]
    eng = load_model(model, weights="random", device=device)
    xs = [eng.preprocess(f) for f in frames[:16]]
    keep = keep_for(eng, MapSettings(**settings_for(View())))  # what render's default view keeps
    sync = sync_of(eng.device)

    def engine_alone() -> tuple[int, float]:
        per_frame = {b: median_ms(lambda b=b: eng.run(torch.cat(xs[:b]), keep), 3, sync) / b for b in (1, 2, 4, 8, 16)}
        best = min(per_frame, key=lambda b: per_frame[b])
        return best, per_frame[best]

    best, before = engine_alone()
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "live_attention", "render", source, "-o", f"{d}/out.mp4",
                               "--model", model, "--weights", "random", "--device", device],
                              capture_output=True, text=True, timeout=3600)
        wall = time.perf_counter() - t
    _, after = engine_alone()  # before and after: the machine's speed drifts
    engine_s = (before + after) / 2 * len(frames) / 1000.0
    if proc.returncode:
        rep.add("render.error", "render failed", proc.stderr.strip().splitlines()[-1])
        return
    rep.add("render.engine_s", f"engine alone, {len(frames)} frames at its best batch ({best})", engine_s, "s")
    rep.add("render.wall_s", "render command, process start included", wall, "s")
    rep.add("render.fps", "render command, frames per second", len(frames) / wall, "fps")
    rep.target("render.ratio", "render wall / engine alone", wall / engine_s, "x", TARGET_RENDER_CMD)


def bench_render_frames(rep: Report, eng: AttentionEngine, count: int = 256) -> None:
    """``render``'s pipeline (a decode thread, batches through the engine on this thread, the drawing
    pool, pictures handed on in order) on 1280x720 frames held in memory, in render's default view:
    frames per second. Decoding and H.264 encoding (PyAV) are left out; the ``render`` part times the
    whole command on a file."""
    base = random_frame(seed=4)
    frames = [np.roll(base, 8 * i, axis=1) for i in range(count)]
    view = View()
    settings = MapSettings(**settings_for(view))
    size = canvas_size(frames[0].shape)
    size_batch = batch.default_batch(eng)
    results = batch.engine_results(eng, settings, "bench")  # one runner: its graph is captured once

    def fps(n: int) -> float:
        items = [batch.Item(i, f, i / 30) for i, f in enumerate(frames[:n])]
        t = time.perf_counter()
        written = batch.run(items, results, view, Status(model=eng.describe()), lambda _rgb, _pts: None,
                            batch=size_batch, size=size, prepare=batch.preprocessor(eng))
        return written / (time.perf_counter() - t)

    fps(size_batch)  # warm-up
    rep.target("render.frames_720p_fps", f"render pipeline, {count} 1280x720 frames from memory, batch {size_batch} "
               "(no decode, no encode)", fps(count), "fps", TARGET_RENDER_CUDA_FPS, below=False,
               applies=eng.device.type == "cuda")


def bench_long_video(rep: Report, minutes: float, model: str) -> None:
    """Memory over a long render: host RSS (and CUDA) sampled while a synthetic video of ``minutes``
    renders; it should stay flat."""
    import av  # here only: the other parts (and make gpu-check) run without PyAV

    rep.section(f"Memory over a {minutes:g}-minute video ({model})")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "long.mp4"
        n = int(minutes * 60 * 30)
        with av.open(str(src), "w") as c:
            st = c.add_stream("libx264", rate=30)
            st.width, st.height, st.pix_fmt = 640, 480, "yuv420p"
            st.options = {"preset": "ultrafast"}
            base = random_frame(480, 640, seed=3)
            for i in range(n):
                for pkt in st.encode(av.VideoFrame.from_ndarray(np.roll(base, i, axis=1), format="bgr24")):
                    c.mux(pkt)
            for pkt in st.encode(None):
                c.mux(pkt)
        proc = subprocess.Popen([sys.executable, "-m", "live_attention", "render", str(src), "-o", f"{d}/o.mp4",
                                 "--model", model, "--weights", "random" if model != "demo" else "imagenet"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples = []
        while proc.poll() is None:
            try:
                rss = [int(x.split()[1]) for x in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if x.startswith("VmRSS:")][0] / 1024
                samples.append(rss)
            except (OSError, IndexError):
                pass
            time.sleep(2.0)
    if len(samples) >= 4:
        q = len(samples) // 4
        rep.add("long.rss_first_quarter_mb", "render RSS, first quarter (median)", statistics.median(samples[q:2 * q]), "MB")
        rep.add("long.rss_last_quarter_mb", "render RSS, last quarter (median)", statistics.median(samples[-q:]), "MB")
        rep.add("long.rss_max_mb", "render RSS, max", max(samples), "MB")
