"""Render jobs: inputs paired with outputs, and the :class:`Renderer` that turns one job into one file.

The same :class:`Renderer` runs the jobs of ``live-attention render`` on this machine, or on a Ray
worker (:mod:`live_attention.pipeline.distributed`). Each job goes through the overlapped offline path
of :mod:`live_attention.pipeline.batch` and writes ``NAME.partial.EXT``, renamed when it is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2

from live_attention.config import Config
from live_attention.core.engine import AttentionEngine
from live_attention.core.models import engine_from_config
from live_attention.core.render import canvas_size
from live_attention.datatypes import MapSettings, Status, View
from live_attention.errors import SourceError, UserError
from live_attention.io.mapfile import MapsFile
from live_attention.io.outputs import PartialOutput, check_output
from live_attention.io.video import IMAGE_EXTENSIONS, H264Writer, VideoReader, read_image
from live_attention.pipeline import batch
from live_attention.pipeline.controller import view_from_config
from live_attention.pipeline.loop import settings_for

VIDEO_OUT = (".mp4", ".mkv", ".mov")
IMAGE_OUT = (".png", ".jpg", ".jpeg")
VIDEO_IN = (".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".gif", ".mpg", ".mpeg", ".wmv", ".flv")


class ProgressBar(Protocol):
    def update(self, done: int) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Job:
    """One input and where its output goes."""

    input: Path
    output: Path
    renamed: bool = False  # its name clashed with another input's: the output also names its folder

    @property
    def is_image(self) -> bool:
        return self.input.suffix.lower() in IMAGE_EXTENSIONS


def plan_jobs(inputs: list[str], output: str, overwrite: bool) -> list[Job]:
    """Expand folders, pair each input with its output, check everything before any work starts."""
    files: list[Path] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (*IMAGE_EXTENSIONS, *VIDEO_IN))
            if not found:
                raise SourceError(f"no videos or images in folder {p}")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            raise SourceError(f"input not found: {p}")
    out = Path(output).expanduser()
    many = len(files) > 1 or any(Path(s).expanduser().is_dir() for s in inputs)
    if not many:
        src = files[0]
        is_image = src.suffix.lower() in IMAGE_EXTENSIONS
        allowed = IMAGE_OUT + VIDEO_OUT if is_image else VIDEO_OUT
        what = "an image renders to .png or .jpg (or .mp4)" if is_image else "a video renders to .mp4 (or .mkv)"
        return [Job(src, check_output(out, overwrite, allowed, what))]
    if out.suffix and not out.is_dir():
        raise UserError(f"-o {out}: with several inputs, -o is a folder (one output per input)")
    out.mkdir(parents=True, exist_ok=True)
    jobs, seen = [], set()
    for f in files:
        ext = ".png" if f.suffix.lower() in IMAGE_EXTENSIONS else ".mp4"
        target = out / (f.stem + ext)
        if target in seen:  # the same name from another folder or with another extension: say which
            base = f"{f.parent.name or 'input'}-{f.stem}{f.suffix.replace('.', '-')}"
            target, k = out / (base + ext), 2
            while target in seen:
                target, k = out / f"{base}-{k}{ext}", k + 1
        seen.add(target)
        if target.exists() and not overwrite:
            raise UserError(f"{target} already exists: choose another folder or pass --overwrite")
        jobs.append(Job(f, target, renamed=target.stem != f.stem))
    return jobs


class Renderer:
    """Renders jobs with one engine (loaded once). The same object runs locally or on a Ray worker."""

    def __init__(self, cfg: Config, hud: bool = True, batch_size: int | None = None, workers: int | None = None) -> None:
        self.cfg = cfg
        self.engine: AttentionEngine = engine_from_config(cfg)
        view = replace(view_from_config(cfg), show_hud=hud, target=self.engine.class_index(cfg.view.target))
        self.view = view
        self.batch = batch_size or batch.default_batch(self.engine)
        self.workers = workers

    def settings(self, grid: tuple[int, int]) -> tuple[View, MapSettings]:
        view = self.view
        if view.mode == "query" and view.query_patch is None:
            gh, gw = grid
            view = replace(view, query_patch=(gh // 2) * gw + gw // 2)
        s = self.cfg.view
        base = MapSettings(residual=s.residual, discard_ratio=s.discard_ratio)
        return view, replace(base, **settings_for(view))

    def render(self, job: Job, progress_factory: Callable[[int | None, str], ProgressBar] | None = None,
               maps: MapsFile | None = None) -> tuple[int, int | None]:
        """Render one job; returns (frames written, frames the input announced or None). ``maps``
        collects each frame's shown map (``--save-maps``); the caller writes it."""
        status = Status(model=self.engine.describe(), untrained=self.engine.untrained, source=job.input.name)
        add = maps.add if maps is not None else None
        if job.is_image:
            return self._image(job, status, add), 1
        return self._video(job, status, progress_factory, add)

    def _image(self, job: Job, status: Status, maps=None) -> int:
        img = read_image(job.input)
        if img is None:
            raise SourceError(f"cannot read image {job.input}: is it a valid image file?")
        if min(img.shape[:2]) < 2:
            raise SourceError(f"image {job.input} is {img.shape[1]}×{img.shape[0]} pixels: too small to show a model")
        view, settings = self.settings(self.engine.grid_for(*img.shape[:2]))
        pictures = []
        results = batch.engine_results(self.engine, settings, job.input.name)
        batch.run([batch.Item(0, img, 0.0)], results, view, status, lambda rgb, _t: pictures.append(rgb),
                  batch=1, workers=1, entropy_seconds=self.cfg.view.entropy_seconds, residual=self.cfg.view.residual,
                  maps=maps)
        rgb = pictures[0]
        with PartialOutput(job.output, overwrite=True) as out:
            if job.output.suffix.lower() in VIDEO_OUT:
                with H264Writer(out.path, rgb.shape[1], rgb.shape[0], overwrite=True) as w:
                    w.write(rgb, 0.0)
            elif not cv2.imwrite(str(out.path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
                raise UserError(f"cannot write {job.output}: check the folder is writable and has space")
        return 1

    def _video(self, job: Job, status: Status, progress_factory, maps=None) -> tuple[int, int | None]:
        try:
            reader = VideoReader(job.input)
        except SourceError as exc:
            raise SourceError(f"cannot open video {job.input}: is it a valid video file? ({exc})") from None
        with reader:
            w, h = reader.size
            if min(w, h) < 2:
                raise SourceError(f"video {job.input} is {w}×{h} pixels: too small to show a model")
            view, settings = self.settings(self.engine.grid_for(h, w))
            total = reader.frames_announced
            progress = progress_factory(total, f"render {job.input.name}") if progress_factory else None
            rec = self.cfg.record
            size = canvas_size((h, w))
            try:
                with PartialOutput(job.output, overwrite=True) as out, \
                        H264Writer(out.path, size[0], size[1], fps=reader.fps, crf=rec.crf, preset=rec.preset,
                                   overwrite=True) as writer:
                    n = batch.run(batch.video_items(reader), batch.engine_results(self.engine, settings, job.input.name),
                                  view, status, writer.write, batch=self.batch, workers=self.workers,
                                  entropy_seconds=self.cfg.view.entropy_seconds, residual=self.cfg.view.residual,
                                  size=size, progress=progress.update if progress else None,
                                  prepare=batch.preprocessor(self.engine), maps=maps)
            finally:
                if progress:
                    progress.close()
            if n == 0:
                raise SourceError(f"cannot decode any frame of {job.input}: is it a valid video file?")
        return n, total


def report_lines(job: Job, frames: int, expected: int | None) -> list[str]:
    """What a finished input says (locally and on Ray): a warning for a short file, then where it went."""
    lines = []
    if expected and frames < expected:
        lines.append(f"warning: {job.input} ended after {frames} of the {expected} frames it announces "
                     "(a truncated or damaged file?)")
    made = f"from {job.input} " if job.renamed else ""
    lines.append(f"wrote {job.output} ({made}{frames} frame{'' if frames == 1 else 's'})")
    return lines
