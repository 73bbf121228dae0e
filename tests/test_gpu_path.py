"""The GPU path, right by construction, checked on the CPU: what a real CUDA graph would refuse fails here.

* **No host synchronisation inside the step**: the step is captured and replayed by
  :class:`tests.host_sync.GuardedReplay`, under which ``.item()``, ``.tolist()``, ``.cpu()``, a tensor
  built from Python numbers, indexing with a list or a mask raise (as they do during capture on a GPU).
  Every family, every live mode.
* **Graphs keyed by what changes the computation**: walking every layer, head and fusion, clicking query
  patches and animating capture nothing after the first capture of each mode, and every replay shows
  exactly what an eager step with those settings shows (the selection is data the graph reads).
* **One owner of device work**: a CPU engine that counts as a device engine (``on_host`` False) runs the
  offline path and the live worker; every forward pass and every preprocessing call happens on the
  thread that owns the engine, and the results other threads draw and compute flow from hold host
  copies, never the engine's own tensors.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from live_attention.core.engine import AttentionEngine
from live_attention.core.preprocess import FrameBatch, Preprocess
from live_attention.core.step import StepRunner, process_frames
from live_attention.datatypes import Frame, MapSettings, Status, View
from live_attention.io.capture import LatestSlot
from live_attention.modes import settings_for
from live_attention.offline import batch
from live_attention.pipeline.loop_parts import FlowJob
from live_attention.pipeline.worker import InferenceWorker
from live_attention.ui.controller import Controller
from tests.conftest import tiny_vit
from tests.host_sync import GuardedReplay, forbid_host_sync
from tests.tiny_families import FAMILIES, GRAPHED_MODES

MAPS = ("cls", "entropy", "prefix_share", "rollout", "patch_entropy", "query", "token_norm", "relevance")


def frames(n: int = 2, h: int = 40, w: int = 50, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [Frame(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), i, i, "t") for i in range(n)]


def same_maps(a, b, atol: float = 1e-5) -> None:
    """Two results show the same maps (fp32 on one CPU, same kernels: only summation order may differ)."""
    for name in MAPS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_allclose(x, y, atol=atol, err_msg=name)
    assert [c for c, _ in a.topk] == [c for c, _ in b.topk] and a.query_patch == b.query_patch
    np.testing.assert_allclose([p for _, p in a.topk], [p for _, p in b.topk], atol=atol)


# --------------------------------------------------------------------------------------------------
# No host synchronisation inside the step
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["item", "tolist", "cpu", "list index", "tensor from a list", "mask"])
def test_the_guard_fails_a_step_that_synchronises(bad, monkeypatch):
    """The guard is real: each way of synchronising, slipped into the step, makes the capture fail."""
    from live_attention.core import step as step_mod

    real = step_mod.maps_tensor

    def syncing(engine, out, settings, k=5, select=None):
        flat, layout = real(engine, out, settings, k, select)
        x = flat[:, :2]
        sync = {"item": lambda: x.sum().item(), "tolist": lambda: x.tolist(), "cpu": lambda: x.cpu(),
                "list index": lambda: flat[:, [0, 1]], "tensor from a list": lambda: torch.tensor([1.0, 2.0]),
                "mask": lambda: x[x > 0]}[bad]
        sync()
        return flat, layout

    monkeypatch.setattr(step_mod, "maps_tensor", syncing)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    runner = StepRunner(eng, graphs=True, backend=GuardedReplay())
    (res,) = process_frames(eng, frames(1), MapSettings(maps=()), runner=runner)
    assert runner.captures == 0 and "HostSync" in runner.fallback_reason, runner.fallback_reason
    assert res.cls is not None  # it still ran, eagerly


@pytest.mark.parametrize("family", list(FAMILIES))
def test_no_host_synchronisation_inside_the_step_for_every_family_and_live_mode(family):
    eng = AttentionEngine.wrap(FAMILIES[family](), device="cpu", precision="fp32")
    backend = GuardedReplay()
    runner = StepRunner(eng, graphs=True, backend=backend)
    eager = StepRunner(eng, graphs=False)
    batch_ = frames(2)
    for mode in GRAPHED_MODES:
        settings = MapSettings(**settings_for(View(mode=mode, query_patch=3)))
        for _ in range(2):  # a capture, then a replay: both under the guard
            got = process_frames(eng, batch_, settings, runner=runner)
        assert runner.fallback_reason is None, f"{mode}: {runner.fallback_reason}"
        for a, b in zip(got, process_frames(eng, batch_, settings, runner=eager), strict=True):
            same_maps(a, b)
    assert backend.replays == 2 * len(GRAPHED_MODES)


@pytest.mark.parametrize("family", ["torchvision", "timm registers", "hf deit teacher"])
def test_relevance_runs_eagerly_without_host_synchronisation(family):
    """Relevance is eager on a GPU too (it needs autograd), and as fast as it can be: once its index
    tensors exist (the first frame), the whole pass, backward included, never waits for the device."""
    from live_attention.core.frame_maps import keep_for, maps_tensor, selection_for

    eng = AttentionEngine.wrap(FAMILIES[family](), device="cpu", precision="fp32")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if family == "timm registers":
        x = x[..., :28, :28].contiguous()
    for target in (None, 1):
        settings = MapSettings(**settings_for(View(mode="relevance", target=target)))
        keep = keep_for(eng, settings, graphed=False)
        select = selection_for(eng, keep, settings)
        eng.explain(x, keep, settings.target, select)  # the first frame makes the index tensors
        with forbid_host_sync():
            out = eng.explain(x, keep, settings.target, select)
            flat, _ = maps_tensor(eng, out, settings, select=select)
        ref_logits, ref = eng.relevance(x, target)
        torch.testing.assert_close(out.relevance, ref, rtol=0, atol=1e-6)
        assert flat.shape[0] == 2


@pytest.mark.parametrize("shape", [(40, 50, 3), (40, 50, 4), (40, 50), (40, 50, 1), (50, 40, 3)])
@pytest.mark.parametrize("full_frame", [False, True])
def test_preprocessing_inside_the_step_equals_the_hosts(shape, full_frame):
    """A device engine preprocesses a batch of raw frames inside the step (FrameBatch): the model sees
    what the host's per-frame transform gives (same float resize; fp32 on one CPU)."""
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    eng.configure_input(full_frame=full_frame)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(3)]
    fb = FrameBatch(eng.preprocess_spec, shape, eng.device)
    got = fb(torch.from_numpy(np.stack(images)))
    for i, im in enumerate(images):
        want, box = eng.preprocess_spec.apply(im, "cpu")
        assert box == fb.box
        torch.testing.assert_close(got[i : i + 1], want, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------------
# Graphs keyed by what changes the computation
# --------------------------------------------------------------------------------------------------


def test_navigating_every_layer_head_fusion_patch_and_animating_captures_once_per_mode():
    eng = AttentionEngine.wrap(tiny_vit(layers=4, heads=3, hidden=24), device="cpu", precision="fp32")
    backend = GuardedReplay(guard=False)  # counts captures; the guard has its own tests above
    runner = StepRunner(eng, graphs=True, backend=backend)
    eager = StepRunner(eng, graphs=False)
    ctl = Controller(eng.num_layers, eng.num_heads, View())
    (frame,) = frames(1)
    shown = 0

    def show() -> None:
        nonlocal shown
        settings = MapSettings(**settings_for(ctl.view))
        (got,) = process_frames(eng, [frame], settings, runner=runner)
        (want,) = process_frames(eng, [frame], settings, runner=eager)
        same_maps(got, want)  # the graph shows the chosen layer, fusion and patch, not the captured ones
        shown += 1

    captured = {}
    for mode_key, mode in (("1", "attention"), ("3", "heads"), ("2", "rollout"), ("4", "entropy"),
                           ("5", "query"), ("8", "norms"), ("7", "relevance")):
        ctl.press(mode_key)
        assert ctl.view.mode == mode
        before = backend.captures
        show()
        for _ in range(eng.num_layers):  # from the last layer down to the first
            ctl.press("down")
            show()
        for _ in range(eng.num_heads + 1):
            ctl.press("right")
            show()
        for _ in range(3):
            ctl.press("f")
            show()
        ctl.press("a")
        for _ in range(eng.num_layers):
            ctl.step_animation()
            show()
        ctl.press("a")
        if mode == "query":
            for patch in (0, 15, 7):
                ctl.select_patch(patch)
                show()
        captured[mode] = backend.captures - before
    # One capture per mode; the heads view keeps what the attention view keeps; relevance is eager.
    assert captured == {"attention": 1, "heads": 0, "rollout": 1, "entropy": 1, "query": 1, "norms": 1,
                        "relevance": 0}, captured
    assert runner.captures == 5 and runner.fallback_reason is None and shown > 80


def test_another_input_size_is_another_graph_and_the_cache_keeps_the_newest(monkeypatch):
    from live_attention.core import step as step_mod

    monkeypatch.setattr(step_mod, "MAX_GRAPHS", 2)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    eng.configure_input(full_frame=True)  # the input's shape follows the frame's
    backend = GuardedReplay()
    runner = StepRunner(eng, graphs=True, backend=backend)
    s = MapSettings(maps=())
    for w in (50, 66, 50, 80, 50):  # inputs 32×40, 32×56, 32×64; the first is used again before eviction
        process_frames(eng, frames(1, w=w), s, runner=runner)
    assert backend.captures == 3 and len(runner._graphs) == 2


# --------------------------------------------------------------------------------------------------
# Failures: said once, per key; an out-of-memory is tried again later
# --------------------------------------------------------------------------------------------------


def test_a_failed_capture_is_said_once_and_that_key_runs_eagerly(caplog):
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    eng.configure_input(full_frame=True)
    backend = GuardedReplay(fail=RuntimeError("operation not permitted when stream is capturing"))
    runner = StepRunner(eng, graphs=True, backend=backend)
    for w in (50, 50, 66, 66):  # two keys, the same reason: one warning
        (res,) = process_frames(eng, frames(1, w=w), MapSettings(maps=()), runner=runner)
        assert res.cls is not None
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "capture failed" in r.getMessage()]
    assert len(warnings) == 1 and "stream is capturing" in warnings[0].getMessage()
    assert runner.captures == 0 and len(runner._failed) == 2


def test_an_out_of_memory_capture_says_so_frees_memory_and_is_tried_again_later(caplog, monkeypatch):
    from live_attention.core import step as step_mod

    monkeypatch.setattr(step_mod, "OOM_RETRY_STEPS", 3)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    backend = GuardedReplay(fail=torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    runner = StepRunner(eng, graphs=True, backend=backend)
    s = MapSettings(maps=())

    def step() -> bool:
        (res,) = process_frames(eng, frames(1), s, runner=runner)
        return res.cls is not None

    assert step() and backend.released == 1  # eager at once, cached memory given back
    assert all(step() for _ in range(2)) and backend.released == 1  # not tried again before its time
    backend.fail = None  # memory was freed meanwhile
    for _ in range(2):
        step()
    assert runner.captures == 1  # tried again, and graphs are back
    ooms = [r for r in caplog.records if r.levelname == "WARNING" and "out of GPU memory" in r.getMessage()]
    assert len(ooms) == 1 and "trying again" in ooms[0].getMessage()


def test_out_of_memory_again_and_again_gives_up_on_that_key_only(caplog, monkeypatch):
    from live_attention.core import step as step_mod

    monkeypatch.setattr(step_mod, "OOM_RETRY_STEPS", 1)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    backend = GuardedReplay(fail=RuntimeError("CUDA error: out of memory"))
    runner = StepRunner(eng, graphs=True, backend=backend)
    for _ in range(3 * step_mod.OOM_TRIES):
        process_frames(eng, frames(1), MapSettings(maps=()), runner=runner)
    assert backend.released == step_mod.OOM_TRIES  # bounded
    assert any("from now on" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    backend.fail = None
    process_frames(eng, frames(1), MapSettings(maps=("rollout",)), runner=runner)
    assert runner.captures == 1  # another view still gets its graph


# --------------------------------------------------------------------------------------------------
# One owner of device work
# --------------------------------------------------------------------------------------------------


class DeviceGuard:
    """Pretends a CPU engine is a device engine and watches its device work: the thread of every forward
    pass and preprocessing call, and the storage of every tensor the engine returns (no other thread
    may ever hold one of those: they get host copies)."""

    def __init__(self, monkeypatch) -> None:
        self.work: list[tuple[str, str]] = []  # (what, thread name)
        self.engine_storage: set[int] = set()
        self._alive: list[torch.Tensor] = []
        self.handed: list[tuple[str, str, int]] = []  # (what, thread, storage) of tensors used off-step
        self._lock = threading.Lock()
        monkeypatch.setattr(AttentionEngine, "on_host", property(lambda _self: False))
        for cls, name in ((AttentionEngine, "run"), (AttentionEngine, "explain"), (Preprocess, "apply"),
                          (FrameBatch, "__call__")):
            monkeypatch.setattr(cls, name, self._watch(getattr(cls, name), f"{cls.__name__}.{name}"))
        from live_attention.modes import query as query_mode
        from live_attention.pipeline import loop_parts as loop_mod

        monkeypatch.setattr(batch, "render", self._reads(batch.render, "draw"))
        monkeypatch.setattr(batch, "flow_for", self._reads(batch.flow_for, "flow (offline)"))
        monkeypatch.setattr(loop_mod, "flow_for", self._reads(loop_mod.flow_for, "flow (live)"))
        monkeypatch.setattr(query_mode, "query_for", self._reads(query_mode.query_for, "query"))

    def _watch(self, fn, what: str):
        def watched(*args, **kwargs):
            with self._lock:
                self.work.append((what, threading.current_thread().name))
            out = fn(*args, **kwargs)
            for t in (getattr(out, "attn", None), getattr(out, "fused", None)):
                if isinstance(t, torch.Tensor):
                    with self._lock:  # kept alive, so that no later tensor reuses its address
                        self._alive.append(t)
                        self.engine_storage.add(t.untyped_storage().data_ptr())
            return out

        return watched

    def _reads(self, fn, what: str):
        def reads(*args, **kwargs):
            res = next(a for a in args if hasattr(a, "fused"))
            for t in (res.attn, res.fused):
                if isinstance(t, torch.Tensor):
                    with self._lock:  # kept alive too: addresses are compared
                        self._alive.append(t)
                        self.handed.append((what, threading.current_thread().name, t.untyped_storage().data_ptr()))
            return fn(*args, **kwargs)

        return reads

    def check(self, owner: str) -> None:
        assert self.work, "no device work seen"
        off = sorted({(w, t) for w, t in self.work if t != owner})
        assert not off, f"device work off the owner thread {owner!r}: {off}"
        leaked = sorted({(w, t) for w, t, s in self.handed if s in self.engine_storage})
        assert not leaked, f"the engine's own tensors reached other threads: {leaked}"


@pytest.mark.parametrize("mode", ["flow", "attention", "relevance"])
def test_the_offline_path_does_all_device_work_on_the_owner_thread(mode, monkeypatch):
    guard = DeviceGuard(monkeypatch)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    assert batch.preprocessor(eng) is None  # a device engine: the decode thread hands over bytes only
    view = View(mode=mode, show_hud=False)
    settings = MapSettings(**settings_for(view))
    items = [batch.Item(f.seq, f.image, f.seq / 30) for f in frames(6)]
    pictures = []
    n = batch.run(items, batch.engine_results(eng, settings, "t"), view, Status(), lambda rgb, _t: pictures.append(rgb),
                  batch=2, workers=2, prepare=batch.preprocessor(eng))
    assert n == 6 and len(pictures) == 6
    guard.check(threading.current_thread().name)
    if mode == "flow":
        assert any(w.startswith("flow") for w, _, _ in guard.handed)  # flow ran, on host copies


def test_the_live_worker_and_flow_job_keep_device_work_on_the_worker(monkeypatch):
    guard = DeviceGuard(monkeypatch)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    slot_in: LatestSlot[Frame] = LatestSlot()
    slot_out = LatestSlot()
    worker = InferenceWorker(eng, slot_in, slot_out, settings=MapSettings(**settings_for(View(mode="flow"))))
    worker.start()
    try:
        for f in frames(3):
            slot_in.put(f)
            res = slot_out.get(timeout=20.0)
            assert res is not None, worker.problem
        worker.update_settings(**{**settings_for(View(mode="query", query_patch=3)), "need": ("attn",)})
        slot_in.put(frames(1, seed=1)[0])
        deadline = time.monotonic() + 20.0
        while (q := slot_out.get(timeout=1.0)) is None or q.attn is None:
            assert time.monotonic() < deadline, "no result with attention kept"
    finally:
        worker.stop(timeout=5.0)
    job = FlowJob(res)  # the flow view's job, on its own thread
    job.start()
    job.join(timeout=60.0)
    assert job.done, job.error
    from live_attention.ui.frame import render

    render(q.frame, q, View(mode="query", query_patch=7), Status())  # another patch: from the kept attention
    guard.check("inference")
    assert {w for w, _, _ in guard.handed} >= {"flow (live)", "query"}


class OneResultFeed:
    """A feed that shows one result (with its fused layers kept, as the flow view asks)."""

    num_layers, num_heads, can_record, recording = 3, 2, False, False

    def __init__(self, result) -> None:
        self.result = result

    def latest(self):
        return self.result

    def status(self, message=None, flow_progress=None):
        return Status(model="tiny")

    def prepare(self, result, view):
        return result

    def media_time(self, result):
        return 0.0

    def __getattr__(self, name):  # the rest of the Feed: no-ops
        return {"playing": None, "finished": False}.get(name, lambda *a, **k: {} if name == "state" else None)


def test_leaving_the_flow_view_cancels_its_job(monkeypatch):
    from live_attention.core.flow import FlowCancelled
    from live_attention.pipeline import loop_parts as loop_mod
    from live_attention.pipeline.loop import FrameLoop, HeadlessDisplay
    from live_attention.pipeline.ports import Inputs

    started = threading.Event()

    def slow_flow(result, residual=0.5, progress=None, cancel=None):  # minutes of max-flow, stood in for
        started.set()
        if cancel.wait(30.0):
            raise FlowCancelled()
        return np.zeros(16)

    monkeypatch.setattr(loop_mod, "flow_for", slow_flow)
    eng = AttentionEngine.wrap(tiny_vit(), device="cpu", precision="fp32")
    (res,) = process_frames(eng, frames(1), MapSettings(**settings_for(View(mode="flow"))))
    assert res.fused is not None
    class Keys(HeadlessDisplay):
        wants_pixels = True  # the flow map is drawn

        def __init__(self) -> None:
            super().__init__(every=1e9, stream=io.StringIO())
            self.keys: list[str] = []

        def poll(self) -> Inputs:
            keys, self.keys = self.keys, []
            return Inputs(keys=keys)

    display = Keys()
    loop = FrameLoop(OneResultFeed(res), display, View())
    display.keys = ["6"]  # the flow view
    loop.step()  # shows the frame frozen
    loop.step()  # starts its flow job
    job = loop.flow_job
    assert job is not None and started.wait(10.0)
    display.keys = ["1"]  # back to the attention view
    loop.step()
    assert job.cancel.is_set() and loop.flow_job is None
    job.join(timeout=10.0)
    assert not job.is_alive()


# --------------------------------------------------------------------------------------------------
# make gpu-check on a machine without a GPU
# --------------------------------------------------------------------------------------------------


def test_make_gpu_check_without_a_gpu_says_so_in_one_line_and_succeeds():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # a GPU machine too: hide its devices
    proc = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA GPU here"), proc.stdout
    assert "nothing to check" in lines[0] and not proc.stderr.strip()
