"""Xvfb, xdotool and screenshots for the window tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

START_S = 180  # how long an app may take to start: seconds on an idle machine; only a failure waits this long


class XServer:
    def __init__(self) -> None:
        for tool in ("Xvfb", "xdotool", "import"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} not found: install xvfb, xdotool and imagemagick (make system-deps)")
        for n in range(140, 200):
            if not Path(f"/tmp/.X{n}-lock").exists() and not Path(f"/tmp/.X11-unix/X{n}").exists():
                break
        self.display = f":{n}"
        self.proc = subprocess.Popen(
            ["Xvfb", self.display, "-screen", "0", "1400x900x24", "-nolisten", "tcp"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not Path(f"/tmp/.X11-unix/X{n}").exists():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("Xvfb did not start")
            time.sleep(0.05)
        self.env = {**os.environ, "DISPLAY": self.display}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class App:
    """The real app in a child process, driven by keys, observed by screenshots and its state file."""

    def __init__(self, x: XServer, args: list[str], tmp: Path, title: str = "live-attention") -> None:
        self.x = x
        self.title = f"^{title}$"
        self.tmp = tmp
        self.state_file = tmp / "state.json"
        self.log = open(tmp / "app.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "live_attention", *args, "--state-file", str(self.state_file)],
            env={**x.env, "LIVE_ATTENTION_OFFLINE": "1"}, stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        self.shots = 0

    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, pred, timeout: float = 60.0, what: str = "state") -> dict:
        """Until ``pred(state)``, for ``timeout`` seconds from the app's first state, which may take
        :data:`START_S` to come (importing torch and loading a model took over a minute on a loaded machine)."""
        started = bool(self.state())
        deadline = time.monotonic() + (timeout if started else START_S)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"app exited ({self.proc.returncode}): {(self.tmp / 'app.log').read_text()[-2000:]}")
            s = self.state()
            if s and not started:
                started, deadline = True, time.monotonic() + timeout
            if s and pred(s):
                return s
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; last state {self.state()}; "
                             f"log {(self.tmp / 'app.log').read_text()[-1500:]}")

    def key(self, *keys: str) -> None:
        """Focus the window and type ``keys``. A window that exists but is not mapped yet (the state file
        can come first) refuses the focus: try again for a few seconds."""
        for _ in range(20):
            out = subprocess.run(
                ["xdotool", "search", "--sync", "--name", self.title, "windowfocus", "--sync", "key",
                 "--delay", "80", *keys],
                env=self.x.env, timeout=20, capture_output=True, text=True,
            )
            if out.returncode == 0:
                return
            time.sleep(0.25)
        raise AssertionError(f"xdotool could not type {keys} into {self.title}: {out.stderr.strip()[-500:]}")

    def _window(self) -> tuple[str, int, int]:
        wid = subprocess.run(["xdotool", "search", "--name", self.title], env=self.x.env,
                             capture_output=True, text=True, check=True).stdout.split()[0]
        geo = subprocess.run(["xdotool", "getwindowgeometry", "--shell", wid], env=self.x.env,
                             capture_output=True, text=True, check=True).stdout
        g = dict(line.split("=") for line in geo.split())
        return wid, int(g["WIDTH"]), int(g["HEIGHT"])

    def click(self, fx: float, fy: float) -> None:
        """Click at a fraction of the window."""
        wid, w, h = self._window()
        self.click_at(int(w * fx), int(h * fy))

    def click_at(self, x: int, y: int) -> None:
        """Click at window pixel (x, y)."""
        wid, _, _ = self._window()
        subprocess.run(["xdotool", "mousemove", "--window", wid, str(x), str(y), "click", "1"],
                       env=self.x.env, check=True, timeout=10)

    def click_canvas(self, state: dict, cx: float, cy: float) -> None:
        """Click at canvas pixel (cx, cy) of the picture on screen (the state says where it is drawn)."""
        x, y, w, h = state["picture_rect"]
        cw, ch = state["canvas"]
        self.click_at(int(x + cx / cw * w), int(y + cy / ch * h))

    def screenshot(self, name: str | None = None) -> np.ndarray:
        time.sleep(0.6)  # the state file is written just before the frame is drawn: let it land
        self.shots += 1
        path = self.tmp / f"{name or 'shot'}-{self.shots}.png"
        subprocess.run(["import", "-window", "root", str(path)], env=self.x.env, check=True, timeout=20)
        img = cv2.imread(str(path))
        assert img is not None, path
        return img

    def close(self, timeout: float = 10.0) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        finally:
            self.log.close()


def center(img: np.ndarray) -> np.ndarray:
    """The middle of the screen: the picture, away from the HUD's live figures."""
    h, w = img.shape[:2]
    return img[int(h * 0.3) : int(h * 0.7), int(w * 0.3) : int(w * 0.7)]


def differs(a: np.ndarray, b: np.ndarray, min_fraction: float = 0.01) -> bool:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=2) > 24
    return d.mean() >= min_fraction
