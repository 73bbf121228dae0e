"""``live-attention bench``: speed and memory figures, as ratios taken in one run on this machine.

Timings on a shared machine are noisy, so every target is a ratio or a per-frame figure measured
back to back in one process (medians of runs taken in alternation, so drift in load hits all sides
alike). Random-init weights: speed does not depend on them. Prints a table with PASS/FAIL against the
targets; ``--json`` also writes the figures. Parts (``--only``/``--skip``): engine, demo, flow,
renderer, pipeline, record, load, timm, relevance, render, long, gpu and serve (the last three only when
asked; gpu: the GPU targets in one table, what ``make gpu-check`` prints; serve: the browser camera loop
of ``live-attention serve``, see :mod:`live_attention.commands.bench_serve`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision

from live_attention.config import Config
from live_attention.core.engine import AttentionEngine, Keep, cpu_has_native_bf16, resolve_device
from live_attention.core.flow import attention_flow
from live_attention.core.frame_maps import compute_maps, keep_for
from live_attention.core.models import load_model
from live_attention.core.render import canvas_size, render
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Extras, Frame, MapSettings, Status, View
from live_attention.io.capture import open_source
from live_attention.io.recorder import HEADROOM, bench_recording
from live_attention.io.video import H264Writer, VideoReader
from live_attention.pipeline import batch
from live_attention.pipeline.controller import view_from_config
from live_attention.pipeline.live import LiveSession
from live_attention.pipeline.loop import FrameLoop, NullDisplay, settings_for
from live_attention.window import Window

TARGET_RUN_RATIO = 1.10  # engine.run / plain forward, same precision (torchvision)
TARGET_TIMM_RATIO = 1.15  # engine.run / stock forward of the same timm model
TARGET_AUTO_VS_FP32 = 0.5
TARGET_MAPS_MS = 5.0
TARGET_CUDA_MS = 5.0
TARGET_STEP_CUDA_MS = 1.5  # the live step, preprocess to maps on the host, ViT-B/16 fp16, H100/H200
TARGET_RELEVANCE_STEP_CUDA_MS = 6.0  # the same step in the relevance view (eager: autograd)
TARGET_RENDER_CUDA_FPS = 300.0  # the render pipeline on 720p frames, ViT-B/16, H100/H200
TARGET_BATCH_CUDA = 1.3  # batch 64 with the parts rollout and CLS views need / plain forward
TARGET_FULL_FRAME_CUDA_FPS = 60.0  # DINO ViT-S/8 on a 640x480 full frame, attention and heads views
TARGET_FULL_FRAME_CUDA_MB = 1024.0  # ... its peak CUDA memory
TARGET_GUI_FPS = 30.0
TARGET_LATENCY_RATIO = 1.5
TARGET_RENDER_MS = 8.0
TARGET_LOADED = 0.60  # model fps under one busy core / idle
TARGET_RELEVANCE_RATIO = 3.0
TARGET_RENDER_CMD = 1.25  # render tour.mp4 wall (process start included) / engine alone at its best batch


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


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


def _median_ms(fn: Callable[[], object], reps: int, sync=None) -> float:
    return _interleaved({"fn": fn}, reps, sync)["fn"]


def _rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (Linux /proc)."""
    cur = peak = 0.0
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    except OSError:
        pass
    return cur, peak


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (Linux 4.0+)
    except OSError:
        pass


class Report:
    def __init__(self, echo: bool = True) -> None:
        self.rows: list[tuple[str, str, str]] = []
        self.data: dict[str, object] = {}
        self.echo = echo  # print each row as it comes (False: the caller prints the table)

    def add(self, key: str, label: str, value: float | str, unit: str = "", target: str = "",
            ok: bool | None = None) -> None:
        self.data[key] = value
        val = f"{value:.2f} {unit}".strip() if isinstance(value, float) else f"{value} {unit}".strip()
        verdict = "" if ok is None else ("PASS " if ok else "FAIL ")
        self.rows.append((label, val, (verdict + target).strip()))
        if self.echo:
            print(f"  {label:<60} {val:>16}  {(verdict + target).strip()}", flush=True)

    def target(self, key: str, label: str, value: float, unit: str, limit: float, below: bool = True,
               applies: bool = True) -> None:
        """A figure with a target: ``value <= limit`` (or ``>=`` when not ``below``)."""
        text = f"{'<=' if below else '>='} {limit:g}{' ' + unit if unit in ('ms', 'fps', 's') else unit}"
        ok = (value <= limit if below else value >= limit) if applies else None
        self.add(key, label, value, unit, text if applies else "", ok)

    def section(self, title: str) -> None:
        if self.echo:
            print(f"\n{title}", flush=True)

    def table(self) -> str:
        """Every row so far as one table."""
        width = max([60, *(len(r[0]) for r in self.rows)])
        return "\n".join(f"  {label:<{width}} {val:>16}  {verdict}" for label, val, verdict in self.rows)


def _sync(dev: torch.device):
    return torch.cuda.synchronize if dev.type == "cuda" else None


def _random_frame(h: int = 720, w: int = 1280, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# Engine
# --------------------------------------------------------------------------------------------------


def bench_engine(rep: Report, name: str, device: str, reps: int, flow: bool) -> None:
    dev = resolve_device(device)
    sync = _sync(dev)
    rep.section(f"Engine: {name} on {dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    if name == "demo":
        eng32 = load_model("demo", device=dev, precision="fp32")
        factory = lambda: copy.deepcopy(eng32.module).float()  # noqa: E731
    else:
        factory = getattr(torchvision.models, name)
        eng32 = AttentionEngine.wrap(factory(), device=dev, precision="fp32")
    target = name != "demo"  # the demo model is too small for its ratios to mean much
    s = eng32.image_size
    x = torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(0)).to(dev)
    precisions = ["fp32"] + (["fp16"] if dev.type == "cuda" else []) + (["bf16"] if dev.type == "cpu" and cpu_has_native_bf16() else [])
    auto = AttentionEngine.wrap(factory(), device=dev, precision="auto").precision
    stock32 = factory().eval().to(dev)
    live = keep_for(eng32, MapSettings(views=("attention",)))  # the default live view
    every = keep_for(eng32, MapSettings())  # every map, as while recording
    results: dict[str, dict[str, float]] = {}
    for p in precisions:
        eng = eng32 if p == "fp32" else AttentionEngine.wrap(factory(), device=dev, precision=p)
        plain = factory().eval().to(dev, eng.dtype)
        xp = x.to(eng.dtype)
        with torch.inference_mode():
            fns = {"plain": lambda plain=plain, xp=xp: plain(xp), "run": lambda eng=eng: eng.run(x),
                   "cls": lambda eng=eng: eng.run(x, Keep.parts(rows=(0,))),
                   "live": lambda eng=eng: eng.run(x, live), "every": lambda eng=eng: eng.run(x, every)}
            if p == "fp32":
                fns["stock32"] = lambda: stock32(x)
            results[p] = _interleaved(fns, reps, sync)
    rep.add(f"{name}.stock_fp32_ms", "stock forward, fp32", results["fp32"]["stock32"], "ms")
    for p, r in results.items():
        rep.add(f"{name}.plain_{p}_ms", f"plain forward {p}", r["plain"], "ms")
        rep.add(f"{name}.run_{p}_ms", f"engine.run {p} (all attention, fp32)", r["run"], "ms")
        rep.target(f"{name}.run_ratio_{p}", f"engine.run / plain forward, {p}", r["run"] / r["plain"], "x",
                   TARGET_RUN_RATIO, applies=target)
        rep.target(f"{name}.cls_ratio_{p}", f"engine.run, class-token rows only / plain, {p}", r["cls"] / r["plain"],
                   "x", TARGET_RUN_RATIO, applies=target)
        rep.add(f"{name}.live_ratio_{p}", f"engine.run, the live attention view's parts / plain, {p}",
                r["live"] / r["plain"], "x")
        rep.add(f"{name}.every_ratio_{p}", f"engine.run, every view's parts (recording) / plain, {p}",
                r["every"] / r["plain"], "x")
    if auto in results:
        applies = target and dev.type == "cpu" and auto == "bf16"
        rep.target(f"{name}.auto_vs_stock32", f"engine.run auto ({auto}) / stock fp32",
                   results[auto]["run"] / results["fp32"]["stock32"], "x", TARGET_AUTO_VS_FP32, applies=applies)
    if dev.type == "cuda" and "fp16" in results:
        rep.target(f"{name}.cuda_fp16_ms", "engine.run fp16 on CUDA", results["fp16"]["run"], "ms", TARGET_CUDA_MS,
                   applies=target)
    eng = AttentionEngine.wrap(factory(), device=dev, precision=auto)
    frame = _random_frame()
    rep.add(f"{name}.preprocess_ms", "preprocess 1280x720 BGR frame (on the device)",
            _median_ms(lambda: eng.preprocess(frame), reps, sync), "ms")
    settings = MapSettings(query_patch=eng.num_patches // 2)
    out = eng.run(eng.preprocess(frame), keep_for(eng, settings))
    rep.target(f"{name}.maps_ms", "all per-frame maps (CLS, rollout, entropy, query, norms, top-5)",
               _median_ms(lambda: compute_maps(eng, out, settings), reps * 2, sync), "ms", TARGET_MAPS_MS, applies=target)
    bench_live_step(rep, name, eng, reps, applies=dev.type == "cuda" and name == "vit_b_16")
    if dev.type == "cuda":
        _bench_batch(rep, name, eng, factory, reps, sync)
    if flow:
        attn = eng32.run(x).attn
        t = time.perf_counter()
        attention_flow(attn[0].cpu())
        fl = time.perf_counter() - t
        rep.target(f"{name}.flow_s", f"attention flow, all {eng32.num_patches} patches", fl, "s", 3.0,
                   applies=name == "vit_b_16")
    if dev.type == "cuda":
        rep.add(f"{name}.cuda_peak_mb", "peak CUDA memory", torch.cuda.max_memory_allocated(dev) / 2**20, "MB")
    rep.add(f"{name}.peak_rss_mb", "peak process memory (RSS) so far", _rss_mb()[1], "MB")


def bench_live_step(rep: Report, name: str, eng: AttentionEngine, reps: int, applies: bool) -> None:
    """The live step (720p frame to maps on the host, through the worker's kind of runner: CUDA graphs on
    a GPU) in the attention view and in the relevance view."""
    frame = _random_frame()
    sync = _sync(eng.device)
    for mode, limit in (("attention", TARGET_STEP_CUDA_MS), ("relevance", TARGET_RELEVANCE_STEP_CUDA_MS)):
        if mode == "relevance" and not eng.has_classifier:
            continue
        runner = StepRunner(eng)
        settings = MapSettings(**settings_for(View(mode=mode)))
        ms = _median_ms(lambda r=runner, s=settings: process_frames(eng, [Frame(frame, 0, 0, "bench")], s, runner=r),
                        reps, sync)
        how = " (CUDA graph)" if runner.captures else " (eager)"
        rep.target(f"{name}.step_{mode}_ms", f"live step, {mode} view: 720p frame to maps on the host{how}", ms, "ms",
                   limit, applies=applies)
        if runner.fallback_reason:
            rep.add(f"{name}.graph_fallback", "CUDA graph capture failed", runner.fallback_reason)


def _bench_batch(rep: Report, name: str, eng: AttentionEngine, factory, reps: int, sync) -> None:
    """Batch 64 on CUDA: only what rollout and CLS views need (fp16 storage) against the plain forward,
    and the peers side by side (timm with hooks on attn_drop, Hugging Face eager with output_attentions)."""
    dev = eng.device
    plain = factory().eval().to(dev, eng.dtype)
    for b in (1, 64):
        x = torch.randn(b, 3, eng.image_size, eng.image_size, device=dev, dtype=eng.dtype)
        keep = Keep.parts(rows=(0,), fused="mean", dtype=torch.float16)
        with torch.inference_mode():
            fns = {"plain": lambda x=x: plain(x), "parts": lambda x=x, k=keep: eng.run(x, k),
                   "all": lambda x=x: eng.run(x)}
            fns.update(_peers(name, dev, x))
            r = _interleaved(fns, max(3, reps // 2), sync)
        rep.target(f"{name}.batch{b}_parts_ratio", f"batch {b}: CLS rows + fused layers (fp16) / plain",
                   r["parts"] / r["plain"], "x", TARGET_BATCH_CUDA, applies=b == 64)
        rep.add(f"{name}.batch{b}_all_ratio", f"batch {b}: all attention (fp32) / plain", r["all"] / r["plain"], "x")
        for peer in ("timm_hooks", "hf_eager"):
            if peer in r:
                rep.add(f"{name}.batch{b}_{peer}_ms", f"batch {b}: {peer.replace('_', ' ')} (ours: {r['parts']:.2f} ms)",
                        r[peer], "ms", "", r["parts"] <= r[peer])


def _peers(name: str, dev: torch.device, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """How others read ViT attention, where those libraries are installed: timm with hooks on
    ``attn_drop`` (vit-explain's way) and transformers eager with ``output_attentions``."""
    if name != "vit_b_16":
        return {}
    fns: dict[str, Callable[[], object]] = {}
    try:
        import timm

        m = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(dev, x.dtype)
        store: list = []
        for blk in m.blocks:
            blk.attn.fused_attn = False
            blk.attn.attn_drop.register_forward_hook(lambda _m, _i, o: store.append(o))
        fns["timm_hooks"] = lambda: (store.clear(), m(x))
    except ImportError:
        pass
    try:
        from transformers import ViTConfig, ViTForImageClassification

        hf = ViTForImageClassification(ViTConfig()).eval().to(dev, x.dtype)
        hf.set_attn_implementation("eager")
        fns["hf_eager"] = lambda: hf(pixel_values=x, output_attentions=True)
    except ImportError:
        pass
    return fns


# --------------------------------------------------------------------------------------------------
# Renderer, pipeline, recording
# --------------------------------------------------------------------------------------------------


def bench_renderer(rep: Report, reps: int) -> None:
    rep.section("Renderer (1280x720 frame, ViT-B/16 maps)")
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device="cpu")
    frame = _random_frame(seed=1)
    res = process_frames(eng, [Frame(frame, 0, time.monotonic_ns(), "bench")], MapSettings(query_patch=90, relevance=True))[0]
    st = Status(model=eng.describe(), capture_fps=30.0, infer_fps=10.0, latency_ms=100.0)
    ex = Extras(entropy_history=np.random.default_rng(2).random((100, 12)), entropy_times=np.linspace(0, 10, 100))
    for mode in ("attention", "rollout", "heads", "entropy", "query", "relevance", "norms"):
        v = View(mode=mode, query_patch=90)
        rep.target(f"render.{mode}_ms", f"render 720p, mode {mode}",
                   _median_ms(lambda v=v: render(frame, res, v, st, ex), reps * 2), "ms", TARGET_RENDER_MS)
    rgb = render(frame, res, View(), st, ex)
    rgba = np.zeros((720, 1280, 4), np.uint8)
    buf = np.zeros((720, 1280, 4), np.float32)

    def to_texture() -> None:
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=rgba)
        np.multiply(rgba, np.float32(1 / 255), out=buf, casting="unsafe")

    rep.add("render.texture_copy_ms", "RGB -> float RGBA texture buffer, 720p", _median_ms(to_texture, reps * 2), "ms")


def bench_pipeline(source: str, model: str, seconds: float, record: bool = False, window=None,
                   view: View | None = None, threads: int = 0) -> dict[str, float]:
    """The live pipeline on a video file through the one frame loop (in ``window`` when one is given,
    else a 60 Hz display that draws nowhere)."""
    cfg = Config()
    cfg = replace(cfg, model=replace(cfg.model, threads=threads))
    engine = load_model(model, weights="random" if model != "demo" else "imagenet", device="auto")
    session = LiveSession(cfg, engine, open_source(source, loop=True))
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


def report_pipeline(rep: Report, key: str, a: dict[str, float]) -> None:
    rep.target(f"{key}.gui_fps", "GUI loop fps", a["gui_fps"], "fps", TARGET_GUI_FPS, below=False)
    rep.add(f"{key}.infer_fps", "inference fps", a["infer_fps"], "fps")
    ratio = a["latency_median_ms"] / a["infer_ms"]
    rep.add(f"{key}.latency_median_ms", "capture-to-display latency, median", a["latency_median_ms"], "ms",
            f"<= {TARGET_LATENCY_RATIO}x inference step ({a['infer_ms']:.0f} ms)", ratio <= TARGET_LATENCY_RATIO)
    rep.add(f"{key}.latency_p95_ms", "capture-to-display latency, p95", a["latency_p95_ms"], "ms")
    rep.add(f"{key}.loop_p99_ms", "GUI loop iteration, p99 (it never waits on inference)", a["loop_p99_ms"], "ms")


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


# --------------------------------------------------------------------------------------------------
# Other model families, relevance, the render command
# --------------------------------------------------------------------------------------------------


def bench_timm(rep: Report, device: str, reps: int) -> None:
    try:
        import timm
    except ImportError:
        rep.section("timm: not installed (pip install 'live-attention[timm]'), part skipped")
        return
    dev = resolve_device(device)
    sync = _sync(dev)
    rep.section(f"timm ViTs on {dev.type}")
    for p in ("fp32", "bf16" if dev.type == "cpu" and cpu_has_native_bf16() else "fp16" if dev.type == "cuda" else None):
        if p is None:
            continue
        m = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
        stock = copy.deepcopy(m).to(dev, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p])
        eng = AttentionEngine.wrap(m, device=dev, precision=p)
        x = torch.randn(1, 3, 224, 224, device=dev)
        live = keep_for(eng, MapSettings(views=("attention",)))
        with torch.inference_mode():
            r = _interleaved({"stock": lambda stock=stock, x=x: stock(x.to(stock.pos_embed.dtype)),
                              "run": lambda eng=eng, x=x, live=live: eng.run(x, live)}, reps, sync)
        rep.target(f"timm.run_ratio_{p}", f"ViT-S/16: engine (live attention view) / stock timm forward, {p}",
                   r["run"] / r["stock"], "x", TARGET_TIMM_RATIO)
    bench_full_frame(rep, dev, reps)


def bench_full_frame(rep: Report, dev: torch.device, reps: int) -> None:
    """DINO ViT-S/8 (random weights) on the whole 640x480 frame: 60x80 patches, 4,801 tokens, in the
    attention and heads views, with the live worker's kind of runner; fps and peak memory."""
    sync = _sync(dev)
    eng = load_model("timm:vit_small_patch8_224.dino", weights="random", device=dev, input_size=480, full_frame=True)
    frame = _random_frame(480, 640)
    cuda = dev.type == "cuda"
    for mode in ("attention", "heads"):
        settings = MapSettings(**settings_for(View(mode=mode)))
        runner = StepRunner(eng)
        process_frames(eng, [Frame(frame, 0, 0, "bench")], settings, runner=runner)  # warm-up (and capture)
        _reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        base = _rss_mb()[0]
        ms = _median_ms(lambda settings=settings, runner=runner: process_frames(eng, [Frame(frame, 0, 0, "b")], settings,
                                                                                runner=runner), max(2, reps // 4), sync)
        rep.target(f"timm.s8_full_{mode}_fps", f"DINO ViT-S/8, 640x480 full frame ({eng.grid_for(480, 640)}), {mode}, "
                   f"{eng.precision}" + (" (CUDA graph)" if runner.captures else ""), 1000.0 / ms, "fps",
                   TARGET_FULL_FRAME_CUDA_FPS, below=False, applies=cuda)
        if cuda:
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
            rep.target(f"timm.s8_full_{mode}_cuda_mb", "  its peak CUDA memory", peak, "MB", TARGET_FULL_FRAME_CUDA_MB)
        else:
            rep.add(f"timm.s8_full_{mode}_rss_mb", "  its peak host memory above the model's", _rss_mb()[1] - base, "MB")


def bench_relevance(rep: Report, device: str, reps: int, source: str | None, seconds: float) -> None:
    dev = resolve_device(device)
    sync = _sync(dev)
    rep.section("Class-specific relevance (Chefer et al. 2021)")
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device=dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    r = _interleaved({"run": lambda: eng.run(x), "rel": lambda: eng.relevance(x)}, max(3, reps // 2), sync)
    rep.target(f"relevance.ratio_{eng.precision}", f"ViT-B/16: engine.relevance / engine.run, {eng.precision} on {dev.type}",
               r["rel"] / r["run"], "x", TARGET_RELEVANCE_RATIO)
    if source is None:
        return
    off = bench_pipeline(source, "demo", seconds)
    on = bench_pipeline(source, "demo", seconds, view=View(mode="relevance"))
    rep.add("relevance.pipeline_off_fps", "demo pipeline, relevance view off: inference fps", off["infer_fps"], "fps")
    rep.add("relevance.pipeline_on_fps", "demo pipeline, relevance view on: inference fps", on["infer_fps"], "fps")
    rep.target("relevance.pipeline_on_gui_fps", "  relevance on: GUI loop fps", on["gui_fps"], "fps", TARGET_GUI_FPS,
               below=False)
    rep.target("relevance.pipeline_on_latency", "  relevance on: latency / inference step",
               on["latency_median_ms"] / on["infer_ms"], "x", TARGET_LATENCY_RATIO)


def bench_render_command(rep: Report, source: str, model: str, device: str) -> None:
    """``live-attention render`` on the clip, wall time with process start, against the engine alone on
    the same frames at its best batch size."""
    rep.section(f"render {Path(source).name} with {model} (random weights)")
    with VideoReader(source) as r:
        frames = [img for img, _ in r]
    eng = load_model(model, weights="random", device=device)
    xs = [eng.preprocess(f) for f in frames[:16]]
    keep = keep_for(eng, MapSettings(views=("attention",)))  # what render's default view keeps
    sync = _sync(eng.device)

    def engine_alone() -> tuple[int, float]:
        per_frame = {b: _median_ms(lambda b=b: eng.run(torch.cat(xs[:b]), keep), 3, sync) / b for b in (1, 2, 4, 8, 16)}
        best = min(per_frame, key=per_frame.get)
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
    base = _random_frame(seed=4)
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


def bench_gpu(rep: Report, reps: int) -> bool:
    """The GPU targets in one place (what ``make gpu-check`` prints): ViT-B/16 fp16 live step in the
    attention and relevance views, the render pipeline on 720p frames, batch 64 against the plain
    forward and the peers, DINO ViT-S/8 on a 640x480 full frame. Random weights. False without CUDA."""
    if not torch.cuda.is_available():
        print("gpu: no CUDA device here, nothing to measure")
        return False
    dev = torch.device("cuda")
    rep.section(f"GPU: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    factory = torchvision.models.vit_b_16
    eng = AttentionEngine.wrap(factory(), device=dev, precision="fp16")
    rep.add("gpu.device", "device", torch.cuda.get_device_name(dev))
    bench_live_step(rep, "vit_b_16", eng, reps, applies=True)
    bench_render_frames(rep, eng)
    _bench_batch(rep, "vit_b_16", eng, factory, reps, _sync(dev))
    bench_full_frame(rep, dev, reps)
    rep.add("gpu.peak_mb", "peak CUDA memory, whole run", torch.cuda.max_memory_allocated(dev) / 2**20, "MB")
    return True


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
            base = _random_frame(480, 640, seed=3)
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


# --------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, parts: list[str]) -> int:
    """Every part asked for (see :mod:`live_attention.commands.bench_cli`, which parses the arguments)."""
    # no_grad, not set_grad_enabled: a caller's thread keeps its own mode.
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="la-bench-") as tmp:
        src = args.source or test_clip()
        if not src and {"pipeline", "load", "relevance", "render"} & set(parts):
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
        bench_engine(rep, args.model, args.device, args.reps, flow="flow" in parts)
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
    if "relevance" in parts:
        bench_relevance(rep, args.device, args.reps, src, min(args.seconds, 15.0))
    if "render" in parts and src:
        bench_render_command(rep, src, args.model, args.device)
    if "long" in parts:
        bench_long_video(rep, args.minutes, "demo")
    if "gpu" in parts:
        bench_gpu(rep, args.reps)
    if "serve" in parts:
        from live_attention.commands.bench_serve import bench_serve  # needs the web extra

        bench_serve(rep, min(args.seconds, 21.0) / 3)
    rep.add("peak_rss_mb", "peak process memory (RSS)", _rss_mb()[1], "MB")
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
