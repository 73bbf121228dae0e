"""The frame loop's display for web viewers, and the checks on everything a page sends.

Threads: the frame loop (main thread) calls :meth:`WebDisplay.poll`, :meth:`~WebDisplay.show`,
:meth:`~WebDisplay.update` and :meth:`~WebDisplay.present`; the web server's thread calls
:meth:`~WebDisplay.push` (keys and clicks from pages), :meth:`~WebDisplay.latest_picture` and
:meth:`~WebDisplay.snapshot`. They share only what a lock guards here. Nothing here encodes or sends:
the server encodes each new picture once, for every viewer.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import numpy as np

from live_attention.datatypes import Result, Status, View
from live_attention.pipeline.ports import Inputs
from live_attention.ui.keys import page_keys

MAX_MESSAGE_BYTES = 256  # a key or a click is a few dozen bytes
MAX_PENDING = 64  # inputs waiting for the loop; more (a flood) are dropped and counted


def parse_message(text: str | bytes) -> tuple[str, Any] | None:
    """A page's message as ``("key", name)`` or ``("click", (fx, fy))``, or None when it is anything
    else: too long, not JSON, an unknown key, a click outside the picture or not a pair of numbers."""
    if len(text) > MAX_MESSAGE_BYTES:
        return None
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(msg, dict) or len(msg) != 1:
        return None
    # The keys a page may send: the window's, from the one table of bindings (ui/keys.py), but Q and Esc:
    # one viewer must not stop the session of the others (Ctrl-C on the server does).
    if isinstance(msg.get("key"), str) and msg["key"] in page_keys():
        return "key", msg["key"]
    click = msg.get("click")
    if (isinstance(click, list) and len(click) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in click)
            and all(0.0 <= v <= 1.0 for v in click)):
        return "click", (float(click[0]), float(click[1]))
    return None


class WebDisplay:
    """Where the frame loop's pictures go when the viewers are web pages.

    Pixels are drawn only while someone watches (or the recorder needs them: the loop renders for it
    anyway). :meth:`present` keeps the loop at most at ``max_fps`` (the time a step took counts) and
    ends its wait at once for a page's input. Once the period is out, an idle loop sleeps until the next
    result (:meth:`wake`: ``serve`` calls it for each one), input, or another period: a result is drawn
    as soon as the cap allows, not up to a period later.

    Args:
        max_fps: the most loop iterations per second (the picture changes only with new results).
        on_picture: called (from the loop's thread) after each new picture; the server wakes its
            senders with it.
    """

    waits_for_results = False
    takes_clicks = True

    def __init__(self, max_fps: float = 60.0, on_picture: Callable[[], None] | None = None) -> None:
        self.period = 1.0 / max_fps
        self.on_picture = on_picture
        self.running = True
        self._lock = threading.Lock()
        self._cond = threading.Condition()
        self._input_waiting = False  # a page's input: ends the wait at once
        self._result_waiting = False  # a new result: ends the wait once the period is out
        self._last_present = 0.0
        self._inputs = Inputs()
        self._picture: np.ndarray | None = None
        self._picture_seq = 0  # pictures shown so far (each new one gets the next number)
        self._state: dict[str, Any] = {}
        self.viewers = 0  # set by the server
        self.counts = {"keys": 0, "clicks": 0, "dropped_inputs": 0, "frames_sent": 0, "pictures": 0}

    # ---- the server's side ----------------------------------------------------------------------

    def push(self, text: str | bytes) -> bool:
        """A page's message: queued for the loop when valid, else dropped and counted (False)."""
        msg = parse_message(text)
        with self._lock:
            pending = len(self._inputs.keys) + len(self._inputs.clicks)
            if msg is None or pending >= MAX_PENDING:
                self.counts["dropped_inputs"] += 1
                return False
            kind, value = msg
            if kind == "key":
                self._inputs.keys.append(value)
                self.counts["keys"] += 1
            else:
                self._inputs.clicks.append(value)
                self.counts["clicks"] += 1
        self._signal(input_=True)
        return True

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + n

    def latest_picture(self) -> tuple[int, np.ndarray | None]:
        """The newest picture and its number (0: none yet)."""
        with self._lock:
            return self._picture_seq, self._picture

    def snapshot(self) -> dict[str, Any]:
        """What ``GET /state`` returns: the view and the HUD's figures as the loop last drew them."""
        with self._lock:
            return {**self._state, **self.counts, "viewers": self.viewers}

    # ---- the frame loop's side (Display) -----------------------------------------------------------

    @property
    def wants_pixels(self) -> bool:
        return self.viewers > 0

    def poll(self) -> Inputs:
        with self._lock:
            out, self._inputs = self._inputs, Inputs()
        return out

    def show(self, rgb: np.ndarray, position: tuple[int, int] | None = None) -> None:
        with self._lock:
            self._picture = rgb
            self._picture_seq += 1
            self.counts["pictures"] += 1
        if self.on_picture is not None:
            self.on_picture()

    def update(self, status: Status, result: Result | None, view: View) -> None:
        state = {
            "mode": view.mode, "layer": view.layer + 1, "head": view.head + 1, "fusion": view.fusion,
            "frozen": view.frozen, "animating": view.animating, "smooth": view.smooth, "opacity": view.opacity,
            "colormap": view.colormap, "query_patch": view.query_patch, "target": view.target,
            "fps": status.infer_fps, "capture_fps": status.capture_fps, "latency_ms": status.latency_ms,
            "status": asdict(status), "seq": result.seq if result is not None else None,
            "top1": result.topk[0][0] if result is not None and result.topk else None,
            "updated": time.time(),
        }
        with self._lock:
            self._state = state

    def wake(self) -> None:
        """A new result is waiting (any thread): :meth:`present` returns as soon as the period allows."""
        self._signal(input_=False)

    def _signal(self, input_: bool) -> None:
        with self._cond:
            if input_:
                self._input_waiting = True
            else:
                self._result_waiting = True
            self._cond.notify_all()

    def present(self) -> None:
        with self._cond:
            due = self._last_present + self.period
            self._cond.wait_for(lambda: self._input_waiting, max(0.0, due - time.monotonic()))  # the cap
            if not (self._input_waiting or self._result_waiting):  # idle: the next result, input or period
                self._cond.wait_for(lambda: self._input_waiting or self._result_waiting, self.period)
            self._input_waiting = self._result_waiting = False
            self._last_present = time.monotonic()

    def close(self) -> None:
        self.running = False
        self._signal(input_=True)
