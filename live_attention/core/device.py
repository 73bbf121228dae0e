"""Where and in what precision a model runs: ``--device`` and ``--precision`` resolved for this machine."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import torch

from live_attention.errors import UserError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_native_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX-BF16, Arm BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.system() == "Darwin" and platform.machine() == "arm64" and _macos_has_bf16()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def _macos_has_bf16() -> bool:
    try:
        out = subprocess.run(
            ["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True, timeout=2
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return out == "1"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA, then MPS, then the CPU. An unavailable explicit choice is a UserError."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available here: use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {device!r} asked for but MPS is not available here: use --device cpu or auto")
    return dev


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether ``a`` and ``b`` are one device: ``cuda`` is the current GPU, as ``cuda:N`` names it."""
    def index(d: torch.device) -> int | None:
        if d.type == "cuda" and d.index is None:
            return torch.cuda.current_device() if torch.cuda.is_available() else 0
        return d.index

    return a.type == b.type and index(a) == index(b)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: fp16 on CUDA and MPS; bf16 on a CPU with native bf16; fp32 otherwise."""
    p = str(precision).strip().lower()
    if p not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if p != "auto":
        return p  # as asked (fp16 on a CPU is emulated and slow, but allowed)
    if device.type in ("cuda", "mps"):
        return "fp16"
    return "bf16" if cpu_has_native_bf16() else "fp32"
