"""The command line as a user meets it: headless live runs, recording from the CLI, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from live_attention.commands.cli import main
from tests.conftest import cut_clip


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media):
    return cut_clip(tmp_path_factory.mktemp("clip"), media, 1, "tour1.mp4")


def test_headless_records_a_session_that_exports(clip, tmp_path):
    sessions = tmp_path / "sessions"
    env = {**os.environ, "LIVE_ATTENTION_OFFLINE": "1"}
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "live_attention", "--headless", "--source", str(clip), "--model", "demo",
         "--record", str(sessions), "--max-seconds", "20"],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert "recording saved in" in proc.stderr
    (session,) = sessions.iterdir()
    manifest = json.loads((session / "manifest.json").read_text())
    assert manifest["model"]["name"] == "demo"
    n = manifest["end"]["frames"]
    assert n > 3
    out = tmp_path / "export.mp4"
    assert main(["export", str(session), "-o", str(out), "--mode", "rollout"]) == 0
    frames = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames", "-of", "csv=p=0", str(out)], capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert int(frames) == n


def test_no_display_is_a_one_line_error(clip, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["--source", str(clip), "--model", "demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no display" in err and "--headless" in err and len(err.splitlines()) == 1


def test_replay_of_a_wrong_folder_says_so_even_without_a_display(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["replay", str(tmp_path / "nosession")]) != 0
    err = capsys.readouterr().err.strip()
    assert "no display" not in err and "nosession" in err and len(err.splitlines()) == 1


def one_line_error(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_flag_values(capsys):
    assert "count from 1" in one_line_error(["--source", "demo", "--layer", "0"], capsys)
    err = one_line_error(["--mode", "zoom"], capsys)
    assert "--mode" in err and "zoom" in err


@pytest.mark.parametrize("args, what", [
    (["--opacity", "nan"], "--opacity"),
    (["--opacity", "inf"], "--opacity"),
    (["--max-seconds", "nan"], "--max-seconds"),
    (["--max-seconds", "-1"], "--max-seconds"),
    (["render", "x.mp4", "-o", "y.mp4", "--opacity", "nan"], "--opacity"),
    (["replay", "s", "--max-seconds", "inf"], "--max-seconds"),
])
def test_nan_inf_and_negative_numbers_are_refused(args, what, capsys):
    """NaN slips through every range check: --opacity nan used to black out the picture and
    --max-seconds nan to run forever. Every float option refuses them in one line."""
    err = one_line_error(["--source", "demo", *args] if args[0].startswith("--") else args, capsys)
    assert what in err and ("finite" in err or "more than 0" in err)


def test_nan_in_a_config_file_is_refused(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[view]\nopacity = nan\n[source]\nfps = inf\n")
    err = one_line_error(["--source", "demo", "--config", str(cfg), "--headless"], capsys)
    assert "view.opacity must be a finite number" in err


def test_stale_display_is_the_same_one_line_error(clip, capsys, monkeypatch):
    """DISPLAY set to a server that does not exist used to abort with SIGABRT (a GLFW assertion)."""
    monkeypatch.setenv("DISPLAY", ":97")  # nothing listens there
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    err = one_line_error(["--source", str(clip), "--model", "demo"], capsys)
    assert "no display found" in err and ":97" in err and "--headless" in err
    env = {**os.environ, "DISPLAY": ":97", "LIVE_ATTENTION_OFFLINE": "1"}  # the real process: no abort
    proc = subprocess.run([sys.executable, "-m", "live_attention", "--source", str(clip), "--model", "demo"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2 and "no display found" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_bench_runs_and_prints_figures(capsys, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--only", "demo", "--only", "renderer", "--reps", "2", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "engine.run / plain forward, fp32" in text and "render 720p, mode heads" in text
    assert "render 720p, mode relevance" in text and "live step, attention view: 720p frame to maps on the host" in text
    assert "live step, relevance view" in text
    data = json.loads(out.read_text())
    assert data["demo.run_ratio_fp32"] > 0 and data["render.attention_ms"] > 0 and data["demo.step_attention_ms"] > 0
    assert data["demo.step_relevance_ms"] > 0
    assert "smoothing over time, 640x480, centre crop" in text and data["smooth.crop_ms"] > 0  # --smooth's cost
    assert data["smooth.full_frame_ms"] > 0


def _render_png(args: list[str], out) -> bytes:
    import cv2

    assert main(["render", *args, "-o", str(out), "--model", "demo", "--no-hud"]) == 0
    return cv2.imread(str(out)).tobytes()


def test_config_layer_n_shows_layer_n_as_the_flag_does(media, tmp_path):
    """``[view] layer = 2`` renders what ``--layer 2`` renders (it rendered layer 3), and not layer 3.
    Same process, model and image: identical pixels are expected."""
    img = str(media / "coffee.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[view]\nlayer = 2\nhead = 1\n")
    from_config = _render_png([img, "--config", str(cfg)], tmp_path / "cfg.png")
    assert from_config == _render_png([img, "--layer", "2", "--head", "1"], tmp_path / "flag.png")
    assert from_config != _render_png([img, "--layer", "3", "--head", "1"], tmp_path / "three.png")


def test_out_of_range_layer_names_the_config_key_and_file_or_the_flag(media, tmp_path, capsys):
    img = str(media / "coffee.jpg")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[view]\nlayer = 4\nhead = 9\n")  # the demo has 4 layers: 4 is fine, head 9 is not
    err = one_line_error(["render", img, "-o", str(tmp_path / "o.png"), "--model", "demo", "--config", str(cfg)],
                         capsys)
    assert f"view.head = 9 in {cfg}: demo has heads 1..4" in err and "--head" not in err, err
    cfg.write_text("[view]\nlayer = 5\n")
    err = one_line_error(["--headless", "--source", "demo", "--config", str(cfg)], capsys)
    assert f"view.layer = 5 in {cfg}: demo has layers 1..4" in err and "--layer" not in err, err
    err = one_line_error(["--headless", "--source", "demo", "--config", str(cfg), "--layer", "6"], capsys)
    assert "--layer 6: demo has layers 1..4" in err and "view.layer" not in err, err


def test_no_camera_points_to_the_demo_both_ways(capsys):
    """``make run`` without a camera said ``try --source demo``: in a checkout ``make demo`` is the way."""
    err = one_line_error(["--headless", "--source", "99"], capsys)
    assert "no camera at index 99" in err and "--source demo" in err and "make demo" in err, err


def _evil_pickle(path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(path, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)  # protocol 4: torch's safe unpickler warned about it first
    return path


def test_the_refusal_of_a_pickle_is_the_only_line_on_stderr(media, tmp_path):
    import warnings

    from live_attention.core.weights import load_weights_file
    from live_attention.errors import WeightsError

    evil = _evil_pickle(tmp_path / "evil.pth")
    env = {**os.environ, "LIVE_ATTENTION_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "live_attention", "render", str(media / "coffee.jpg"),
                           "-o", str(tmp_path / "o.png"), "--model", "demo", "--weights", str(evil)],
                          capture_output=True, text=True, timeout=120, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("live-attention: error: cannot read demo weights") and "Python objects" in lines[0]
    with warnings.catch_warnings(record=True) as caught:  # the reader every other model uses
        warnings.simplefilter("always")
        with pytest.raises(WeightsError, match="Python objects"):
            load_weights_file(evil)
    assert not caught, [str(w.message) for w in caught]


LIGHT_CASES = [
    ["--help"], ["--bogus"], ["--layer", "0"], ["--config", "/nonexistent/c.toml"],
    ["render", "--help"], ["render", "in.jpg"], ["render", "in.jpg", "-o", "o.png", "--head", "-2"],
    ["replay", "--help"], ["replay"],
    ["export", "--help"], ["export", "s", "-o", "o.mp4", "--mode", "zoom"], ["export", "s", "-o", "o.mp4", "--layer", "0"],
    ["bench", "--help"], ["bench", "--only", "nope"],
    ["evaluate", "--help"], ["evaluate"], ["evaluate", "--demo", "--cascade", "x"],
]


def test_help_and_argument_errors_load_no_heavy_library():
    """``--help`` and a bad argument took 5.5 s: torch, OpenCV, PyAV and Dear PyGui were imported first.
    Whatever the machine's load, what was imported is what tells (not a time): none of them, here."""
    code = (
        "import contextlib, io, json, sys\n"
        "from live_attention.__main__ import main\n"
        "heavy = ('torch', 'torchvision', 'cv2', 'av', 'dearpygui', 'numpy', 'PIL', 'scipy')\n"
        "out = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            rc = main(argv)\n"
        "        except SystemExit as e:\n"
        "            rc = e.code\n"
        "    out.append([argv, rc, sorted(m for m in heavy if m in sys.modules), err.getvalue()])\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(LIGHT_CASES)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for argv, rc, loaded, err in json.loads(proc.stdout):
        assert loaded == [], f"{argv} imported {loaded}"
        assert rc == (0 if "--help" in argv else 2), (argv, rc, err)
        assert rc == 0 or (len(err.strip().splitlines()) == 1 and err.startswith("live-attention: error:")), (argv, err)


def test_bench_without_a_clip_measures_the_video_parts_on_a_synthesized_one(capsys, monkeypatch):
    """A pip install has no ../shared/media/tour.mp4: the pipeline part used to be skipped. It now runs on
    a clip of the demo scene, made at the start, and says so."""
    from live_attention.commands import bench
    from live_attention.io.video import VideoReader

    made = []

    def spy(path):
        out = synthesize(path)
        with VideoReader(out) as r:
            made.append((r.size, sum(1 for _ in r)))
        return out

    synthesize = bench.synthesized_clip
    monkeypatch.setattr(bench, "test_clip", lambda: None)  # as for a pip user
    monkeypatch.setattr(bench, "synthesized_clip", spy)
    monkeypatch.setattr(bench, "SYNTH_SECONDS", 1.0)  # 10 s by default: drawing 300 scenes takes a while
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["bench", "--only", "pipeline", "--model", "demo", "--seconds", "1"]) == 0
    text = capsys.readouterr().out
    assert made == [((640, 480), 30)]
    assert "the video parts use 1 s of the demo scene" in text and "Live pipeline on demo-scene.mp4" in text, text
    assert "skipped" not in text and "inference fps" in text
