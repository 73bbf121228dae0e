"""The GPU targets in one table (part gpu, what ``make gpu-check`` prints)."""

from __future__ import annotations

import torch
import torchvision

from live_attention.commands.bench_parts.engine import bench_batch, bench_full_frame, bench_live_step
from live_attention.commands.bench_parts.measure import Report, sync_of
from live_attention.commands.bench_parts.offline import bench_render_frames
from live_attention.core.engine import AttentionEngine


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
    bench_batch(rep, "vit_b_16", eng, factory, reps, sync_of(dev))
    bench_full_frame(rep, dev, reps)
    rep.add("gpu.peak_mb", "peak CUDA memory, whole run", torch.cuda.max_memory_allocated(dev) / 2**20, "MB")
    return True
