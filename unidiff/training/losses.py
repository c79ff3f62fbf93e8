"""The continuous-time masked-diffusion ELBO (MDLM, MD4), as small pure functions.

For a clean sequence x0 and the absorbing process with schedule alpha(t),

    -log p(x0) <= E_{t ~ U(0,1)} E_{xt ~ q(.|x0,t)} [ w(t) * sum_{i masked in xt} -log p_theta(x0_i | xt) ],
    w(t) = -alpha'(t) / (1 - alpha(t)).

Only positions the model has to generate ("targets": not padding, not given context) can be masked, and the
bound is reported per target token, in nats and in bits, per modality.
"""

from __future__ import annotations

import torch

from unidiff.schedules import Schedule
from unidiff.vocab import MASK


def sample_times(n: int, generator: torch.Generator | None = None, eps: float = 1e-3,
                 stratified: bool = True, device=None) -> torch.Tensor:
    """(n,) times in [eps, 1]. Stratified (one uniform offset, evenly spaced) lowers the variance of the estimate."""
    if stratified:
        u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1.0
    else:
        u = torch.rand(n, generator=generator)
    return (eps + (1.0 - eps) * u).to(device)


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


def per_modality(terms: torch.Tensor, targets: torch.Tensor, modality: torch.Tensor,
                 n_modalities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ELBO terms and count of target tokens for each modality: two (M,) tensors."""
    idx = modality[targets]
    sums = torch.zeros(n_modalities, dtype=terms.dtype, device=terms.device).index_add_(0, idx, terms[targets])
    counts = torch.bincount(idx, minlength=n_modalities).to(terms.dtype)
    return sums, counts
