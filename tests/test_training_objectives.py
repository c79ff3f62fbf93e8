"""`unidiff.training.objectives`: the one place a model's kind is read, and what each objective implies."""

from __future__ import annotations

import torch

from unidiff.models.transformer import ModelConfig
from unidiff.training.objectives import AUTOREGRESSIVE, DIFFUSION, batch_loss, batch_nll, objective_of

from helpers import rows_of, tiny_denoiser


def test_the_kind_picks_the_objective_and_the_decoder():
    assert objective_of(ModelConfig()) is DIFFUSION and objective_of(ModelConfig(kind="autoregressive")) is \
        AUTOREGRESSIVE
    assert (DIFFUSION.name, DIFFUSION.causal, DIFFUSION.markers, DIFFUSION.fills_holes) == ("ELBO", False, False, True)
    assert (AUTOREGRESSIVE.name, AUTOREGRESSIVE.causal, AUTOREGRESSIVE.markers, AUTOREGRESSIVE.fills_holes) == \
        ("NLL", True, True, False)

    class Bare:  # an architecture whose config names no kind: a diffusion model
        cfg = object()

    assert objective_of(Bare()) is DIFFUSION and objective_of(tiny_denoiser()) is DIFFUSION


def test_a_causal_models_loss_is_its_exact_nll_and_draws_nothing():
    from unidiff.data import collate
    from unidiff.process.schedules import get_schedule

    model = tiny_denoiser(seed=2)
    model.cfg.kind = "autoregressive"  # the same weights, made causal
    batch = collate(rows_of([("KING", 6)], model.layout))
    batch.targets[:] = ~batch.pad_mask  # score every token
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    loss = batch_loss(model, batch, get_schedule("linear"), generator)
    assert torch.equal(generator.get_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(loss, batch_nll(model, batch)))
