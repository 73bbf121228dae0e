"""User-facing errors.

A :class:`UserError` carries one line that names the problem and the fix. The CLI prints it
without a traceback and exits with status 2; library callers can catch it like any exception.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix: bad input, missing file, wrong weights, absent camera."""

    def __init__(self, message: str) -> None:
        # Keep it to one line: the CLI prints exactly this.
        super().__init__(" ".join(str(message).split()))


class ConfigError(UserError):
    """A bad config key or value."""


class WeightsError(UserError):
    """Weights that are missing, corrupt, or for another architecture."""


class SourceError(UserError):
    """A camera, file or stream that cannot be opened."""
