"""Plugins are isolated from each other (issue 20, group 7): a plugin that is broken in any way is reported by name,
with its package and the reason, and every other plugin and command keeps working.

Broken plugins are throwaway distributions written into a temporary folder (a package and a ``.dist-info`` with its
entry point, as ``pip install`` leaves them) and put on ``sys.path``; the command line runs in-process through
``unidiff.cli.main``. Misbehaving ``encode``/``decode`` methods are checked through `checked_encode` and
`checked_decode`, which the engine calls instead of the plugin's methods.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from unidiff.cli import main
from unidiff.data import Segment, encode_docs, encode_row
from unidiff.errors import ModalityInputError, PluginError, UnidiffError
from unidiff.hookspecs import hookimpl
from unidiff.modality import MAX_REPR, checked_decode, checked_encode
from unidiff.plugins import DISABLE_ENV, Registry, get_plugin_manager
from unidiff.vocab import VocabLayout

from helpers import write_dist

# --------------------------------------------------------------------------------------------------------------
# The broken plugins, as source text: entry-point name -> (distribution, module source)
# --------------------------------------------------------------------------------------------------------------

GOOD_MODALITY = '''
class Mod:
    name, vocab_size, default_length, file_suffix = "{name}", 3, 4, ".txt"

    def encode(self, content):
        return ["abc".index(c) for c in content]

    def decode(self, ids):
        return "".join("abc"[i] for i in ids)

    def write(self, contents, path):
        open(path, "w").write("\\n".join(contents))

    def options(self):
        return {{}}
'''

PLUGINS = {
    # register_datasets is valid and added by pluggy before it refuses register_modalities: both must go.
    "iso_badsig": ("isobadsigplug", '''
        from unidiff.hookspecs import hookimpl


        @hookimpl
        def register_datasets(register):
            register("badsig-data", lambda split: ["abc"], modality="text")


        @hookimpl
        def register_modalities(register, colour):
            register("badsig", object)
        '''),
    "iso_exits": ("isoexitsplug", '''
        import sys

        sys.exit(3)
        '''),
    "iso_divides": ("isodividesplug", '''
        1 / 0
        '''),
    # Registers one modality and then raises: what it registered is dropped with it.
    "iso_licence": ("isolicenceplug", GOOD_MODALITY.format(name="licensed") + textwrap.dedent('''
        from unidiff.errors import UnidiffError
        from unidiff.hookspecs import hookimpl


        @hookimpl
        def register_modalities(register):
            register("licensed", Mod)
            raise UnidiffError("isolicence needs a licence key: set ISOLICENCE_KEY")
        ''')),
    # Sorts before "text" and takes its name: it loses it; its dataset, a name of its own, is kept.
    "iso_dupe": ("isodupeplug", GOOD_MODALITY.format(name="text") + textwrap.dedent('''
        from unidiff.hookspecs import hookimpl


        @hookimpl
        def register_modalities(register):
            register("text", Mod)


        @hookimpl
        def register_datasets(register):
            register("dupe-data", lambda split: ["abc"], modality="text")
        ''')),
    "iso_wrongtype": ("isowrongtypeplug", GOOD_MODALITY.format(name="fine") + textwrap.dedent('''
        from unidiff.hookspecs import hookimpl


        class Zero(Mod):
            vocab_size = 0


        class Half(Mod):
            vocab_size = 2.5


        @hookimpl
        def register_modalities(register):
            register(None, Mod)
            register("zero", Zero)
            register("half", Half)
            register("fine", Mod)


        @hookimpl
        def register_policies(register):
            register("nonepol", None)


        @hookimpl
        def register_datasets(register):
            register("nomod-data", lambda split: ["abc"])
        ''')),
    # encode returns None: a training run on its dataset must stop with one line naming it.
    "iso_garbled": ("isogarbledplug", GOOD_MODALITY.format(name="garbled") + textwrap.dedent('''
        from unidiff.hookspecs import hookimpl


        class Garbled(Mod):
            def encode(self, content):
                return None


        @hookimpl
        def register_modalities(register):
            register("garbled", Garbled)


        @hookimpl
        def register_datasets(register):
            register("garbled-data", lambda split: ["abcabcabc"] * 4, modality="garbled")
        ''')),
}

TRAIN_CONFIG = '''
[model]
d_model = 16
n_layers = 1
n_heads = 2
max_len = 16

[data]
dataset = "garbled-data"
seq_len = 8

[train]
steps = 2
batch_size = 2
out_dir = "{out_dir}"
'''


@pytest.fixture(scope="module")
def plugdir(tmp_path_factory) -> Path:
    """One folder holding every broken distribution."""
    root = tmp_path_factory.mktemp("isolation")
    for ep, (dist, source) in PLUGINS.items():
        write_dist(root, dist, "0.1.0", {ep: ep}, {ep: source})
    return root


@pytest.fixture
def installed(plugdir, monkeypatch):
    """The broken distributions on sys.path, no plugin disabled; their modules are forgotten afterwards."""
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    monkeypatch.syspath_prepend(str(plugdir))
    yield plugdir
    for name in [m for m in sys.modules if m.split(".")[0] in PLUGINS]:
        del sys.modules[name]


def registry() -> Registry:
    with pytest.warns(UserWarning):
        return Registry()


def broken_lines(stdout: str) -> dict[str, str]:
    """`unidiff plugins` output -> plugin name -> its BROKEN line."""
    return {line.split()[0]: line for line in stdout.splitlines() if "  BROKEN: " in line}


def assert_one_line_error(err: str, *names: str) -> str:
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("unidiff: error:")]
    assert len(lines) == 1, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


# --------------------------------------------------------------------------------------------------------------
# 1. Broken plugins are recorded, and the rest of the registry is whole
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("plugin, words", [
    ("iso_badsig", ["isobadsigplug 0.1.0", "could not be registered", "PluginValidationError", "colour"]),
    ("iso_exits", ["isoexitsplug 0.1.0", "failed to import", "SystemExit: 3"]),
    ("iso_divides", ["isodividesplug 0.1.0", "failed to import", "ZeroDivisionError"]),
    ("iso_licence", ["register_modalities failed", "UnidiffError", "licence key"]),
    ("iso_dupe", ["modality 'text' ignored", "already registered by plugin 'text' (unidiff ",
                  f"{DISABLE_ENV}=iso_dupe"]),
    ("iso_wrongtype", ["refused modality None", "non-empty str", "refused modality 'zero'", "got 0",
                       "refused modality 'half'", "got 2.5", "refused policy 'nonepol'", "NoneType None",
                       "refused dataset 'nomod-data'", "modality=None"]),
])
def test_broken_plugin_is_recorded_with_its_reason(installed, plugin, words):
    reason = registry().broken[plugin]
    assert "\n" not in reason, reason
    for w in words:
        assert w in reason, (w, reason)


def test_the_rest_of_the_registry_is_whole(installed):
    reg = registry()
    assert set(reg.names("modalities")) == {"code", "dna", "image", "text", "fine", "garbled"}
    assert type(reg.modality("text")).__module__ == "unidiff_text"  # the built-in kept its name
    assert reg.owner[("modalities", "text")] == "text"
    assert "text" not in reg.broken  # the newcomer is the one reported
    assert "dupe-data" in reg.names("datasets")  # the rest of a plugin that lost a name still works
    assert "badsig-data" not in reg.names("datasets")  # a plugin pluggy refused leaves no hook behind
    assert "licensed" not in reg.names("modalities")  # a hook that raised registers nothing
    assert "nonepol" not in reg.names("policies") and "nomod-data" not in reg.names("datasets")
    assert reg.info["iso_dupe"].provides == {"datasets": ["dupe-data"]}
    assert "iso_exits" not in reg.info and "iso_divides" not in reg.info and "iso_badsig" not in reg.info


def test_disabling_the_broken_plugins_silences_them(installed, monkeypatch):
    monkeypatch.setenv(DISABLE_ENV, ",".join(PLUGINS))
    reg = Registry()
    assert reg.broken == {}
    assert set(reg.names("modalities")) == {"code", "dna", "image", "text"}


def test_a_built_in_name_taken_first_is_never_advised_away(clean_pm):
    """Whatever the order of plugin names, a third-party plugin that reuses a built-in's name loses it, and the
    advice is to rename or disable the newcomer."""
    class Squatter:
        @hookimpl
        def register_policies(self, register):
            register("confidence", lambda: None)

    clean_pm.register(Squatter(), name="a_squatter")
    with pytest.warns(UserWarning, match="a_squatter"):
        reg = Registry(clean_pm)
    assert reg.owner[("policies", "confidence")] == "unidiff.policies"
    assert reg.policy("confidence").name == "confidence"
    msg = reg.broken["a_squatter"]
    assert "'unidiff.policies'" in msg and f"{DISABLE_ENV}=a_squatter" in msg, msg
    assert f"{DISABLE_ENV}=unidiff" not in msg, msg


@pytest.fixture
def clean_pm(monkeypatch):
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    return get_plugin_manager()


def test_a_hook_that_exits_is_recorded(clean_pm):
    class Exits:
        @hookimpl
        def register_modalities(self, register):
            sys.exit("no GPU, giving up")

    clean_pm.register(Exits(), name="exits")
    with pytest.warns(UserWarning, match="exits"):
        reg = Registry(clean_pm)
    assert "SystemExit: no GPU, giving up" in reg.broken["exits"]
    assert "text" in reg.names("modalities")


def test_a_factory_that_builds_a_zero_vocabulary_is_refused_naming_the_plugin(clean_pm):
    """A vocab_size set in __init__ cannot be seen at registration: it is refused when the modality is built."""
    class Lazy:
        def __init__(self):
            self.name, self.vocab_size = "lazy", 0

        def encode(self, content):
            return []

        def decode(self, ids):
            return ""

    class Plugin:
        @hookimpl
        def register_modalities(self, register):
            register("lazy", Lazy)
            register("nothing", lambda: None)

    clean_pm.register(Plugin(), name="lazyplug")
    reg = Registry(clean_pm)
    with pytest.raises(PluginError, match=r"plugin 'lazyplug' built modality 'lazy'.*vocab_size must be a positive "
                                          r"int.*got 0.*report it"):
        reg.modality("lazy")
    with pytest.raises(PluginError, match=r"plugin 'lazyplug' built modality 'nothing' as NoneType None.*no encode"):
        reg.modality("nothing")


# --------------------------------------------------------------------------------------------------------------
# 2. The command line survives them
# --------------------------------------------------------------------------------------------------------------

def test_plugins_command_lists_every_broken_plugin(installed, capsys):
    code = main(["plugins"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err, err
    broken = broken_lines(out)
    assert set(broken) == set(PLUGINS) - {"iso_garbled"}, out
    assert "SystemExit" in broken["iso_exits"] and "licence key" in broken["iso_licence"], out
    assert "colour" in broken["iso_badsig"] and "'text'" in broken["iso_dupe"], out
    listed = {line.split()[0]: line for line in out.splitlines() if "  BROKEN: " not in line}
    assert "modalities: text" in listed["text"], out
    assert "modalities: garbled" in listed["iso_garbled"], out
    # each broken plugin is also one warning line on stderr, naming its package and how to silence it
    warned = [line for line in err.splitlines() if line.startswith("unidiff: warning:")]
    assert any("isoexitsplug 0.1.0" in line and f"{DISABLE_ENV}=iso_exits" in line for line in warned), err


def test_generate_works_beside_broken_plugins(installed, capsys):
    code = main(["generate", "--model", "text", "--num", "1", "--length", "8", "--steps", "2", "--seed", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err, err
    assert out.strip() and "NFE 2" in err, (out, err)  # one sample of the built-in text model, in 2 passes


def test_training_on_a_modality_whose_encode_returns_none_is_one_line(installed, capsys, tmp_path):
    config = tmp_path / "garbled.toml"
    config.write_text(TRAIN_CONFIG.format(out_dir=(tmp_path / "run").as_posix()))
    code = main(["train", str(config), "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 2, err
    line = assert_one_line_error(err, "modality 'garbled'", "iso_garbled", "encode('abcabcabc')",
                                 "returned NoneType None", "report it to its authors")
    assert line.count("garbled") >= 2, line
    assert not (tmp_path / "run" / "model").exists()


# --------------------------------------------------------------------------------------------------------------
# 3. encode and decode are checked
# --------------------------------------------------------------------------------------------------------------

class Fake:
    """A modality whose encode returns (or raises) whatever it is given."""

    name, vocab_size, default_length, file_suffix = "fake", 4, 4, ".txt"

    def __init__(self, result=None, error: Exception | None = None):
        self.result, self.error = result, error

    def encode(self, content):
        if self.error is not None:
            raise self.error
        return self.result() if callable(self.result) else self.result

    def decode(self, ids):
        if self.error is not None:
            raise self.error
        return "".join("abcd"[i] for i in ids)

    def options(self):
        return {}


MODULE = Fake.__module__


@pytest.mark.parametrize("result, shown", [
    (None, "returned NoneType None"),
    ("abc", "returned str 'abc'"),
    (lambda: (i for i in range(3)), "returned generator <generator object"),
    ([[0, 1], [2]], "returned list [0, 1] at position 0"),
    ([0.0, 1.0], "returned float 0.0 at position 0"),
    ([1, 2.5], "returned float 2.5 at position 1"),
    ([0, True], "returned bool True at position 1"),
    ([0, 4], "returned id 4 at position 1, outside 0..3"),
    ([-1], "returned id -1 at position 0"),
    ([10 ** 30], f"returned id {10 ** 30} at position 0"),
    (torch.tensor([[0, 1]]), "returned list [0, 1] at position 0"),
    (torch.tensor([0.5]), "returned float 0.5 at position 0"),
    (torch.tensor(2), "returned int 2, not a list of ints"),
    ({0, 1}, "returned set {0, 1}, not a list of ints"),
])
def test_bad_ids_from_encode_are_the_plugins_error(result, shown):
    with pytest.raises(PluginError) as exc:
        checked_encode(Fake(result), "ab")
    msg = str(exc.value)
    assert msg.startswith(f"modality 'fake' (plugin module {MODULE}): encode('ab') "), msg
    assert shown in msg and "report it to its authors" in msg, msg


@pytest.mark.parametrize("result", [[0, 3], (1, 2), torch.tensor([1, 2]), np.array([1, 2], dtype=np.int64),
                                    [np.int64(1), 2], []])
def test_good_ids_from_encode_are_a_list_of_ints(result):
    ids = checked_encode(Fake(result), "ab")
    assert ids == [int(i) for i in result] and all(type(i) is int for i in ids)


def test_an_exception_in_encode_names_the_plugin_and_the_content():
    with pytest.raises(PluginError, match=rf"modality 'fake' \(plugin module {MODULE}\): encode\('xyz'\) raised "
                                          r"KeyError: 'x'.*ModalityInputError"):
        checked_encode(Fake(error=KeyError("x")), "xyz")


def test_the_offending_value_is_cut_short():
    with pytest.raises(PluginError) as exc:
        checked_encode(Fake(error=KeyError("z")), "z" * 100_000)
    assert "zzz..." in str(exc.value) and len(str(exc.value)) < MAX_REPR + 300, str(exc.value)
    with pytest.raises(PluginError) as exc:
        checked_encode(Fake("q" * 100_000), "ab")
    assert len(str(exc.value)) < 2 * MAX_REPR + 300, str(exc.value)


def test_the_plugins_own_user_errors_pass_through():
    error = ModalityInputError("'x' at position 0 is not a letter of abcd")
    with pytest.raises(ModalityInputError) as exc:
        checked_encode(Fake(error=error), "x")
    assert exc.value is error
    with pytest.raises(ModalityInputError) as exc:
        checked_decode(Fake(error=error), [0])
    assert exc.value is error


def test_an_exception_in_decode_names_the_plugin_and_the_ids():
    assert checked_decode(Fake(), [0, 3]) == "ad"  # control
    with pytest.raises(PluginError, match=rf"modality 'fake' \(plugin module {MODULE}\): decode\(\[7, 8\]\) raised "
                                          r"IndexError: out of range.*report it"):
        checked_decode(Fake(error=IndexError("out of range")), torch.tensor([7, 8]))


def test_encode_with_a_bad_vocab_size_is_the_plugins_error():
    bad = Fake([0])
    bad.vocab_size = 0
    with pytest.raises(PluginError, match="vocab_size must be a positive int"):
        checked_encode(bad, "a")


def test_data_encodes_through_the_checks():
    """Rows for sampling and documents for training both go through checked_encode."""
    layout = VocabLayout({"fake": 4})
    with pytest.raises(PluginError, match=r"encode\('ab'\) returned float 0.5 at position 0"):
        encode_row([Segment("fake", "ab")], layout, {"fake": Fake([0.5, 1])})
    with pytest.raises(PluginError, match=r"encode\('ab'\) raised KeyError"):
        encode_docs(["ab"], Fake(error=KeyError("a")), layout)
    row = encode_row([Segment("fake", "ab")], layout, {"fake": Fake([1, 2])})
    assert layout.to_local("fake", row.ids).tolist() == [1, 2]
    assert issubclass(PluginError, UnidiffError)  # the command line prints it as one line
