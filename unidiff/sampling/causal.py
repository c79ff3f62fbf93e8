"""Autoregressive decoding: a model of the autoregressive kind drawn left to right with its exact key/value cache,
with the uniforms `unidiff.sampling.loop.sample` would use, so the same tokens at a fraction of the cost."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from unidiff import checks
from unidiff.data import Batch
from unidiff.device import autocast
from unidiff.models.transformer import Denoiser
from unidiff.rng import STREAM_TOKEN, hashed_uniform
from unidiff.sampling.loop import SampleOutput
from unidiff.sampling.proposals import propose
from unidiff.vocab import MASK
from unidiff.models.widths import cut_to_width, row_widths


@torch.no_grad()
def sample_causal(model: Denoiser, batch: Batch, seeds: int | Sequence[int] | torch.Tensor = 0,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                  amp_dtype: torch.dtype | None = None, progress: Callable[[int], None] | None = None) -> SampleOutput:
    """Autoregressive generation with a key/value cache (a model of the autoregressive kind).

    Left to right, each target position is drawn given everything before it; given tokens (a prompt, or text
    after a hole, which a causal model cannot use for what comes before it) are fed as they stand. One forward
    pass reads the prompt shared by the batch, then each pass feeds every row the position just drawn (and the
    given positions up to the next one any row draws: `Denoiser.decode_step`). The draws use the same uniforms
    as `sample` with one-token blocks, so the tokens are those of the uncached loop up to float rounding, at a
    fraction of its cost: a pass reads the new positions only, not the whole row. Rows are left-padded so that
    their first targets line up: continuations of prompts of any lengths are drawn in lockstep. A row's NFE is
    the passes it took part in until its last target: one per generated token alone or beside rows like it,
    more beside rows whose later targets fall elsewhere (it rides along while others draw). At reduced precision
    on the CPU (`cut_to_width`) rows of different widths or targets run as separate batches instead, each exactly
    as it runs alone. ``progress``: as in `sample`.
    """
    temperature, top_k, top_p = checks.proposal(temperature, top_k, top_p)
    device = next(model.parameters()).device
    batch = batch.to(device)
    B, L = batch.ids.shape
    targets = batch.targets & ~batch.pad_mask
    n_targets = targets.sum(1)
    if isinstance(seeds, int):
        seeds = seeds + torch.arange(B)
    seeds = torch.as_tensor(seeds, dtype=torch.long, device=device).reshape(B)
    x = torch.where(targets, MASK, batch.ids)
    nfe = torch.zeros(B, dtype=torch.long, device=device)
    if not targets.any():
        return SampleOutput(ids=x, nfe=nfe.cpu(), generated=n_targets.cpu(), seconds=0.0)
    if cut_to_width(device, amp_dtype) and B > 1:
        kinds, kind = torch.unique(torch.cat([row_widths(batch.pad_mask)[:, None], targets.long()], 1), dim=0,
                                   return_inverse=True)
        # One batch per layout (width and targets): a pass feeds every given position up to the next drawn column,
        # so other rows' targets would cut a row's passes differently from alone.
        if len(kinds) > 1:
            start, drawn = time.perf_counter(), 0
            for k, w in enumerate(kinds[:, 0].tolist()):
                rows = (kind == k).nonzero().squeeze(1)
                part = batch.select(rows)
                part = Batch(*(None if t is None else t[:, :w] for t in (getattr(part, f) for f in Batch.FIELDS)))
                bar = None if progress is None else (lambda n, done=drawn: progress(done + n))
                out = sample_causal(model, part, seeds[rows], temperature, top_k, top_p, amp_dtype, bar)
                x[rows, :w], nfe[rows] = out.ids.to(device), out.nfe.to(device)
                drawn += int(out.generated.sum())
            return SampleOutput(ids=x, nfe=nfe.cpu(), generated=n_targets.cpu(), seconds=time.perf_counter() - start)
    # Left-pad each row so that every row's first target falls at the same column: rows then draw in lockstep
    # (alone, a generated continuation takes one pass per token whatever its prompt's length).
    first_target = torch.where(targets.any(1), targets.long().argmax(1), 0)
    shift = first_target.max() - first_target
    width = L + int(shift.max())
    cols = torch.arange(L, device=device) + shift[:, None]  # (B, L) column of each position
    rank = targets.long().cumsum(1) - 1  # a target's index in its row: the step `sample` would draw it at
    rows_ = torch.arange(B, device=device)[:, None]

    def spread(t: torch.Tensor, fill) -> torch.Tensor:
        out = t.new_full((B, width), fill)
        out[rows_, cols] = t
        return out

    xs, mod, pos = spread(x, MASK), spread(batch.modality, 0), spread(batch.positions, 0)
    tgt, rk, src = spread(targets, False), spread(rank, 0), spread(torch.arange(L, device=device).expand(B, L), 0)
    valid = spread(torch.ones_like(targets), False)
    key_valid = None if bool(valid.all()) else valid
    nothing_before = first_target == 0  # these rows' first token is drawn from the empty state (zeros)
    where = tgt.any(0).nonzero().squeeze(1).tolist()  # columns where some row draws a token
    cache: list[dict] = []
    start = time.perf_counter()
    passes = drawn = 0
    with autocast(device, amp_dtype):
        first = where[0]  # everything before it is given (or padding) in every row: one pass reads it
        if first > 0:
            h = model.decode_step(xs[:, :first], mod[:, :first], pos[:, :first], cache,
                                  None if key_valid is None else key_valid[:, :first])[:, -1]
            h = h.masked_fill(nothing_before[:, None], 0.0)
            passes = 1
        else:  # nothing before the first position: the state the uncached model gives it, zeros
            h = torch.zeros(B, model.cfg.d_model, device=device)
        for p, q in zip(where, where[1:] + [None]):
            rows = tgt[:, p].nonzero().squeeze(1)
            logits = model.logits(h[rows], mod[rows, p]).float()
            u = hashed_uniform(seeds[rows], rk[rows, p], STREAM_TOKEN, src[rows, p])
            xs[rows, p] = propose(logits, u, temperature, top_k, top_p)[0]
            nfe[rows] = passes
            if progress is not None:
                drawn += len(rows)
                progress(drawn)
            if q is not None:  # feed p .. q-1 (given tokens where no row draws) in one pass
                h = model.decode_step(xs[:, p:q], mod[:, p:q], pos[:, p:q], cache,
                                      None if key_valid is None else key_valid[:, :q])[:, -1]
                passes += 1
    x = xs.gather(1, cols)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return SampleOutput(ids=x, nfe=nfe.cpu(), generated=n_targets.cpu(), seconds=time.perf_counter() - start)
