"""The shipped code model (plugins/unidiff_code/model): it knows Python, and the command line generates and fills
in code with it."""

from __future__ import annotations

import math

import pytest
import torch

from unidiff import Pipeline
from unidiff.data import Segment, Tokens, collate, encode_row
from unidiff.training.objectives import batch_elbo
from unidiff.process.schedules import get_schedule
from unidiff_code.corpus import module_files, units


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("code")


def elbo_bits(pipe, content) -> float:
    """Bits per token of the model's ELBO on one row (8 noise draws, fixed seed)."""
    row = encode_row([Segment("code", content)], pipe.layout, pipe.modalities)
    batch = collate([row] * 8)
    batch.targets = ~batch.pad_mask
    with torch.no_grad():
        sums, counts = batch_elbo(pipe.model, batch, get_schedule("linear"), torch.Generator().manual_seed(0))
    return float(sums.sum() / counts.sum()) / math.log(2)


def test_the_shipped_code_model_knows_python(pipe):
    """Its ELBO on a held-out function (copy.py is a held-out module; 7.3 bits/token measured) is far below the
    13.0 bits/token of a uniform guess over the 8,257 tokens, and far below that of the same tokens shuffled:
    it has learnt the order of code, not only which tokens are common. (The figure over all held-out modules
    is in docs/results/code.md.)"""
    path = dict(module_files("valid"))["copy.py"]
    unit = next(u for u in units(path.read_text()) if u.kind == "function")
    ids = pipe.modalities["code"].encode("<|python|>" + unit.source[:600])
    real = elbo_bits(pipe, Tokens(ids))
    shuffled = ids[:1] + [ids[1:][k] for k in torch.randperm(len(ids) - 1, generator=torch.Generator().manual_seed(0))]
    assert real < 8.0 and elbo_bits(pipe, Tokens(shuffled)) > real + 2.0


def test_generate_and_infill_code_from_the_command_line(tmp_path, capsys):
    from unidiff.cli import main

    assert main(["generate", "--model", "code", "--prompt", "def fibonacci(n):", "--length", "24", "--steps", "6",
                 "--num", "2"]) == 0
    out, err = capsys.readouterr()
    samples = out.split("===== sample ")[1:]
    assert len(samples) == 2 and all("def fibonacci(n):" in s for s in samples)
    assert "NFE 6 per sample" in err
    holes = tmp_path / "holes.py"
    holes.write_text("def add(a, b):\n    <mask:4>\n\n\ndef sub(a, b):\n    return a - <blank:6>\n")
    assert main(["infill", "--model", "code", str(holes), "--seed", "1", "--out", str(tmp_path / "filled.py")]) == 0
    filled = (tmp_path / "filled.py").read_text()
    assert filled.startswith("def add(a, b):\n    ") and "\n\n\ndef sub(a, b):\n    return a - " in filled
    assert "<mask" not in filled and "<blank" not in filled


def test_measure_batches_carry_each_samples_own_step_budget(pipe):
    """The measuring script generates in batches; a per-sample list of step budgets is split with the batches,
    so each sample gets its own number of forward passes (the infilling table once failed on this)."""
    from unidiff_code.measure import run

    code = pipe.modalities["code"]
    prompt = code.encode(code.tag + "def f(x):\n")
    segs = [[Segment("code", Tokens(prompt)), Segment("code", role="generate", length=n)] for n in (3, 5, 4)]
    before = [code.decode(prompt)] * 3
    fills, nfe, tokens, _ = run(pipe, segs, before, [""] * 3, batch=2, steps=[3, 5, 4], seed=0, policy="confidence",
                                temperature=0.0)
    assert len(fills) == 3 and nfe == 3 + 5 + 4 and tokens == 3 + 5 + 4
