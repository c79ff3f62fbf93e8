"""Batch invariance: a sample in a batch equals the same sample generated alone (seed + i), in fp32 and in bf16.

Each setting puts rows of different widths in one batch (prompts of different lengths), so a row is padded to the
batch's width: the case where bf16 used to round a row differently (the attention kernel's reductions change with
the padded width) and flip a sampler choice. On the CPU every setting is exact at both precisions; on a GPU bf16
is not claimed (see `unidiff.models.widths.cut_to_width`).
"""

from __future__ import annotations

import pytest
import torch

from unidiff import Pipeline, Segment
from unidiff.data import collate
from unidiff.models.widths import row_widths
from unidiff.sampling.stream import sample_stream

# Rows of 17 to 59 positions (17 to generate): the short ones are padded past the next multiple of 16 positions,
# where the CPU's attention kernel starts to round them differently from alone (the other settings' rows likewise).
PROMPTS = ["", "A", "HAMLET.\n", "To be, or not to be, that is the question:"]
LENGTH = 17
CODE = "import os\n\n\ndef main(argv):\n    for name in argv:\n        print(name, os.path.exists(name))\n"


def text(prompts=PROMPTS, modality="text", n=LENGTH):
    return [[Segment(modality, p), Segment(modality, role="generate", length=n)] if p else
            [Segment(modality, role="generate", length=n)] for p in prompts]


def infill():
    return [[Segment("text", "A" * (i + 1)), Segment("text", role="generate", length=5), Segment("text", " and"),
             Segment("text", role="generate", length=6), Segment("text", "." * 12 * i)] for i in range(4)]


def grouped():  # a short segment with its own steps and policy beside the call's: two groups per row
    return [[Segment("text", p), Segment("text", role="generate", length=4, steps=2, policy="random"),
             Segment("text", " so"), Segment("text", role="generate", length=LENGTH)] for p in PROMPTS[1:] + ["Be"]]


def edit():
    return [[Segment("text", "To be, or not to be, that is the question:"[:6 + 12 * i], role="edit", strength=0.5)]
            for i in range(4)]


def dna():
    return [[Segment("text", c), Segment("dna", p), Segment("dna", role="generate", length=LENGTH)]
            for c, p in zip(["animal", "plant", "microbe", "animal"], ["A", "ACGT", "TTGACAGG" * 3, "GGGCCCAAATTT" * 4])]


def image():
    return [[Segment("text", a), Segment("image", role="generate", length=49)]
            for a in ["a cat", "a horse", "a picture of a cow", "the shape of a giraffe"]]


T1 = dict(temperature=1.0)
# (model, rows, generate's keyword arguments): every policy, proposal filters, remasking, blocks, guidance, both
# caches, holes, groups, edits, the mirror symmetry, an image with guidance and the autoregressive twin.
SETTINGS = {
    "text default (ancestral T=0.6)": ("text", text, {}),
    "ancestral T=1": ("text", text, dict(policy="ancestral", **T1)),
    "ancestral T=0": ("text", text, dict(policy="ancestral", temperature=0.0)),
    "confidence T=0": ("text", text, dict(policy="confidence", temperature=0.0)),
    "confidence T=1": ("text", text, dict(policy="confidence", **T1)),
    "margin T=1": ("text", text, dict(policy="margin", **T1)),
    "entropy T=1": ("text", text, dict(policy="entropy", **T1)),
    "random T=1": ("text", text, dict(policy="random", **T1)),
    "threshold 0.9": ("text", text, dict(policy="threshold", policy_options={"threshold": 0.9}, **T1)),
    "top-k 20, top-p 0.9, T=0.8": ("text", text, dict(policy="confidence", top_k=20, top_p=0.9, temperature=0.8)),
    "remask 0.1": ("text", text, dict(remask=0.1, steps=12)),
    "blocks of 8": ("text", text, dict(policy="confidence", block_length=8, **T1)),
    "guidance 2": ("text", lambda: text(PROMPTS[1:] + ["Be"]), dict(guidance=2.0)),
    "dual cache, blocks of 8": ("text", text, dict(policy="confidence", block_length=8, cache="dual", **T1)),
    "delta cache, blocks of 8": ("text", text, dict(policy="confidence", block_length=8, cache="delta", **T1)),
    "two holes": ("text", infill, dict(policy="confidence", **T1)),
    "groups with their own steps": ("text", grouped, dict(policy="confidence", **T1)),
    "edit 0.5": ("text", edit, dict(policy="confidence", **T1)),
    "code (confidence T=0.8)": ("code", lambda: text(["", "def f(", "import os\n", CODE], "code"), {}),
    "dna symmetric": ("dna", dna, dict(symmetric=True)),
    "image at guidance 3": ("image", image, dict(guidance=3.0, steps=6)),
    "autoregressive (text-ar) T=1": ("text-ar", text, dict(**T1)),
}

_PIPES: dict[tuple[str, str], Pipeline] = {}


def pipe(model: str, precision: str) -> Pipeline:
    if (model, precision) not in _PIPES:
        _PIPES[model, precision] = Pipeline.load(model, device="cpu", precision=precision)
    return _PIPES[model, precision]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_sample_in_a_batch_equals_the_sample_alone(setting, precision):
    model, rows, kwargs = SETTINGS[setting]
    p = pipe(model, precision)
    samples = rows()
    widths = {len(r.ids) for r in p.encode(samples)}
    assert len(widths) > 1, "the rows must differ in width, so that the batch pads some of them"
    together = p.generate(samples, seed=7, **kwargs)
    assert together.precision == precision
    for i, segments in enumerate(samples):
        alone = p.generate([segments], seed=7 + i, **kwargs)
        assert alone.samples[0] == together.samples[i], f"sample {i} of {setting} at {precision}"
        assert alone.nfe == [together.nfe[i]]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_continuous_batching_gives_each_request_its_tokens_alone(precision):
    """Two slots serve four requests of different widths (a slot's row changes width as requests come and go),
    with the dual cache, whose store then holds rows narrower than its slots."""
    p = pipe("text", precision)
    rows = p.encode(text(), seed=0)
    kw = dict(temperature=1.0, block_length=8, cache="dual", amp_dtype=p.amp_dtype)
    policy = p.registry.policy("confidence")
    streamed = sample_stream(p.model, collate(rows), policy, 2, steps=6, seeds=3, **kw)
    for i, row in enumerate(rows):
        alone = sample_stream(p.model, collate([row]), policy, 1, steps=6, seeds=[3 + i], **kw)
        n = len(row.ids)
        assert torch.equal(alone.ids[0], streamed.ids[i, :n]), f"request {i} at {precision}"
        assert alone.nfe.tolist() == [streamed.nfe[i].item()]


def test_row_widths_end_at_the_last_real_position():
    pad = torch.tensor([[False, False, True, True], [False, True, False, True], [True, True, True, True]])
    assert row_widths(pad).tolist() == [2, 3, 1]
