"""The disk reserve of a recording: room held back so that the manifest can be finalised on a full disk."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from live_attention.io.session_dir import RESERVE

RESERVE_BYTES = 1 << 20  # held back so that the manifest can be finalised on a full disk


class Reserve:
    """Disk held back so the manifest can be finalised on a full disk: a file of real (incompressible) bytes,
    unlinked at once but held open, so it keeps its blocks and a killed process cannot leave it behind.
    :meth:`release` gives them back. Where an open file cannot be unlinked (Windows) it stays named until then.
    """

    def __init__(self, directory: Path, size: int = RESERVE_BYTES) -> None:
        path = directory / RESERVE
        self._file: BinaryIO | None = open(path, "wb")  # noqa: SIM115 (held for the whole recording)
        try:
            self._file.write(os.urandom(size))
            self._file.flush()
            os.fsync(self._file.fileno())
        except BaseException:
            self._file.close()
            path.unlink(missing_ok=True)
            raise
        self._path: Path | None = None
        try:
            path.unlink()
        except OSError:
            self._path = path

    @property
    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
