"""Drawing figures (part renderer): the HUD and maps over a 720p frame in each mode, the texture copy,
and the map's smoothing over time."""

from __future__ import annotations

import time

import cv2
import numpy as np
import torchvision

from live_attention.commands.bench_parts.measure import Report, median_ms, random_frame
from live_attention.core.engine import AttentionEngine
from live_attention.core.step import process_frames
from live_attention.datatypes import Extras, Frame, MapSettings, Status, View
from live_attention.modes import all_modes
from live_attention.ui.frame import render

TARGET_RENDER_MS = 8.0
TARGET_SMOOTH_MS = 2.0  # the map's smoothing over time per 640x480 frame (motion estimate + filter)


def bench_renderer(rep: Report, reps: int) -> None:
    rep.section("Renderer (1280x720 frame, ViT-B/16 maps)")
    eng = AttentionEngine.wrap(torchvision.models.vit_b_16(), device="cpu")
    frame = random_frame(seed=1)
    res = process_frames(eng, [Frame(frame, 0, time.monotonic_ns(), "bench")], MapSettings(query_patch=90, relevance=True))[0]
    st = Status(model=eng.describe(), capture_fps=30.0, infer_fps=10.0, latency_ms=100.0)
    ex = Extras(entropy_history=np.random.default_rng(2).random((100, 12)), entropy_times=np.linspace(0, 10, 100))
    for mode in [m.name for m in all_modes() if not m.later]:  # flow is computed after the frame
        v = View(mode=mode, query_patch=90)
        rep.target(f"render.{mode}_ms", f"render 720p, mode {mode}",
                   median_ms(lambda v=v: render(frame, res, v, st, ex), reps * 2), "ms", TARGET_RENDER_MS)
    rgb = render(frame, res, View(), st, ex)
    rgba = np.zeros((720, 1280, 4), np.uint8)
    buf = np.zeros((720, 1280, 4), np.float32)

    def to_texture() -> None:
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=rgba)
        np.multiply(rgba, np.float32(1 / 255), out=buf, casting="unsafe")

    rep.add("render.texture_copy_ms", "RGB -> float RGBA texture buffer, 720p", median_ms(to_texture, reps * 2), "ms")
    bench_smoothing(rep, reps)


def bench_smoothing(rep: Report, reps: int) -> None:
    """The map's smoothing over time (``--smooth on``): motion estimate and filter, per 640x480 frame."""
    from live_attention.core.temporal import MotionEstimator, TemporalFilter
    from live_attention.demo.synthetic import DemoScene

    scene = DemoScene(640, 480, seed=0)
    frames = [scene.frame(1.0 + i / 10) for i in range(2)]
    for label, box, grid, target in (("centre crop, 14x14 patches", (80, 0, 560, 480), (14, 14), True),
                                     ("full frame, 60x80 patches", (0, 0, 640, 480), (60, 80), False)):
        est, filt = MotionEstimator(), TemporalFilter(grid)
        raw = np.random.default_rng(0).random(grid[0] * grid[1]).astype(np.float32)
        state = {"i": 0}

        def step(est=est, filt=filt, box=box, grid=grid, raw=raw, state=state) -> None:
            state["i"] += 1
            motion = est.step(frames[state["i"] % 2], box, grid)
            filt.step(raw, motion, 0.1)

        key = "smooth." + ("crop_ms" if target else "full_frame_ms")
        ms = median_ms(step, reps * 5)
        if target:
            rep.target(key, f"smoothing over time, 640x480, {label}", ms, "ms", TARGET_SMOOTH_MS)
        else:
            rep.add(key, f"smoothing over time, 640x480, {label}", ms, "ms")
