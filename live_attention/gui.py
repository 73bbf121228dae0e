"""The Dear PyGui window: the only module that imports dearpygui.

The main thread owns Dear PyGui: it polls keys and the mouse through manually managed callbacks,
peeks at the latest result (never waits on inference), renders with :func:`live_attention.render.render`
and copies the pixels into one preallocated float32 RGBA raw texture (zero-copy for Dear PyGui).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np

# torchvision's models pull in torch._dynamo and Triton. Importing Triton after Dear PyGui has made
# its GL context segfaults (seen under Mesa/Xvfb), and models may load after the window opens
# (bench, replay): import them first.
import torchvision.models  # noqa: F401

from live_attention.app import (
    Controller,
    EntropyHistory,
    FlowJob,
    LiveSession,
    patch_at,
    unique_path,
    view_from_config,
)
from live_attention.render import Status, View, canvas_size, render

logger = logging.getLogger(__name__)

TITLE = "live-attention"


class Window:
    """One viewport with one image fed from a raw float32 RGBA texture; keys become names."""

    def __init__(self, title: str = TITLE, width: int = 1280, height: int = 800, vsync: bool = True,
                 max_fps: float = 60.0) -> None:
        import dearpygui.dearpygui as dpg

        self.dpg = dpg
        # Where vsync does not hold the loop (software GL, some drivers) a cap keeps the window from
        # taking CPU time the model needs.
        self._min_dt = 1.0 / max_fps if max_fps and max_fps > 0 else 0.0
        self._last_frame = 0.0
        dpg.create_context()
        dpg.configure_app(manual_callback_management=True)
        dpg.create_viewport(title=title, width=width, height=height, vsync=vsync)
        self.keys: list[str] = []
        self.clicks: list[tuple[float, float]] = []
        self.seeks: list[int] = []  # timeline slider moves (replay)
        self._timeline = False
        self._tex = None
        self._tex_size = (0, 0)
        self._img_rect = (0.0, 0.0, 1.0, 1.0)  # x, y, w, h of the image in the viewport
        with dpg.texture_registry() as self._registry:
            pass
        with dpg.window(tag="main", no_title_bar=True, no_move=True, no_resize=True, no_scrollbar=True,
                        no_background=False):
            pass
        dpg.set_primary_window("main", True)
        with dpg.theme() as theme, dpg.theme_component(dpg.mvAll):
            dpg.add_theme_style(dpg.mvStyleVar_WindowPadding, 0, 0, category=dpg.mvThemeCat_Core)
            dpg.add_theme_color(dpg.mvThemeCol_WindowBg, (10, 10, 10), category=dpg.mvThemeCat_Core)
        dpg.bind_item_theme("main", theme)
        keymap = {
            dpg.mvKey_Up: "up", dpg.mvKey_Down: "down", dpg.mvKey_Left: "left", dpg.mvKey_Right: "right",
            dpg.mvKey_Spacebar: "space", dpg.mvKey_Back: "backspace", dpg.mvKey_Escape: "esc",
            dpg.mvKey_Plus: "+", dpg.mvKey_Add: "+", dpg.mvKey_Minus: "-", dpg.mvKey_Subtract: "-",
            dpg.mvKey_Comma: ",", dpg.mvKey_Period: ".", dpg.mvKey_Home: "home", dpg.mvKey_End: "end",
            dpg.mvKey_Return: "enter",
        }
        # dpg's mvKey_Plus is 61 (an old ASCII code) and matches no key in Dear PyGui 2; the "=/+" key
        # is ImGuiKey_Equal, which comes right before ImGuiKey_LeftBracket (mvKey_Open_Brace).
        keymap[dpg.mvKey_Open_Brace - 1] = "+"
        for ch in "0123456789":
            keymap[getattr(dpg, f"mvKey_{ch}")] = ch
        for ch in "AFHMQSCRP[]":
            attr = {"[": "Open_Brace", "]": "Close_Brace"}.get(ch, ch)
            keymap[getattr(dpg, f"mvKey_{attr}")] = ch.lower()
        with dpg.handler_registry():
            for code, name in keymap.items():
                dpg.add_key_press_handler(key=code, callback=lambda s, a, u: self.keys.append(u), user_data=name)
            dpg.add_mouse_click_handler(button=dpg.mvMouseButton_Left, callback=self._on_click)
        dpg.setup_dearpygui()
        dpg.show_viewport()

    def add_timeline(self, total: int) -> None:
        """A timeline slider under the image (replay), numbered from 1 like the HUD; moves land in
        :attr:`seeks` as 0-based indices."""
        self.dpg.add_slider_int(tag="timeline", parent="main", min_value=1, max_value=max(1, total),
                                default_value=1, format=f"frame %d of {total}", clamped=True,
                                callback=lambda _s, value, _u: self.seeks.append(int(value) - 1))
        self._timeline = True

    def set_timeline(self, index: int) -> None:
        if self._timeline:
            self.dpg.set_value("timeline", int(index) + 1)

    def _on_click(self, *_args) -> None:
        mx, my = self.dpg.get_mouse_pos(local=False)
        x, y, w, h = self._img_rect
        if w > 0 and h > 0 and x <= mx < x + w and y <= my < y + h:
            self.clicks.append(((mx - x) / w, (my - y) / h))

    @property
    def running(self) -> bool:
        return bool(self.dpg.is_dearpygui_running())

    def poll(self) -> None:
        self.dpg.run_callbacks(self.dpg.get_callback_queue())

    def _ensure_texture(self, w: int, h: int) -> None:
        if self._tex_size == (w, h):
            return
        dpg = self.dpg
        self._buf = np.zeros((h, w, 4), np.float32)
        self._rgba = np.zeros((h, w, 4), np.uint8)
        old = self._tex
        self._tex = dpg.add_raw_texture(w, h, self._buf, format=dpg.mvFormat_Float_rgba, parent=self._registry)
        if dpg.does_item_exist("image"):
            dpg.delete_item("image")
        dpg.add_image(self._tex, tag="image", parent="main")
        if old is not None:
            dpg.delete_item(old)
        self._tex_size = (w, h)

    def show(self, rgb: np.ndarray) -> None:
        """Copy an RGB uint8 image into the texture (about 4 ms for 720p: no astype, no new arrays)."""
        h, w = rgb.shape[:2]
        self._ensure_texture(w, h)
        cv2.cvtColor(rgb, cv2.COLOR_RGB2RGBA, dst=self._rgba)
        np.multiply(self._rgba, np.float32(1.0 / 255.0), out=self._buf, casting="unsafe")

    def layout(self) -> None:
        """Fit the image in the viewport, keeping its aspect (the window resizes cleanly)."""
        dpg = self.dpg
        if not dpg.does_item_exist("image"):
            return
        vw, vh = dpg.get_viewport_client_width(), dpg.get_viewport_client_height()
        if self._timeline:
            bar = 30
            dpg.configure_item("timeline", width=max(50, vw - 20), pos=(10, vh - bar + 4))
            vh -= bar
        tw, th = self._tex_size
        s = min(vw / tw, vh / th) if tw and th else 1.0
        w, h = max(1, int(tw * s)), max(1, int(th * s))
        x, y = (vw - w) // 2, (vh - h) // 2
        dpg.configure_item("image", width=w, height=h, pos=(x, y))
        self._img_rect = (float(x), float(y), float(w), float(h))

    def frame(self) -> None:
        self.layout()
        self.dpg.render_dearpygui_frame()
        if self._min_dt:
            wait = self._last_frame + self._min_dt - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            self._last_frame = time.perf_counter()

    def close(self) -> None:
        try:
            self.dpg.stop_dearpygui()
        finally:
            self.dpg.destroy_context()


def describe_change(before: View, after: View) -> str | None:
    """A short HUD note for changes that are otherwise hard to see (opacity, colormap, fusion)."""
    if after.opacity != before.opacity:
        return f"opacity {after.opacity:.1f}"
    if after.colormap != before.colormap:
        return f"colormap {after.colormap}"
    if after.fusion != before.fusion:
        note = " (shown when all heads are fused, and in rollout)" if after.head >= 0 and after.mode != "rollout" else ""
        return f"head fusion {after.fusion}{note}"
    return None


def save_screenshot(rgb: np.ndarray, directory: str | Path) -> Path:
    path = unique_path(directory, datetime.now().strftime("live-attention-%Y%m%d-%H%M%S"), ".png")
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path


class StateWriter:
    """Writes the shown state as JSON (``--state-file``) for automation and tests: what the HUD says."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self._last = ""

    def write(self, view: View, status: Status, extra: dict) -> None:
        if self.path is None:
            return
        data = {"view": asdict(view), "status": asdict(status), **extra}
        text = json.dumps(data, default=str, sort_keys=True)
        if text == self._last:
            return
        self._last = text
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


def run_window(
    session: LiveSession,
    *,
    record_dir: str | None = None,
    state_file: str | None = None,
    on_frame: Callable[[], None] | None = None,
) -> int:
    """The live window's main loop. Returns an exit status."""
    cfg = session.cfg
    engine = session.engine
    win = Window(TITLE, cfg.window.width, cfg.window.height, cfg.window.vsync, cfg.window.max_fps)
    ctl = Controller(engine.num_layers, engine.num_heads, view_from_config(cfg))
    history = EntropyHistory(cfg.view.entropy_seconds)
    states = StateWriter(state_file)
    flow_job: FlowJob | None = None
    shown: object = None  # the result on screen
    frozen_result = None
    message, message_until = None, 0.0
    last_render = 0.0
    last_anim = time.monotonic()
    gui_frames = 0
    gui_t0 = time.monotonic()
    gui_fps = 0.0
    dirty = True
    new_result = False
    last_rgb = None
    session.start(window=True)
    if record_dir:
        try:
            path = session.start_recording(record_dir, lambda: ctl.view)
            message, message_until = f"recording to {path}", time.monotonic() + 4
        except Exception as exc:  # a bad folder must not stop the live view
            logger.exception("recording did not start")
            message, message_until = f"recording not started: {exc}", time.monotonic() + 8
    try:
        while win.running:
            win.poll()
            now = time.monotonic()
            for key in win.keys:
                before = ctl.view
                out = ctl.press(key)
                dirty = True
                if out.quit:
                    return 0
                if out.freeze_changed:
                    if ctl.view.frozen:
                        frozen_result = shown
                        session.worker.paused.set()
                    else:
                        frozen_result = None
                        session.worker.paused.clear()
                        if flow_job is not None:
                            flow_job.cancel.set()
                            flow_job = None
                feedback = describe_change(before, ctl.view)
                if feedback:
                    message, message_until = feedback, now + 2
                if ctl.view.fusion != before.fusion:
                    session.worker.update_settings(fusion=ctl.view.fusion)
                if ctl.view.layer != before.layer:
                    session.worker.update_settings(entropy_layer=ctl.view.layer)
                if out.flow and frozen_result is not None and (
                    flow_job is None or flow_job.result is not frozen_result
                ):
                    flow_job = FlowJob(frozen_result, cfg.view.residual, "mean")
                    flow_job.start()
                if out.screenshot and last_rgb is not None:
                    try:
                        p = save_screenshot(last_rgb, cfg.window.screenshot_dir)
                        message = f"screenshot saved to {p}"
                    except OSError as exc:
                        message = f"screenshot failed: {exc}"
                    message_until = now + 4
                if out.toggle_record:
                    try:
                        if session.recorder is None:
                            p = session.start_recording(cfg.record.dir, lambda: ctl.view)
                            message = f"recording to {p}"
                        else:
                            p = session.stop_recording()
                            message = f"recording saved in {p}"
                    except Exception as exc:
                        logger.exception("recording toggle failed")
                        message = f"recording failed: {exc}"
                    message_until = now + 5
            win.keys.clear()
            for fx, fy in win.clicks:
                res = frozen_result or shown
                if res is not None:
                    h, w = res.frame.shape[:2]
                    patch = patch_at(res, fx * w, fy * h)
                    if patch is not None:
                        ctl.select_patch(patch)
                        session.worker.update_settings(query_patch=patch)
                    else:
                        message, message_until = "click inside the square the model sees", now + 2
                    dirty = True
            win.clicks.clear()
            if ctl.view.animating and now - last_anim >= 1.0 / cfg.view.animate_fps:
                ctl.step_animation()
                session.worker.update_settings(entropy_layer=ctl.view.layer)
                last_anim = now
                dirty = True

            if frozen_result is None:
                latest = session.results.peek()
                if latest is not None and latest is not shown:
                    shown = latest
                    new_result = True
                    history.add(now, latest)
                    session.note_displayed(latest)
                    dirty = True
            res = frozen_result or shown
            if message and now > message_until:
                message = None
                dirty = True
            flow_progress = None
            if flow_job is not None and flow_job.flow is None and flow_job.error is None:
                flow_progress = flow_job.progress
                dirty = dirty or now - last_render > 0.2
            if flow_job is not None and flow_job.error:
                message, message_until = flow_job.error, now + 5
                flow_job = None
            if dirty or now - last_render > 0.25:
                status = session.status(message, flow_progress)
                done = flow_job is not None and flow_job.flow is not None
                extras = history.extras(flow_job.flow if done else None, flow_job.result.seq if done else None)
                frame = res.frame if res is not None else None
                if res is None and session.capture.state.name == "RUNNING":
                    latest_frame = session.frames.peek()
                    frame = latest_frame.image if latest_frame is not None else None
                if frame is None or session.capture.state.name in ("RECONNECTING", "FAILED"):
                    rgb = render(None, None, ctl.view, status, extras, size=win._tex_size if win._tex_size[0] else None)
                else:
                    rgb = render(frame, res, ctl.view, status, extras, size=canvas_size(frame.shape))
                win.show(rgb)
                last_rgb = rgb
                if session.recorder is not None and new_result:
                    session.recorder.submit(res, rgb, ctl.view)
                new_result = False
                last_render = now
                states.write(ctl.view, status, {
                    "seq": getattr(res, "seq", None), "gui_fps": round(gui_fps, 1),
                    "capture_state": session.capture.state.name,
                    "flow_done": bool(flow_job is not None and flow_job.flow is not None),
                    "recording": str(session.recorder.path) if session.recorder is not None else None,
                })
                dirty = False
            win.frame()
            gui_frames += 1
            if now - gui_t0 >= 1.0:
                gui_fps = gui_frames / (now - gui_t0)
                gui_frames, gui_t0 = 0, now
            if on_frame is not None:
                on_frame()
        return 0
    finally:
        if flow_job is not None:
            flow_job.cancel.set()
        session.stop()
        win.close()
