"""The per-frame step: eager, and the CUDA-graph path's logic (capture, cache, replay, fallback) on the CPU.

A CUDA graph cannot be captured without a GPU; the capture itself is the one line
``torch.cuda.graph``. Everything around it runs here with a stand-in backend that records the step and
replays it into the same static output tensor, as a graph does.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_attention.core.engine import AttentionEngine
from live_attention.core.frame_maps import compute_maps, keep_for
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings
from tests.conftest import tiny_vit


def engine() -> AttentionEngine:
    return AttentionEngine.wrap(tiny_vit(layers=3, heads=2), device="cpu", precision="fp32",
                                categories=[f"c{i}" for i in range(10)])


class ReplayOnCPU:
    """Captures like a graph: the step runs once to make the static outputs; a replay recomputes them in
    place from the static input (a graph replays its kernels into the same memory)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.captures, self.replays = fail, 0, 0

    def capture(self, step, static_in):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captures += 1
        outputs = step(static_in)

        def replay():
            self.replays += 1
            outputs[0].copy_(step(static_in)[0])

        return replay, outputs


def inputs(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 3, 32, 32, generator=g) for _ in range(n)]


def test_the_eager_step_equals_the_maps_of_the_forward_pass():
    eng = engine()
    settings = MapSettings(query_patch=5, entropy_layer=1)
    x = inputs(1)[0]
    got = StepRunner(eng, graphs=False)(x, settings)
    ref = compute_maps(eng, eng.run(x, keep_for(eng, settings)), settings)[0]
    from live_attention.core.frame_maps import unpack_maps

    item = unpack_maps(got.flat, got.layout)[0]
    assert set(item) == set(ref)
    for k, v in ref.items():
        if v is None:
            assert item[k] is None, k
        else:
            np.testing.assert_allclose(item[k], v, atol=1e-6, err_msg=k)
    assert not got.graphed and got.grid == (4, 4)


def test_a_captured_step_replays_new_inputs_and_is_cached_per_size_and_settings():
    eng = engine()
    backend = ReplayOnCPU()
    runner = StepRunner(eng, graphs=True, backend=backend)
    eager = StepRunner(eng, graphs=False)
    s = MapSettings()
    for x in inputs(3):
        a, b = runner(x, s), eager(x, s)
        assert a.graphed and not b.graphed
        np.testing.assert_allclose(a.flat, b.flat, atol=1e-6)  # the replay sees each new input
    assert backend.captures == 1 and backend.replays == 3
    runner(inputs(1)[0], MapSettings(fusion="max", entropy_layer=0))  # what is shown: the same graph
    runner(inputs(1)[0], MapSettings(maps=()))  # what is kept: another graph
    runner(torch.randn(1, 3, 48, 32), s)  # another input size: another graph
    assert backend.captures == 3 and runner.captures == 3
    # Relevance needs autograd and flow keeps whole matrices past the step: eager, no capture.
    out = runner(inputs(1)[0], MapSettings(relevance=True))
    assert not out.graphed and "relevance" in out.layout.names
    out = runner(inputs(1)[0], MapSettings(need=("fused",)))
    assert not out.graphed and out.fused is not None
    assert backend.captures == 3


def test_the_cache_keeps_the_most_recent_graphs(monkeypatch):
    from live_attention.core import step as step_mod

    monkeypatch.setattr(step_mod, "MAX_GRAPHS", 2)
    backend = ReplayOnCPU()
    runner = StepRunner(engine(), graphs=True, backend=backend)
    for w in (32, 40, 32, 48, 32):  # 32 is used again before it would be evicted
        runner(torch.randn(1, 3, 32, w), MapSettings())
    assert backend.captures == 3 and len(runner._graphs) == 2


def test_a_failed_capture_falls_back_to_eager_once_and_says_why(caplog):
    backend = ReplayOnCPU(fail=True)
    runner = StepRunner(engine(), graphs=True, backend=backend)
    eager = StepRunner(engine(), graphs=False)
    x = inputs(1)[0]
    for _ in range(3):
        out = runner(x, MapSettings())
        np.testing.assert_allclose(out.flat, eager(x, MapSettings()).flat, atol=1e-6)
        assert not out.graphed
    assert "stream is capturing" in runner.fallback_reason
    warnings = [r for r in caplog.records if "CUDA graph capture failed" in r.getMessage()]
    assert len(warnings) == 1  # said once, not every frame; no retry for the same key


def test_the_default_runner_is_eager_on_a_cpu_and_graphs_on_cuda():
    eng = engine()
    assert not StepRunner(eng).enabled
    frame = Frame(np.full((40, 50, 3), 100, np.uint8), 0, 0, "t")
    (res,) = process_frames(eng, [frame], MapSettings())
    assert res.grid == (4, 4) and res.cls.shape == (3, 2, 16)


@pytest.mark.parametrize("settings", [MapSettings(), MapSettings(query_patch=3, fusion="min", entropy_layer=0)])
def test_process_frames_through_a_captured_step_gives_the_same_results(settings):
    eng = engine()
    rng = np.random.default_rng(0)
    frames = [Frame(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8), i, i, "t") for i in range(2)]
    a = process_frames(eng, frames, settings, runner=StepRunner(eng, graphs=True, backend=ReplayOnCPU()))
    b = process_frames(eng, frames, settings)
    for ra, rb in zip(a, b, strict=True):
        for name in ("cls", "rollout", "entropy", "patch_entropy", "token_norm", "prefix_share"):
            np.testing.assert_allclose(getattr(ra, name), getattr(rb, name), atol=1e-6, err_msg=name)
        assert ra.topk == rb.topk and ra.top_ids == rb.top_ids


def test_live_views_compute_only_their_maps_and_a_recording_gets_them_all():
    from live_attention.datatypes import View
    from live_attention.modes import settings_for

    eng = engine()
    frame = Frame(np.full((40, 50, 3), 100, np.uint8), 0, 0, "t")
    keep = keep_for(eng, MapSettings(**settings_for(View(mode="attention"))))
    assert keep.rows == (0,) and keep.fused is None and keep.entropy_layers == () and not keep.norms and not keep.attn
    (res,) = process_frames(eng, [frame], MapSettings(**settings_for(View(mode="heads"))))
    assert res.cls.shape == (3, 2, 16) and res.entropy.shape == (3, 2) and res.topk
    assert res.rollout is None and res.patch_entropy is None and res.token_norm is None
    for mode, name in (("rollout", "rollout"), ("entropy", "patch_entropy"), ("norms", "token_norm")):
        (res,) = process_frames(eng, [frame], MapSettings(**settings_for(View(mode=mode))))
        assert getattr(res, name) is not None, mode
    recording = MapSettings(**settings_for(View(mode="attention"), recording=True))
    (res,) = process_frames(eng, [frame], recording)
    assert res.rollout is not None and res.patch_entropy is not None and res.token_norm is not None
