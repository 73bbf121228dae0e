"""The live pipeline's figures (parts pipeline, record, load): the one frame loop on a video file, GUI
and inference rates, latency, what recording costs, and the model under load."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np

from live_attention.commands.bench_parts.measure import Report
from live_attention.config import Config
from live_attention.core.models import load_model
from live_attention.datatypes import View
from live_attention.io.capture import open_source
from live_attention.io.encoders import HEADROOM, bench_recording
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop, NullDisplay
from live_attention.ui.controller import view_from_config

TARGET_GUI_FPS = 30.0
TARGET_LATENCY_RATIO = 1.5
TARGET_LOADED = 0.60  # model fps under one busy core / idle
TARGET_COMPARE = 0.45  # live fps with --compare / the slower model alone (two models in turn: 0.5 at best)


def bench_pipeline(source: str, model: str, seconds: float, record: bool = False, window=None,
                   view: View | None = None, threads: int = 0, compare: tuple[str, str] | None = None) -> dict[str, float]:
    """The live pipeline on a video file through the one frame loop (in ``window`` when one is given,
    else a 60 Hz display that draws nowhere); ``compare``: (model, weights) of a second model beside it."""
    cfg = Config()
    cfg = replace(cfg, model=replace(cfg.model, threads=threads))
    engine = load_model(model, weights="random" if model != "demo" else "imagenet", device="auto")
    second = load_model(compare[0], compare[1], device=engine.device) if compare is not None else None
    session = LiveSession(cfg, engine, open_source(source, loop=True), second)
    display = window if window is not None else NullDisplay()
    loop = FrameLoop(session, display, view or view_from_config(cfg))
    session.start(window=window is not None)
    try:
        if record:
            session.start_recording(tempfile.mkdtemp(prefix="la-bench-"), lambda: loop.view)
        t0 = time.monotonic()
        while session.worker.processed < 2 and time.monotonic() < t0 + 60:  # let the model warm up
            loop.step()
        stats = loop.stats
        stats.iteration_ms.clear()
        stats.latency_ms.clear()
        stats.render_ms.clear()
        t0, processed0, it0 = time.monotonic(), session.worker.processed, stats.iterations
        while time.monotonic() < t0 + seconds:
            loop.step()
        elapsed = time.monotonic() - t0
        infer_fps = (session.worker.processed - processed0) / elapsed
        dropped = session.recorder.dropped if session.recorder is not None else 0
    finally:
        session.stop()
        if window is None:
            display.close()
    lat, loop_ms = stats.latency_ms, stats.iteration_ms
    return {
        "gui_fps": (stats.iterations - it0) / elapsed,
        "infer_fps": infer_fps,
        "infer_ms": 1000.0 / infer_fps if infer_fps else float("nan"),
        "latency_median_ms": statistics.median(lat) if lat else float("nan"),
        "latency_p95_ms": float(np.percentile(lat, 95)) if lat else float("nan"),
        "loop_max_ms": max(loop_ms) if loop_ms else float("nan"),
        "loop_p99_ms": float(np.percentile(loop_ms, 99)) if loop_ms else float("nan"),
        "render_ms": statistics.median(stats.render_ms) if stats.render_ms else float("nan"),
        "recorded_dropped": dropped,
    }


def report_pipeline(rep: Report, key: str, a: dict[str, float]) -> None:
    rep.target(f"{key}.gui_fps", "GUI loop fps", a["gui_fps"], "fps", TARGET_GUI_FPS, below=False)
    rep.add(f"{key}.infer_fps", "inference fps", a["infer_fps"], "fps")
    ratio = a["latency_median_ms"] / a["infer_ms"]
    rep.add(f"{key}.latency_median_ms", "capture-to-display latency, median", a["latency_median_ms"], "ms",
            f"<= {TARGET_LATENCY_RATIO}x inference step ({a['infer_ms']:.0f} ms)", ratio <= TARGET_LATENCY_RATIO)
    rep.add(f"{key}.latency_p95_ms", "capture-to-display latency, p95", a["latency_p95_ms"], "ms")
    rep.add(f"{key}.loop_p99_ms", "GUI loop iteration, p99 (it never waits on inference)", a["loop_p99_ms"], "ms")


def bench_compare(rep: Report, source: str, seconds: float) -> None:
    """``--compare``: the live fps of the demo model beside its untrained twin (the two run in turn on
    each frame) against the demo model alone, headless, in one run."""
    rep.section("Two models side by side (--compare demo --compare-weights random), headless")
    alone = bench_pipeline(source, "demo", seconds)
    paired = bench_pipeline(source, "demo", seconds, compare=("demo", "random"))
    rep.add("compare.alone_fps", "demo model alone", alone["infer_fps"], "fps")
    rep.add("compare.paired_fps", "demo beside demo (random weights): frames with both maps", paired["infer_fps"], "fps")
    rep.target("compare.ratio", "paired / the slower model alone", paired["infer_fps"] / alone["infer_fps"], "x",
               TARGET_COMPARE, below=False)
    rep.add("compare.render_ms", "drawing a paired picture (two halves), median", paired["render_ms"], "ms")


def bench_load(rep: Report, source: str, seconds: float) -> None:
    """The demo model headless on a video, idle and with another process holding a core, and what the
    passive OpenMP wait costs ViT-B/16 when the machine is idle (alternating child processes)."""
    rep.section("Under load: another process busy on one core")
    idle = bench_pipeline(source, "demo", seconds)
    busy = subprocess.Popen(["sh", "-c", "while :; do :; done"])
    try:
        loaded = bench_pipeline(source, "demo", seconds)
    finally:
        busy.kill()
    rep.add("load.idle_fps", "demo model, headless, idle", idle["infer_fps"], "fps")
    rep.add("load.loaded_fps", "demo model, headless, one core busy", loaded["infer_fps"], "fps")
    rep.target("load.ratio", "loaded / idle model fps", loaded["infer_fps"] / idle["infer_fps"], "x", TARGET_LOADED,
               below=False)
    rep.add("load.loaded_latency_ms", "latency, one core busy", loaded["latency_median_ms"], "ms")
    code = ("import live_attention, time, statistics, torch, torchvision; from live_attention import AttentionEngine; "
            "torch.manual_seed(0); e = AttentionEngine.wrap(torchvision.models.vit_b_16(), device='cpu'); "
            "x = torch.randn(1, 3, 224, 224); [e.run(x) for _ in range(3)]; t = []\n"
            "for _ in range(8):\n s = time.perf_counter(); e.run(x); t.append(time.perf_counter() - s)\n"
            "print(statistics.median(t) * 1000)")
    # Ours (passive after 10,000 spins) against torch's default (300,000 spins), in alternating
    # processes: the machine's speed drifts between runs, so many short rounds and their medians.
    policies = {"default": {"GOMP_SPINCOUNT": "300000"}, "ours": {}}
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    times: dict[str, list[float]] = {k: [] for k in policies}
    for _ in range(6):
        for name, extra in policies.items():
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                                 env={**base, **extra})
            times[name].append(float(out.stdout.strip().splitlines()[-1]))
    default, ours = statistics.median(times["default"]), statistics.median(times["ours"])
    rep.add("load.vit_b_16_default_ms", "ViT-B/16 engine.run, idle, torch's default spinning waits", default, "ms")
    rep.add("load.vit_b_16_ours_ms", "ViT-B/16 engine.run, idle, passive after a short spin (ours)", ours, "ms")
    rep.add("load.idle_cost", "ours / default, idle (6 alternating processes each)", ours / default, "x")


def bench_record(rep: Report) -> None:
    rep.section("Recording (synthetic 1280x720 frames)")
    for k, v in bench_recording().items():
        rep.add(f"record.{k}", k.replace("_", " "), float(v) if isinstance(v, int | float) else str(v))
    # What record.raw_codec = "auto" weighs: each raw codec's cost per frame at the source's size, with
    # the overlay's, against the interval between frames (the demo at 30 fps, its default 960x720).
    demo = open_source("demo", width=960, height=720, fps=30.0)
    try:
        images = [demo.read() for _ in range(8)]
    finally:
        demo.release()
    d = bench_recording(frames=30, images=[im for im in images if im is not None])
    rep.section(f"Recording the demo source (960x720) at 30 fps: a frame every {d['interval_ms']:.1f} ms")
    for codec in ("ffv1", "mjpeg"):
        share = (d["overlay_ms_per_frame"] + d[f"raw_{codec}_ms_per_frame"] + d["attention_ms_per_frame"]) / d["interval_ms"]
        rep.add(f"record.demo.raw_{codec}_ms", f"raw {codec} per frame", d[f"raw_{codec}_ms_per_frame"], "ms")
        rep.add(f"record.demo.{codec}_share", f"overlay + {codec} + attention / frame interval", share * 100, "%")
    rep.add("record.demo.overlay_ms", "overlay H.264 per frame", d["overlay_ms_per_frame"], "ms")
    rep.add("record.demo.auto_codec", f"raw_codec auto takes (fits {HEADROOM:.0%} of the interval?)", d["auto_codec"])
    rep.target("record.demo.auto_share", "auto's encoding / frame interval (over 100 %: frames dropped)",
               d["auto_share_of_interval"] * 100, "%", 100)
