"""``live-attention export SESSION``: a recorded session rendered again, or one frame's heads grid or
layers animation. Maps come from the recording; what it lacks is recomputed with the manifest's model.
A session still being recorded, never finalised or missing a part is exported as far as its files
allow, after one line saying so."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from live_attention import names
from live_attention.commands.args import (
    Parser,
    Progress,
    add_logging_arg,
    add_view_args,
    positive_int,
    setup_logging,
    terminate_as_interrupt,
    view_overrides,
)
from live_attention.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from live_attention.io.recording import Session


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="live-attention export",
               description="Render a recorded session again, or one frame's heads grid / layers GIF.")
    p.add_argument("session", help="a session folder")
    p.add_argument("-o", "--output", required=True, help=".mp4 (video), .png (--grid), .gif (--layers-gif)")
    p.add_argument("--frame", type=int, default=1,
                   help="frame number for --grid and --layers-gif (from 1, as the replay HUD counts)")
    p.add_argument("--grid", action="store_true", help="write the layers x heads attention grid of --frame")
    p.add_argument("--layers-gif", action="store_true", help="write --frame's attention through the layers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--save-maps", metavar="FILE.npz",
                   help="with a video export: also save the shown map of every frame (float16 [frames, rows, cols]) "
                   "with the timestamps and the grid")
    p.add_argument("--no-hud", action="store_true", help="leave out the HUD text")
    p.add_argument("--weights", help="weights for recomputing what was not recorded (default: the manifest's)")
    p.add_argument("--device", default="auto", help="for recomputed maps: auto, cpu, cuda, mps")
    p.add_argument("--batch", type=positive_int, help="frames per forward pass where maps are recomputed")
    p.add_argument("--workers", type=positive_int, help="drawing threads (default: cores - 1, at most 4)")
    add_logging_arg(p)
    add_view_args(p)
    return p


def _check_view(session: Session, o: dict) -> None:
    if o.get("layer", -1) >= session.layers:
        raise UserError(f"--layer {o['layer'] + 1}: this session has layers 1..{session.layers}")
    if o.get("head", -1) >= session.heads:
        raise UserError(f"--head {o['head'] + 1}: this session has heads 1..{session.heads}")


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    view_overrides(args)  # a bad --layer or --head is said before the heavy imports
    return export(args)


def _write_animation(frames: list[np.ndarray], out: Path, overwrite: bool) -> None:
    """``--layers-gif``: a GIF, or a video at two frames per second."""
    from live_attention.io.outputs import PartialOutput
    from live_attention.io.writers import H264Writer, write_gif

    with PartialOutput(out, overwrite) as part:
        if out.suffix.lower() == ".gif":
            write_gif(frames, part.path)
        else:
            with H264Writer(part.path, frames[0].shape[1], frames[0].shape[0], fps=2, overwrite=True) as w:
                for i, f in enumerate(frames):
                    w.write(f, i * 0.5)


def export(args: argparse.Namespace) -> int:
    """The export itself. The heavy part (torch, OpenCV, PyAV) loads here, once the arguments are known
    good: ``--help`` and a bad flag answer at once."""
    import cv2

    from live_attention.io.mapfile import MapsFile, check_maps_path
    from live_attention.io.outputs import PartialOutput, check_output, partial_path
    from live_attention.io.recording import Session
    from live_attention.modes import needs_model
    from live_attention.pipeline.replay import (
        engine_for_session,
        export_needs_model,
        export_video,
        export_view,
        grid_picture,
        layers_frames,
    )

    session = Session(args.session)
    for note in session.notes():
        print(f"live-attention: warning: {note}", file=sys.stderr)
    old = terminate_as_interrupt()
    try:
        overrides = view_overrides(args)
        _check_view(session, overrides)
        engine = None
        if not session.has_maps or args.target is not None:
            engine = engine_for_session(session, args.weights, args.device)
            if args.target is not None:  # a class name or index: the session's model says which class that is
                overrides["target"] = engine.class_index(args.target)
        if args.grid and args.layers_gif:
            raise UserError("--grid and --layers-gif write different files: pick one")
        if args.save_maps and (args.grid or args.layers_gif):
            raise UserError("--save-maps goes with a video export, not --grid or --layers-gif")
        maps_path = check_maps_path(args.save_maps, args.overwrite) if args.save_maps else None
        if args.grid or args.layers_gif:
            if not 1 <= args.frame <= len(session):
                raise UserError(f"--frame {args.frame}: this session has frames 1..{len(session)}")
            index = args.frame - 1
            if args.grid:
                out = check_output(args.output, args.overwrite, (".png", ".jpg", ".jpeg"), "--grid writes an image")
                img = grid_picture(session, index, str(overrides.get("colormap", "inferno")), engine)
                with PartialOutput(out, args.overwrite) as part:
                    if not cv2.imwrite(str(part.path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                        raise UserError(f"cannot write {out}: use .png or .jpg in a writable folder")
            else:
                out = check_output(args.output, args.overwrite, (".gif", ".mp4", ".mkv"),
                                   "--layers-gif writes an animation")
                view = replace(export_view(session, index, overrides), mode=str(overrides.get("mode", names.ATTENTION)))
                if engine is None and session.has_raw and needs_model(view, session.result(index)):
                    engine = engine_for_session(session, args.weights, args.device)
                _write_animation(layers_frames(session, index, view, engine), out, args.overwrite)
        else:
            out = check_output(args.output, args.overwrite, (".mp4", ".mkv", ".mov"),
                               "a session exports to .mp4 (or .mkv), or --grid to a .png")
            if engine is None and export_needs_model(session, overrides):
                engine = engine_for_session(session, args.weights, args.device)
            progress = Progress(len(session), f"export {session.path.name}")
            st = session.status()
            maps = MapsFile(maps_path, st.model, session.path.name, st.pair.model if st.pair else "") if maps_path else None
            try:
                export_video(session, out, overrides, engine=engine, hud=not args.no_hud, overwrite=args.overwrite,
                             progress=progress.update, batch_size=args.batch, workers=args.workers,
                             maps=maps.add if maps is not None else None)
            finally:
                progress.close()
            if maps is not None:
                print(f"live-attention: wrote {maps.write(args.overwrite)} ({len(maps)} maps)", file=sys.stderr)
        print(f"live-attention: wrote {out}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        kept = partial_path(Path(args.output).expanduser())
        print("live-attention: interrupted" + (f": partial output kept in {kept}" if kept.exists() else ""),
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
        session.close()
