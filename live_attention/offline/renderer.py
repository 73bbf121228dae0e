"""Render jobs: inputs paired with outputs, and the :class:`Renderer` that turns one job into one file.

The same :class:`Renderer` runs the jobs of ``live-attention render`` on this machine, or on a Ray
worker (:mod:`live_attention.offline.distributed`). Each job goes through the overlapped offline path
of :mod:`live_attention.offline.batch` and writes ``NAME.partial.EXT``, renamed when it is complete.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2

from live_attention.config import Config
from live_attention.core.compare import check_aligned
from live_attention.core.engine import AttentionEngine
from live_attention.core.models import compare_engine_from_config, engine_from_config
from live_attention.datatypes import MapSettings, Status, View
from live_attention.errors import SourceError, UserError
from live_attention.io.mapfile import MapsFile
from live_attention.io.outputs import PartialOutput, check_output
from live_attention.io.video import IMAGE_EXTENSIONS, H264Writer, VideoReader, read_image
from live_attention.modes import default_view, map_settings
from live_attention.offline import batch
from live_attention.ui.controller import view_from_config
from live_attention.ui.frame import canvas_for

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Plan:
    """What ``render`` will do: the jobs, and the inputs that failed before any work (``(input, why)``:
    a missing file, an empty folder). ``single``: one input file, whose error is the command's error."""

    jobs: list[Job]
    failed: list[tuple[str, str]]
    single: bool


def plan_jobs(inputs: list[str], output: str, overwrite: bool) -> Plan:
    """Expand folders, pair each input with its output, check everything before any work starts.

    With several inputs (or a folder), ``output`` is a folder and an input that cannot be found or a
    folder with nothing to render is one failure, not the end of the run. With one input file it is a
    file, or a folder where it is one already or ends with ``/``: ``photo.jpg -o out/`` gives ``out/photo.png``.
    """
    files, failed = _expand(inputs)
    out = Path(output).expanduser()
    single = len(inputs) == 1 and not Path(inputs[0]).expanduser().is_dir()
    to_folder = not single or out.is_dir() or output.endswith(("/", os.sep))
    if len(inputs) == 1 and failed:  # nothing else to render: the one input's error is the command's
        raise SourceError(failed[0][1])
    if not to_folder:
        if not out.suffix:  # `-o out` for `-o out/`?
            raise UserError(f"-o {output}: with one input, -o is a file such as {output}.mp4 or {output}.png, or a "
                            f"folder: {output}/")
        src = files[0]
        is_image = src.suffix.lower() in IMAGE_EXTENSIONS
        allowed = IMAGE_OUT + VIDEO_OUT if is_image else VIDEO_OUT
        what = "an image renders to .png or .jpg (or .mp4)" if is_image else "a video renders to .mp4 (or .mkv)"
        return Plan([Job(src, check_output(out, overwrite, allowed, what))], [], single=True)
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file: with several inputs, -o is a folder (one output per input)")
    if out.suffix and not out.is_dir() and not output.endswith(("/", os.sep)):
        raise UserError(f"-o {out}: with several inputs, -o is a folder (one output per input)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, a read-only place: no input could be written
        raise UserError(f"-o {out}: cannot create this folder ({exc.strerror or exc})") from None
    return Plan(_pair(files, out, overwrite), failed, single)


def _expand(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files of the inputs (folders expanded, sorted), and the inputs that give none, with why."""
    files: list[Path] = []
    failed: list[tuple[str, str]] = []
    for spec in inputs:
        p = Path(spec).expanduser()
        try:
            if p.is_dir():
                found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (*IMAGE_EXTENSIONS, *VIDEO_IN))
                if not found:
                    failed.append((spec, f"no videos or images in folder {p}"))
                files.extend(found)
            elif p.exists():
                files.append(p)
            else:
                failed.append((spec, f"input not found: {p}"))
        except OSError as exc:  # a folder that cannot be listed
            failed.append((spec, f"cannot read {p}: {exc.strerror or exc}"))
    return files, failed


def _pair(files: list[Path], out: Path, overwrite: bool) -> list[Job]:
    """One output in folder ``out`` per input, named after it; a name taken twice also names its folder."""
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


def failure_reason(exc: BaseException) -> str:
    """One line for an input that failed: a UserError's own text, an OSError's reason and file, else the
    exception's type and first sentence (the traceback is for ``-v``)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror + (f" ({exc.filename})" if exc.filename else "")
    from live_attention.core.weights import first_sentence

    return f"{type(exc).__name__}: {first_sentence(exc)}"


def summary_line(total: int, failed: int) -> str:
    return f"{total - failed} of {total} inputs rendered" + (f", {failed} failed" if failed else "")


class Renderer:
    """Renders jobs with one engine (loaded once). The same object runs locally or on a Ray worker."""

    def __init__(self, cfg: Config, hud: bool = True, batch_size: int | None = None, workers: int | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.engine: AttentionEngine = engine_from_config(cfg)
        self.compare = compare_engine_from_config(cfg, self.engine)  # --compare: side by side on the same frames
        view = replace(view_from_config(cfg), show_hud=hud, target=self.engine.class_index(cfg.view.target))
        self.view = view
        self.asked = batch_size  # None: the default, which is capped without a word
        self.batch = batch_size or batch.default_batch(self.engine)
        self.workers = workers
        self.say = say or logger.warning  # a note for the user (the batch capped by memory), said once
        self._capped = False

    def batch_for(self, frame_hw: tuple[int, int], canvas_wh: tuple[int, int]) -> int:
        """The batch for frames of this size: ``--batch``, or fewer where its frames would not fit in
        :func:`~live_attention.offline.batch.memory_budget` (said once per run when ``--batch`` was given)."""
        per_frame, budget = batch.bytes_per_frame(self.engine, frame_hw, canvas_wh), batch.memory_budget()
        n = batch.capped_batch(self.batch, per_frame, budget)
        if n < self.batch:
            h, w = frame_hw
            note = (f"--batch {self.batch} would hold about {_size(self.batch * per_frame)} of {w}×{h} frames at "
                    f"once: using batches of {n} (a {_size(budget)} memory budget)")
            if self.asked is not None and not self._capped:
                self._capped = True
                self.say(note)
            else:
                logger.info(note)
        return n

    def _check_aligned(self, h: int, w: int) -> None:
        if self.compare is not None:
            check_aligned(self.engine, self.compare, h, w)

    def settings(self, grid: tuple[int, int]) -> tuple[View, MapSettings]:
        """The view of a picture on a ``grid`` of patches, and the map settings it asks for."""
        view = default_view(self.view, grid)
        s = self.cfg.view
        return view, map_settings(view, MapSettings(residual=s.residual, discard_ratio=s.discard_ratio))

    def render(self, job: Job, progress_factory: Callable[[int | None, str], ProgressBar] | None = None,
               maps: MapsFile | None = None) -> tuple[int, int | None]:
        """Render one job; returns (frames written, frames the input announced or None). ``maps``
        collects each frame's shown map (``--save-maps``); the caller writes it."""
        status = Status(model=self.engine.describe(), untrained=self.engine.untrained, source=job.input.name)
        if self.compare is not None:
            status = replace(status, pair=Status(model=self.compare.describe(), untrained=self.compare.untrained,
                                                 source=job.input.name))
        try:  # an unreadable input says why (permissions, I/O), not that it is no valid file
            if job.input.is_file():  # (a pipe would block here)
                with open(job.input, "rb"):
                    pass
        except OSError as exc:
            raise SourceError(f"cannot read {job.input}: {exc.strerror or exc}") from None
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
        self._check_aligned(*img.shape[:2])
        view, settings = self.settings(self.engine.grid_for(*img.shape[:2]))
        pictures = []
        results = batch.engine_results(self.engine, settings, job.input.name, self.compare)
        batch.run([batch.Item(0, img, 0.0)], results, view, status, lambda rgb, _t: pictures.append(rgb),
                  batch=1, workers=1, entropy_seconds=self.cfg.view.entropy_seconds, residual=self.cfg.view.residual,
                  maps=maps)
        rgb = pictures[0]
        with PartialOutput(job.output, overwrite=True) as out:
            if job.output.suffix.lower() in VIDEO_OUT:
                with H264Writer(out.path, rgb.shape[1], rgb.shape[0], overwrite=True) as w:
                    w.write(rgb, 0.0)
            else:
                ok, data = cv2.imencode(job.output.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise UserError(f"cannot encode {job.output.name}")
                try:  # written here, not by OpenCV, so that a failure says why (a full disk, a read-only folder)
                    out.path.write_bytes(data.tobytes())
                except OSError as exc:
                    raise UserError(f"cannot write {out.path}: {exc.strerror or exc}") from None
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
            self._check_aligned(h, w)
            view, settings = self.settings(self.engine.grid_for(h, w))
            total = reader.frames_announced
            progress = progress_factory(total, f"render {job.input.name}") if progress_factory else None
            rec = self.cfg.record
            size = canvas_for((h, w), self.compare is not None)
            size_of_batch = self.batch_for((h, w), size)
            try:
                with PartialOutput(job.output, overwrite=True) as out, \
                        H264Writer(out.path, size[0], size[1], fps=reader.fps, crf=rec.crf, preset=rec.preset,
                                   overwrite=True) as writer:
                    n = batch.run(batch.video_items(reader), batch.engine_results(self.engine, settings, job.input.name, self.compare),
                                  view, status, writer.write, batch=size_of_batch, workers=self.workers,
                                  entropy_seconds=self.cfg.view.entropy_seconds, residual=self.cfg.view.residual,
                                  size=size, progress=progress.update if progress else None,
                                  prepare=batch.preprocessor(self.engine), maps=maps)
                    if n == 0:  # raised in here, so no empty output is renamed into place
                        why = f"it announces {total}: truncated or damaged?" if total else "corrupt or unsupported codec?"
                        raise SourceError(f"cannot decode any frame of {job.input} ({why})")
            finally:
                if progress:
                    progress.close()
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


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"
