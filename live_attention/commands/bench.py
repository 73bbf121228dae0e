"""``live-attention bench``: speed and memory figures, as ratios taken in one run on this machine.

Timings on a shared machine are noisy, so every target is a ratio or a per-frame figure measured
back to back in one process (median of repeated runs). Random-init weights: speed does not depend on
them. Prints a table; ``--json`` also writes the figures.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from live_attention.commands.args import Parser
from live_attention.config import Config
from live_attention.core.engine import AttentionEngine, cpu_has_native_bf16, resolve_device
from live_attention.core.flow import attention_flow
from live_attention.core.frame_maps import compute_maps, keep_for
from live_attention.core.models import load_model
from live_attention.core.render import render
from live_attention.core.step import process_frames
from live_attention.datatypes import Extras, Frame, MapSettings, Status, View
from live_attention.io.capture import open_source
from live_attention.io.recorder import bench_recording
from live_attention.pipeline.controller import view_from_config
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop, NullDisplay
from live_attention.window import Window

TARGET_RUN_RATIO = 1.10
TARGET_AUTO_VS_FP32 = 0.5
TARGET_MAPS_MS = 5.0
TARGET_CUDA_MS = 5.0
TARGET_GUI_FPS = 30.0
TARGET_LATENCY_RATIO = 1.5
TARGET_RENDER_MS = 8.0


def _median_ms(fn: Callable[[], object], reps: int, sync: Callable[[], None] | None = None) -> float:
    return _interleaved({"fn": fn}, reps, sync)["fn"]


def _interleaved(fns: dict[str, Callable[[], object]], reps: int, sync=None) -> dict[str, float]:
    """Median ms of each function, run in alternation so drift in machine load hits all alike."""
    for fn in fns.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            if sync:
                sync()
            t = time.perf_counter()
            fn()
            if sync:
                sync()
            times[k].append((time.perf_counter() - t) * 1000.0)
    return {k: statistics.median(v) for k, v in times.items()}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.data: dict[str, object] = {}

    def add(self, key: str, label: str, value: float | str, unit: str = "", target: str = "",
            ok: bool | None = None) -> None:
        self.data[key] = value
        val = f"{value:.2f} {unit}".strip() if isinstance(value, float) else f"{value} {unit}".strip()
        verdict = "" if ok is None else ("PASS " if ok else "FAIL ")
        self.rows.append((label, val, (verdict + target).strip()))
        print(f"  {label:<52} {val:>16}  {(verdict + target).strip()}", flush=True)

    def section(self, title: str) -> None:
        print(f"\n{title}", flush=True)


def bench_engine(rep: Report, name: str, device: str, reps: int, flow: bool) -> None:
    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    rep.section(f"Engine: {name} on {dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    if name == "demo":
        eng32 = load_model("demo", device=dev, precision="fp32")
        module_factory = lambda: copy.deepcopy(eng32.module).float()  # noqa: E731
    else:
        builder = getattr(torchvision.models, name)
        module_factory = builder
        eng32 = AttentionEngine.wrap(builder(), device=dev, precision="fp32")
    s = eng32.image_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    precisions = ["fp32"]
    if dev.type == "cuda":
        precisions.append("fp16")
    if dev.type == "cpu" and cpu_has_native_bf16():
        precisions.append("bf16")
    auto = AttentionEngine.wrap(module_factory(), device=dev, precision="auto").precision
    stock32 = module_factory().eval().to(dev)
    xd = x.to(dev)

    def stock(m, xx):
        with torch.inference_mode():
            return m(xx)

    results: dict[str, dict[str, float]] = {}
    for p in precisions:
        eng = eng32 if p == "fp32" else AttentionEngine.wrap(module_factory(), device=dev, precision=p)
        plain = module_factory().eval().to(dev, eng.dtype)
        xp = xd.to(eng.dtype)
        fns = {"plain": lambda plain=plain, xp=xp: stock(plain, xp), "run": lambda eng=eng: eng.run(x)}
        if p == "fp32":
            fns["stock32"] = lambda: stock(stock32, xd)
        results[p] = _interleaved(fns, reps, sync)
    r32 = results["fp32"]
    rep.add(f"{name}.stock_fp32_ms", "stock torchvision forward, fp32", r32["stock32"], "ms")
    for p, r in results.items():
        ratio = r["run"] / r["plain"]
        rep.add(f"{name}.run_{p}_ms", f"engine.run {p}", r["run"], "ms")
        rep.add(f"{name}.plain_{p}_ms", f"plain forward {p}", r["plain"], "ms")
        rep.add(f"{name}.run_ratio_{p}", f"engine.run / plain forward, {p}", ratio, "x",
                f"<= {TARGET_RUN_RATIO}x", ratio <= TARGET_RUN_RATIO if name != "demo" else None)
    if auto in results:
        ratio = results[auto]["run"] / r32["stock32"]
        is_target = name != "demo" and dev.type == "cpu" and auto == "bf16"
        rep.add(f"{name}.auto_vs_stock32", f"engine.run auto ({auto}) / stock fp32", ratio, "x",
                f"<= {TARGET_AUTO_VS_FP32}x" if is_target else "", ratio <= TARGET_AUTO_VS_FP32 if is_target else None)
    if dev.type == "cuda" and "fp16" in results:
        ms = results["fp16"]["run"]
        rep.add(f"{name}.cuda_fp16_ms", "engine.run fp16 on CUDA", ms, "ms", f"<= {TARGET_CUDA_MS} ms",
                ms <= TARGET_CUDA_MS if name != "demo" else None)

    eng = AttentionEngine.wrap(module_factory(), device=dev, precision=auto)
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    rep.add(f"{name}.preprocess_ms", "preprocess 1280x720 BGR frame", _median_ms(lambda: eng.preprocess(frame), reps), "ms")
    settings = MapSettings(query_patch=eng.num_patches // 2)
    out = eng.run(x, keep_for(eng, settings))
    ms = _median_ms(lambda: compute_maps(eng, out, settings), reps * 2, sync=sync)
    rep.add(f"{name}.maps_ms", "all per-frame maps (CLS, rollout, entropy, query, top-5)", ms, "ms",
            f"<= {TARGET_MAPS_MS} ms", ms <= TARGET_MAPS_MS if name != "demo" else None)
    if flow:
        attn = eng.run(x).attn
        t = time.perf_counter()
        attention_flow(attn[0].cpu())
        fl = time.perf_counter() - t
        rep.add(f"{name}.flow_s", f"attention flow, all {eng.num_patches} patches", fl, "s",
                "<= 3 s" if name == "vit_b_16" else "", fl <= 3.0 if name == "vit_b_16" else None)
    if dev.type == "cuda":
        rep.add(f"{name}.cuda_peak_mb", "peak CUDA memory", torch.cuda.max_memory_allocated(dev) / 2**20, "MB")
    rep.add(f"{name}.peak_rss_mb", "peak process memory (RSS) so far", _peak_rss_mb(), "MB")


def bench_render(rep: Report, reps: int) -> None:
    rep.section("Renderer (1280x720 frame, ViT-B/16 maps)")
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device="cpu")
    frame = np.random.default_rng(1).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    res = process_frames(eng, [Frame(frame, 0, time.monotonic_ns(), "bench")], MapSettings(query_patch=90))[0]
    st = Status(model=eng.describe(), capture_fps=30.0, infer_fps=10.0, latency_ms=100.0)
    hist = np.random.default_rng(2).random((100, 12))
    ex = Extras(entropy_history=hist, entropy_times=np.linspace(0, 10, 100))
    worst = 0.0
    for mode in ("attention", "rollout", "heads", "entropy", "query"):
        v = View(mode=mode, query_patch=90)
        ms = _median_ms(lambda v=v: render(frame, res, v, st, ex), reps * 2)
        worst = max(worst, ms)
        rep.add(f"render.{mode}_ms", f"render 720p, mode {mode}", ms, "ms", f"<= {TARGET_RENDER_MS} ms",
                ms <= TARGET_RENDER_MS)
    rgb = render(frame, res, View(), st, ex)
    rgba = np.zeros((720, 1280, 4), np.uint8)
    buf = np.zeros((720, 1280, 4), np.float32)

    def to_texture():
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=rgba)
        np.multiply(rgba, np.float32(1 / 255), out=buf, casting="unsafe")

    rep.add("render.texture_copy_ms", "RGB -> float RGBA texture buffer, 720p", _median_ms(to_texture, reps * 2), "ms")


def bench_pipeline(source: str, model: str, seconds: float, record: bool, window=None) -> dict[str, float]:
    """The live pipeline on a video file through the one frame loop (in ``window`` when one is given,
    else a 60 Hz display that draws nowhere)."""
    cfg = Config()
    engine = load_model(model, weights="random" if model != "demo" else "imagenet", device="auto")
    session = LiveSession(cfg, engine, open_source(source, loop=True))
    display = window if window is not None else NullDisplay()
    loop = FrameLoop(session, display, view_from_config(cfg))
    session.start(window=window is not None)
    try:
        if record:
            session.start_recording(tempfile.mkdtemp(prefix="la-bench-"), lambda: loop.view)
        t0 = time.monotonic()
        while session.worker.processed < 2 and time.monotonic() < t0 + 60:  # let the model warm up
            loop.step()
        stats = loop.stats
        stats.iteration_ms.clear(), stats.latency_ms.clear(), stats.render_ms.clear()
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


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="live-attention bench",
        description="Speed and memory figures, measured in one run on this machine, with PASS/FAIL against "
        "the targets: the engine against the stock torchvision forward, per-frame maps, attention flow, "
        "the renderer, the live pipeline on a video (GUI fps, inference fps, latency) and recording.",
    )
    p.add_argument("--model", default="vit_b_16", help="torchvision ViT to time (default vit_b_16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per figure (medians)")
    p.add_argument("--source", default=None,
                   help="video for the pipeline figures (default: the project's test clip, ../shared/media/tour.mp4)")
    p.add_argument("--seconds", type=float, default=20.0, help="pipeline run length")
    p.add_argument("--skip", action="append", default=[], choices=("engine", "demo", "flow", "render", "pipeline", "record"),
                   help="leave a part out; repeat for several (--skip pipeline --skip record)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--gui-fps", type=float, default=60.0, help="the window's frame-rate cap (window.max_fps)")
    args = p.parse_args(argv)
    torch.set_grad_enabled(False)
    rep = Report()
    print(f"live-attention bench: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    if "engine" not in args.skip:
        bench_engine(rep, args.model, args.device, args.reps, flow="flow" not in args.skip)
    if "demo" not in args.skip:
        bench_engine(rep, "demo", args.device, args.reps, flow=False)
    if "render" not in args.skip:
        bench_render(rep, args.reps)
    if "pipeline" not in args.skip:
        src = args.source or _default_clip()
        if src is None:
            print("\n(pipeline skipped: no --source and shared/media/tour.mp4 not found)")
        else:
            rep.section(f"Live pipeline on {Path(src).name} with {args.model} (random weights), {args.seconds:.0f} s"
                        + ("" if _has_display() else " - no display: texture loop without a window"))
            window = None
            if _has_display():
                # One window for both runs: Dear PyGui cannot make a second context in a process.
                window = Window("live-attention bench", 1280, 800, vsync=False, max_fps=args.gui_fps)
            a = bench_pipeline(src, args.model, args.seconds, record=False, window=window)
            rep.add("pipeline.gui_fps", "GUI loop fps", a["gui_fps"], "fps", f">= {TARGET_GUI_FPS}",
                    a["gui_fps"] >= TARGET_GUI_FPS)
            rep.add("pipeline.infer_fps", "inference fps", a["infer_fps"], "fps")
            ratio = a["latency_median_ms"] / a["infer_ms"]
            rep.add("pipeline.latency_median_ms", "capture-to-display latency, median", a["latency_median_ms"], "ms",
                    f"<= {TARGET_LATENCY_RATIO}x inference step ({a['infer_ms']:.0f} ms)", ratio <= TARGET_LATENCY_RATIO)
            rep.add("pipeline.latency_p95_ms", "capture-to-display latency, p95", a["latency_p95_ms"], "ms")
            rep.add("pipeline.loop_p99_ms", "GUI loop iteration, p99 (it never waits on inference)", a["loop_p99_ms"], "ms")
            rep.add("pipeline.loop_max_ms", "GUI loop iteration, longest", a["loop_max_ms"], "ms")
            if "record" not in args.skip:
                b = bench_pipeline(src, args.model, args.seconds, record=True, window=window)
                cost = 1.0 - b["infer_fps"] / a["infer_fps"]
                rep.add("record.gui_fps", "GUI loop fps while recording", b["gui_fps"], "fps")
                rep.add("record.infer_fps", "inference fps while recording", b["infer_fps"], "fps")
                rep.add("record.infer_cost", "recording cost in inference fps", cost * 100, "%", "<= 10 %", cost <= 0.10)
                rep.add("record.dropped", "frames the recorder dropped", str(b["recorded_dropped"]))
            if window is not None:
                window.close()
    if "record" not in args.skip:
        rep.section("Recording")
        for k, v in bench_recording().items():
            rep.add(f"record.{k}", k.replace("_", " "), float(v) if isinstance(v, int | float) else str(v))
    rep.add("peak_rss_mb", "peak process memory (RSS)", _peak_rss_mb(), "MB")
    if args.json:
        Path(args.json).write_text(json.dumps(rep.data, indent=2, default=str))
    fails = [r for r in rep.rows if r[2].startswith("FAIL")]
    print(f"\n{len(fails)} target(s) missed" if fails else "\nall targets met")
    return 0


def _has_display() -> bool:
    return bool(os.environ.get("DISPLAY"))


def _default_clip() -> str | None:
    here = Path(__file__).resolve().parents[2] / "shared" / "media" / "tour.mp4"
    for p in (here, Path.cwd().parent / "shared" / "media" / "tour.mp4"):
        if p.exists():
            return str(p)
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
