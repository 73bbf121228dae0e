"""Full frame at native resolution: the grid follows the frame's shape and the overlay lands where the
model looks. The model is hand-set so the class token attends to the brightest patch: a bright square
put at a known place must light up there, through preprocessing, the engine, the maps and the renderer."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.models.vision_transformer import VisionTransformer

from live_attention.core.engine import AttentionEngine
from live_attention.core.preprocess import Preprocess
from live_attention.core.step import process_frames
from live_attention.datatypes import Frame, MapSettings, View
from live_attention.ui.controller import patch_at, patch_center
from live_attention.ui.frame import render


def looks_at_the_brightest_patch(patch: int = 8, dim: int = 8) -> VisionTransformer:
    """One layer, one head: a patch's embedding carries its brightness, the class token's query asks
    for brightness, so the class token's attention is a softmax over the patches' brightness."""
    m = VisionTransformer(image_size=64, patch_size=patch, num_layers=1, num_heads=1, hidden_dim=dim,
                          mlp_dim=dim, num_classes=2).eval()
    blk = m.encoder.layers[0]
    blk.ln_1 = torch.nn.Identity()  # keep the brightness's magnitude
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        m.conv_proj.weight[0] = 1.0 / (3 * patch * patch)  # channel 0: the patch's mean (normalised) value
        m.class_token[0, 0, 1] = 1.0  # channel 1: "I am the class token"
        mha = blk.self_attention
        w = mha.in_proj_weight  # [3D, D]: q, k, v
        w[0, 1] = 40.0  # q0 = 40 for the class token
        w[dim + 0, 0] = 1.0  # k0 = brightness
        m.encoder.ln.weight.fill_(1.0)
    return m


def test_a_bright_square_lights_up_where_it_is_on_a_640x480_full_frame(tmp_path):
    m = looks_at_the_brightest_patch()
    spec = Preprocess(crop_size=64, resize_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    eng = AttentionEngine.wrap(m, device="cpu", precision="fp32", preprocess=spec, input_size=480, full_frame=True)
    frame = np.full((480, 640, 3), 40, np.uint8)
    x0, y0, side = 408, 96, 24  # three patches wide, away from the centre
    frame[y0 : y0 + side, x0 : x0 + side] = 255
    (res,) = process_frames(eng, [Frame(frame, 0, 0, "t")], MapSettings())
    assert res.grid == (60, 80) and res.box == (0, 0, 640, 480) and res.cls.shape == (1, 1, 4800)
    peak = int(np.argmax(res.cls[0, 0]))
    cx, cy = patch_center(res, peak)
    assert x0 <= cx < x0 + side and y0 <= cy < y0 + side, (cx, cy)
    assert patch_at(res, x0 + 4, y0 + 4) in np.flatnonzero(res.cls[0, 0] >= res.cls[0, 0].max() * 0.99)
    # The picture: the overlay's hottest pixels are on the square (the renderer scales 480 -> 720 tall).
    rgb = render(frame, res, View(mode="attention", opacity=1.0, show_hud=False), size=(960, 720))
    cv2.imwrite(str(tmp_path / "full-frame.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    heat = rgb.astype(np.int32).sum(-1)
    ys, xs = np.nonzero(heat >= heat.max() - 10)
    s = 720 / 480
    assert (x0 * s <= xs.mean() < (x0 + side) * s) and (y0 * s <= ys.mean() < (y0 + side) * s)


def test_non_square_inputs_keep_their_shape_at_any_input_size():
    m = looks_at_the_brightest_patch()
    spec = Preprocess(crop_size=64, resize_size=64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    for size, frame_hw, grid in ((64, (480, 640), (8, 11)), (96, (720, 1280), (12, 21)), (480, (480, 640), (60, 80))):
        eng = AttentionEngine.wrap(m, device="cpu", precision="fp32", preprocess=spec, input_size=size, full_frame=True)
        assert eng.grid_for(*frame_hw) == grid
        (res,) = process_frames(eng, [Frame(np.zeros((*frame_hw, 3), np.uint8), 0, 0, "t")], MapSettings())
        assert res.grid == grid and res.box == (0, 0, frame_hw[1], frame_hw[0])
