"""Output files that never clobber and never leave a truncated file under the final name.

* :func:`unique_path`: a new name in a folder (screenshots): a user's file is never overwritten.
* :func:`check_output`: the one-line checks before a long job starts (extension, folder, existing file).
* :class:`PartialOutput`: a render or export writes ``NAME.partial.EXT`` beside the final name and
  renames it at the end; interrupted (Ctrl-C, SIGTERM), the partial file keeps that clearly partial
  name, so a rerun is never blocked by a truncated file; after an error it is removed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

from live_attention.errors import UserError

logger = logging.getLogger(__name__)


def unique_path(directory: str | os.PathLike[str], stem: str, suffix: str) -> Path:
    """A path in ``directory`` that does not exist yet (never overwrite a user's file)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{stem}{suffix}"
    i = 1
    while p.exists():
        p = d / f"{stem}-{i}{suffix}"
        i += 1
    return p


def save_png(rgb: np.ndarray, directory: str | os.PathLike[str], prefix: str) -> Path:
    """Save an RGB picture as ``PREFIX-YYYYmmdd-HHMMSS.png`` (a new name) in ``directory``."""
    path = unique_path(directory, datetime.now().strftime(f"{prefix}-%Y%m%d-%H%M%S"), ".png")
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


def check_output(path: str | os.PathLike[str], overwrite: bool, suffixes: Sequence[str], what: str) -> Path:
    """The output checks made before any work: a known extension, an existing folder, no existing file
    unless ``overwrite``. Returns the expanded path; raises :class:`UserError` (one line)."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in suffixes:
        raise UserError(f"output {out.name}: {what}, use {' or '.join(suffixes)}")
    if out.is_dir():
        raise UserError(f"output {out} is a folder: give a file name (or -o DIR with several inputs)")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another name or pass --overwrite")
    if not out.parent.exists():
        raise UserError(f"output folder {out.parent} does not exist: create it first")
    if not out.parent.is_dir():
        raise UserError(f"output folder {out.parent} is a file, not a folder")
    return out


def partial_path(out: Path) -> Path:
    """``clip.mp4`` -> ``clip.partial.mp4``: the extension stays, so writers pick the same format."""
    return out.with_name(f"{out.stem}.partial{out.suffix}")


class PartialOutput:
    """Write to ``NAME.partial.EXT``, rename to ``NAME.EXT`` when the block ends well.

    Interrupted (KeyboardInterrupt from Ctrl-C or SIGTERM), the partial file is kept under its partial
    name when anything was written (:attr:`kept` says where); on any other error it is removed.
    """

    def __init__(self, out: Path, overwrite: bool = False) -> None:
        self.out = out
        self.overwrite = overwrite
        self.path = partial_path(out)
        self.kept: Path | None = None

    def __enter__(self) -> PartialOutput:
        self.path.unlink(missing_ok=True)  # a partial file left by a killed run: ours to replace
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self.path.is_file():  # the writer never made it: say that, not the rename's ENOENT
                raise UserError(f"nothing was written to {self.path}")
            if self.out.exists() and not self.overwrite:  # appeared while we worked: keep both
                self.kept = self.path
                raise UserError(f"{self.out} appeared while writing: the result is in {self.path}")
            try:
                os.replace(self.path, self.out)
            except OSError as e:
                self.kept = self.path
                raise UserError(f"cannot rename {self.path} to {self.out.name}: {e.strerror or e}") from None
            return
        interrupted = issubclass(exc_type, (KeyboardInterrupt, SystemExit))
        try:
            if interrupted and self.path.exists() and self.path.stat().st_size > 0:
                self.kept = self.path
                logger.info("partial output kept in %s", self.path)
            else:  # a failed output is no result, and on a full disk it holds the space the next one needs
                self.path.unlink(missing_ok=True)
        except OSError:  # the folder itself is the problem: the error being raised says so
            pass
