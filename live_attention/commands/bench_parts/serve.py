"""``live-attention bench --only serve``: the browser camera loop of ``live-attention serve``, end to end.

A real ``serve --source browser --model demo`` runs in a child process on 127.0.0.1. This process plays
the browser with aiortc and aiohttp (the ``web`` extra): it sends a 640x480 camera at 30 fps over
WebRTC (the demo scene, VP8 as browsers send it) and watches the page's WebSocket. Each camera frame
carries its number in the picture itself, a column of black and white cell pairs in the strip left of
the model's centre crop (dimmed there, but still readable); each picture that comes back is decoded
(JPEG, as the page does) and its number read, so the latency is camera frame sent to picture shown,
through the encoder, the network, the server's decoder, the model, the drawing and the JPEG, with no
help from the server. The first picture that shows a frame gives that frame's latency.

Phases, back to back in one run: one viewer, three viewers, one viewer again. The model's fps is the
server's ``processed`` counter (``GET /state``) over each phase; the page's fps is the camera frames
the first viewer saw (distinct frame numbers: the server also redraws an unchanged frame for the
HUD's figures). The other two viewers take every picture but do not decode them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

TARGET_SERVE_LATENCY_MS = 150.0  # camera frame sent to picture shown, median, loopback
TARGET_SERVE_PAGE_FPS = 0.9  # pictures a page receives / frames the model processes
TARGET_SERVE_VIEWERS_COST = 10.0  # % of the model's fps lost with 3 viewers instead of 1
CAMERA_SIZE, CAMERA_FPS = (640, 480), 30.0
START_S = 180.0  # importing torch and loading the model on a loaded machine; only a failure waits this long
FIRST_PICTURE_S = 60.0

# The frame number's code: BITS rows of two cells (left white and right black is a 1), in source pixels.
BITS = 16
CELL_W, CELL_H = 32, 16
CODE_X, CODE_Y = 4, 140  # left of the 480x480 centre crop, below the HUD's status panel, above the legend
MIN_CONTRAST = 12.0  # grey levels between the two cells of a pair (white is ~89 after the dimming, black 0)


def mark(frame: np.ndarray, number: int) -> None:
    """Draw ``number`` (mod 2**BITS) into a 640x480 BGR frame, in place."""
    for bit in range(BITS):
        one = (number >> bit) & 1
        y = CODE_Y + bit * CELL_H
        frame[y:y + CELL_H, CODE_X:CODE_X + CELL_W] = 255 if one else 0
        frame[y:y + CELL_H, CODE_X + CELL_W:CODE_X + 2 * CELL_W] = 0 if one else 255


def read_mark(gray: np.ndarray) -> int | None:
    """The number :func:`mark` drew into the camera frame shown in ``gray`` (the page's picture, any
    scale: it is the frame resized), or None when a pair has too little contrast (no such frame)."""
    sy, sx = gray.shape[0] / CAMERA_SIZE[1], gray.shape[1] / CAMERA_SIZE[0]
    number = 0
    for bit in range(BITS):
        y0, y1 = int((CODE_Y + bit * CELL_H + 4) * sy), int((CODE_Y + (bit + 1) * CELL_H - 4) * sy)
        cells = []
        for x in (CODE_X, CODE_X + CELL_W):  # the centre of each cell: codecs blur the edges
            cells.append(float(gray[y0:y1, int((x + 8) * sx):int((x + CELL_W - 8) * sx)].mean()))
        if abs(cells[0] - cells[1]) < MIN_CONTRAST:
            return None
        number |= int(cells[0] > cells[1]) << bit
    return number


def camera_frames(count: int = 60) -> list[np.ndarray]:
    """Two seconds of the demo scene (what the demo model knows) at 640x480, played in a loop."""
    from live_attention.demo.synthetic import DemoScene

    scene = DemoScene(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1], seed=0)
    return [scene.frame(i / CAMERA_FPS) for i in range(count)]


@dataclass
class Probe:
    """What the client saw: when each frame left, when its picture arrived."""

    sent: dict[int, float] = field(default_factory=dict)  # frame number -> perf_counter when handed to WebRTC
    latencies: list[float] = field(default_factory=list)  # ms, one per frame seen on the page
    seen: set[int] = field(default_factory=set)
    pictures: int = 0  # pictures the decoding viewer received
    unreadable: int = 0  # pictures without a readable number (NO SIGNAL, a codec's bad frame)
    others: list[int] = field(default_factory=list)  # pictures each other viewer received

    def take(self, jpeg: bytes) -> None:
        gray = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_2)
        now = time.perf_counter()
        self.pictures += 1
        number = read_mark(gray) if gray is not None else None
        if number is None or number not in self.sent:
            self.unreadable += 1
            return
        if number not in self.seen:
            self.seen.add(number)
            self.latencies.append((now - self.sent[number]) * 1000.0)


def _camera_track(probe: Probe, frames: list[np.ndarray]) -> Any:
    from aiortc import VideoStreamTrack
    from av import VideoFrame

    class Camera(VideoStreamTrack):
        """A 30 fps camera whose frames carry their number."""

        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        async def recv(self) -> VideoFrame:
            pts, time_base = await self.next_timestamp()
            number = self.count % (1 << BITS)
            img = frames[self.count % len(frames)].copy()
            mark(img, number)
            frame = VideoFrame.from_ndarray(img, format="bgr24")
            frame.pts, frame.time_base = pts, time_base
            self.count += 1
            probe.sent[number] = time.perf_counter()
            return frame

    return Camera()


class ServeProcess:
    """``live-attention serve --source browser --model demo`` on a free port of 127.0.0.1."""

    def __init__(self, log: Path) -> None:
        self.log = log
        env = {**os.environ, "LIVE_ATTENTION_OFFLINE": "1"}  # the demo model ships: nothing to download
        self._err = open(log, "w")  # noqa: SIM115 - the child writes it until stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "live_attention", "serve", "--source", "browser",
                                      "--model", "demo", "--port", "0"], stdout=subprocess.PIPE,
                                     stderr=self._err, text=True, env=env)

    def url(self) -> str:
        import select

        out = self.proc.stdout
        assert out is not None  # stdout=PIPE
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([out], [], [], 0.5)[0]:
                line = out.readline()
                if " on http" in line:
                    return line.split(" on ", 1)[1].strip()
        raise RuntimeError(f"serve did not start: {self.tail()}")

    def tail(self) -> str:
        lines = self.log.read_text().strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.poll()}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        finally:
            self._err.close()
            if self.proc.stdout is not None:
                self.proc.stdout.close()


async def _viewer(session: Any, url: str, on_picture: Callable[[bytes], None], stop: asyncio.Event) -> None:
    async with session.ws_connect(url.replace("http", "ws", 1) + "ws", max_msg_size=0) as ws:
        while not stop.is_set():
            try:
                msg = await asyncio.wait_for(ws.receive(), 0.5)
            except asyncio.TimeoutError:
                continue
            if msg.type.name != "BINARY":
                if msg.type.name in ("CLOSE", "CLOSED", "ERROR"):
                    return
                continue
            on_picture(msg.data)


async def _state(session: Any, url: str) -> dict[str, Any]:
    async with session.get(url + "state") as r:
        return json.loads(await r.text())


async def _phase(session: Any, url: str, probe: Probe, seconds: float) -> dict[str, Any]:
    """Rates over ``seconds`` (per second): the model's frames, the server's pictures drawn and sent, the
    camera frames the timed page saw and the pictures each page received; and the latencies meanwhile."""
    s0, seen0, pictures0, lat0, others0 = (await _state(session, url), len(probe.seen), probe.pictures,
                                           len(probe.latencies), list(probe.others))
    t = time.perf_counter()
    await asyncio.sleep(seconds)
    s1, dt = await _state(session, url), time.perf_counter() - t
    return {"model_fps": (s1["processed"] - s0["processed"]) / dt, "drawn_fps": (s1["pictures"] - s0["pictures"]) / dt,
            "sent_fps": (s1["frames_sent"] - s0["frames_sent"]) / dt, "page_fps": (len(probe.seen) - seen0) / dt,
            "pictures_fps": (probe.pictures - pictures0) / dt,
            "others_fps": min([(a - b) / dt for a, b in zip(probe.others, others0, strict=True)], default=0.0),
            "camera_fps": (s1["camera"]["received"] - s0["camera"]["received"]) / dt,
            "latencies": probe.latencies[lat0:], "viewers": s1["viewers"]}


async def _measure(url: str, seconds: float) -> tuple[Probe, list[dict[str, Any]]]:
    """Connect the camera and one viewer, then time the phases: 1 viewer, 3 viewers, 1 viewer."""
    import aiohttp
    from aiortc import RTCPeerConnection, RTCSessionDescription

    probe, frames, stop = Probe(), camera_frames(), asyncio.Event()
    pc = RTCPeerConnection()
    pc.addTrack(_camera_track(probe, frames))
    tasks: list[asyncio.Task[None]] = []
    async with aiohttp.ClientSession() as session:
        try:
            await pc.setLocalDescription(await pc.createOffer())  # aiortc gathers every candidate first
            async with session.post(url + "offer", json={"sdp": pc.localDescription.sdp, "type": "offer"}) as r:
                answer = await r.json()
            await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
            tasks.append(asyncio.create_task(_viewer(session, url, probe.take, stop)))
            deadline = time.monotonic() + FIRST_PICTURE_S
            while len(probe.latencies) < 15:  # the camera's frames come back: warm
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no camera frame came back within {FIRST_PICTURE_S:g} s "
                                       f"({probe.pictures} pictures, {probe.unreadable} without a frame number)")
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
            phases = [await _phase(session, url, probe, seconds)]
            leave = asyncio.Event()
            for i in range(2):
                probe.others.append(0)
                tasks.append(asyncio.create_task(_viewer(session, url, functools.partial(_count_other, probe, i), leave)))
            await asyncio.sleep(1.0)  # the new viewers are connected and served
            phases.append(await _phase(session, url, probe, seconds))
            leave.set()  # the two extra viewers leave; the first one goes on
            await asyncio.gather(*tasks[1:])
            del tasks[1:]
            probe.others.clear()
            await asyncio.sleep(1.0)
            phases.append(await _phase(session, url, probe, seconds))
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pc.close()
    return probe, phases


def _count_other(probe: Probe, i: int, _picture: bytes) -> None:
    probe.others[i] += 1


def bench_serve(rep: Any, seconds: float) -> None:
    """The ``serve`` part: latency, page fps and the cost of three viewers (see the module's docstring)."""
    import tempfile

    rep.section(f"serve: browser camera -> server -> page, {CAMERA_SIZE[0]}x{CAMERA_SIZE[1]} at {CAMERA_FPS:g} fps, "
                f"demo model, loopback (aiortc client; {seconds:.1f} s per phase)")
    try:
        import aiohttp  # noqa: F401
        import aiortc  # noqa: F401
    except ImportError as exc:
        rep.add("serve.error", "serve not measured", f"needs the web extra ({exc.name} is missing)")
        return
    with tempfile.TemporaryDirectory(prefix="la-bench-serve-") as d:
        server = ServeProcess(Path(d) / "serve.log")
        try:
            url = server.url()
            with ThreadPoolExecutor(1) as pool:  # a loop of its own: the caller's thread may run one
                probe, phases = pool.submit(asyncio.run, _measure(url, seconds)).result()
        except (RuntimeError, OSError) as exc:
            rep.add("serve.error", "serve not measured", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        finally:
            server.stop()
    report_serve(rep, probe, phases)


def report_serve(rep: Any, probe: Probe, phases: list[dict[str, Any]]) -> None:
    """The figures, with the targets: latency, the page keeping the model's fps, three viewers' cost."""
    one, three, again = phases
    lat = sorted(one["latencies"] + again["latencies"])
    if not lat:
        rep.add("serve.error", "serve not measured", "no camera frame came back during the phases")
        return
    mean = lambda key: (one[key] + again[key]) / 2  # noqa: E731 - one viewer, before and after three
    rep.target("serve.latency_median_ms", "camera frame sent to its picture received and decoded, median",
               statistics.median(lat), "ms", TARGET_SERVE_LATENCY_MS)
    rep.add("serve.latency_p90_ms", "  90th percentile", lat[int(0.9 * (len(lat) - 1))], "ms")
    rep.add("serve.frames_timed", "  camera frames timed (each seen on the page)", str(len(lat)))
    rep.add("serve.camera_fps", "camera frames reaching the server", mean("camera_fps"), "fps")
    rep.add("serve.model_fps_1", "model fps, one viewer (before and after three)", mean("model_fps"), "fps")
    rep.add("serve.drawn_fps_1", "  pictures drawn / sent by the server", f"{mean('drawn_fps'):.2f} / "
            f"{mean('sent_fps'):.2f}", "fps")
    rep.add("serve.page_fps_1", "  camera frames shown on the page (pictures received)", f"{mean('page_fps'):.2f} "
            f"({mean('pictures_fps'):.2f})", "fps")
    rep.target("serve.page_fps_ratio", "frames shown on the page / model fps, one viewer",
               mean("page_fps") / max(mean("model_fps"), 1e-9), "x", TARGET_SERVE_PAGE_FPS, below=False)
    rep.add("serve.model_fps_3", "model fps, three viewers", three["model_fps"], "fps")
    rep.add("serve.page_fps_3", "  frames shown on the timed page; pictures on the slowest other page",
            f"{three['page_fps']:.2f}; {three['others_fps']:.2f}", "fps")
    rep.target("serve.viewers_cost", "model fps lost with three viewers instead of one",
               (1.0 - three["model_fps"] / max(mean("model_fps"), 1e-9)) * 100.0, "%", TARGET_SERVE_VIEWERS_COST)
    if three["latencies"]:
        rep.target("serve.latency_3_median_ms", "latency, median, three viewers", statistics.median(three["latencies"]),
                   "ms", TARGET_SERVE_LATENCY_MS)
    rep.add("serve.unreadable", "pictures without a frame number, of those the timed page received",
            f"{probe.unreadable} / {probe.pictures}")
