"""``live-attention evaluate``: how faithful is each map? A table of the standard measures, printed and saved.

    live-attention evaluate --demo                       # the demo model on synthetic scenes (boxes known)
    live-attention evaluate --model vit_b_16 --images photos/
    live-attention evaluate --temporal --demo            # flicker, and what smoothing costs (--smooth)
    live-attention evaluate --temporal --video clip.mp4 --model vit_b_16
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from live_attention import names
from live_attention.commands.args import Parser, add_logging_arg, positive_int, setup_logging
from live_attention.config import MODEL_HELP
from live_attention.errors import UserError

KINDS, TEMPORAL_KINDS = names.EVALUATION_KINDS, names.TEMPORAL_KINDS  # names imports nothing: --help stays light


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="live-attention evaluate",
               description="Score every map kind (CLS attention, rollout, flow, relevance, a random floor) by the "
               "pointing game, deletion and insertion AUC and a model-randomisation check; prints a table and "
               "saves it (Markdown and JSON with the curves).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--demo", action="store_true", help="synthetic scenes with two shapes each (boxes known)")
    src.add_argument("--images", metavar="DIR", help="a folder of images (each explained for its top-1 class)")
    src.add_argument("--video", metavar="FILE", help="with --temporal: a video (its first frames, and its first "
                     "frame shaken)")
    t = p.add_argument_group("temporal (--temporal)")
    t.add_argument("--temporal", action="store_true",
                   help="measure flicker instead: still shaken and moving clips, raw maps against the --smooth filter "
                   "and plain moving averages (flicker, consistency, warping error, lag, deletion/insertion AUC)")
    t.add_argument("--full-frame", action="store_true", help="the model sees the whole frame, not its centre crop")
    t.add_argument("--auc-frames", type=non_negative_int, default=16,
                   help="frames of the moving clip that get deletion/insertion curves (default 16; 0: none)")
    t.add_argument("--stride", type=positive_int, default=1, help="--video: every Nth frame (default 1)")
    p.add_argument("--model", help=f"{MODEL_HELP} (default: demo with --demo, vit_b_16 with --images)")
    p.add_argument("--weights", default="imagenet", help="imagenet (default), random, or a checkpoint file")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    p.add_argument("--precision", default="fp32", choices=("auto", "fp32", "fp16", "bf16"),
                   help="default fp32 (measures want exact probabilities)")
    p.add_argument("-n", "--count", type=positive_int,
                   help="scenes (--demo) or at most this many images (default 100: under a minute for the demo on 2 cores); "
                   "--temporal: frames of each still clip, twice as many moving (default 40)")
    p.add_argument("--kinds", help=f"comma-separated map kinds (default {','.join(KINDS)}; --temporal: "
                   f"{','.join(TEMPORAL_KINDS)})")
    p.add_argument("--cascade", help="randomisation steps, top blocks re-initialised cumulatively, e.g. 1,6,12 "
                   "(default: the top block, the top half, all)")
    p.add_argument("--batch", type=positive_int, default=128, help="images per forward pass")
    p.add_argument("--out", default="evaluation", help="folder for the saved table (default evaluation/)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random map, the re-initialisation and the scenes")
    add_logging_arg(p)
    return p


def _cascade(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        steps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--cascade {text!r}: give block counts like 1,6,12") from None
    if not steps or min(steps) < 1:
        raise UserError(f"--cascade {text!r}: block counts are 1 or more")
    return steps


def _say_skipped(path: Path, why: str) -> None:
    print(f"live-attention: skipped {path}: {why}", file=sys.stderr)


def non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else positive_int(text)


def _save(args: argparse.Namespace, name: str, title: str, text: str, data: dict) -> None:
    from live_attention.io.outputs import unique_path

    stem = datetime.now().strftime(f"evaluate-{name.replace(':', '-').replace('/', '-')}-%Y%m%d-%H%M%S")
    md = unique_path(args.out, stem, ".md")
    md.write_text(f"# {title}\n\n{text}\n")
    js = md.with_suffix(".json")
    js.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    print(f"live-attention: saved {md} and {js}", file=sys.stderr)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.temporal:
        return _temporal(args)
    if args.video or args.full_frame:
        raise UserError(f"{'--video' if args.video else '--full-frame'} is for --temporal: add --temporal")
    name = args.model or ("demo" if args.demo else "vit_b_16")
    if args.demo and name != "demo":
        raise UserError("--demo scenes are what the demo model knows: use --model demo, or --images DIR")
    cascade = _cascade(args.cascade)  # what the user typed is checked before the model loads
    # The heavy part (torch, OpenCV) loads once the arguments are known good: --help stays instant.
    from live_attention.core.models import load_model
    from live_attention.offline.evaluation import Evaluator, demo_items, folder_items, most_faithful, table

    count = args.count or 100
    items = None if args.demo else folder_items(args.images, count, skipped=_say_skipped)
    engine = load_model(name, args.weights, args.device, args.precision)
    if cascade and max(cascade) > engine.num_layers:
        raise UserError(f"--cascade {args.cascade}: this model has {engine.num_layers} blocks, "
                        f"give counts from 1 to {engine.num_layers}")
    kinds = [k.strip() for k in (args.kinds or ",".join(KINDS)).split(",") if k.strip()]
    evaluator = Evaluator(engine, kinds, batch=args.batch, seed=args.seed)
    if items is None:
        items = demo_items(count, seed=1234 + args.seed, size=engine.image_size)
    print(f"live-attention evaluate: {engine.describe()}, {len(items)} images", file=sys.stderr)
    ev = evaluator.run(items, cascade, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    text = table(ev)
    verdict = most_faithful(ev)
    print(f"\n{text}\n\n{verdict}\n({ev.images} images, {ev.pairs} (image, class) pairs, {ev.seconds:.0f} s)")
    _save(args, name, f"live-attention evaluate: {engine.describe()}", f"{text}\n\n{verdict}", asdict(ev))
    return 0


def _temporal(args: argparse.Namespace) -> int:
    """``--temporal``: flicker and smoothing (:mod:`live_attention.offline.temporal_eval`)."""
    if args.images:
        raise UserError("--temporal measures clips: use --demo or --video FILE, not --images")
    if args.cascade:
        raise UserError("--cascade is for the faithfulness evaluation, not --temporal")
    name = args.model or ("demo" if args.demo else "vit_b_16")
    if args.demo and name != "demo":
        raise UserError("--demo scenes are what the demo model knows: use --model demo, or --video FILE")
    if args.video and not Path(args.video).expanduser().is_file():
        raise UserError(f"--video {args.video}: file not found")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()] if args.kinds else None
    # The heavy part loads once the arguments are known good.
    from live_attention.core.models import load_model
    from live_attention.offline import temporal_eval as te  # lazy: only this mode needs it

    engine = load_model(name, args.weights, args.device, args.precision, full_frame=args.full_frame)
    evaluator = te.TemporalEvaluator(engine, kinds, batch=min(args.batch, 32), auc_frames=args.auc_frames)
    n = args.count or 40
    clips = (te.demo_clips(n, seed=args.seed) if args.demo
             else te.video_clips(Path(args.video).expanduser(), n, args.stride, seed=args.seed))
    print(f"live-attention evaluate --temporal: {engine.describe()}, {clips['moving'].name}", file=sys.stderr)
    ev = evaluator.run(clips, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    text = te.table(ev)
    lines = "\n".join(te.verdict(ev))
    frames = ", ".join(f"{k} {v}" for k, v in ev.frames.items())
    print(f"\n{text}\n\n{lines}\n(frames: {frames}; {ev.seconds:.0f} s)")
    _save(args, name, f"live-attention evaluate --temporal: {engine.describe()}, {ev.source}",
          f"{text}\n\n{lines}\n\nFrames: {frames}.", asdict(ev))
    return 0
