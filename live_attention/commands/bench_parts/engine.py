"""The engine's figures (parts engine, demo, flow, timm, relevance): ``engine.run`` against the plain
forward at each precision, the live step, batches and the peers on CUDA, timm ViTs, a full frame at patch 8,
and relevance against a plain run."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from live_attention import names
from live_attention.commands.bench_parts.live import TARGET_GUI_FPS, TARGET_LATENCY_RATIO, bench_pipeline
from live_attention.commands.bench_parts.measure import (
    Report,
    Sync,
    Timed,
    interleaved,
    median_ms,
    random_frame,
    reset_peak_rss,
    rss_mb,
    sync_of,
)
from live_attention.core.device import cpu_has_native_bf16, resolve_device
from live_attention.core.engine import AttentionEngine, Keep
from live_attention.core.flow import attention_flow
from live_attention.core.frame_maps import compute_maps, keep_for
from live_attention.core.models import load_model
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings, View
from live_attention.modes import settings_for

TARGET_RUN_RATIO = 1.10  # engine.run / plain forward, same precision (torchvision)
TARGET_TIMM_RATIO = 1.15  # engine.run / stock forward of the same timm model
TARGET_AUTO_VS_FP32 = 0.5
TARGET_MAPS_MS = 5.0
TARGET_CUDA_MS = 5.0
TARGET_STEP_CUDA_MS = 1.5  # the live step, preprocess to maps on the host, ViT-B/16 fp16, H100/H200
TARGET_RELEVANCE_STEP_CUDA_MS = 6.0  # the same step in the relevance view (eager: autograd)
TARGET_BATCH_CUDA = 1.3  # batch 64 with the parts rollout and CLS views need / plain forward
TARGET_FULL_FRAME_CUDA_FPS = 60.0  # DINO ViT-S/8 on a 640x480 full frame, attention and heads views
TARGET_FULL_FRAME_CUDA_MB = 1024.0  # ... its peak CUDA memory
TARGET_RELEVANCE_RATIO = 3.0


def bench_engine(rep: Report, name: str, device: str, reps: int, flow: bool) -> None:
    dev = resolve_device(device)
    sync = sync_of(dev)
    rep.section(f"Engine: {name} on {dev.type}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""))
    factory: Callable[[], nn.Module]  # a fresh model with the same weights for each precision
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
    live = keep_for(eng32, MapSettings(**settings_for(View())))  # the default live view
    every = keep_for(eng32, MapSettings())  # every map, as while recording
    results: dict[str, dict[str, float]] = {}
    for p in precisions:
        eng = eng32 if p == "fp32" else AttentionEngine.wrap(factory(), device=dev, precision=p)
        plain = factory().eval().to(dev, eng.dtype)
        xp = x.to(eng.dtype)
        with torch.inference_mode():
            fns: dict[str, Timed] = {"plain": lambda plain=plain, xp=xp: plain(xp), "run": lambda eng=eng: eng.run(x),
                   "cls": lambda eng=eng: eng.run(x, Keep.parts(rows=(0,))),
                   "live": lambda eng=eng: eng.run(x, live), "every": lambda eng=eng: eng.run(x, every)}
            if p == "fp32":
                fns["stock32"] = lambda: stock32(x)
            results[p] = interleaved(fns, reps, sync)
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
    frame = random_frame()
    rep.add(f"{name}.preprocess_ms", "preprocess 1280x720 BGR frame (on the device)",
            median_ms(lambda: eng.preprocess(frame), reps, sync), "ms")
    settings = MapSettings(query_patch=eng.num_patches // 2)
    out = eng.run(eng.preprocess(frame), keep_for(eng, settings))
    rep.target(f"{name}.maps_ms", "all per-frame maps (CLS, rollout, entropy, query, norms, top-5)",
               median_ms(lambda: compute_maps(eng, out, settings), reps * 2, sync), "ms", TARGET_MAPS_MS, applies=target)
    bench_live_step(rep, name, eng, reps, applies=dev.type == "cuda" and name == "vit_b_16")
    if dev.type == "cuda":
        bench_batch(rep, name, eng, factory, reps, sync)
    if flow:
        attn = eng32.run(x).attn
        assert attn is not None  # run() without a Keep keeps every layer's whole attention
        t = time.perf_counter()
        attention_flow(attn[0].cpu())
        fl = time.perf_counter() - t
        rep.target(f"{name}.flow_s", f"attention flow, all {eng32.num_patches} patches", fl, "s", 3.0,
                   applies=name == "vit_b_16")
    if dev.type == "cuda":
        rep.add(f"{name}.cuda_peak_mb", "peak CUDA memory", torch.cuda.max_memory_allocated(dev) / 2**20, "MB")
    rep.add(f"{name}.peak_rss_mb", "peak process memory (RSS) so far", rss_mb()[1], "MB")


def bench_live_step(rep: Report, name: str, eng: AttentionEngine, reps: int, applies: bool) -> None:
    """The live step (720p frame to maps on the host, through the worker's kind of runner: CUDA graphs on
    a GPU) in the attention view and in the relevance view."""
    frame = random_frame()
    sync = sync_of(eng.device)
    for mode, limit in ((names.ATTENTION, TARGET_STEP_CUDA_MS), (names.RELEVANCE, TARGET_RELEVANCE_STEP_CUDA_MS)):
        if mode == names.RELEVANCE and not eng.has_classifier:
            continue
        runner = StepRunner(eng)
        settings = MapSettings(**settings_for(View(mode=mode)))
        ms = median_ms(lambda r=runner, s=settings: process_frames(eng, [Frame(frame, 0, 0, "bench")], s, runner=r),
                        reps, sync)
        how = " (CUDA graph)" if runner.captures else " (eager)"
        rep.target(f"{name}.step_{mode}_ms", f"live step, {mode} view: 720p frame to maps on the host{how}", ms, "ms",
                   limit, applies=applies)
        if runner.fallback_reason:
            rep.add(f"{name}.graph_fallback", "CUDA graph capture failed", runner.fallback_reason)


def bench_batch(rep: Report, name: str, eng: AttentionEngine, factory: Callable[[], nn.Module], reps: int,
                sync: Sync) -> None:
    """Batch 64 on CUDA: only what rollout and CLS views need (fp16 storage) against the plain forward,
    and the peers side by side (timm with hooks on attn_drop, Hugging Face eager with output_attentions)."""
    dev = eng.device
    plain = factory().eval().to(dev, eng.dtype)
    for b in (1, 64):
        x = torch.randn(b, 3, eng.image_size, eng.image_size, device=dev, dtype=eng.dtype)
        keep = Keep.parts(rows=(0,), fused="mean", dtype=torch.float16)
        with torch.inference_mode():
            fns: dict[str, Timed] = {"plain": lambda x=x: plain(x), "parts": lambda x=x, k=keep: eng.run(x, k),
                   "all": lambda x=x: eng.run(x)}
            fns.update(_peers(name, dev, x))
            r = interleaved(fns, max(3, reps // 2), sync)
        rep.target(f"{name}.batch{b}_parts_ratio", f"batch {b}: CLS rows + fused layers (fp16) / plain",
                   r["parts"] / r["plain"], "x", TARGET_BATCH_CUDA, applies=b == 64)
        rep.add(f"{name}.batch{b}_all_ratio", f"batch {b}: all attention (fp32) / plain", r["all"] / r["plain"], "x")
        for peer in ("timm_hooks", "hf_eager"):
            if peer in r:
                rep.add(f"{name}.batch{b}_{peer}_ms", f"batch {b}: {peer.replace('_', ' ')} (ours: {r['parts']:.2f} ms)",
                        r[peer], "ms", "", r["parts"] <= r[peer])


def _peers(name: str, dev: torch.device, x: torch.Tensor) -> dict[str, Timed]:
    """How others read ViT attention, where those libraries are installed: timm with hooks on
    ``attn_drop`` (vit-explain's way) and transformers eager with ``output_attentions``."""
    if name != "vit_b_16":
        return {}
    fns: dict[str, Timed] = {}
    try:
        import timm

        # A timm VisionTransformer: its blocks and their attention are read by name (nn.Module types them
        # only as Tensor | Module).
        m: Any = timm.create_model("vit_base_patch16_224", pretrained=False).eval().to(dev, x.dtype)
        store: list[torch.Tensor] = []
        for blk in m.blocks:
            blk.attn.fused_attn = False
            blk.attn.attn_drop.register_forward_hook(lambda _m, _i, o: store.append(o))

        def timm_hooks() -> object:
            store.clear()
            return m(x)

        fns["timm_hooks"] = timm_hooks
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


def bench_timm(rep: Report, device: str, reps: int) -> None:
    try:
        import timm
    except ImportError:
        rep.section("timm: not installed (pip install 'live-attention[timm]'), part skipped")
        return
    dev = resolve_device(device)
    sync = sync_of(dev)
    rep.section(f"timm ViTs on {dev.type}")
    for p in ("fp32", "bf16" if dev.type == "cpu" and cpu_has_native_bf16() else "fp16" if dev.type == "cuda" else None):
        if p is None:
            continue
        m = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
        stock = copy.deepcopy(m).to(dev, {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[p])
        eng = AttentionEngine.wrap(m, device=dev, precision=p)
        x = torch.randn(1, 3, 224, 224, device=dev)
        live = keep_for(eng, MapSettings(**settings_for(View())))
        with torch.inference_mode():
            r = interleaved({"stock": lambda stock=stock, x=x: stock(x.to(stock.pos_embed.dtype)),
                              "run": lambda eng=eng, x=x, live=live: eng.run(x, live)}, reps, sync)
        rep.target(f"timm.run_ratio_{p}", f"ViT-S/16: engine (live attention view) / stock timm forward, {p}",
                   r["run"] / r["stock"], "x", TARGET_TIMM_RATIO)
    bench_full_frame(rep, dev, reps)


def bench_full_frame(rep: Report, dev: torch.device, reps: int) -> None:
    """DINO ViT-S/8 (random weights) on the whole 640x480 frame: 60x80 patches, 4,801 tokens, in the
    attention and heads views, with the live worker's kind of runner; fps and peak memory."""
    sync = sync_of(dev)
    eng = load_model("timm:vit_small_patch8_224.dino", weights="random", device=dev, input_size=480, full_frame=True)
    frame = random_frame(480, 640)
    cuda = dev.type == "cuda"
    for mode in (names.ATTENTION, names.HEADS):
        settings = MapSettings(**settings_for(View(mode=mode)))
        runner = StepRunner(eng)
        process_frames(eng, [Frame(frame, 0, 0, "bench")], settings, runner=runner)  # warm-up (and capture)
        reset_peak_rss()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        base = rss_mb()[0]
        ms = median_ms(lambda settings=settings, runner=runner: process_frames(eng, [Frame(frame, 0, 0, "b")], settings,
                                                                                runner=runner), max(2, reps // 4), sync)
        rep.target(f"timm.s8_full_{mode}_fps", f"DINO ViT-S/8, 640x480 full frame ({eng.grid_for(480, 640)}), {mode}, "
                   f"{eng.precision}" + (" (CUDA graph)" if runner.captures else ""), 1000.0 / ms, "fps",
                   TARGET_FULL_FRAME_CUDA_FPS, below=False, applies=cuda)
        if cuda:
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
            rep.target(f"timm.s8_full_{mode}_cuda_mb", "  its peak CUDA memory", peak, "MB", TARGET_FULL_FRAME_CUDA_MB)
        else:
            rep.add(f"timm.s8_full_{mode}rss_mb", "  its peak host memory above the model's", rss_mb()[1] - base, "MB")


def bench_relevance(rep: Report, device: str, reps: int, source: str | None, seconds: float) -> None:
    dev = resolve_device(device)
    sync = sync_of(dev)
    rep.section("Class-specific relevance (Chefer et al. 2021)")
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device=dev)
    x = torch.randn(1, 3, 224, 224, device=dev)
    r = interleaved({"run": lambda: eng.run(x), "rel": lambda: eng.relevance(x)}, max(3, reps // 2), sync)
    rep.target(f"relevance.ratio_{eng.precision}", f"ViT-B/16: engine.relevance / engine.run, {eng.precision} on {dev.type}",
               r["rel"] / r["run"], "x", TARGET_RELEVANCE_RATIO)
    if source is None:
        return
    off = bench_pipeline(source, "demo", seconds)
    on = bench_pipeline(source, "demo", seconds, view=View(mode=names.RELEVANCE))
    rep.add("relevance.pipeline_off_fps", "demo pipeline, relevance view off: inference fps", off["infer_fps"], "fps")
    rep.add("relevance.pipeline_on_fps", "demo pipeline, relevance view on: inference fps", on["infer_fps"], "fps")
    rep.target("relevance.pipeline_on_gui_fps", "  relevance on: GUI loop fps", on["gui_fps"], "fps", TARGET_GUI_FPS,
               below=False)
    rep.target("relevance.pipeline_on_latency", "  relevance on: latency / inference step",
               on["latency_median_ms"] / on["infer_ms"], "x", TARGET_LATENCY_RATIO)
