"""The Dear PyGui window: the only module that imports dearpygui.

A :class:`Window` is a :class:`~live_attention.pipeline.loop.Display` for the frame loop: the main
thread owns Dear PyGui; it polls keys and the mouse through manually managed callbacks, copies each
picture into one preallocated float32 RGBA raw texture (zero-copy for Dear PyGui) and presents it.
Nothing here knows about models or maps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

# torchvision's models pull in torch._dynamo and Triton. Importing Triton after Dear PyGui has made
# its GL context segfaults (seen under Mesa/Xvfb), and models may load after the window opens
# (bench, replay): import them first.
import torchvision.models  # noqa: F401

from live_attention.errors import UserError
from live_attention.pipeline.ports import Inputs

logger = logging.getLogger(__name__)

TITLE = "live-attention"


def check_display(fix: str = "use --headless") -> None:
    """A one-line :class:`UserError` when no display can be reached (unset, or a stale ``DISPLAY``):
    GLFW would abort the process (SIGABRT) instead of failing cleanly."""
    if not sys.platform.startswith("linux"):
        return
    wayland = os.environ.get("WAYLAND_DISPLAY")
    if wayland:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        if Path(wayland).is_absolute() and Path(wayland).exists() or (runtime and (Path(runtime) / wayland).exists()):
            return
    display = os.environ.get("DISPLAY")
    if not display:
        raise UserError(f"no display found (DISPLAY is not set): run it on a desktop, or {fix}")
    lib = ctypes.util.find_library("X11")
    if lib is None:
        return  # cannot check; GLFW will report
    x11 = ctypes.cdll.LoadLibrary(lib)
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    handle = x11.XOpenDisplay(display.encode())
    if not handle:
        raise UserError(f"no display found (cannot connect to DISPLAY={display}): run it on a desktop, or {fix}")
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay(handle)


class Window:
    """One viewport with one image fed from a raw float32 RGBA texture; keys become names.

    The frame loop's display: :meth:`poll` returns the keys, clicks and timeline moves since the last
    call, :meth:`show` takes an RGB picture, :meth:`present` draws a frame.
    """

    wants_pixels = True
    waits_for_results = False
    takes_clicks = True

    def __init__(self, title: str = TITLE, width: int = 1280, height: int = 800, vsync: bool = True,
                 max_fps: float = 60.0) -> None:
        check_display()
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
            dpg.mvKey_Return: "enter", dpg.mvKey_Tab: "tab",
        }
        # dpg's mvKey_Plus is 61 (an old ASCII code) and matches no key in Dear PyGui 2; the "=/+" key
        # is ImGuiKey_Equal, which comes right before ImGuiKey_LeftBracket (mvKey_Open_Brace).
        keymap[dpg.mvKey_Open_Brace - 1] = "+"
        for ch in "0123456789":
            keymap[getattr(dpg, f"mvKey_{ch}")] = ch
        for ch in "AFHMQSCRPTNJD[]":
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

    def poll(self) -> Inputs:
        """Run the queued callbacks (on this thread) and hand over what they collected."""
        self.dpg.run_callbacks(self.dpg.get_callback_queue())
        out = Inputs(self.keys, self.clicks, self.seeks)
        self.keys, self.clicks, self.seeks = [], [], []
        return out

    def _on_click(self, *_args) -> None:
        mx, my = self.dpg.get_mouse_pos(local=False)
        x, y, w, h = self._img_rect
        if w > 0 and h > 0 and x <= mx < x + w and y <= my < y + h:
            self.clicks.append(((mx - x) / w, (my - y) / h))

    @property
    def picture_rect(self) -> tuple[float, float, float, float]:
        """Where the picture is in the window: x, y, width, height in pixels (it is letterboxed)."""
        return self._img_rect

    @property
    def running(self) -> bool:
        return bool(self.dpg.is_dearpygui_running())

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

    def show(self, rgb: np.ndarray, position: tuple[int, int] | None = None) -> None:
        """Copy an RGB uint8 image into the texture (about 4 ms for 720p: no astype, no new arrays);
        ``position`` (index, total) moves the timeline, when there is one."""
        if position is not None:
            self.set_timeline(position[0])
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

    def update(self, status, result, view) -> None:
        pass  # the HUD is in the picture

    def present(self) -> None:
        self.frame()

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
