"""Measuring for ``live-attention bench``: medians of runs taken in alternation, process memory, and the
report that prints each figure with its target as it comes."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch

# A timed call, made with no arguments. Typed ``Callable[..., object]`` rather than ``Callable[[], object]``
# because the parts bind loop variables as lambda defaults (``lambda v=v: ...``), which mypy cannot infer
# against a callable of no parameters.
Timed = Callable[..., object]
Sync = Callable[[], None] | None  # torch.cuda.synchronize on a GPU (timings wait for the kernels), else None


def interleaved(fns: Mapping[str, Timed], reps: int, sync: Sync = None) -> dict[str, float]:
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


def median_ms(fn: Timed, reps: int, sync: Sync = None) -> float:
    return interleaved({"fn": fn}, reps, sync)["fn"]


def rss_mb() -> tuple[float, float]:
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


def reset_peak_rss() -> None:
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


def sync_of(dev: torch.device) -> Sync:
    return torch.cuda.synchronize if dev.type == "cuda" else None


def random_frame(h: int = 720, w: int = 1280, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
