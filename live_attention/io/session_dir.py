"""The session folder of a recording: the names of its files, creating a new folder (never reusing one),
and the ``flock`` that tells a session being recorded from one whose recorder was killed."""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from datetime import datetime
from pathlib import Path

from live_attention.errors import UserError

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
OVERLAY = "overlay.mp4"
RAW = "raw.mkv"
ATTN_DIR = "attention"
ATTN_COMPARE_DIR = "attention-compare"  # the second model's maps (--compare)
MAPS_KEY = "attention"  # the manifest's key for a maps folder (in "files" and in "compare")
RESERVE = ".reserve"  # a named reserve file: older recorders left it when killed; readers remove it (see Session)


def is_session_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / MANIFEST).exists() or (p / ATTN_DIR).is_dir() or (p / OVERLAY).exists()


def new_session_dir(base_dir: str | os.PathLike[str], now: datetime | None = None) -> Path:
    """Create and return a new, empty ``session-YYYYmmdd-HHMMSS[-N]`` folder under ``base_dir``.

    Refuses ``base_dir`` when it is itself a session folder; never reuses an existing folder
    (``os.mkdir`` without ``exist_ok`` is the atomic check).
    """
    base = Path(base_dir).expanduser()
    if is_session_dir(base):
        raise UserError(f"{base} is an existing recording session: pass the folder to record into, "
                        "a new session folder is created inside it")
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the recording folder {base}: {exc.strerror or exc} "
                        "(pass --record a writable folder)") from exc
    stem = (now or datetime.now()).strftime("session-%Y%m%d-%H%M%S")
    for i in range(1000):
        p = base / (stem if i == 0 else f"{stem}-{i}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"cannot record into {base}: {exc.strerror or exc}") from exc
    raise UserError(f"too many sessions named {stem}* in {base}")


def lock_session(path: Path) -> int | None:
    """Hold an exclusive ``flock`` on the session folder while recording; returns the descriptor to pass to
    :func:`unlock_session` (None where the platform has no ``flock``). The kernel drops it when the process
    dies, so a killed recorder leaves nothing behind."""
    try:
        import fcntl
    except ImportError:  # Windows: liveness cannot be told (a session says "not finalised")
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        logger.debug("could not lock %s", path, exc_info=True)
        return None
    return fd


def unlock_session(fd: int | None) -> None:
    if fd is not None:
        with suppress(OSError):
            os.close(fd)  # closing the descriptor releases the lock


def session_is_live(path: str | os.PathLike[str]) -> bool:
    """Whether a recorder (in this or another process) is writing the session now (see :func:`lock_session`)."""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # no locks on this filesystem: cannot tell
        return False
    finally:
        os.close(fd)
    return False
