"""Continuous batching: a queue of requests served by the slots of one `Sampler`."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from unidiff.data import Batch
from unidiff.errors import UnidiffError
from unidiff.models.transformer import Denoiser
from unidiff.sampling.policies import Policy
from unidiff.sampling.loop import SampleOutput, Sampler


@torch.no_grad()
def sample_stream(model: Denoiser, batch: Batch, policy: Policy, max_batch: int,
                  steps: int | Sequence[int] | torch.Tensor | None = None,
                  seeds: int | Sequence[int] | torch.Tensor = 0, progress: Callable[[int], None] | None = None,
                  **settings) -> SampleOutput:
    """Continuous batching: the rows of ``batch`` are requests served first come, first served by at most
    ``max_batch`` slots; a row that is done leaves after the step that completes it and the next waiting request
    takes its slot at once, so the slots stay full while requests of different lengths and step budgets come and
    go. Every request gets the tokens `sample` gives it alone (the `Sampler`'s per-row step counters); the result
    adds each request's latency. ``progress`` is called after every step with the number of target tokens
    committed so far, over all requests. ``settings``: the keyword arguments of `sample` (temperature,
    block_length, cache, guidance, ...)."""
    device = next(model.parameters()).device
    R, L = batch.ids.shape
    if max_batch < 1:
        raise UnidiffError(f"max_batch must be at least 1; got {max_batch}")
    if isinstance(seeds, int):
        seeds = seeds + torch.arange(R)
    seeds = torch.as_tensor(seeds, dtype=torch.long).reshape(R)
    targets = batch.targets & ~batch.pad_mask
    steps_all = targets.sum(1).clamp(min=1) if steps is None else torch.as_tensor(steps, dtype=torch.long).expand(R)
    sampler = Sampler(model, policy, min(max_batch, R), L, **settings)
    ids = batch.ids.clone().to(device)  # each request's row, replaced when it is done
    nfe = torch.zeros(R, dtype=torch.long)
    latency = torch.zeros(R, dtype=torch.float64)
    owner = torch.full((sampler.S,), -1, dtype=torch.long)  # the request in each slot
    waiting = finished = 0  # requests admitted; target tokens of the requests done
    start = time.perf_counter()

    def admit(slots: torch.Tensor) -> None:
        nonlocal waiting
        n = min(len(slots), R - waiting)
        if n <= 0:
            return
        take = torch.arange(waiting, waiting + n)
        sampler.admit(batch.select(take), slots[:n].to(device), steps_all[take].to(device), seeds[take])
        owner[slots[:n].cpu()] = take
        waiting += n

    admit(torch.arange(sampler.S))
    while True:
        ran = sampler.step()
        if progress is not None:
            progress(finished + sampler.committed())
        done = sampler.finished()
        if len(done):
            now = time.perf_counter() - start
            req = owner[done.cpu()]
            finished += int(targets[req].sum())
            ids[req.to(device)] = sampler.x[done]
            nfe[req] = sampler.nfe[done].cpu()
            latency[req] = now
            sampler.release(done)
            admit(done.cpu())
        elif ran is None and waiting >= R:
            break
        if waiting >= R and not bool(sampler.active.any()):
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return SampleOutput(ids=ids, nfe=nfe, generated=targets.sum(1), seconds=time.perf_counter() - start,
                        latency=latency)
