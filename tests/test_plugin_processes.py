"""``register_processes``: the noise process is an object the trainer, the evaluator and the sampler go through.

A throwaway package outside the tree registers three processes: the absorbing process written again from its
definition, position by position (the built-in must agree with it exactly), one that vetoes vowels in the reverse
step's posterior, and one whose budgets decide nothing before a block's last step. A tiny model is trained with the
vowel-free one through the ordinary CLI; its config.json records the process, and sampling follows it."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from unidiff.data import collate
from unidiff.errors import PluginError, UnidiffError, UnknownNameError
from unidiff.training.objectives import batch_elbo
from unidiff.plugins import DISABLE_ENV, Registry
from unidiff.sampling.policies import Ancestral, Confidence
from unidiff.process import Absorbing, get_process
from unidiff.process.schedules import get_schedule
from unidiff.sampling.loop import sample

from helpers import rows_of, tiny_denoiser, unidiff_cli, write_dist

ROOT = Path(__file__).resolve().parents[1]

PROCPLUG = '''
import math

import torch

from unidiff.hookspecs import hookimpl
from unidiff.process import Absorbing, Process
from unidiff.vocab import MASK


class Reference(Process):
    """The absorbing process from its definition, one position or one block at a time (slow and independent)."""

    name = "reference"

    def corrupt(self, x0, t, targets, schedule, generator, modality, layout):
        u = torch.rand(x0.shape, generator=generator)  # one uniform per position, row-major
        xt, scored = x0.clone(), torch.zeros_like(targets)
        for b in range(x0.shape[0]):
            for i in range(x0.shape[1]):
                time = t[b] if t.dim() == 1 else t[b, i]
                if targets[b, i] and u[b, i] < schedule.mask_prob(time):
                    xt[b, i], scored[b, i] = MASK, True
        return xt, scored

    def elbo_terms(self, logits, x0, xt, scored, t, schedule):
        terms = torch.zeros(x0.shape)
        for n, (b, i) in enumerate(scored.nonzero().tolist()):
            time = t[b] if t.dim() == 1 else t[b, i]
            terms[b, i] = -logits[n].float().log_softmax(-1)[x0[b, i]] * schedule.weight(time)
        return terms

    def start(self, ids, targets, modality, layout, uniform):
        return torch.where(targets, MASK, ids)

    def budget(self, n_targets, steps, k, schedule, remask=0.0):
        out = []
        for g in range(len(n_targets)):
            S = max(int(steps[g]), 1)
            step = int(k[g]) if torch.is_tensor(k) and k.dim() else int(k)
            t = torch.tensor(min(max(1.0 - step / S, 0.0), 1.0), dtype=torch.float64)
            s = torch.tensor(min(max(1.0 - (step + 1) / S, 0.0), 1.0), dtype=torch.float64)
            m_t, m_s = float(schedule.mask_prob(t)), float(schedule.mask_prob(s))
            sigma = remask * min(max(m_s / max(1 - m_t, 1e-12) if m_t < 1 else 0.0, 0.0), 1.0)  # remask x ReMDM's cap
            p = min(max((m_t - m_s + sigma * (1 - m_t)) / max(m_t, 1e-12), 0.0), 1.0)
            out.append((p, math.floor(int(n_targets[g]) * m_s + 1e-6), sigma))
        p, left, sigma = zip(*out)
        return (torch.tensor(p, dtype=torch.float64), torch.tensor(left), torch.tensor(sigma, dtype=torch.float64))

    def posterior(self, logits, current):
        return logits

    def reopen(self, x, chosen, modality, layout, uniform):
        return torch.where(chosen, MASK, x)


VOWELS = [ord(c) for c in "aeiouAEIOU"]


class VowelFree(Absorbing):
    """Absorbing, but the reverse step never proposes a vowel (text ids are 4 + byte in a text-only layout)."""

    name = "vowelfree"

    def posterior(self, logits, current):
        return logits.index_fill(1, torch.tensor([4 + v for v in VOWELS]), float("-inf"))


class AllAtEnd(Absorbing):
    """Absorbing, with budgets that keep every position open until a block's last step."""

    name = "allatend"

    def budget(self, n_targets, steps, k, schedule, remask=0.0):
        last = torch.as_tensor(k) + 1 >= steps
        zero = torch.zeros(len(n_targets), dtype=torch.float64)
        return torch.where(last, 1.0, zero), torch.where(last, 0, n_targets), zero


@hookimpl
def register_processes(register):
    register("reference", Reference)
    register("vowelfree", VowelFree)
    register("allatend", AllAtEnd)
    register("notaprocess", lambda: 42)
    register("absorbing", Reference)  # a built-in's name: ignored, reported
'''

CONFIG = """
[model]
d_model = 32
n_layers = 1
n_heads = 2
max_len = 32

[data]
dataset = "shakespeare"
seq_len = 32

[train]
steps = 4
batch_size = 4
lr = 3e-3
warmup = 1
eval_every = 4
eval_windows = 2
save_every = 4
process = "vowelfree"
device = "cpu"
precision = "fp32"
out_dir = "{out}"
"""


@pytest.fixture(scope="module")
def procplug(tmp_path_factory) -> Path:
    return write_dist(tmp_path_factory.mktemp("proc"), "procplug", "0.1.0", {"proc": "procplug"},
                      {"procplug": PROCPLUG})


@pytest.fixture
def registered(procplug, monkeypatch) -> Registry:
    monkeypatch.syspath_prepend(str(procplug))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    yield Registry()
    sys.modules.pop("procplug", None)


def test_registrations_are_checked_and_named(registered):
    assert {"absorbing", "reference", "vowelfree", "allatend"} <= set(registered.names("processes"))
    assert registered.plugin_of("processes", "absorbing").name == "unidiff.process.absorbing"
    assert "process 'absorbing' ignored" in registered.broken["proc"]
    assert isinstance(get_process("absorbing"), Absorbing) and get_process("vowelfree", registered).name == "vowelfree"
    with pytest.raises(PluginError, match="built process 'notaprocess' as int 42, which is not a unidiff.process"):
        get_process("notaprocess", registered)
    with pytest.raises(UnknownNameError, match="unknown process 'gauss'; known processes: absorbing, allatend"):
        get_process("gauss", registered)
    with pytest.raises(UnidiffError, match="a noise process is named by a string"):
        get_process(3)


def test_the_built_in_process_equals_the_definition_written_position_by_position(registered):
    reference, absorbing = get_process("reference", registered), Absorbing()
    model = tiny_denoiser(2)
    batch = collate(rows_of([("KING", 12), ("", 16), ("To be", 9)], model.layout))
    for name in ("linear", "cosine", "polynomial:power=3"):
        schedule = get_schedule(name)
        a = batch_elbo(model, batch, schedule, torch.Generator().manual_seed(5), process=absorbing)
        b = batch_elbo(model, batch, schedule, torch.Generator().manual_seed(5), process=reference)
        assert torch.equal(a[1], b[1]) and torch.allclose(a[0], b[0], rtol=1e-6, atol=0), name
    for policy, remask in ((Confidence(), 0.0), (Ancestral(), 0.0), (Confidence(), 0.3), (Ancestral(), 0.5)):
        settings = dict(steps=6, seeds=11, temperature=1.0, schedule="cosine", remask=remask, block_length=8)
        ours = sample(model, batch, policy, **settings)
        theirs = sample(model, batch, policy, process=reference, **settings)
        assert torch.equal(ours.ids, theirs.ids) and torch.equal(ours.nfe, theirs.nfe), (policy.name, remask)


def test_the_sampler_draws_from_the_process_posterior_and_keeps_its_budgets(registered):
    from unidiff import Pipeline

    pipe = Pipeline.load("text", device="cpu")
    batch = collate(rows_of([("", 48)] * 4, pipe.layout))
    plain = sample(pipe.model, batch, Confidence(), steps=12, seeds=3)
    vowelfree = sample(pipe.model, batch, Confidence(), steps=12, seeds=3, process="vowelfree")
    def text(row):  # text's content ids start at 4 (PAD, MASK, BOS, EOS) in a text-only layout
        return bytes((row[row >= 4] - 4).tolist())

    vowels = set(b"aeiouAEIOU")
    assert all(not set(text(row)) & vowels for row in vowelfree.ids)
    assert all(set(text(row)) & vowels for row in plain.ids)  # the text model itself writes vowels
    late = sample(pipe.model, batch, Confidence(), steps=12, seeds=3, process="allatend")
    assert late.nfe.tolist() == [1] * 4  # no step before the last has a budget, so none runs the model


def test_a_model_trained_under_a_plugin_process_records_and_samples_it(procplug, tmp_path):
    (tmp_path / "vf.toml").write_text(CONFIG.format(out=(tmp_path / "run").as_posix()))
    done = unidiff_cli("train", "vf.toml", "--no-progress", path=procplug, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    model = tmp_path / "run" / "model"
    assert json.loads((model / "config.json").read_text())["training"]["train"]["process"] == "vowelfree"
    done = unidiff_cli("eval", "--model", str(model), "--windows", "2", path=procplug, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"text: [0-9.]+ bits/token", done.stdout)
    done = unidiff_cli("generate", "--model", str(model), "--length", "32", "--num", "3", "--steps", "8",
                   path=procplug, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    samples = [line for line in done.stdout.splitlines() if not line.startswith("===== sample")]
    assert len(samples) >= 3 and not set("".join(samples)) & set("aeiouAEIOU")
    done = unidiff_cli("generate", "--model", str(model), "--length", "8", path=None, cwd=tmp_path)
    assert done.returncode == 2 and "unknown process 'vowelfree'" in done.stderr, done.stderr
