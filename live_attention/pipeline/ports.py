"""The frame loop's two ends, as protocols: a :class:`Feed` (where results come from: a live session,
or a recorded session played back, which is also a :class:`Playback`) and a :class:`Display` (where
frames go: the window, the web page, a headless stand-in), with the :class:`Inputs` a display collects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from live_attention.core.compare import Pairing
from live_attention.datatypes import Result, Status, View


@dataclass
class Inputs:
    """What a display collected since the last iteration."""

    keys: list[str] = field(default_factory=list)
    clicks: list[tuple[float, float]] = field(default_factory=list)  # fractions of the picture
    seeks: list[int] = field(default_factory=list)  # timeline moves (replay), 0-based


class Display(Protocol):
    """Where frames go: the window, or a headless stand-in."""

    @property
    def running(self) -> bool: ...

    @property
    def wants_pixels(self) -> bool: ...  # False: render only for the recorder or a screenshot

    waits_for_results: bool  # True: the loop sleeps on the feed (headless), else the display paces it
    takes_clicks: bool  # True: a window, where the HUD may invite clicks on its labels

    def poll(self) -> Inputs: ...

    def show(self, rgb: np.ndarray, position: tuple[int, int] | None = None) -> None: ...

    def update(self, status: Status, result: Result | None, view: View) -> None: ...

    def present(self) -> None: ...

    def close(self) -> None: ...


class Feed(Protocol):
    """Where results come from: a live session, or a recorded session played back (which is also a
    :class:`Playback`)."""

    num_layers: int
    num_heads: int
    can_record: bool
    pairing: Pairing | None  # two models side by side (--compare), else None

    @property
    def recording(self) -> bool: ...

    def latest(self) -> Result | None: ...

    def wait(self, timeout: float) -> None: ...

    def freeze(self, result: Result | None) -> None: ...

    def set_settings(self, **changes: Any) -> None: ...

    def prepare(self, result: Result, view: View) -> Result: ...

    def note_displayed(self, result: Result) -> None: ...

    def status(self, message: str | None = None, flow_progress: float | None = None) -> Status: ...

    def state(self) -> dict[str, Any]: ...

    @property
    def finished(self) -> bool: ...

    def media_time(self, result: Result) -> float: ...

    def toggle_record(self, view_fn: Callable[[], View]) -> str: ...

    def submit(self, result: Result, rgb: np.ndarray, view: View) -> None: ...


@runtime_checkable
class Playback(Protocol):
    """A feed that plays something recorded (replay): its own keys (pause, step, seek), a timeline the
    display shows, and a clock the loop ticks. A live feed has none of it."""

    @property
    def playing(self) -> bool | None: ...

    def key(self, key: str) -> bool: ...

    def seek(self, index: int) -> None: ...

    def tick(self) -> bool: ...

    def position(self) -> tuple[int, int] | None: ...
