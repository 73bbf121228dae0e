"""Phone videos and photos come out upright: rotation metadata (a video's display matrix, a still's EXIF
orientation) is applied where frames are read, so every path (live file source, render, record, replay,
export) shows and reports the picture as a player would.

Every fixture is built from one asymmetric upright picture (four coloured quadrants: red top-left, green
top-right, blue bottom-left, white bottom-right, portrait). It is stored turned the other way and tagged
with the metadata that turns it back; the tests check that what comes out is the upright picture. The
eight EXIF orientations (rotations and mirrors) give eight distinct quadrant orders, so a wrong turn or a
missing mirror is seen, and the portrait shape catches a missing quarter turn.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from live_attention.commands.cli import main
from live_attention.io.capture import open_source
from live_attention.io.file_sources import ImageSource, VideoFileSource
from live_attention.io.recording import RAW, Session
from live_attention.io.video import VideoReader, matrix_orientation, read_image
from live_attention.pipeline.replay import ReplayFeed

W, H = 64, 96  # the upright picture is portrait, as a phone held upright sees it
COLOURS = {"R": (0, 0, 255), "G": (0, 255, 0), "B": (255, 0, 0), "W": (255, 255, 255)}
UPRIGHT = "RGBW"  # quadrants top-left, top-right, bottom-left, bottom-right

# EXIF orientation -> what a viewer does to the stored picture to show it (numpy, rows downwards).
TO_DISPLAY = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # upside down
    4: lambda a: a[::-1],  # mirrored top-bottom
    5: lambda a: a.transpose(1, 0, 2),  # transposed
    6: lambda a: np.rot90(a, -1),  # turned 90° clockwise: the portrait phone photo
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # transversed
    8: lambda a: np.rot90(a, 1),  # turned 90° counter-clockwise
}
INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
# The same eight as PyAV's display rotation: counter-clockwise degrees, then mirrors (its documented order).
DISPLAY_ROTATION = {1: (0, False, False), 2: (0, True, False), 3: (180, False, False), 4: (0, False, True),
                    5: (90, False, True), 6: (-90, False, False), 7: (90, True, False), 8: (90, False, False)}


def upright() -> np.ndarray:
    img = np.empty((H, W, 3), np.uint8)
    img[: H // 2, : W // 2] = COLOURS["R"]
    img[: H // 2, W // 2:] = COLOURS["G"]
    img[H // 2:, : W // 2] = COLOURS["B"]
    img[H // 2:, W // 2:] = COLOURS["W"]
    return img


def stored(orientation: int) -> np.ndarray:
    """The picture as a camera with this orientation tag stores it (so that the tag turns it upright)."""
    return np.ascontiguousarray(TO_DISPLAY[INVERSE[orientation]](upright()))


def quadrants(bgr: np.ndarray) -> str:
    """The colour at the centre of each quadrant (nearest of the four), in reading order.

    The centre patches lie 1/4 of a side away from every edge, so lossy coding (JPEG, H.264 4:2:0 chroma
    bleeding across a block or two), scaling and letterboxing cannot change the nearest colour.
    """
    h, w = bgr.shape[:2]
    out = ""
    for fy in (0.25, 0.75):
        for fx in (0.25, 0.75):
            y, x = int(h * fy), int(w * fx)
            patch = bgr[y - h // 16: y + h // 16 + 1, x - w // 16: x + w // 16 + 1].reshape(-1, 3).mean(0)
            out += min(COLOURS, key=lambda k: float(np.abs(patch - np.array(COLOURS[k])).sum()))
    return out


def assert_upright(bgr: np.ndarray | None, what: str) -> None:
    assert bgr is not None, what
    h, w = bgr.shape[:2]
    assert h > w, f"{what}: {w}x{h} is landscape, the picture is portrait"
    assert quadrants(bgr) == UPRIGHT, f"{what}: quadrants {quadrants(bgr)}, upright is {UPRIGHT}"


# ---- fixtures -------------------------------------------------------------------------------------


def exif_block(orientation: int) -> bytes:
    """An EXIF block (a TIFF header and one IFD) holding only the orientation, big-endian as phones write it."""
    ifd = struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    return b"MM\x00\x2a" + struct.pack(">I", 8) + ifd


def exif_jpeg(path: Path, orientation: int) -> Path:
    """A JPEG with an EXIF APP1 segment right after its start marker, as a camera writes it."""
    ok, jpg = cv2.imencode(".jpg", stored(orientation), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    app1 = b"Exif\x00\x00" + exif_block(orientation)
    data = jpg.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


def exif_image(path: Path, orientation: int) -> Path:
    """PNG (eXIf chunk), WebP (EXIF chunk) or TIFF (its own tag) with this orientation, through Pillow
    (a dependency of torchvision, so always installed)."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    options = {"lossless": True} if path.suffix == ".webp" else {}
    Image.fromarray(np.ascontiguousarray(stored(orientation)[..., ::-1])).save(path, exif=exif.tobytes(), **options)
    return path


def tagged_video(path: Path, orientation: int, frames: int = 6, fps: int = 10) -> Path:
    """An H.264 MP4 whose stream carries the display matrix of this orientation (PyAV writes it)."""
    pic = stored(orientation)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = pic.shape[1], pic.shape[0], "yuv420p"
        degrees, hflip, vflip = DISPLAY_ROTATION[orientation]
        s.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for i in range(frames):
            f = av.VideoFrame.from_ndarray(pic, format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def ffprobe_rotation(path: Path) -> tuple[str, str]:
    """(coded WxH, rotation of the stream's "Display Matrix" side data) as ffprobe says ("" when none)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json",
                          str(path)], capture_output=True, text=True, check=True, timeout=60).stdout
    st = json.loads(out)["streams"][0]
    rot = [str(sd.get("rotation")) for sd in st.get("side_data_list", []) if sd.get("side_data_type") == "Display Matrix"]
    return f"{st['width']}x{st['height']}", (rot[0] if rot else "")


def cli_upright(path: Path) -> np.ndarray:
    """The first frame as the ffmpeg command line shows it (it applies the display matrix): the oracle."""
    png = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "image2pipe",
                          "-vcodec", "png", "-"], capture_output=True, check=True, timeout=60).stdout
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def phone_video(tmp_path_factory) -> Path:
    """A portrait phone video: landscape frames and a display matrix of -90° (turn clockwise), made by the
    ffmpeg command line from an untagged file with ``-c copy``, as users tag files."""
    d = tmp_path_factory.mktemp("phone")
    plain = d / "plain.mp4"
    with av.open(str(plain), "w") as c:  # untagged, stored as the phone's sensor sees it
        s = c.add_stream("libx264", rate=10)
        pic = stored(6)
        s.width, s.height, s.pix_fmt = pic.shape[1], pic.shape[0], "yuv420p"
        for i in range(10):
            f = av.VideoFrame.from_ndarray(pic, format="bgr24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    out = d / "phone.mp4"
    # ffmpeg >= 6: -display_rotation (counter-clockwise degrees); older: the stream's rotate tag (5.1 writes
    # rotate=270 as the same -90° matrix). ffprobe below checks which matrix the file got.
    new = ["ffmpeg", "-v", "error", "-y", "-display_rotation", "-90", "-i", str(plain), "-c", "copy", str(out)]
    old = ["ffmpeg", "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-metadata:s:v", "rotate=270", str(out)]
    if subprocess.run(new, capture_output=True, timeout=60).returncode != 0:
        subprocess.run(old, check=True, capture_output=True, timeout=60)
    assert ffprobe_rotation(out) == (f"{H}x{W}", "-90")
    assert_upright(cli_upright(out), "ffmpeg's own view of the fixture")
    return out


@pytest.fixture(scope="module")
def phone_photo(tmp_path_factory) -> Path:
    return exif_jpeg(tmp_path_factory.mktemp("photo") / "portrait.jpg", 6)


# ---- stills ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", [".jpg", ".png", ".webp", ".tiff"])
def test_read_image_honours_every_exif_orientation(tmp_path, ext, orientation):
    p = tmp_path / f"o{orientation}{ext}"
    (exif_jpeg if ext == ".jpg" else exif_image)(p, orientation)
    from PIL import Image

    assert Image.open(p).getexif().get(0x0112) == orientation  # the fixture carries its tag
    if orientation != 1 and ext != ".tiff":  # and is stored turned: Pillow leaves an EXIF tag alone
        raw = np.asarray(Image.open(p).convert("RGB"))[..., ::-1]
        assert (raw.shape[:2], quadrants(raw)) != ((H, W), UPRIGHT)
    # (A TIFF's orientation is a tag of the TIFF itself, which libtiff, so OpenCV, already honoured.)
    assert_upright(read_image(p), f"read_image of {p.name}")


def test_sixteen_bit_png_keeps_its_scaling_when_turned(tmp_path):
    """Orientation and the 16-bit scaling (255/65535 of the full range) go together."""
    pic = stored(6).astype(np.uint16) * 128  # values up to 32640, half the 16-bit range
    p = tmp_path / "deep.png"
    ok, png = cv2.imencode(".png", pic)
    assert ok
    tiff = exif_block(6)
    chunk = struct.pack(">I", len(tiff)) + b"eXIf" + tiff + struct.pack(">I", zlib.crc32(b"eXIf" + tiff))
    data = png.tobytes()
    p.write_bytes(data[:33] + chunk + data[33:])  # after the 8-byte signature and the 25-byte IHDR chunk
    img = read_image(p)
    assert img is not None and img.dtype == np.uint8 and img.shape == (H, W, 3)
    assert int(img.max()) == round(32640 * 255 / 65535)
    assert quadrants(img * 2) == UPRIGHT


# ---- videos ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_video_reader_honours_every_display_matrix(tmp_path, orientation):
    p = tagged_video(tmp_path / f"d{orientation}.mp4", orientation)
    assert_upright(cli_upright(p), "ffmpeg's own view")  # the fixture is what players show
    with VideoReader(p) as r:
        assert r.size == (W, H)  # what every size (progress, canvas) is computed from
        frames = [img for img, _ in r]
        assert len(frames) == 6
        for i, img in enumerate(frames):
            assert_upright(img, f"frame {i}")
            assert img.flags.c_contiguous
        r.seek(0.0)
        again = r.read()
        assert again is not None
        assert_upright(again[0], "the first frame after a seek")


def test_a_scaled_or_slightly_tilted_matrix_goes_to_the_nearest_quarter_turn():
    one = 1 << 16
    c, s = round(one * np.cos(np.radians(10))), round(one * np.sin(np.radians(10)))
    assert matrix_orientation((c, -s, 0, s, c, 0, 0, 0, 1 << 30)) == 1  # 10°: as stored
    assert matrix_orientation((0, 2 * one, 0, -2 * one, 0, 0, 0, 0, 1 << 30)) == 6  # twice the size, clockwise
    assert matrix_orientation((0, 0, 0, 0, 0, 0, 0, 0, 0)) == 1  # degenerate: as stored


def test_the_size_is_known_before_reading_and_the_first_frame_is_not_lost(phone_video):
    with VideoReader(phone_video) as r:
        assert r.size == (W, H)
        times = [t for _, t in r]
    assert times == pytest.approx([i / 10 for i in range(10)])


def test_phone_video_is_upright_in_the_live_file_source(phone_video):
    src = open_source(str(phone_video))
    assert isinstance(src, VideoFileSource)
    try:
        for i in range(10):
            assert_upright(src.read(), f"live frame {i}")
    finally:
        src.release()


def test_phone_photo_is_upright_in_the_live_image_and_folder_sources(phone_photo, tmp_path):
    for spec in (phone_photo, phone_photo.parent):
        src = open_source(str(spec))
        assert isinstance(src, ImageSource)
        try:
            assert_upright(src.read(), f"live still from {spec}")
        finally:
            src.release()


def test_render_gives_portrait_upright_outputs(phone_video, phone_photo, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # Opacity 0 and no HUD: the output is the input scaled to the canvas, so its quadrants can be read.
    rc = main(["render", str(phone_video), str(phone_photo), "-o", f"{out}/", "--model", "demo",
               "--opacity", "0", "--no-hud"])
    assert rc == 0, capsys.readouterr().err
    with VideoReader(out / "phone.mp4") as r:
        assert r.size[1] >= 720 and r.size == (round(r.size[1] * W / H / 2) * 2, r.size[1])
        frames = [img for img, _ in r]
    assert len(frames) == 10
    for i, img in enumerate(frames):
        assert_upright(img, f"rendered frame {i}")
    assert ffprobe_rotation(out / "phone.mp4")[1] == ""  # written upright, nothing left to turn
    assert_upright(cv2.imread(str(out / "portrait.png"), cv2.IMREAD_COLOR), "rendered photo")


def test_a_recording_of_a_phone_video_replays_and_exports_upright(phone_video, tmp_path, capsys):
    sessions = tmp_path / "sessions"
    env = {**os.environ, "LIVE_ATTENTION_OFFLINE": "1"}
    env.pop("DISPLAY", None)
    proc = subprocess.run(
        [sys.executable, "-m", "live_attention", "--headless", "--source", str(phone_video), "--model", "demo",
         "--record", str(sessions), "--max-seconds", "30"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    (path,) = sessions.iterdir()
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["frame_size"] == [W, H]
    # The raw frames were written upright and untagged, so they are not turned a second time when read.
    assert ffprobe_rotation(path / RAW) == (f"{W}x{H}", "")
    session = Session(path)
    try:
        n = len(session)
        assert n >= 1
        for i in range(n):
            assert_upright(session.raw.get(i), f"raw frame {i}")
        feed = ReplayFeed(session, None, paused=True)
        shown = feed.latest()
        assert shown is not None
        assert_upright(shown.frame, "the replay's first frame")
    finally:
        session.close()
    out = tmp_path / "export.mp4"
    assert main(["export", str(path), "-o", str(out), "--opacity", "0", "--no-hud"]) == 0, capsys.readouterr().err
    with VideoReader(out) as r:
        assert r.size[1] > r.size[0]
        exported = [img for img, _ in r]
    assert len(exported) == n
    for i, img in enumerate(exported):
        assert_upright(img, f"exported frame {i}")
