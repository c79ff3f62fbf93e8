"""Config files, --set overrides, their error messages, and the CLI's one-line error for a bad override."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from unidiff.training.config import Config, DataConfig, TrainConfig, load_config, parse_override
from unidiff.errors import UnidiffError
from unidiff.models.transformer import ModelConfig

ROOT = Path(__file__).resolve().parents[1]
TEXT_TOML = ROOT / "configs" / "text.toml"


# ----------------------------------------------------------------------------------------------- config files


def test_load_text_toml_matches_file():
    cfg = load_config(TEXT_TOML)
    raw = tomllib.loads(TEXT_TOML.read_text())
    assert set(raw) == {"model", "data", "train", "sample"}
    for section, values in raw.items():
        sub = getattr(cfg, section)
        for key, value in values.items():
            got = getattr(sub, key)
            assert got == value, f"{section}.{key}: {got!r} != {value!r}"
            assert type(got) is type(getattr(type(sub)(), key)), f"{section}.{key} has type {type(got)}"
    # spot checks with the literal values of configs/text.toml
    assert cfg.model == ModelConfig(d_model=256, n_layers=4, n_heads=4, mlp_ratio=4.0, max_len=256, dropout=0.0)
    assert cfg.data == DataConfig(dataset="shakespeare-titled", seq_len=256, cond_dropout=0.5, holes=2,
                                  hole_max=16)
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.min_lr_ratio) == (1500, 32, 5e-4, 0.05)
    assert (cfg.train.warmup, cfg.train.eval_every, cfg.train.eval_windows,
            cfg.train.save_every) == (100, 250, 512, 250)
    assert cfg.train.out_dir == "runs/text" and cfg.train.init == "runs/text-base/model"
    base = load_config(TEXT_TOML.with_name("text-base.toml"))  # stage 1: from scratch, plain windows
    assert base.data == DataConfig(dataset="shakespeare", seq_len=256) and base.train.init == ""
    assert (base.train.steps, base.train.lr, base.train.out_dir) == (3000, 1.5e-3, "runs/text-base")
    assert cfg.train.precision == "auto"
    # keys the file does not set keep their defaults
    assert cfg.train.progress is True
    assert cfg.train.device == "auto"
    assert cfg.data.train_split == "train" and cfg.data.eval_split == "valid"
    assert cfg.model.rope_base == 10000.0


def test_no_file_gives_defaults():
    assert load_config(None) == Config()


def test_missing_config_file_names_path(tmp_path):
    path = tmp_path / "nope" / "missing.toml"
    with pytest.raises(UnidiffError) as e:
        load_config(path)
    assert str(path) in str(e.value)
    assert "does not exist" in str(e.value)


def test_invalid_toml_is_a_user_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model\nd_model = 3\n")
    with pytest.raises(UnidiffError, match="is not valid TOML") as e:
        load_config(path)
    assert str(path) in str(e.value)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[train]\nstepz = 3\n")
    with pytest.raises(UnidiffError, match=r"unknown config key train\.stepz; keys of \[train\] are: steps, "):
        load_config(path)


def test_unknown_section_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 3\n")
    with pytest.raises(UnidiffError, match=r"unknown config section 'optim'; sections are: model, data, train"):
        load_config(path)


def test_wrong_type_in_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[model]\nd_model = "big"\n')
    with pytest.raises(UnidiffError, match=r"config key model\.d_model takes an int; got 'big'"):
        load_config(path)


def test_int_in_file_for_float_key_becomes_float(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nmlp_ratio = 2\n[train]\nlr = 1\n")
    cfg = load_config(path)
    assert cfg.model.mlp_ratio == 2.0 and type(cfg.model.mlp_ratio) is float
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float


def test_section_that_is_not_a_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("model = 3\n")
    with pytest.raises(UnidiffError, match="model"):
        load_config(path)


# -------------------------------------------------------------------------------------------------- overrides


@pytest.mark.parametrize("text, section, key, value", [
    ("train.steps=7", "train", "steps", 7),
    ("train.lr=3e-4", "train", "lr", 3e-4),
    ("train.lr=1", "train", "lr", 1.0),  # an int for a float key is widened
    ("model.mlp_ratio=2", "model", "mlp_ratio", 2.0),
    ('data.dataset="x"', "data", "dataset", "x"),
    ("data.dataset=x", "data", "dataset", "x"),  # not TOML: falls back to the plain string
    ("train.out_dir=runs/a b", "train", "out_dir", "runs/a b"),
    ("train.precision=bf16", "train", "precision", "bf16"),
    ("train.progress=false", "train", "progress", False),
    ("train.progress=true", "train", "progress", True),
    (" train.steps = 7", "train", "steps", 7),
])
def test_set_override(text, section, key, value):
    cfg = load_config(TEXT_TOML, [text])
    got = getattr(getattr(cfg, section), key)
    assert got == value
    assert type(got) is type(value)
    # nothing else changed
    base = load_config(TEXT_TOML)
    setattr(getattr(base, section), key, value)
    assert cfg == base


def test_parse_override():
    assert parse_override("train.steps=7") == ("train", "steps", 7)
    assert parse_override("train.lr=3e-4") == ("train", "lr", 3e-4)
    assert parse_override("data.dataset=a=b") == ("data", "dataset", "a=b")  # split on the first '='
    assert parse_override('data.dataset=""') == ("data", "dataset", "")


def test_later_override_wins_and_defaults_apply_without_file():
    cfg = load_config(None, ["train.steps=7", "train.steps=9", "model.d_model=64"])
    assert cfg.train.steps == 9
    assert cfg.model.d_model == 64
    assert cfg.data == DataConfig()


@pytest.mark.parametrize("text, needles", [
    ("nosuch.steps=1", ["unknown config section 'nosuch'", "sections are: model, data, train"]),
    ("train.nosuch=1", ["unknown config key train.nosuch", "keys of [train] are:", "steps", "batch_size", "lr",
                        "out_dir", "progress"]),
    ("model.width=1", ["unknown config key model.width", "keys of [model] are: d_model, n_layers, n_heads"]),
    ("train.steps", ["--set takes section.key=value", "'train.steps'"]),
    ("trainsteps=1", ["--set takes section.key=value", "'trainsteps=1'"]),
    ("train.steps=abc", ["config key train.steps takes an int; got 'abc'"]),
    ("train.steps=7.5", ["config key train.steps takes an int; got 7.5"]),
    ("train.steps=true", ["config key train.steps takes an int; got True"]),
    ("train.progress=1", ["config key train.progress takes a bool; got 1"]),
    ("train.lr=fast", ["config key train.lr takes a float; got 'fast'"]),
    ("data.blank_runs=2", ["config key data.blank_runs is gone", "use data.holes"]),  # an older config's key
])
def test_bad_override_is_a_helpful_error(text, needles):
    with pytest.raises(UnidiffError) as e:
        load_config(TEXT_TOML, [text])
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert "\n" not in msg


def test_unknown_key_lists_every_valid_key():
    with pytest.raises(UnidiffError) as e:
        load_config(None, ["train.nosuch=1"])
    listed = str(e.value).split("are: ", 1)[1].split(", ")
    assert listed == [f.name for f in dataclasses.fields(TrainConfig)]


# ------------------------------------------------------------------------------------------------- round trip


def test_from_dict_to_dict_round_trip():
    assert Config.from_dict(Config().to_dict()) == Config()
    cfg = load_config(TEXT_TOML, ["train.steps=7", "train.progress=false", "data.seq_len=64", "model.dropout=0.1"])
    d = cfg.to_dict()
    assert Config.from_dict(d) == cfg
    assert d["train"]["steps"] == 7 and d["data"]["seq_len"] == 64 and d["model"]["dropout"] == 0.1
    assert set(d) == {"model", "data", "train", "sample"}


def test_from_dict_partial_keeps_defaults_and_validates():
    cfg = Config.from_dict({"train": {"steps": 5}})
    assert cfg.train.steps == 5
    assert cfg.train.lr == TrainConfig().lr
    assert cfg.model == ModelConfig()
    with pytest.raises(UnidiffError, match=r"unknown config key model\.bogus"):
        Config.from_dict({"model": {"bogus": 1}})
    with pytest.raises(UnidiffError, match=r"train\.steps takes an int"):
        Config.from_dict({"train": {"steps": "5"}})


# ------------------------------------------------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unidiff.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (("train", "configs/text.toml", "--set", "train.nosuch=1"), "nosuch"),
    (("train", "configs/no-such-config.toml"), "configs/no-such-config.toml"),
])
def test_cli_user_error_is_one_line_exit_2(args, needle):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("unidiff: error: ")
    assert needle in lines[0]


def test_string_key_takes_the_override_as_written():
    cfg = load_config(None, ["data.dataset=3", "train.out_dir=2024"])
    assert cfg.data.dataset == "3" and cfg.train.out_dir == "2024"


@pytest.mark.parametrize("override, needle", [
    ("model.n_heads=3", "must be a whole, even head size"),
    ("model.n_heads=256", "must be a whole, even head size"),  # head size 1
    ("train.eval_every=0", "train.eval_every must be positive"),
    ("train.batch_size=0", "train.batch_size must be positive"),
    ("train.ema=1.0", "train.ema must lie in [0, 1)"),
    ("model.dropout=-0.1", "model.dropout must lie in [0, 1)"),
    ("train.warmup=-1", "train.warmup must not be negative"),
    ("data.seq_len=512", "data.seq_len 512 exceeds model.max_len 256"),
    ("data.holes=-1", "data.holes must not be negative"),
    ("data.hole_max=0", "data.hole_max must be at least 1"),
    ("model.kind=autoregressive", "data.holes needs model.kind"),  # text.toml trains holes
])
def test_values_out_of_range_are_refused(override, needle):
    with pytest.raises(UnidiffError) as e:
        load_config("configs/text.toml", [override])
    assert needle in str(e.value)
