"""Faithfulness measures (pointing game, deletion and insertion, randomisation) and ``live-attention evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from live_attention.commands.cli import main
from live_attention.core import faithfulness as fth
from live_attention.core.models import load_model
from live_attention.offline.evaluation import Evaluation, Evaluator, KindScore, demo_items, most_faithful


def test_pointing_hit_is_the_argmax_cell_meeting_the_box():
    m = np.zeros(16)
    m[6] = 1.0  # row 1, col 2 of a 4x4 grid: pixels x 16..24, y 8..16 at 8 px a patch
    assert fth.pointing_hit(m, (4, 4), (20, 10, 30, 12), (8, 8))
    assert not fth.pointing_hit(m, (4, 4), (24, 10, 30, 12), (8, 8))  # exclusive ends: x0 = 24 misses


def test_deletion_removes_the_most_relevant_patches_first_and_insertion_puts_them_back_first():
    maps = torch.tensor([[0.1, 0.9, 0.5, 0.3]])
    d = fth.patch_masks(maps, (2, 2), patch=2, order="deletion", steps=4)
    i = fth.patch_masks(maps, (2, 2), patch=2, order="insertion", steps=4)
    assert d.shape == (5, 1, 1, 4, 4)
    kept_after_one = d[1, 0, 0, ::2, ::2].flatten().tolist()
    assert kept_after_one == [1.0, 0.0, 1.0, 1.0]  # patch 1 (0.9) went first
    assert i[1, 0, 0, ::2, ::2].flatten().tolist() == [0.0, 1.0, 0.0, 0.0]  # and comes back first
    assert d[0].all() and not d[-1].any() and not i[0].any() and i[-1].all()


def test_curves_areas_and_ranks():
    def prob(x):  # the "probability": the mean brightness kept
        return x.flatten(1).mean(1)

    x = torch.ones(1, 3, 4, 4)
    maps = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    c = fth.perturbation_curves(prob, x, maps, (2, 2), 2, "deletion", steps=4)
    torch.testing.assert_close(c, torch.tensor([[1.0, 0.75, 0.5, 0.25, 0.0]]))
    assert fth.area(c)[0] == pytest.approx(0.5)
    assert fth.spearman([[1, 2, 3, 4]], [[10, 20, 30, 40]])[0] == pytest.approx(1.0)
    assert fth.spearman([[1, 2, 3, 4]], [[4, 3, 2, 1]])[0] == pytest.approx(-1.0)


def test_reinitialising_blocks_changes_only_them_and_is_seeded():
    eng = load_model("demo", device="cpu", precision="fp32")
    blocks = eng.family.blocks()
    assert len(blocks) == eng.num_layers
    before = {k: v.clone() for k, v in eng.module.state_dict().items()}
    fth.reinitialise(blocks[-1:], seed=3)
    after = eng.module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".encoder_layer_3." in k for k in changed)


@pytest.fixture(scope="module")
def demo_evaluation():
    eng = load_model("demo", device="cpu", precision="fp32")
    return Evaluator(eng, seed=0).run(demo_items(60, seed=99))


def test_relevance_beats_rollout_and_random_on_deletion_and_insertion(demo_evaluation):
    """On the demo model, scenes with two shapes of different classes: the class relevance map is the
    faithful one (deletion area lower, insertion area higher than rollout's and random's)."""
    k = demo_evaluation.kinds
    rel, roll, rnd = k["relevance"].areas, k["rollout"].areas, k["random"].areas
    msg = f"relevance {rel}, rollout {roll}, random {rnd}"
    assert rel["deletion"] < roll["deletion"] and rel["deletion"] < rnd["deletion"], msg
    assert rel["insertion"] > roll["insertion"] and rel["insertion"] > rnd["insertion"], msg
    assert k["relevance"].pointing > k["rollout"].pointing > k["random"].pointing


def test_the_randomisation_check_changes_the_relevance_maps(demo_evaluation):
    """Adebayo et al.: a map that does not change when the layers are re-initialised (from the top,
    cumulatively) does not depend on what the model learned. Relevance changes; it depends on the top
    layers more than rollout does."""
    rel, roll = demo_evaluation.kinds["relevance"].randomisation, demo_evaluation.kinds["rollout"].randomisation
    assert list(rel) == [1, 2, 4]  # the demo model's 4 blocks: top 1, top half, all
    assert rel[4] < 0.5, rel
    assert rel[2] < roll[2] and rel[1] < roll[1], (rel, roll)


def test_evaluate_command_prints_and_saves_a_table(tmp_path, capsys):
    assert main(["evaluate", "--demo", "-n", "20", "--out", str(tmp_path), "--kinds", "cls,relevance,random"]) == 0
    out = capsys.readouterr().out
    assert "| class relevance (Chefer) |" in out and "Most faithful by these measures" in out
    (md,) = tmp_path.glob("*.md")
    data = json.loads(md.with_suffix(".json").read_text())
    assert set(data["kinds"]) == {"cls", "relevance", "random"} and len(data["kinds"]["cls"]["curves"]["deletion"]) == 11
    assert main(["evaluate", "--demo", "--model", "vit_b_32", "--weights", "random"]) == 2  # scenes need the demo model


def test_a_session_recorded_without_relevance_exports_it_from_the_raw_frames(tmp_path):
    """Recorded in another mode: export --mode relevance recomputes it with the manifest's model, and a
    session recorded in the relevance view keeps each frame's map and class."""
    import time

    from live_attention.config import Config
    from live_attention.core.step import process_frames
    from live_attention.datatypes import Frame, MapSettings, View
    from live_attention.demo.synthetic import DemoScene
    from live_attention.io.recorder import Recorder
    from live_attention.io.recording import Session
    from live_attention.pipeline.replay import ReplayFeed, engine_for_session, export_needs_model
    from live_attention.ui.frame import render

    eng = load_model("demo", device="cpu", precision="fp32")
    scene = DemoScene(width=320, height=240, seed=0, num_targets=3)
    paths = {}
    for name, settings in (("plain", MapSettings()), ("explained", MapSettings(relevance=True, target=2))):
        rec = Recorder.create(tmp_path / name, eng, Config())
        rec.start()
        for i in range(4):
            img = scene.frame(i / 30)
            res = process_frames(eng, [Frame(img, i, time.monotonic_ns(), "demo", i / 30)], settings)[0]
            rec.submit(res, render(img, res, View()), View(mode="relevance" if settings.relevance else "attention"))
        rec.stop()
        paths[name] = rec.path
    explained = Session(paths["explained"])
    r = explained.result(0)
    assert r.target == 2 and r.target_label == eng.categories[2] and r.relevance.shape == (eng.num_patches,)
    plain = Session(paths["plain"])
    assert plain.result(0).relevance is None and export_needs_model(plain, {"mode": "relevance"})
    feed = ReplayFeed(plain, engine_for_session(plain), paused=True)
    shown = feed.prepare(feed.latest(), View(mode="relevance", target=2))
    assert shown.relevance is not None and shown.target == 2
    ref = process_frames(eng, [Frame(shown.frame, 0, 0, "t")], MapSettings(relevance=True, target=2))[0]
    np.testing.assert_allclose(shown.relevance, ref.relevance, rtol=1e-4, atol=1e-6)  # lossless raw frames
    out = tmp_path / "relevance.mp4"
    assert main(["export", str(paths["plain"]), "-o", str(out), "--mode", "relevance"]) == 0 and out.exists()


def test_the_random_floor_is_never_called_most_faithful():
    """Where the random map wins a measure no map beat chance there; it is the floor, not a candidate."""
    floor = KindScore(pointing=0.9, areas={"deletion": 0.1, "insertion": 0.9})
    roll = KindScore(pointing=0.5, areas={"deletion": 0.3, "insertion": 0.6})
    cls = KindScore(pointing=0.4, areas={"deletion": 0.4, "insertion": 0.5})
    ev = Evaluation("m", 2, 2, 1.0, {"rollout": roll, "random": floor}, (1,))
    assert most_faithful(ev).startswith("No map beat the random floor") and "rollout" not in most_faithful(ev)
    assert most_faithful(Evaluation("m", 2, 2, 1.0, {"random": floor}, (1,))).startswith("Only the random floor")
    assert most_faithful(Evaluation("m", 2, 2, 1.0, {"rollout": roll, "cls": cls}, (1,))) == (
        "Most faithful by these measures: attention rollout (best on 3 of 3).")  # no floor measured: as before


def test_no_map_is_called_faithful_where_the_random_floor_beat_it():
    """It said rollout was "best on 2 of 2" when the random floor beat every map on both measures."""
    floor = KindScore(pointing=0.9, areas={"deletion": 0.1, "insertion": 0.9})
    roll = KindScore(pointing=0.5, areas={"deletion": 0.3, "insertion": 0.6})
    cls = KindScore(pointing=0.4, areas={"deletion": 0.4, "insertion": 0.5})
    everywhere = most_faithful(Evaluation("m", 2, 2, 1.0, {"rollout": roll, "cls": cls, "random": floor}, (1,)))
    assert everywhere == ("No map beat the random floor on any measure (deletion, insertion, pointing): by these "
                          "measures none of them is faithful here.")
    no_boxes = {k: KindScore(pointing=None, areas=v.areas) for k, v in (("rollout", roll), ("random", floor))}
    assert "any measure (deletion, insertion)" in most_faithful(Evaluation("m", 2, 2, 1.0, no_boxes, (1,)))
    roll_wins_deletion = KindScore(pointing=None, areas={"deletion": 0.05, "insertion": 0.6})
    partly = {"rollout": roll_wins_deletion, "random": no_boxes["random"]}
    assert most_faithful(Evaluation("m", 2, 2, 1.0, partly, (1,))) == (
        "Most faithful by these measures: attention rollout (best on 1 of 2; the random floor beat every map "
        "on insertion).")
    tie = {"rollout": KindScore(areas={"deletion": 0.1, "insertion": 0.9}), "random": no_boxes["random"]}
    assert most_faithful(Evaluation("m", 2, 2, 1.0, tie, (1,))).startswith("No map beat")  # equal is not better


def test_evaluate_says_which_images_it_skipped_and_why(media, tmp_path, capsys):
    """A broken image among good ones was left out without a word: the table then covered fewer images
    than the folder holds. One line each, naming the file and the reason."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(media / "coffee.jpg", folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"this is no jpeg" * 20)
    (folder / "c.png").write_bytes(b"")
    args = ["evaluate", "--images", str(folder), "--model", "demo", "--kinds", "cls,random", "--cascade", "1",
            "--out", str(tmp_path / "out")]
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "skipped" in ln]
    assert lines == [
        f"live-attention: skipped {folder / 'b.jpg'}: not a picture that can be decoded (damaged, or not the "
        "format its name says)",
        f"live-attention: skipped {folder / 'c.png'}: the file is empty",
    ], captured.err
    assert "1 images" in captured.out  # the good one was evaluated


@pytest.mark.parametrize(("args", "says"), [
    (["--images", "/nonexistent/folder"], "--images /nonexistent/folder: not a folder"),  # before any model
    (["--demo", "--cascade", "9"], "this model has 4 blocks, give counts from 1 to 4"),
])
def test_evaluate_arguments_are_checked_first_in_one_line(args, says, capsys):
    assert main(["evaluate", *args]) != 0
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "Traceback" not in err
