"""``live-attention bench``: speed and memory figures, as ratios taken in one run on this machine.

Timings on a shared machine are noisy, so every target is a ratio or a per-frame figure measured
back to back in one process (medians of runs taken in alternation, so drift in load hits all sides
alike). Random-init weights: speed does not depend on them. Prints a table with PASS/FAIL against the
targets; ``--json`` also writes the figures. Parts (``--only``/``--skip``): engine, demo, flow,
renderer, pipeline, record, load, timm, relevance, render, long, gpu and serve (the last three only when
asked; gpu: the GPU targets in one table, what ``make gpu-check`` prints; serve: the browser camera loop
of ``live-attention serve``, see :mod:`live_attention.commands.bench_parts.serve`).

This module runs the parts asked for, one after another, into one :class:`Report`; each part's
measurements live in :mod:`live_attention.commands.bench_parts`, one module per kind of figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import cv2
import torch

from live_attention import names
from live_attention.commands.bench_parts.drawing import bench_renderer
from live_attention.commands.bench_parts.engine import bench_engine, bench_relevance, bench_timm
from live_attention.commands.bench_parts.gpu import bench_gpu
from live_attention.commands.bench_parts.live import (
    bench_compare,
    bench_load,
    bench_pipeline,
    bench_record,
    report_pipeline,
)
from live_attention.commands.bench_parts.measure import Report, rss_mb
from live_attention.commands.bench_parts.offline import bench_long_video, bench_render_command
from live_attention.io.writers import H264Writer
from live_attention.ui.window import Window

__all__ = ["Report", "bench_gpu", "run", "synthesized_clip", "test_clip"]


def run(args: argparse.Namespace, parts: list[str]) -> int:
    """Every part asked for (see :mod:`live_attention.commands.bench_cli`, which parses the arguments)."""
    # no_grad, not set_grad_enabled: a caller's thread keeps its own mode.
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="la-bench-") as tmp:
        src = args.source or test_clip()
        if not src and {"pipeline", "load", names.RELEVANCE, "render", "compare"} & set(parts):
            src = str(synthesized_clip(Path(tmp) / "demo-scene.mp4"))
            print(f"(no --source and no test clip here: the video parts use {SYNTH_SECONDS:g} s of the demo scene, "
                  f"{SYNTH_SIZE[0]}x{SYNTH_SIZE[1]} at {SYNTH_FPS:g} fps, made now)")
        return _run(args, parts, src)


def _run(args: argparse.Namespace, parts: list[str], src: str | None) -> int:
    rep = Report()
    print(f"live-attention bench: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, python {platform.python_version()}"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    if "engine" in parts:
        bench_engine(rep, args.model, args.device, args.reps, flow=names.FLOW in parts)
    if "demo" in parts:
        bench_engine(rep, "demo", args.device, args.reps, flow=False)
    if "renderer" in parts:
        bench_renderer(rep, args.reps)
    if "pipeline" in parts and src:
        window = Window("live-attention bench", 1280, 800, vsync=False, max_fps=args.gui_fps) if _has_display() else None
        rep.section(f"Live pipeline on {Path(src).name} with {args.model} (random weights), {args.seconds:.0f} s"
                    + ("" if window else " - no display: a 60 Hz loop without a window"))
        try:
            a = bench_pipeline(src, args.model, args.seconds, window=window)
            report_pipeline(rep, "pipeline", a)
            if "record" in parts:
                b = bench_pipeline(src, args.model, args.seconds, record=True, window=window)
                cost = 1.0 - b["infer_fps"] / a["infer_fps"]
                rep.add("record.infer_fps", "inference fps while recording", b["infer_fps"], "fps")
                rep.target("record.infer_cost", "recording cost in inference fps", cost * 100, "%", 10)
                rep.add("record.dropped", "frames the recorder dropped", str(b["recorded_dropped"]))
        finally:
            if window is not None:
                window.close()
    if "record" in parts:
        bench_record(rep)
    if "load" in parts and src:
        bench_load(rep, src, min(args.seconds, 15.0))
    if "timm" in parts:
        bench_timm(rep, args.device, args.reps)
    if names.RELEVANCE in parts:
        bench_relevance(rep, args.device, args.reps, src, min(args.seconds, 15.0))
    if "render" in parts and src:
        bench_render_command(rep, src, args.model, args.device)
    if "compare" in parts and src:
        bench_compare(rep, src, min(args.seconds, 15.0))
    if "long" in parts:
        bench_long_video(rep, args.minutes, "demo")
    if "gpu" in parts:
        bench_gpu(rep, args.reps)
    if "serve" in parts:
        from live_attention.commands.bench_parts.serve import bench_serve  # needs the web extra

        bench_serve(rep, min(args.seconds, 21.0) / 3)
    rep.add("peak_rss_mb", "peak process memory (RSS)", rss_mb()[1], "MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.data, indent=2, default=str))
    fails = [r for r in rep.rows if r[2].startswith("FAIL")]
    print(f"\n{len(fails)} target(s) missed" if fails else "\nall targets met")
    return 0


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY"))


def test_clip() -> str | None:
    """The project's 10 s test clip (640x480, 30 fps) beside a checkout, or where ``LIVE_ATTENTION_MEDIA``
    says: figures comparable from run to run. A pip install has none: see :func:`synthesized_clip`."""
    for p in (Path(__file__).resolve().parents[3] / "shared" / "media" / "tour.mp4",
              Path.cwd().parent / "shared" / "media" / "tour.mp4",
              Path(os.environ.get("LIVE_ATTENTION_MEDIA", "/nonexistent")) / "tour.mp4"):
        if p.exists():
            return str(p)
    return None


SYNTH_SECONDS, SYNTH_FPS, SYNTH_SIZE = 10.0, 30.0, (640, 480)  # the test clip's length, rate and size


def synthesized_clip(path: Path) -> Path:
    """The demo scene (moving shapes on a texture, a pure function of time) written as an H.264 clip the
    size of the test clip: what the video parts measure when no clip was given and none is at hand."""
    from live_attention.demo.synthetic import DemoScene

    w, h = SYNTH_SIZE
    scene = DemoScene(width=w, height=h, seed=0)
    with H264Writer(path, w, h, fps=SYNTH_FPS, preset="ultrafast") as out:
        for i in range(int(SYNTH_SECONDS * SYNTH_FPS)):
            out.write(cv2.cvtColor(scene.frame(i / SYNTH_FPS), cv2.COLOR_BGR2RGB), i / SYNTH_FPS)
    return path
