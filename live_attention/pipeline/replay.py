"""A recorded session again: the :class:`ReplayFeed` of the replay window, and export.

Threads: everything here runs on the frame loop's (main) thread. Recorded maps are shown as recorded;
what the recording lacks for the current view (query rows, flow, rollout with another fusion, another
layer's patch entropy, relevance for another class) is recomputed from the lossless raw frame with the
model named in the manifest (:class:`Recompute`), once per frame and setting.

A damaged session plays what its files allow: without attention chunks every frame's maps are computed
from ``raw.mkv`` as the recorder would have stored them (:func:`compute_rows`, so the model is needed);
without ``raw.mkv`` the recorded maps are drawn on a grey canvas, and views that need the model are not
available. :meth:`Session.notes <live_attention.io.recording.Session.notes>` says what is missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from live_attention.config import RecordConfig
from live_attention.core.compare import PairedModels, Pairing
from live_attention.core.engine import AttentionEngine
from live_attention.core.models import PRETRAINED, load_model
from live_attention.core.render import heads_grid
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings, Result, Status, View
from live_attention.errors import UserError
from live_attention.io.mapfile import MapsSink
from live_attention.io.outputs import PartialOutput
from live_attention.io.recording import RAW, Session
from live_attention.io.video import H264Writer
from live_attention.modes import default_view, map_settings, mode, needs_model
from live_attention.offline import batch
from live_attention.ui.frame import canvas_for, render

logger = logging.getLogger(__name__)

SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)


def engine_for_session(session: Session, weights: str | None = None, device: str = "auto",
                       precision: str | None = None) -> AttentionEngine:
    """The manifest's model with the manifest's weights (or ``weights``), at the recorded input size;
    weights other than the recording's are logged."""
    return _load_entry(session.manifest["model"], weights, device, precision)


def pair_engine_for_session(session: Session, engine: AttentionEngine) -> AttentionEngine | None:
    """The second model of a ``--compare`` session (its recorded weights, on ``engine``'s device), so that
    views needing maps that were not recorded are computed on both sides; None without one, or (said
    once, as a warning) when it cannot be loaded: its side then shows what was recorded."""
    if session.pair is None or not session.pair_data:
        return None
    m = session.pair["model"]
    try:
        return _load_entry(m, None, str(engine.device), engine.precision, "put it back where it was recorded")
    except UserError as exc:
        logger.warning("the second model (%s) cannot be loaded, so its side shows only what was recorded: %s",
                       m.get("name", "?"), exc)
        return None


def _load_entry(m: dict[str, Any], weights: str | None, device: str, precision: str | None,
                fix: str = "pass --weights PATH, imagenet or random, or --no-model") -> AttentionEngine:
    """The model of a manifest entry with its recorded weights (or ``weights``), at the recorded input size."""
    w = weights or m.get("weights") or "imagenet"
    if w.lower() not in (*PRETRAINED, "random", "demo") and not Path(w).expanduser().exists():
        raise UserError(f"weights file not found: {w} ({fix})")
    engine = load_model(m["name"], w, device, precision or m.get("precision", "auto"),
                        input_size=m.get("image_size"), full_frame=bool(m.get("full_frame")))
    if m.get("weights_sha256") and engine.weights_sha256 and engine.weights_sha256 != m["weights_sha256"]:
        logger.warning("the weights of %s differ from the recording's (sha256 %s, recorded %s)", m["name"],
                       engine.weights_sha256[:12], m["weights_sha256"][:12])
    return engine


class Player:
    """Playback position and speed over recorded timestamps (no GUI: unit-testable)."""

    def __init__(self, pts_ms: np.ndarray, playing: bool = True) -> None:
        self.pts_ms = pts_ms
        self.index = 0
        self.playing = playing
        self.speed = 1.0
        self._anchor_wall = time.monotonic()
        self._anchor_media = float(pts_ms[0]) if len(pts_ms) else 0.0

    def _reanchor(self) -> None:
        self._anchor_wall = time.monotonic()
        self._anchor_media = float(self.pts_ms[self.index])

    def press(self, key: str) -> bool:
        """Handle a playback key; True when it was one."""
        n = len(self.pts_ms)
        if key in ("p", "space"):
            self.playing = not self.playing
        elif key == ",":
            self.playing, self.index = False, max(0, self.index - 1)
        elif key == ".":
            self.playing, self.index = False, min(n - 1, self.index + 1)
        elif key == "home":
            self.index = 0
        elif key == "end":
            self.index = n - 1
        elif key in ("[", "]"):
            k = SPEEDS.index(self.speed) if self.speed in SPEEDS else 2
            self.speed = SPEEDS[max(0, k - 1)] if key == "[" else SPEEDS[min(len(SPEEDS) - 1, k + 1)]
        else:
            return False
        self._reanchor()
        return True

    def seek(self, index: int) -> None:
        self.index = int(min(max(0, index), len(self.pts_ms) - 1))
        self._reanchor()

    def tick(self) -> bool:
        """Advance with the wall clock while playing; True when the index changed."""
        if not self.playing:
            return False
        media = self._anchor_media + (time.monotonic() - self._anchor_wall) * 1000.0 * self.speed
        j = int(np.searchsorted(self.pts_ms, media, side="right")) - 1
        j = min(max(j, self.index), len(self.pts_ms) - 1)
        if j >= len(self.pts_ms) - 1 and self.index == len(self.pts_ms) - 1:
            self.playing = False  # stop at the end
            return False
        changed = j != self.index
        self.index = j
        return changed


def recorded_settings(session: Session) -> MapSettings:
    """What a recorder computes every frame with (every view's maps), from the manifest's config and first
    view: how the maps of a session without attention data are computed again."""
    v = session.view(0)
    return MapSettings(fusion=v.fusion, residual=session.config_value("view", "residual", 0.5),
                       discard_ratio=session.config_value("view", "discard_ratio", 0.0), entropy_layer=v.layer,
                       target=v.target, maps=None)


def compute_rows(engine: AttentionEngine, session: Session, indices: list[int], images: list[np.ndarray]) -> list[Result]:
    """Frames of a session without attention data: computed from their raw pictures (one forward pass),
    timed as recorded, as the recorder would have stored them."""
    t0 = session.manifest.get("t0_capture_ns")
    t0 = t0 if isinstance(t0, int) else 0
    frames = [Frame(image=img, seq=i, t_capture_ns=t0 + int(session.pts_ms[i]) * 1_000_000, source="replay",
                    pts_s=float(session.pts_ms[i]) / 1000.0) for i, img in zip(indices, images, strict=True)]
    return process_frames(engine, frames, recorded_settings(session))


def frame_result(session: Session, index: int, engine: AttentionEngine | None = None) -> Result:
    """Frame ``index`` as recorded, or computed with ``engine`` where the attention data is missing."""
    if session.has_maps:
        return session.result(index)
    check_replayable(session, engine is not None)
    frame = session.frame(index)
    if frame is None:
        raise UserError(f"raw frame {index + 1} of {session.path} cannot be decoded")
    return compute_rows(engine, session, [index], [frame])[0]  # type: ignore[arg-type]


def check_replayable(session: Session, with_model: bool) -> None:
    """Refuse, in one line with the fix, a session whose maps would need a model that is not loaded."""
    if not session.has_maps and not with_model:
        raise UserError(f"{session.path.name}: the attention data is missing (no chunk in attention/): "
                        f"the maps must be computed from {RAW} with the model (drop --no-model)")


def session_pairing(session: Session) -> Pairing | None:
    """The two models of a ``--compare`` recording (their depths, head counts, whether they name the same
    classes), or None."""
    pair = session.pair
    if pair is None or not session.pair_data:
        return None
    a, b = session.manifest["model"], pair["model"]
    names_a, names_b = a.get("category_names") or [], b.get("category_names") or []
    layers, heads = session.pair_sizes
    return Pairing((session.layers, layers), (session.heads, heads),
                   bool(names_a) and names_a == names_b)


class Recompute:
    """Recomputes what a recording lacks from its raw frame, with the manifest's model (main thread), and
    with the second model of a ``--compare`` recording (``load_pair`` loads it the first time a frame
    with a recorded second side is computed again) that side too, as the live session would."""

    def __init__(self, engine: AttentionEngine, residual: float = 0.5,
                 load_pair: Callable[[], AttentionEngine | None] | None = None) -> None:
        self.engine = engine
        self.residual = residual
        self._load_pair = load_pair
        self._paired: PairedModels | None = None
        self._cache: tuple[int, MapSettings, Result] | None = None

    def _pairing(self) -> PairedModels | None:
        if self._load_pair is not None:  # once: loaded, or said why not
            pair, self._load_pair = self._load_pair(), None
            self._paired = PairedModels(self.engine, pair) if pair is not None else None
        return self._paired

    def settings_for(self, view: View, rec: Result) -> MapSettings:
        """What ``view`` asks for on the recorded ``rec``: the recording's settings, the shown layer, and the
        recorded fusion unless the mode's map is computed with the view's."""
        asked = replace(view, layer=view.resolved_layer(rec.num_layers),
                        fusion=view.fusion if mode(view.mode).fusion_sets_map else rec.settings.fusion)
        return replace(map_settings(asked, rec.settings), residual=self.residual)

    def result(self, index: int, rec: Result, view: View) -> Result:
        """``rec`` computed again from its frame with the settings ``view`` needs (cached per frame)."""
        settings = self.settings_for(view, rec)
        if self._cache is not None and self._cache[:2] == (index, settings):
            return self._cache[2]
        frame = Frame(image=rec.frame, seq=rec.seq, t_capture_ns=rec.t_capture_ns, source="replay", pts_s=rec.pts_s)
        out = self.run([frame], settings, [rec])[0]
        self._cache = (index, settings, out)
        return out

    def run(self, frames: list[Frame], settings: MapSettings, recs: list[Result]) -> list[Result]:
        """``frames`` computed with ``settings``, timed as recorded (``recs``); the second model's side
        computed too on the frames that recorded one (none where none was recorded)."""
        done = process_frames(self.engine, frames, settings)
        paired = [i for i, r in enumerate(recs) if r.pair is not None]
        pairing = self._pairing() if paired else None
        if pairing is not None:
            for i, res in zip(paired, pairing.add([frames[i] for i in paired], settings, [done[i] for i in paired]),
                              strict=True):
                done[i] = res
        else:
            done = [replace(d, pair=r.pair) for d, r in zip(done, recs, strict=True)]
        return [replace(d, t_done_ns=r.t_done_ns, infer_ms=r.infer_ms) for d, r in zip(done, recs, strict=True)]

    def recorded(self, session: Session, index: int, frame: np.ndarray) -> Result:
        """Frame ``index`` of a session without attention data, computed as it would have been recorded."""
        return compute_rows(self.engine, session, [index], [frame])[0]


class ReplayFeed:
    """A recorded session as the frame loop's feed: a :class:`Player` picks the frame; results come from
    the recording, recomputed where the view needs more (when a model is loaded)."""

    can_record = False
    pairing: Pairing | None = None  # two models side by side: a --compare recording
    recording = False

    def __init__(self, session: Session, engine: AttentionEngine | None = None, paused: bool = False) -> None:
        check_replayable(session, engine is not None)
        self.session = session
        self.num_layers, self.num_heads = session.layers, session.heads
        self.pairing = session_pairing(session)
        self.player = Player(session.pts_ms, playing=not paused)
        residual = session.config_value("view", "residual", 0.5)
        self.recompute: Recompute | None = None
        if engine is not None:
            # The second model loads now, not at the first key that needs it: the window must not stall.
            pair = pair_engine_for_session(session, engine)
            self.recompute = Recompute(engine, residual, lambda: pair)
        self._status = session.status()
        self._index = -1
        self._result: Result | None = None
        self._note: tuple[str, float] | None = None

    # What the frame loop calls ------------------------------------------------------------------
    def latest(self) -> Result | None:
        i = self.player.index
        if i != self._index:
            frame = self.session.frame(i)
            if frame is None:
                self._say(f"raw frame {i + 1} missing")
                self.player.seek(max(0, i - 1))
                self.player.playing = False
                return self._result
            if self.session.has_maps:
                self._result = self.session.result(i, frame)
            else:
                assert self.recompute is not None  # check_replayable
                self._result = self.recompute.recorded(self.session, i, frame)
            self._index = i
        return self._result

    def wait(self, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    def key(self, key: str) -> bool:
        if key == "r":
            return True  # no recording while replaying
        return self.player.press(key)

    def seek(self, index: int) -> None:
        self.player.seek(index)

    def tick(self) -> bool:
        return self.player.tick()

    @property
    def playing(self) -> bool | None:
        return self.player.playing

    def position(self) -> tuple[int, int] | None:
        return self._index, len(self.session)

    def freeze(self, result: Result | None) -> None:
        if result is not None:
            self.player.playing = False

    def set_settings(self, **changes: Any) -> None:
        pass  # recomputation follows the view directly (see prepare)

    def prepare(self, result: Result, view: View) -> Result:
        if not needs_model(view, result):
            return result
        if not self.session.has_raw:
            self._say(f"this view needs the raw frames, and {RAW} is missing")
            return result
        if self.recompute is None:
            self._say("this view needs the model: replay without --no-model")
            return result
        return self.recompute.result(self._index, result, view)

    def media_time(self, result: Result) -> float:
        return float(result.pts_s or 0.0)

    def note_displayed(self, result: Result) -> None:
        pass

    @property
    def finished(self) -> bool:
        return False

    def status(self, message: str | None = None, flow_progress: float | None = None) -> Status:
        p = self.player
        n = len(self.session)
        i = max(0, self._index)
        pos = (f"{'PLAY' if p.playing else 'PAUSED'} {p.speed:g}x  frame {i + 1}/{n}"
               f"  {self.session.pts_ms[i] / 1000:.2f} s")
        if not self.session.has_raw:
            pos += f"  ({RAW} missing: recorded maps on grey)"
        elif not self.session.has_maps:
            pos += f"  (attention data missing: maps computed from {RAW})"
        note = self._note[0] if self._note is not None and time.monotonic() < self._note[1] else None
        return replace(self._status, message=message or note or pos, flow_progress=flow_progress)

    def _say(self, note: str) -> None:
        self._note = (note, time.monotonic() + 3.0)

    def state(self) -> dict[str, Any]:
        return {"frame_index": self._index, "playing": self.player.playing, "speed": self.player.speed}

    def toggle_record(self, view_fn: Callable[[], View]) -> str:
        return "no recording while replaying"

    def submit(self, result: Result, rgb: np.ndarray, view: View) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# Export: a session rendered again, offline
# --------------------------------------------------------------------------------------------------


def export_view(session: Session, index: int, overrides: dict[str, Any], hud: bool = True) -> View:
    """Frame ``index``'s recorded view with ``overrides`` (CLI flags), for an offline picture."""
    view = replace(session.view(index), frozen=False, animating=False, show_help=False, show_hud=hud, **overrides)
    return default_view(view, session.grid)


def session_results(session: Session, recompute: Recompute | None, overrides: dict[str, Any], hud: bool,
                    views: dict[int, View]) -> Callable[[list[batch.Item]], list[Result]]:
    """The results stage of an export: each frame's recorded maps, recomputed where its view needs more
    (one forward pass for the frames of a batch that need it); ``views`` collects each frame's view."""

    def fn(items: list[batch.Item]) -> list[Result]:
        out: list[Result] = []
        todo: dict[MapSettings, list[int]] = {}
        if session.has_maps:
            rows = [session.result(item.index, item.image) for item in items]
        else:  # no attention data: every frame computed as recorded first (export_video checked the model)
            assert recompute is not None
            rows = compute_rows(recompute.engine, session, [it.index for it in items], [it.image for it in items])
        for k, (item, rec) in enumerate(zip(items, rows, strict=True)):
            view = export_view(session, item.index, overrides, hud)
            views[rec.seq] = view
            out.append(rec)
            if recompute is not None and needs_model(view, rec):
                todo.setdefault(recompute.settings_for(view, rec), []).append(k)
        for settings, ks in todo.items():
            assert recompute is not None  # todo is only filled when there is one
            frames = [Frame(image=out[k].frame, seq=out[k].seq, t_capture_ns=out[k].t_capture_ns, source="export",
                            pts_s=out[k].pts_s) for k in ks]
            for k, res in zip(ks, recompute.run(frames, settings, [out[k] for k in ks]), strict=True):
                out[k] = res
        return out

    return fn


def export_needs_model(session: Session, overrides: dict[str, Any]) -> bool:
    """Whether any frame's view (recorded, with ``overrides``) needs maps the recording lacks (always, without
    attention data). Without raw.mkv such a view cannot be drawn: one line saying which and the fix."""
    if not session.has_maps:
        return True
    blank = np.zeros((2, 2, 3), np.uint8)  # the maps are all that is looked at
    for i in range(len(session)):
        view = export_view(session, i, overrides)
        if needs_model(view, session.result(i, blank)):
            if not session.has_raw:
                raise UserError(f"frame {i + 1} is shown in {view.mode} mode, which needs the raw frames, and {RAW} "
                                "is missing: export a recorded view (e.g. --mode attention)")
            return True
    return False


def raw_items(session: Session) -> Iterator[batch.Item]:
    """The recorded raw frames in order (stops, with a warning, where the raw file ends early); the grey
    canvas for each frame where raw.mkv is missing."""
    for i in range(len(session)):
        frame = session.frame(i)
        if frame is None:
            logger.warning("raw frames end at %d of %d", i, len(session))
            return
        yield batch.Item(i, frame, float(session.pts_ms[i]) / 1000.0)


def export_video(session: Session, out: str | os.PathLike[str], overrides: dict[str, Any] | None = None,
                 engine: AttentionEngine | None = None, hud: bool = True, overwrite: bool = False,
                 progress: Callable[[int], None] | None = None, batch_size: int | None = None,
                 workers: int | None = None, maps: MapsSink | None = None) -> Path:
    """Render every recorded frame again (recorded view + ``overrides``) at the recorded timestamps;
    ``maps`` gets each frame's shown map (``--save-maps``, see :func:`~live_attention.offline.batch.run`).

    Written to ``NAME.partial.EXT`` and renamed at the end (interrupted: the partial file is kept).
    """
    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another name or pass --overwrite")
    overrides = dict(overrides or {})
    check_replayable(session, engine is not None)
    residual = session.config_value("view", "residual", 0.5)
    recompute = (Recompute(engine, residual, lambda: pair_engine_for_session(session, engine))
                 if engine is not None and session.has_raw else None)
    views: dict[int, View] = {}
    first = session.frame(0)
    if first is None:
        raise UserError(f"the raw frames of {session.path} cannot be decoded")
    size = canvas_for(first.shape, session.pair is not None and bool(session.pair_data))
    crf = session.config_value("record", "crf", RecordConfig.crf)
    preset = session.config_value("record", "preset", RecordConfig.preset)
    with PartialOutput(out, overwrite) as part, H264Writer(part.path, size[0], size[1], fps=30.0, crf=crf,
                                                            preset=preset, overwrite=True) as writer:
        batch.run(raw_items(session), session_results(session, recompute, overrides, hud, views),
                  lambda res: views[res.seq], session.status(), writer.write,
                  batch=batch_size or (batch.default_batch(engine) if engine is not None else 8), workers=workers,
                  entropy_seconds=session.config_value("view", "entropy_seconds", 10.0), residual=residual,
                  size=size, progress=progress, maps=maps)
    return out


def layers_frames(session: Session, index: int, view: View, engine: AttentionEngine | None = None) -> list[np.ndarray]:
    """One rendered RGB picture per layer of frame ``index`` (the view's mode, head and fusion)."""
    rec = frame_result(session, index, engine)
    if not session.has_raw and needs_model(view, rec):
        raise UserError(f"--mode {view.mode} needs the raw frames, and {RAW} is missing: choose a recorded view "
                        "(e.g. --mode attention)")
    if engine is not None and needs_model(view, rec):
        rec = Recompute(engine, session.config_value("view", "residual", 0.5),
                        lambda: pair_engine_for_session(session, engine)).result(index, rec, view)
    status = session.status()
    return [render(rec.frame, rec, replace(view, layer=li, frozen=False, show_help=False), status,
                   size=canvas_for(rec.frame.shape, rec.pair is not None)) for li in range(rec.num_layers)]


def grid_picture(session: Session, index: int, colormap: str = "inferno",
                 engine: AttentionEngine | None = None) -> np.ndarray:
    """The layers × heads grid of CLS attention of frame ``index`` (UNTRAINED said in the title); of a
    ``--compare`` session, both models' grids side by side, each titled with its model."""
    rec, status = frame_result(session, index, engine), session.status()
    pair = status.pair if rec.pair is not None else None

    def title(st: Status) -> str:
        named = f" - {st.model}" if pair is not None else ""
        untrained = " - UNTRAINED MODEL (random weights): these maps mean nothing" if st.untrained else ""
        return f"CLS attention of frame {index + 1}{named}: rows = layers, columns = heads{untrained}"

    grids = [heads_grid(rec, title(status), colormap)]
    if pair is not None and rec.pair is not None:
        grids.append(heads_grid(rec.pair, title(pair), colormap))
    h = max(g.shape[0] for g in grids)
    gap = np.full((h, 8, 3), 60, np.uint8)  # a grey line between the two models
    padded = [np.pad(g, ((0, h - g.shape[0]), (0, 0), (0, 0)), constant_values=18) for g in grids]
    return padded[0] if len(padded) == 1 else np.hstack([padded[0], gap, padded[1]])
