"""The real window under Xvfb on a local HTTP MJPEG stream that stalls: NO SIGNAL over the last picture."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.gui_helpers import App, XServer, center
from tests.mjpeg_server import MjpegServer

pytestmark = [pytest.mark.gui, pytest.mark.timeout(300)]


def _red_text(img: np.ndarray) -> int:
    """Pixels of the NO SIGNAL title's red (the screenshot is BGR)."""
    b, g, r = img[..., 0].astype(int), img[..., 1].astype(int), img[..., 2].astype(int)
    return int(((r > 200) & (g < 80) & (b < 80)).sum())


def test_a_stalled_stream_shows_no_signal_over_the_dimmed_last_picture_then_recovers(media, tmp_path):
    """The stream sends frames, then keeps its connection open and sends nothing (the read blocks; after
    FFmpeg's 5 s read timeout the capture reconnects). The state file and the window say NO SIGNAL with
    the seconds silent and 0 fps, over the last picture dimmed; when the stream sends again, the picture
    is live again."""
    photo = cv2.imread(str(media / "chelsea.jpg"))
    server = MjpegServer(photo, fps=10.0)
    x = XServer()
    app = App(x, ["--source", server.url, "--model", "demo"], tmp_path)
    try:
        s = app.wait(lambda s: s.get("seq") is not None and s["status"]["capture_fps"] > 0, 120, "live stream")
        assert not s["no_signal"]
        for _ in range(20):  # the state file can come before the window shows its first picture
            live = app.screenshot("live")
            if center(live).mean() > 40:
                break
        assert center(live).mean() > 40, "the live picture is on screen"

        server.sending.clear()
        s = app.wait(lambda s: s["no_signal"], 30, "NO SIGNAL while the read blocks")
        assert s["status"]["capture_state"] == "running"  # no error: FFmpeg is still waiting
        assert s["status"]["capture_fps"] == 0.0 and s["status"]["infer_fps"] == 0.0
        s = app.wait(lambda s: s["no_signal"] and s["status"]["silent_s"] >= 3.0, 30, "3 s silent")
        silent = app.screenshot("no-signal")
        assert _red_text(center(silent)) > 500, "NO SIGNAL is written across the picture"
        h = silent.shape[0]
        below = np.s_[int(h * 0.62) : int(h * 0.7), :]  # the picture under the NO SIGNAL band
        assert silent[below].mean() < 0.6 * live[below].mean(), "the last picture is dimmed"

        s = app.wait(lambda s: s["status"]["capture_state"] == "reconnecting", 60, "reconnecting")
        assert s["no_signal"]
        silent_s = app.wait(lambda s: s["status"]["silent_s"] is not None, 10)["status"]["silent_s"]
        app.wait(lambda s: (s["status"]["silent_s"] or 0) > silent_s + 1.0, 30, "the seconds count on")

        server.sending.set()
        seq = s["seq"]
        s = app.wait(lambda s: not s["no_signal"] and s["seq"] != seq, 90, "live again")
        assert s["status"]["capture_state"] == "running" and s["status"]["silent_s"] is None
        app.key("q")
        assert app.close(15) == 0
    finally:
        app.close(1)
        x.stop()
        server.sending.set()
        server.close()
