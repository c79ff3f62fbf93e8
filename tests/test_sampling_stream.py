"""Continuous batching (`sample_stream`): requests join free slots as others finish, with the tokens each would
get alone."""

from __future__ import annotations

import pytest
import torch

from unidiff.data import collate
from unidiff.errors import UnidiffError
from unidiff.sampling.policies import Ancestral, Confidence
from unidiff.sampling.loop import sample
from unidiff.sampling.stream import sample_stream

from helpers import rows_of, tiny_denoiser

REQUESTS = [("ab", 12), ("hello", 4), ("x", 20), ("", 8), ("abc", 6), ("q", 16)]
STEPS = [6, 2, 20, 3, 6, 4]


@pytest.mark.parametrize("policy,settings", [(Confidence(), {"temperature": 1.0}),
                                             (Ancestral(), {"temperature": 0.8, "block_length": 4}),
                                             (Confidence(), {"temperature": 1.0, "guidance": 2.0, "remask": 0.3})])
def test_each_request_gets_the_tokens_it_gets_alone(policy, settings):
    model = tiny_denoiser(seed=7)
    batch = collate(rows_of(REQUESTS, model.layout))
    out = sample_stream(model, batch, policy, max_batch=2, steps=STEPS, seeds=100, **settings)
    for i, (prompt_len, steps) in enumerate(zip(REQUESTS, STEPS)):
        alone = sample(model, batch.select(torch.tensor([i])), policy, steps=steps, seeds=[100 + i], **settings)
        assert torch.equal(out.ids[i], alone.ids[0]), i
        assert int(out.nfe[i]) == int(alone.nfe[0])
    assert torch.equal(out.generated, torch.tensor([n for _, n in REQUESTS]))


def test_a_finished_request_hands_its_slot_on_at_once():
    """Two slots, requests of 1 and 10 steps then two of 1 step: the short ones pass through the slot the first
    one frees while the long one is still running, so they are done before it (static batches of two would
    finish the second pair only after the long request)."""
    model = tiny_denoiser(seed=8)
    batch = collate(rows_of([("a", 4), ("b", 10), ("c", 4), ("d", 4)], model.layout))
    out = sample_stream(model, batch, Confidence(), max_batch=2, steps=[1, 10, 1, 1])
    lat = out.latency
    assert lat[0] < lat[2] < lat[3] < lat[1]
    assert out.nfe.tolist() == [1, 10, 1, 1]


def test_stream_validates_its_batch_size():
    model = tiny_denoiser(seed=9)
    with pytest.raises(UnidiffError, match="max_batch"):
        sample_stream(model, collate(rows_of([("a", 2)], model.layout)), Confidence(), max_batch=0)


@pytest.mark.parametrize("name", ["text", "code-ar"])
def test_pipeline_max_batch_gives_the_same_samples(name):
    """--max-batch bounds the rows run at once (continuous batching for diffusion, successive batches for the
    autoregressive model) without changing any sample."""
    from unidiff.pipeline import Pipeline

    pipe = Pipeline.load(name, device="cpu", precision="fp32")
    kw = dict(num=5, length=12, seed=3, temperature=1.0)
    if name == "text":
        kw.update(steps=4, policy="confidence")
    whole = pipe.complete(None, **kw)
    streamed = pipe.complete(None, max_batch=2, **kw)
    assert streamed.texts == whole.texts
    assert streamed.nfe == whole.nfe
