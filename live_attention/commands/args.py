"""What every command shares: argument parsing with one-line errors, option groups, logging, the
progress bar, and turning flags into config overrides and a loaded engine."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import time
from typing import Any

from live_attention.config import COLORMAPS, FUSIONS, MODEL_HELP, MODES
from live_attention.errors import UserError


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (``live-attention: error: ...``), not usage text and a traceback."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def finite_float(lo: float | None = None, hi: float | None = None, positive: bool = False):
    """An argparse type: a finite number (NaN and inf refused), within [lo, hi], > 0 when ``positive``."""

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if positive and v <= 0:
            raise argparse.ArgumentTypeError(f"must be more than 0, got {text!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(f"must be in {lo}..{hi}, got {text!r}")
        return v

    parse.__name__ = "number"
    return parse


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return v


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help=MODEL_HELP)
    g.add_argument("--weights", help="imagenet (default: the model's published weights, through its cache), "
                   "random (untrained), or a checkpoint file (.pth, .bin, .safetensors)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N, mps")
    g.add_argument("--precision", choices=("auto", "fp32", "fp16", "bf16"), help="default auto")
    g.add_argument("--input-size", type=positive_int, metavar="N",
                   help="run the model at N px (a multiple of its patch size; default: the model's own)")
    g.add_argument("--full-frame", action="store_true",
                   help="the whole frame at its own aspect ratio (shorter side = input size), no centre crop")
    g.add_argument("--config", metavar="TOML", help="a config file (see configs/)")
    g.add_argument("--compare", metavar="MODEL", help="a second model run on the same frames, shown side by side "
                   "(names as --model; config [compare] model)")
    g.add_argument("--compare-weights", metavar="W", help="the second model's weights, as --weights (default imagenet)")
    g.add_argument("--compare-device", metavar="DEVICE", help="the second model's device (default: the first's)")


def on_off(text: str) -> bool:
    """An argparse type: ``on`` or ``off`` (also true/false, yes/no, 1/0) as a bool."""
    v = text.strip().lower()
    if v in ("on", "true", "yes", "1"):
        return True
    if v in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"must be on or off, got {text!r}")


def add_smooth_arg(p: Any) -> None:
    """``--smooth off|on`` on a parser or an argument group."""
    p.add_argument("--smooth", type=on_off, metavar="off|on",
                   help="smooth the map over time, following the motion: still maps settle, moving ones do not "
                   "smear (default on; key J)")


def add_view_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("view")
    g.add_argument("--mode", choices=MODES, help="what to show (default attention)")
    g.add_argument("--layer", type=int, help="1-based layer; default: the last")
    g.add_argument("--head", type=int, help="1-based head; 0 or default: heads fused")
    g.add_argument("--fusion", choices=FUSIONS, help="how heads are fused (default mean)")
    g.add_argument("--opacity", type=finite_float(0.0, 1.0), help="overlay opacity, 0..1 (default 0.55)")
    g.add_argument("--colormap", choices=COLORMAPS, help="default inferno")
    g.add_argument("--target", metavar="NAME|INDEX",
                   help="the class relevance explains (mode relevance): a label or a class index; default top-1")
    add_smooth_arg(g)


def add_logging_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="log details (and library warnings) to stderr")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s",
    )


def _view_flags(args: argparse.Namespace) -> dict[str, object]:
    """The view flags that were given, as typed: layer and head count from 1 (head 0: heads fused)."""
    o: dict[str, object] = {}
    for key in ("mode", "fusion", "opacity", "colormap", "smooth"):
        val = getattr(args, key, None)
        if val is not None:
            o[key] = val
    if getattr(args, "layer", None) is not None:
        if args.layer < 1:
            raise UserError(f"--layer {args.layer}: layers count from 1")
        o["layer"] = args.layer
    if getattr(args, "head", None) is not None:
        if args.head < 0:
            raise UserError(f"--head {args.head}: heads count from 1 (0 = heads fused)")
        o["head"] = args.head
    return o


def view_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The view flags that were given, in View terms: layer and head 0-based (head -1: fused)."""
    o = _view_flags(args)
    for key in ("layer", "head"):
        value = o.get(key)
        if isinstance(value, int):
            o[key] = value - 1
    return o


def config_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """Every flag that maps to a config key, as ``{section: {key: value}}`` (the config counts layers and
    heads from 1, as the flags do)."""
    view = _view_flags(args)
    if getattr(args, "target", None) is not None:
        view["target"] = args.target
    o: dict[str, dict[str, object]] = {"model": {}, "source": {}, "view": view}
    for key in ("model", "weights", "device", "precision"):
        val = getattr(args, key, None)
        if val is not None:
            o["model"]["name" if key == "model" else key] = val
    if getattr(args, "input_size", None) is not None:
        o["model"]["input_size"] = args.input_size
    if getattr(args, "full_frame", False):
        o["model"]["full_frame"] = True
    o["compare"] = {key: val for key, val in (("model", getattr(args, "compare", None)),
                                                ("weights", getattr(args, "compare_weights", None)),
                                                ("device", getattr(args, "compare_device", None))) if val is not None}
    if getattr(args, "source", None) is not None:
        o["source"]["source"] = args.source
    if getattr(args, "loop", False):
        o["source"]["loop"] = True
    return o


class Progress:
    """A one-line progress bar on stderr with fps and ETA (plain lines every 2 s when not a terminal)."""

    def __init__(self, total: int | None, label: str) -> None:
        self.total, self.label = total, label
        self.tty = sys.stderr.isatty()
        self.t0 = time.monotonic()
        self._last = -1.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if (now - self._last < (0.1 if self.tty else 2.0)) and done != self.total:
            return
        self._last = now
        rate = done / max(1e-6, now - self.t0)
        if self.total:
            frac = min(1.0, done / self.total)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            left = f"{(self.total - done) / rate:.0f} s left" if done else "starting"
            line = f"{self.label} [{bar}] {done}/{self.total} {rate:.1f} fps, {left}"
        else:
            line = f"{self.label} {done} frames {rate:.1f} fps"
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")
            sys.stderr.flush()


def terminate_as_interrupt() -> Any:
    """SIGTERM behaves like Ctrl-C (KeyboardInterrupt on the main thread): outputs are closed and kept
    under their partial names. Returns the previous handler."""

    def handler(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)
