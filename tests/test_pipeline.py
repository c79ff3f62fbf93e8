"""The generation API: holes, edits, batching of requests, and the context check."""

from __future__ import annotations

import math

import pytest
import torch

from unidiff import Pipeline, Segment, UnidiffError
from unidiff.data import edit_targets
from unidiff.data import parse_holes

TEXT = "KING\nNow is the winter of our discontent made glorious summer by this sun of York.\n"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load("text", device="cpu")


def test_parse_holes_splits_a_template_exactly():
    segs = parse_holes("<mask:3>ab<mask:2>c<mask:1>", "text")
    assert [(s.role, s.content, s.length) for s in segs] == [
        ("generate", None, 3), ("given", "ab", None), ("generate", None, 2), ("given", "c", None),
        ("generate", None, 1)]
    with pytest.raises(UnidiffError, match="no hole"):
        parse_holes("plain text", "text")
    with pytest.raises(UnidiffError, match="at least 1 token"):
        parse_holes("a<mask:0>b", "text")


def test_infill_keeps_the_given_text_and_fills_each_hole(pipe):
    template = "ROMEO\nO, <mask:12> art thou Romeo?\n<mask:5>"
    rows = pipe.encode([parse_holes(template, "text")])
    assert int(rows[0].targets.sum()) == 17
    gen = pipe.infill(template, num=2, steps=6, seed=4)
    assert gen.nfe == [6, 6] and gen.generated == [17, 17]
    for text in gen.texts:
        assert text.startswith("ROMEO\nO, ") and "art thou Romeo?\n" in text


def test_edit_targets_are_nested_and_exact_in_number():
    sets = [edit_targets(40, s, seed=7, offset=0) for s in (0.0, 0.25, 0.5, 1.0)]
    assert [sum(s) for s in sets] == [0, 10, 20, 40]
    for small, big in zip(sets, sets[1:]):  # a stronger edit re-masks a superset
        assert all(b or not a for a, b in zip(small, big))


def test_edit_rounds_half_up_and_refuses_empty_content(pipe):
    assert sum(edit_targets(1, 0.5, seed=0, offset=0)) == 1
    assert sum(edit_targets(5, 0.5, seed=0, offset=0)) == 3
    with pytest.raises(UnidiffError, match="edit of empty content"):
        pipe.edit("", 0.5)


def test_edit_strength_zero_is_the_identity(pipe):
    gen = pipe.edit(TEXT, 0.0, num=3)
    assert gen.texts == [TEXT] * 3 and gen.nfe == [0, 0, 0]


def test_changed_fraction_grows_with_strength(pipe):
    n = len(TEXT.encode())
    strengths = [0.0, 0.1, 0.3, 0.6, 1.0]
    changed = []
    for s in strengths:
        gen = pipe.edit(TEXT, s, num=8, seed=0, steps=8)
        diffs = [sum(a != b for a, b in zip(t.encode()[:n], TEXT.encode())) / n for t in gen.texts]
        assert max(diffs) <= math.floor(s * n + 0.5) / n + 1e-9  # only re-masked tokens can change
        changed.append(sum(diffs) / len(diffs))
    print("strength -> changed fraction:", dict(zip(strengths, [round(c, 3) for c in changed])))
    assert changed[0] == 0.0
    assert all(a < b for a, b in zip(changed, changed[1:]))


def test_one_batch_serves_requests_of_different_shapes(pipe):
    samples = [[Segment("text", "HAMLET\n"), Segment("text", role="generate", length=10)],
               [Segment("text", role="generate", length=3), Segment("text", " to be")],
               [Segment("text", TEXT, role="edit", strength=0.5)]]
    gen = pipe.generate(samples, steps=3, seed=1)
    assert gen.generated == [10, 3, math.floor(0.5 * len(TEXT) + 0.5)]
    assert gen.texts[0].startswith("HAMLET\n") and gen.texts[1].endswith(" to be")
    alone = pipe.generate([samples[1]], steps=3, seed=2)  # sample 1 of the batch used seed 1 + 1
    assert alone.texts == [gen.texts[1]]


def test_requests_beyond_the_context_are_refused(pipe):
    with pytest.raises(UnidiffError, match="context is 256"):
        pipe.complete("x" * 200, length=100)
    with pytest.raises(UnidiffError, match="nothing to generate"):
        pipe.generate([[Segment("text", "given only")]])
    with pytest.raises(UnidiffError, match="unknown modality 'dna'"):
        pipe.generate([[Segment("dna", role="generate", length=4)]])
    assert torch.is_grad_enabled()  # generation does not leak no_grad into the caller


def test_the_model_recommends_its_sampling_settings(pipe):
    rec = pipe.sampling
    assert rec["policy"] == "ancestral" and rec["temperature"] == 0.6 and rec["steps_per_token"] == 0.25
    gen = pipe.complete(None, num=2, length=40, seed=0)  # 40 * 0.25 = 10 steps at most (ancestral may skip)
    assert all(1 <= n <= 10 for n in gen.nfe)
    explicit = pipe.complete(None, num=2, length=40, seed=0, policy="ancestral", temperature=0.6, steps=10)
    assert explicit.texts == gen.texts
    assert pipe.complete(None, length=40, policy="confidence").nfe == [10]  # the recommended steps still apply
