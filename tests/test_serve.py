"""``live-attention serve``: what pages may send, the browser camera source, bad input in one line, and
a real headless Chromium (Playwright, Debian's chromium with a fake camera) driving a real server.

Servers listen on 127.0.0.1, except the one that proves a non-local address needs its token (0.0.0.0,
reached through 127.0.0.1, over TLS). Every wait is bounded; none is a speed requirement: the time
figures belong to ``bench``.
"""

from __future__ import annotations

import json
import os
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from live_attention.commands.cli import main as cli_main
from live_attention.io.capture import LatestSlot
from live_attention.ui.keys import actions, page_keys
from live_attention.web.display import MAX_PENDING, WebDisplay, parse_message
from live_attention.web.source import BrowserSource

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
START_S = 180  # a loaded machine took over a minute to import torch and load a model; only a failure waits this long
WAIT_S = 30  # for something a running server does several times a second


# ---- what pages send -------------------------------------------------------------------------------


def test_page_messages_are_checked():
    assert parse_message('{"key": "2"}') == ("key", "2")
    assert parse_message('{"key": "up"}') == ("key", "up")
    assert parse_message('{"click": [0.5, 0.25]}') == ("click", (0.5, 0.25))
    bad = ['{"key": "q"}', '{"key": "esc"}', '{"key": "x"}', '{"key": 2}', "not json", "[1, 2]", "{}",
           '{"key": "2", "click": [0, 0]}', '{"click": [0.5]}', '{"click": [1.5, 0.5]}', '{"click": [NaN, 0.5]}',
           '{"click": [true, 0.5]}', '{"click": "0.5,0.5"}', '{"key": "' + "2" * 1000 + '"}', b"\xff\xfe"]
    for text in bad:
        assert parse_message(text) is None, text
    assert "q" not in page_keys() and "esc" not in page_keys()  # one viewer must not stop the others' session
    assert page_keys() == set(actions()) - {"q", "esc"}  # every other key of the window, from one table


def test_display_drops_and_counts_bad_input_and_floods():
    d = WebDisplay()
    assert d.push('{"key": "2"}') and not d.push('{"key": "q"}') and not d.push("{")
    for _ in range(MAX_PENDING + 10):
        d.push('{"key": "right"}')
    inputs = d.poll()
    assert inputs.keys[0] == "2" and len(inputs.keys) == MAX_PENDING
    assert d.snapshot()["dropped_inputs"] == 2 + 11
    assert d.poll().keys == []


def test_the_loop_wakes_for_each_new_result_within_the_frame_rate_cap():
    """serve hangs the display's wake on the result slot: an idle loop draws a new result at once, not a
    period later; input ends any wait at once; results never drive the loop past max_fps. (Each bound
    is far from what it tells apart: a loaded machine only makes waits longer.)"""
    slow = WebDisplay(max_fps=0.01)  # a 100 s period: a wait that ends in seconds was woken
    slot: LatestSlot[int] = LatestSlot()
    slot.add_listener(slow.wake)
    threading.Timer(0.05, slot.put, args=(1,)).start()
    t = time.monotonic()
    slow.present()  # idle (nothing drawn before): sleeps until the result
    assert time.monotonic() - t < 50
    threading.Timer(0.05, slow.push, args=('{"key": "2"}',)).start()
    t = time.monotonic()
    slow.present()  # within the period: only input ends the wait
    assert time.monotonic() - t < 50 and slow.poll().keys == ["2"]
    capped = WebDisplay(max_fps=2.0)  # 0.5 s
    slot.add_listener(capped.wake)
    slot.put(2)
    capped.present()  # the period is out and a result waits: at once
    slot.put(3)
    t = time.monotonic()
    capped.present()  # a result within the period waits for the period: the cap holds
    assert time.monotonic() - t >= 0.4


def test_browser_source_takes_sane_frames_and_drops_the_rest():
    src = BrowserSource()
    assert not src.offer(np.zeros((4000, 3000, 3), np.uint8))  # larger than any camera a page may send
    assert not src.offer(np.zeros((480, 640), np.uint8))  # not a colour picture
    assert not src.offer(object())
    frame = np.full((480, 640, 3), 7, np.uint8)
    assert src.offer(frame)
    assert src.read() is not None and src.received == 1 and src.rejected == 3
    src.close()
    assert src.read() is None  # a capture thread waiting for the next frame stops at shutdown


# ---- bad input: one line, before the model loads ------------------------------------------------------


def one_line(capsys, argv: list[str]) -> str:
    assert cli_main(["serve", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("live-attention: error:"), err
    return err


def test_the_page_sends_every_key_of_the_window_but_quit():
    """The page's script takes its keys from the one key table: a key added there works from the page."""
    from live_attention.ui.keys import page_keys
    from live_attention.web.server import page_script

    script = page_script().decode()
    listed = json.loads(script.split("const PAGE_KEYS = ", 1)[1].split(";", 1)[0])
    assert set(listed) == set(page_keys()) and {"j", "2", "up", "space", "r"} <= set(listed)
    assert "q" not in listed and "esc" not in listed


def test_port_in_use_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert "in use" in one_line(capsys, ["--source", "demo", "--port", str(port)])


def test_bad_certificate_is_one_line(capsys, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    assert "cannot load certificate" in one_line(capsys, ["--source", "demo", "--tls", str(cert), str(key)])
    assert "not found" in one_line(capsys, ["--source", "demo", "--tls", str(tmp_path / "none.pem"), str(key)])


def test_host_and_token_mistakes_are_one_line(capsys):
    assert "--token" in one_line(capsys, ["--host", "0.0.0.0", "--token", "abc"])  # too short to protect anything
    assert "--token" in one_line(capsys, ["--host", "0.0.0.0", "--token"])  # the option without its value
    assert "--host" in one_line(capsys, ["--host"])
    assert "--host" in one_line(capsys, ["--host", "no-such-host.invalid", "--port", "0"])
    assert "--port" in one_line(capsys, ["--port", "70000"])


# ---- real servers ----------------------------------------------------------------------------------------


class Server:
    """``live-attention serve`` in a child process; its URL read from its first line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "LIVE_ATTENTION_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}
        self.log = cwd / "server.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "live_attention", "serve", "--port", "0", *args],
                                     cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True)
        self._url: str | None = None

    @property
    def url(self) -> str:
        deadline = time.monotonic() + START_S
        while self._url is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start ({self.proc.poll()}): {self.log.read_text()[-2000:]}")
            if select.select([self.proc.stdout], [], [], 0.5)[0]:
                line = self.proc.stdout.readline()
                if " on http" in line:
                    self._url = line.split(" on ", 1)[1].strip()
        return self._url

    def local(self, path: str = "", token: bool = True) -> str:
        """The URL through 127.0.0.1 (the printed one names this host)."""
        scheme, rest = self.url.split("://", 1)
        port = rest.split("/", 1)[0].rsplit(":", 1)[1]
        query = rest.split("?", 1)[1] if "?" in rest and token else ""
        return f"{scheme}://127.0.0.1:{port}/{path}" + (f"?{query}" if query else "")

    def state(self) -> dict:
        with urllib.request.urlopen(self.local("state"), timeout=5, context=_insecure()) as r:
            return json.load(r)

    def wait(self, pred, what: str, timeout: float = WAIT_S) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-2000:]}"
            s = self.state()
            if pred(s):
                return s
            time.sleep(0.2)
        raise AssertionError(f"{what}: not within {timeout} s; last state {s}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _insecure() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the test's own self-signed certificate
    return ctx


def _self_signed(directory: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    c, k = directory / "cert.pem", directory / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return c, k


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Started together so their model loads overlap: the browser-camera server (127.0.0.1, with a token
    given) and a demo server on every interface over TLS (a random token)."""
    a, b = tmp_path_factory.mktemp("browser"), tmp_path_factory.mktemp("public")
    cert, key = _self_signed(b)
    cam = Server(["--source", "browser", "--model", "demo", "--token", "secret-test-token"], a)
    public = Server(["--source", "demo", "--host", "0.0.0.0", "--tls", str(cert), str(key)], b)
    try:
        yield cam, public
    finally:
        cam.stop()
        public.stop()


def test_non_local_address_needs_the_token(servers):
    _, public = servers
    assert public.url.startswith("https://") and "?token=" in public.url  # a random token, printed in the URL
    for path in ("state", "", "ws", "app.js"):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(public.local(path, token=False), timeout=5, context=_insecure())
        assert err.value.code == 401 and b"token" in err.value.read()
    wrong = public.local("state", token=False) + "?token=wrong-token-guess"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(wrong, timeout=5, context=_insecure())
    assert err.value.code == 401
    s = public.wait(lambda s: s.get("mode") == "attention", "the server answers with its token")
    assert s["unauthorized"] == 5 and s["frames_sent"] == 0  # no picture went to anyone without the token


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: apt-get install chromium (make system-deps)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"])
        try:
            yield b
        finally:
            b.close()


def page_wait(page, expr: str, what: str, timeout: float = WAIT_S):
    try:
        page.wait_for_function(expr, timeout=timeout * 1000)
    except Exception as exc:
        raise AssertionError(f"{what}: not within {timeout} s ({page.evaluate('JSON.stringify(window.liveAttention)')})") from exc


def take_camera(page) -> None:
    """The page's camera starts on its own when no other page's camera holds the server; when an
    earlier page's camera still lingers there (a closed tab's peer connection lasts up to 2 s), the
    page offers "use my camera" and the user clicks it. The check and the click run in one turn of the
    page's event loop: between a Playwright check and a Playwright click the button can hide itself
    (the old camera goes, the page starts its own), and the click would then wait for it forever."""
    page_wait(page, "window.liveAttention.camera !== 'off' || !document.getElementById('camera').hidden",
              "the page starts its camera or offers to")
    page.evaluate("""() => { const b = document.getElementById('camera');
        if (!b.hidden && window.liveAttention.camera === 'off') b.click(); }""")


def test_browser_camera_keys_viewers_and_recording(servers, browser):
    cam, _ = servers
    page = browser.new_page(viewport={"width": 1000, "height": 800})
    page.goto(cam.url.replace(cam.url.split("/")[2], cam.local().split("/")[2]))
    # The fake camera's frames reach the model, and the picture comes back to the page.
    page_wait(page, "window.liveAttention.frames > 5", "pictures on the page")
    s0 = cam.wait(lambda s: s["camera"]["connected"] and s["processed"] > 0, "the camera feeds the model")
    s1 = cam.wait(lambda s: s["processed"] > s0["processed"] + 5 and s["camera"]["received"] > s0["camera"]["received"],
                  "the model's frame counter grows")
    assert s1["status"]["source"] == "browser camera" and s1["seq"] is not None
    # The window's keys, through the same controller.
    page.keyboard.press("2")
    cam.wait(lambda s: s["mode"] == "rollout", "2 selects rollout")
    page.keyboard.press("ArrowDown")
    cam.wait(lambda s: s["layer"] == s1["layer"] - 1, "Down selects the layer below")
    # Every key of the window's table reaches the server from the page (the page learns them from it): J.
    smooth = cam.state()["smooth"]
    page.keyboard.press("J")
    cam.wait(lambda s: s["smooth"] is not smooth, "J toggles smoothing over time")
    # A click on the picture picks the query patch (its centre is inside the part the model sees).
    page.click("#view")
    cam.wait(lambda s: s["mode"] == "query" and s["query_patch"] is not None, "a click picks a query patch")
    # A second viewer watches the same session; neither sends its own camera.
    second = browser.new_page()
    second.goto(page.url)
    page_wait(second, "window.liveAttention.frames > 3 && window.liveAttention.lastState !== null",
              "pictures on the second page")
    s2 = cam.wait(lambda s: s["viewers"] == 2, "two viewers")
    assert second.evaluate("window.liveAttention.camera") == "off" and s2["mode"] == "query"
    # A closed tab does not stop the server; the other viewer goes on; a returning one sees the picture.
    page.close()
    s3 = cam.wait(lambda s: s["viewers"] == 1, "one viewer left")
    cam.wait(lambda s: s["frames_sent"] > s3["frames_sent"] + 3, "pictures still go out")
    # The closed tab's camera goes with it (its page's WebSockets are gone), not ~30 s later when WebRTC's
    # consent checks give up: the remaining page sees no camera and sends its own.
    page_wait(second, "window.liveAttention.camera !== 'off'", "the remaining page takes over the camera", 15)
    cam.wait(lambda s: s["camera"]["connected"] and s["processed"] > s3["processed"] + 3, "its frames reach the model")
    again = browser.new_page()
    again.goto(second.url)
    page_wait(again, "window.liveAttention.frames > 0", "a returning viewer sees the picture")
    # Junk from a page is dropped and counted; the session goes on.
    before = cam.state()["dropped_inputs"]
    again.evaluate("""() => { const ws = new WebSocket(location.href.replace('http', 'ws').replace('/?', '/ws?'));
        ws.onopen = () => { ws.send('{"key": "q"}'); ws.send('not json'); ws.send('x'.repeat(100000)); }; }""")
    cam.wait(lambda s: s["dropped_inputs"] >= before + 3 and s["viewers"] >= 2, "junk dropped and counted")
    # R records on the server, as in the window.
    again.keyboard.press("r")
    started = cam.wait(lambda s: s["recording"], "R starts recording")
    cam.wait(lambda s: s["processed"] >= started["processed"] + 2, "frames recorded")
    again.keyboard.press("r")
    cam.wait(lambda s: not s["recording"], "R stops recording")
    rec = cam.log.parent / started["recording"]  # on the server, under record.dir (relative to its folder)
    assert rec.is_dir() and any(rec.iterdir())
    assert cam.proc.poll() is None
    second.close()
    again.close()


def test_camera_over_the_websocket_when_asked(servers, browser):
    """``?camera=ws`` (what the page falls back to when WebRTC does not connect, as through an SSH
    tunnel): the fake camera's frames go as JPEG over the WebSocket and reach the model; a binary
    message that is not a JPEG is rejected and counted; a WebRTC page that takes over stops this one."""
    cam, _ = servers
    page = browser.new_page()
    page.goto(cam.local() + "&camera=ws")
    take_camera(page)  # the previous test's camera page is closed, but the server may not have dropped it yet
    page_wait(page, "window.liveAttention.camera === 'websocket' && window.liveAttention.cameraSent > 5",
              "the page sends its camera over the WebSocket")
    s0 = cam.wait(lambda s: s["camera"]["via"] == "websocket", "the WebSocket page is the camera")
    cam.wait(lambda s: s["camera"]["received"] > s0["camera"]["received"] + 5 and s["processed"] > s0["processed"] + 5
             and s["camera"]["via"] == "websocket", "its frames reach the model")
    page_wait(page, "window.liveAttention.frames > 5", "pictures on the page")
    rejected = cam.state()["camera"]["rejected"]
    page.evaluate("() => ws.send(new Uint8Array([0xff, 0xd8, 0xff, 0xc0, 0, 17, 8, 0x7f, 0xff, 0x7f, 0xff]))")
    cam.wait(lambda s: s["camera"]["rejected"] > rejected, "a JPEG that declares 32767x32767 is rejected")
    other = browser.new_page()
    other.goto(cam.local())
    other.wait_for_selector("#camera:not([hidden])", timeout=WAIT_S * 1000)  # another page has the camera
    other.click("#camera")
    cam.wait(lambda s: s["camera"]["via"] == "webrtc", "a WebRTC page takes the camera over")
    page_wait(page, "window.liveAttention.camera === 'off'", "the WebSocket page is told and stops")
    page.close()
    other.close()


def test_camera_falls_back_to_the_websocket_when_webrtc_cannot_connect(servers, browser):
    """The server's answer reaches the page but no media path does (as through an SSH tunnel, which
    carries only TCP: here the ICE candidates are taken out of the offer and the answer on the way): within a few seconds
    the page sends its camera over the WebSocket instead, and it reaches the model."""
    cam, _ = servers

    def strip(desc: dict) -> dict:
        lines = desc["sdp"].splitlines(keepends=True)
        return {**desc, "sdp": "".join(line for line in lines if not line.startswith("a=candidate"))}

    def no_candidates(route):  # neither side learns an address of the other
        offer = strip(json.loads(route.request.post_data))
        route.fulfill(json=strip(route.fetch(post_data=json.dumps(offer)).json()))

    page = browser.new_page()
    page.route("**/offer*", no_candidates)
    page.goto(cam.local())
    take_camera(page)
    page_wait(page, "window.liveAttention.camera === 'websocket' && window.liveAttention.cameraSent > 5",
              "the camera goes over the WebSocket")
    s0 = cam.wait(lambda s: s["camera"]["via"] == "websocket", "the WebSocket page is the camera")
    cam.wait(lambda s: s["processed"] > s0["processed"] + 5, "its frames reach the model")
    page.close()


def test_stops_cleanly_on_sigterm(servers):
    """Ctrl-C or SIGTERM ends the loop, the session and the server thread: exit status 0, no traceback."""
    for server in servers:
        assert server.url  # it started (the URL is printed once it serves)
        server.proc.terminate()
        assert server.proc.wait(60) == 0, server.log.read_text()[-2000:]
        assert "Traceback" not in server.log.read_text(), server.log.read_text()[-2000:]


# ---- bench --only serve ----------------------------------------------------------------------------------


def test_bench_frame_numbers_survive_the_trip_to_the_page():
    """The number drawn into a camera frame reads back from the page's picture: the frame resized to
    the canvas, dimmed outside the model's crop (render's 0.35), JPEG at the server's quality, decoded at
    half size as the bench does; a picture without a number reads as None. The cells are 32x16 px of
    pure black or white: JPEG's error on flat 8x8 blocks is a few grey levels, far below MIN_CONTRAST."""
    import cv2

    from live_attention.commands.bench_parts.serve import BITS, mark, read_mark
    from live_attention.web.server import JPEG_QUALITY

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    for number in (0, 1, 12345, (1 << BITS) - 1, 40000):
        frame = base.copy()
        mark(frame, number)
        shown = cv2.convertScaleAbs(cv2.resize(frame, (960, 720)), alpha=0.35)
        jpeg = cv2.imencode(".jpg", shown, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1]
        assert read_mark(cv2.imdecode(jpeg, cv2.IMREAD_REDUCED_GRAYSCALE_2)) == number
    assert read_mark(np.full((360, 480), 40, np.uint8)) is None  # NO SIGNAL, or a frame without a number


def test_bench_serve_part_prints_its_figures(capsys, tmp_path):
    """``bench --only serve``: a real server, an aiortc camera and WebSocket viewers; the figures are
    printed and saved. No thresholds here: the time figures are the bench's to judge."""
    out = tmp_path / "bench.json"
    assert cli_main(["bench", "--only", "serve", "--seconds", "3", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert "serve.error" not in data, data.get("serve.error")
    for label in ("camera frame sent to its picture received and decoded, median", "frames shown on the page / model fps",
                  "model fps lost with three viewers instead of one"):
        assert label in text, text
    assert data["serve.latency_median_ms"] > 0 and int(data["serve.frames_timed"]) > 0
    assert data["serve.model_fps_1"] > 0 and data["serve.model_fps_3"] > 0 and data["serve.camera_fps"] > 0
    assert data["serve.page_fps_ratio"] > 0
