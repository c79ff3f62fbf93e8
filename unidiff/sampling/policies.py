"""Unmasking policies: which masked positions a sampling step commits.

A policy sees one `StepContext` for the whole batch and returns a (B, L) bool mask of positions to commit; the
sampler keeps only masked positions of it. Policies are registered by name through the ``register_policies``
hook as factories (``factory(**options)`` returns a policy; the core registers its own here, as any plugin would),
so a plugin can add one without touching the sampler.

Budgeted policies commit ``ctx.n_commit`` positions, the count that the schedule's time grid allows this step,
ranked by a score (ties go to the leftmost position):

- ``confidence`` (MaskGIT / LLaDA low-confidence remasking): the probability of the proposed token;
- ``margin``: top-1 minus top-2 probability;
- ``entropy``: the lowest entropy of the predicted distribution first;
- ``random``: a uniformly random subset.

Others decide the count themselves:

- ``ancestral`` (MDLM): each masked position is revealed independently with the probability the reverse process
  gives, (alpha(s) - alpha(t)) / (1 - alpha(t)); the number committed per step is random.
- ``threshold`` (adaptive parallel decoding): every position whose confidence reaches ``threshold``, and at least
  the most confident one, so the number of steps adapts to how sure the model is (at worst one token a step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from unidiff.errors import UnidiffError
from unidiff.hookspecs import hookimpl


@dataclass
class StepContext:
    """What a policy sees at one step. ``may_commit`` is asked before the forward pass, when ``tokens``,
    ``confidence`` and ``probs`` are still None; ``commit`` after it."""

    masked: torch.Tensor  # (B, L) bool, still masked (in the current block) before this step
    tokens: torch.Tensor | None  # (B, L) proposed clean tokens (valid where masked)
    confidence: torch.Tensor | None  # (B, L) model probability of the proposed token (0 where not masked)
    n_commit: torch.Tensor  # (B,) long, how many positions the step budget asks to commit
    p_unmask: torch.Tensor  # (B,) probability that the reverse process reveals a masked position now
    uniform: torch.Tensor  # (B, L) uniforms in [0, 1), reproducible per row seed, step and position
    probs: torch.Tensor | None = None  # (n, V) model distribution at the masked positions, in row-major order
    n_remasked: torch.Tensor | None = None  # (B,) long, tokens re-masked this step (remasking); None: none

    def _at_masked(self, values: torch.Tensor) -> torch.Tensor:
        """(n,) values at the masked positions -> (B, L), zero elsewhere."""
        out = torch.zeros(self.masked.shape, dtype=values.dtype, device=values.device)
        out[self.masked] = quantise(values)
        return out

    def margin(self) -> torch.Tensor:
        """(B, L) top-1 minus top-2 probability at masked positions."""
        top2 = self.probs.topk(2, dim=-1).values
        return self._at_masked(top2[:, 0] - top2[:, 1])

    def entropy(self) -> torch.Tensor:
        """(B, L) entropy (nats) of the predicted distribution at masked positions."""
        p = self.probs
        return self._at_masked(-(p * p.clamp(min=1e-30).log()).sum(-1))


QUANTUM = 2.0 ** 16


def quantise(score: torch.Tensor) -> torch.Tensor:
    """Round scores to multiples of 2^-16, so that float rounding (a padded row vs the same row alone, one kernel
    vs another) cannot reorder exact ties, e.g. the identical positions of an all-mask start; ties go leftmost."""
    return torch.round(score * QUANTUM) / QUANTUM


def quantise_prob(p: torch.Tensor) -> torch.Tensor:
    """`quantise` in log space, to a relative resolution of 2^-10 (0.1%), however small the probability (a large
    vocabulary has tiny ones); differences below that are noise for ranking purposes."""
    return torch.exp(torch.round(p.clamp(min=1e-300).log() * 2.0 ** 10) / 2.0 ** 10)


class Policy(Protocol):
    name: str

    def commit(self, ctx: StepContext) -> torch.Tensor:
        """(B, L) bool: the positions to commit this step (a subset of ctx.masked)."""

    # Optional: ``may_commit(ctx) -> (B,) bool``, asked before the forward pass; a row for which it is False
    # skips this step's forward pass (its output cannot depend on the model). Without it every row runs.
    # Optional: ``adaptive = True`` for a policy that chooses how many positions to commit from the model's
    # confidence: it takes no steps-per-token recommendation, only the cap of one step per token.


def has_budget(ctx: StepContext) -> torch.Tensor:
    """(B,) bool: the schedule lets the row commit something this step (for policies that follow n_commit)."""
    return ctx.n_commit > 0


def top_n(score: torch.Tensor, masked: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per row, the ``n[b]`` masked positions with the highest score (leftmost first on ties). (B, L) bool."""
    score = torch.where(masked, score.double(), torch.full_like(score, float("-inf"), dtype=torch.float64))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    return (rank < n.unsqueeze(1)) & masked


class Ancestral:
    name = "ancestral"

    def commit(self, ctx: StepContext) -> torch.Tensor:
        return ctx.masked & (ctx.uniform < ctx.p_unmask.unsqueeze(1))

    def may_commit(self, ctx: StepContext) -> torch.Tensor:
        return self.commit(ctx).any(1)  # the reveals do not depend on the model: known before the pass


class Ranked:
    """Commit the ``n_commit`` masked positions with the highest ``score`` (the budgeted policies below)."""

    may_commit = staticmethod(has_budget)

    def score(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def commit(self, ctx: StepContext) -> torch.Tensor:
        return top_n(self.score(ctx), ctx.masked, ctx.n_commit)


class Confidence(Ranked):
    name = "confidence"

    def score(self, ctx):
        return ctx.confidence


class Margin(Ranked):
    name = "margin"

    def score(self, ctx):
        return ctx.margin()


class Entropy(Ranked):
    name = "entropy"

    def score(self, ctx):
        return -ctx.entropy()


class Random(Ranked):
    name = "random"

    def score(self, ctx):
        return ctx.uniform


class Threshold:
    """Commit every masked position with confidence >= threshold, and at least the most confident one (with
    remasking: one more than the step re-masked, so the masked count still falls each step and re-masked tokens do
    not pile up for the last step).

    Args:
        threshold: in (0, 1]; higher is more careful (more steps), lower is faster.
    """

    name = "threshold"
    adaptive = True

    def __init__(self, threshold: float = 0.9):
        if not 0.0 < threshold <= 1.0:
            raise UnidiffError(f"the threshold policy needs 0 < threshold <= 1; got {threshold}")
        self.threshold = threshold

    def commit(self, ctx: StepContext) -> torch.Tensor:
        sure = ctx.masked & (ctx.confidence >= self.threshold)
        least = torch.ones_like(ctx.n_commit) if ctx.n_remasked is None else 1 + ctx.n_remasked
        return sure | top_n(ctx.confidence, ctx.masked, least)


POLICIES = (Ancestral, Confidence, Entropy, Margin, Random, Threshold)


@hookimpl
def register_policies(register):
    for factory in POLICIES:
        register(factory.name, factory)
