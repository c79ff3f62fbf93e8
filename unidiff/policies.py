"""Unmasking policies: which masked positions a sampling step commits.

A policy sees one `StepContext` for the whole batch and returns a (B, L) bool mask of positions to commit; it
must be a subset of ``ctx.masked``. Policies are registered by name through the ``register_policies`` hook (the
core registers its own here, as any plugin would), so a plugin can add one without touching the sampler.

- ``ancestral`` (MDLM): each masked position is revealed independently with the probability the reverse process
  gives, (alpha(s) - alpha(t)) / (1 - alpha(t)); the number committed per step is random.
- ``confidence`` (MaskGIT / LLaDA low-confidence remasking): commit the ``n_commit`` masked positions whose
  proposed token has the highest model probability; ties go to the leftmost position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from unidiff.hookspecs import hookimpl


@dataclass
class StepContext:
    masked: torch.Tensor  # (B, L) bool, still masked before this step
    tokens: torch.Tensor  # (B, L) proposed clean tokens (valid where masked)
    confidence: torch.Tensor  # (B, L) model probability of the proposed token (0 where not masked)
    n_commit: torch.Tensor  # (B,) long, how many positions the step budget asks to commit
    p_unmask: torch.Tensor  # (B,) probability that the reverse process reveals a masked position now
    uniform: torch.Tensor  # (B, L) uniforms in [0, 1), reproducible per row seed, step and position


class Policy(Protocol):
    name: str

    def commit(self, ctx: StepContext) -> torch.Tensor:
        """(B, L) bool: the positions to commit this step (a subset of ctx.masked)."""


def top_n(score: torch.Tensor, masked: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Per row, the ``n[b]`` masked positions with the highest score (leftmost first on ties). (B, L) bool."""
    score = torch.where(masked, score.float(), torch.full_like(score, float("-inf"), dtype=torch.float))
    order = torch.sort(score, dim=1, descending=True, stable=True).indices  # (B, L)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=order.device)
                                            .expand_as(order).contiguous())
    return (rank < n.unsqueeze(1)) & masked


class Ancestral:
    name = "ancestral"

    def commit(self, ctx: StepContext) -> torch.Tensor:
        return ctx.masked & (ctx.uniform < ctx.p_unmask.unsqueeze(1))


class Confidence:
    name = "confidence"

    def commit(self, ctx: StepContext) -> torch.Tensor:
        return top_n(ctx.confidence, ctx.masked, ctx.n_commit)


@hookimpl
def register_policies(register):
    for policy in (Ancestral(), Confidence()):
        register(policy.name, policy)
