"""HTTP, WebSocket and WebRTC for ``live-attention serve``, on a thread of its own.

Threads: :class:`WebServer` runs an asyncio loop on its thread (``web``), which owns the listening
socket, every viewer's WebSocket and every WebRTC peer connection. It talks to the frame loop only
through the :class:`~live_attention.web.display.WebDisplay` (keys and clicks in, pictures out) and to
the capture thread only through the :class:`~live_attention.web.source.BrowserSource`. Each new
picture is encoded to JPEG once, off the event loop, and sent to every viewer; a slow viewer gets the
newest picture when it is ready again, never a queue of old ones.

Routes (each needs the token when there is one: ``?token=`` or ``Authorization: Bearer``):
``/`` the page, ``/app.js``, ``/state`` (JSON), ``/ws`` (pictures out; keys and clicks in, as
JSON text; with ``--source browser`` also the page's camera: ``{"camera": "claim"}``, then JPEG binary
messages, the fallback when WebRTC cannot connect, e.g. through an SSH tunnel, which carries only TCP), ``/offer`` (POST: a WebRTC
offer with the page's camera, answered with the server's).
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import importlib.resources
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from aiohttp import WSMsgType, web

from live_attention.errors import UserError
from live_attention.ui.keys import page_keys
from live_attention.web.display import WebDisplay
from live_attention.web.source import BrowserSource

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "::1", "localhost")
JPEG_QUALITY = 85
SEND_TIMEOUT_S = 5.0  # a viewer that takes longer to take one picture is dropped (it may come back)
MAX_WS_BYTES = 64 * 1024  # larger WebSocket messages close that connection (and are counted)
MAX_OFFER_BYTES = 64 * 1024
PAGE_GRACE_S = 2.0  # a page whose WebSockets are all closed this long is gone: its camera goes too
MAX_CAMERA_JPEG_BYTES = 1024 * 1024  # a camera frame over the WebSocket (--source browser only)


def is_local(host: str) -> bool:
    """True when only this machine can reach ``host`` (a loopback address)."""
    return host in LOCAL_HOSTS or host.startswith("127.")


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server TLS context from PEM files, or a one-line :class:`UserError` saying what is wrong."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise UserError(f"--tls: {exc.filename} not found: give a PEM certificate and its private key") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise UserError(f"--tls: cannot load certificate {cert} with key {key} ({reason}): give a PEM "
                        "certificate and the private key that matches it") from None
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or a one-line :class:`UserError` (port in use, not an address here)."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                          flags=socket.AI_PASSIVE)[0]
    except socket.gaierror:
        raise UserError(f"--host {host}: not an address this machine knows: use 127.0.0.1 (the default), "
                        "or 0.0.0.0 for every interface") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use: pick another with --port, or stop the "
                            "program that holds it") from None
        if exc.errno == errno.EACCES:
            raise UserError(f"port {port} needs privileges: use a port above 1023 with --port") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UserError(f"--host {host}: not an address of this machine: use 127.0.0.1 (the default), "
                            "or 0.0.0.0 for every interface") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


def _static(name: str) -> bytes:
    return importlib.resources.files("live_attention.web").joinpath("static").joinpath(name).read_bytes()


def page_script() -> bytes:
    """The page's script, with the keys it may send filled in from the one key table: a key added to
    the window (ui/keys.py) works from the page too."""
    keys = json.dumps(sorted(page_keys())).encode()
    return _static("app.js").replace(b"/*PAGE_KEYS*/[]", keys, 1)


def page_id(value: object) -> str | None:
    """A page's random id as it sent it (short, letters and digits), else None."""
    if isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and value.isalnum():
        return value
    return None


def is_camera_claim(text: str) -> bool:
    """True for the message a page sends before its camera's frames go over the WebSocket."""
    return len(text) < 64 and text.replace(" ", "") == '{"camera":"claim"}'


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read before decoding (a small file may declare a
    huge picture), or None when ``data`` is not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def decode_camera_jpeg(data: bytes, max_side: int, max_pixels: int) -> np.ndarray | None:
    """A page's camera frame (JPEG) as BGR, or None when it is not a JPEG or declares too large a picture."""
    size = jpeg_size(data)
    if size is None or not (0 < size[0] <= max_side and 0 < size[1] <= max_side) or size[0] * size[1] > max_pixels:
        return None
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


class WebServer(threading.Thread):
    """The server thread. :meth:`start` it once the socket is bound (:func:`bind`); :meth:`stop` joins.

    Args:
        display: the frame loop's display (the bridge to the loop).
        sock: the bound listening socket (see :func:`bind`).
        token: required on every request when given.
        ssl_context: serve HTTPS with it (see :func:`tls_context`).
        source: the browser camera source (``--source browser``), or None.
        extra_state: more fields for ``/state`` (called on this thread).
    """

    def __init__(self, display: WebDisplay, sock: socket.socket, token: str | None = None,
                 ssl_context: ssl.SSLContext | None = None, source: BrowserSource | None = None,
                 extra_state: Callable[[], dict[str, Any]] | None = None) -> None:
        super().__init__(name="web", daemon=True)
        self.display, self.sock, self.token, self.ssl_context = display, sock, token, ssl_context
        self.source = source
        self.extra_state = extra_state or dict
        self.port = sock.getsockname()[1]
        self.failed: str | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._halt: asyncio.Event | None = None
        self._wakers: set[asyncio.Event] = set()
        self._jpeg: tuple[int, bytes] = (0, b"")
        self._encode_lock: asyncio.Lock | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._camera: Any = None  # the peer connection or WebSocket whose camera feeds the source (latest wins)
        self._peers: set[Any] = set()
        # Which page (its random id) sent each peer connection, and how many WebSockets each page has
        # open: a page's camera goes when its last WebSocket does (a closed tab), not ~30 s later when
        # WebRTC's consent checks time out.
        self._peer_page: dict[Any, str] = {}
        self._page_sockets: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # camera readers (the loop keeps only weak references)
        self.unauthorized = 0
        display.on_picture = self.picture_ready

    # ---- lifetime (any thread) ------------------------------------------------------------------

    def start(self) -> None:
        super().start()
        if not self._ready.wait(10.0) or self.failed:
            raise UserError(f"the web server did not start: {self.failed or 'timed out'}")

    def stop(self, timeout: float = 5.0) -> None:
        loop, halt = self._loop, self._halt
        if loop is not None and halt is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(halt.set)
            except RuntimeError:  # the loop closed meanwhile
                pass
        self.join(timeout)

    def picture_ready(self) -> None:
        """A new picture (frame loop's thread): wake every viewer's sender."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._wake_all)
            except RuntimeError:
                pass

    def _wake_all(self) -> None:
        for ev in self._wakers:
            ev.set()

    # ---- the thread -----------------------------------------------------------------------------

    def run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except Exception as exc:
            logger.exception("web server failed")
            self.failed = f"{type(exc).__name__}: {exc}"
        finally:
            self._ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._halt = asyncio.Event()
        self._encode_lock = asyncio.Lock()
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_OFFER_BYTES)
        app.router.add_get("/", self._page)
        app.router.add_get("/app.js", self._script)
        app.router.add_get("/state", self._state)
        app.router.add_get("/ws", self._viewer)
        app.router.add_post("/offer", self._offer)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.SockSite(runner, self.sock, ssl_context=self.ssl_context)
        await site.start()
        self._ready.set()
        try:
            await self._halt.wait()
        finally:
            for ws in list(self._sockets):
                await ws.close()
            for pc in list(self._peers):
                await pc.close()
            await runner.cleanup()

    # ---- routes -----------------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        if self.token is not None:
            given = request.query.get("token") or request.headers.get("Authorization", "").removeprefix("Bearer ")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                self.unauthorized += 1
                return web.Response(status=401, text="401: this server needs its token (?token=... in the URL)\n")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.Response:
        # The script goes inside the page: a separate request for it would need the token again.
        script = b"<script>\n" + page_script() + b"</script>"
        page = _static("index.html").replace(b'<script src="app.js"></script>', script)
        return web.Response(body=page, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def _script(self, request: web.Request) -> web.Response:
        return web.Response(body=page_script(), content_type="application/javascript",
                            headers={"Cache-Control": "no-store"})

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state(), dumps=lambda o: json.dumps(o, default=str))

    def state(self) -> dict[str, Any]:
        state = {**self.display.snapshot(), **self.extra_state(), "unauthorized": self.unauthorized}
        state["browser_source"] = self.source is not None
        if self.source is not None:
            via = None if self._camera is None else "websocket" if isinstance(self._camera, web.WebSocketResponse) \
                else "webrtc"
            state["camera"] = {"connected": self._camera is not None, "via": via, "received": self.source.received,
                               "rejected": self.source.rejected, "overwritten": self.source.dropped}
        return state

    async def _viewer(self, request: web.Request) -> web.WebSocketResponse:
        limit = MAX_CAMERA_JPEG_BYTES if self.source is not None else MAX_WS_BYTES
        # No permessage-deflate: JPEG does not compress, and deflating it cost CPU for every viewer (and
        # left a failed task behind when a viewer left in the middle of a send).
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=limit, compress=False)
        await ws.prepare(request)
        wake = asyncio.Event()
        wake.set()  # the newest picture at once: a returning viewer sees the session without waiting
        self._wakers.add(wake)
        self._sockets.add(ws)
        self.display.viewers += 1
        page = page_id(request.query.get("page"))
        if page is not None:
            self._page_sockets[page] = self._page_sockets.get(page, 0) + 1
        sender = asyncio.create_task(self._send_pictures(ws, wake))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT and self.source is not None and is_camera_claim(msg.data):
                    await self._claim_camera(ws)
                elif msg.type == WSMsgType.TEXT:
                    self.display.push(msg.data)
                elif msg.type == WSMsgType.BINARY and self.source is not None:
                    await self._camera_frame(ws, msg.data)
                elif msg.type in (WSMsgType.BINARY, WSMsgType.ERROR):
                    self.display.count("dropped_inputs")
        finally:
            if self._camera is ws:
                self._camera = None
            self.display.viewers -= 1
            self._wakers.discard(wake)
            self._sockets.discard(ws)
            sender.cancel()
            if page is not None:
                self._page_left(page)
        if ws.close_code == 1009:  # too big: aiohttp closed it
            self.display.count("dropped_inputs")
        return ws

    async def _claim_camera(self, ws: web.WebSocketResponse) -> None:
        """This page's WebSocket becomes the camera (the latest wins; the one it replaces is told)."""
        old, self._camera = self._camera, ws
        if old is not ws:
            await self._release_camera(old)

    async def _camera_frame(self, ws: web.WebSocketResponse, data: bytes) -> None:
        """A camera frame over the WebSocket; ignored unless this page is the camera (frames still on
        their way from a page that another one replaced)."""
        from live_attention.web.source import MAX_PIXELS, MAX_SIDE

        assert self.source is not None
        if self._camera is not ws:
            return
        image = await asyncio.get_running_loop().run_in_executor(None, decode_camera_jpeg, data, MAX_SIDE, MAX_PIXELS)
        if image is None:
            self.source.reject()
        else:
            self.source.offer(image)

    async def _send_pictures(self, ws: web.WebSocketResponse, wake: asyncio.Event) -> None:
        sent = 0
        while not ws.closed:
            await wake.wait()
            wake.clear()
            seq, data = await self._jpeg_for_latest()
            if seq == sent or not data:
                continue
            try:
                await asyncio.wait_for(ws.send_bytes(data), SEND_TIMEOUT_S)
            except (ConnectionError, asyncio.TimeoutError, RuntimeError):
                await ws.close()
                return
            sent = seq
            self.display.count("frames_sent")

    async def _jpeg_for_latest(self) -> tuple[int, bytes]:
        """The newest picture as JPEG, encoded once for every viewer (in a worker thread)."""
        assert self._encode_lock is not None
        async with self._encode_lock:
            seq, rgb = self.display.latest_picture()
            if rgb is not None and seq != self._jpeg[0]:
                data = await asyncio.get_running_loop().run_in_executor(None, encode_jpeg, rgb)
                self._jpeg = (seq, data)
            return self._jpeg

    async def _offer(self, request: web.Request) -> web.Response:
        if self.source is None:
            return web.Response(status=409, text="this server's source is not the browser (--source browser)\n")
        try:
            body = await request.json()
            sdp, kind = body["sdp"], body["type"]
            if not isinstance(sdp, str) or kind != "offer":
                raise ValueError
        except Exception:
            self.display.count("dropped_inputs")
            return web.Response(status=400, text="expected JSON {\"sdp\": ..., \"type\": \"offer\"}\n")
        return web.json_response(await self._answer(sdp, page_id(body.get("page"))))

    async def _answer(self, sdp: str, page: str | None = None) -> dict[str, str]:
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = RTCPeerConnection()
        self._peers.add(pc)
        if page is not None:
            self._peer_page[pc] = page

        @pc.on("track")
        def on_track(track: Any) -> None:
            if track.kind == "video":
                task = asyncio.ensure_future(self._take_camera(pc, track))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self._drop_peer(pc)

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception:
            self.display.count("dropped_inputs")
            await self._drop_peer(pc)
            raise web.HTTPBadRequest(text="the offer is not a WebRTC offer this server can answer\n") from None
        return {"sdp": pc.localDescription.sdp, "type": pc.localDescription.type}

    async def _take_camera(self, pc: Any, track: Any) -> None:
        """Feed the source from this page's camera; the page that connected last is the camera."""
        from aiortc.mediastreams import MediaStreamError

        old, self._camera = self._camera, pc
        if old is not pc:
            await self._release_camera(old)
        assert self.source is not None
        try:
            while self._camera is pc:
                self.source.offer(await track.recv())
        except MediaStreamError:
            pass
        finally:
            if self._camera is pc:
                self._camera = None

    async def _release_camera(self, old: Any) -> None:
        """The camera that another page replaced: a peer connection is closed, a WebSocket is told
        (``{"camera": "taken"}``) and stays a viewer."""
        if isinstance(old, web.WebSocketResponse):
            if not old.closed:
                try:
                    await old.send_str(json.dumps({"camera": "taken"}))
                except (ConnectionError, RuntimeError):
                    pass
        elif old is not None:
            await self._drop_peer(old)

    def _page_left(self, page: str) -> None:
        """One of a page's WebSockets closed; if none is back within the grace (a network blip
        reconnects in a second), its peer connections are closed: the tab is gone."""
        self._page_sockets[page] -= 1
        if self._page_sockets[page] == 0:
            del self._page_sockets[page]
            assert self._loop is not None
            self._loop.call_later(PAGE_GRACE_S, self._drop_page_peers, page)

    def _drop_page_peers(self, page: str) -> None:
        if page in self._page_sockets:
            return
        for pc in [pc for pc, p in self._peer_page.items() if p == page]:
            task = asyncio.ensure_future(self._drop_peer(pc))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _drop_peer(self, pc: Any) -> None:
        self._peers.discard(pc)
        self._peer_page.pop(pc, None)
        if self._camera is pc:
            self._camera = None
        await pc.close()
