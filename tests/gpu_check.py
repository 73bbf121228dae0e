"""``make gpu-check``: the ``cuda`` tests, then one table of the GPU figures, on a machine with a GPU.

Without a CUDA device it says so in one line and succeeds (nothing to check there). With one it runs
``pytest -m cuda`` and ``live-attention bench``'s ``gpu`` part (ViT-B/16 fp16 live step in the
attention and relevance views, the render pipeline on 720p frames, batch 64 against the plain forward
and the peers, DINO ViT-S/8 on a 640x480 full frame), and prints them as one table with the device's
name. Exit status: 0 when the tests pass and every figure meets its target, 1 when a test fails, 2 when
the tests pass but a figure misses its target. Needs torch, torchvision, timm, transformers, OpenCV and
pytest, not PyAV or Dear PyGui.

Run from the repository's root: ``python -m tests.gpu_check [--reps N] [--no-tests] [--no-figures]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make gpu-check", description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=10, help="timed repetitions per figure (medians)")
    p.add_argument("--no-tests", action="store_true", help="only the figures")
    p.add_argument("--no-figures", action="store_true", help="only the tests")
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        print("gpu-check: torch is not installed here, so there is no GPU to check")
        return 0
    if not torch.cuda.is_available():
        print(f"gpu-check: no CUDA GPU here (torch {torch.__version__}): nothing to check; run it on a machine with one")
        return 0
    status = 0
    if not args.no_tests:
        status = run_tests()
    if not args.no_figures:
        missed = figures(args.reps)
        status = status or (2 if missed else 0)
    return status


def run_tests() -> int:
    """``pytest -m cuda`` in a child process (its own CUDA context); 1 when anything fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-rs", "tests/test_cuda.py"]
    print("gpu-check: " + " ".join(cmd[2:]), flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=1800)
    except subprocess.TimeoutExpired:
        print("gpu-check: the cuda tests took more than 30 minutes: stopped", flush=True)
        return 1
    if proc.returncode == 5:
        print("gpu-check: no cuda tests were collected", flush=True)
    return 0 if proc.returncode == 0 else 1


def figures(reps: int) -> int:
    """The GPU figures as one table; returns how many missed their targets."""
    import torch

    from live_attention.commands.bench import Report, bench_gpu

    rep = Report(echo=False)
    print("gpu-check: measuring (random weights) ...", flush=True)
    with torch.no_grad():
        bench_gpu(rep, reps)
    missed = [r for r in rep.rows if r[2].startswith("FAIL")]
    print(f"\nGPU figures: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print(rep.table())
    print(f"\n{len(missed)} target(s) missed" if missed else "\nall targets met", flush=True)
    return len(missed)


if __name__ == "__main__":
    sys.exit(main())
