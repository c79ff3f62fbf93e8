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
from unidiff.training.checkpoint import load_model
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


def probes() -> dict:
    """Per hook: what a plugin registers through it (name, object, keywords), how the registry hands it back and
    what must hold of that. A hook added to hookspecs.py without an entry here fails the test below."""
    from unidiff.models.architectures import build_transformer
    from unidiff.models.transformer import ModelConfig
    from unidiff.process import Absorbing
    from unidiff.process.schedules import Cosine, Schedule
    from unidiff.sampling.policies import Margin

    from helpers import Letters

    def rows(split):
        return [f"abc {split}"]

    return {
        "register_modalities": ("probe", Letters, {}, lambda r: r.modality("probe"),
                                lambda m: type(m) is Letters and m.vocab_size == 3),
        "register_datasets": ("probe-data", rows, {"modality": "probe"}, lambda r: r.dataset("probe-data"),
                              lambda d: d[0]("eval") == ["abc eval"] and d[1]["modality"] == "probe"),
        "register_models": ("probe-model", "/nowhere/probe", {}, lambda r: r.model_path("probe-model"),
                            lambda path: path == Path("/nowhere/probe")),
        "register_policies": ("probe-policy", Margin, {}, lambda r: r.policy("probe-policy"),
                              lambda pol: type(pol) is Margin),
        "register_schedules": ("probe-schedule", Cosine, {}, lambda r: r.schedule_factory("probe-schedule")(),
                               lambda sch: isinstance(sch, Schedule) and sch.spec == "cosine"),
        "register_processes": ("probe-process", Absorbing, {}, lambda r: r.process("probe-process"),
                               lambda proc: type(proc) is Absorbing),
        "register_architectures": ("probe-arch", build_transformer, {"config": ModelConfig},
                                   lambda r: r.architecture("probe-arch"),
                                   lambda a: a[0] is build_transformer and a[1]["config"] is ModelConfig),
        "register_commands": ("probe run", "json:dumps", {"help": "a probe"}, lambda r: r.command("probe run"),
                              lambda f: f is json.dumps),
    }


@pytest.mark.parametrize("hook", hook_names())
def test_every_hook_is_documented_and_registers_what_the_registry_hands_back(hook):
    import types

    from unidiff.hookspecs import hookimpl
    from unidiff.plugins import get_plugin_manager

    spec = getattr(hookspecs, hook)
    assert (spec.__doc__ or "").strip(), f"hook {hook} has no docstring"
    assert f"`{hook}(register)`" in (ROOT / "docs" / "architecture.md").read_text()
    name, obj, meta, fetch, holds = probes()[hook]
    pm = get_plugin_manager()
    pm.register(types.SimpleNamespace(**{hook: hookimpl(lambda register: register(name, obj, **meta))}), name="probe")
    registry = Registry(pm)
    kind = hook.removeprefix("register_")
    assert registry.owner[(kind, name)] == "probe" and "probe" not in registry.broken
    assert holds(fetch(registry))
    assert set(Registry.KINDS) == {h.removeprefix("register_") for h in hook_names()}


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
    from unidiff.training.config import load_config

    from dataclasses import asdict

    from unidiff.training.config import Config, SampleConfig

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


def test_the_architecture_table_names_every_module_of_the_tree_once():
    tree = sorted(p.relative_to(ROOT / "unidiff").as_posix() for p in (ROOT / "unidiff").rglob("*.py"))
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text[text.index("## Modules (`unidiff/`)"):text.index("## Plugins")]
    rows = re.findall(r"^\| `([^`]+\.py)` \|", table, flags=re.M)
    assert sorted(rows) == tree and len(rows) == len(set(rows))
    for module in tree:  # one concept per module, under about 600 lines (STYLE.md)
        assert len((ROOT / "unidiff" / module).read_text().splitlines()) <= 600, module
