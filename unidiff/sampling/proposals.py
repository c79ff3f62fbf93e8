"""Proposals: one clean token drawn per open position from the denoiser's logits, after temperature, top-k and
top-p, by inverse-CDF sampling of counter-based uniforms (so a draw depends only on its row's seed, step and
position); the confidence a policy ranks by is the token's probability under the raw logits."""

from __future__ import annotations

import torch


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(N, V) logits with everything outside the top-k ids and outside the top-p nucleus set to -inf."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop an id when the ids ranked above it already hold top_p of the mass (the first id always stays).
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop_sorted[..., 0] = False  # even when top_p rounds to 0 in float32
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def propose(logits: torch.Tensor, uniform: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
            top_p: float = 1.0, probs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row of ``logits`` by inverse-CDF sampling.

    Args:
        logits: (N, V) float logits; -inf marks ids that may not be drawn.
        uniform: (N,) uniforms in [0, 1), one per draw.
        temperature: 0 takes the argmax (ties to the lowest id).
        probs: ``logits.float().softmax(-1)`` if the caller has it already.
    Returns:
        (tokens, confidence): (N,) ids and their probability under the model (softmax of the raw logits).
    """
    logits = logits.float()  # float32: the per-step work over the vocabulary is a large part of a step's cost
    probs = logits.softmax(-1) if probs is None else probs
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        if temperature == 1 and top_k == 0 and top_p == 1:
            draw = probs
        else:
            # Shift each row's maximum to 0 before dividing, and never divide by less than float32's smallest
            # normal number: a temperature that tiny is the greedy limit, and the draw must stay finite there.
            shifted = logits - logits.amax(-1, keepdim=True)
            draw = filter_logits(shifted / max(temperature, torch.finfo(torch.float32).tiny), top_k, top_p).softmax(-1)
        cdf = draw.cumsum(-1)
        # First id whose cumulative mass exceeds u * total: ids of zero mass can never be drawn.
        total = cdf[:, -1:].contiguous()
        tokens = torch.searchsorted(cdf, uniform.unsqueeze(1).to(cdf.dtype) * total, right=True).squeeze(1)
        # Guard u * total rounding up to total: never past the last id of positive mass, the first to reach it.
        tokens = torch.minimum(tokens, torch.searchsorted(cdf, total).squeeze(1))
    return tokens, probs.gather(1, tokens.unsqueeze(1)).squeeze(1)
