"""``register_architectures``: a throwaway package outside the tree registers a deliberately different backbone (an
MLP-mixer: a learned token-mixing matrix instead of attention), and the ordinary CLI trains, evaluates, samples and
reloads it with no core edit; checkpoints of the built-in transformer keep loading as they were."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from unidiff.models.architectures import build_denoiser, model_config
from unidiff.errors import PluginError, UnidiffError
from unidiff.models.transformer import ModelConfig
from unidiff.plugins import DISABLE_ENV, Registry
from unidiff.vocab import VocabLayout

from helpers import Letters, unidiff_cli, write_dist

ROOT = Path(__file__).resolve().parents[1]

MIXERPLUG = '''
from dataclasses import dataclass

import torch
from torch import nn

from unidiff.hookspecs import hookimpl


@dataclass
class MixerConfig:
    architecture: str = "mixer"
    kind: str = "diffusion"
    max_len: int = 32
    d_model: int = 32
    hidden: int = 64


class Mixer(nn.Module):
    """Token mixing by a learned (max_len x max_len) matrix, then a channel MLP: no attention at all."""

    def __init__(self, cfg, layout, heads, grids):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        self.tok_emb = nn.Embedding(layout.size, cfg.d_model)
        self.mod_emb = nn.Embedding(len(layout.names), cfg.d_model)
        self.mix = nn.Parameter(torch.eye(cfg.max_len) + 0.02 * torch.randn(cfg.max_len, cfg.max_len))
        self.mlp = nn.Sequential(nn.LayerNorm(cfg.d_model), nn.Linear(cfg.d_model, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, cfg.d_model))
        self.heads = nn.ModuleDict(heads)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())

    def features(self, ids, modality, positions=None, pad_mask=None, hole=None):
        L = ids.shape[1]
        x = self.tok_emb(ids) + self.mod_emb(modality)
        if pad_mask is not None:
            x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        x = x + torch.einsum("ij,bjd->bid", self.mix[:L, :L], x)
        return x + self.mlp(x)

    def logits(self, h, modality, blank=None):
        out = h.new_full((*h.shape[:-1], self.layout.size), float("-inf"))
        for name, head in self.heads.items():
            b = self.layout.blocks[name]
            rows = modality == b.index
            out[rows, b.start:b.stop] = head(h[rows]).to(out.dtype)
        return out


@hookimpl
def register_architectures(register):
    register("mixer", Mixer, config=MixerConfig)
    register("nodataclass", Mixer, config=dict)                    # refused: not a dataclass
'''

CONFIG = """
[model]
architecture = "mixer"
max_len = 32
d_model = 32
hidden = 48

[data]
dataset = "shakespeare"
seq_len = 32

[train]
steps = 6
batch_size = 4
lr = 3e-3
warmup = 2
eval_every = 3
eval_windows = 2
save_every = 3
device = "cpu"
precision = "fp32"
out_dir = "{out}"
"""


@pytest.fixture(scope="module")
def mixer(tmp_path_factory) -> Path:
    return write_dist(tmp_path_factory.mktemp("mixer"), "mixerplug", "0.1.0", {"mixer": "mixerplug"},
                      {"mixerplug": MIXERPLUG})


@pytest.fixture(scope="module")
def trained(mixer, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("mixrun")
    (work / "mixer.toml").write_text(CONFIG.format(out=(work / "run").as_posix()))
    done = unidiff_cli("train", "mixer.toml", "--no-progress", path=mixer, cwd=work)
    assert done.returncode == 0, done.stderr
    assert "trained 6 steps to step 6" in done.stderr
    return work / "run" / "model"


def test_a_third_party_architecture_trains_evaluates_samples_and_reloads(mixer, trained, monkeypatch):
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == {"architecture": "mixer", "kind": "diffusion", "max_len": 32, "d_model": 32,
                               "hidden": 48}
    done = unidiff_cli("eval", "--model", str(trained), "--windows", "2", path=mixer, cwd=trained)
    assert done.returncode == 0, done.stderr
    bits = float(re.search(r"text: ([0-9.]+) bits/token", done.stdout).group(1))
    assert 0 < bits < 12  # trained 6 steps: a little below the 8 bits of a uniform guess over bytes, or near it
    again = unidiff_cli("eval", "--model", str(trained), "--windows", "2", path=mixer, cwd=trained)
    assert again.stdout == done.stdout  # the figure is the checkpoint's, reproducibly
    done = unidiff_cli("generate", "--model", str(trained), "--prompt", "KING", "--length", "8", "--steps", "4",
                   path=mixer, cwd=trained)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("KING") and "NFE 4 per sample" in done.stderr
    done = unidiff_cli("generate", "--model", str(trained), "--length", "8", "--cache", path=mixer, cwd=trained)
    assert done.returncode == 2 and "the key/value cache needs the plain denoiser of the built-in transformer" \
        in done.stderr and "this is Mixer" in done.stderr
    done = unidiff_cli("eval", "--model", str(trained), path=None, cwd=trained)  # without the plugin: named
    assert done.returncode == 2 and "of architecture 'mixer', which no installed plugin provides" in done.stderr

    monkeypatch.syspath_prepend(str(mixer))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    from unidiff.training.checkpoint import load_model
    from safetensors.torch import load_file

    model, _, _ = load_model(trained)
    assert type(model).__name__ == "Mixer" and type(model).__module__ == "mixerplug"
    saved = load_file(str(trained / "model.safetensors"))
    assert saved.keys() == model.state_dict().keys()
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    sys.modules.pop("mixerplug", None)


def test_bad_architecture_registrations_and_builds_are_named(mixer, monkeypatch):
    monkeypatch.syspath_prepend(str(mixer))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    registry = Registry()
    assert registry.names("architectures") == ["mixer", "transformer"]
    assert "config= must be a dataclass" in registry.broken["mixer"]
    cfg = model_config({"architecture": "mixer", "d_model": 16}, registry)
    assert type(cfg).__name__ == "MixerConfig" and (cfg.d_model, cfg.max_len) == (16, 32)
    with pytest.raises(UnidiffError, match=r"unknown key model.n_heads \(keys are architecture, kind, max_len"):
        model_config({"architecture": "mixer", "n_heads": 4}, registry)
    with pytest.raises(UnidiffError, match=r"model.d_model = 0 is invalid: it must be a positive integer"):
        model_config({"architecture": "mixer", "d_model": 0}, registry)
    layout = VocabLayout({"abc": 3})
    with pytest.raises(PluginError, match="architecture 'mixer' built Mixer, which does not keep the denoiser "
                                          "contract .*it lacks decode_step"):
        build_denoiser(model_config({"architecture": "mixer", "kind": "autoregressive"}, registry), layout,
                       {"abc": Letters()}, registry)
    sys.modules.pop("mixerplug", None)


def test_a_transformer_checkpoint_without_the_key_is_a_transformer():
    cfg = model_config({"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 16})  # as shipped before the key
    assert isinstance(cfg, ModelConfig) and cfg.architecture == "transformer"
    model = build_denoiser(cfg, VocabLayout({"abc": 3}), {"abc": Letters()})
    assert type(model).__module__ == "unidiff.models.transformer"
