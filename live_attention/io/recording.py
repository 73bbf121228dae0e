"""The recording format: one module writes a session's per-frame rows and manifest, and reads them back.

A session folder (never reused, never overwritten)::

    session-YYYYmmdd-HHMMSS/
      manifest.json          model, weights (label, sha256), precision, device, config, versions, sizes
      overlay.mp4            what was shown: H.264, fragmented MP4, pts = capture time (ms, VFR)
      raw.mkv                the camera frames: FFV1 (lossless, bgr0) or MJPEG q2 in Matroska, same pts
      attention/chunk-NNNNNN.npz   per-frame maps, fp16, one file per <= 0.4 s, written tmp + rename

While it records, the recorder holds an exclusive ``flock`` on the session folder itself (released by
the kernel when the process dies, so a killed recorder leaves no lock behind): :func:`session_is_live`
tells a session being recorded from one whose recorder was killed (both have ``"end": null``).

:func:`frame_row` turns a :class:`~live_attention.datatypes.Result` into a row of arrays and
:meth:`Session.result` turns a row back into a Result (the round trip is tested). The writers of the
video files and the recorder thread are in :mod:`live_attention.io.recorder`; the session folder (file
names, creation, the lock) in :mod:`live_attention.io.session_dir`; the raw frames' reader in
:mod:`live_attention.io.raw_frames`.

Reading is defensive: a chunk that is damaged (bad CRC, wrong shapes) is skipped with one warning
naming it and every other frame still plays; a manifest with a wrong type is one line naming the key;
a ``.tmp`` file left by a crash is ignored. A session missing a part still opens with what the files
allow (:attr:`Session.has_maps`, :attr:`Session.has_raw`, :meth:`Session.notes`): without attention
chunks the timeline comes from ``raw.mkv`` (the maps are then computed again by the caller); without
``raw.mkv`` the recorded maps are drawn on a neutral grey canvas of the recorded frame size.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import suppress
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from live_attention.datatypes import MapSettings, Result, Status, View
from live_attention.errors import UserError
from live_attention.io.raw_frames import RawReader, raw_pts_ms
from live_attention.io.session_dir import (
    ATTN_COMPARE_DIR,
    ATTN_DIR,
    MANIFEST,
    MAPS_KEY,
    OVERLAY,
    RAW,
    RESERVE,
    session_is_live,
)

logger = logging.getLogger(__name__)

CANVAS_GREY = 96  # the neutral background of recorded maps when raw.mkv is missing
FORMAT_VERSION = 2
CHUNK_FRAMES = 15  # a chunk is flushed after this many frames ...
CHUNK_SECONDS = 0.4  # ... or this long after its first frame: with the recorder's queue, <= 1 s lost
TOPK = 5
_VIEW_FIELDS = {f.name for f in fields(View)}
_SETTINGS_FIELDS = {f.name for f in fields(MapSettings)}
# Per-frame arrays every chunk has (format 1 on); the rest are optional (newer formats, some models).
REQUIRED = ("seq", "t_capture_ns", "pts_ms", "box", "cls", "entropy", "patch_entropy", "top_p", "top_names", "view")


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def frame_row(result: Result, view: View, pts_ms: int, t0_ns: int) -> dict[str, np.ndarray]:
    """One frame's record: maps in fp16, top-5, timestamps, seq, box, view and map settings (JSON).

    Maps a frame may lack are stored anyway (zeros) with a flag, so every row of a session has the
    same arrays: ``has_rollout`` (rollout may not fit at large sizes), ``has_patch_entropy``,
    ``has_token_norm``, ``has_relevance``.
    """
    top_p = np.zeros(TOPK, np.float32)
    top_names = [""] * TOPK
    top_ids = np.full(TOPK, -1, np.int32)  # the class indices (T and clicks on a label need them)
    for i, (name, p) in enumerate(result.topk[:TOPK]):
        top_p[i], top_names[i] = p, name
    for i, cls in enumerate(result.top_ids[:TOPK]):
        top_ids[i] = cls
    L, H, P = result.cls.shape
    return {
        "seq": np.int64(result.seq),
        "t_capture_ns": np.int64(result.t_capture_ns),
        "t_done_ns": np.int64(result.t_done_ns),
        "pts_ms": np.int64(pts_ms),
        "t_rel_ms": np.float64((result.t_capture_ns - t0_ns) / 1e6),
        "infer_ms": np.float32(result.infer_ms),
        "box": np.asarray(result.box, np.int32),
        "grid": np.asarray(result.grid, np.int32),
        "cls": np.asarray(result.cls, np.float16),
        "rollout": np.asarray(result.rollout if result.rollout is not None else np.zeros((L, P)), np.float16),
        "has_rollout": np.bool_(result.rollout is not None),
        "entropy": np.asarray(result.entropy, np.float16),
        "patch_entropy": np.asarray(result.patch_entropy if result.patch_entropy is not None else np.zeros((H, P)),
                                    np.float16),
        "has_patch_entropy": np.bool_(result.patch_entropy is not None),
        "patch_entropy_layer": np.int16(result.patch_entropy_layer),
        "prefix_share": np.asarray(result.prefix_share if result.prefix_share is not None else np.zeros((L, H)),
                                   np.float16),
        "token_norm": np.asarray(result.token_norm if result.token_norm is not None else np.zeros((L, P)),
                                 np.float16),
        "has_token_norm": np.bool_(result.token_norm is not None),
        "relevance": np.asarray(result.relevance if result.relevance is not None else np.zeros(P), np.float32),
        "has_relevance": np.bool_(result.relevance is not None),
        "target": np.int32(result.target if result.target is not None else -1),
        "target_p": np.float32(result.target_p if result.target_p is not None else np.nan),
        "top_p": top_p,
        "top_names": np.asarray(top_names, dtype="<U64"),
        "top_ids": top_ids,
        "view": np.asarray(json.dumps(asdict(view), sort_keys=True)),
        "settings": np.asarray(json.dumps(asdict(result.settings), sort_keys=True, default=list)),
    }


class ChunkWriter:
    """Per-frame rows buffered in memory and written as one ``.npz`` per chunk (tmp file, fsync, rename).

    A reader only ever sees complete chunks; a crash loses at most the chunk being filled (<= 0.4 s).
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir()
        self.index = 0
        self.frames = 0
        self.bytes = 0
        self._rows: list[dict[str, Any]] = []
        self._t_first = 0.0

    def append(self, row: dict[str, Any]) -> None:
        if not self._rows:
            self._t_first = time.monotonic()
        self._rows.append(row)
        if len(self._rows) >= CHUNK_FRAMES or time.monotonic() - self._t_first >= CHUNK_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        arrays = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        self.write_chunk(self.dir / f"chunk-{self.index:06d}.npz", arrays)
        self.index += 1
        self.frames += len(rows)

    def drop_pending(self) -> int:
        """Forget the rows not yet written (after a failure); returns how many."""
        n, self._rows = len(self._rows), []
        return n

    def write_chunk(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                # numpy's stub checks **arrays against its allow_pickle flag too; ours are the format's arrays.
                np.savez(f, **arrays)  # type: ignore[arg-type]
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)  # never leave a half chunk behind
            raise
        self.bytes += path.stat().st_size


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a tmp file, fsync, rename; on failure (a full disk) remove the tmp file and raise:
    the previous version stays whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _positive_int(m: dict, key: str, where: str) -> int:
    v = m.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise UserError(f"{where}: key {key!r} must be a positive whole number, got {v!r} (a damaged recording?)")
    return v


def read_manifest(path: Path) -> dict[str, Any]:
    """Load and check ``manifest.json``: one line naming the key for anything of the wrong type."""
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read {path}: {exc} (a damaged recording?)") from exc
    where = str(path)
    if not isinstance(m, dict):
        raise UserError(f"{where} is not a live-attention manifest (a JSON object)")
    for key in ("layers", "heads"):
        _positive_int(m, key, where)
    grid = m.get("grid")
    if not (isinstance(grid, list) and len(grid) == 2 and all(isinstance(g, int) and g > 0 for g in grid)):
        raise UserError(f"{where}: key 'grid' must be two positive whole numbers, got {grid!r} (a damaged recording?)")
    model = m.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name"), str):
        raise UserError(f"{where}: key 'model' must hold the model's 'name' (a damaged recording?)")
    _positive_int(model, "image_size", f"{where} model")
    npf = model.get("num_prefix", 1)
    if isinstance(npf, bool) or not isinstance(npf, int) or npf < 1:
        raise UserError(f"{where}: key 'model.num_prefix' must be a positive whole number, got {npf!r}")
    for key in ("config", "initial_view"):
        if m.get(key) is not None and not isinstance(m[key], dict):
            raise UserError(f"{where}: key {key!r} must be a table, got {m[key]!r}")
    return m


def read_chunks(directory: Path, layers: int, heads: int) -> dict[str, np.ndarray]:
    """Every readable chunk, concatenated. A damaged chunk is skipped with one warning naming it."""
    parts: dict[str, list[np.ndarray]] = {}
    for c in sorted(directory.glob("chunk-*.npz")):
        try:
            with np.load(c, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}  # reads every member: a bad CRC raises here
            _check_chunk(arrays, layers, heads)
        except Exception as exc:
            logger.warning("skipping damaged chunk %s: %s", c, " ".join(str(exc).split())[:160])
            continue
        if parts and set(arrays) != set(parts):
            logger.warning("skipping chunk %s: its arrays differ from the session's", c)
            continue
        for k, v in arrays.items():
            parts.setdefault(k, []).append(v)
    return {k: np.concatenate(v) for k, v in parts.items()}


def _check_chunk(arrays: dict[str, np.ndarray], layers: int, heads: int) -> None:
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise ValueError(f"missing arrays {missing}")
    n = len(arrays["seq"])
    if n == 0 or any(len(v) != n for v in arrays.values()):
        raise ValueError("arrays of different lengths")
    cls = arrays["cls"]
    if cls.ndim != 4 or cls.shape[1:3] != (layers, heads):
        raise ValueError(f"cls has shape {cls.shape}, expected [n, {layers}, {heads}, P]")
    if not np.isfinite(cls.astype(np.float32)).all():
        raise ValueError("cls holds NaN or inf")


def pair_folder(pair: dict[str, Any]) -> str:
    """The folder of the second model's maps, as its manifest entry names it."""
    folder = pair.get(MAPS_KEY)
    return folder if isinstance(folder, str) else ATTN_COMPARE_DIR


class Session:
    """A recorded session: manifest, per-frame arrays (all complete chunks), raw frames on demand.

    A session missing a part opens with what is left: :attr:`has_maps` False (no readable chunk) gives
    the raw frames' timeline and no recorded maps (the caller computes them); :attr:`has_raw` False gives
    the recorded maps over :meth:`canvas`. :meth:`notes` says in one line each what is missing.

    Args:
        path: the session folder (``session-*`` with ``manifest.json``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        mpath = self.path / MANIFEST
        if not mpath.is_file():
            raise UserError(f"{self.path} is not a recorded session (no {MANIFEST})")
        self.manifest = read_manifest(mpath)
        m = self.manifest
        self.layers, self.heads = m["layers"], m["heads"]
        self.grid = tuple(m["grid"])
        self.num_prefix = int(m["model"].get("num_prefix", 1))
        self.live = session_is_live(self.path)
        self.finalised = m.get("end") is not None
        if not self.live:
            with suppress(OSError):  # a killed older recorder's reserve; the folder may be read-only
                (self.path / RESERVE).unlink(missing_ok=True)
        self.data = read_chunks(self.path / ATTN_DIR, self.layers, self.heads)
        self.has_maps = bool(self.data)
        self.pair, self.pair_data = self._read_pair(m, mpath)
        self.has_raw = (self.path / RAW).is_file() and (self.path / RAW).stat().st_size > 0
        self._raw_pts = None if self.has_maps or not self.has_raw else raw_pts_ms(self.path / RAW)
        if self._raw_pts is not None and not len(self._raw_pts):
            self.has_raw = False
        if not self.has_maps and not self.has_raw:
            raise UserError(f"{self.path} holds nothing to replay: no attention data (no chunk in {ATTN_DIR}/) "
                            f"and no {RAW}" + (f"; {OVERLAY} is the recording as it was shown"
                                               if (self.path / OVERLAY).is_file() else ""))
        self._raw: RawReader | None = None
        self._views: dict[int, View] = {}
        self._canvas: np.ndarray | None = None

    def _read_pair(self, m: dict[str, Any], where: Path) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
        """The second model of a ``--compare`` recording: its manifest entry and its maps (None, {} if none)."""
        pair = m.get("compare")
        if pair is None:
            return None, {}
        if not isinstance(pair, dict) or not isinstance(pair.get("model"), dict):
            raise UserError(f"{where}: key 'compare' must be a table with the second model (a damaged recording?)")
        for key in ("layers", "heads"):
            _positive_int(pair, key, f"{where} compare")
        data = read_chunks(self.path / pair_folder(pair), pair["layers"],
                           pair["heads"])
        return pair, data

    @property
    def pair_sizes(self) -> tuple[int, int]:
        """The second model's layers and heads (a ``--compare`` recording only)."""
        assert self.pair is not None
        return int(self.pair["layers"]), int(self.pair["heads"])

    def __len__(self) -> int:
        return int(len(self.pts_ms))

    @property
    def pts_ms(self) -> np.ndarray:
        return self.data["pts_ms"] if self.has_maps else self._raw_pts  # type: ignore[return-value]

    @property
    def raw(self) -> RawReader:
        if not self.has_raw:
            raise UserError(f"{self.path / RAW} is missing: only the recorded maps can be shown")
        if self._raw is None:
            self._raw = RawReader(self.path / RAW, self.pts_ms)
        return self._raw

    def notes(self) -> list[str]:
        """One line for each thing a reader should know: a part missing, a session still being recorded
        or never finalised."""
        name, n = self.path.name, len(self)
        out = []
        if self.live:
            out.append(f"{name} is still being recorded: using the {n} frames written so far")
        elif not self.finalised:
            out.append(f"{name} was not finalised (its recorder was killed?): using the {n} frames it holds")
        if not self.has_maps:
            out.append(f"{name}: the attention data is missing (no chunk in {ATTN_DIR}/): "
                       f"the maps are computed again from {RAW} with the model")
        if not self.has_raw:
            shown = f" ({OVERLAY} holds the picture as it was shown)" if (self.path / OVERLAY).is_file() else ""
            out.append(f"{name}: {RAW} is missing: the recorded maps are drawn on a grey canvas{shown}")
        if self.pair is not None and self.has_maps:
            paired = len(self.pair_data.get("seq", ()))
            if paired < n:
                second = self.pair["model"].get("name", "the second model")
                folder = pair_folder(self.pair)
                out.append(f"{name}: the second model's maps ({second}, {folder}/) cover {paired} of {n} frames: "
                           "the others show the first model alone")
        return out

    def canvas(self) -> np.ndarray:
        """A neutral grey frame of the recorded frame size: what the maps are drawn over without raw.mkv."""
        if self._canvas is None:
            size = self.manifest.get("frame_size")
            if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
                box = self.data["box"]  # the crop boxes lie inside the frame
                size = [int(box[:, 2].max()), int(box[:, 3].max())]
            self._canvas = np.full((size[1], size[0], 3), CANVAS_GREY, np.uint8)
        return self._canvas

    def frame(self, i: int) -> np.ndarray | None:
        """Frame ``i``'s picture: the raw frame (None where raw.mkv ends before it), or the grey canvas."""
        return self.raw.get(i) if self.has_raw else self.canvas()

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config") or {}

    def config_value(self, section: str, key: str, default: Any) -> Any:
        v = (self.config.get(section) or {}).get(key, default)
        return v if isinstance(v, type(default)) or (isinstance(default, float) and isinstance(v, int)) else default

    def view(self, i: int) -> View:
        """The view state that was shown with frame ``i`` (without attention data: the first one recorded)."""
        if i not in self._views:
            try:
                d = json.loads(str(self.data["view"][i])) if self.has_maps else self.manifest.get("initial_view")
                self._views[i] = View(**{k: v for k, v in (d or {}).items() if k in _VIEW_FIELDS})
            except (ValueError, TypeError):
                self._views[i] = View()
        return self._views[i]

    def settings(self, i: int, data: dict[str, np.ndarray] | None = None) -> MapSettings:
        data = self.data if data is None else data
        try:
            d = json.loads(str(data["settings"][i])) if "settings" in data else {}
            d = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in _SETTINGS_FIELDS}
            return MapSettings(**d)
        except (ValueError, TypeError):
            return MapSettings()

    @staticmethod
    def _opt(d: dict[str, np.ndarray], key: str, i: int, flag: str | None = None) -> np.ndarray | None:
        if key not in d or (flag is not None and flag in d and not bool(d[flag][i])):
            return None
        return d[key][i].astype(np.float32)

    def result(self, i: int, frame: np.ndarray | None = None) -> Result:
        """The :class:`Result` of frame ``i`` from its recorded row (fp16 maps as fp32) and its raw frame;
        in a ``--compare`` recording with the second model's row of the same frame as ``Result.pair``."""
        if not self.has_maps:
            raise UserError(f"{self.path}: the attention data is missing: the maps need the model "
                            f"(replay without --no-model)")
        if frame is None:
            frame = self.frame(i)
            if frame is None:
                raise UserError(f"raw frame {i + 1} of {self.path} cannot be decoded")
        res = self._row(self.data, i, frame, self.manifest["model"], self.layers, self.grid)
        pd, pm = self.pair_data, self.pair
        if pm is not None and i < len(pd.get("seq", ())) and int(pd["seq"][i]) == res.seq:  # the same frame
            res = replace(res, pair=self._row(pd, i, frame, pm["model"], pm["layers"], tuple(pm.get("grid") or res.grid)))
        return res

    def _row(self, d: dict[str, np.ndarray], i: int, frame: np.ndarray, model: dict[str, Any], layers: int,
             grid_default: tuple) -> Result:
        """Row ``i`` of one model's recorded maps ``d`` as a :class:`Result`."""
        opt = self._opt
        topk = [(str(n), float(p)) for n, p in zip(d["top_names"][i], d["top_p"][i], strict=True) if n]
        target = int(d["target"][i]) if "target" in d and int(d["target"][i]) >= 0 else None
        rollout = opt(d, "rollout", i, "has_rollout")
        grid = tuple(int(g) for g in d["grid"][i]) if "grid" in d else grid_default
        target_p = float(d["target_p"][i]) if "target_p" in d and np.isfinite(d["target_p"][i]) else None
        names = model.get("category_names") or []
        if "top_ids" in d:
            top_ids = tuple(int(c) for c in d["top_ids"][i][: len(topk)] if c >= 0)
        else:  # recorded before the ids were: from the names, where the model's class names are known
            index = {n: k for k, n in enumerate(names)}
            top_ids = tuple(index[n] for n, _ in topk) if all(n in index for n, _ in topk) else ()
        return Result(
            seq=int(d["seq"][i]),
            t_capture_ns=int(d["t_capture_ns"][i]),
            t_done_ns=int(d["t_done_ns"][i]) if "t_done_ns" in d else int(d["t_capture_ns"][i]),
            frame=frame,
            box=tuple(int(v) for v in d["box"][i]),  # type: ignore[arg-type]
            grid=grid,  # type: ignore[arg-type]
            cls=d["cls"][i].astype(np.float32),
            rollout=rollout,
            entropy=d["entropy"][i].astype(np.float32),
            patch_entropy=opt(d, "patch_entropy", i, "has_patch_entropy"),
            patch_entropy_layer=int(d["patch_entropy_layer"][i]) % layers if "patch_entropy_layer" in d else layers - 1,
            topk=topk,
            top_ids=top_ids if len(top_ids) == len(topk) else (),
            infer_ms=float(d["infer_ms"][i]) if "infer_ms" in d else 0.0,
            settings=self.settings(i, d),
            pts_s=float(d["pts_ms"][i]) / 1000.0,
            num_prefix=int(model.get("num_prefix", 1)),
            prefix_share=opt(d, "prefix_share", i),
            token_norm=opt(d, "token_norm", i, "has_token_norm"),
            relevance=opt(d, "relevance", i, "has_relevance"),
            target=target,
            target_label=names[target] if target is not None and target < len(names) else None,
            target_p=target_p,
            classifier=bool(model.get("classifier", True)),
        )

    def status(self) -> Status:
        """The HUD's fixed part for this session: model, weights, UNTRAINED flag, source."""
        def of(m: dict[str, Any]) -> Status:
            return Status(model=f"{m['name']} [{m.get('weights_label', '?')}] replay", untrained=bool(m.get("untrained")),
                          source=self.path.name)

        status = of(self.manifest["model"])
        return replace(status, pair=of(self.pair["model"])) if self.pair is not None else status

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None
