"""The entry point of ``live-attention`` and ``python -m live_attention``.

It sets the environment the native libraries read when they load (OpenCV's and FFmpeg's log levels)
before anything imports them, then hands over to :func:`live_attention.commands.cli.main`.
"""

from __future__ import annotations

import os
import sys


def quiet_libraries(argv: list[str]) -> None:
    """OpenCV and its FFmpeg print warnings ("can't open camera by index", "moov atom not found")
    before our one-line errors say the same thing better. Quiet them unless -v; a user's own
    settings win. Must run before cv2 is first imported."""
    if "-v" in argv or "--verbose" in argv:
        return
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries(argv)
    # Imported here, after the environment is set: OpenCV reads it when it loads.
    from live_attention.commands.cli import main as run

    return run(argv)


if __name__ == "__main__":
    sys.exit(main())
