"""Per-frame maps saved for analysis (``render`` and ``export`` with ``--save-maps FILE.npz``).

One ``.npz`` per output, read with ``numpy.load``:

* ``maps`` float16 [T, rows, cols]: the map each frame's picture overlays (the shown mode, layer and
  head; smoothed when ``--smooth on``), in the map's own units before the display's min-max
  normalisation; NaN where a frame had none (e.g. rollout too large for memory);
* ``pts_s`` float64 [T]: each frame's media time; ``seq`` int64 [T]: its index in the input;
* ``grid`` int32 [2]: (rows, cols) of the patch grid; ``box`` int32 [T, 4]: the region the model saw,
  (x0, y0, x1, y1) in frame pixels (patch (r, c) covers the r-th row and c-th column of that box);
  ``frame_size`` int32 [2]: (width, height);
* what was shown, per frame: ``mode`` (str), ``layer`` (1-based), ``head`` (1-based, 0: heads fused),
  ``smooth`` (bool); and ``model``, ``source`` (str);
* with ``--compare``, the second model's side as well: ``compare_maps`` float16 [T, rows2, cols2] (the
  map its half overlays: its own grid, layer and head), ``compare_grid``, ``compare_layer``,
  ``compare_head`` and ``compare_model``; on a frame without the second model's map (a recording whose
  second model's maps stop early) its map is NaN and its layer 0.

Written as ``NAME.partial.npz`` and renamed when complete, like the videos.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from live_attention.datatypes import Result, View
from live_attention.errors import UserError
from live_attention.io.outputs import PartialOutput

FLAG = "--save-maps"
PairMap = tuple[View, "np.ndarray | None"]  # the second model's view and shown map on a frame (--compare)
MapsSink = Callable[[Result, View, "np.ndarray | None", "PairMap | None"], None]  # MapsFile.add


def check_maps_path(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """The checks made before any work: a ``.npz`` name, in a folder that exists and can be written, not
    an existing file unless ``overwrite``. Raises :class:`UserError` naming ``--save-maps``."""
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserError(f"{FLAG} {out} is a folder: give a file name ending in .npz")
    if out.suffix.lower() != ".npz":
        raise UserError(f"{FLAG} {out}: give a file name ending in .npz")
    if out.exists() and not overwrite:
        raise UserError(f"{FLAG} {out} already exists: choose another name or pass --overwrite")
    parent = out.parent
    if not parent.exists():
        raise UserError(f"{FLAG} {out}: folder {parent} does not exist: create it first")
    if not parent.is_dir():
        raise UserError(f"{FLAG} {out}: {parent} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".live-attention-", suffix=".tmp"):
            pass
    except OSError as exc:
        raise UserError(f"{FLAG} {out}: folder {parent} cannot be written ({exc.strerror or exc})") from None
    return out


class MapsFile:
    """Collects each frame's shown map in order (:meth:`add`, e.g. as the offline path's ``maps``
    callback) and writes them at the end (:meth:`write`). Memory: 2 bytes a patch a frame."""

    def __init__(self, path: Path, model: str = "", source: str = "", compare_model: str = "") -> None:
        self.path, self.model, self.source, self.compare_model = path, model, source, compare_model
        self.grid: tuple[int, int] | None = None
        self.frame_size: tuple[int, int] | None = None
        self._maps: list[np.ndarray] = []
        self._rows: list[tuple] = []  # pts, seq, box, mode, layer, head, smooth
        self.compare_grid: tuple[int, int] | None = None
        self._pair: list[tuple[np.ndarray | None, int, int]] = []  # the second model's map, layer, head

    def __len__(self) -> int:
        return len(self._maps)

    def add(self, result: Result, view: View, shown: np.ndarray | None, pair: PairMap | None = None) -> None:
        """Frame ``result`` as drawn in ``view``, whose picture overlays ``shown`` [P] (None: no map);
        ``pair``: the second model's view and shown map on the same frame (``--compare``)."""
        grid = (int(result.grid[0]), int(result.grid[1]))
        if self.grid is None:
            self.grid, self.frame_size = grid, (result.frame.shape[1], result.frame.shape[0])
        elif grid != self.grid:
            raise UserError(f"{FLAG}: frame {result.seq} has a {result.grid[0]}×{result.grid[1]} patch grid, the first "
                            f"{self.grid[0]}×{self.grid[1]}: one maps file holds one grid")
        self._maps.append(_as_grid(shown, grid))
        self._rows.append((float(result.pts_s or 0.0), int(result.seq), tuple(int(v) for v in result.box),
                           view.mode, *_layer_head(result, view), bool(view.smooth)))
        b = result.pair
        if b is not None and pair is not None:
            grid_b = (int(b.grid[0]), int(b.grid[1]))
            if self.compare_grid is not None and grid_b != self.compare_grid:
                raise UserError(f"{FLAG}: frame {result.seq} has a {grid_b[0]}×{grid_b[1]} patch grid for the second "
                                f"model, the first {self.compare_grid[0]}×{self.compare_grid[1]}: one maps file "
                                "holds one grid per model")
            self.compare_grid = grid_b
            self._pair.append((_as_grid(pair[1], self.compare_grid), *_layer_head(b, pair[0])))
        else:
            self._pair.append((None, 0, 0))

    def write(self, overwrite: bool = False) -> Path:
        """Write the ``.npz`` (through a partial file); returns its path."""
        if not self._maps:
            raise UserError(f"{FLAG} {self.path}: no frames to save")
        pts, seq, box, mode, layer, head, smooth = zip(*self._rows, strict=True)
        data = {
            "maps": np.stack(self._maps), "pts_s": np.asarray(pts, np.float64), "seq": np.asarray(seq, np.int64),
            "grid": np.asarray(self.grid, np.int32), "box": np.asarray(box, np.int32),
            "frame_size": np.asarray(self.frame_size, np.int32), "mode": np.asarray(mode),
            "layer": np.asarray(layer, np.int32), "head": np.asarray(head, np.int32), "smooth": np.asarray(smooth),
            "model": np.asarray(self.model), "source": np.asarray(self.source),
        }
        if self.compare_grid is not None:  # --compare: the second model's half
            empty = np.full(self.compare_grid, np.nan, np.float16)
            data.update({
                "compare_maps": np.stack([m if m is not None else empty for m, _, _ in self._pair]),
                "compare_grid": np.asarray(self.compare_grid, np.int32),
                "compare_layer": np.asarray([layer for _, layer, _ in self._pair], np.int32),
                "compare_head": np.asarray([head for _, _, head in self._pair], np.int32),
                "compare_model": np.asarray(self.compare_model),
            })
        with PartialOutput(self.path, overwrite) as part, open(part.path, "wb") as f:
            np.savez_compressed(f, **data)  # type: ignore[arg-type]  # see recording.write_chunk
        return self.path


def _as_grid(shown: np.ndarray | None, grid: tuple[int, int]) -> np.ndarray:
    """``shown`` [P] as float16 [rows, cols]; NaN where there is no map (or not one of this grid)."""
    m = np.full(grid, np.nan, np.float16)
    if shown is not None and np.size(shown) == m.size:
        m[:] = np.asarray(shown, np.float32).reshape(grid)
    return m


def _layer_head(result: Result, view: View) -> tuple[int, int]:
    """The shown layer (1-based) and head (1-based, 0: heads fused) of ``view`` on ``result``'s model."""
    layer = view.resolved_layer(result.num_layers) + 1
    return layer, (min(view.head, result.num_heads - 1) + 1 if view.head >= 0 else 0)
