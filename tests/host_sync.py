"""A CPU stand-in for what CUDA-graph capture forbids: host synchronisation inside the step.

On a GPU, ``torch.cuda.graph`` capture fails on anything that waits for the device or copies between
host and device (``.item()``, ``.tolist()``, ``.cpu()``, a tensor built from Python numbers, indexing
with a Python list, a boolean mask); ``torch.cuda.set_sync_debug_mode("error")`` flags the same in an
eager run. Neither works without a GPU, so :func:`forbid_host_sync` makes each of them raise
:class:`HostSync` on the CPU too, for as long as the block runs: at the Python entry points (patched on
``torch.Tensor`` and ``torch``) and, underneath, in the operators they dispatch to (a
``TorchDispatchMode`` that refuses ``_local_scalar_dense``, ``nonzero``, ``masked_select``,
``lift_fresh``), so a call made from C++ is caught as well. :class:`GuardedReplay` is a capture
backend that runs every capture and replay of a step inside it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostSync(AssertionError):
    """A step synchronised with the host (or made a tensor from host data) while it ran."""


_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
_FUNCTIONS = ("tensor", "as_tensor", "asarray", "nonzero", "masked_select", "unique")
# What the entry points dispatch to: a value read back to the host, a data-dependent shape, a tensor
# made from Python data (torch.tensor, and the index tensor a Python list becomes).
_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "lift_fresh", "lift_fresh_copy", "unique", "_unique2")


def _refuse(name: str):
    def refuse(*_args, **_kwargs):
        raise HostSync(f"{name} inside the step: it synchronises with the host (forbidden during CUDA-graph capture)")

    return refuse


def _bad_index(index) -> str | None:
    items = index if isinstance(index, tuple) else (index,)
    for it in items:
        if isinstance(it, list):
            return "indexing with a Python list"
        if isinstance(it, torch.Tensor) and it.dtype == torch.bool:
            return "indexing with a boolean mask"
    return None


class _Ops(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _OPS:
            raise HostSync(f"aten.{name} inside the step: it synchronises with the host or copies host data "
                           "(forbidden during CUDA-graph capture)")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbid_host_sync() -> Iterator[None]:
    """Inside this block every host synchronisation raises :class:`HostSync`."""
    saved_methods = {m: torch.Tensor.__dict__.get(m) for m in _METHODS}
    saved = {f: getattr(torch, f) for f in _FUNCTIONS}
    get, set_ = torch.Tensor.__getitem__, torch.Tensor.__setitem__

    def getitem(self, index):
        why = _bad_index(index)
        if why:
            raise HostSync(f"{why} inside the step: it copies an index from the host")
        return get(self, index)

    def setitem(self, index, value):
        why = _bad_index(index)
        if why:
            raise HostSync(f"{why} inside the step: it copies an index from the host")
        return set_(self, index, value)

    try:
        for m in _METHODS:
            setattr(torch.Tensor, m, _refuse(f"Tensor.{m}"))
        for f in _FUNCTIONS:
            setattr(torch, f, _refuse(f"torch.{f}"))
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = getitem, setitem
        with _Ops():
            yield
    finally:
        torch.Tensor.__getitem__, torch.Tensor.__setitem__ = get, set_
        for f, fn in saved.items():
            setattr(torch, f, fn)
        for m, fn in saved_methods.items():
            if fn is None:
                delattr(torch.Tensor, m)
            else:
                setattr(torch.Tensor, m, fn)


class GuardedReplay:
    """A capture backend for the CPU that behaves like a CUDA graph where it matters here: the step runs
    once at capture into static outputs, each replay recomputes them in place from the static inputs,
    and every run of the step happens under :func:`forbid_host_sync` (unless ``guard`` is False: the
    guard costs a Python call per operator). Counts captures and replays."""

    def __init__(self, fail: BaseException | None = None, guard: bool = True) -> None:
        self.fail = fail
        self.guard = guard
        self.captures = 0
        self.replays = 0
        self.released = 0

    def capture(self, step, static):
        if self.fail is not None:
            raise self.fail
        with self._guarded():
            outputs = step(static)
        self.captures += 1

        def replay() -> None:
            self.replays += 1
            with self._guarded():
                again = step(static)
            outputs[0].copy_(again[0])

        return replay, outputs

    def release(self) -> None:
        self.released += 1

    def _guarded(self):
        return forbid_host_sync() if self.guard else contextlib.nullcontext()
