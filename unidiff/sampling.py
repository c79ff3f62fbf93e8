"""The sampling loop: iterative parallel unmasking of a batch, visible in one function (`sample`).

Every position to generate starts as MASK; given positions (a prompt, the other segments) are clamped and never
change. Step k of a row with S steps walks the reverse process from t = 1 - k/S to s = 1 - (k+1)/S on the time
grid of a schedule. Each step:

1. runs the denoiser on the rows that still have masks (finished rows drop out of the batch) and whose policy
   may commit something this step (the budget is known before the pass, so a step that would commit nothing
   costs nothing), and computes logits only at masked positions;
2. proposes a clean token at every masked position: a draw from the model's distribution after temperature,
   top-k and top-p (temperature 0: the argmax), with its model probability as the *confidence*;
3. asks the unmasking policy which masked positions to commit. The schedule gives two budgets a policy may use:
   ``p_unmask = (alpha(s) - alpha(t)) / (1 - alpha(t))``, the probability that the reverse process reveals a
   masked position now (ancestral sampling), and ``n_commit``, the count that leaves
   ``floor(N (1 - alpha(s)))`` of the row's N target positions masked (confidence-style policies);
4. writes the committed proposals. The last step commits every position still masked.

With ``block_length`` (semi-autoregressive order, as in LLaDA) the targets of a row are cut, left to right, into
blocks; only the current block is masked-and-decoded, with its own share of the steps and its own time grid.

Randomness is counter-based: every uniform is a hash of (row seed, step, stream, position), so a row's tokens do
not depend on which other rows share its batch, on padding, or on the device's RNG: row i of a batch equals the
same row generated alone with the same seed (up to the model's own float rounding between a padded and an
unpadded row, against which confidences are quantised so that exact ties stay ties). Rows may differ in length
and number of steps; the loop does no per-row Python work.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from unidiff.data import Batch
from unidiff.device import autocast
from unidiff.errors import UnidiffError
from unidiff.model import Denoiser
from unidiff.policies import Policy, StepContext, quantise_prob
from unidiff.rng import STREAM_POLICY, STREAM_TOKEN, hashed_uniform
from unidiff.schedules import Schedule, get_schedule
from unidiff.vocab import MASK

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
        probs: ``logits.double().softmax(-1)`` if the caller has it already.
    Returns:
        (tokens, confidence): (N,) ids and their probability under the model (softmax of the raw logits).
    """
    logits = logits.double()
    probs = logits.softmax(-1) if probs is None else probs
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        draw = probs if temperature == 1 and top_k == 0 and top_p == 1 else \
            filter_logits(logits / temperature, top_k, top_p).softmax(-1)
        cdf = draw.cumsum(-1)
        # First id whose cumulative mass exceeds u * total: ids of zero mass can never be drawn.
        tokens = torch.searchsorted(cdf, (uniform * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
        tokens = torch.minimum(tokens, draw.gt(0).cumsum(-1).argmax(-1))  # guard u * total rounding up to total
    return tokens, probs.gather(1, tokens.unsqueeze(1)).squeeze(1)


@dataclass
class SampleOutput:
    """The result of `sample` for a batch.

    ids: (B, L) global ids, no MASK left at target positions.
    nfe: (B,) forward passes each row took part in.
    generated: (B,) number of positions each row generated.
    seconds: wall time of the loop.
    """

    ids: torch.Tensor
    nfe: torch.Tensor
    generated: torch.Tensor
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return float(self.generated.sum()) / max(self.seconds, 1e-9)


def step_budget(n_targets: torch.Tensor, steps: torch.Tensor, k: int | torch.Tensor, schedule: Schedule):
    """For rows with N targets and S steps at step k (an int, or one per row): (p_unmask, n_left_masked) after
    the step, as (B,) tensors."""
    S = steps.double().clamp(min=1)
    t = (1.0 - k / S).clamp(0, 1)
    s = (1.0 - (k + 1) / S).clamp(0, 1)
    m_t, m_s = schedule.mask_prob(t), schedule.mask_prob(s)  # 1 - alpha, the masked fractions
    p_unmask = ((m_t - m_s) / m_t.clamp(min=1e-12)).clamp(0, 1)
    left = torch.floor(n_targets.double() * m_s + 1e-6).long()
    return p_unmask, left


@torch.no_grad()
def sample(model: Denoiser, batch: Batch, policy: Policy, steps: int | Sequence[int] | torch.Tensor | None = None,
           seeds: int | Sequence[int] | torch.Tensor = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, schedule: Schedule | str = "linear", amp_dtype: torch.dtype | None = None,
           block_length: int | None = None,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> SampleOutput:
    """Generate the target positions of ``batch``.

    Args:
        model: the denoiser (its device is used).
        batch: rows to complete; ``batch.targets`` marks the positions to generate, every other non-pad position
            is given and stays as it is.
        policy: which masked positions each step commits (see `unidiff.policies`).
        steps: sampling steps per row (an int for all rows, or one per row); None gives one step per generated
            token. A row never takes more steps than it has targets.
        seeds: one seed per row, or an int: row b then gets seed + b.
        temperature, top_k, top_p: how proposals are drawn (temperature 0 = argmax).
        schedule: the time grid of the reverse process (a name or a `Schedule`).
        amp_dtype: autocast dtype for the forward passes (None: fp32).
        block_length: semi-autoregressive order (LLaDA): the targets of a row, left to right, in blocks of this
            many; a block is decoded (with an equal share of the steps) only after the previous one is complete.
        callback: called after every step with (k, rows, x): the step index, the rows that took part and the
            whole (B, L) batch of ids so far (MASK where still masked); for tracing the denoising trajectory.
    """
    if not (math.isfinite(temperature) and temperature >= 0) or not 0 < top_p <= 1 or top_k < 0:
        raise UnidiffError(f"need temperature >= 0, 0 < top_p <= 1 and top_k >= 0; got temperature={temperature}, "
                           f"top_p={top_p}, top_k={top_k}")
    schedule = get_schedule(schedule) if isinstance(schedule, str) else schedule
    device = next(model.parameters()).device
    batch = batch.to(device)
    B, L = batch.ids.shape
    targets = batch.targets & ~batch.pad_mask
    n_targets = targets.sum(1)  # (B,)
    if isinstance(seeds, int):
        seeds = seeds + torch.arange(B)
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device).reshape(B)
    if steps is None:
        steps = n_targets.clamp(min=1)
    steps = torch.as_tensor(steps, dtype=torch.long, device=device).expand(B)
    if (steps < 1).any():
        raise UnidiffError(f"steps must be at least 1; got {steps.min().item()}")
    if block_length is not None and block_length < 1:
        raise UnidiffError(f"block_length must be at least 1; got {block_length}")

    # Blocks: the targets of a row, in position order, cut into runs of block_length (one block when None). The
    # steps are shared out as evenly as possible (the first steps % n_blocks blocks get one more), at least one each.
    rank = targets.long().cumsum(1) - 1  # (B, L) index of each target within its row
    size = block_length or max(L, 1)
    block_of = torch.where(targets, rank // size, -1)  # (B, L)
    n_blocks = ((n_targets + size - 1) // size).clamp(min=1)
    current = torch.zeros(B, dtype=torch.long, device=device)  # the block each row is decoding
    local = torch.zeros(B, dtype=torch.long, device=device)  # the step within that block

    x = torch.where(targets, MASK, batch.ids)
    nfe = torch.zeros(B, dtype=torch.long, device=device)
    positions = torch.arange(L, device=device)
    may_commit = getattr(policy, "may_commit", None)
    start = time.perf_counter()
    k = 0
    while True:
        masked = targets & (x == MASK)
        live = masked.any(1)  # (B,) rows still generating
        if not live.any():
            break
        # The step's budget is known before the forward pass ...
        in_block = block_of == current.unsqueeze(1)  # (B, L)
        mb = masked & in_block  # only the current block is decoded
        n_block = (targets & in_block).sum(1)
        s_block = (steps // n_blocks + (current < steps % n_blocks).long()).clamp(min=1)
        s_block = torch.minimum(s_block, n_block.clamp(min=1))
        p_unmask, left = step_budget(n_block, s_block, local, schedule)
        last = local + 1 >= s_block  # a block's final step commits all it has left
        ctx = StepContext(masked=mb, tokens=None, confidence=None, n_commit=(mb.sum(1) - left).clamp(min=0),
                          p_unmask=p_unmask, uniform=hashed_uniform(seeds.unsqueeze(1), k, STREAM_POLICY, positions))
        # ... so a row whose policy would commit nothing this step skips the forward pass (it costs no NFE).
        run = live & (last | may_commit(ctx)) if may_commit is not None else live
        local = torch.where(live & ~run, local + 1, local)
        rows = run.nonzero().squeeze(1)
        if len(rows):
            xa, ma = x[rows], mb[rows]  # (b, L)
            with autocast(device, amp_dtype):
                h = model.features(xa, batch.modality[rows], batch.positions[rows], batch.pad_mask[rows])
                where = ma.nonzero(as_tuple=True)
                logits = model.logits(h[where], batch.modality[rows][where]).float()  # (n_masked, V)
            probs = logits.double().softmax(-1)  # (n_masked, V)
            u = hashed_uniform(seeds[rows][where[0]], k, STREAM_TOKEN, where[1])
            tok, conf = propose(logits, u, temperature, top_k, top_p, probs=probs)
            tokens = torch.full_like(xa, MASK)
            tokens[where] = tok
            confidence = torch.zeros(xa.shape, dtype=torch.float64, device=device)
            confidence[where] = quantise_prob(conf)
            step_ctx = StepContext(masked=ma, tokens=tokens, confidence=confidence, n_commit=ctx.n_commit[rows],
                                   p_unmask=p_unmask[rows], uniform=ctx.uniform[rows], probs=probs)
            commit = (policy.commit(step_ctx) | last[rows].unsqueeze(1)) & ma
            x[rows] = torch.where(commit, tokens, xa)
            nfe[rows] += 1
            block_done = last[rows] | ~(ma & ~commit).any(1)  # a block may also finish before its last step
            current[rows] += block_done.long()
            local[rows] = torch.where(block_done, 0, local[rows] + 1)
        if callback is not None:
            callback(k, rows, x)
        k += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return SampleOutput(ids=x, nfe=nfe.cpu(), generated=n_targets.cpu(), seconds=time.perf_counter() - start)
