"""The absorbing (masking) process of MDLM and MD4, the built-in `Process`.

Forward: each target token is replaced by MASK independently with probability ``1 - alpha(t)``; a masked token
stays masked. For a clean sequence x0 the continuous-time ELBO is

    -log p(x0) <= E_{t ~ U(0,1)} E_{xt ~ q(.|x0,t)} [ w(t) * sum_{i masked in xt} -log p_theta(x0_i | xt) ],
    w(t) = -alpha'(t) / (1 - alpha(t)),

so only masked positions are scored, and the denoiser needs no time input (the posterior of a masked position does
not depend on t). Reverse, from t to s < t: a masked position is revealed with probability
``(alpha(s) - alpha(t)) / (1 - alpha(t))`` as a draw from the denoiser's clean-token distribution; a revealed one
never changes (without remasking). Confidence-style policies keep the count instead: ``floor(N (1 - alpha(s)))``
of a block's N positions stay masked after the step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unidiff.hookspecs import hookimpl
from unidiff.process.base import Process
from unidiff.process.schedules import Schedule
from unidiff.vocab import MASK


def corrupt(x0: torch.Tensor, t: torch.Tensor, schedule: Schedule, targets: torch.Tensor,
            generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each target position independently with probability 1 - alpha(t).

    Args:
        x0: (B, L) clean global ids.
        t: (B,) times, or (B, L) times per position.
        targets: (B, L) bool, positions that may be masked.
    Returns:
        xt (B, L) and the bool mask of masked positions (B, L).
    """
    p = schedule.mask_prob(t)
    p = p.unsqueeze(1) if p.dim() == 1 else p  # (B, 1) or (B, L)
    u = torch.rand(x0.shape, generator=generator).to(x0.device)
    masked = (u < p) & targets
    return torch.where(masked, torch.full_like(x0, MASK), x0), masked


def elbo_terms(nll: torch.Tensor, masked: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """(B, L) per-position contributions w(t) * nll on masked positions, zero elsewhere (nats); t is (B,) or
    (B, L)."""
    w = schedule.weight(t)
    w = w.unsqueeze(1) if w.dim() == 1 else w  # (B, 1) or (B, L)
    return torch.where(masked, w * nll, torch.zeros_like(nll))


def step_budget(n_targets: torch.Tensor, steps: torch.Tensor, k: int | torch.Tensor, schedule: Schedule,
                remask: float = 0.0):
    """For blocks with N targets and S steps at step k (an int, or one per block): (p_unmask, n_left_masked,
    sigma) after the step, as (G,) tensors. ``sigma`` is the probability of re-masking a committed token
    (``remask`` times ReMDM's largest admissible value); ``p_unmask`` already includes the matching rise."""
    S = steps.double().clamp(min=1)
    t = (1.0 - k / S).clamp(0, 1)
    s = (1.0 - (k + 1) / S).clamp(0, 1)
    m_t, m_s = schedule.mask_prob(t), schedule.mask_prob(s)  # 1 - alpha, the masked fractions
    sigma = remask * torch.where(m_t < 1, m_s / (1 - m_t).clamp(min=1e-12), torch.zeros_like(m_s)).clamp(0, 1)
    p_unmask = ((m_t - m_s + sigma * (1 - m_t)) / m_t.clamp(min=1e-12)).clamp(0, 1)
    left = torch.floor(n_targets.double() * m_s + 1e-6).long()
    return p_unmask, left, sigma


class Absorbing(Process):
    """MASK as the noise: today's masked diffusion (the functions above, as the `Process` interface)."""

    name = "absorbing"
    time_conditioned = False

    def corrupt(self, x0, t, targets, schedule, generator, modality, layout):
        return corrupt(x0, t, schedule, targets, generator)

    def elbo_terms(self, logits, x0, xt, scored, t, schedule):
        nll = torch.zeros(x0.shape, device=x0.device)
        nll[scored] = F.cross_entropy(logits.float(), x0[scored], reduction="none")
        return elbo_terms(nll, scored, t, schedule)

    def start(self, ids, targets, modality, layout, uniform):
        return torch.where(targets, MASK, ids)

    def budget(self, n_targets, steps, k, schedule, remask=0.0):
        return step_budget(n_targets, steps, k, schedule, remask)

    def posterior(self, logits, current):
        return logits  # a masked position is revealed as a draw of the clean token

    def reopen(self, x, chosen, modality, layout, uniform):
        return torch.where(chosen, MASK, x)


@hookimpl
def register_processes(register):
    register(Absorbing.name, Absorbing)
