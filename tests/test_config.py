from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from live_attention.config import Config, load_config
from live_attention.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["default", "cpu", "gpu", "demo", "dino", "dinov2-reg"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert isinstance(cfg, Config)


def test_default_toml_documents_the_package_defaults():
    assert load_config(CONFIGS / "default.toml") == Config()


def test_default_toml_lists_every_key():
    """The README says default.toml documents every key: a key left out would still load (its default)."""
    data = tomllib.loads((CONFIGS / "default.toml").read_text(encoding="utf-8"))
    cfg = Config()
    sections = [s for s in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, s.name))]  # not origins
    assert {s.name for s in sections} == {"model", "source", "view", "window", "record", "compare"}
    missing = [f"{s.name}.{k.name}" for s in sections
               for k in dataclasses.fields(getattr(cfg, s.name)) if k.name not in data.get(s.name, {})]
    assert not missing, missing


def test_precedence_defaults_file_cli(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\nname = "vit_b_32"\nprecision = "fp32"\n[view]\nopacity = 0.3\n')
    cfg = load_config(p, {"model": {"precision": "bf16"}, "view": {"layer": 3}})
    assert cfg.model.name == "vit_b_32"  # file over default
    assert cfg.model.precision == "bf16"  # CLI over file
    assert cfg.view.opacity == 0.3 and cfg.view.layer == 3
    assert cfg.model.weights == "imagenet"  # default kept


@pytest.mark.parametrize(
    "text, match",
    [
        ('[model]\nnmae = "x"\n', r"unknown config key model.nmae .*takes name, weights"),
        ('[modle]\nname = "x"\n', r"unknown config section \[modle\]"),
        ('[view]\nmode = "zoom"\n', r"view.mode must be one of attention, rollout"),
        ("[view]\nopacity = 2.0\n", r"view.opacity must be in 0.0..1.0"),
        ('[view]\nlayer = "top"\n', r"view.layer must be a whole number"),
        ('[window]\nvsync = "maybe"\n', r"window.vsync must be true or false"),
        ("[view\nmode = 1\n", r"not valid TOML"),
        ('model = "x"\n', r"config section \[model\] .* must be a table"),
    ],
)
def test_bad_config_is_one_line_naming_key(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(p)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


def test_camera_index_as_integer(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[source]\nsource = 2\n")
    assert load_config(p).source.source == "2"


def test_config_counts_layers_and_heads_from_1_like_the_flags(tmp_path):
    """``layer = 2`` in a file is the layer ``--layer 2`` picks and the HUD calls "layer 2" (a View holds it
    0-based: 1); it used to be the third layer. Head 0 is heads fused, as ``--head 0``."""
    from live_attention.commands.args import config_overrides
    from live_attention.commands.cli import build_parser
    from live_attention.ui.controller import view_from_config

    p = tmp_path / "c.toml"
    p.write_text("[view]\nlayer = 2\nhead = 3\n")
    view = view_from_config(load_config(p))
    assert (view.layer, view.head) == (1, 2)
    flags = config_overrides(build_parser().parse_args(["--layer", "2", "--head", "3"]))
    assert view_from_config(load_config(None, flags)) == view
    fused = config_overrides(build_parser().parse_args(["--head", "0"]))
    assert view_from_config(load_config(p, fused)).head == -1
    for text in ("head = 0\n", "head = -1\n", ""):  # -1: what configs wrote for "fused" before
        p.write_text("[view]\n" + text)
        v = view_from_config(load_config(p))
        assert (v.layer, v.head) == (-1, -1)  # the last layer, heads fused


def test_a_zero_layer_in_a_config_is_refused_not_silently_the_last(tmp_path):
    """0 was the first layer when configs counted from 0: say so rather than show another layer."""
    p = tmp_path / "c.toml"
    p.write_text("[view]\nlayer = 0\n")
    with pytest.raises(ConfigError, match=r"view.layer counts from 1.*got 0 \(from .*c.toml\)"):
        load_config(p)


def test_errors_found_later_name_the_flag_or_the_config_key_and_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[view]\nlayer = 5\n")
    assert load_config(p).where("view.layer") == f"view.layer = 5 in {p}"
    assert load_config(p, {"view": {"layer": 5}}).where("view.layer") == "--layer 5"
    assert load_config(None, {"model": {"name": "demo"}}).where("model.name") == "--model demo"
    assert Config().where("view.head") == "view.head = 0"
