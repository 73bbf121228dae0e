"""``live-attention render``: a video or image through the model and the renderer, headless.

Every input frame is processed in order (no latest-wins here), so the output has exactly one frame
per input frame, at the input's timestamps. Runs on the caller's thread.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from live_attention.app import EntropyHistory, view_from_config
from live_attention.capture import IMAGE_EXTENSIONS, Frame, LatestSlot
from live_attention.config import Config
from live_attention.errors import SourceError, UserError
from live_attention.render import Extras, Status, View, canvas_size, render
from live_attention.worker import InferenceWorker, MapSettings, Result

VIDEO_OUT = (".mp4", ".mkv", ".mov")
IMAGE_OUT = (".png", ".jpg", ".jpeg")


def _engine_for(cfg: Config):
    from live_attention.cli import _check_layer_head, load_engine

    engine = load_engine(cfg)
    _check_layer_head(cfg, engine)
    return engine


def frame_extras(result: Result, view: View, history: EntropyHistory, t: float, residual: float) -> Extras:
    """Entropy history (and, in flow mode, the flow map) for an offline render of one frame."""
    history.add(t, result)
    flow = result.flow(residual) if view.mode == "flow" and result.attn is not None else None
    return history.extras(flow, result.seq)


def render_file(
    input_path: str,
    output_path: str,
    cfg: Config,
    *,
    overwrite: bool = False,
    hud: bool = True,
    progress_factory=None,
) -> tuple[Path, int, int | None]:
    """Render ``input_path`` into ``output_path``. Returns the output, the frames written and the
    frames the input announced (None when it did not say)."""
    src = Path(input_path).expanduser()
    out = Path(output_path).expanduser()
    if not src.exists():
        raise SourceError(f"input not found: {src}")
    if src.is_dir():
        raise SourceError(f"input {src} is a folder: render takes one video or image file")
    is_image = src.suffix.lower() in IMAGE_EXTENSIONS
    suffix = out.suffix.lower()
    if is_image and suffix not in IMAGE_OUT + VIDEO_OUT:
        raise UserError(f"output {out.name}: use .png or .jpg for an image")
    if not is_image and suffix not in VIDEO_OUT:
        raise UserError(f"output {out.name}: use .mp4 (or .mkv) for a video input")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another name or pass --overwrite")
    if not out.parent.exists():
        raise UserError(f"output folder {out.parent} does not exist: create it first")

    engine = _engine_for(cfg)
    view = replace(view_from_config(cfg), show_hud=hud)
    if view.mode == "query" and view.query_patch is None:
        gh, gw = engine.grid
        view = replace(view, query_patch=(gh // 2) * gw + gw // 2)
    worker = InferenceWorker(
        engine, LatestSlot(), LatestSlot(),
        settings=MapSettings(fusion=cfg.view.fusion, residual=cfg.view.residual,
                             discard_ratio=cfg.view.discard_ratio, query_patch=view.query_patch,
                             entropy_layer=cfg.view.layer),
        keep_attn=view.mode in ("flow", "query"),
    )
    status = Status(model=engine.describe(), untrained=engine.untrained, source=src.name)
    history = EntropyHistory(cfg.view.entropy_seconds)

    if is_image:
        img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise SourceError(f"cannot read image {src}: is it a valid image file?")
        if img.dtype != np.uint8:
            img = cv2.convertScaleAbs(img, alpha=255.0 / max(1, int(img.max())))
        res = worker.process(Frame(image=img, seq=0, t_capture_ns=time.monotonic_ns(), source=src.name,
                                   pts_s=0.0))
        rgb = render(img, res, view, status, frame_extras(res, view, history, 0.0, cfg.view.residual),
                     size=canvas_size(img.shape))
        if suffix in VIDEO_OUT:
            from live_attention.video import H264Writer

            with H264Writer(out, rgb.shape[1], rgb.shape[0], overwrite=overwrite) as w:
                w.write(rgb, 0.0)
        elif not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise UserError(f"cannot write {out}: check the folder is writable and has space")
        return out, 1, 1

    cap = cv2.VideoCapture(str(src))
    if not cap.isOpened():
        raise SourceError(f"cannot open video {src}: is it a valid video file?")
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise SourceError(f"cannot decode any frame of {src}: is it a valid video file?")
    fps = cap.get(cv2.CAP_PROP_FPS)
    fps = fps if fps and fps == fps and fps > 0 else 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    from live_attention.video import H264Writer

    size = canvas_size(first.shape)
    progress = progress_factory(total, f"render {src.name}") if progress_factory else None
    n = 0
    try:
        with H264Writer(out, size[0], size[1], fps=fps, crf=cfg.record.crf, preset=cfg.record.preset,
                        overwrite=overwrite) as writer:
            frame = first
            t = 0.0
            while frame is not None:
                res = worker.process(Frame(image=frame, seq=n, t_capture_ns=time.monotonic_ns(),
                                           source=src.name, pts_s=t))
                rgb = render(frame, res, view, status, frame_extras(res, view, history, t, cfg.view.residual),
                             size=size)
                writer.write(rgb, t)
                n += 1
                if progress:
                    progress.update(n)
                ok, frame = cap.read()
                if not ok:
                    frame = None
                else:
                    # The decoded frame's own media time (true timing for variable-rate files); n / fps
                    # where the backend gives none or a time that does not advance.
                    pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                    t = pos if pos > t else n / fps
    finally:
        cap.release()
        if progress:
            progress.close()
    return out, n, total
