"""Atomic checkpoint folders, recovery of an interrupted swap, and loading (or refusing) model folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import unidiff.training.checkpoint as ckpt
from unidiff.training.checkpoint import atomic_dir, load_model, recover
from unidiff.fs import ensure_writable
from unidiff.training.config import Config, DataConfig, TrainConfig
from unidiff.errors import CheckpointError, UnidiffError, UnknownNameError
from unidiff.models.transformer import ModelConfig
from unidiff.plugins import Registry
from unidiff.training.train import train

import helpers

TRAIN_DOCS = helpers.TRAIN_DOCS[:2]  # the shared documents, without the one shorter than a window
EVAL_DOCS = ["All happy families are alike; each unhappy family is unhappy in its own way. Everything was in "
             "confusion in the Oblonskys' house."]


def tiny_cfg(out_dir: Path, **train_kw) -> Config:
    kw = dict(steps=6, batch_size=8, lr=3e-3, warmup=2, eval_every=3, eval_windows=4, save_every=3, seed=0,
              precision="fp32", device="cpu", progress=False, out_dir=str(out_dir))
    kw.update(train_kw)
    return Config(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=32), DataConfig(seq_len=32),
                  TrainConfig(**kw))


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry):
    """A tiny trained run: (out_dir, TrainResult)."""
    out = tmp_path_factory.mktemp("run")
    result = train(tiny_cfg(out), registry, registry.modality("text"), TRAIN_DOCS, EVAL_DOCS)
    return out, result


@pytest.fixture
def model_copy(trained, tmp_path) -> Path:
    """A private copy of the trained model/ folder that a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(trained[0] / "model", dst)
    return dst


def edit_config(folder: Path, fn) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config))


def sample_batch(model):
    text = "it was the best of times"
    ids = model.layout.to_global("text", list(text.encode()))[None, :]
    ids = ids.clone()
    ids[0, ::3] = 1  # MASK every third position
    return ids, torch.zeros_like(ids)


# ------------------------------------------------------------------------------------------------- atomic_dir


def test_atomic_dir_replaces_folder_in_one_go(tmp_path):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "a.txt").write_text("old")
    with atomic_dir(path) as tmp:
        assert tmp == tmp_path / ".ckpt.tmp"
        assert tmp.is_dir() and not any(tmp.iterdir())
        (tmp / "b.txt").write_text("new")
        # nothing is visible until the body finishes
        assert sorted(p.name for p in path.iterdir()) == ["a.txt"]
    assert sorted(p.name for p in path.iterdir()) == ["b.txt"]
    assert (path / "b.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no .ckpt.tmp, no .ckpt.old


def test_atomic_dir_creates_missing_parents(tmp_path):
    path = tmp_path / "a" / "b" / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "f").write_bytes(b"x")
    assert (path / "f").read_bytes() == b"x"
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt"]


def test_atomic_dir_clears_stale_tmp(tmp_path):
    path = tmp_path / "ckpt"
    stale = tmp_path / ".ckpt.tmp"
    stale.mkdir()
    (stale / "junk").write_text("from a crashed run")
    with atomic_dir(path) as tmp:
        assert not (tmp / "junk").exists()
        (tmp / "f").write_text("ok")
    assert sorted(p.name for p in path.iterdir()) == ["f"]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_dir_body_raises_keeps_old(tmp_path, exc):
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "a.txt").write_text("old")
    with pytest.raises(type(exc)):
        with atomic_dir(path) as tmp:
            (tmp / "a.txt").write_text("half-written")
            raise exc
    assert sorted(p.name for p in path.iterdir()) == ["a.txt"]
    assert (path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_dir_body_raises_on_new_path_leaves_nothing(tmp_path):
    path = tmp_path / "ckpt"
    with pytest.raises(ValueError):
        with atomic_dir(path) as tmp:
            (tmp / "f").write_text("x")
            raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_allows_subfolders(tmp_path):
    path = tmp_path / "ckpt"
    with atomic_dir(path) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "f").write_text("x")
    assert (path / "sub" / "f").read_text() == "x"


def test_crash_between_renames_then_recover(tmp_path, monkeypatch):
    """A crash after `path` moved to `.path.old` but before the new folder moved in: recover() restores the old."""
    path = tmp_path / "ckpt"
    path.mkdir()
    (path / "a.txt").write_text("old")
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="power cut"):
        with atomic_dir(path) as tmp:
            (tmp / "b.txt").write_text("new")
    monkeypatch.undo()
    assert calls == [("ckpt", ".ckpt.old"), (".ckpt.tmp", "ckpt")]
    assert not path.exists()
    assert (tmp_path / ".ckpt.old" / "a.txt").read_text() == "old"
    recover(path)
    assert (path / "a.txt").read_text() == "old"
    assert not (tmp_path / ".ckpt.old").exists()


def test_recover_restores_old_when_missing(tmp_path):
    path, old = tmp_path / "last", tmp_path / ".last.old"
    old.mkdir()
    (old / "f").write_text("complete")
    recover(path)
    assert (path / "f").read_text() == "complete"
    assert not old.exists()


def test_recover_leaves_existing_folder_alone(tmp_path):
    path, old = tmp_path / "last", tmp_path / ".last.old"
    path.mkdir()
    (path / "f").write_text("current")
    old.mkdir()
    (old / "f").write_text("older")
    recover(path)
    assert (path / "f").read_text() == "current"
    assert (old / "f").read_text() == "older"


def test_recover_noop_when_nothing_there(tmp_path):
    recover(tmp_path / "last")
    assert list(tmp_path.iterdir()) == []


def test_ensure_writable_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    ensure_writable(tmp_path / "new" / "dir")
    assert (tmp_path / "new" / "dir").is_dir()
    with pytest.raises(UnidiffError, match="cannot write .*: .*(not a folder|Not a directory|ENOTDIR)") as e:
        ensure_writable(blocker / "out")
    assert str(blocker / "out") in str(e.value)


# ------------------------------------------------------------------------------------------------- load_model


def test_load_model_round_trip(trained, registry):
    out, result = trained
    model, modalities, config = load_model(out / "model", registry)
    assert not model.training
    assert list(modalities) == ["text"] and modalities["text"].vocab_size == 256
    assert config["format"] == "unidiff-denoiser" and config["format_version"] == 1
    assert config["model"] == {"d_model": 32, "n_layers": 1, "n_heads": 2, "mlp_ratio": 4.0, "max_len": 32,
                               "dropout": 0.0, "rope_base": 10000.0, "kind": "diffusion",
                               "architecture": "transformer"}  # written since register_architectures
    assert config["layout"] == {"sizes": {"text": 256}, "size": 260}
    assert config["modalities"]["text"]["plugin"] == "text"
    assert config["training"] == tiny_cfg(out).to_dict()
    assert config["figures"]["step"] == 6
    assert config["figures"]["eval_bits_per_token"] == result.eval.bits_per_token
    assert model.layout == result.model.layout
    # same weights and same logits as the EMA model the run returned
    ref = result.model.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref[k]), k
    ids, mod = sample_batch(model)
    with torch.no_grad():
        assert torch.equal(model(ids, mod), result.model.eval()(ids, mod))


def test_last_folder_holds_raw_weights(trained, registry):
    out, result = trained
    raw, _, config = load_model(out / "last", registry)
    assert (out / "last" / "training_state.pt").is_file()
    assert "figures" not in config
    ema = result.model.state_dict()
    assert any(not torch.equal(v, ema[k]) for k, v in raw.state_dict().items())


def test_unknown_model_name(registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownNameError) as e:
        load_model("nosuch-model", registry)
    assert isinstance(e.value, UnidiffError) and isinstance(e.value, KeyError)
    msg = str(e.value)
    assert msg.startswith("unknown model 'nosuch-model'; known models: ")
    assert "text" in msg.split("known models: ", 1)[1]


def test_registered_model_without_checkpoint(tmp_path):
    reg = Registry()
    reg.entries["models"]["text"] = (tmp_path / "nowhere", {})
    with pytest.raises(CheckpointError, match="model 'text' is registered at .*nowhere, but no checkpoint is there"):
        load_model("text", reg)


def _garbage(folder: Path):
    (folder / "config.json").write_bytes(b"\xff\xfe\x00\x89garbage\x00\x01")


def _truncate_config(folder: Path):
    path = folder / "config.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def _empty_config(folder: Path):
    (folder / "config.json").write_text("")


def _truncate_weights(folder: Path):
    path = folder / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _wrong_shapes(folder: Path):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state["tok_emb.weight"] = torch.zeros(10, 32)
    save_file(state, str(path))


def _missing_tensor(folder: Path):
    path = folder / "model.safetensors"
    state = load_file(str(path))
    del state["norm.weight"]
    save_file(state, str(path))


def _no_weights(folder: Path):
    (folder / "model.safetensors").unlink()


def _no_config(folder: Path):
    (folder / "config.json").unlink()


def _not_a_config(folder: Path):
    (folder / "config.json").write_text("[1, 2, 3]")


def _newer_format(folder: Path):
    edit_config(folder, lambda c: c.update(format_version=99))


def _no_model_entry(folder: Path):
    edit_config(folder, lambda c: c.pop("model"))


def _unknown_model_key(folder: Path):
    edit_config(folder, lambda c: c["model"].update(bogus=1))


def _inconsistent_layout(folder: Path):
    edit_config(folder, lambda c: c["layout"]["sizes"].update(text=100))


def _other_vocab_size(folder: Path):
    """A checkpoint (config and weights alike) of a text plugin version with 100 tokens."""
    edit_config(folder, lambda c: c["layout"].update(sizes={"text": 100}, size=104))
    path = folder / "model.safetensors"
    state = load_file(str(path))
    state["tok_emb.weight"] = state["tok_emb.weight"][:104]
    state["heads.text.weight"] = state["heads.text.weight"][:100]
    save_file(state, str(path))


def _missing_plugin(folder: Path):
    def fn(c):
        rec = c["modalities"].pop("text")
        rec.update(plugin="nosuchplug", package="nosuch-pkg", version="9.9")
        c["modalities"]["nosuch"] = rec
        c["layout"]["sizes"]["nosuch"] = c["layout"]["sizes"].pop("text")
    edit_config(folder, fn)


@pytest.mark.parametrize("damage, needles", [
    (_garbage, ["config.json is corrupt or truncated", "restore it or re-train"]),
    (_truncate_config, ["config.json is corrupt or truncated"]),
    (_empty_config, ["config.json is corrupt or truncated"]),
    (_not_a_config, ["config.json is not a unidiff model config", "unidiff-denoiser"]),
    (_newer_format, ["was written by a newer unidiff (format 99)", "upgrade unidiff"]),
    (_no_config, ["is not a unidiff model folder: it has no config.json"]),
    (_no_weights, ["has no model.safetensors; the checkpoint is incomplete"]),
    (_truncate_weights, ["model.safetensors is corrupt or truncated", "restore it or re-train"]),
    (_wrong_shapes, ["model.safetensors does not fit the model its config.json describes"]),
    (_missing_tensor, ["model.safetensors does not fit the model its config.json describes"]),
    (_no_model_entry, ["config.json is missing or has a malformed entry", "'model'"]),
    (_unknown_model_key, ["config.json is missing or has a malformed entry", "bogus"]),
    (_inconsistent_layout, ["says size 260 but its ranges give 104", "inconsistent"]),
    (_other_vocab_size, ["modality 'text' now has 256 tokens but the checkpoint was trained with 100"]),
    (_missing_plugin, ["modality 'nosuch'", "plugin 'nosuchplug'", "package nosuch-pkg 9.9",
                       "pip install nosuch-pkg", "not installed or is disabled"]),
], ids=lambda x: x.__name__.strip("_") if callable(x) else None)
def test_damaged_folder_is_a_checkpoint_error(model_copy, registry, damage, needles):
    damage(model_copy)
    with pytest.raises(CheckpointError) as e:
        load_model(model_copy, registry)
    assert isinstance(e.value, UnidiffError)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    if damage not in (_missing_plugin, _inconsistent_layout, _other_vocab_size):
        assert str(model_copy) in msg  # names the folder or the file


def test_disabled_plugin_is_named(model_copy, monkeypatch):
    monkeypatch.setenv("UNIDIFF_DISABLE_PLUGINS", "text")
    with pytest.raises(CheckpointError) as e:
        load_model(model_copy, Registry())
    msg = str(e.value)
    assert "modality 'text' from plugin 'text'" in msg
    assert "UNIDIFF_DISABLE_PLUGINS" in msg


@pytest.mark.parametrize("damage, needle", [(_wrong_shapes, "tok_emb.weight"), (_missing_tensor, "norm.weight")])
def test_weight_mismatch_message_names_tensor(model_copy, registry, damage, needle):
    damage(model_copy)
    with pytest.raises(CheckpointError) as e:
        load_model(model_copy, registry)
    assert needle in str(e.value)


def _modalities_list(folder: Path):
    edit_config(folder, lambda c: c.update(modalities=["text"]))


def _modality_record_str(folder: Path):
    edit_config(folder, lambda c: c["modalities"].update(text="text"))


def _zero_vocab(folder: Path):
    edit_config(folder, lambda c: c["layout"]["sizes"].update(text=0))


def _bad_heads(folder: Path):
    edit_config(folder, lambda c: c["model"].update(n_heads=3))


@pytest.mark.parametrize("damage", [_modalities_list, _modality_record_str, _zero_vocab, _bad_heads],
                         ids=lambda f: f.__name__.strip("_"))
def test_malformed_entry_is_a_checkpoint_error(model_copy, registry, damage):
    damage(model_copy)
    with pytest.raises(CheckpointError, match="config.json"):
        load_model(model_copy, registry)


def test_a_plugin_factory_that_fails_is_named_with_its_error(model_copy, registry):
    """A factory refusing the recorded options is the plugin's error, not a malformed config.json."""
    edit_config(model_copy, lambda c: c["modalities"]["text"].update(options={"bogus": 1}))
    with pytest.raises(CheckpointError) as e:
        load_model(model_copy, registry)
    msg = str(e.value)
    assert msg.startswith("plugin 'text' (unidiff ") and "could not build modality 'text'" in msg
    assert msg.endswith("from the options this checkpoint records ({'bogus': 1}): TypeError: TextModality() takes "
                        "no arguments")
    assert "malformed" not in msg
