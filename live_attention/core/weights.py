"""Weight files: safe loading, checks, and the offline switch. Runs once, at model load.

Checkpoints load with ``torch.load(..., weights_only=True)`` (or safetensors, which holds tensors
only): a file can never run code. Every problem is a one-line :class:`WeightsError` that names the
file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from live_attention.errors import WeightsError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")
_NESTED = ("state_dict", "model", "module", "model_state_dict")


def offline() -> bool:
    """True when no download may be tried: ``LIVE_ATTENTION_OFFLINE``, or the hub libraries' own switches
    (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``; huggingface_hub keeps what it read at import in
    ``huggingface_hub.constants``, which counts too once it is imported)."""
    flags = ("LIVE_ATTENTION_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    if any(os.environ.get(f, "").strip().lower() not in ("", "0", "false", "no") for f in flags):
        return True
    hub = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(hub, "HF_HUB_OFFLINE", False))


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_sentence(exc: BaseException, limit: int = 180) -> str:
    """An exception's first sentence on one line, cut at a word (never mid-word) when long."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for sep in (". ", "; "):
        if sep in text:
            text = text.split(sep, 1)[0]
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0] + " ..."
    return text


def safe_torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)`` on the CPU, without the safe unpickler's own warnings: a pickle
    of Python objects made it print a ``UserWarning`` ("Detected pickle protocol 4 ...") before our
    one-line refusal, which says what matters (the file holds Python objects, what to do instead)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\._weights_only_unpickler")
        warnings.filterwarnings("ignore", message=r"Detected pickle protocol", category=UserWarning)
        return torch.load(path, map_location="cpu", weights_only=True)


def load_weights_file(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a checkpoint safely and return its state dict (name -> tensor).

    Accepts ``.pth``/``.pt``/``.bin``/``.ckpt`` (``torch.load(weights_only=True)``) and
    ``.safetensors``; a plain state dict or one nested under ``state_dict``/``model``/``module``.
    Missing, unreadable or corrupt files, and tensors with NaN or inf, raise :class:`WeightsError`.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise WeightsError(f"weights file not found: {p} (check the path, or use --weights imagenet)")
    if p.is_dir():
        raise WeightsError(f"weights path is a folder, not a file: {p} (pass the checkpoint file inside it)")
    kind = checkpoint_kind(p, f"weights file {p}")
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # a dependency, but an install may lack it: not the file's fault
            raise WeightsError(f"cannot read weights file {p}: safetensors is not installed "
                               "(pip install safetensors)") from None
    try:
        if kind == "safetensors":
            obj: object = load_file(str(p), device="cpu")
        else:
            obj = safe_torch_load(p)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"cannot read weights file {p}: it holds Python objects, not only tensors, and a safe load "
            "refuses them (save the model's state_dict(), or use .safetensors)"
        ) from exc
    except Exception as exc:  # zip errors, truncated files, safetensors header errors
        raise WeightsError(
            f"cannot read weights file {p}: {first_sentence(exc)} (is it a PyTorch or safetensors "
            "checkpoint? re-download it)"
        ) from exc
    for key in _NESTED:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {p} does not hold a state dict of tensors")
    check_finite(obj, f"weights file {p}")
    return obj


def checkpoint_kind(p: Path, source: str) -> str:
    """``"torch"`` (a zip archive or a legacy pickle) or ``"safetensors"``, told from the file's first bytes
    whatever its name; anything else (empty, text, an image, HTML from a failed download) is a one-line
    WeightsError saying what it is not."""
    try:
        with open(p, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise WeightsError(f"cannot read {source}: {first_sentence(exc)}") from exc
    if not head:
        raise WeightsError(f"{source} is empty (an interrupted download or copy?): fetch it again")
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":  # an 8-byte header length, then the JSON header
        return "safetensors"
    raise WeightsError(f"{source} is not a PyTorch or safetensors checkpoint (it starts with {head[:8]!r}): "
                       "pass a .pth, .pt, .bin or .safetensors file saved from the model")


def check_finite(state: dict[str, Tensor], source: str) -> None:
    """Refuse weights with NaN or inf: they would poison every map (and the HUD's numbers)."""
    for name, t in state.items():
        if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise WeightsError(
                f"{source}: tensor {name} has {bad} NaN or inf values (a broken training run or a "
                "damaged file): use other weights"
            )


def apply_state_dict(module: nn.Module, state: dict[str, Tensor], *, name: str, source: str) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the mismatch."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shape_bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shape_bad:
        parts = []
        if shape_bad:
            k = shape_bad[0]
            parts.append(
                f"{len(shape_bad)} tensors of another shape (e.g. {k}: file {tuple(state[k].shape)}, "
                f"model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise WeightsError(
            f"weights {source} do not fit {name}: {'; '.join(parts)}. Pass --model matching the file"
        )
    check_finite(state, f"weights {source}")
    module.load_state_dict(state, strict=True)


PRETRAINED = ("imagenet", "default", "pretrained")  # --weights words for "the model's own published weights"


def weights_kind(w: str) -> str:
    """What a ``--weights`` value asks for: ``random``, ``pretrained`` (the model's published weights), or a ``file``."""
    low = w.lower()
    if low == "random":
        return "random"
    if low in PRETRAINED:
        return "pretrained"
    return "file"


def local_weights(module: nn.Module, w: str, kind: str, name: str, label: str) -> tuple[str, str | None]:
    """A ``--weights`` file applied to ``module``; returns the HUD label and the file's SHA-256."""
    if kind == "random":
        return "random", None
    if kind != "file":
        return label, None
    path = Path(w).expanduser()
    apply_state_dict(module, load_weights_file(path), name=name, source=f"file {path}")
    return path.name, file_sha256(path)
