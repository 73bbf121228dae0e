"""Makes docs/flicker-before-after.png, the README's before/after picture of "Maps that hold still".

A still demo frame shaken by up to 4 px a frame with camera noise (as ``evaluate --temporal`` does) is
written as a video, then put through ``render --model demo --mode rollout --smooth off|on --save-maps``;
the picture shows five of its frames with their saved maps and each patch's change from the frame
before, raw above and smoothed below, on one colour scale. Run from the repository root:

    PYTHONPATH=$PWD python docs/flicker_figure.py docs/flicker-before-after.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from live_attention.commands.cli import main
from live_attention.core.render import heat_rgb
from live_attention.core.temporal import flicker, normalise
from live_attention.demo.synthetic import DemoScene
from live_attention.io.video import H264Writer
from live_attention.offline.temporal_eval import shaken

FRAMES, SHOWN, TILE, GAP, OPACITY = 30, range(15, 20), 200, 4, 0.55
FONT, WHITE, YELLOW = cv2.FONT_HERSHEY_SIMPLEX, (235, 235, 235), (10, 214, 255)  # BGR


def saved_maps(folder: Path) -> tuple[list[np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """The shaken frames (BGR) and the maps ``render --save-maps`` saved with smoothing off and on."""
    frames = shaken(DemoScene(640, 480, seed=0).frame(1.0), FRAMES, np.random.default_rng(0))
    video = folder / "shaken.mp4"
    with H264Writer(video, 640, 480, fps=10.0, crf=12) as w:
        for i, f in enumerate(frames):
            w.write(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), i / 10.0)
    out = {}
    for smooth in ("off", "on"):
        npz = folder / f"s-{smooth}.npz"
        args = ["render", str(video), "-o", str(folder / f"s-{smooth}.mp4"), "--model", "demo", "--mode",
                "rollout", "--precision", "fp32", "--smooth", smooth, "--save-maps", str(npz)]
        if main(args) != 0:
            raise SystemExit(f"render --smooth {smooth} failed")
        with np.load(npz) as z:
            out[smooth] = {k: z[k] for k in z.files}
    return frames, out


def label(img: np.ndarray, text: str, y: int, x: int = 6, scale: float = 0.45, color=WHITE) -> None:
    cv2.putText(img, text, (x, y), FONT, scale, color, 1, cv2.LINE_AA)


def band(frames: list[np.ndarray], z: dict[str, np.ndarray], vmax: float, title: str) -> np.ndarray:
    """One filter's rows: a title, the pictures with their maps, each patch's change from the frame before."""
    maps = z["maps"].astype(np.float32)
    grid = tuple(int(g) for g in z["grid"])
    norm = np.stack([normalise(m) for m in maps])
    w = len(SHOWN) * (TILE + GAP) - GAP
    out = np.zeros((30 + 2 * (TILE + 22), w, 3), np.uint8)
    label(out, f"{title} (mean over {FRAMES} frames {flicker(maps):.4f})", 21, 4, 0.5, YELLOW)
    for j, t in enumerate(SHOWN):
        x0, y0, x1, y1 = (int(v) for v in z["box"][t])
        crop = cv2.resize(frames[t][y0:y1, x0:x1], (TILE, TILE), interpolation=cv2.INTER_AREA)
        heat = cv2.cvtColor(heat_rgb(norm[t].ravel(), grid, (TILE, TILE), "inferno"), cv2.COLOR_RGB2BGR)
        change = np.abs(norm[t] - norm[t - 1])
        u8 = np.clip(change / vmax * 255.0, 0, 255).astype(np.uint8)
        cells = cv2.resize(cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO), (TILE, TILE), interpolation=cv2.INTER_NEAREST)
        x = j * (TILE + GAP)
        out[30 : 30 + TILE, x : x + TILE] = cv2.addWeighted(crop, 1.0 - OPACITY, heat, OPACITY, 0.0)
        label(out, f"frame {t}", 30 + TILE + 16, x + 4)
        y = 30 + TILE + 22
        out[y : y + TILE, x : x + TILE] = cells
        label(out, f"change {change.mean():.3f}", y + TILE + 16, x + 4)
    return out


def figure(path: Path) -> None:
    with tempfile.TemporaryDirectory() as d:
        frames, z = saved_maps(Path(d))
    norm = {k: np.stack([normalise(m) for m in v["maps"].astype(np.float32)]) for k, v in z.items()}
    vmax = max(float(np.abs(n[t] - n[t - 1]).max()) for n in norm.values() for t in SHOWN)  # one scale for both
    raw = band(frames, z["off"], vmax, "raw (--smooth off): picture, and each patch's change from the frame before")
    smooth = band(frames, z["on"], vmax, "smoothed (--smooth on): the same")
    head = np.zeros((52, raw.shape[1], 3), np.uint8)
    label(head, "A still scene shaken by up to 4 px a frame with camera noise: attention rollout of the demo model",
          20, 4, 0.5)
    label(head, f"change maps on one scale: black unchanged, yellow {vmax:.2f} (maps min-max scaled to 0..1)", 44, 4)
    img = np.concatenate([head, raw, np.zeros((8, raw.shape[1], 3), np.uint8), smooth])
    if not cv2.imwrite(str(path), img, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"cannot write {path}")
    print(f"wrote {path}: raw flicker {flicker(z['off']['maps'].astype(np.float32)):.4f}, "
          f"smoothed {flicker(z['on']['maps'].astype(np.float32)):.4f}")


if __name__ == "__main__":
    figure(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/flicker-before-after.png"))
