"""The plugin system: entry-point discovery, disabling, broken plugins and the registry.

The centrepiece is a throwaway plugin, ``quadplug``, written into a temporary folder outside the source tree and
made visible only through ``PYTHONPATH`` plus a hand-written ``.dist-info`` folder with an ``entry_points.txt``:
exactly what ``pip install`` would leave behind, and no edit of core code. The command line then trains on its
dataset, generates its modality and evaluates the result, in subprocesses so discovery starts from scratch.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unidiff.errors import UnidiffError, UnknownNameError
from unidiff.hookspecs import hookimpl
from unidiff.plugins import DISABLE_ENV, Registry, get_plugin_manager

from helpers import write_dist

# --------------------------------------------------------------------------------------------------------------
# The throwaway plugins, as source text
# --------------------------------------------------------------------------------------------------------------

QUADPLUG = '''
"""quadplug: a four-letter modality and a toy dataset, for testing unidiff's plugin mechanism."""

import random
from pathlib import Path

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.hookspecs import hookimpl

__version__ = "0.1.0"
ALPHABET = "ACGT"


class QuadModality:
    name = "quad"
    vocab_size = 4
    default_length = 32
    file_suffix = ".txt"

    def encode(self, content):
        if not isinstance(content, str):
            raise ModalityInputError(f"quad content must be a str, got {type(content).__name__}")
        ids = []
        for i, ch in enumerate(content):
            j = ALPHABET.find(ch)
            if j < 0:
                raise ModalityInputError(f"quad content may only use the letters {ALPHABET}; "
                                         f"got {ch!r} at position {i}")
            ids.append(j)
        return ids

    def decode(self, ids):
        return "".join(ALPHABET[int(i)] for i in ids)

    def write(self, contents, path):
        Path(path).write_text("".join(c + "\\n" for c in contents))

    def options(self):
        return {}


def quad_toy(split):
    """Periodic sequences over ACGT: easy to learn, deterministic per split."""
    seeds = {"train": 0, "valid": 1}
    if split not in seeds:
        raise UnidiffError(f"quad-toy has splits train, valid; got {split!r}")
    rng = random.Random(seeds[split])
    n, length = (64, 96) if split == "train" else (8, 64)
    docs = []
    for _ in range(n):
        unit = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(2, 6)))
        docs.append((unit * length)[:length])
    return docs


@hookimpl
def register_modalities(register):
    register("quad", QuadModality)


@hookimpl
def register_datasets(register):
    register("quad-toy", quad_toy, modality="quad")


@hookimpl
def register_models(register):
    register("quad-tiny", Path(__file__).parent / "model")  # filled by the test with a trained model
'''

BROKENPLUG = '''
raise RuntimeError("brokenplug is deliberately broken at import")
'''

HOOKFAILPLUG = '''
from unidiff.hookspecs import hookimpl


@hookimpl
def register_modalities(register):
    raise RuntimeError("hookfail exploded while registering")
'''

# The same distribution and entry point as quadplug, but its module cannot be imported.
BROKEN_QUADPLUG = '''
raise ImportError("quadplug needs libquad, which is missing")
'''

CONFIG = '''
[model]
d_model = 32
n_layers = 1
n_heads = 2
max_len = 64

[data]
dataset = "quad-toy"
seq_len = 32

[train]
steps = 30
batch_size = 16
eval_every = 30
eval_windows = 8
save_every = 30
warmup = 5
out_dir = "{out_dir}"
'''


@pytest.fixture(scope="module")
def plugdirs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("plugins")
    return {
        "quad": write_dist(base / "quad", "quadplug", "0.1.0", {"quad": "quadplug"}, {"quadplug": QUADPLUG}),
        "broken": write_dist(base / "broken", "brokenplug", "0.1.0", {"broken": "brokenplug"},
                             {"brokenplug": BROKENPLUG}),
        "hookfail": write_dist(base / "hookfail", "hookfailplug", "0.1.0", {"hookfail": "hookfailplug"},
                               {"hookfailplug": HOOKFAILPLUG}),
        "brokenquad": write_dist(base / "brokenquad", "quadplug", "0.1.0", {"quad": "quadplug"},
                                 {"quadplug": BROKEN_QUADPLUG}),
    }


def cli(*args: str, path: list[Path] = (), disable: str | None = None, cwd: Path | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess:
    """Run ``python -m unidiff.cli ARGS`` with the given folders on PYTHONPATH."""
    env = dict(os.environ)
    env.pop(DISABLE_ENV, None)
    if disable is not None:
        env[DISABLE_ENV] = disable
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in path] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                                                   else []))
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "unidiff.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def show(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout ---\n{r.stdout}\n--- stderr ---\n{r.stderr}"


def plugin_lines(stdout: str) -> dict[str, str]:
    """`unidiff plugins` output -> first word of each line -> the line."""
    return {line.split()[0]: line for line in stdout.splitlines() if line.strip()}


@pytest.fixture(scope="module")
def trained(plugdirs, tmp_path_factory) -> Path:
    """Train a tiny model on quad-toy through the command line; returns the run folder."""
    work = tmp_path_factory.mktemp("quadrun")
    config = work / "quad.toml"
    config.write_text(CONFIG.format(out_dir=(work / "run").as_posix()))
    r = cli("train", str(config), "--no-progress", path=[plugdirs["quad"]], cwd=work)
    assert r.returncode == 0, show(r)
    assert "Traceback" not in r.stderr, show(r)
    return work / "run"


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return monkeypatch


@pytest.fixture
def on_path(clean_env):
    """Put plugin folders on sys.path for in-process discovery; forget their modules afterwards."""
    before = set(sys.modules)

    def add(*folders: Path):
        for f in folders:
            clean_env.syspath_prepend(str(f))

    yield add
    for name in set(sys.modules) - before:
        if name.split(".")[0] in {"quadplug", "brokenplug", "hookfailplug"}:
            del sys.modules[name]


# --------------------------------------------------------------------------------------------------------------
# 1. A plugin outside the source tree, found through its entry point
# --------------------------------------------------------------------------------------------------------------

def test_plugins_lists_external_plugin_and_builtin(plugdirs):
    r = cli("plugins", path=[plugdirs["quad"]])
    assert r.returncode == 0, show(r)
    lines = plugin_lines(r.stdout)
    assert "quad" in lines, show(r)
    assert re.search(r"\(quadplug 0\.1\.0\)", lines["quad"]), lines["quad"]
    assert re.search(r"modalities: quad\b", lines["quad"]), lines["quad"]
    assert "datasets: quad-toy" in lines["quad"], lines["quad"]
    assert "text" in lines and "modalities: text" in lines["text"], show(r)
    assert "BROKEN" not in r.stdout


def test_plugin_is_not_visible_without_its_entry_point():
    """Control: without the folder on PYTHONPATH there is no quad plugin (so the test above is not vacuous)."""
    r = cli("plugins")
    assert r.returncode == 0, show(r)
    assert "quad" not in plugin_lines(r.stdout)
    assert "text" in plugin_lines(r.stdout)


def test_train_on_plugin_dataset_writes_model(trained):
    model = trained / "model"
    assert (model / "model.safetensors").is_file()
    config = json.loads((model / "config.json").read_text())
    assert list(config["modalities"]) == ["quad"]
    record = config["modalities"]["quad"]
    assert record["plugin"] == "quad"
    assert record["package"] == "quadplug"
    assert record["version"] == "0.1.0"
    assert record["options"] == {}
    assert config["training"]["data"]["dataset"] == "quad-toy"
    assert config["figures"]["step"] == 30
    bits = config["figures"]["eval_bits_per_token"]["quad"]
    assert math.isfinite(bits) and bits > 0


def test_generate_plugin_modality(plugdirs, trained, tmp_path):
    r = cli("generate", "--model", str(trained / "model"), "--num", "3", "--length", "20", "--steps", "5",
            "--seed", "1", path=[plugdirs["quad"]], cwd=tmp_path)
    assert r.returncode == 0, show(r)
    lines = r.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("===== sample")]
    assert len(headers) == 3, show(r)
    samples = ["".join(lines[a + 1:b]) for a, b in zip(headers, headers[1:] + [len(lines)])]
    for s in samples:
        assert len(s) == 20, samples
        assert set(s) <= set("ACGT"), samples
    assert "NFE" in r.stderr, show(r)

    out = tmp_path / "samples" / "quad.txt"
    r = cli("generate", "--model", str(trained / "model"), "--num", "3", "--length", "20", "--steps", "5",
            "--seed", "1", "--out", str(out), path=[plugdirs["quad"]], cwd=tmp_path)
    assert r.returncode == 0, show(r)
    assert r.stdout == "", show(r)
    written = out.read_text().splitlines()
    assert written == samples  # same seed, same samples, in the plugin's own file format


def test_generate_rejects_bad_letter_with_one_line(plugdirs, trained):
    """The plugin's ModalityInputError reaches the user as one line naming the letter and its position."""
    r = cli("generate", "--model", str(trained / "model"), "--prompt", "ACGX", "--length", "4", "--steps", "2",
            path=[plugdirs["quad"]])
    assert r.returncode == 2, show(r)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("unidiff: error:"), show(r)
    assert "'X'" in err[0] and "position 3" in err[0], err[0]


def test_eval_plugin_model(plugdirs, trained):
    r = cli("eval", "--model", str(trained / "model"), path=[plugdirs["quad"]])
    assert r.returncode == 0, show(r)
    assert "quad-toy/valid" in r.stdout, show(r)
    m = re.search(r"quad: (\S+) bits/token", r.stdout)
    assert m, show(r)
    bits = float(m.group(1))
    assert math.isfinite(bits) and bits > 0, bits


# --------------------------------------------------------------------------------------------------------------
# 2. Disabling a plugin
# --------------------------------------------------------------------------------------------------------------

def test_disabled_plugin_is_not_listed(plugdirs):
    r = cli("plugins", path=[plugdirs["quad"]], disable="quad")
    assert r.returncode == 0, show(r)
    lines = plugin_lines(r.stdout)
    assert "quad" not in lines and "quad-toy" not in r.stdout, show(r)
    assert "text" in lines, show(r)


def test_model_of_disabled_plugin_fails_with_one_line(plugdirs, trained):
    r = cli("generate", "--model", str(trained / "model"), "--length", "8", "--steps", "2",
            path=[plugdirs["quad"]], disable=" quad , other")
    assert r.returncode == 2, show(r)
    assert "Traceback" not in r.stderr, show(r)
    assert r.stdout == "", show(r)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1, show(r)
    assert err[0].startswith("unidiff: error:"), err[0]
    assert "'quad'" in err[0] and "quadplug" in err[0], err[0]
    assert DISABLE_ENV in err[0], err[0]  # it says how to fix it


def test_disable_builtin_in_process(clean_env):
    assert "text" in Registry().names("modalities")  # control
    clean_env.setenv(DISABLE_ENV, "text")
    reg = Registry()
    assert "text" not in reg.names("modalities")
    assert "text" not in reg.info
    assert {"ancestral", "confidence"} <= set(reg.names("policies"))  # core hooks are unaffected
    with pytest.raises(UnknownNameError) as exc:
        reg.modality("text")
    msg = str(exc.value)
    assert msg.startswith("unknown modality 'text'; known modalit"), msg
    assert exc.value.known == reg.names("modalities")
    assert DISABLE_ENV in msg, msg


def test_disable_lists_known_modalities(on_path, plugdirs, clean_env):
    """With quad installed and the built-in modalities disabled, the error lists the one that is still known."""
    on_path(plugdirs["quad"])
    clean_env.setenv(DISABLE_ENV, "text,dna,code,image")
    reg = Registry()
    assert reg.names("modalities") == ["quad"]
    with pytest.raises(UnknownNameError, match=r"known modalit\w*: quad"):
        reg.modality("text")


# --------------------------------------------------------------------------------------------------------------
# 3. Broken plugins
# --------------------------------------------------------------------------------------------------------------

def test_broken_plugins_are_reported_by_cli(plugdirs):
    r = cli("plugins", path=[plugdirs["quad"], plugdirs["broken"], plugdirs["hookfail"]])
    assert r.returncode == 0, show(r)
    assert "Traceback" not in r.stderr, show(r)
    broken = [line for line in r.stdout.splitlines() if "BROKEN" in line]
    assert any(line.startswith("broken ") and "RuntimeError" in line and "deliberately broken" in line
               for line in broken), show(r)
    assert any(line.startswith("hookfail ") and "register_modalities" in line and "hookfail exploded" in line
               for line in broken), show(r)
    lines = plugin_lines(r.stdout)
    assert "modalities: text" in lines["text"], show(r)
    assert "modalities: quad" in lines["quad"], show(r)


def test_broken_plugin_in_process(on_path, plugdirs):
    on_path(plugdirs["broken"])
    with pytest.warns(UserWarning, match="'broken'.*deliberately broken"):
        reg = Registry()
    assert "broken" in reg.broken and "RuntimeError" in reg.broken["broken"]
    assert "broken" not in reg.info
    assert "text" in reg.names("modalities")  # the others still load
    with pytest.raises(UnknownNameError) as exc:
        reg.modality("nonexistent")
    msg = str(exc.value)
    assert "'nonexistent'" in msg and "text" in msg, msg
    assert "broken" in msg and "deliberately broken" in msg, msg


def test_disabling_a_broken_plugin_silences_it(on_path, plugdirs, clean_env):
    on_path(plugdirs["broken"], plugdirs["hookfail"])
    clean_env.setenv(DISABLE_ENV, "broken,hookfail")
    reg = Registry()
    assert reg.broken == {}
    assert "broken" not in reg.info and "hookfail" not in reg.info


def test_hook_that_raises_is_reported(clean_env):
    class Exploding:
        @hookimpl
        def register_modalities(self, register):
            register("halfway", object)
            raise RuntimeError("boom in hook")

    pm = get_plugin_manager()
    pm.register(Exploding(), name="exploding")
    with pytest.warns(UserWarning, match="exploding"):
        reg = Registry(pm)
    assert "exploding" in reg.broken
    assert "register_modalities" in reg.broken["exploding"] and "boom in hook" in reg.broken["exploding"]
    assert "text" in reg.names("modalities")  # the other plugins are unaffected
    with pytest.raises(UnknownNameError, match="exploding"):
        reg.modality("nonexistent")  # and the lookup error points at it


def test_model_of_broken_plugin_names_the_import_error(plugdirs, trained):
    r = cli("generate", "--model", str(trained / "model"), "--length", "8", "--steps", "2",
            path=[plugdirs["brokenquad"]])
    assert r.returncode == 2, show(r)
    assert "Traceback" not in r.stderr, show(r)
    err = [line for line in r.stderr.splitlines() if line.startswith("unidiff: error:")]
    assert len(err) == 1, show(r)
    assert "'quad'" in err[0] and "quadplug" in err[0], err[0]
    assert "libquad" in err[0], err[0]  # the reason it failed to load


# --------------------------------------------------------------------------------------------------------------
# 4. The registry in process
# --------------------------------------------------------------------------------------------------------------

class Extra:
    """A plugin object (not a module): one modality and one policy."""

    class Mod:
        name, vocab_size, default_length, file_suffix = "extra", 3, 8, ".txt"

        def __init__(self, width: int = 1):
            self.width = width

        def encode(self, content):
            return [int(c) for c in content]

        def decode(self, ids):
            return "".join(str(i) for i in ids)

        def write(self, contents, path):
            Path(path).write_text("\n".join(contents))

        def options(self):
            return {"width": self.width}

    class Leftmost:
        name = "leftmost"

        def commit(self, ctx):
            return ctx.masked

    @hookimpl
    def register_modalities(self, register):
        register("extra", self.Mod)

    @hookimpl
    def register_policies(self, register):
        register("leftmost", self.Leftmost)


def test_plugin_manager_is_fresh_each_call(clean_env):
    pm1, pm2 = get_plugin_manager(), get_plugin_manager()
    assert pm1 is not pm2
    assert pm1.unidiff_info is not pm2.unidiff_info
    pm1.register(Extra(), name="extra")
    assert pm1.has_plugin("extra") and not pm2.has_plugin("extra")
    assert "extra" in Registry(pm1).names("modalities")
    assert "extra" not in Registry(pm2).names("modalities")
    assert "extra" not in Registry().names("modalities")
    assert not get_plugin_manager().has_plugin("extra")


def test_registered_plugin_object_provides_modality_and_policy(clean_env):
    pm = get_plugin_manager()
    pm.register(Extra(), name="extra")
    reg = Registry(pm)
    m = reg.modality("extra", width=5)
    assert isinstance(m, Extra.Mod) and m.options() == {"width": 5}
    assert reg.modality("extra").options() == {"width": 1}
    assert reg.names("modalities") == sorted(reg.names("modalities"))
    assert reg.names("policies") == ["ancestral", "confidence", "entropy", "leftmost", "margin", "random",
                                     "threshold"]
    assert reg.policy("leftmost").name == "leftmost"
    assert reg.owner[("modalities", "extra")] == "extra"
    text = reg.plugin_of("modalities", "text")
    assert text is not None and text.name == "text" and text.package == "unidiff"


def test_duplicate_modality_names_both_plugins(clean_env):
    """The later of two plugins that register one name loses it; it is reported as broken, naming both."""
    class A:
        @hookimpl
        def register_modalities(self, register):
            register("twin", Extra.Mod)

    class B(A):
        pass

    pm = get_plugin_manager()
    pm.register(A(), name="plugin_a")
    pm.register(B(), name="plugin_b")
    with pytest.warns(UserWarning, match="plugin_b"):
        reg = Registry(pm)
    assert reg.owner[("modalities", "twin")] == "plugin_a"
    assert "plugin_a" not in reg.broken
    msg = reg.broken["plugin_b"]
    assert "'twin'" in msg and "'plugin_a'" in msg and "'plugin_b'" in msg, msg
    assert f"{DISABLE_ENV}=plugin_b" in msg, msg


def test_duplicate_of_builtin_modality_loses_to_the_builtin(clean_env):
    """A third-party plugin that reuses a built-in's name loses it, whatever the order of their names, and the
    advice is to disable the newcomer, never the built-in."""
    class Impostor:
        @hookimpl
        def register_modalities(self, register):
            register("text", Extra.Mod)

    pm = get_plugin_manager()
    pm.register(Impostor(), name="aaa_impostor")  # sorts before "text"
    with pytest.warns(UserWarning, match="aaa_impostor"):
        reg = Registry(pm)
    assert reg.owner[("modalities", "text")] == "text"
    assert type(reg.modality("text")).__name__ == "TextModality"
    msg = reg.broken["aaa_impostor"]
    assert re.search(r"'text'.*already registered by plugin 'text' \(unidiff ", msg), msg
    assert f"{DISABLE_ENV}=aaa_impostor" in msg and f"{DISABLE_ENV}=text" not in msg, msg


def test_policies_and_unknown_policy(clean_env):
    reg = Registry()
    assert {"ancestral", "confidence"} <= set(reg.names("policies"))
    assert reg.policy("confidence").name == "confidence"
    assert reg.policy("ancestral").name == "ancestral"
    with pytest.raises(UnknownNameError) as exc:
        reg.policy("greedy")
    msg = str(exc.value)
    assert msg.startswith("unknown policy 'greedy'"), msg
    assert "ancestral" in msg and "confidence" in msg, msg
    assert isinstance(exc.value, KeyError) and isinstance(exc.value, UnidiffError)


def test_unknown_name_message_is_plural(clean_env):
    reg = Registry()
    with pytest.raises(UnknownNameError, match="known modalities: "):
        reg.modality("nope")
    with pytest.raises(UnknownNameError, match="known policies: "):
        reg.policy("nope")


def test_unknown_dataset_lists_known(clean_env):
    with pytest.raises(UnknownNameError, match=r"unknown dataset 'nope'; known datasets: .*shakespeare"):
        Registry().dataset("nope")


def test_two_registries_on_one_manager_do_not_duplicate_provides(clean_env):
    pm = get_plugin_manager()
    Registry(pm)
    reg = Registry(pm)
    assert reg.info["text"].provides["modalities"] == ["text"]
    assert reg.info["unidiff.policies"].provides["policies"] == ["ancestral", "confidence", "entropy", "margin",
                                                                 "random", "threshold"]


def test_plugin_ships_a_model_by_name(plugdirs, trained):
    """A model registered through register_models is found by name, like the built-in text model."""
    shutil.copytree(trained / "model", plugdirs["quad"] / "quadplug" / "model", dirs_exist_ok=True)
    r = cli("generate", "--model", "quad-tiny", "--length", "12", "--steps", "3", path=[plugdirs["quad"]])
    assert r.returncode == 0, show(r)
    assert re.fullmatch(r"[ACGT]{12}\n", r.stdout), show(r)
    assert "NFE 3 per sample" in r.stderr
    r = cli("plugins", path=[plugdirs["quad"]])
    assert "models: quad-tiny" in plugin_lines(r.stdout)["quad"]
