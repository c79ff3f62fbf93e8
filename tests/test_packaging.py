"""Packaging: entry points, shipped models, the tokenizers/ folder, hook documentation, README and CI agree."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import inspect
import json
import re
from pathlib import Path

import pytest

from unidiff import hookspecs
from unidiff.checkpoint import load_model
from unidiff.plugins import GROUP, Registry

ROOT = Path(__file__).resolve().parents[1]
MAX_MODEL_BYTES = 25 * 1024 * 1024


# Built-in plugins being built that register nothing yet, so have no entry point.
IN_PROGRESS: set[str] = set()


def test_entry_points_list_every_builtin_plugin():
    builtin = sorted(p.name for p in (ROOT / "plugins").iterdir()
                     if (p / "__init__.py").is_file() and p.name not in IN_PROGRESS)
    assert builtin, "no built-in plugins found"
    declared = {ep.value for ep in md.distribution("unidiff").entry_points if ep.group == GROUP}
    assert sorted(declared) == builtin


def test_every_builtin_plugin_registers_something():
    reg = Registry()
    for ep in md.distribution("unidiff").entry_points:
        if ep.group == GROUP:
            assert ep.name in reg.info and ep.name not in reg.broken
            assert reg.info[ep.name].provides, f"plugin {ep.name} registers nothing"


def test_tokenizers_folder_is_assets_only():
    folder = ROOT / "tokenizers"
    assert folder.is_dir()
    assert not list(folder.rglob("*.py")), "tokenizers/ must hold assets only, never Python code"
    spec = importlib.util.find_spec("tokenizers")
    if spec is not None:  # Hugging Face's package (a transformers dependency), never our folder
        assert Path(spec.origin).resolve().parent != folder.resolve()


@pytest.mark.parametrize("name", Registry().names("models"))
def test_shipped_models_are_small_load_and_carry_their_figure(name):
    folder = Registry().model_path(name)
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size <= MAX_MODEL_BYTES, f"model {name} is {size / 2**20:.1f} MB"
    model, modalities, config = load_model(name)
    assert config["figures"]["eval_bits_per_token"], "a shipped model must record its measured figure"
    assert config["modalities"].keys() == modalities.keys()
    assert config["training"]["train"]["steps"] == config["figures"]["step"]  # a finished run, not a snapshot


def hook_names() -> list[str]:
    return [n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_")]


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_and_tested(hook):
    spec = getattr(hookspecs, hook)
    assert (spec.__doc__ or "").strip(), f"hook {hook} has no docstring"
    assert f"`{hook}(register)`" in (ROOT / "docs" / "architecture.md").read_text()
    tests = "".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py") if p.name != "test_packaging.py")
    assert f"def {hook}(" in tests, f"no test implements the {hook} hook"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```(?:sh|bash)\n(.+?)\n```", text, flags=re.S)


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_second():
    first, second = readme_commands()[:2]
    assert "pip install" in first and "unidiff generate" in first
    assert "pip install" in second and "pytest" in second
    ci = (ROOT / ".ci" / "run").read_text()
    assert second.strip() in ci.splitlines()


def test_package_metadata_names_the_required_dependencies():
    requires = " ".join(md.requires("unidiff"))
    for dep in ("torch", "diffusers", "transformers", "pluggy", "pillow", "safetensors"):
        assert dep in requires
    assert "pytest" in requires  # the test extra
    assert json.loads((ROOT / "plugins" / "unidiff_text" / "model" / "config.json").read_text())["format"]


def test_shipped_text_model_was_trained_by_the_shipped_config():
    from unidiff.config import load_config

    from dataclasses import asdict

    from unidiff.config import Config, SampleConfig

    config = json.loads((ROOT / "plugins" / "unidiff_text" / "model" / "config.json").read_text())
    expected = load_config(ROOT / "configs" / "text.toml").to_dict()
    # Keys added to the config after the model was trained (model.kind) read as their defaults; the progress bar
    # (train.progress) is display only.
    got = Config.from_dict(config["training"]).to_dict()
    for d in (got, expected):
        d["train"].pop("progress")
    assert got == expected
    # sampling keys added after training (sample.schedule) read as their defaults too
    assert {**asdict(SampleConfig()), **config["sampling"]} == expected["sample"]
