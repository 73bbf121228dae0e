"""``live-attention render``: videos and images through the model and the renderer, headless.

Every input frame is processed in order (no latest-wins here), so each output has exactly one frame
per input frame, at the input's timestamps. Decoding, batched inference, drawing and encoding overlap
(:mod:`live_attention.offline.batch`). Several inputs or a folder go into ``-o DIR``, one output each;
a failing input is reported and the others go on.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from live_attention.commands.args import (
    Parser,
    Progress,
    add_logging_arg,
    add_model_args,
    add_view_args,
    config_overrides,
    positive_int,
    setup_logging,
    terminate_as_interrupt,
)
from live_attention.config import load_config
from live_attention.errors import UserError

if TYPE_CHECKING:
    from live_attention.offline.renderer import Job, Plan, Renderer

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="live-attention render",
               description="Render videos or images headless, one output frame per input frame. Several "
               "inputs or a folder write one output each into -o DIR; the exit status is the number "
               "of inputs that failed.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video file, image, or a folder of them")
    p.add_argument("-o", "--output", required=True,
                   help="output .mp4 (video) or .png (image); a folder (one output per input) with several "
                        "inputs, or where it is a folder already or ends with /")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--save-maps", metavar="FILE.npz",
                   help="also save the shown map of every frame (float16 [frames, rows, cols]) with the timestamps "
                   "and the grid, for analysis in your own code (one input)")
    p.add_argument("--no-hud", action="store_true", help="leave out the HUD text")
    p.add_argument("--batch", type=positive_int, help="frames per forward pass (default: 8 on a CPU, 32 on a GPU)")
    p.add_argument("--workers", type=positive_int, help="drawing threads (default: cores - 1, at most 4)")
    p.add_argument("--ray", metavar="ADDRESS",
                   help="spread the inputs over a Ray cluster: auto (a local one) or its address "
                        "(pip install 'live-attention[ray]')")
    add_logging_arg(p)
    add_model_args(p)
    add_view_args(p)
    return p


def say(line: str) -> None:
    print(f"live-attention: {line}", file=sys.stderr, flush=True)


def report(job: Job, frames: int, expected: int | None) -> None:
    from live_attention.offline.renderer import report_lines

    for line in report_lines(job, frames, expected):
        say(line)


def render_here(plan: Plan, renderer: Renderer) -> int:
    """Several inputs on this machine: each failing input is one line and the others go on; returns
    how many failed (those that failed before any work included)."""
    from live_attention.offline.renderer import failure_reason, summary_line

    failed = len(plan.failed)
    for job in plan.jobs:
        try:
            report(job, *renderer.render(job, Progress))
        except Exception as exc:  # whatever one input does (a damaged file, a full disk), the next one goes on
            failed += 1
            logger.debug("rendering %s failed", job.input, exc_info=True)
            say(f"{job.input}: failed: {failure_reason(exc)}")
    say(summary_line(len(plan.jobs) + len(plan.failed), failed))
    return failed


def _maps_path(args: argparse.Namespace, plan: Plan) -> Path | None:
    from live_attention.io.mapfile import check_maps_path

    if not args.save_maps:
        return None
    if not plan.single:
        raise UserError(f"--save-maps takes one input, not {len(plan.jobs) + len(plan.failed)}: "
                        "render them one at a time")
    if args.ray:
        raise UserError("--save-maps does not work with --ray: render on this machine")
    return check_maps_path(args.save_maps, args.overwrite)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    cfg = load_config(args.config, config_overrides(args))
    # The heavy part (torch, OpenCV, PyAV) loads once the arguments are known good: --help stays instant.
    from live_attention.io.mapfile import MapsFile
    from live_attention.io.outputs import partial_path
    from live_attention.offline.distributed import render_on_ray
    from live_attention.offline.renderer import Renderer, plan_jobs, summary_line

    plan = plan_jobs(args.inputs, args.output, args.overwrite)
    for spec, why in plan.failed:
        say(f"{spec}: failed: {why}")
    maps_path = _maps_path(args, plan)  # checked before the model loads
    old = terminate_as_interrupt()
    try:
        if not plan.jobs:  # every input failed before any work
            say(summary_line(len(plan.failed), len(plan.failed)))
            return min(len(plan.failed), 100)
        if args.ray:
            failed = render_on_ray(plan.jobs, cfg, address=args.ray, hud=not args.no_hud, batch_size=args.batch,
                                   failed_before=len(plan.failed))
            return min(failed, 100)
        renderer = Renderer(cfg, hud=not args.no_hud, batch_size=args.batch, workers=args.workers, say=say)
        if plan.single:  # one input: its error is the command's error
            job = plan.jobs[0]
            second = renderer.compare.describe() if renderer.compare is not None else ""
            maps = MapsFile(maps_path, renderer.engine.describe(), job.input.name, second) if maps_path else None
            report(job, *renderer.render(job, Progress, maps=maps))
            if maps is not None:
                say(f"wrote {maps.write(args.overwrite)} ({len(maps)} maps)")
            return 0
        return min(render_here(plan, renderer), 100)
    except KeyboardInterrupt:
        kept = [str(partial_path(j.output)) for j in plan.jobs if partial_path(j.output).exists()]
        print("live-attention: interrupted" + (f": partial output kept in {', '.join(kept)}" if kept else ""),
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
