"""Configuration: defaults in the package, overridden by a TOML file, overridden by CLI flags.

A config is a frozen dataclass per section. Every key is validated when it is read; an unknown key or
a bad value raises :class:`ConfigError` with one line that names the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from live_attention import names
from live_attention.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The modes a config and --mode accept, in key order: the built-in ones, and any other that
# live_attention.modes.register_mode adds (the modes themselves live in live_attention/modes/).
MODES: list[str] = list(names.BUILTIN_MODES)
FUSIONS = ("mean", "max", "min")
COLORMAPS = ("inferno", "jet", "turbo", "viridis", "magma", "hot")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
MODEL_HELP = "vit_b_16 (default), vit_b_32, vit_l_16, vit_l_32, vit_h_14, timm:NAME[.TAG], hf:ORG/NAME, hf:DIR, or demo"
COMMAND_LINE = "the command line"  # the origin of values given as flags


@dataclass(frozen=True)
class ModelConfig:
    name: str = "vit_b_16"
    weights: str = "imagenet"
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0  # CPU threads for the model; 0: all cores headless, all but one with a window
    input_size: int = 0  # 0: the model's own input size
    full_frame: bool = False  # the whole frame at its aspect ratio instead of a centre crop


@dataclass(frozen=True)
class SourceConfig:
    source: str = "0"
    width: int = 1280
    height: int = 720
    fps: float = 30.0
    loop: bool = False
    slideshow_seconds: float = 3.0
    reconnect_max_s: float = 5.0


@dataclass(frozen=True)
class ViewConfig:
    """Layers and heads count as ``--layer``/``--head`` and the HUD do: from 1. ``layer`` -1 is the last
    layer; ``head`` 0 (or -1, what configs said before) is heads fused. :attr:`layer_index` and
    :attr:`head_index` are the 0-based numbers a :class:`~live_attention.datatypes.View` holds."""

    mode: str = names.ATTENTION
    layer: int = -1  # 1..layers; -1: the last layer
    head: int = 0  # 1..heads; 0: heads fused
    fusion: str = "mean"
    opacity: float = 0.55
    colormap: str = "inferno"
    residual: float = 0.5
    discard_ratio: float = 0.0
    animate_fps: float = 2.0
    entropy_seconds: float = 10.0
    target: str = ""  # the class relevance explains: a label or an index; "" = each frame's top-1
    smooth: bool = True  # maps smoothed over time, motion-compensated (--smooth, key J)

    @property
    def layer_index(self) -> int:
        """The layer as a View holds it: 0-based, -1 the last."""
        return self.layer - 1 if self.layer > 0 else -1

    @property
    def head_index(self) -> int:
        """The head as a View holds it: 0-based, -1 heads fused."""
        return self.head - 1 if self.head > 0 else -1


@dataclass(frozen=True)
class WindowConfig:
    width: int = 1280
    height: int = 800
    vsync: bool = True
    max_fps: float = 60.0
    screenshot_dir: str = "screenshots"
    show_help: bool = False


@dataclass(frozen=True)
class RecordConfig:
    dir: str = "sessions"
    crf: int = 23
    preset: str = "ultrafast"
    queue_size: int = 64
    max_lag_s: float = 0.3
    raw_codec: str = "auto"  # auto: ffv1 where it keeps up with the frames, else mjpeg (io/recorder.py)


@dataclass(frozen=True)
class CompareConfig:
    """A second model run on the same frames (``--compare``): "" for none. Precision, input size and full
    frame are the first model's; ``device`` "" is the first model's too."""

    model: str = ""
    weights: str = "imagenet"
    device: str = ""


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    record: RecordConfig = field(default_factory=RecordConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    # Where each key that was set came from (COMMAND_LINE or a file's path), so that an error found only
    # later (a layer the model does not have) names what the user must fix: the flag, or the file's key.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTION_TYPES}

    def where(self, key: str) -> str:
        """How an error names ``key`` ("view.layer") and its value: ``--layer 5`` when it was a flag,
        ``view.layer = 5 in FILE`` when a config file set it, ``view.layer = 5`` for a default."""
        section, name = key.split(".", 1)
        value = getattr(getattr(self, section), name)
        origin = self.origins.get(key)
        if origin == COMMAND_LINE:
            return f"{_FLAGS.get(key, '--' + name.replace('_', '-'))} {value}"
        return f"{key} = {value!r}" + (f" in {origin}" if origin else "")


_FLAGS = {"model.name": "--model", "source.source": "--source", "compare.model": "--compare",
          "compare.weights": "--compare-weights",
          "compare.device": "--compare-device"}  # other keys' flags: --KEY-NAME


# Allowed values: a tuple of choices, or (min, max) bounds for numbers (None = open).
_CHOICES: dict[str, tuple[str, ...] | list[str]] = {
    "model.precision": PRECISIONS,
    "view.mode": MODES,
    "view.fusion": FUSIONS,
    "view.colormap": COLORMAPS,
    "record.preset": (
        "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
    ),
    "record.raw_codec": ("auto", "ffv1", "mjpeg"),
}
_BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "model.threads": (0, 1024),
    "model.input_size": (0, 4096),
    "source.width": (16, 8192),
    "source.height": (16, 8192),
    "source.fps": (0.1, 1000),
    "source.slideshow_seconds": (0.1, 3600),
    "source.reconnect_max_s": (0.1, 600),
    "view.layer": (-1, None),  # and not 0: see _coerce
    "view.head": (-1, None),
    "view.opacity": (0.0, 1.0),
    "view.residual": (0.0, 1.0),
    "view.discard_ratio": (0.0, 0.99),
    "view.animate_fps": (0.1, 60),
    "view.entropy_seconds": (1, 600),
    "window.width": (320, 16384),
    "window.height": (240, 16384),
    "window.max_fps": (0, 1000),
    "record.crf": (0, 51),
    "record.queue_size": (1, 10000),
    "record.max_lag_s": (0.05, 10),
}

_SECTION_TYPES = {
    "model": ModelConfig,
    "source": SourceConfig,
    "view": ViewConfig,
    "window": WindowConfig,
    "record": RecordConfig,
    "compare": CompareConfig,
}


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check ``value`` against the type of ``default`` and the key's allowed values."""
    kind = type(default)
    if kind is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key} must be true or false, got {value!r}")
    elif kind in (int, float):
        what = "a whole number" if kind is int else "a number"
        if isinstance(value, str):
            try:
                value = kind(value)
            except ValueError:
                raise ConfigError(f"config key {key} must be {what}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int if kind is int else int | float):
            raise ConfigError(f"config key {key} must be {what}, got {value!r}")
        value = kind(value)
        if not math.isfinite(value):  # NaN slips through every comparison below
            raise ConfigError(f"config key {key} must be a finite number, got {value!r}")
    elif kind is str:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # e.g. source = 0 for a camera index
        if not isinstance(value, str):
            raise ConfigError(f"config key {key} must be a string, got {value!r}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise ConfigError(f"config key {key} must be one of {', '.join(_CHOICES[key])}, got {value!r}")
    if key in _BOUNDS:
        lo, hi = _BOUNDS[key]
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
            raise ConfigError(f"config key {key} must be in {rng}, got {value!r}")
    if key == "view.layer" and value == 0:  # 0 was the first layer when configs counted from 0
        raise ConfigError("config key view.layer counts from 1, as --layer and the HUD do (-1: the last layer), got 0")
    return value


def merge(base: Config, overrides: dict[str, dict[str, Any]], origin: str = "config") -> Config:
    """Apply ``{section: {key: value}}`` onto ``base``, validating every key."""
    if not isinstance(overrides, dict):
        raise ConfigError(f"{origin} must be a table of sections")
    sections = {}
    origins = dict(base.origins)
    for sec_name, values in overrides.items():
        if sec_name not in _SECTION_TYPES:
            raise ConfigError(
                f"unknown config section [{sec_name}] in {origin}: use {', '.join(_SECTION_TYPES)}"
            )
        if not isinstance(values, dict):
            raise ConfigError(f"config section [{sec_name}] in {origin} must be a table")
        current = getattr(base, sec_name)
        known = {f.name: getattr(current, f.name) for f in fields(current)}
        changes = {}
        for key, value in values.items():
            full = f"{sec_name}.{key}"
            if key not in known:
                raise ConfigError(f"unknown config key {full} in {origin}: [{sec_name}] takes {', '.join(known)}")
            try:
                changes[key] = _coerce(full, value, known[key])
            except ConfigError as exc:
                raise ConfigError(f"{exc} (from {origin})") from None
            origins[full] = origin
        sections[sec_name] = replace(current, **changes)
    return replace(base, **sections, origins=origins)


def load_config(path: str | Path | None = None, overrides: dict[str, dict[str, Any]] | None = None) -> Config:
    """Defaults, then the TOML file at ``path`` (if any), then ``overrides`` (CLI flags)."""
    cfg = Config()
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise ConfigError(f"config file not found: {p} (see configs/ for examples)")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
        cfg = merge(cfg, data, origin=str(p))
    if overrides:
        cfg = merge(cfg, {k: v for k, v in overrides.items() if v}, origin=COMMAND_LINE)
    return cfg
