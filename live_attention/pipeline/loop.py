"""The one frame loop: results, view state and keys in; a shown frame, its recording and its state out.

Every front end is this loop with its own :class:`Feed` (where results come from) and :class:`Display`
(where frames go): the live window (a :class:`~live_attention.pipeline.live.LiveSession` and the Dear
PyGui window), headless mode (the live session and :class:`HeadlessDisplay`), replay (a
:class:`~live_attention.pipeline.replay.ReplayFeed` and the window) and ``bench`` (the live session
and the window or :class:`NullDisplay`). One iteration:

1. the display's keys, clicks and timeline moves go to the feed (playback keys) or the
   :class:`~live_attention.ui.controller.Controller` (the view), and their outcomes happen here:
   freeze, flow, screenshots, recording, the map settings the worker computes;
2. the newest result is taken (never waited for);
3. when anything changed, :func:`~live_attention.ui.frame.render` composes the picture, the display
   shows it, the recorder gets it with the result it was drawn from, the state file is written;
4. the display presents the frame (vsync, a frame-rate cap, or waiting for the next result).

Threads: the loop runs on the caller's (main) thread, which owns the display; :class:`FlowJob` computes
attention flow on a thread of its own.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from live_attention.core.compare import pair_view
from live_attention.datatypes import Result, Status, View
from live_attention.io.outputs import save_png
from live_attention.modes import mode, settings_for, view_smoother
from live_attention.pipeline.loop_parts import (
    EntropyHistory,
    FlowJob,
    LoopStats,
    PairSide,
    StateWriter,
    smooth_shown,
)
from live_attention.pipeline.ports import Display, Feed, Inputs, Playback
from live_attention.ui.controller import (
    Controller,
    describe_change,
    next_target,
    patch_at,
    patch_center,
    top_label,
)
from live_attention.ui.frame import canvas_for, render
from live_attention.ui.hud import hud_layout, no_signal_text

logger = logging.getLogger(__name__)

REFRESH_S = 0.25  # live figures on the HUD are redrawn at least this often


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


class FrameLoop:
    """Runs a :class:`Feed` into a :class:`Display` until the display closes, the user quits, the feed
    finishes (headless) or ``max_seconds`` pass.

    Args:
        feed, display: the two ends.
        view: the starting view.
        entropy_seconds: the entropy curve's span; residual: for flow; animate_fps: layers per second.
        screenshot_dir: where ``S`` saves; state_file: JSON of the shown state (automation, tests).
        max_seconds: stop after this long (None: run until closed).
        stop_when_finished: stop once the feed has shown its last result (headless runs).
    """

    def __init__(self, feed: Feed, display: Display, view: View, *, entropy_seconds: float = 10.0,
                 residual: float = 0.5, animate_fps: float = 2.0, screenshot_dir: str = "screenshots",
                 state_file: str | None = None, max_seconds: float | None = None,
                 stop_when_finished: bool = False) -> None:
        self.feed, self.display = feed, display
        self.playback: Playback | None = feed if isinstance(feed, Playback) else None
        self.controller = Controller(feed.num_layers, feed.num_heads, view, feed.pairing)
        self.history = EntropyHistory(entropy_seconds)
        self.pair_side = PairSide(entropy_seconds, view_smoother())  # the second model's (--compare)
        self.residual = residual
        self.animate_period = 1.0 / animate_fps
        self.screenshot_dir = screenshot_dir
        self.states = StateWriter(state_file)
        self.max_seconds = max_seconds
        self.stop_when_finished = stop_when_finished
        self.stats = LoopStats()
        self.smoother = view_smoother()  # the shown map over time (View.smooth, key J)
        self.shown: Result | None = None  # the newest result taken from the feed
        self.prepared: Result | None = None  # what is drawn: ``shown`` with what the view needs (replay)
        self.rgb: np.ndarray | None = None  # the picture on screen
        self.flow_job: FlowJob | None = None
        self.message: str | None = None
        self._message_until = 0.0
        self._dirty = True
        self._new = False  # a result not yet given to the recorder
        self._last_render = 0.0
        self._last_anim = time.monotonic()
        self._settings: dict[str, Any] = {}
        self._status: Status | None = None  # the status of the picture on screen (for hit tests)
        self.quit = False

    @property
    def view(self) -> View:
        return self.controller.view

    def say(self, message: str | None, seconds: float = 3.0) -> None:
        self.message, self._message_until = message, time.monotonic() + seconds
        self._dirty = True

    # ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Loop until done; returns an exit status. Stops the flow job on the way out."""
        t0 = time.monotonic()
        self._sync_settings()
        try:
            while self.display.running and not self.quit:
                self.step()
                if self.max_seconds is not None and time.monotonic() - t0 >= self.max_seconds:
                    break
                if self.stop_when_finished and self.feed.finished:
                    break
            return 0
        finally:
            if self.flow_job is not None:
                self.flow_job.cancel.set()

    def step(self) -> None:
        t = time.perf_counter()
        now = time.monotonic()
        inputs = self.display.poll()
        for key in inputs.keys:
            self._key(key, now)
        for fx, fy in inputs.clicks:
            self._click(fx, fy)
        if self.playback is not None:
            for index in inputs.seeks:
                self.playback.seek(index)
                self._dirty = True
            if self.playback.tick():
                self._dirty = True
        if self.view.animating and now - self._last_anim >= self.animate_period:
            self.controller.step_animation()
            self._last_anim = now
            self._dirty = True
        self._sync_settings()
        self._take_result(now)
        self._flow(now)
        if self.message and now > self._message_until:
            self.message = None
            self._dirty = True
        if self._dirty or now - self._last_render > REFRESH_S:
            self._compose(now)
        self.display.present()
        if self.display.waits_for_results:
            self.feed.wait(0.2)
        self.stats.iterations += 1
        self.stats.iteration_ms.append((time.perf_counter() - t) * 1000.0)

    # ---------------------------------------------------------------------------------------------
    def _key(self, key: str, now: float) -> None:
        self._dirty = True
        if self.playback is not None and self.playback.key(key):  # playback keys (replay)
            playing = self.playback.playing
            if playing is not None:
                self.controller.view = replace(self.view, frozen=not playing)
            return
        before = self.view
        out = self.controller.press(key)
        if out.quit:
            self.quit = True
            return
        if out.freeze_changed:
            self._set_frozen(self.view.frozen)
        note = out.note or describe_change(before, self.view)
        if note:
            self.say(note, 2.0)
        if out.screenshot:
            self._screenshot()
        if out.toggle_record:
            self._toggle_record()
        if out.cycle_target:
            self._cycle_target()

    def _drawn(self) -> Result | None:
        """``shown`` as it was drawn (``prepared``: replay may have computed it again), or None before."""
        prepared = self.prepared
        return prepared if prepared is not None and self.shown is not None and prepared.seq == self.shown.seq else None

    def _on_screen(self) -> Result | None:
        """The result whose labels are on screen: ``shown`` as drawn (a recomputed top-5 can order
        near-tied classes differently from the recorded one), else ``shown``."""
        return self._drawn() or self.shown

    def _cycle_target(self) -> None:
        res = self._on_screen()
        if res is None or not res.classifier:
            self.say("this model has no classifier: there is no class to explain", 3.0)
            return
        target = next_target(res, self.view.target)
        self.controller.set_target(target)
        self.say(f"explaining: {top_label(res, target) if target is not None else 'the top class of each frame'}", 2.0)

    def _set_frozen(self, frozen: bool) -> None:
        self.feed.freeze(self.shown if frozen else None)
        if not frozen and self.flow_job is not None:
            self.flow_job.cancel.set()
            self.flow_job = None

    def _click(self, fx: float, fy: float) -> None:
        res = self._on_screen()
        if res is None:
            return
        side, label_of = 0, res
        if res.pair is not None:  # two halves: the same point of the same frame on either
            side = 1 if fx >= 0.5 else 0
            fx, label_of = fx * 2 - side, (res.pair if side else res)
        if self.rgb is not None and self.view.show_hud and self._status is not None:
            ch, cw = self.rgb.shape[:2]
            cw //= 2 if res.pair is not None else 1
            status = (self._status.pair or self._status) if side else self._status
            lay = hud_layout(cw, ch, label_of, self.view, status)
            for (x0, y0, x1, y1), cls in lay.rows:
                if cls >= 0 and x0 <= fx * cw < x1 and y0 <= fy * ch < y1:  # a label of the top-5
                    if side and not (self.feed.pairing and self.feed.pairing.same_labels):
                        self.say("the two models name different classes: each explains its own top class", 3.0)
                        return
                    self.controller.set_target(cls)
                    self.say(f"explaining: {top_label(label_of, cls)}", 2.0)
                    self._dirty = True
                    return
        h, w = res.frame.shape[:2]
        patch = patch_at(res, fx * w, fy * h)
        if patch is None:
            self.say("click inside the part the model sees (the bright region)", 2.0)
        else:
            self.controller.select_patch(patch)
            self._dirty = True

    def _screenshot(self) -> None:
        if self.rgb is None:
            return
        try:
            self.say(f"screenshot saved to {save_png(self.rgb, self.screenshot_dir, 'live-attention')}", 4.0)
        except OSError as exc:
            self.say(f"screenshot failed: {exc}", 4.0)

    def _toggle_record(self) -> None:
        if not self.feed.can_record:
            return
        try:
            self.say(self.feed.toggle_record(lambda: self.view), 5.0)
        except Exception as exc:  # a bad folder or a full disk must not stop the live view
            logger.exception("recording toggle failed")
            self.say(f"recording failed: {exc}", 8.0)
            return
        if self.shown is not None and self.rgb is not None:
            # Frozen, no new result would come: the frame on screen starts the recording.
            self.feed.submit(self.shown, self.rgb, self.view)
            self._new = False

    def _sync_settings(self) -> None:
        wanted = settings_for(self.view, self.feed.recording)
        if wanted != self._settings:
            self._settings = wanted
            self.feed.set_settings(**wanted)

    def _take_result(self, now: float) -> None:
        latest = self.feed.latest()
        if latest is None or latest is self.shown:
            return
        if self.shown is None or latest.seq != self.shown.seq:
            self.history.add(self.feed.media_time(latest), latest)
            self.pair_side.add(self.feed.media_time(latest), latest)
        self.shown = latest
        self._new = True
        self._dirty = True
        self.feed.note_displayed(latest)
        self.stats.shown += 1
        self.stats.latency_ms.append((time.monotonic_ns() - latest.t_capture_ns) / 1e6)

    def _flow(self, now: float) -> None:
        job = self.flow_job
        if job is not None and job.error:
            self.say(job.error, 5.0)
            self.flow_job = None
            return
        later = mode(self.view.mode).later
        if job is not None and not job.done and not later:
            job.cancel.set()  # the flow view was left: its job would only spend the CPU
            self.flow_job = job = None
        if job is not None and not job.done:
            self._dirty = self._dirty or now - self._last_render > 0.2  # show the progress
        res = self._drawn()
        if (later and res is not None and (res.fused is not None or res.attn is not None)
                and (job is None or job.result.seq != res.seq)):
            if job is not None:
                job.cancel.set()
            self.flow_job = FlowJob(res, self.residual)
            self.flow_job.start()

    def _compose(self, now: float) -> None:
        res = self.shown
        job = self.flow_job
        progress = job.progress if job is not None and not job.done else None
        status = self.feed.status(self.message, progress)
        if self.display.takes_clicks:
            status = replace(status, takes_clicks=True)
        self._status = status
        self.display.update(status, res, self.view)
        drawn = res  # with what the view needs added (replay recomputes what was not recorded)
        if self.display.wants_pixels or status.recording:
            t = time.perf_counter()
            if res is None:
                rgb = render(None, None, self.view, status, size=self.rgb.shape[1::-1] if self.rgb is not None else None)
            else:
                shown = drawn = self.prepared = self.feed.prepare(res, self.view)
                extras = self.history.extras(job.flow if job is not None and job.done else None,
                                             job.result.seq if job is not None else None)
                extras, status = smooth_shown(self.smoother, shown, self.view, extras, status)
                if shown.pair is not None:
                    pair_flow = job.pair_flow if job is not None and job.done and job.result.seq == shown.seq else None
                    extras, status = self.pair_side.extras(shown, self.view, extras, status, pair_flow)
                self._status = status
                rgb = render(shown.frame, shown, self.view, status, extras,
                             size=canvas_for(shown.frame.shape, shown.pair is not None))
            self.stats.render_ms.append((time.perf_counter() - t) * 1000.0)
            self.rgb = rgb
            self.display.show(rgb, self.playback.position() if self.playback is not None else None)
            if self._new and res is not None:
                self.feed.submit(res, rgb, self.view)
        self._new = False
        self._last_render = now
        self._dirty = False
        if self.states.path is not None:
            self.states.write(self.view, status, {**self.feed.state(), **self._shown_state(drawn, status),
                                                  "flow_done": bool(job is not None and job.done),
                                                  "no_signal": status.silent_s is not None})

    def _shown_state(self, res: Result | None, status: Status) -> dict[str, Any]:
        """What is on screen, for automation and tests: the frame, its labels, where relevance peaks,
        and where the top-5 rows are (canvas pixels) and the picture is (window pixels)."""
        if res is None:
            return {"seq": None}
        state: dict[str, Any] = {
            "seq": res.seq, "t_capture_ns": res.t_capture_ns, "pts_s": res.pts_s,
            "top1": res.topk[0][0] if res.topk else None, "top_ids": list(res.top_ids), "explaining": res.target,
            "relevance_peak": (patch_center(res, int(np.argmax(res.relevance))) if res.relevance is not None else None),
            "picture_rect": getattr(self.display, "picture_rect", None),
        }
        if self.rgb is not None:
            h, w = self.rgb.shape[:2]
            lay = hud_layout(w // 2 if res.pair is not None else w, h, res, self.view, status)
            state.update(canvas=[w, h], hud_rows=[[*box, cls] for box, cls in lay.rows])
        if res.pair is not None:
            b, vb = res.pair, pair_view(self.view, res, res.pair)
            state.update(layer=self.view.resolved_layer(res.num_layers), difference=self.view.difference, pair={
                "seq": b.seq, "layer": vb.resolved_layer(b.num_layers), "num_layers": b.num_layers, "head": vb.head,
                "grid": list(b.grid), "query_patch": b.query_patch, "explaining": b.target,
                "top1": b.topk[0][0] if b.topk else None, "model": status.pair.model if status.pair else None})
        return state


# --------------------------------------------------------------------------------------------------
# Displays without a window
# --------------------------------------------------------------------------------------------------


class HeadlessDisplay:
    """No window: a status line on stderr every ``every`` seconds, and at once when the signal goes or
    comes back (each error once); pixels only for the recorder."""

    running = True
    wants_pixels = False
    waits_for_results = True
    takes_clicks = False

    def __init__(self, every: float = 2.0, stream=None) -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self._t0 = time.monotonic()
        self._last = -1e9
        self._errors: set[str] = set()
        self._silent = False

    def poll(self) -> Inputs:
        return Inputs()

    def show(self, rgb: np.ndarray, position: tuple[int, int] | None = None) -> None:
        pass

    def update(self, status: Status, result: Result | None, view: View) -> None:
        now = time.monotonic()
        if status.error and status.error not in self._errors:
            self._errors.add(status.error)
            print(f"live-attention: {status.error}", file=self.stream, flush=True)
        silent = status.silent_s is not None
        if now - self._last < self.every and silent == self._silent:  # losing or regaining the signal: at once
            return
        self._last, self._silent = now, silent
        print(f"[{now - self._t0:6.1f}s] {status_line(status, result)}", file=self.stream, flush=True)

    def present(self) -> None:
        pass

    def close(self) -> None:
        pass


def top1_text(status: Status, result: Result | None) -> str:
    """A result's top-1 label for the status line, with what the HUD says beside it."""
    if result is None:
        return "-"
    if not result.classifier:
        return "(no classifier)"
    if result.topk:
        return result.topk[0][0] + (" (UNTRAINED model)" if status.untrained else "")
    return "-"


def status_line(status: Status, result: Result | None) -> str:
    """The HUD's figures as one line (headless mode); with ``--compare`` the second model's top-1 too."""
    top = top1_text(status, result)
    if result is not None and result.pair is not None:
        top += f"; second model {top1_text(status.pair or Status(), result.pair)}"
    state = status.capture_state if status.silent_s is None else f"{no_signal_text(status.silent_s)} ({status.capture_state})"
    line = (f"{state} capture {status.capture_fps or 0:.1f} fps, model {status.infer_fps or 0:.1f} fps, "
            f"latency {status.latency_ms or 0:.0f} ms, dropped {status.dropped}, top-1 {top}")
    if status.recording:
        line += f" [{status.recording.replace('dropped', 'recorder dropped')}]"
    return line


class NullDisplay(HeadlessDisplay):
    """A display that draws nowhere at a 60 Hz pace (the bench without a screen)."""

    wants_pixels = True
    waits_for_results = False

    def __init__(self, hz: float = 60.0) -> None:
        super().__init__(every=1e9, stream=open(os.devnull, "w"))  # noqa: SIM115
        self.period = 1.0 / hz

    def present(self) -> None:
        time.sleep(self.period)

    def close(self) -> None:
        self.stream.close()
