"""``live-attention render --ray``: the many-inputs job on a local Ray instance gives the local run's files.

Ray is a test dependency (``live-attention[ray]``): without it this module fails to import, it is never
skipped. One local Ray instance (2 CPUs, no dashboard) serves the whole module and is shut down at its end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import ray
from conftest import cut_clip

from live_attention.commands.cli import main
from live_attention.errors import UserError
from live_attention.io.video import probe_frames
from live_attention.offline import distributed
from live_attention.offline.distributed import INSTALL_HINT, plan_workers

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster():
    """A local Ray instance for this module; yields its address (for a driver in another process)."""
    # Workers inherit this process's environment (LIVE_ATTENTION_OFFLINE from conftest included).
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, media) -> Path:
    """Two short clips and a still image in one folder."""
    d = tmp_path_factory.mktemp("inputs")
    cut_clip(d, media, 0.4, "walk.mp4")  # 12 frames at 30 fps
    cut_clip(d, media, 0.2, "short.mp4")  # 6 frames
    (d / "cat.jpg").write_bytes((media / "chelsea.jpg").read_bytes())
    return d


def ffprobe_count(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
                          "stream=nb_read_frames", "-of", "csv=p=0", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip())


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def test_ray_results_equal_the_local_run(cluster, inputs, tmp_path, capsys):
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = ["render", str(inputs), "--model", "demo", "--mode", "rollout"]
    assert main([*args, "-o", str(local)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main([*args, "-o", str(remote), "--ray", "auto"]) == 0
    err = capsys.readouterr().err
    assert ray.is_initialized()  # a connection made by the caller is left to the caller

    names = sorted(p.name for p in local.iterdir())
    assert names == ["cat.png", "short.mp4", "walk.mp4"]
    assert sorted(p.name for p in remote.iterdir()) == names  # no partial files left over
    # One line per finished input on the driver, then the summary a local run prints.
    assert all(f"wrote {remote / n} " in err for n in names), err
    assert "3 of 3 inputs rendered" in err and "failed" not in err

    for name, frames in (("walk.mp4", 12), ("short.mp4", 6)):
        a, b = local / name, remote / name
        assert ffprobe_count(a) == ffprobe_count(b) == frames
        assert probe_frames(a) == probe_frames(b)  # the same timestamps
        pa, pb = decoded(a), decoded(b)
        assert len(pa) == len(pb) == frames
        # Same engine, same renderer, same encoder settings: the same pictures, bit for bit.
        assert all(np.array_equal(x, y) for x, y in zip(pa, pb, strict=True)), name
    ia, ib = cv2.imread(str(local / "cat.png")), cv2.imread(str(remote / "cat.png"))
    assert ia is not None and ia.shape[0] == 720 and np.array_equal(ia, ib)


def test_bad_inputs_are_one_line_each_and_the_others_render(cluster, inputs, media, tmp_path):
    """Through the command line in another process, on the cluster's address: a damaged file, a truncated
    one (its rename of a file never made was a traceback, printed once per attempt), an empty folder.
    Each is one line with its reason (the retry is said with -v only); the exit status counts them."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes((media / "tour.mp4").read_bytes()[:30_000])
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "live_attention", "render", str(bad), str(trunc), str(empty),
                        str(inputs / "short.mp4"), str(media / "rocket.jpg"), "-o", str(out), "--model", "demo",
                        "--ray", cluster],
                       capture_output=True, text=True, timeout=150, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    err = p.stderr
    assert p.returncode == 3, err
    assert [line for line in err.splitlines() if str(bad) in line] == [
        f"live-attention: {bad}: failed: cannot open video {bad}: is it a valid video file? "
        f"(cannot open {bad} as a video (corrupt or unsupported format))"], err
    assert [line for line in err.splitlines() if str(trunc) in line] == [
        f"live-attention: {trunc}: failed: cannot decode any frame of {trunc} (it announces 300: truncated or "
        "damaged?)"], err
    assert [line for line in err.splitlines() if str(empty) in line] == [
        f"live-attention: {empty}: failed: no videos or images in folder {empty}"], err
    assert "2 of 5 inputs rendered, 3 failed" in err
    assert "Traceback" not in err and "trying again" not in err
    assert sorted(f.name for f in out.iterdir()) == ["rocket.png", "short.mp4"]  # nothing for the bad ones
    assert ffprobe_count(out / "short.mp4") == 6


def test_an_unexpected_error_in_a_worker_is_one_line_and_its_traceback_is_for_v(cluster, media, tmp_path, caplog):
    """The worker logged the traceback of an unexpected error, which Ray printed on the driver once per
    attempt; now it goes back with the outcome, one line for the user and the traceback at debug level."""
    from live_attention.config import Config, ModelConfig
    from live_attention.offline.renderer import Job

    worker = distributed.RayWorker(Config(model=ModelConfig(name="demo")), hud=True, batch_size=None, draw_threads=1)

    def broken(job, progress=None):
        raise RuntimeError("the renderer broke. More detail here")

    worker.renderer.render = broken
    job = Job(media / "rocket.jpg", tmp_path / "rocket.png")
    with caplog.at_level("DEBUG"):
        out = worker.render(job)
    assert out.error == "RuntimeError: the renderer broke" and out.frames == 0
    assert out.detail and "Traceback" in out.detail and "the renderer broke" in out.detail
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]  # nothing logged there


class CrashOnName(distributed.RayWorker):
    """A worker whose process dies (as a segfault or the OOM killer would end it) on inputs named
    crash*, after noting the attempt in ``attempts.txt`` beside the input."""

    def render(self, job):
        if job.input.name.startswith("crash"):
            with open(job.input.parent / "attempts.txt", "a") as fh:
                fh.write(f"{os.getpid()}\n")
            os._exit(1)
        return super().render(job)


@pytest.fixture
def crashing_workers(monkeypatch):
    """Workers of class CrashOnName. Workers cannot import this module, so Ray sends the class by value."""
    module = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(module)
    monkeypatch.setattr(distributed, "RayWorker", CrashOnName)
    yield
    ray.cloudpickle.unregister_pickle_by_value(module)


def test_an_input_that_kills_its_worker_is_retried_once_and_reported(cluster, crashing_workers, media, tmp_path,
                                                                      capsys):
    crash = tmp_path / "crash.jpg"
    crash.write_bytes((media / "coffee.jpg").read_bytes())
    out = tmp_path / "out"
    rc = main(["render", str(crash), str(media / "rocket.jpg"), "-o", str(out), "--model", "demo", "--ray", "auto"])
    err = capsys.readouterr().err
    assert rc == 1, err
    pids = (tmp_path / "attempts.txt").read_text().split()
    assert len(pids) == 2 and pids[0] != pids[1]  # tried twice, each time in a fresh worker process
    assert err.count(f"{crash}: failed: the Ray worker rendering it died, also on the retry") == 1, err
    assert "1 of 2 inputs rendered, 1 failed" in err
    # The one worker, restarted by Ray, rendered the other input.
    assert sorted(f.name for f in out.iterdir()) == ["rocket.png"]
    assert cv2.imread(str(out / "rocket.png")) is not None


def one_error_line(argv: list[str], capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_a_model_the_workers_cannot_load_is_one_error(cluster, media, tmp_path, capsys):
    line = one_error_line(["render", str(media / "rocket.jpg"), str(media / "coffee.jpg"), "-o", str(tmp_path),
                           "--model", "demo", "--layer", "99", "--ray", "auto"], capsys)
    assert line.startswith("live-attention: error: the Ray workers cannot load the model: --layer 99"), line
    assert list(tmp_path.iterdir()) == []


def test_cuda_on_a_cluster_without_gpus_is_one_error(cluster, media, tmp_path, capsys):
    line = one_error_line(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "r.png"), "--model", "demo",
                           "--device", "cuda", "--ray", "auto"], capsys)
    assert line == "live-attention: error: --device cuda: the Ray cluster has no GPUs (use --device auto or cpu)"


def test_an_address_without_a_cluster_is_one_error_at_once(cluster, media, tmp_path, capsys):
    """Ray itself retries an unreachable address for minutes; and this process is connected already."""
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    with socket.socket() as other:  # something listens, but not the cluster this process is connected to
        other.bind(("127.0.0.1", 0))
        other.listen()
        for address, says in ((f"127.0.0.1:{closed_port}", "no Ray cluster answers there"),
                              ("headnode", "HOST:PORT"),
                              (f"127.0.0.1:{other.getsockname()[1]}", f"already connected to the Ray cluster at {cluster}")):
            err = one_error_line(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "r.png"), "--model",
                                  "demo", "--ray", address], capsys)
            assert err.startswith(f"live-attention: error: --ray {address}: ") and says in err, err


def test_without_ray_installed_the_error_names_the_extra(media, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    err = one_error_line(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "r.png"), "--model", "demo",
                          "--ray", "auto"], capsys)
    assert err == f"live-attention: error: --ray needs Ray, an optional extra: {INSTALL_HINT}"
    assert INSTALL_HINT == "pip install 'live-attention[ray]'"


def test_plan_one_worker_per_gpu_or_per_four_cpus():
    gpu_nodes = [{"CPU": 16.0, "GPU": 4.0}, {"CPU": 8.0, "GPU": 2.0}, {"CPU": 32.0}]
    p = plan_workers(gpu_nodes, "auto", jobs=100)
    assert (p.count, p.gpus, p.device) == (6, 1, "cuda")
    assert plan_workers(gpu_nodes, "cuda:1", jobs=3).count == 3  # never more workers than inputs
    assert plan_workers(gpu_nodes, "cuda:1", jobs=3).device == "cuda"  # its one GPU is cuda:0 to a worker
    p = plan_workers(gpu_nodes, "cpu", jobs=100)
    assert (p.count, p.cpus, p.gpus, p.device) == (14, 4, 0, "cpu")
    p = plan_workers([{"CPU": 2.0}], "auto", jobs=3)
    assert (p.count, p.cpus, p.gpus, p.device, p.draw_threads) == (1, 2, 0, "cpu", 1)
    with pytest.raises(UserError, match="no GPUs"):
        plan_workers([{"CPU": 8.0}], "cuda", jobs=2)
