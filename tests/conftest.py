"""Shared fixtures: small random-init ViTs, never a download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("LIVE_ATTENTION_OFFLINE", "1")  # tests never touch the network
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
if not MEDIA.is_dir():  # CI clones beside a copy of shared/
    MEDIA = Path(os.environ.get("LIVE_ATTENTION_MEDIA", "../shared/media")).resolve()


def tiny_vit(seed: int = 0, image_size: int = 32, patch_size: int = 8, layers: int = 3, heads: int = 2,
             hidden: int = 16, classes: int = 10):
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=layers, num_heads=heads,
        hidden_dim=hidden, mlp_dim=hidden * 2, num_classes=classes,
    ).eval()


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked ``cuda`` need a GPU: without one they are skipped (the one skip the suite allows;
    ``make gpu-check`` runs them where there is one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: make gpu-check runs these on one")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.fail(f"shared media not found at {MEDIA}: set LIVE_ATTENTION_MEDIA")
    return MEDIA


def cut_clip(directory: Path, media_dir: Path, seconds: float | None, name: str, *, start: float = 0.0,
             frames: int | None = None) -> Path:
    """``seconds`` (or ``frames`` frames) of the shared tour.mp4 from ``start``, re-encoded (exact frame
    count, no audio)."""
    import subprocess

    length = ["-frames:v", str(frames)] if frames is not None else ["-t", str(seconds)]
    out = directory / name
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-ss", str(start), "-i", str(media_dir / "tour.mp4"),
                    *length, "-an", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def xserver():
    """One Xvfb server for a module's GUI tests (tests/gui_helpers.py starts it)."""
    from tests.gui_helpers import XServer

    x = XServer()
    yield x
    x.stop()

