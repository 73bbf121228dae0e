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
    assert "render 720p, mode relevance" in text and "live step: 720p frame to maps on the host" in text
    data = json.loads(out.read_text())
    assert data["demo.run_ratio_fp32"] > 0 and data["render.attention_ms"] > 0 and data["demo.step_ms"] > 0
    assert "smoothing over time, 640x480, centre crop" in text and data["smooth.crop_ms"] > 0  # --smooth's cost
    assert data["smooth.full_frame_ms"] > 0
