"""``live-attention replay SESSION``: a recorded session in the window, with the live keys and playback.

The replay window is the one frame loop with a :class:`~live_attention.pipeline.replay.ReplayFeed`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from live_attention.commands.args import Parser, add_logging_arg, add_smooth_arg, finite_float, setup_logging


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="live-attention replay",
               description="Replay a recorded session in the window. Keys as live, plus P/Space play-pause, "
               ", and . step, Home/End, [ and ] speed.")
    p.add_argument("session", help="a session folder (session-YYYYmmdd-HHMMSS)")
    p.add_argument("--weights", help="weights for recomputing what was not recorded (default: the manifest's)")
    p.add_argument("--device", default="auto", help="for recomputed maps: auto, cpu, cuda, mps")
    p.add_argument("--no-model", action="store_true", help="do not load the model (recorded maps only)")
    p.add_argument("--paused", action="store_true", help="start paused on the first frame")
    add_smooth_arg(p)  # the recording keeps the raw maps: replay shows them smoothed or not
    p.add_argument("--max-seconds", type=finite_float(positive=True), help="stop after this many seconds")
    p.add_argument("--state-file", help=argparse.SUPPRESS)
    add_logging_arg(p)
    return p


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    # The heavy part (torch, OpenCV, PyAV, Dear PyGui) loads once the arguments are known good.
    from live_attention.io.recording import Session
    from live_attention.pipeline.loop import FrameLoop
    from live_attention.pipeline.replay import ReplayFeed, check_replayable, engine_for_session
    from live_attention.ui.window import TITLE, Window, check_display

    session = Session(args.session)  # a wrong folder is said first, display or not
    try:
        check_replayable(session, not args.no_model)
        for note in session.notes():
            print(f"live-attention: warning: {note}", file=sys.stderr)
        check_display("use `live-attention export` instead")
        # Without raw.mkv there is nothing to compute maps from: the model is not loaded.
        engine = None if args.no_model or not session.has_raw else engine_for_session(session, args.weights, args.device)
        feed = ReplayFeed(session, engine, paused=args.paused)
        view = replace(session.view(0), frozen=args.paused, animating=False)
        if args.smooth is not None:
            view = replace(view, smooth=args.smooth)
        window = Window(f"{TITLE} replay", 1280, 800, vsync=True)
        window.add_timeline(len(session))
        try:
            loop = FrameLoop(feed, window, view, entropy_seconds=session.config_value("view", "entropy_seconds", 10.0),
                             residual=session.config_value("view", "residual", 0.5), state_file=args.state_file,
                             max_seconds=args.max_seconds)
            return loop.run()
        finally:
            window.close()
    finally:
        session.close()
