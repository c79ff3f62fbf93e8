"""Hostile and damaged model folders (issue 20): every one is refused by name before the loader allocates what it
asks for, a loaded model is bit-identical to the saved one, and model names and paths resolve without surprises."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from helpers import Letters
from unidiff.training.checkpoint import init_weights, load_model, resolve, write_model
from unidiff.errors import CheckpointError, UnidiffError, UnknownNameError
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.modality import make_head
from unidiff.plugins import Registry
from unidiff.vocab import VocabLayout

CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=16)


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def tiny(registry: Registry, cfg: ModelConfig = CFG, seed: int = 0) -> tuple[Denoiser, dict]:
    torch.manual_seed(seed)
    text = registry.modality("text")
    layout = VocabLayout({"text": text.vocab_size})
    return Denoiser(cfg, layout, {"text": make_head(text, cfg.d_model)}).eval(), {"text": text}


@pytest.fixture(scope="module")
def base(tmp_path_factory, registry) -> Path:
    """A tiny text model folder (d_model 16, one block), never modified."""
    folder = tmp_path_factory.mktemp("base") / "model"
    folder.mkdir()
    model, modalities = tiny(registry)
    write_model(folder, model, modalities, registry, extra={"sampling": {"policy": "confidence", "temperature": 1.0}})
    return folder


@pytest.fixture
def folder(base, tmp_path) -> Path:
    dst = tmp_path / "model"
    shutil.copytree(base, dst)
    return dst


def edit_config(fn):
    def damage(folder: Path):
        config = json.loads((folder / "config.json").read_text())
        fn(config)
        (folder / "config.json").write_text(json.dumps(config))  # json writes inf as Infinity, nan as NaN
    return damage


def edit_weights(fn):
    def damage(folder: Path):
        state = load_file(str(folder / "model.safetensors"))
        fn(state)
        save_file(state, str(folder / "model.safetensors"))
    return damage


def raw_header(header: dict | bytes, data: bytes = b"", length: int | None = None):
    """Write model.safetensors by hand: an 8-byte header length, the (JSON) header, the data."""
    def damage(folder: Path):
        text = header if isinstance(header, bytes) else json.dumps(header).encode()
        (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text) if length is None else length)
                                                   + text + data)
    return damage


def set_nan(state):
    state["blocks.0.mlp.0.weight"][3, 5] = float("nan")


def set_inf(state):
    state["heads.text.weight"][0, 0] = float("-inf")


def model_key(key, value):
    return edit_config(lambda c: c["model"].update({key: value}))


BIG = {  # the three sizes from the issue that reached gigabytes, and one more the header check alone would miss
    "d_model 16384, n_layers 16": (edit_config(lambda c: c["model"].update(d_model=16384, n_layers=16, n_heads=16)),
                                   ["model.d_model = 16384", "tok_emb.weight of shape (260, 16384)", "(260, 16)"]),
    "n_layers 10**6": (model_key("n_layers", 10**6), ["model.n_layers = 1000000", "holds 1 block(s)"]),
    "layout.sizes.text 10**9": (edit_config(lambda c: c["layout"].update(sizes={"text": 10**9}, size=10**9 + 4)),
                                ["layout.size = 1000000004", "tok_emb.weight"]),
    "mlp_ratio 10**6": (model_key("mlp_ratio", 1e6), ["blocks.0.mlp.0.weight has shape (64, 16), the model's "
                                                      "(16000000, 16)"]),
}

HOSTILE = {
    **BIG,
    "format_version '1'": (edit_config(lambda c: c.update(format_version="1")), ["format_version = '1'",
                                                                                "positive integer"]),
    "n_heads 0": (model_key("n_heads", 0), ["model.n_heads = 0", "a positive integer"]),
    "n_heads -1": (model_key("n_heads", -1), ["model.n_heads = -1", "a positive integer"]),
    "n_heads 3": (model_key("n_heads", 3), ["model.n_heads = 3", "even head size"]),
    "d_model 16.0": (model_key("d_model", 16.0), ["model.d_model = 16.0", "a positive integer"]),
    "max_len true": (model_key("max_len", True), ["model.max_len = True", "a positive integer"]),
    "mlp_ratio Infinity": (model_key("mlp_ratio", float("inf")), ["model.mlp_ratio = inf", "finite"]),
    "mlp_ratio NaN": (model_key("mlp_ratio", float("nan")), ["model.mlp_ratio = nan", "finite"]),
    "dropout 1.5": (model_key("dropout", 1.5), ["model.dropout = 1.5", "[0, 1)"]),
    "rope_base -1": (model_key("rope_base", -1), ["model.rope_base = -1", "above 1"]),
    "kind 'rnn'": (model_key("kind", "rnn"), ["model.kind = 'rnn'", "'diffusion', 'autoregressive'"]),
    "unknown model key": (model_key("bogus", 1), ["unknown key model.bogus", "d_model"]),
    "model a list": (edit_config(lambda c: c.update(model=[16])), ["'model'", "[16]"]),
    "layout size a string": (edit_config(lambda c: c["layout"]["sizes"].update(text="256")),
                             ["layout.sizes.text = '256'", "a positive integer"]),
    "layout size negative": (edit_config(lambda c: c["layout"]["sizes"].update(text=-5)),
                             ["layout.sizes.text = -5", "a positive integer"]),
    "layout markers 'yes'": (edit_config(lambda c: c["layout"].update(markers="yes")),
                             ["layout.markers = 'yes'", "true or false"]),
    "layout missing": (edit_config(lambda c: c.pop("layout")), ["layout = None", "a JSON object"]),
    "sampling a string": (edit_config(lambda c: c.update(sampling="fast")), ['"sampling" entry', "'fast'"]),
    "temperature 'hot'": (edit_config(lambda c: c["sampling"].update(temperature="hot")),
                          ['"sampling" entry', "temperature", "'hot'"]),
    "temperature 1e308": (edit_config(lambda c: c["sampling"].update(temperature=1e308)),
                          ['"sampling" entry', "sampling.temperature", "1e+308"]),
    "modalities a list": (edit_config(lambda c: c.update(modalities=["text"])), ['"modalities" must be']),
    "int64 weights": (edit_weights(lambda s: s.update({"norm.weight": s["norm.weight"].long()})),
                      ["norm.weight is stored as I64"]),
    "NaN weights": (edit_weights(set_nan), ["tensor blocks.0.mlp.0.weight holds non-finite values"]),
    "-inf weights": (edit_weights(set_inf), ["tensor heads.text.weight holds non-finite values"]),
    "extra tensor": (edit_weights(lambda s: s.update(extra=torch.zeros(2))), ["unexpected tensor extra"]),
    "header claims 2**62 bytes": (raw_header({}, length=1 << 62), ["corrupt or truncated", "header claims"]),
    "header not JSON": (raw_header(b"{garbage", b"\0" * 8), ["corrupt or truncated", "not JSON"]),
    "header claims bytes the file lacks": (
        raw_header({"tok_emb.weight": {"dtype": "F32", "shape": [10**9, 16], "data_offsets": [0, 64 * 10**9]}},
                   b"\0" * 64),
        ["tensor tok_emb.weight F32[1000000000, 16] needs 64000000000 bytes"]),
    "unknown dtype": (raw_header({"tok_emb.weight": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, b"\0"),
                      ["tensor tok_emb.weight has dtype 'Q7'"]),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_folder_is_refused_by_name(folder, registry, case):
    damage, needles = HOSTILE[case]
    damage(folder)
    before = sorted((p.name, p.stat().st_size) for p in folder.iterdir())
    with pytest.raises(CheckpointError) as e:
        load_model(folder, registry)
    assert isinstance(e.value, UnidiffError)
    msg = str(e.value)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    assert str(folder) in msg  # which folder
    assert "restore" in msg or "re-train" in msg  # and what to do
    assert sorted((p.name, p.stat().st_size) for p in folder.iterdir()) == before  # loading writes nothing


MEASURE = """
import sys, traceback
from pathlib import Path
from unidiff.training.checkpoint import load_model
from unidiff.errors import CheckpointError
from unidiff.plugins import Registry

def kb(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

registry = Registry()
load_model(sys.argv[1], registry)  # a good folder first: every import and lazy table is warm
for folder in sys.argv[2:]:
    open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the present size
    rss = kb("VmRSS:")
    try:
        load_model(folder, registry)
        outcome = "loaded"
    except CheckpointError:
        outcome = "refused"
    print(outcome, kb("VmHWM:") - rss)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="peak memory is read from Linux /proc")
def test_big_hostile_sizes_are_refused_without_allocating_them(base, tmp_path):
    folders = []
    for i, (damage, _) in enumerate(BIG.values()):
        shutil.copytree(base, tmp_path / str(i))
        damage(tmp_path / str(i))
        folders.append(str(tmp_path / str(i)))
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(base), *folders], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["refused"] * len(BIG), proc.stdout
    for case, (_, growth) in zip(BIG, rows):
        assert int(growth) < 100 * 1024, f"{case}: peak memory grew by {growth} kB"


def unidiff_cli(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("UNIDIFF_DISABLE_PLUGINS", None)
    return subprocess.run([sys.executable, "-m", "unidiff.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120, cwd=cwd)


@pytest.mark.parametrize("case, model, needles", [
    ("d_model 16384, n_layers 16", "{folder}", ["model.d_model = 16384"]),
    ("NaN weights", "{folder}", ["blocks.0.mlp.0.weight holds non-finite values"]),
    ("int64 weights", "{folder}", ["norm.weight is stored as I64"]),
    ("kind 'rnn'", "{folder}", ["model.kind = 'rnn'"]),
    (None, ".", ["is not a unidiff model folder: it has no config.json"]),
    (None, "", ["empty name", "registered model", "text"]),
    (None, "/", ["/ is not a unidiff model folder"]),
])
def test_cli_refuses_in_one_line(folder, tmp_path, case, model, needles):
    if case is not None:
        HOSTILE[case][0](folder)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = unidiff_cli("generate", "--model", model.format(folder=folder), "--length", "4", cwd=cwd)
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unidiff: error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert list(cwd.iterdir()) == []


# ------------------------------------------------------------------------------------------------- what loads


def test_loaded_model_is_bit_identical_to_the_saved_one(base, registry):
    model, _ = tiny(registry)
    loaded, _, _ = load_model(base, registry)
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    mine = model.state_dict()
    assert loaded.state_dict().keys() == mine.keys()
    for k, v in loaded.state_dict().items():
        assert v.dtype == mine[k].dtype and torch.equal(v, mine[k]), k
    ids = torch.randint(4, 260, (2, 12))
    ids[:, ::3] = 1  # MASK
    mod = torch.zeros_like(ids)
    with torch.no_grad():
        assert torch.equal(loaded(ids, mod), model(ids, mod))


def test_fp16_weights_load_as_the_models_dtype(tmp_path, registry):
    model, modalities = tiny(registry)
    folder = tmp_path / "half"
    folder.mkdir()
    write_model(folder, model, modalities, registry, dtype=torch.float16)
    loaded, _, _ = load_model(folder, registry)
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, model.state_dict()[k].half().float()), k


class RopeHead(nn.Module):
    """A plugin head with a buffer computed in __init__ and kept out of the weights file (persistent=False)."""

    def __init__(self, d_model: int, vocab: int):
        super().__init__()
        self.proj = nn.Linear(d_model, vocab, bias=False)
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, vocab), persistent=False)

    def forward(self, h):
        return self.proj(h) + self.offset


class LettersWithHead(Letters):
    def make_head(self, d_model):
        return RopeHead(d_model, self.vocab_size)


def test_a_plugin_heads_non_persistent_buffer_is_rebuilt(tmp_path):
    reg = Registry()
    reg.entries["modalities"]["abc"] = (LettersWithHead, {})
    m = LettersWithHead()
    torch.manual_seed(0)
    model = Denoiser(CFG, VocabLayout({"abc": 3}), {"abc": make_head(m, CFG.d_model)}).eval()
    folder = tmp_path / "abc"
    folder.mkdir()
    write_model(folder, model, {"abc": m}, reg)
    assert "heads.abc.offset" not in load_file(str(folder / "model.safetensors"))
    loaded, _, _ = load_model(folder, reg)
    assert torch.equal(loaded.heads["abc"].offset, torch.linspace(-1.0, 1.0, 3))
    ids = torch.tensor([[4, 1, 5, 1, 6]])
    with torch.no_grad():
        assert torch.equal(loaded(ids, torch.zeros_like(ids)), model(ids, torch.zeros_like(ids)))


# ------------------------------------------------------------------------------------------------- names and paths


def test_a_registered_name_wins_over_a_folder_of_that_name(base, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(base, tmp_path / "text")
    assert resolve("text", registry) == registry.model_path("text")
    assert load_model("text", registry)[0].cfg.d_model == 256  # the shipped model
    assert resolve("./text", registry) == Path("./text")  # the explicit path form
    assert load_model("./text", registry)[0].cfg.d_model == 16
    assert load_model(tmp_path / "text", registry)[0].cfg.d_model == 16


def test_an_unregistered_name_is_a_folder_if_there_is_one(base, registry, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(base, tmp_path / "mine")
    assert resolve("mine", registry) == Path("mine")
    with pytest.raises(UnknownNameError, match="unknown model 'yours'; known models: .*text"):
        resolve("yours", registry)


@pytest.mark.parametrize("name, needles", [
    (".", ["is not a unidiff model folder: it has no config.json"]),
    ("", ["the model is an empty name", "give a registered model", "text"]),
    ("/", ["/ is not a unidiff model folder"]),
    ("./nothing", ["unknown model './nothing'", "path of a model folder"]),
])
def test_degenerate_paths_are_unidiff_errors(registry, tmp_path, monkeypatch, name, needles):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnidiffError) as e:
        load_model(name, registry)
    for needle in needles:
        assert needle in str(e.value)


@pytest.mark.parametrize("init, needles", [
    ("/", ["train.init = '/'", "/ is not a unidiff model folder"]),
    (".", ["train.init = '.'", "is not a unidiff model folder"]),
    ("runs/nothing", ["train.init = 'runs/nothing'", "text-base.toml"]),
])
def test_degenerate_train_init_is_a_checkpoint_error(registry, tmp_path, monkeypatch, init, needles):
    monkeypatch.chdir(tmp_path)
    model, _ = tiny(registry)
    with pytest.raises(CheckpointError) as e:
        init_weights(init, model, registry)
    for needle in needles:
        assert needle in str(e.value)


def test_train_init_refuses_nan_weights(folder, registry):
    HOSTILE["NaN weights"][0](folder)
    model, _ = tiny(registry, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="blocks.0.mlp.0.weight holds non-finite values"):
        init_weights(folder, model, registry)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # nothing half-copied


def test_loading_renames_nothing(base, registry, tmp_path, monkeypatch):
    """A folder left by an interrupted swap (.NAME.old) is only restored by the training run that owns it."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(base, tmp_path / ".text.old")
    shutil.copytree(base, tmp_path / ".gone.old")
    assert load_model("text", registry)[0].cfg.d_model == 256
    with pytest.raises(UnknownNameError) as e:
        load_model("./gone", registry)
    assert "interrupted" in str(e.value) and ".gone.old" in str(e.value) and "resume the training" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gone.old", ".text.old"]
