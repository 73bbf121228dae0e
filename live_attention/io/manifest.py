"""A recording's manifest: the models (one, or two with ``--compare``), the sizes, the files, the
configuration and the software that wrote it. Reading it back is :mod:`live_attention.io.recording`."""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from live_attention.config import Config
from live_attention.datatypes import View
from live_attention.io.recording import CHUNK_FRAMES, FORMAT_VERSION
from live_attention.io.session_dir import ATTN_COMPARE_DIR, ATTN_DIR, MAPS_KEY, OVERLAY, RAW


def software_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import live_attention

    out: dict[str, str | None] = {"python": platform.python_version(), "live_attention": live_attention.__version__}
    for key, dist in (("torch", "torch"), ("torchvision", "torchvision"), ("av", "av"), ("numpy", "numpy"),
                      ("opencv", "opencv-python"), ("dearpygui", "dearpygui")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:  # e.g. opencv-python-headless: ask the module
            out[key] = None
    if out["opencv"] is None:
        import cv2

        out["opencv"] = cv2.__version__
    return out


def model_entry(engine: Any, weights: str) -> dict[str, Any]:
    """What the manifest says of a model: enough to load it again and to read its maps."""
    if weights.lower() not in ("imagenet", "default", "pretrained", "random", "demo") and Path(weights).expanduser().exists():
        weights = str(Path(weights).expanduser().resolve())
    return {
        "name": engine.name,
        "weights": weights,  # what to pass to load_model again
        "weights_label": engine.weights_label,
        "weights_sha256": engine.weights_sha256,
        "untrained": bool(engine.untrained),
        "precision": engine.precision,
        "device": str(engine.device),
        "image_size": engine.image_size,
        "full_frame": bool(engine.full_frame),
        "patch_size": engine.patch_size,
        "num_prefix": engine.num_prefix,
        "classifier": bool(engine.has_classifier),
        "categories": len(engine.categories),
        "category_names": list(engine.categories),
    }


def build_manifest(engine: Any, cfg: Config, view: View | None, compare: Any = None) -> dict[str, Any]:
    """The session's manifest; with ``compare`` (the second model of ``--compare``) also its entry, its
    sizes and the folder of its maps (``"compare"``)."""
    second = None
    if compare is not None:
        second = {"model": model_entry(compare, cfg.compare.weights), "grid": list(compare.grid),
                  "layers": compare.num_layers, "heads": compare.num_heads, MAPS_KEY: ATTN_COMPARE_DIR}
    return {
        "format": "live-attention-session",
        "format_version": FORMAT_VERSION,
        "start_time": datetime.now(timezone.utc).astimezone().isoformat(),
        "model": model_entry(engine, cfg.model.weights),
        "compare": second,
        "grid": list(engine.grid),
        "layers": engine.num_layers,
        "heads": engine.num_heads,
        "patches": engine.num_patches,
        "frame_size": None,  # [w, h], set with the first frame
        "overlay_size": None,
        "files": {"overlay": OVERLAY, "raw": RAW, MAPS_KEY: ATTN_DIR},
        "raw_codec": cfg.record.raw_codec,  # "auto" is replaced by the codec chosen (see raw_codec_choice)
        "raw_codec_choice": None,
        "recorder": {"pid": os.getpid(), "host": platform.node()},
        "attention_dtype": "float16",
        "chunk_frames": CHUNK_FRAMES,
        "time_base": "1/1000",
        "initial_view": asdict(view) if view is not None else None,
        "config": cfg.to_dict(),
        "software": software_versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "argv": sys.argv},
        "end": None,
    }
