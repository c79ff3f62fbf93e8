"""What every objective shares, as small pure functions: the Monte-Carlo times of the ELBO and the sums per
modality.

The terms themselves are the noise process's (`unidiff.process`, e.g. the absorbing process's masked-diffusion
bound). Only positions the model has to generate ("targets": not padding, not given context) are scored, and the
bound is reported per target token, in nats and in bits, per modality.
"""

from __future__ import annotations

import torch


def sample_times(n: int, generator: torch.Generator | None = None, eps: float = 1e-3,
                 stratified: bool = True, device=None) -> torch.Tensor:
    """(n,) times in [eps, 1]. Stratified (one uniform offset, evenly spaced) lowers the variance of the estimate."""
    if stratified:
        u = (torch.rand(1, generator=generator) + torch.arange(n) / n) % 1.0
    else:
        u = torch.rand(n, generator=generator)
    return (eps + (1.0 - eps) * u).to(device)


def per_modality(terms: torch.Tensor, targets: torch.Tensor, modality: torch.Tensor,
                 n_modalities: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ELBO terms and count of target tokens for each modality: two (M,) tensors."""
    idx = modality[targets]
    sums = torch.zeros(n_modalities, dtype=terms.dtype, device=terms.device).index_add_(0, idx, terms[targets])
    counts = torch.bincount(idx, minlength=n_modalities).to(terms.dtype)
    return sums, counts
