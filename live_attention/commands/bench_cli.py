"""``live-attention bench``: its arguments. The measurements (:mod:`live_attention.commands.bench`) import
torch, OpenCV, PyAV and Dear PyGui at the top, which takes seconds; they load only once the arguments
are known good, so ``bench --help`` and a bad flag answer at once."""

from __future__ import annotations

import sys

from live_attention import names
from live_attention.commands.args import Parser, finite_float, positive_int

# The parts of the figures; flow and relevance time those maps.
PARTS = ("engine", "demo", names.FLOW, "renderer", "pipeline", "record", "load", "timm", names.RELEVANCE, "render",
         "compare", "long", "gpu", "serve")
DEFAULT_PARTS = PARTS[:-3]


def build_parser() -> Parser:
    p = Parser(prog="live-attention bench",
               description="Speed and memory figures, measured in one run on this machine, with PASS/FAIL against "
               "the targets. Parts: " + ", ".join(PARTS) + " (long, gpu and serve only when asked).")
    p.add_argument("--model", default="vit_b_16", help="torchvision ViT to time (default vit_b_16)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--reps", type=positive_int, default=10, help="timed repetitions per figure (medians)")
    p.add_argument("--source", default=None,
                   help="video for the pipeline, load, relevance and render figures (default: the project's test "
                   "clip in a checkout, ../shared/media/tour.mp4; else 10 s of the demo scene, made at the start)")
    p.add_argument("--seconds", type=finite_float(positive=True), default=20.0, help="pipeline run length (serve: "
                   "three phases of a third of it each, at most 7 s)")
    p.add_argument("--only", action="append", default=[], choices=PARTS, help="run only these parts (repeatable)")
    p.add_argument("--skip", action="append", default=[], choices=PARTS, help="leave a part out (repeatable)")
    p.add_argument("--minutes", type=finite_float(positive=True), default=10.0, help="length of the long video (part long)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--gui-fps", type=finite_float(positive=True), default=60.0, help="the window's frame-rate cap")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    parts = [p for p in (args.only or DEFAULT_PARTS) if p not in args.skip]
    from live_attention.commands.bench import run  # the heavy part

    return run(args, parts)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
