"""``live-attention replay SESSION`` and ``live-attention export SESSION``: a recorded session, again.

Threads: everything here runs on the caller's (main) thread. :class:`Session` reads the manifest and
the complete attention chunks; :class:`RawReader` decodes raw frames on demand (sequentially, seeking
for jumps). The replay window reuses :class:`~live_attention.gui.Window`,
:class:`~live_attention.app.Controller` and :func:`~live_attention.render.render`; a :class:`FlowJob`
may run on its own thread as in the live window.

Maps come from the recorded data. Only what was not recorded (query rows, flow, rollout with another
fusion) is recomputed from the raw frame with the model named in the manifest (lossless FFV1 frames
give the same maps as live).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import fields, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from live_attention.config import RecordConfig
from live_attention.errors import UserError
from live_attention.record import ATTN_DIR, MANIFEST, RAW
from live_attention.render import Status, View, canvas_size, render
from live_attention.worker import MapSettings, Result

logger = logging.getLogger(__name__)

GIF_TIME_BASE = Fraction(1, 100)
SPEEDS = (0.25, 0.5, 1.0, 2.0, 4.0)
_VIEW_FIELDS = {f.name for f in fields(View)}
_RESULT_FIELDS = {f.name for f in fields(Result)}


# --------------------------------------------------------------------------------------------------
# Reading a session
# --------------------------------------------------------------------------------------------------


class RawReader:
    """Decodes the raw frames of ``raw.mkv`` by frame index (pts known from the attention data)."""

    def __init__(self, path: str | os.PathLike[str], pts_ms: np.ndarray) -> None:
        self.path = Path(path)
        self.pts_ms = pts_ms
        self._pos = {int(p): i for i, p in enumerate(pts_ms)}
        self._container = None
        self._iter = None
        self._next = -1  # index the iterator yields next
        self._cache: dict[int, np.ndarray] = {}
        self._open()

    def _open(self) -> None:
        import av

        if self._container is not None:
            self._container.close()
        try:
            self._container = av.open(str(self.path))
        except (OSError, av.error.FFmpegError) as exc:
            raise UserError(f"cannot read the raw frames {self.path}: {exc}") from exc
        self._stream = self._container.streams.video[0]
        self._iter = self._container.decode(self._stream)
        self._next = 0

    def _decode_next(self) -> tuple[int, np.ndarray] | None:
        try:
            frame = next(self._iter)
        except (StopIteration, EOFError):
            return None
        except Exception:  # a torn last cluster after a crash
            logger.debug("raw decode stopped", exc_info=True)
            return None
        pts = int(round(float(frame.pts * frame.time_base) * 1000)) if frame.pts is not None else -1
        return self._pos.get(pts, -1), frame.to_ndarray(format="bgr24")

    def get(self, index: int) -> np.ndarray | None:
        """The BGR frame ``index``, or None when the file ends before it."""
        if index in self._cache:
            return self._cache[index]
        if index < self._next - 1 or index > self._next + 60:
            self._seek(index)
        while True:
            got = self._decode_next()
            if got is None:
                return None
            i, img = got
            self._next = i + 1 if i >= 0 else self._next + 1
            if len(self._cache) > 8:
                self._cache.pop(next(iter(self._cache)))
            self._cache[i] = img
            if i == index:
                return img
            if i > index:  # the seek went too far: start again from the beginning
                self._open()

    def _seek(self, index: int) -> None:
        target = int(self.pts_ms[index])
        try:
            # Every FFV1/MJPEG frame is a keyframe: seeking lands on (or just before) the target.
            offset = int(Fraction(target, 1000) / self._stream.time_base)
            self._container.seek(offset, stream=self._stream, backward=True, any_frame=True)
            self._iter = self._container.decode(self._stream)
            self._next = -1
        except Exception:
            logger.debug("seek failed, decoding from the start", exc_info=True)
            self._open()

    def count(self) -> int:
        """Number of decodable frames (a full pass; for checks and tests)."""
        import av

        n = 0
        try:
            with av.open(str(self.path)) as c:
                for _ in c.decode(video=0):
                    n += 1
        except Exception:
            logger.debug("raw count stopped", exc_info=True)
        return n

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


class Session:
    """A recorded session: manifest, per-frame arrays (all complete chunks), raw frames on demand.

    Args:
        path: the session folder (``session-*`` with ``manifest.json``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise UserError(f"{self.path} is not a recorded session (no {MANIFEST})")
        try:
            self.manifest: dict[str, Any] = json.loads(mpath.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"cannot read {mpath}: {exc}") from exc
        chunks = sorted((self.path / ATTN_DIR).glob("chunk-*.npz"))
        parts: dict[str, list[np.ndarray]] = {}
        for c in chunks:
            try:
                with np.load(c, allow_pickle=False) as z:
                    for k in z.files:
                        parts.setdefault(k, []).append(z[k])
            except Exception as exc:  # complete chunks only are renamed in place; be safe anyway
                logger.warning("skipping unreadable chunk %s: %s", c, exc)
        if not parts:
            raise UserError(f"{self.path} holds no recorded frames")
        self.data = {k: np.concatenate(v) for k, v in parts.items()}
        self.grid = tuple(self.manifest["grid"])
        self._raw: RawReader | None = None
        self._views: dict[int, View] = {}

    def __len__(self) -> int:
        return int(self.data["seq"].shape[0])

    @property
    def pts_ms(self) -> np.ndarray:
        return self.data["pts_ms"]

    @property
    def raw(self) -> RawReader:
        if self._raw is None:
            self._raw = RawReader(self.path / RAW, self.pts_ms)
        return self._raw

    def view(self, i: int) -> View:
        """The view state that was shown with frame ``i``."""
        if i not in self._views:
            d = json.loads(str(self.data["view"][i]))
            self._views[i] = View(**{k: v for k, v in d.items() if k in _VIEW_FIELDS})
        return self._views[i]

    def settings(self, i: int) -> MapSettings:
        d = json.loads(str(self.data["settings"][i])) if "settings" in self.data else {}
        return MapSettings(**{k: v for k, v in d.items() if k in {f.name for f in fields(MapSettings)}})

    def result(self, i: int, frame: np.ndarray | None = None, engine: Any = None) -> Result:
        """A :class:`Result` from the recorded arrays of frame ``i`` (fp16 maps as fp32) and its raw frame."""
        d = self.data
        if frame is None:
            frame = self.raw.get(i)
            if frame is None:
                raise UserError(f"raw frame {i} of {self.path} cannot be decoded")
        box = tuple(int(v) for v in d["box"][i])
        if engine is not None:
            model_rgb = engine.preprocess_with_view(frame)[1].rgb
        else:
            x0, y0, x1, y1 = box
            size = int(self.manifest["model"]["image_size"])
            crop = frame[y0:y1, x0:x1] if y1 > y0 and x1 > x0 else frame
            model_rgb = cv2.cvtColor(cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        topk = [(str(n), float(p)) for n, p in zip(d["top_names"][i], d["top_p"][i], strict=True) if n]
        extra: dict[str, Any] = {}
        if "patch_entropy_layer" in _RESULT_FIELDS:  # one layer's patch entropy per frame
            extra["patch_entropy_layer"] = int(d["patch_entropy_layer"][i]) if "patch_entropy_layer" in d else -1
        return Result(
            **extra,
            seq=int(d["seq"][i]),
            t_capture_ns=int(d["t_capture_ns"][i]),
            t_done_ns=int(d["t_done_ns"][i]) if "t_done_ns" in d else int(d["t_capture_ns"][i]),
            frame=frame,
            box=box,  # type: ignore[arg-type]
            model_rgb=model_rgb,
            grid=self.grid,  # type: ignore[arg-type]
            cls=d["cls"][i].astype(np.float32),
            rollout=d["rollout"][i].astype(np.float32),
            entropy=d["entropy"][i].astype(np.float32),
            patch_entropy=d["patch_entropy"][i].astype(np.float32),
            query=None,
            query_patch=None,
            topk=topk,
            infer_ms=float(d["infer_ms"][i]) if "infer_ms" in d else 0.0,
            settings=self.settings(i),
        )

    def status(self) -> Status:
        """The HUD's fixed part for this session: model, weights, UNTRAINED flag, source."""
        m = self.manifest["model"]
        return Status(model=f"{m['name']} [{m['weights_label']}] replay", untrained=bool(m.get("untrained")),
                      source=self.path.name)

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None


def open_session(path: str | os.PathLike[str]) -> Session:
    return Session(path)


def load_engine_for(session: Session, weights: str | None = None, device: str = "auto",
                    precision: str | None = None):
    """The manifest's model with the manifest's weights (or ``weights``); a mismatch is logged."""
    from live_attention.engine import load_model

    m = session.manifest["model"]
    w = weights or m.get("weights") or "imagenet"
    if w not in ("imagenet", "default", "random", "demo") and not Path(w).expanduser().exists():
        raise UserError(f"weights file not found: {w} (pass --weights PATH, imagenet or random)")
    engine = load_model(m["name"], w, device, precision or m.get("precision", "auto"))
    if m.get("weights_sha256") and engine.weights_sha256 and engine.weights_sha256 != m["weights_sha256"]:
        logger.warning("the weights differ from the recording's (sha256 %s, recorded %s)",
                       engine.weights_sha256[:12], m["weights_sha256"][:12])
    return engine


class Recompute:
    """Recomputes what was not recorded (query rows, flow, rollout with another fusion) from a raw frame."""

    def __init__(self, session: Session, engine: Any, residual: float = 0.5) -> None:
        from live_attention.capture import LatestSlot
        from live_attention.worker import InferenceWorker

        self.session = session
        self.engine = engine
        self.residual = residual
        self.worker = InferenceWorker(engine, LatestSlot(), LatestSlot(), keep_attn=True) if engine else None
        self._cache: tuple[int, str, Result] | None = None

    @staticmethod
    def needed(view: View, rec: Result) -> bool:
        if view.mode == "entropy":  # patch entropy was recorded for one layer only
            layer = view.resolved_layer(rec.num_layers)
            return layer != getattr(rec, "patch_entropy_layer", layer) % rec.num_layers
        return view.mode in ("query", "flow") or (view.mode == "rollout" and view.fusion != rec.settings.fusion)

    def result(self, i: int, rec: Result, view: View) -> Result:
        """``rec`` with the full attention (and rollout in ``view.fusion``) when the view needs them."""
        if not self.needed(view, rec) or self.worker is None:
            return rec
        fusion = view.fusion if view.mode == "rollout" else rec.settings.fusion
        if self._cache is not None and self._cache[:2] == (i, fusion):
            return self._cache[2]
        from live_attention.capture import Frame

        self.worker.update_settings(fusion=fusion, residual=rec.settings.residual,
                                    discard_ratio=rec.settings.discard_ratio)
        live = self.worker.process(Frame(image=rec.frame, seq=rec.seq, t_capture_ns=rec.t_capture_ns,
                                         source="replay", pts_s=None))
        out = replace(rec, attn=live.attn, model_rgb=live.model_rgb)
        if view.mode == "rollout":
            out = replace(out, rollout=live.rollout, settings=live.settings)
        self._cache = (i, fusion, out)
        return out

    def flow(self, res: Result) -> np.ndarray | None:
        return res.flow(self.residual) if res.attn is not None else None


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _check_view(session: Session, o: dict[str, Any]) -> None:
    L, H = session.manifest["layers"], session.manifest["heads"]
    if o.get("layer", -1) >= L:
        raise UserError(f"--layer {o['layer'] + 1}: this session has layers 1..{L}")
    if o.get("head", -1) >= H:
        raise UserError(f"--head {o['head'] + 1}: this session has heads 1..{H}")


def export_video(session: Session, out: str | os.PathLike[str], overrides: dict[str, Any] | None = None,
                 engine: Any = None, hud: bool = True, overwrite: bool = False, progress: Any = None) -> Path:
    """Render every recorded frame again (recorded view + ``overrides``) at the recorded timestamps."""
    from live_attention.app import EntropyHistory
    from live_attention.video import H264Writer

    out = Path(out).expanduser()
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists: choose another name or pass --overwrite")
    overrides = dict(overrides or {})
    cfg_rec = session.manifest.get("config", {}).get("record", {})
    recompute = Recompute(session, engine, session.manifest.get("config", {}).get("view", {}).get("residual", 0.5))
    history = EntropyHistory(session.manifest.get("config", {}).get("view", {}).get("entropy_seconds", 10.0))
    status = session.status()
    n = len(session)
    writer = None
    try:
        for i in range(n):
            frame = session.raw.get(i)
            if frame is None:
                logger.warning("raw frames end at %d of %d", i, n)
                break
            rec = session.result(i, frame)
            view = replace(session.view(i), frozen=False, animating=False, show_help=False, show_hud=hud,
                           **overrides)
            if view.mode == "query" and view.query_patch is None:
                gh, gw = session.grid
                view = replace(view, query_patch=(gh // 2) * gw + gw // 2)
            res = recompute.result(i, rec, view)
            t = float(session.pts_ms[i]) / 1000.0
            history.add(t, res)
            extras = history.extras(recompute.flow(res) if view.mode == "flow" else None, res.seq)
            rgb = render(frame, res, view, status, extras, size=canvas_size(frame.shape))
            if writer is None:
                writer = H264Writer(out, rgb.shape[1], rgb.shape[0], fps=30.0, crf=int(cfg_rec.get("crf", RecordConfig.crf)),
                                    preset=str(cfg_rec.get("preset", RecordConfig.preset)), overwrite=overwrite)
            writer.write(rgb, t)
            if progress is not None:
                progress.update(i + 1)
    finally:
        if writer is not None:
            writer.close()
        if progress is not None:
            progress.close()
    return out


def _label(img: np.ndarray, text: str, org: tuple[int, int], scale: float = 0.5) -> None:
    cv2.putText(img, text, (org[0] + 1, org[1] + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def heads_grid(session: Session, index: int, colormap: str = "inferno", opacity: float = 0.6,
               tile: int = 96) -> np.ndarray:
    """RGB image of every head's CLS attention for one frame: rows = layers, columns = heads, labelled."""
    from live_attention.render import heat_rgb, normalize

    res = session.result(index)
    L, H = res.num_layers, res.num_heads
    left, top, gap = 70, 60, 4
    title = f"CLS attention of frame {index + 1}: rows = layers, columns = heads"
    if session.status().untrained:
        title += " - UNTRAINED MODEL (random weights): these maps mean nothing"
    title_w = cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0]
    w = max(left + H * (tile + gap) + gap, title_w + 20)
    h = top + L * (tile + gap) + gap
    img = np.full((h, w, 3), 18, np.uint8)
    base = cv2.resize(res.model_rgb, (tile, tile), interpolation=cv2.INTER_AREA)
    for li in range(L):
        y = top + li * (tile + gap)
        _label(img, f"L{li + 1}", (10, y + tile // 2 + 6), 0.6)
        for hd in range(H):
            x = left + hd * (tile + gap)
            heat = heat_rgb(normalize(res.cls[li, hd]), res.grid, (tile, tile), colormap)
            img[y : y + tile, x : x + tile] = cv2.addWeighted(base, 1 - opacity, heat, opacity, 0.0)
    for hd in range(H):
        _label(img, f"H{hd + 1}", (left + hd * (tile + gap) + tile // 2 - 12, top - 10), 0.55)
    _label(img, title, (10, 24), 0.6)
    return img


def layers_frames(session: Session, index: int, view: View) -> list[np.ndarray]:
    """One rendered RGB image per layer of frame ``index`` (the view's mode, head and fusion)."""
    res = session.result(index)
    frame = res.frame
    return [render(frame, res, replace(view, layer=li, frozen=False, show_help=False), session.status(),
                   size=canvas_size(frame.shape)) for li in range(res.num_layers)]


def write_gif(frames: list[np.ndarray], out: str | os.PathLike[str], seconds_per_frame: float = 0.6,
              max_width: int = 640) -> Path:
    """An animated GIF through PyAV's ``gif`` encoder (8-bit palette)."""
    import av

    out = Path(out)
    h0, w0 = frames[0].shape[:2]
    s = min(1.0, max_width / w0)
    w, h = int(w0 * s) // 2 * 2, int(h0 * s) // 2 * 2
    with av.open(str(out), "w") as c:
        st = c.add_stream("gif", rate=max(1, round(1 / seconds_per_frame)))
        st.width, st.height, st.pix_fmt = w, h, "rgb8"
        st.time_base = GIF_TIME_BASE
        st.codec_context.time_base = GIF_TIME_BASE
        for i, f in enumerate(frames):
            img = cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA)
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="rgb8")
            vf.pts = int(round(i * seconds_per_frame * 100))
            vf.time_base = GIF_TIME_BASE
            for p in st.encode(vf):
                c.mux(p)
        for p in st.encode(None):
            c.mux(p)
    return out


# --------------------------------------------------------------------------------------------------
# Replay window
# --------------------------------------------------------------------------------------------------


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


def run_replay(session: Session, engine: Any = None, *, state_file: str | None = None,
               max_seconds: float | None = None, paused: bool = False, width: int = 1280,
               height: int = 800) -> int:
    """The replay window (main thread). Same keys as live, plus P , . Home End [ ]."""
    from live_attention.app import Controller, EntropyHistory, FlowJob, patch_at
    from live_attention.gui import TITLE, StateWriter, Window, describe_change, save_screenshot

    m = session.manifest
    win = Window(f"{TITLE} replay", width, height, vsync=True)
    win.add_timeline(len(session))
    ctl = Controller(m["layers"], m["heads"], replace(session.view(0), frozen=False, animating=False))
    player = Player(session.pts_ms, playing=not paused)
    recompute = Recompute(session, engine, m.get("config", {}).get("view", {}).get("residual", 0.5))
    history = EntropyHistory(m.get("config", {}).get("view", {}).get("entropy_seconds", 10.0))
    states = StateWriter(state_file)
    flow_job: FlowJob | None = None
    message, message_until = None, 0.0
    status0 = session.status()
    shown_index = -1
    res: Result | None = None
    rgb = None
    deadline = time.monotonic() + max_seconds if max_seconds else None
    dirty = True
    try:
        while win.running:
            win.poll()
            now = time.monotonic()
            for key in win.keys:
                dirty = True
                if player.press(key):
                    ctl.view = replace(ctl.view, frozen=not player.playing)
                    continue
                if key == "r":
                    continue  # no recording while replaying
                before = ctl.view
                out = ctl.press(key)
                if out.quit:
                    return 0
                feedback = describe_change(before, ctl.view)
                if feedback:
                    message, message_until = feedback, now + 2
                if out.flow:
                    player.playing = False
                if out.screenshot and rgb is not None:
                    try:
                        message = f"screenshot saved to {save_screenshot(rgb, 'screenshots')}"
                    except OSError as exc:
                        message = f"screenshot failed: {exc}"
                    message_until = now + 4
            win.keys.clear()
            for fx, fy in win.clicks:
                if res is not None:
                    h, w = res.frame.shape[:2]
                    patch = patch_at(res, fx * w, fy * h)
                    if patch is not None:
                        ctl.select_patch(patch)
                        dirty = True
            win.clicks.clear()
            for index in win.seeks:
                player.seek(index)
                dirty = True
            win.seeks.clear()
            if player.tick():
                dirty = True
            if player.index != shown_index:
                frame = session.raw.get(player.index)
                if frame is None:
                    message, message_until = f"raw frame {player.index} missing", now + 4
                    player.seek(max(0, player.index - 1))
                    player.playing = False
                else:
                    res = session.result(player.index, frame)
                    history.add(float(session.pts_ms[player.index]) / 1000.0, res)
                    shown_index = player.index
                    if flow_job is not None:
                        flow_job.cancel.set()
                        flow_job = None
                dirty = True
            if res is None:
                win.frame()
                continue
            view = ctl.view
            shown = res
            if engine is None and Recompute.needed(view, res):
                if view.mode != "rollout":
                    message, message_until = "needs the model: not loaded", now + 2
            elif Recompute.needed(view, res):
                shown = recompute.result(shown_index, res, view)
            if view.mode == "flow" and shown.attn is not None and (flow_job is None or flow_job.result is not shown):
                flow_job = FlowJob(shown, recompute.residual, "mean")
                flow_job.start()
            flow_progress = None
            if flow_job is not None and flow_job.flow is None and flow_job.error is None:
                flow_progress = flow_job.progress
                dirty = True
            if message and now > message_until:
                message, dirty = None, True
            if dirty:
                speed = f"{player.speed:g}x" if player.speed != 1 else "1x"
                pos = (f"{'PLAY' if player.playing else 'PAUSED'} {speed}  frame {shown_index + 1}/{len(session)}"
                       f"  {session.pts_ms[shown_index] / 1000:.2f} s")
                status = replace(status0, message=message or pos, flow_progress=flow_progress)
                flow = flow_job.flow if flow_job is not None else None
                extras = history.extras(flow, shown.seq)
                rgb = render(shown.frame, shown, replace(view, frozen=False), status, extras,
                             size=canvas_size(shown.frame.shape))
                win.show(rgb)
                win.set_timeline(shown_index)
                states.write(view, status, {"frame_index": shown_index, "seq": shown.seq,
                                            "playing": player.playing, "speed": player.speed})
                dirty = False
            win.frame()
            if deadline is not None and time.monotonic() > deadline:
                return 0
        return 0
    finally:
        if flow_job is not None:
            flow_job.cancel.set()
        win.close()


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def build_replay_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="live-attention replay",
                                description="Replay a recorded session in the window. Keys as live, plus "
                                "P/Space play-pause, , and . step, Home/End, [ and ] speed.")
    p.add_argument("session", help="a session folder (session-YYYYmmdd-HHMMSS)")
    p.add_argument("--weights", help="weights for recomputing query rows and flow (default: the manifest's)")
    p.add_argument("--device", default="auto", help="for recomputed maps: auto, cpu, cuda, mps")
    p.add_argument("--no-model", action="store_true", help="do not load the model (recorded maps only)")
    p.add_argument("--paused", action="store_true", help="start paused on the first frame")
    p.add_argument("--max-seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--state-file", help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    return p


def build_export_parser() -> argparse.ArgumentParser:
    from live_attention.cli import _view_args

    p = argparse.ArgumentParser(prog="live-attention export",
                                description="Render a recorded session again, or one frame's heads grid / layers GIF.")
    p.add_argument("session", help="a session folder")
    p.add_argument("-o", "--output", required=True, help=".mp4 (video), .png (--grid), .gif (--layers-gif)")
    p.add_argument("--frame", type=int, default=1, help="frame number for --grid and --layers-gif (from 1, as the replay HUD counts)")
    p.add_argument("--grid", action="store_true", help="write the layers x heads attention grid of --frame")
    p.add_argument("--layers-gif", action="store_true", help="write --frame's attention through the layers")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-hud", action="store_true", help="leave out the HUD text")
    p.add_argument("--weights", help="weights for recomputing query rows and flow (default: the manifest's)")
    p.add_argument("--device", default="auto", help="for recomputed maps: auto, cpu, cuda, mps")
    p.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")
    _view_args(p)
    return p


def main(cmd: str, argv: list[str]) -> int:
    from live_attention.cli import Progress, _setup_logging

    if cmd == "replay":
        args = build_replay_parser().parse_args(argv)
        _setup_logging(args.verbose)
        session = Session(args.session)
        engine = None if args.no_model else load_engine_for(session, args.weights, args.device)
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") and sys.platform.startswith("linux"):
            raise UserError("no display found (DISPLAY is not set): use `live-attention export` instead")
        try:
            return run_replay(session, engine, state_file=args.state_file, max_seconds=args.max_seconds,
                              paused=args.paused)
        finally:
            session.close()
    args = build_export_parser().parse_args(argv)
    _setup_logging(args.verbose)
    session = Session(args.session)
    try:
        from live_attention.cli import view_overrides

        overrides = view_overrides(args)
        _check_view(session, overrides)
        out = Path(args.output).expanduser()
        if out.exists() and not args.overwrite:
            raise UserError(f"{out} already exists: choose another name or pass --overwrite")
        if not out.parent.exists():
            raise UserError(f"output folder {out.parent} does not exist: create it first")
        if args.grid and args.layers_gif:
            raise UserError("--grid and --layers-gif write different files: pick one")
        if args.grid or args.layers_gif:
            if not 1 <= args.frame <= len(session):
                raise UserError(f"--frame {args.frame}: this session has frames 1..{len(session)}")
            index = args.frame - 1
            suffix = out.suffix.lower()
            allowed = (".png", ".jpg", ".jpeg") if args.grid else (".gif", ".mp4", ".mkv")
            if suffix not in allowed:
                what = "--grid writes an image" if args.grid else "--layers-gif writes an animation"
                raise UserError(f"output {out.name}: {what}, use {' or '.join(allowed)}")
            if args.grid:
                img = heads_grid(session, index, overrides.get("colormap", "inferno"))
                if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                    raise UserError(f"cannot write {out}: use .png or .jpg in a writable folder")
            else:
                view = replace(session.view(index), **{"mode": "attention", **overrides})
                frames = layers_frames(session, index, view)
                if out.suffix.lower() == ".gif":
                    write_gif(frames, out)
                else:
                    from live_attention.video import H264Writer

                    with H264Writer(out, frames[0].shape[1], frames[0].shape[0], fps=2, overwrite=args.overwrite) as w:
                        for i, f in enumerate(frames):
                            w.write(f, i * 0.5)
        else:
            if out.suffix.lower() not in (".mp4", ".mkv", ".mov"):
                raise UserError(f"output {out.name}: use .mp4 (or .mkv), or --grid for a .png")
            engine = None
            mode = overrides.get("mode")
            remodel = ("query", "flow", "entropy")  # what may need maps that were not recorded
            needs = mode in remodel or (mode is None and any(
                session.view(i).mode in remodel for i in range(len(session)))) or "fusion" in overrides
            if needs:
                engine = load_engine_for(session, args.weights, args.device)
            export_video(session, out, overrides, engine=engine, hud=not args.no_hud, overwrite=args.overwrite,
                         progress=Progress(len(session), f"export {session.path.name}"))
        print(f"live-attention: wrote {out}", file=sys.stderr)
        return 0
    finally:
        session.close()


__all__ = ["Session", "RawReader", "Player", "Recompute", "open_session", "export_video", "heads_grid",
           "layers_frames", "write_gif", "run_replay", "load_engine_for", "main"]
