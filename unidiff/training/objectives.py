"""Objectives: what trains a denoiser, and therefore which decoder samples it.

A bidirectional denoiser is trained by the diffusion ELBO of its noise process (`batch_elbo`: times, corruption and
terms from `unidiff.process`) and sampled by the iterative loop (`unidiff.sampling.loop`); the same network made
causal is trained by the exact next-token NLL (`batch_nll`) and decoded left to right with its key/value cache
(`unidiff.sampling.causal`). `objective_of` is the one place that maps a model to its objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from unidiff.data import Batch
from unidiff.device import autocast
from unidiff.models.transformer import Denoiser
from unidiff.process import Absorbing, Process
from unidiff.process.schedules import Schedule
from unidiff.training.losses import per_modality, sample_times


ABSORBING = Absorbing()


def marks(batch: Batch, hole: bool = True) -> dict:
    """What a pass over ``batch`` gets besides ids, modality, positions and padding, as keyword arguments: the
    variable-length hole marks and the grid cells, each only where the batch has them (a model without holes or
    grids need not take the argument)."""
    out = {} if batch.cells is None else {"cells": batch.cells}
    if hole and batch.blank_ok is not None:
        out["hole"] = batch.blank_ok
    return out


def batch_elbo(model: Denoiser, batch: Batch, schedule: Schedule, generator: torch.Generator,
               amp_dtype: torch.dtype | None = None, stratified: bool = True, process: Process = ABSORBING):
    """One Monte-Carlo ELBO estimate on a batch, under ``process`` (its corruption and terms). Positions in ``batch.blank_ok`` are variable-length holes (see
    `unidiff.data.make_holes`): the model is told so and may predict BLANK there. Positions in ``batch.second`` are
    noised at a second time per row, drawn independently: each segment's terms are then its own ELBO given the
    other's noised state.

    Returns:
        (sums, counts): (M,) summed ELBO terms (nats) and target-token counts per modality; sums carries gradient.
    """
    device = batch.ids.device
    t = sample_times(len(batch.ids), generator, stratified=stratified, device=device)
    if batch.second is not None:  # e.g. a caption noised independently of its image: per-position times
        t2 = sample_times(len(batch.ids), generator, stratified=stratified, device=device)
        t = torch.where(batch.second, t2.unsqueeze(1), t.unsqueeze(1))
    xt, scored = process.corrupt(batch.ids, t, batch.targets, schedule, generator, batch.modality, model.layout)
    hole = batch.blank_ok
    with autocast(device, amp_dtype):
        h = model.features(xt, batch.modality, batch.positions, batch.pad_mask, **marks(batch))  # (B, L, d)
        logits = model.logits(h[scored], batch.modality[scored], **({} if hole is None else {"blank": hole[scored]}))
    terms = process.elbo_terms(logits, batch.ids, xt, scored, t, schedule)
    return per_modality(terms, batch.targets, batch.modality, len(model.layout.names))


def batch_nll(model: Denoiser, batch: Batch, amp_dtype: torch.dtype | None = None):
    """The exact negative log-likelihood of an autoregressive model on a batch: each target token scored given
    everything before it (a target at position 0 has no context and is not scored). Same return as `batch_elbo`."""
    targets = batch.targets.clone()
    targets[:, 0] = False
    with autocast(batch.ids.device, amp_dtype):
        h = model.features(batch.ids, batch.modality, batch.positions, batch.pad_mask, **marks(batch, hole=False))
        logits = model.logits(h[targets], batch.modality[targets])
    nll = torch.zeros(batch.ids.shape, device=batch.ids.device)
    nll[targets] = F.cross_entropy(logits.float(), batch.ids[targets], reduction="none")
    return per_modality(nll, targets, batch.modality, len(model.layout.names))


def batch_loss(model: Denoiser, batch: Batch, schedule: Schedule, generator: torch.Generator,
               amp_dtype: torch.dtype | None = None, stratified: bool = True, process: Process = ABSORBING):
    """The objective that trains ``model`` (`objective_of`): the diffusion ELBO under ``process``, or the exact NLL
    of an autoregressive model (which draws nothing from ``generator``)."""
    if objective_of(model).causal:
        return batch_nll(model, batch, amp_dtype)
    return batch_elbo(model, batch, schedule, generator, amp_dtype, stratified, process)


@dataclass(frozen=True)
class Objective:
    """What trains a denoiser, and so how it is sampled: ``model.kind`` picks one, and nothing else in the engine
    reads that string."""

    kind: str  # the model.kind that selects it
    name: str  # what reports call the figure: "ELBO" (an upper bound) or "NLL" (exact)
    causal: bool  # position j is predicted from positions < j only: decoded left to right by `sample_causal`
    markers: bool  # rows start with BOS (a causal model's first token is predicted from it, not from nothing)
    fills_holes: bool  # can learn variable-length holes and targeted conditions (needs both sides of a position)
    steps_per_token: bool  # a step budget applies (a causal model takes one pass per token)


DIFFUSION = Objective("diffusion", "ELBO", causal=False, markers=False, fills_holes=True, steps_per_token=True)
AUTOREGRESSIVE = Objective("autoregressive", "NLL", causal=True, markers=True, fills_holes=False,
                           steps_per_token=False)
OBJECTIVES = {o.kind: o for o in (DIFFUSION, AUTOREGRESSIVE)}


def objective_of(model_or_config: Any) -> Objective:
    """The objective of a model, or of its ``[model]`` config (a model without ``cfg.kind``: diffusion)."""
    cfg = getattr(model_or_config, "cfg", model_or_config)
    return OBJECTIVES[getattr(cfg, "kind", "diffusion")]
