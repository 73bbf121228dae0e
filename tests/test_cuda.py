"""The CUDA path on a real GPU: captured graphs, device preprocessing, the batched render, relevance.

Marked ``cuda`` and skipped where no GPU is present (the one skip the suite allows: conftest.py);
``make gpu-check`` runs them and then prints the GPU figures. They need torch, torchvision, timm,
transformers and OpenCV, not PyAV or Dear PyGui (pictures are compared in memory, stills on disk are
PNG). Tolerances, and why:

* replay against eager, same GPU, same fp16 model (weights sharpened: layers' maps differ by 0.1 to
  0.8, so a wrong layer, fusion or patch cannot pass): a graph keeps every layer's entropies, so it
  computes each layer's softmax explicitly where the eager step uses the fused attention kernel for
  layers it does not keep; fp16 probabilities (2^-11 relative) through a few layers differ by up to
  3.5e-4 on the CPU's fp16. Bound: 5e-3 absolute on maps in [0, 1], 1 % relative on token norms;
* GPU fp16 against CPU fp32: the demo model on its own kind of scenes. On the CPU, fp16 against fp32
  moved rendered pixels by 0.002-0.015 grey levels on average (max 3) and relevance by 0.2 % of its
  peak; the GPU adds its own resize and attention kernels, so the bounds leave ~10x room while a wrong
  map (another layer, another class, a shifted grid) moves pictures by tens of levels and relevance by
  its whole range.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from live_attention.core.engine import AttentionEngine
from live_attention.core.frame_maps import keep_for, maps_tensor, selection_for
from live_attention.core.models import load_model
from live_attention.core.preprocess import FrameBatch
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings, Status, View
from live_attention.demo.synthetic import DemoScene
from live_attention.modes import settings_for
from live_attention.offline import batch
from live_attention.ui.controller import Controller
from tests.conftest import tiny_vit
from tests.tiny_families import FAMILIES, GRAPHED_MODES

pytestmark = [pytest.mark.cuda, pytest.mark.timeout(600)]

PROB_ATOL = 5e-3  # maps in [0, 1], fp16 replay against fp16 eager (see the module docstring)
MAPS = ("cls", "entropy", "prefix_share", "rollout", "patch_entropy", "query")


def smooth_frames(n: int, h: int = 48, w: int = 64, seed: int = 0) -> list[Frame]:
    """BGR frames with structure at every scale (a resize on another device differs by rounding only)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        out.append(Frame(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), i, i, "t"))
    return out


def close_results(a, b, atol: float = PROB_ATOL) -> None:
    for name in MAPS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, atol=atol, rtol=0, err_msg=name)
    if a.token_norm is not None:
        np.testing.assert_allclose(a.token_norm, b.token_norm, rtol=1e-2, atol=1e-2, err_msg="token_norm")
    if a.topk:
        np.testing.assert_allclose([p for _, p in a.topk], [p for _, p in b.topk], atol=PROB_ATOL)
    assert a.problem is None and b.problem is None and a.query_patch == b.query_patch


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("live_attention")]


def cuda_engine(module, precision: str = "fp16") -> AttentionEngine:
    return AttentionEngine.wrap(module, device="cuda", precision=precision)


# --------------------------------------------------------------------------------------------------
# Capture, replay, navigation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_captures_its_live_settings_and_replays_what_eager_computes(family, caplog):
    eng = cuda_engine(FAMILIES[family]())
    runner = StepRunner(eng)  # real CUDA graphs
    eager = StepRunner(eng, graphs=False)
    for mode in GRAPHED_MODES:
        settings = MapSettings(**settings_for(View(mode=mode, query_patch=3)))
        for seed in range(3):  # a capture, then replays on new frames
            frames = smooth_frames(2, seed=seed)
            out, _ = runner.frames([f.image for f in frames], settings)
            assert out.graphed, f"{mode}: {runner.fallback_reason}"
            for a, b in zip(process_frames(eng, frames, settings, runner=runner),
                            process_frames(eng, frames, settings, runner=eager), strict=True):
                close_results(a, b)
    assert runner.fallback_reason is None and runner.captures == 5  # the heads view shares the attention view's
    assert not warnings(caplog)


def test_navigating_layers_heads_fusions_patches_and_animating_never_captures_again():
    eng = cuda_engine(tiny_vit(layers=4, heads=3, hidden=24))
    runner = StepRunner(eng)
    eager = StepRunner(eng, graphs=False)
    ctl = Controller(eng.num_layers, eng.num_heads, View())
    (frame,) = smooth_frames(1)

    def show() -> None:
        settings = MapSettings(**settings_for(ctl.view))
        (got,) = process_frames(eng, [frame], settings, runner=runner)
        (want,) = process_frames(eng, [frame], settings, runner=eager)
        close_results(got, want)

    for key, mode in (("1", "attention"), ("3", "heads"), ("2", "rollout"), ("4", "entropy"), ("5", "query"),
                      ("8", "norms")):
        ctl.press(key)
        before = runner.captures
        show()
        for k in ["down"] * eng.num_layers + ["right"] * (eng.num_heads + 1) + ["f"] * 3:
            ctl.press(k)
            show()
        for _ in range(eng.num_layers):
            ctl.step_animation()
            show()
        if mode == "query":
            for patch in (0, 15, 7):
                ctl.select_patch(patch)
                show()
        assert runner.captures - before == (0 if mode == "heads" else 1), mode
    assert runner.fallback_reason is None


def eager_step(eng: AttentionEngine, frames: FrameBatch, u8: torch.Tensor, settings: MapSettings) -> torch.Tensor:
    """What the runner runs eagerly: preprocessing on the device, the pass, the maps (no copy out)."""
    h, w = frames.plan.input_hw
    n = eng.num_prefix + (h // eng.patch_size) * (w // eng.patch_size)
    keep = keep_for(eng, settings, n, graphed=not settings.relevance)
    select = selection_for(eng, keep, settings)
    x = frames(u8)
    out = eng.explain(x, keep, settings.target, select) if settings.relevance else eng.run(x, keep, select)
    return maps_tensor(eng, out, settings, select=select)[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_eager_step_never_synchronises_with_the_host(family):
    """What capture enforces, checked on the eager step with PyTorch's own tool, in the graphed modes
    and in relevance (eager on a GPU: it must not wait for the device either)."""
    eng = cuda_engine(FAMILIES[family]())
    image = smooth_frames(1)[0].image
    frames = FrameBatch(eng.preprocess_spec, image.shape, eng.device)
    u8 = torch.from_numpy(np.stack([image, image])).to(eng.device)
    for mode in [*GRAPHED_MODES, *(["relevance"] if eng.has_classifier else [])]:
        settings = MapSettings(**settings_for(View(mode=mode, query_patch=3, target=1 if mode == "relevance" else None)))
        eager_step(eng, frames, u8, settings)  # the first frame makes the index tensors
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            eager_step(eng, frames, u8, settings)
        except RuntimeError as exc:
            raise AssertionError(f"{mode}: the step synchronised with the host: {exc}") from exc
        finally:
            torch.cuda.set_sync_debug_mode(0)


# --------------------------------------------------------------------------------------------------
# The GPU against the CPU
# --------------------------------------------------------------------------------------------------


def demo_frames(n: int, seed: int = 1) -> list[np.ndarray]:
    scene = DemoScene(640, 480, seed=seed)
    return [scene.frame(0.4 * i) for i in range(n)]


def render_pictures(eng: AttentionEngine, images: list[np.ndarray], view: View) -> np.ndarray:
    """``render``'s overlapped path (decode thread, batches on this thread, drawing pool), in memory."""
    settings = MapSettings(**settings_for(view))
    items = [batch.Item(i, im, i / 30) for i, im in enumerate(images)]
    pictures: list[np.ndarray] = []
    n = batch.run(items, batch.engine_results(eng, settings, "clip"), view, Status(), lambda rgb, _t: pictures.append(rgb),
                  batch=4, workers=2, prepare=batch.preprocessor(eng))
    assert n == len(images)
    return np.stack(pictures).astype(np.int16)


@pytest.mark.parametrize("mode", ["attention", "rollout", "entropy"])
def test_render_on_the_gpu_equals_the_cpu(mode, monkeypatch, caplog):
    runners: list[StepRunner] = []
    real = batch.StepRunner
    monkeypatch.setattr(batch, "StepRunner", lambda e: runners.append(real(e)) or runners[-1])
    images = demo_frames(10)  # batches of 4, 4 and 2: two input shapes captured, on the owner thread
    view = View(mode=mode, show_hud=False)  # the HUD names the device: leave it out
    on_gpu = load_model("demo", device="cuda")
    gpu = render_pictures(on_gpu, images, view)
    cpu = render_pictures(load_model("demo", device="cpu", precision="fp32"), images, view)
    assert len(runners) == 2 and runners[0].engine is on_gpu
    assert runners[0].captures == 2 and runners[0].fallback_reason is None  # captured while the decode thread ran
    assert not warnings(caplog)
    diff = np.abs(gpu - cpu)
    assert gpu.shape == cpu.shape
    assert diff.mean() <= 0.5 and np.percentile(diff, 99) <= 12, (diff.mean(), np.percentile(diff, 99))


def test_relevance_on_the_gpu_equals_fp32_on_the_cpu():
    gpu = load_model("demo", device="cuda")  # fp16
    cpu = load_model("demo", device="cpu", precision="fp32")
    runner = StepRunner(gpu)
    for i, image in enumerate(demo_frames(6, seed=3)):
        frame = Frame(image, i, 0, "t")
        (ref,) = process_frames(cpu, [frame], MapSettings(**settings_for(View(mode="relevance"))))
        # Explain the class the CPU explained: near-tied classes may swap places in fp16.
        settings = MapSettings(**settings_for(View(mode="relevance", target=ref.target)))
        (got,) = process_frames(gpu, [frame], settings, runner=runner)
        assert got.target == ref.target and got.relevance.shape == ref.relevance.shape
        scale = np.abs(ref.relevance).max()
        assert scale > 0
        assert np.abs(got.relevance - ref.relevance).max() <= 0.05 * scale
        assert np.corrcoef(got.relevance, ref.relevance)[0, 1] >= 0.99


def test_compare_on_the_gpu_and_the_cpu_runs_both_at_once_each_on_its_own_thread(monkeypatch):
    """``--device cuda --compare-device cpu``: the CPU model runs beside the GPU one, on its own thread,
    and the GPU's work stays on the caller's thread (its graphs are captured there); the pair is the
    same frame, and each side matches that model computed alone."""
    import threading

    from live_attention.core.compare import PairedModels

    gpu = load_model("demo", device="cuda")
    cpu = load_model("demo", device="cpu", precision="fp32")
    seen: dict[str, set[str]] = {"cuda": set(), "cpu": set()}
    real_run = AttentionEngine.run

    def run(self, *args, **kwargs):
        seen[self.device.type].add(threading.current_thread().name)
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(AttentionEngine, "run", run)
    paired = PairedModels(gpu, cpu)
    assert paired.parallel
    runner = StepRunner(gpu)
    settings = MapSettings(**settings_for(View(mode="rollout")))
    try:
        for i, image in enumerate(demo_frames(4, seed=7)):
            frame = Frame(image, i, 0, "t")
            (got,) = paired.run([frame], settings, lambda f=frame: process_frames(gpu, [f], settings, runner=runner))
            assert got.pair is not None and got.pair.seq == got.seq == i
            close_results(got.pair, process_frames(cpu, [frame], settings)[0], atol=1e-5)  # the same CPU model
            close_results(got, process_frames(gpu, [frame], settings, runner=runner)[0])  # the same graphs
    finally:
        paired.close()
    assert seen["cuda"] <= {threading.current_thread().name} and runner.captures >= 1
    assert len(seen["cpu"] - {threading.current_thread().name}) == 1  # the second model's own thread


# --------------------------------------------------------------------------------------------------
# render --ray auto with one GPU worker
# --------------------------------------------------------------------------------------------------


def test_render_with_ray_auto_uses_one_gpu_worker(tmp_path, capsys):
    from live_attention.commands.cli import main

    src = tmp_path / "in"
    src.mkdir()
    for i, image in enumerate(demo_frames(2, seed=5)):
        assert cv2.imwrite(str(src / f"scene{i}.png"), image)
    args = ["render", str(src), "--model", "demo", "--mode", "rollout"]
    try:
        import ray
    except ImportError:  # not installed here: the one-line error that names the extra, and no output
        assert main([*args, "-o", str(tmp_path / "ray"), "--ray", "auto"]) != 0
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err == "live-attention: error: --ray needs Ray, an optional extra: pip install 'live-attention[ray]'"
        return
    root = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        assert main([*args, "-o", str(tmp_path / "local")]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert main([*args, "-o", str(tmp_path / "ray"), "--ray", "auto"]) == 0
        err = capsys.readouterr().err
    finally:
        ray.shutdown()
    assert "1 worker, each 1 GPU (cuda)" in err and "2 of 2 inputs rendered" in err, err
    for name in ("scene0.png", "scene1.png"):
        a = cv2.imread(str(tmp_path / "local" / name)).astype(np.int16)
        b = cv2.imread(str(tmp_path / "ray" / name)).astype(np.int16)
        assert np.abs(a - b).mean() <= 0.5, name  # the same GPU and model in another process


def test_this_module_needs_neither_pyav_nor_dear_pygui():
    import subprocess

    code = ("import sys; sys.modules['av'] = None; sys.modules['dearpygui'] = None; "
            "import tests.test_cuda, live_attention.commands.bench, live_attention.commands.render")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr

