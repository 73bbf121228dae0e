"""A local HTTP MJPEG stream (multipart/x-mixed-replace, as IP cameras and phone apps serve it) that a
test can stall and resume: ``sending.clear()`` keeps every connection open and sends nothing."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np


class MjpegServer:
    """Serves ``image`` (BGR) at ``fps`` on http://127.0.0.1:PORT/stream.mjpg until :meth:`close`."""

    def __init__(self, image: np.ndarray, fps: float = 10.0) -> None:
        ok, jpeg = cv2.imencode(".jpg", image)
        assert ok
        self.jpeg = jpeg.tobytes()
        self.period = 1.0 / fps
        self.sending = threading.Event()
        self.sending.set()
        self.closing = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/stream.mjpg"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="mjpeg", daemon=True)
        self._thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                part = b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(server.jpeg)
                while not server.closing.is_set():
                    if not server.sending.wait(0.1):
                        continue  # stalled: the connection stays open, nothing comes
                    try:
                        self.wfile.write(part + server.jpeg + b"\r\n")
                        self.wfile.flush()
                    except OSError:
                        return  # the client went away (it reconnects on a new connection)
                    server.closing.wait(server.period)

        return Handler

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()
