"""Proof of meaning: the shipped demo ViT classifies held-out synthetic scenes and its attention finds the target.

The pointing game: for each held-out scene, take the argmax patch of (a) last-layer CLS attention with heads
mean-fused and (b) attention rollout. Scenes are rendered at the model's own input size S, so preprocessing is
an identity resize and patch (r, c) covers exactly the pixels [c·ps, (c+1)·ps) × [r·ps, (r+1)·ps). A hit is a
patch cell that intersects the target's box (x0, y0, x1, y1; x1/y1 exclusive, the tight box of the target's
pixels, white outline included). Chance level is measured too, so the threshold means something.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from live_attention import load_model, maps
from live_attention.demo.model import DEMO_CHECKPOINT
from live_attention.demo.synthetic import CLASS_NAMES, DemoScene, make_dataset
from live_attention.errors import WeightsError

HELD_OUT_SEED = 777_777  # training uses seed*1000 + 1 and its own held-out set seed*1000 + 500000
N_HELD_OUT = 400


def _cell_hits(idx: torch.Tensor, boxes: np.ndarray, grid_w: int, ps: float, x_off: float = 0.0,
               y_off: float = 0.0) -> np.ndarray:
    """For argmax patch indices ``idx`` [B] and boxes [B, 4], whether each patch cell meets its box."""
    r, c = np.divmod(idx.numpy(), grid_w)
    cx0, cy0 = x_off + c * ps, y_off + r * ps
    x0, y0, x1, y1 = boxes.T
    return (cx0 < x1) & (cx0 + ps > x0) & (cy0 < y1) & (cy0 + ps > y0)


def _maps(engine, images: np.ndarray, batch: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, C], last-layer CLS attention fused over heads [N, P], rollout [N, P]."""
    logits, last, roll = [], [], []
    for i in range(0, len(images), batch):
        x = torch.cat([engine.preprocess(im) for im in images[i : i + batch]])
        out = engine.run(x)
        logits.append(out.logits)
        last.append(maps.fuse_heads(maps.cls_attention(out.attn)[:, -1], "mean", dim=-2))
        roll.append(maps.rollout_cls(maps.rollout(out.attn)))
    return torch.cat(logits), torch.cat(last), torch.cat(roll)


@pytest.fixture(scope="module")
def engine():
    if not DEMO_CHECKPOINT.exists():
        pytest.fail(f"no shipped demo checkpoint at {DEMO_CHECKPOINT}: run `python -m live_attention.train_demo`")
    return load_model("demo", device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def held_out(engine):
    images, labels, boxes = make_dataset(N_HELD_OUT, engine.image_size, seed=HELD_OUT_SEED)
    logits, last, roll = _maps(engine, images)
    return images, labels, boxes, logits, last, roll


# --------------------------------------------------------------------------------------------------
# The shipped checkpoint
# --------------------------------------------------------------------------------------------------


def test_checkpoint_is_small_and_safe_to_load():
    assert DEMO_CHECKPOINT.stat().st_size <= 1_000_000
    ck = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
    assert set(ck) >= {"state_dict", "config", "classes", "mean", "std"}
    assert ck["classes"] == list(CLASS_NAMES)
    assert all(isinstance(v, torch.Tensor) for v in ck["state_dict"].values())


def test_engine_describes_demo_model(engine):
    assert engine.name == "demo"
    assert not engine.untrained
    assert engine.categories == list(CLASS_NAMES)
    assert engine.preprocess_spec.crop_size == engine.preprocess_spec.resize_size == engine.image_size
    assert next(engine.module.parameters()).dtype == torch.float32  # fp16 on disk, fp32 in memory


# --------------------------------------------------------------------------------------------------
# Meaning: accuracy and the pointing game on held-out scenes
# --------------------------------------------------------------------------------------------------


def test_held_out_accuracy(held_out):
    _, labels, _, logits, _, _ = held_out
    acc = float((logits.argmax(-1).numpy() == labels).mean())
    assert acc >= 0.95, f"held-out accuracy {acc:.3f}"


def test_pointing_game_chance_level_is_low(engine, held_out):
    """A random patch hits the target box this often; the thresholds below sit far above it."""
    _, _, boxes, _, _, _ = held_out
    gh, gw = engine.grid
    ps = engine.patch_size
    cells = np.stack([_cell_hits(torch.full((len(boxes),), p), boxes, gw, ps) for p in range(gh * gw)], 1)
    chance = float(cells.mean())
    assert chance < 0.25, f"chance {chance:.3f}"


def test_pointing_game_last_layer_cls_attention(engine, held_out):
    _, _, boxes, _, last, _ = held_out
    rate = float(_cell_hits(last.argmax(-1), boxes, engine.grid[1], engine.patch_size).mean())
    assert rate >= 0.90, f"last-layer CLS attention hits the target in {rate:.3f} of scenes"


def test_pointing_game_rollout(engine, held_out):
    _, _, boxes, _, _, roll = held_out
    rate = float(_cell_hits(roll.argmax(-1), boxes, engine.grid[1], engine.patch_size).mean())
    assert rate >= 0.90, f"rollout hits the target in {rate:.3f} of scenes"


def test_untrained_model_fails_the_pointing_game(held_out):
    """Control: the same measurement on random weights is near chance, so a pass is earned by training."""
    images, _, boxes, _, _, _ = held_out
    torch.manual_seed(0)
    rnd = load_model("demo", weights="random", device="cpu", precision="fp32")
    _, last, roll = _maps(rnd, images[:200])
    for m in (last, roll):
        rate = float(_cell_hits(m.argmax(-1), boxes[:200], rnd.grid[1], rnd.patch_size).mean())
        assert rate < 0.5, f"untrained model hits {rate:.3f}"


# --------------------------------------------------------------------------------------------------
# Weights handling
# --------------------------------------------------------------------------------------------------


def test_random_weights_flagged_untrained():
    eng = load_model("demo", weights="random", device="cpu", precision="fp32")
    assert eng.untrained
    assert "UNTRAINED" in eng.describe()


def test_checkpoint_path_round_trip(engine, tmp_path):
    eng = load_model("demo", weights=str(DEMO_CHECKPOINT), device="cpu", precision="fp32")
    x = torch.randn(2, 3, engine.image_size, engine.image_size, generator=torch.Generator().manual_seed(3))
    assert torch.equal(eng.run(x).logits, engine.run(x).logits)
    assert eng.weights_sha256 == engine.weights_sha256


def test_missing_file_is_weights_error(tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_model("demo", weights=str(tmp_path / "nope.pt"), device="cpu")


def test_corrupt_file_is_weights_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"definitely not a zip or a pickle" * 10)
    with pytest.raises(WeightsError, match="cannot read"):
        load_model("demo", weights=str(bad), device="cpu")


def _edited_checkpoint(tmp_path, **changes):
    ck = torch.load(DEMO_CHECKPOINT, map_location="cpu", weights_only=True)
    for key, value in changes.items():
        if value is None:
            ck.pop(key)
        elif key == "config":
            ck["config"] = {**ck["config"], **value}
        else:
            ck[key] = value
    path = tmp_path / "edited.pt"
    torch.save(ck, path)
    return str(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"config": {"num_layers": 2}}, "do not fit"),  # architecture disagrees with the tensors
        ({"config": {"hidden_dim": 65}}, "multiple of num_heads"),
        ({"config": {"patch_size": "8"}}, "positive int"),
        ({"config": None}, "no model config"),
        ({"classes": ["a", "b"]}, "class names"),
        ({"state_dict": None}, "state_dict"),
    ],
)
def test_wrong_content_is_weights_error(tmp_path, changes, message):
    path = _edited_checkpoint(tmp_path, **changes)
    with pytest.raises(WeightsError, match=message):
        load_model("demo", weights=path, device="cpu")


def test_plain_state_dict_without_config_is_weights_error(tmp_path, engine):
    path = tmp_path / "plain.pt"
    torch.save(engine.module.state_dict(), path)
    with pytest.raises(WeightsError, match="not a demo-model checkpoint"):
        load_model("demo", weights=str(path), device="cpu")


def test_missing_shipped_checkpoint_says_how_to_train(tmp_path, monkeypatch):
    import live_attention.demo.model as dm

    monkeypatch.setattr(dm, "DEMO_CHECKPOINT", tmp_path / "absent.pt")
    with pytest.raises(WeightsError, match="live_attention.demo.train"):
        load_model("demo", device="cpu")


# --------------------------------------------------------------------------------------------------
# The animated demo scene
# --------------------------------------------------------------------------------------------------


def test_dataset_is_deterministic_per_seed():
    a = make_dataset(8, 64, seed=5)
    b = make_dataset(8, 64, seed=5)
    c = make_dataset(8, 64, seed=6)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])


def test_demo_scene_frames_are_deterministic():
    s1, s2 = DemoScene(seed=3), DemoScene(seed=3)
    for t in (0.0, 1.37, 12.5):
        f = s1.frame(t)
        assert f.shape == (480, 640, 3) and f.dtype == np.uint8
        assert np.array_equal(f, s2.frame(t))
        assert np.array_equal(f, s1.frame(t))
    assert not np.array_equal(s1.frame(1.0), s1.frame(1.5))
    assert not np.array_equal(s1.frame(1.0), DemoScene(seed=4).frame(1.0))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1280, 720)])
def test_demo_targets_stay_in_the_central_square(size):
    w, h = size
    s = DemoScene(width=w, height=h, seed=1)
    side = min(w, h)
    x_lo, y_lo = (w - side) / 2, (h - side) / 2
    labels = set()
    for t in np.arange(0.0, 90.0, 0.7):
        boxes = s.target_boxes(float(t))
        assert 1 <= len(boxes) <= 2
        for label, (x0, y0, x1, y1) in boxes:
            labels.add(label)
            assert x_lo <= x0 < x1 <= x_lo + side and y_lo <= y0 < y1 <= y_lo + side
            # about 1.5-3 patches of the 8×8 grid once the square is resized to the model's 64 px
            assert 1.5 <= (x1 - x0) / side * 8 <= 3.2 and 1.5 <= (y1 - y0) / side * 8 <= 3.2
    assert labels == set(range(len(CLASS_NAMES)))  # the class cycles through every shape


def test_demo_boxes_match_drawn_pixels():
    s = DemoScene(seed=2)
    for t in np.arange(0.0, 40.0, 1.9):
        f = s.frame(float(t)).astype(np.int16)
        for tg in s.targets(float(t)):
            x0, y0, x1, y1 = tg.box
            inside = f[y0:y1, x0:x1]
            near = (np.abs(inside - np.array(tg.fill, np.int16)).max(-1) <= 30).mean()
            assert near > 0.15, f"fill colour covers {near:.2f} of the box at t={t}"
            # the box is tight: its one-pixel-thick border ring holds the white outline
            ring = np.concatenate([f[y0, x0:x1], f[y1 - 1, x0:x1], f[y0:y1, x0], f[y0:y1, x1 - 1]])
            assert (ring.min(-1) >= 200).any()


def test_rollout_hotspot_follows_demo_targets(engine):
    """On live-like frames, the rollout argmax (mapped back through the centre crop) lands on a target."""
    s = DemoScene(seed=0)
    times = np.arange(0.0, 48.0, 1.3)
    frames = [s.frame(float(t)) for t in times]
    x = torch.cat([engine.preprocess(f) for f in frames])
    out = engine.run(x)
    idx = maps.rollout_cls(maps.rollout(out.attn)).argmax(-1)
    x0, y0, x1, _ = engine.preprocess_spec.crop_box(480, 640)
    ps = engine.patch_size * (x1 - x0) / engine.image_size
    hits, correct, single = 0, 0, 0
    for i, t in enumerate(times):
        gt = s.target_boxes(float(t))
        boxes = np.array([b for _, b in gt], dtype=np.float64)
        hit = _cell_hits(idx[i : i + 1].repeat(len(gt)), boxes, engine.grid[1], ps, x0, y0)
        hits += bool(hit.any())
        if len(gt) == 1:
            single += 1
            correct += int(out.logits[i].argmax()) == gt[0][0]
    assert hits / len(times) >= 0.85, f"rollout hotspot on a target in {hits}/{len(times)} frames"
    assert correct / single >= 0.85, f"{correct}/{single} single-target frames classified right"
