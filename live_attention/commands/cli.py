"""Command line: ``live-attention`` (the live window, or ``--headless``) and the commands ``render``,
``replay``, ``export``, ``bench``, ``evaluate`` and ``serve``.

Every user error ends as one line on stderr and exit status 2, never a traceback.

Only the standard library and the package's light modules (args, config, errors) load before the
arguments are parsed and the config read: ``--help`` and a bad argument answer at once, without the
seconds torch, OpenCV, PyAV and Dear PyGui take to import. Each command's module does the same.
"""

from __future__ import annotations

import argparse
import importlib
import logging
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
from live_attention.config import Config, SourceConfig, load_config
from live_attention.errors import UserError

logger = logging.getLogger("live_attention")

# Each command's module has ``main(argv) -> int``; imported when run, and light until its arguments are parsed.
COMMANDS = {
    "render": "live_attention.commands.render",
    "replay": "live_attention.commands.replay",
    "export": "live_attention.commands.export",
    "bench": "live_attention.commands.bench_cli",
    "evaluate": "live_attention.commands.evaluate",
    "serve": "live_attention.commands.serve",
}


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="live-attention",
        description="Show, live, where a Vision Transformer looks. Commands: " + ", ".join(COMMANDS)
        + " (see live-attention COMMAND --help).",
    )
    p.add_argument("--source", help="camera index (default 0), /dev/videoN, video file, image, folder, URL, or demo")
    p.add_argument("--loop", action="store_true", help="loop a video file")
    p.add_argument("--headless", action="store_true", help="no window: run the pipeline (with --record) on a server")
    p.add_argument("--record", metavar="DIR", help="record the session into a new folder under DIR")
    p.add_argument("--max-seconds", type=finite_float(positive=True), help="stop after this many seconds")
    p.add_argument("--state-file", help=argparse.SUPPRESS)  # JSON of the shown state, for automation
    add_logging_arg(p)
    add_model_args(p)
    add_view_args(p)
    return p


def demo_defaults(cfg: Config, model_given: bool, config_given: bool) -> Config:
    """``--source demo`` without a model choice runs the demo model (no download, meaningful maps), on a
    4:3 scene at 960x720 unless a size was asked for: sharp in the window, cheap to draw."""
    if not model_given and (not config_given or cfg.model.name == "vit_b_16"):
        cfg = replace(cfg, model=replace(cfg.model, name="demo"))
    d = SourceConfig()
    if (cfg.source.width, cfg.source.height) == (d.width, d.height):
        cfg = replace(cfg, source=replace(cfg.source, width=960, height=720))
    return cfg


def cmd_live(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, config_overrides(args))
    if cfg.source.source.lower() == "demo":
        cfg = demo_defaults(cfg, args.model is not None, args.config is not None)
    return run_live(args, cfg)


def run_live(args: argparse.Namespace, cfg: Config) -> int:
    """The live session, once the arguments and the config are known good: the heavy imports start here."""
    from live_attention.core.models import compare_engine_from_config, engine_from_config
    from live_attention.io.capture import open_source
    from live_attention.pipeline.live import LiveSession
    from live_attention.pipeline.loop import FrameLoop, HeadlessDisplay
    from live_attention.ui.controller import view_from_config
    from live_attention.ui.window import TITLE, Window, check_display

    source = open_source(cfg.source.source, loop=cfg.source.loop, width=cfg.source.width, height=cfg.source.height,
                         fps=cfg.source.fps, slideshow_seconds=cfg.source.slideshow_seconds)
    try:
        if not args.headless:
            check_display("use --headless (with --record)")  # before the model loads: fail fast
        engine = engine_from_config(cfg)
        compare = compare_engine_from_config(cfg, engine)  # --compare: side by side on the same frames
        view = replace(view_from_config(cfg), target=engine.class_index(cfg.view.target))
    except BaseException:
        source.release()
        raise
    session = LiveSession(cfg, engine, source, compare)
    display: HeadlessDisplay | Window
    if args.headless:
        display = HeadlessDisplay()
    else:
        w = cfg.window
        display = Window(TITLE, w.width, w.height, w.vsync, w.max_fps)
    loop = FrameLoop(session, display, view, entropy_seconds=cfg.view.entropy_seconds, residual=cfg.view.residual,
                     animate_fps=cfg.view.animate_fps, screenshot_dir=cfg.window.screenshot_dir,
                     state_file=args.state_file, max_seconds=args.max_seconds, stop_when_finished=args.headless)
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, lambda *_: setattr(loop, "quit", True))
    signal.signal(signal.SIGINT, lambda *_: setattr(loop, "quit", True))
    session.start(window=not args.headless)
    try:
        if args.record:
            try:
                path = session.start_recording(args.record, lambda: loop.view)
                loop.say(f"recording to {path}", 4.0)
                if args.headless:
                    print(f"live-attention: recording to {path}", file=sys.stderr)
            except UserError as exc:
                if args.headless:
                    raise
                loop.say(f"recording not started: {exc}", 8.0)  # a bad folder must not stop the live view
        status = loop.run()
    finally:
        saved = str(session.recorder.path) if session.recorder is not None else None
        session.stop()
        display.close()
        for s, h in old.items():
            signal.signal(s, h)
        if args.headless:
            if session.finished:
                print(f"live-attention: end of input ({source.name}, {session.capture.frames} frames)", file=sys.stderr)
            if saved:
                print(f"live-attention: recording saved in {saved}", file=sys.stderr)
    for err in session.record_errors:  # the app went on; the exit status says the recording did not
        print(f"live-attention: error: {err}", file=sys.stderr)
    return status or (1 if session.record_errors else 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        if cmd is not None:
            return importlib.import_module(COMMANDS[cmd]).main(argv[1:])
        return cmd_live(argv)
    except UserError as exc:
        print(f"live-attention: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("live-attention: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a vanished folder: one line, not a traceback
        logger.debug("OS error", exc_info=True)
        print(f"live-attention: error: {exc.strerror or exc} ({getattr(exc, 'filename', '') or 'I/O'})",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
