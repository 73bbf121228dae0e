"""``live-attention serve``: the live view in web browsers, with the browser's camera as a possible
source (needs the ``web`` extra: aiohttp, aiortc).

The frame loop runs on the main thread as for the window, with a
:class:`~live_attention.web.display.WebDisplay`; the web server runs on its own thread. The socket is
bound and the certificate loaded before the model loads: a port in use or a bad certificate fails at
once, in one line.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
from dataclasses import replace

from live_attention.commands.args import (
    Parser,
    add_logging_arg,
    add_model_args,
    add_view_args,
    config_overrides,
    finite_float,
    setup_logging,
)
from live_attention.commands.cli import demo_defaults
from live_attention.config import load_config
from live_attention.errors import UserError

MIN_TOKEN = 8


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="live-attention serve",
               description="Serve the live view to web browsers: the same picture and keys as the window. "
                           "Binds 127.0.0.1 unless --host; any other address needs a token.")
    p.add_argument("--source", help="as for the window (camera, file, folder, URL, demo), or browser: "
                   "the camera of the page that opens it, sent over WebRTC")
    p.add_argument("--loop", action="store_true", help="loop a video file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this "
                   "machine only; reach it through an SSH tunnel)")
    p.add_argument("--port", type=int, default=8080, help="default 8080 (0: any free port)")
    p.add_argument("--token", help="the secret every request must carry (?token=...); default: none on "
                   "127.0.0.1, a random one on any other address (printed in the URL)")
    p.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve HTTPS with this PEM certificate and "
                   "key (browsers give the camera only to HTTPS pages or localhost)")
    p.add_argument("--record", metavar="DIR", help="record the session into a new folder under DIR (on the server)")
    p.add_argument("--max-seconds", type=finite_float(positive=True), help="stop after this many seconds")
    p.add_argument("--state-file", help=argparse.SUPPRESS)
    add_logging_arg(p)
    add_model_args(p)
    add_view_args(p)
    return p


def choose_token(host: str, token: str | None) -> str | None:
    """The token requests must carry: the given one, none on a loopback address, else a random one."""
    from live_attention.web.server import is_local

    if token is not None:
        if len(token) < MIN_TOKEN or not token.isprintable() or any(c.isspace() for c in token):
            raise UserError(f"--token: use at least {MIN_TOKEN} characters without spaces, or leave --token out "
                            "for a random one")
        return token
    return None if is_local(host) else secrets.token_urlsafe(16)


def url_for(host: str, port: int, token: str | None, tls: bool) -> str:
    import socket

    shown = socket.gethostname() if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host
    return f"{'https' if tls else 'http'}://{shown}:{port}/" + (f"?token={token}" if token else "")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port {args.port}: use 1..65535 (0: any free port)")
    try:
        from live_attention.web import server as web
    except ImportError as exc:
        raise UserError(f"serve needs the web extra ({exc.name} is missing): pip install 'live-attention[web]'") from None
    token = choose_token(args.host, args.token)
    ctx = web.tls_context(*args.tls) if args.tls else None
    cfg = load_config(args.config, config_overrides(args))
    if cfg.source.source.lower() == "demo":
        cfg = demo_defaults(cfg, args.model is not None, args.config is not None)
    sock = web.bind(args.host, args.port)
    try:
        return serve(args, cfg, sock, token, ctx)
    finally:
        sock.close()


def serve(args: argparse.Namespace, cfg, sock, token: str | None, ctx) -> int:
    """Load the model, start the session, the server and the frame loop; stop them in reverse order."""
    from live_attention.core.models import compare_engine_from_config, engine_from_config
    from live_attention.io.capture import open_source
    from live_attention.pipeline.live import LiveSession
    from live_attention.pipeline.loop import FrameLoop
    from live_attention.ui.controller import view_from_config
    from live_attention.web.display import WebDisplay
    from live_attention.web.server import WebServer
    from live_attention.web.source import BrowserSource

    browser = BrowserSource() if cfg.source.source.lower() == "browser" else None
    source = browser if browser is not None else open_source(
        cfg.source.source, loop=cfg.source.loop, width=cfg.source.width, height=cfg.source.height,
        fps=cfg.source.fps, slideshow_seconds=cfg.source.slideshow_seconds)
    try:
        engine = engine_from_config(cfg)
        compare = compare_engine_from_config(cfg, engine)  # --compare: side by side on the same frames
        view = replace(view_from_config(cfg), target=engine.class_index(cfg.view.target))
    except BaseException:
        source.release()
        raise
    session = LiveSession(cfg, engine, source, compare)
    display = WebDisplay(max_fps=cfg.window.max_fps or 60.0)
    session.results.add_listener(display.wake)  # each new result is drawn at once
    server = WebServer(display, sock, token, ctx, browser, extra_state=session.state)
    loop = FrameLoop(session, display, view, entropy_seconds=cfg.view.entropy_seconds, residual=cfg.view.residual,
                     animate_fps=cfg.view.animate_fps, screenshot_dir=cfg.window.screenshot_dir,
                     state_file=args.state_file, max_seconds=args.max_seconds)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda *_: setattr(loop, "quit", True))
    session.start(window=True)  # a core stays free for the loop and the server
    try:
        server.start()
        print(f"live-attention: serving {source.name} on {url_for(args.host, server.port, token, ctx is not None)}",
              flush=True)
        if args.record:
            path = session.start_recording(args.record, lambda: loop.view)
            print(f"live-attention: recording to {path}", file=sys.stderr, flush=True)
        status = loop.run()
    finally:
        saved = str(session.recorder.path) if session.recorder is not None else None
        if browser is not None:
            browser.close()  # ends the capture thread's wait for the next browser frame
        session.stop()
        server.stop()
        display.close()
        for s, h in old.items():
            signal.signal(s, h)
        if saved:
            print(f"live-attention: recording saved in {saved}", file=sys.stderr)
    for err in session.record_errors:
        print(f"live-attention: error: {err}", file=sys.stderr)
    return status or (1 if session.record_errors else 0)
