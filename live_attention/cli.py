"""Command line: ``live-attention`` (the live window), ``render``, ``bench``, ``replay``, ``export``.

Every user error ends as one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from live_attention.config import COLORMAPS, FUSIONS, MODES, Config, load_config
from live_attention.errors import UserError

logger = logging.getLogger("live_attention")

COMMANDS = ("render", "bench", "replay", "export")


def _model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help="vit_b_16 (default), vit_b_32, vit_l_16, vit_l_32, vit_h_14, or demo")
    g.add_argument("--weights", help="imagenet (default, torch hub cache), random (untrained), or a .pth file")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), help="default auto")
    g.add_argument("--config", metavar="TOML", help="a config file (see configs/)")


def _view_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("view")
    g.add_argument("--mode", choices=MODES, help="what to show (default attention)")
    g.add_argument("--layer", type=int, help="1-based layer; default: the last")
    g.add_argument("--head", type=int, help="1-based head; 0 or default: heads fused")
    g.add_argument("--fusion", choices=FUSIONS, help="how heads are fused (default mean)")
    g.add_argument("--opacity", type=float, help="overlay opacity, 0..1 (default 0.55)")
    g.add_argument("--colormap", choices=COLORMAPS, help="default inferno")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="live-attention",
        description="Show, live, where a Vision Transformer looks. Commands: render, bench, replay, export "
        "(see live-attention COMMAND --help).",
    )
    p.add_argument("--source", help="camera index (default 0), /dev/videoN, video file, image, folder, URL, or demo")
    p.add_argument("--loop", action="store_true", help="loop a video file")
    p.add_argument("--headless", action="store_true", help="no window: run the pipeline (with --record) on a server")
    p.add_argument("--record", metavar="DIR", help="record the session into a new folder under DIR")
    p.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    p.add_argument("--state-file", help=argparse.SUPPRESS)  # JSON of the shown state, for automation
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and library warnings) to stderr")
    _model_args(p)
    _view_args(p)
    return p


def build_render_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="live-attention render",
                                description="Render a video or image headless, one output frame per input frame.")
    p.add_argument("input", help="video file or image")
    p.add_argument("-o", "--output", required=True, help="output .mp4 (video) or .png (image)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-hud", action="store_true", help="leave out the HUD text")
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and library warnings) to stderr")
    _model_args(p)
    _view_args(p)
    return p


def view_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The view flags (``_view_args``) that were given, in View terms: layer and head 0-based."""
    o: dict[str, object] = {}
    for key in ("mode", "fusion", "opacity", "colormap"):
        val = getattr(args, key, None)
        if val is not None:
            o[key] = val
    if getattr(args, "layer", None) is not None:
        if args.layer < 1:
            raise UserError(f"--layer {args.layer}: layers count from 1")
        o["layer"] = args.layer - 1
    if getattr(args, "head", None) is not None:
        if args.head < 0:
            raise UserError(f"--head {args.head}: heads count from 1 (0 = heads fused)")
        o["head"] = args.head - 1
    return o


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    o: dict[str, dict[str, object]] = {"model": {}, "source": {}, "view": view_overrides(args)}
    for key in ("model", "weights", "device", "precision"):
        val = getattr(args, key, None)
        if val is not None:
            o["model"]["name" if key == "model" else key] = val
    if getattr(args, "source", None) is not None:
        o["source"]["source"] = args.source
    if getattr(args, "loop", False):
        o["source"]["loop"] = True
    return o


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )


def _check_layer_head(cfg: Config, engine) -> None:
    if cfg.view.layer >= engine.num_layers:
        raise UserError(f"--layer {cfg.view.layer + 1}: {engine.name} has layers 1..{engine.num_layers}")
    if cfg.view.head >= engine.num_heads:
        raise UserError(f"--head {cfg.view.head + 1}: {engine.name} has heads 1..{engine.num_heads}")


def load_engine(cfg: Config):
    from live_attention.engine import load_model

    return load_model(cfg.model.name, cfg.model.weights, cfg.model.device, cfg.model.precision)


# --------------------------------------------------------------------------------------------------
# live
# --------------------------------------------------------------------------------------------------


def cmd_live(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    cfg = load_config(args.config, _overrides(args))
    from live_attention.capture import open_source

    if cfg.source.source.lower() == "demo":
        from dataclasses import replace

        from live_attention.config import SourceConfig

        # Without a model choice the demo runs the demo model (no download, meaningful maps).
        if args.model is None and (args.config is None or cfg.model.name == "vit_b_16"):
            cfg = replace(cfg, model=replace(cfg.model, name="demo"))
        # A 4:3 scene at 960x720 unless a size was asked for: sharp in the window, cheaper to draw.
        d = SourceConfig()
        if (cfg.source.width, cfg.source.height) == (d.width, d.height):
            cfg = replace(cfg, source=replace(cfg.source, width=960, height=720))
    source = open_source(
        cfg.source.source, loop=cfg.source.loop, width=cfg.source.width, height=cfg.source.height,
        fps=cfg.source.fps, slideshow_seconds=cfg.source.slideshow_seconds,
    )
    try:
        engine = load_engine(cfg)
        _check_layer_head(cfg, engine)
    except BaseException:
        source.release()
        raise
    from live_attention.app import LiveSession

    session = LiveSession(cfg, engine, source)
    if args.headless:
        return run_headless(session, record_dir=args.record, max_seconds=args.max_seconds)
    import os

    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
        source.release()
        raise UserError("no display found (DISPLAY is not set): run it on a desktop, or use --headless")
    from live_attention.gui import run_window

    on_frame = None
    if args.max_seconds:
        deadline = time.monotonic() + args.max_seconds

        def on_frame() -> None:
            if time.monotonic() > deadline:
                raise _Done

    try:
        return run_window(session, record_dir=args.record, state_file=args.state_file, on_frame=on_frame)
    except _Done:
        return 0


class _Done(Exception):
    pass


def run_headless(session, record_dir: str | None = None, max_seconds: float | None = None) -> int:
    """The live pipeline without a window: status lines on stderr, optional recording."""
    from live_attention.app import view_from_config
    from live_attention.capture import CaptureState
    from live_attention.render import canvas_size, render

    stop = threading.Event()

    def on_signal(*_a) -> None:
        stop.set()

    old = signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    view = view_from_config(session.cfg)
    session.start()
    try:
        if record_dir:
            path = session.start_recording(record_dir, lambda: view)
            print(f"live-attention: recording to {path}", file=sys.stderr)
        t0 = time.monotonic()
        last_print = t0
        shown = None
        while not stop.is_set():
            res = session.results.get(timeout=0.2)
            now = time.monotonic()
            if res is not None and res is not shown:
                shown = res
                session.note_displayed(res)
                if session.recorder is not None:
                    rgb = render(res.frame, res, view, session.status(), size=canvas_size(res.frame.shape))
                    session.recorder.submit(res, rgb, view)
            if now - last_print >= 2.0:
                st = session.status()
                top = res.topk[0][0] if res is not None and res.topk else "-"
                print(f"[{now - t0:6.1f}s] {st.capture_state} capture {st.capture_fps or 0:.1f} fps, "
                      f"model {st.infer_fps or 0:.1f} fps, latency {st.latency_ms or 0:.0f} ms, "
                      f"dropped {st.dropped}, top-1 {top}" + (f" [{st.recording.replace('dropped', 'recorder dropped')}]" if st.recording else ""),
                      file=sys.stderr)
                if st.error:
                    print(f"live-attention: {st.error}", file=sys.stderr)
                last_print = now
            if max_seconds is not None and now - t0 >= max_seconds:
                break
            if session.capture.state in (CaptureState.ENDED, CaptureState.FAILED) and res is None:
                if session.frames.peek() is None or session.worker.processed >= session.capture.frames:
                    break
        return 0
    finally:
        path = str(session.recorder.path) if session.recorder is not None else None
        session.stop()
        signal.signal(signal.SIGINT, old)
        if path:
            print(f"live-attention: recording saved in {path}", file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# render
# --------------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last = -1.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last < 2.0 and done != self.total:
            return
        self._last = now
        rate = done / max(1e-6, now - self.t0)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            eta = (self.total - done) / max(rate, 1e-6)
            line = f"{self.label} [{bar}] {done}/{self.total} {rate:.1f} fps, {eta:.0f} s left"
        else:
            line = f"{self.label} {done} frames {rate:.1f} fps"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def cmd_render(argv: list[str]) -> int:
    args = build_render_parser().parse_args(argv)
    _setup_logging(args.verbose)
    cfg = load_config(args.config, _overrides(args))
    from live_attention.render_cmd import render_file

    out, frames, expected = render_file(args.input, args.output, cfg, overwrite=args.overwrite,
                                        hud=not args.no_hud, progress_factory=Progress)
    if expected and frames < expected:
        print(f"live-attention: warning: {args.input} ended after {frames} of the {expected} frames it "
              "announces (a truncated or damaged file?)", file=sys.stderr)
    print(f"live-attention: wrote {out} ({frames} frames)", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------------


def _quiet_libraries(argv: list[str]) -> None:
    """OpenCV and its FFmpeg print warnings ("can't open camera by index", "moov atom not found")
    before our one-line errors say the same thing better. Quiet them unless -v; a user's own
    settings win. Must run before cv2 is first imported."""
    if "-v" in argv or "--verbose" in argv:
        return
    import os

    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET
    os.environ.setdefault("OPENCV_VIDEOIO_DEBUG", "0")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _quiet_libraries(argv)
    cmd = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        if cmd == "render":
            return cmd_render(argv[1:])
        if cmd == "bench":
            from live_attention.bench import main as bench_main

            return bench_main(argv[1:])
        if cmd in ("replay", "export"):
            from live_attention import replay

            return replay.main(cmd, argv[1:])
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
