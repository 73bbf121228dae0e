"""``live-attention render``: one output frame per input frame, clear errors for bad input."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest
from conftest import cut_clip

from live_attention.commands.cli import main


def ffprobe_frames(path) -> int:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,codec_name", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    codec, n = out.split(",")
    assert codec == "h264"
    return int(n)


@pytest.fixture(scope="module")
def clip(tmp_path_factory, media):
    return cut_clip(tmp_path_factory.mktemp("clip"), media, None, "tour12.mp4", start=2, frames=12)


def test_render_video_has_one_frame_per_input_frame(clip, tmp_path, capsys):
    out = tmp_path / "out.mp4"
    rc = main(["render", str(clip), "-o", str(out), "--model", "demo", "--mode", "rollout", "--layer", "2"])
    assert rc == 0, capsys.readouterr().err
    assert ffprobe_frames(clip) == 12
    assert ffprobe_frames(out) == 12
    err = capsys.readouterr().err
    assert "12/12" in err and "wrote" in err
    # Timestamps follow the input (30 fps).
    from live_attention.io.video import probe_frames

    t = probe_frames(out)
    assert t[0] == pytest.approx(0.0, abs=1e-3) and t[-1] == pytest.approx(11 / 30, abs=0.01)


@pytest.mark.parametrize("mode", ["attention", "heads", "entropy", "query", "flow"])
def test_render_image_modes(media, tmp_path, mode):
    out = tmp_path / f"{mode}.png"
    assert main(["render", str(media / "chelsea.jpg"), "-o", str(out), "--model", "demo", "--mode", mode]) == 0
    img = cv2.imread(str(out))
    assert img is not None and img.shape[0] == 720


def test_modes_give_different_pictures(media, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    main(["render", str(media / "coffee.jpg"), "-o", str(a), "--model", "demo", "--mode", "attention", "--layer", "1"])
    main(["render", str(media / "coffee.jpg"), "-o", str(b), "--model", "demo", "--mode", "rollout"])
    assert np.abs(cv2.imread(str(a)).astype(int) - cv2.imread(str(b)).astype(int)).mean() > 1.0


def run_err(args, capsys) -> str:
    rc = main(args)
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_render_errors(clip, media, tmp_path, capsys):
    assert "input not found" in run_err(["render", str(tmp_path / "nope.mp4"), "-o", str(tmp_path / "o.mp4")], capsys)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    assert "cannot" in run_err(["render", str(bad), "-o", str(tmp_path / "o.mp4"), "--model", "demo"], capsys)
    exists = tmp_path / "exists.mp4"
    exists.write_bytes(b"keep me")
    assert "already exists" in run_err(["render", str(clip), "-o", str(exists), "--model", "demo"], capsys)
    assert exists.read_bytes() == b"keep me"
    assert ".mp4" in run_err(["render", str(clip), "-o", str(tmp_path / "o.png"), "--model", "demo"], capsys)
    assert "does not exist" in run_err(["render", str(clip), "-o", str(tmp_path / "no" / "o.mp4")], capsys)
    assert "--layer 99" in run_err(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "r.png"),
                                    "--model", "demo", "--layer", "99"], capsys)
    cfg = tmp_path / "c.toml"
    cfg.write_text("[view]\nmode = 'zoom'\n")
    assert "view.mode" in run_err(["render", str(clip), "-o", str(tmp_path / "o.mp4"), "--config", str(cfg)], capsys)


def test_overwrite_when_asked(media, tmp_path):
    out = tmp_path / "o.png"
    out.write_bytes(b"old")
    assert main(["render", str(media / "rocket.jpg"), "-o", str(out), "--model", "demo", "--overwrite"]) == 0
    assert cv2.imread(str(out)) is not None


def test_live_errors_are_one_line(tmp_path, capsys):
    assert "not found" in run_err(["--source", str(tmp_path / "missing.mp4")], capsys)
    assert "camera" in run_err(["--source", "97"], capsys)
    err = run_err(["--source", "demo", "--model", "vit_b_16", "--weights", "imagenet", "--headless"], capsys)
    assert "not cached" in err and "--weights PATH" in err


def test_truncated_input_is_rendered_with_a_warning(media, tmp_path, capsys):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes((media / "tour.mp4").read_bytes()[:120_000])
    out = tmp_path / "o.mp4"
    assert main(["render", str(cut), "-o", str(out), "--model", "demo"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "of the 300 frames" in err
    n = ffprobe_frames(out)
    assert 0 < n < 300 and f"({n} frames)" in err


def test_several_inputs_one_output_each_and_a_failing_input_does_not_stop_the_others(clip, media, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(clip.read_bytes())
    (folder / "broken.mp4").write_bytes(b"not a video" * 100)
    out = tmp_path / "out"
    rc = main(["render", str(folder), str(media / "rocket.jpg"), "-o", str(out), "--model", "demo", "--mode", "rollout"])
    err = capsys.readouterr().err
    assert rc == 1, err  # the exit status counts the failed inputs
    assert "broken.mp4: failed:" in err and "2 of 3 inputs rendered, 1 failed" in err
    assert ffprobe_frames(out / "a.mp4") == 12 and cv2.imread(str(out / "rocket.png")) is not None
    assert not (out / "broken.mp4").exists() and not list(out.glob("*.partial.*"))
    # A folder as -o needs no extension; an existing output is refused before any work.
    assert main(["render", str(folder), "-o", str(out), "--model", "demo"]) == 2
    assert "already exists" in capsys.readouterr().err


# Batched and frame-by-frame maps differ only by fp32 rounding: a batch of 5 runs other matmul kernels
# (blocking, summation order) than a batch of 1, and which ones depends on the CPU (AVX-512 with AMX on
# Intel, AVX2 on AMD). fp32 keeps 24 bits (eps 1.2e-7); the demo model's dot products are at most a few
# hundred terms deep and 4 layers long, so each map value moves by about 1e-6 of the map's range (1.8e-6
# measured with AVX-512 and 1.4e-6 with AVX2 kernels). 1e-4 of the range is 50 times that, and still a
# thousand times smaller than any difference a wrong frame, order or setting would make.
MAP_TOLERANCE = 1e-4


def overlay_pixel_bound(view) -> int:
    """The largest pixel difference maps within MAP_TOLERANCE can make once drawn.

    The map in [0, 1] is upsampled bicubically (the kernel's absolute weights sum to at most 1.375 per
    axis, so a difference grows at most 1.375² times), scaled to 0..255 and rounded to a colormap
    index: a difference below one index step moves the index by at most one. One index moves a colour
    channel by at most the colormap's largest step (5 for inferno), blended at the view's opacity, then
    rounded once more: |round(a) - round(b)| <= ceil(|a - b|).
    """
    from live_attention.core.render import colormap_lut

    index_steps = int(255 * 1.375**2 * MAP_TOLERANCE) + 1
    lut_step = int(np.abs(np.diff(colormap_lut(view.colormap).astype(int), axis=0)).max())
    return int(np.ceil(view.opacity * lut_step * index_steps))


def test_the_batched_path_equals_frame_by_frame(clip):
    """Batches, the drawing pool and the encoder thread change nothing: the same maps (to fp32 rounding),
    the same pictures (to what that rounding can do to a pixel), in order, at the same times, as one
    frame at a time. Holds whatever the CPU (see MAP_TOLERANCE)."""
    from live_attention.core.models import load_model
    from live_attention.core.render import normalize
    from live_attention.datatypes import MapSettings, Status, View
    from live_attention.io.video import VideoReader
    from live_attention.modes import select_map
    from live_attention.offline import batch

    eng = load_model("demo", device="cpu", precision="fp32")
    view = View(mode="rollout")
    runs = []
    for size, workers, prepare in ((5, 3, batch.preprocessor(eng)), (1, 1, None)):
        out: list = []
        results: list = []
        engine_results = batch.engine_results(eng, MapSettings(), "clip")

        def keep(items, fn=engine_results, results=results):
            got = fn(items)
            results.extend(got)
            return got

        with VideoReader(clip) as r:
            n = batch.run(batch.video_items(r), keep, view, Status(model="demo"),
                          lambda rgb, t, out=out: out.append((rgb, t)), batch=size, workers=workers, prepare=prepare)
        assert n == len(out) == len(results) == 12
        runs.append((out, results))
    (a, ra), (b, rb) = runs
    assert [t for _, t in a] == [t for _, t in b] == sorted(t for _, t in a)
    assert [r.seq for r in ra] == [r.seq for r in rb] == list(range(12))
    assert [[label for label, _ in r.topk] for r in ra] == [[label for label, _ in r.topk] for r in rb]
    # The maps, as the renderer normalises them.
    map_diff = max(np.abs(normalize(select_map(x, view)[0]) - normalize(select_map(y, view)[0])).max()
                   for x, y in zip(ra, rb, strict=True))
    assert map_diff <= MAP_TOLERANCE, f"maps differ by {map_diff:.2e} of their range"
    # The pictures: what that difference can do to a pixel, no more (inferno at 0.55: 3).
    bound = overlay_pixel_bound(view)
    pixel_diff = max(np.abs(x.astype(int) - y.astype(int)).max() for (x, _), (y, _) in zip(a, b, strict=True))
    assert pixel_diff <= bound, f"pictures differ by {pixel_diff} > {bound}"


def test_inputs_with_the_same_name_get_distinct_outputs(tmp_path):
    """Three coffee.jpg from three folders, and a coffee.png: four outputs, none written twice."""
    from live_attention.offline.renderer import plan_jobs

    files = []
    for d in ("a", "b", "b2"):
        (tmp_path / d).mkdir()
        files.append(tmp_path / d / "coffee.jpg")
    files[2] = tmp_path / "b2" / "x" / "coffee.jpg"
    files[2].parent.mkdir()
    files.append(tmp_path / "a" / "coffee.png")
    for f in files:
        f.write_bytes(b"")
    jobs = plan_jobs([str(f) for f in files], str(tmp_path / "out"), overwrite=False).jobs
    names = [j.output.name for j in jobs]
    assert names == ["coffee.png", "b-coffee-jpg.png", "x-coffee-jpg.png", "a-coffee-png.png"]
    dup = plan_jobs([str(files[0])] * 3, str(tmp_path / "out2"), overwrite=False).jobs
    assert [j.output.name for j in dup] == ["coffee.png", "a-coffee-jpg.png", "a-coffee-jpg-2.png"]


# --------------------------------------------------------------------------------------------------
# A failing input among several: one line with its real reason, the others rendered (issue 15)
# --------------------------------------------------------------------------------------------------


def lines_about(err: str, path) -> list[str]:
    """The lines that name ``path`` (a progress bar names only the file)."""
    return [line for line in err.splitlines() if str(path) in line]


def test_a_truncated_input_is_one_line_with_its_reason_and_the_others_render(clip, media, tmp_path, capsys):
    """`head -c 30000 tour.mp4` opens (its header announces 300 frames) but no frame decodes: that was
    `No such file or directory (out/trunc.partial.mp4)` (a rename of a file never made), and the run stopped."""
    trunc = tmp_path / "trunc.mp4"
    trunc.write_bytes((media / "tour.mp4").read_bytes()[:30_000])
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    rc = main(["render", str(media / "coffee.jpg"), str(trunc), str(tmp_path / "empty"), str(tmp_path / "gone.mp4"),
               str(clip), "-o", str(out), "--model", "demo"])
    err = capsys.readouterr().err
    assert rc == 3, err  # the exit status counts the failed inputs
    assert lines_about(err, trunc) == [f"live-attention: {trunc}: failed: cannot decode any frame of {trunc} "
                                         "(it announces 300: truncated or damaged?)"], err
    assert lines_about(err, tmp_path / 'empty') == [f"live-attention: {tmp_path / 'empty'}: failed: no videos or images in "
                                         f"folder {tmp_path / 'empty'}"], err
    assert len(lines_about(err, tmp_path / 'gone.mp4')) == 1 and "input not found" in err
    assert "2 of 5 inputs rendered, 3 failed" in err and "Traceback" not in err and "No such file" not in err
    assert sorted(p.name for p in out.iterdir()) == ["coffee.png", "tour12.mp4"]
    assert ffprobe_frames(out / "tour12.mp4") == 12
    # One input: its error is the command's, in one line (after the progress bar's).
    assert main(["render", str(trunc), "-o", str(tmp_path / "t.mp4"), "--model", "demo"]) == 2
    err = capsys.readouterr().err
    assert lines_about(err, trunc) == [f"live-attention: error: cannot decode any frame of {trunc} (it announces "
                                       "300: truncated or damaged?)"], err
    assert not list(tmp_path.glob("t.*"))


def test_a_full_disk_fails_the_inputs_it_stops_with_the_reason_and_leaves_no_truncated_file(clip, media, tmp_path):
    """A real write error (a file size limit, as a full disk without root): FFmpeg dropped the error of
    its last buffered write, so a 12-frame render ended `wrote ... (12 frames)` with 10 on disk."""
    import resource
    import sys

    short = tmp_path / "short.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(clip), "-frames:v", "3", str(short)], check=True)
    out = tmp_path / "out"
    limit = 150_000  # the 3-frame output (~75 KB) fits, the 12-frame one (~230 KB) and the PNG (~900 KB) do not

    def cap_file_size() -> None:  # Python ignores SIGXFSZ: a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    p = subprocess.run([sys.executable, "-m", "live_attention", "render", str(clip), str(short),
                        str(media / "coffee.jpg"), "-o", str(out), "--model", "demo"],
                       capture_output=True, text=True, timeout=240, preexec_fn=cap_file_size)
    err = p.stderr
    assert p.returncode == 2, err
    assert lines_about(err, clip) == [f"live-attention: {clip}: failed: File too large "
                                          f"({out / 'tour12.partial.mp4'})"], err
    assert lines_about(err, media / 'coffee.jpg') == [f"live-attention: {media / 'coffee.jpg'}: failed: cannot write "
                                          f"{out / 'coffee.partial.png'}: File too large"], err
    assert "1 of 3 inputs rendered, 2 failed" in err and "Traceback" not in err
    assert sorted(f.name for f in out.iterdir()) == ["short.mp4"]  # no truncated file, no partial file
    assert ffprobe_frames(out / "short.mp4") == 3


def test_an_os_error_of_one_input_is_one_line_and_the_others_render(clip, media, tmp_path, capsys, monkeypatch):
    """An input that cannot be read (permissions) and an output folder turned read-only mid-run."""
    import builtins
    import errno
    from pathlib import Path

    from live_attention.io import writers
    from live_attention.offline import renderer

    locked = tmp_path / "locked.jpg"
    locked.write_bytes((media / "rocket.jpg").read_bytes())
    real_open = builtins.open

    def fake_open(path, *a, **k):
        if Path(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(renderer, "open", fake_open, raising=False)
    real_init = writers.CheckedFile.__init__

    def read_only_for_clip(self, path):
        if path.name.startswith("tour12"):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        real_init(self, path)

    monkeypatch.setattr(writers.CheckedFile, "__init__", read_only_for_clip)
    out = tmp_path / "out"
    rc = main(["render", str(locked), str(clip), str(media / "coffee.jpg"), "-o", str(out), "--model", "demo"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert lines_about(err, locked) == [f"live-attention: {locked}: failed: cannot read {locked}: Permission denied"]
    assert len(lines_about(err, clip)) == 1 and "Read-only file system" in err, err
    assert "1 of 3 inputs rendered, 2 failed" in err and "Traceback" not in err
    assert sorted(f.name for f in out.iterdir()) == ["coffee.png"]


def test_an_output_folder_under_a_file_is_one_error(clip, media, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    err = run_err(["render", str(clip), str(media / "coffee.jpg"), "-o", str(a_file / "out"), "--model", "demo"], capsys)
    assert "cannot create this folder" in err and "Not a directory" in err
    err = run_err(["render", str(clip), "-o", str(a_file / "o.mp4"), "--model", "demo"], capsys)
    assert f"{a_file} is a file, not a folder" in err
    assert a_file.read_text() == "x"


def test_one_input_into_a_folder(media, tmp_path, capsys):
    """`render photo.jpg -o out/` was refused with an extension message: out/photo.png. An existing
    folder without the slash is a folder too."""
    assert main(["render", str(media / "coffee.jpg"), "-o", f"{tmp_path / 'out'}/", "--model", "demo"]) == 0
    assert cv2.imread(str(tmp_path / "out" / "coffee.png")) is not None
    err = capsys.readouterr().err
    assert f"wrote {tmp_path / 'out' / 'coffee.png'} (1 frame)" in err and "inputs rendered" not in err
    assert main(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "out"), "--model", "demo"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee.png", "rocket.png"]
    capsys.readouterr()
    # Still one input: its error is the command's (exit 2), and an existing output is kept.
    assert "already exists" in run_err(["render", str(media / "rocket.jpg"), "-o", str(tmp_path / "out"),
                                        "--model", "demo"], capsys)
    # A name without an extension that is no folder yet: say that -o is a file, or a folder with a /.
    new = tmp_path / "new"
    assert run_err(["render", str(media / "rocket.jpg"), "-o", str(new), "--model", "demo"], capsys) == (
        f"live-attention: error: -o {new}: with one input, -o is a file such as {new}.mp4 or {new}.png, or a "
        f"folder: {new}/")


# --------------------------------------------------------------------------------------------------
# Memory: bounded whatever the options and the input (issue 15)
# --------------------------------------------------------------------------------------------------


def test_a_huge_batch_is_capped_by_the_memory_budget_and_said_once(media, tmp_path, capsys, monkeypatch):
    """`--batch 100000` held the whole video (7 GB for a minute of it). Measured with tracemalloc (the
    numpy arrays: drawn pictures, model outputs; not all of PyAV's frames): with a 16 MB budget the run
    peaks at 20 MB, as at --batch 4, where it held 95 MB of this 3 s clip before (and more the longer
    the clip). The bound allows the pipeline's fixed part (pictures being drawn, the encoder's)."""
    import tracemalloc

    from live_attention.offline import batch

    long = cut_clip(tmp_path, media, 3.0, "long.mp4")  # 90 frames of 640×480 (960×720 drawn)
    short = cut_clip(tmp_path, media, 12 / 30, "short.mp4")
    budget = 16 << 20
    monkeypatch.setattr(batch, "memory_budget", lambda: budget, raising=False)
    tracemalloc.start()
    try:
        rc = main(["render", str(long), str(short), "-o", str(tmp_path / "out"), "--model", "demo", "--batch", "100000"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    err = capsys.readouterr().err
    assert rc == 0, err
    assert ffprobe_frames(tmp_path / "out" / "long.mp4") == 90 and ffprobe_frames(tmp_path / "out" / "short.mp4") == 12
    assert peak < 3 * budget, f"peak {peak / 2**20:.0f} MB"
    notes = [line for line in err.splitlines() if "memory budget" in line]
    assert len(notes) == 1 and notes[0].startswith("live-attention: --batch 100000 would hold about "), err
    assert "(a 16 MB memory budget)" in notes[0]


def huge_image_peak(path) -> tuple[float, str]:
    """The peak memory (MB above what the imports took) of reading ``path`` in a fresh process, and
    what came of it (the shape, or the error). The peak is the process's VmHWM: ru_maxrss would start
    at this (large) process's size, which a child inherits."""
    import sys

    code = ("import re, sys\n"
            "from live_attention.io.video import read_image\n"
            "def hwm():\n    return int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
            "base = hwm()\n"
            "try:\n    img = read_image(sys.argv[1]); what = str(None if img is None else img.shape)\n"
            "except Exception as e:\n    what = f'{type(e).__name__}: {e}'\n"
            "print((hwm() - base) / 1024)\nprint(what)\n")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    peak, what = out.stdout.splitlines()[-2:]
    return float(peak), what


def write_big_png(path, w: int, h: int) -> None:
    """A valid PNG written row by row (never held whole): a gradient, so that it compresses."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + (bytes(range(256)) * (w * 3 // 256 + 1))[: w * 3]
    z = zlib.compressobj(1)
    body = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_huge_images_are_decoded_small_or_refused_in_one_line(media, tmp_path, capsys, caplog):
    """A 9000×9000 JPEG took 470 MB to read (decoded whole, then shrunk), a 12000×12000 PNG 840 MB (and a
    20000×20000 one 2.3 GB). The JPEG is decoded at half size now (61 MB, then shrunk to 4096 as
    before); the PNG, which cannot be decoded smaller, is refused from its header."""
    import sys

    from live_attention.io import video

    jpg, png = tmp_path / "big.jpg", tmp_path / "big.png"
    subprocess.run([sys.executable, "-c", "import sys; from PIL import Image; "
                    "Image.new('RGB', (9000, 9000), (200, 120, 40)).save(sys.argv[1], quality=80)", str(jpg)],
                   check=True, timeout=120)
    write_big_png(png, 12000, 12000)

    peak, what = huge_image_peak(jpg)
    side = video.MAX_IMAGE_SIDE
    assert peak < 250 and what == str((side, side, 3)), (peak, what)  # a full decode alone is 243 MB
    peak, what = huge_image_peak(png)
    assert peak < 100, peak  # a full decode alone is 432 MB
    assert what.startswith("SourceError: ") and "12000×12000 (144 MP): too large to decode" in what, what
    # The command says it in one line.
    err = run_err(["render", str(png), "-o", str(tmp_path / "o.png"), "--model", "demo"], capsys)
    assert "too large to decode" in err and "shrink it first" in err
    # The sizes come from the headers: JFIF and EXIF segments are walked past, progressive JPEGs named.
    from PIL import Image

    assert video.image_header(jpg) == ("jpeg", 9000, 9000) and video.image_header(png) == ("png", 12000, 12000)
    for name in ("coffee.jpg", "rocket.jpg"):
        h, w = cv2.imread(str(media / name)).shape[:2]
        assert video.image_header(media / name) == ("jpeg", w, h)
    exif = Image.Exif()
    exif[0x010F] = "x" * 3000  # Make: a long EXIF segment before the frame header
    Image.new("RGB", (321, 123)).save(tmp_path / "exif.jpg", exif=exif, progressive=True)
    assert video.image_header(tmp_path / "exif.jpg") == ("jpeg-progressive", 321, 123)
    # A slideshow skips it, saying why, and shows the others.
    from live_attention.io.capture import open_source

    show = tmp_path / "show"
    show.mkdir()
    png.rename(show / "a-big.png")
    (show / "b.jpg").write_bytes((media / "coffee.jpg").read_bytes())
    with caplog.at_level("WARNING"):
        src = open_source(str(show))
    assert src.read().shape == cv2.imread(str(media / "coffee.jpg")).shape
    assert any("a-big.png is 12000×12000" in r.getMessage() for r in caplog.records)
    src.release()
