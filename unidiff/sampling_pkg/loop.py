"""The sampling loop: iterative parallel unmasking of a batch, visible in one function (`sample`).

Every position to generate starts as MASK; given positions (a prompt, the other segments) are clamped and never
change. The targets of a row decode in *groups*: by default one per row; segments with their own policy, steps or
schedule (``batch.group``, see `GroupSpec`) form their own, decoded concurrently with the rest of the row, and
with ``block_length`` each group is cut, left to right, into blocks decoded one after the other (LLaDA's
semi-autoregressive order), each with its share of the group's steps and its own time grid. Step k of a block
with S steps walks the reverse process from t = 1 - k/S to s = 1 - (k+1)/S on its schedule. Each step:

1. computes each group's budget: ``p_unmask = (alpha(s) - alpha(t)) / (1 - alpha(t))``, the probability that
   the reverse process reveals a masked position now (ancestral sampling), and ``n_commit``, the count that
   leaves ``floor(N (1 - alpha(s)))`` of the block's N positions masked (confidence-style policies);
2. with remasking (ReMDM, rescaled), re-masks each token the block has already committed with probability
   ``sigma = remask * min(1, (1 - alpha(s)) / alpha(t))`` (at most as many as the step leaves masked: the
   smallest uniforms win) and raises the budgets to match, so the block stays on its schedule while revisiting
   earlier choices;
3. runs the denoiser on the rows that have a group able to commit something (the budgets are known before the
   pass, so a step that would commit nothing costs nothing); with guidance w, a second pass hides the
   conditioning positions (``batch.condition``) and the logits become ``uncond + w * (cond - uncond)``;
4. proposes a clean token at every masked position of the current blocks: a draw from the model's distribution
   after temperature, top-k and top-p (temperature 0: the argmax), with its model probability as confidence;
5. asks each group's policy which positions to commit (a policy sees one "row" per group); the last step of a
   block commits all it has left.

Randomness is counter-based: every uniform is a hash of (row seed, step, stream, position), so a row's tokens do
not depend on which other rows share its batch, on padding, or on the device's RNG: row i of a batch equals the
same row generated alone with the same seed, up to the model's own float rounding between a padded and an
unpadded row: in fp32 it stays below the quantised confidences (so exact ties stay ties); at reduced precision on
the CPU each row is computed at its own width (`cut_to_width`), exact there too; on a GPU in bf16 a row may round
differently in a batch. The loop's Python work is per distinct policy, schedule and (`cut_to_width`) row width,
never per row.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from unidiff import checks
from unidiff.data import Batch
from unidiff.device import autocast
from unidiff.errors import UnidiffError
from unidiff.model import Denoiser
from unidiff.policies import Policy, StepContext, quantise_prob, top_n
from unidiff.rng import STREAM_POLICY, STREAM_REMASK, STREAM_TOKEN, hashed_uniform
from unidiff.kvcache import KVStore, cache_mode
from unidiff.schedules import Schedule, get_schedule
from unidiff.vocab import MASK
from unidiff.widths import by_width, cut_to_width, row_widths

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


@dataclass
class SampleOutput:
    """The result of `sample` for a batch.

    ids: (B, L) global ids, no MASK left at target positions.
    nfe: (B,) forward passes each row took part in.
    generated: (B,) number of positions each row generated.
    seconds: wall time of the loop.
    latency: (B,) seconds from the start of the loop until each row was done (`sample_stream` only).
    """

    ids: torch.Tensor
    nfe: torch.Tensor
    generated: torch.Tensor
    seconds: float
    latency: torch.Tensor | None = None  # (B,) seconds from the start until each row was done (sample_stream)

    @property
    def tokens_per_second(self) -> float:
        return float(self.generated.sum()) / max(self.seconds, 1e-9)


def step_budget(n_targets: torch.Tensor, steps: torch.Tensor, k: int | torch.Tensor, schedule: Schedule,
                remask: float = 0.0):
    """For groups with N targets and S steps at step k (an int, or one per group): (p_unmask, n_left_masked,
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


@dataclass
class GroupSpec:
    """Sampling settings of the targets whose ``batch.group`` is this spec's number (1 for the first spec).

    Args:
        policy: the group's unmasking policy (None: the call's).
        steps: the group's steps (None: the call's steps for its row).
        schedule: the group's time grid (None: the call's).
    """

    policy: Policy | None = None
    steps: int | None = None
    schedule: Schedule | str | None = None


def _logits(model, h, modality, blank):
    return model.logits(h, modality) if blank is None else model.logits(h, modality, blank=blank)


def _scatter_sum(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long, device=index.device).index_add_(0, index, values.long())


@torch.no_grad()
def sample(model: Denoiser, batch: Batch, policy: Policy, steps: int | Sequence[int] | torch.Tensor | None = None,
           seeds: int | Sequence[int] | torch.Tensor = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, schedule: Schedule | str = "linear", amp_dtype: torch.dtype | None = None,
           block_length: int | None = None, remask: float = 0.0, guidance: float = 1.0,
           groups: Sequence[GroupSpec] = (), cache: bool | str = False,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           progress: Callable[[int], None] | None = None) -> SampleOutput:
    """Generate the target positions of ``batch``.

    Args:
        model: the denoiser (its device is used).
        batch: rows to complete; ``batch.targets`` marks the positions to generate, every other non-pad position
            is given and stays as it is. ``batch.group`` (optional) puts targets in groups: 0 follows this call's
            settings, g >= 1 follows ``groups[g - 1]``. ``batch.blank_ok`` marks positions that may become BLANK.
        policy: which masked positions each step commits (see `unidiff.policies`).
        steps: sampling steps per row (an int for all rows, or one per row); None gives one step per generated
            token. A group never takes more steps than it has targets.
        seeds: one seed per row, or an int: row b then gets seed + b.
        temperature, top_k, top_p: how proposals are drawn (temperature 0 = argmax).
        schedule: the time grid of the reverse process (a name or a `Schedule`).
        amp_dtype: autocast dtype for the forward passes (None: fp32).
        block_length: semi-autoregressive order (LLaDA): each group's targets, left to right, in blocks of this
            many; a block is decoded (with an equal share of the steps) only after the previous one is complete.
        remask: ReMDM remasking strength in [0, 1] (0: off): the fraction of the largest admissible re-masking
            probability applied to tokens already committed in the current block.
        guidance: classifier-free guidance scale w (1: off; 0: unconditional). Costs a second forward pass.
        groups: settings of the groups numbered 1, 2, ... in ``batch.group``.
        cache: approximate key/value cache (Fast-dLLM's dual cache; off by default): a row's first step in a block
            runs the whole row and keeps every layer's keys and values; its other steps in that block compute only
            the block's positions, attending to the kept keys and values elsewhere (the prompt, earlier and later
            blocks as they stood when the block began). With ``block_length`` a step then costs about
            block_length / L of a full pass; without, only the given positions are cached. ``cache="delta"``
            never runs a full pass after the first: each step computes the block and the positions whose tokens
            changed since they were stored, and stores them (see `unidiff.kvcache`). Neither is exact: their
            quality cost is measured in bench/.
        callback: called after every step with (k, rows, x): the step index, the rows that took part and the
            whole (B, L) batch of ids so far (MASK where still masked); for tracing the denoising trajectory.
        progress: called after every step with the number of target tokens committed so far (a progress bar).
    """
    device = next(model.parameters()).device
    batch = batch.to(device)
    B, L = batch.ids.shape
    sampler = Sampler(model, policy, B, L, temperature=temperature, top_k=top_k, top_p=top_p, schedule=schedule,
                      amp_dtype=amp_dtype, block_length=block_length, remask=remask, guidance=guidance,
                      groups=groups, cache=cache)
    if isinstance(seeds, int):
        seeds = seeds + torch.arange(B)
    slots = torch.arange(B, device=device)
    sampler.admit(batch, slots, steps, seeds)
    start = time.perf_counter()
    while True:
        rows = sampler.step()
        if rows is None:
            break
        if callback is not None:
            callback(sampler.k - 1, rows, sampler.x)
        if progress is not None:
            progress(sampler.committed())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return SampleOutput(ids=sampler.x, nfe=sampler.nfe.cpu(), generated=sampler.n_targets.cpu(),
                        seconds=time.perf_counter() - start)


class Sampler:
    """The state of `sample`'s loop, in ``slots`` rows of ``width`` positions: requests are admitted into free
    slots at any step (`admit`) and leave when done (`finished`, `release`), so one batch can serve a stream of
    requests of different lengths and step budgets (continuous batching, see `sample_stream`).

    Everything a row's tokens depend on is its own: its step counter starts at 0 when it is admitted and the
    uniforms are hashed from (its seed, its step, position), so a request gives the same tokens whatever shares
    its batch and whenever it joins (up to float rounding in the model's batched passes: see the module's note).
    """

    def __init__(self, model: Denoiser, policy: Policy, slots: int, width: int, *, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, schedule: Schedule | str = "linear",
                 amp_dtype: torch.dtype | None = None, block_length: int | None = None, remask: float = 0.0,
                 guidance: float = 1.0, groups: Sequence[GroupSpec] = (), cache: bool | str = False):
        temperature, top_k, top_p = checks.proposal(temperature, top_k, top_p)
        remask = checks.real("remask", remask, 0, 1)  # 0: off
        guidance = checks.real("guidance", guidance, 0, checks.MAX_GUIDANCE)  # 1: off, 0: unconditional
        block_length = checks.optional(checks.whole, "block_length", block_length, 1, checks.MAX_COUNT)
        self.model, self.temperature, self.top_k, self.top_p = model, temperature, top_k, top_p
        self.amp_dtype, self.remask, self.guidance = amp_dtype, remask, guidance
        self.device = device = next(model.parameters()).device
        self.S, self.L = slots, width
        # The settings table: entry 0 is the call's, entry g the g-th GroupSpec's. Distinct policies and schedules
        # get small integer ids so the loop can select with tensors.
        specs = [GroupSpec(policy, None, schedule)] + [GroupSpec(g.policy or policy, g.steps,
                                                                 g.schedule or schedule) for g in groups]
        self.policies, self.schedules = [], []
        pol_of, sch_of, spec_steps = [], [], []
        for g in specs:
            sch = get_schedule(g.schedule) if isinstance(g.schedule, str) else g.schedule
            pol_of.append(next((i for i, p in enumerate(self.policies) if p is g.policy), len(self.policies)))
            if pol_of[-1] == len(self.policies):
                self.policies.append(g.policy)
            sch_of.append(next((i for i, q in enumerate(self.schedules) if q is sch or q == sch),
                               len(self.schedules)))
            if sch_of[-1] == len(self.schedules):
                self.schedules.append(sch)
            if g.steps is not None and g.steps < 1:
                raise UnidiffError(f"a group's steps must be at least 1; got {g.steps}")
            spec_steps.append(-1 if g.steps is None else g.steps)
        self.G = G = len(specs)
        self.pol_of = torch.tensor(pol_of, device=device)
        self.sch_of = torch.tensor(sch_of, device=device)
        self.spec_steps = torch.tensor(spec_steps, device=device)
        self.size = block_length or max(width, 1)
        self.passes = 2 if guidance != 1.0 else 1
        if cache and not isinstance(model, Denoiser):  # Mirrored (symmetric sampling) or another architecture
            raise UnidiffError(f"the key/value cache needs the plain denoiser of the built-in transformer, whose "
                               f"layers it reaches into; this is {type(model).__name__}: drop symmetric sampling "
                               f"or the cache")
        if cache and model.cfg.kind != "diffusion":
            raise UnidiffError("the approximate key/value cache is for diffusion models; an autoregressive model "
                               "decodes with its exact cache (sample_causal)")
        mode = cache_mode(cache)
        self.store = KVStore(self.passes * slots, width, mode) if mode else None
        self.by_width = cut_to_width(device, amp_dtype)
        S, L = slots, width
        zeros = lambda dtype: torch.zeros((S, L), dtype=dtype, device=device)  # noqa: E731
        self.x, self.modality, self.positions = zeros(torch.long), zeros(torch.long), zeros(torch.long)
        self.pad_mask = torch.ones((S, L), dtype=torch.bool, device=device)
        self.targets, self.condition, self.group = zeros(torch.bool), zeros(torch.bool), zeros(torch.long)
        self.blank_ok = None
        self.block_of = torch.full((S, L), -1, dtype=torch.long, device=device)
        self.seeds, self.nfe, self.k0 = (torch.zeros(S, dtype=torch.long, device=device) for _ in range(3))
        self.row_steps = torch.ones(S, dtype=torch.long, device=device)
        self.n_targets = torch.zeros(S, dtype=torch.long, device=device)
        self.width = torch.zeros(S, dtype=torch.long, device=device)  # each slot's row up to its last real position
        self.n_group = torch.zeros((S, G), dtype=torch.long, device=device)  # targets per (slot, group)
        self.cur = torch.zeros((S, G), dtype=torch.long, device=device)  # the block each (slot, group) decodes
        self.loc = torch.zeros((S, G), dtype=torch.long, device=device)  # the step within that block
        self.active = torch.zeros(S, dtype=torch.bool, device=device)
        self.k = 0

    def committed(self) -> int:
        """Target tokens of the active slots that are committed now (not MASK)."""
        return int((self.targets & self.active.unsqueeze(1) & (self.x != MASK)).sum())

    def admit(self, batch: Batch, slots: torch.Tensor, steps=None, seeds=0) -> None:
        """Put the rows of ``batch`` (at most ``width`` positions) into free ``slots``; ``steps`` and ``seeds`` as
        in `sample`."""
        dev = self.device
        batch = batch.to(dev)
        b, n = batch.ids.shape
        if n > self.L:
            raise UnidiffError(f"rows of {n} positions do not fit slots of {self.L}")
        slots = torch.as_tensor(slots, dtype=torch.long, device=dev).reshape(b)
        if bool(self.active[slots].any()):
            raise UnidiffError("admit: a slot is still busy; release it first")
        targets = batch.targets & ~batch.pad_mask
        n_targets = targets.sum(1)
        if isinstance(seeds, int):
            seeds = seeds + torch.arange(b)
        row_steps = n_targets.clamp(min=1) if steps is None else \
            torch.as_tensor(steps, dtype=torch.long, device=dev).expand(b)
        if (row_steps < 1).any():
            raise UnidiffError(f"steps must be at least 1; got {row_steps.min().item()}")
        group = torch.zeros_like(batch.ids) if batch.group is None else batch.group.clamp(min=0)
        if int(group.max()) >= self.G:
            raise UnidiffError(f"batch.group uses group {int(group.max())} but only {self.G - 1} GroupSpec(s) "
                               f"were given")

        onehot = torch.nn.functional.one_hot(group, self.G) * targets.unsqueeze(-1)  # (b, n, G)
        n_group = onehot.sum(1)  # (b, G) targets per group
        # Each block takes at least one step: a budget smaller than the blocks it must decode cannot be kept.
        blocks = (n_group + self.size - 1) // self.size  # (b, G)
        own = self.spec_steps.unsqueeze(0).expand_as(blocks)
        budget = torch.where(own > 0, own, row_steps.unsqueeze(1).expand_as(blocks))
        short = (blocks > budget).nonzero()
        if len(short):
            r, g = short[0].tolist()
            raise UnidiffError(f"{int(budget[r, g])} step(s) cannot decode {int(blocks[r, g])} blocks of "
                               f"{self.size} tokens (each block takes at least one step): ask for at least "
                               f"{int(blocks[r, g])} steps or a longer block length")

        def put(dst: torch.Tensor, src: torch.Tensor, fill) -> None:
            dst[slots] = fill
            dst[slots, :n] = src

        condition = batch.condition if batch.condition is not None else ~batch.targets
        put(self.x, torch.where(targets, MASK, batch.ids), 0)
        put(self.modality, batch.modality, 0)
        put(self.positions, batch.positions, 0)
        put(self.pad_mask, batch.pad_mask, True)
        put(self.targets, targets, False)
        put(self.condition, condition & ~batch.pad_mask, False)
        put(self.group, group, 0)
        if batch.blank_ok is not None and self.blank_ok is None:
            self.blank_ok = torch.zeros((self.S, self.L), dtype=torch.bool, device=dev)
        if self.blank_ok is not None:
            put(self.blank_ok, batch.blank_ok if batch.blank_ok is not None else torch.zeros_like(targets), False)
        # Each target's rank within its (row, group) cuts it into blocks.
        rank = onehot.cumsum(1).gather(2, group.unsqueeze(-1)).squeeze(-1) - 1
        put(self.block_of, torch.where(targets, rank // self.size, -1), -1)
        self.n_group[slots] = n_group
        self.cur[slots], self.loc[slots] = 0, 0
        self.seeds[slots] = torch.as_tensor(seeds, dtype=torch.long, device=dev).reshape(b)
        self.row_steps[slots] = row_steps
        self.n_targets[slots] = n_targets
        self.width[slots] = row_widths(batch.pad_mask)
        self.nfe[slots] = 0
        self.k0[slots] = self.k
        self.active[slots] = True
        if self.store is not None:
            self.store.reset(torch.cat([slots + j * self.S for j in range(self.passes)]))

    def finished(self) -> torch.Tensor:
        """The active slots with nothing left to generate."""
        return (self.active & ~(self.targets & (self.x == MASK)).any(1)).nonzero().squeeze(1)

    def release(self, slots: torch.Tensor) -> None:
        self.active[slots] = False

    def _features(self, slots: torch.Tensor, widths: torch.Tensor, need: torch.Tensor | None, ids, modality,
                  positions, pad_mask, hole=None) -> torch.Tensor:
        """(n, L, d) features of the (n, L) rows of these slots (``slots``: the store's; ``widths``: the rows';
        ``need``: the positions a cached pass computes), in one pass or, with ``by_width``, cut to their widths."""
        def run(sel: slice | torch.Tensor, w: int) -> torch.Tensor:
            args = [t[sel, :w] for t in (ids, modality, positions, pad_mask)]
            kw = {} if hole is None else {"hole": hole[sel, :w]}
            if self.store is None:
                return self.model.features(*args, **kw)
            return self.store.features(self.model, slots[sel], need[sel, :w], *args, **kw)

        return by_width(run, widths, ids.shape[1]) if self.by_width else run(slice(None), ids.shape[1])

    def step(self) -> torch.Tensor | None:
        """One step of every active slot; returns the slots that ran the denoiser (None: nothing left to do)."""
        model, device, B, L, G = self.model, self.device, self.S, self.L, self.G
        x, passes, remask, guidance = self.x, self.passes, self.remask, self.guidance
        targets = self.targets & self.active.unsqueeze(1)
        # Instances: one per (slot, group) that has targets.
        key = torch.arange(B, device=device).unsqueeze(1) * G + self.group  # (B, L)
        uniq, inst = torch.unique(key[targets], return_inverse=True)
        I = len(uniq)
        if I == 0:
            return None
        inst_at = torch.full((B, L), -1, dtype=torch.long, device=device)
        inst_at[targets] = inst
        i_row, i_spec = uniq // G, uniq % G  # (I,)
        current, local = self.cur[i_row, i_spec], self.loc[i_row, i_spec]
        i_n = self.n_group[i_row, i_spec]
        i_blocks = ((i_n + self.size - 1) // self.size).clamp(min=1)
        spec_steps_t = self.spec_steps[i_spec]
        i_steps = torch.where(spec_steps_t > 0, spec_steps_t, self.row_steps[i_row])  # (I,)
        i_pol, i_sch = self.pol_of[i_spec], self.sch_of[i_spec]
        inst_c = inst_at.clamp(min=0)
        inst_flat = inst_c.flatten()
        own = inst_at[i_row] == torch.arange(I, device=device).unsqueeze(1)  # (I, L): each instance's positions
        k_row = (self.k - self.k0).unsqueeze(1)  # (B, 1): each slot's own step counter

        def count(mask: torch.Tensor) -> torch.Tensor:
            """(I,) number of True positions of each instance in a (B, L) mask of target positions."""
            return _scatter_sum(inst_flat, (mask & targets).flatten(), I)

        def to_rows(per_instance: torch.Tensor, rows_of: torch.Tensor, n_rows: int) -> torch.Tensor:
            """(n, L) masks of instances -> (n_rows, L) masks of their rows (an instance's row index in rows_of)."""
            out = torch.zeros((n_rows, L), dtype=torch.long, device=device)
            return out.index_add_(0, rows_of, per_instance.long()) > 0

        masked = targets & (x == MASK)
        in_block = targets & (self.block_of == current[inst_c])  # (B, L): each instance's current block
        mb = masked & in_block
        left_now = count(mb)
        if not (left_now > 0).any():
            return None
        live = left_now > 0  # (I,)
        # The step's budgets, per instance, before the forward pass.
        n_block = count(in_block)
        s_block = (i_steps // i_blocks + (current < i_steps % i_blocks).long()).clamp(min=1)
        s_block = torch.minimum(s_block, n_block.clamp(min=1))
        p_unmask = torch.zeros(I, dtype=torch.float64, device=device)
        left = torch.zeros(I, dtype=torch.long, device=device)
        sigma = torch.zeros(I, dtype=torch.float64, device=device)
        for j, sch in enumerate(self.schedules):
            p_j, l_j, s_j = step_budget(n_block, s_block, local, sch, remask)
            sel = i_sch == j
            p_unmask, left, sigma = torch.where(sel, p_j, p_unmask), torch.where(sel, l_j, left), \
                torch.where(sel, s_j, sigma)
        last = local + 1 >= s_block  # a block's final step commits all it has left
        positions = torch.arange(L, device=device)
        uniform = hashed_uniform(self.seeds.unsqueeze(1), k_row, STREAM_POLICY, positions)  # (B, L)
        re = torch.zeros_like(masked)
        if remask > 0:  # ReMDM: committed tokens of the current block go back to MASK with probability sigma
            u_re = hashed_uniform(self.seeds.unsqueeze(1), k_row, STREAM_REMASK, positions)
            re = in_block & ~masked & (u_re < sigma[inst_c]) & (live & ~last)[inst_c]
            # At most `left` of them (the smallest uniforms), so the step can still end with exactly `left` masked.
            re = to_rows(top_n(-u_re[i_row], re[i_row] & own, left), i_row, B)
        n_re = count(re)
        n_commit = torch.minimum((left_now - left).clamp(min=0) + n_re, left_now)
        # One policy "row" per instance: its masked positions of the current block, in its row.
        vm = mb[i_row] & own  # (I, L)
        go = live & (last | (n_re > 0))
        for j, pol in enumerate(self.policies):
            may = getattr(pol, "may_commit", None)
            sel = (i_pol == j) & live
            if may is None:
                go |= sel
            elif sel.any():
                idx = sel.nonzero().squeeze(1)
                ctx = StepContext(masked=vm[idx], tokens=None, confidence=None, n_commit=n_commit[idx],
                                  p_unmask=p_unmask[idx], uniform=uniform[i_row[idx]])
                go[idx] |= may(ctx)
        # ... so a row none of whose groups would commit anything skips the forward pass (it costs no NFE).
        run_row = _scatter_sum(i_row, go, B) > 0
        rows = run_row.nonzero().squeeze(1)
        step_inst = live & run_row[i_row]  # instances decided by the model this step
        if len(rows):
            xa, ma = x[rows], mb[rows]  # (b, L)
            where = ma.nonzero(as_tuple=True)
            mods = self.modality[rows]
            blank_ok = self.blank_ok
            blank = blank_ok[rows][where] if blank_ok is not None else None
            hole = {} if blank_ok is None else {"hole": blank_ok[rows].repeat(passes, 1)}
            store = self.store
            # The positions a cached pass must compute: the dual cache's store holds the block as it stood at the
            # block's start, so all of it; the delta cache's holds every position as last computed, so the masked
            # ones (whose states the step reads) and, added by the store, those that changed since.
            need = None if store is None else (mb if store.mode == "delta" else in_block)[rows]
            with autocast(device, self.amp_dtype):
                if passes == 2:  # the unconditional pass hides the conditioning positions from attention
                    hidden = torch.cat([self.pad_mask[rows], self.pad_mask[rows] | self.condition[rows]])
                    h = self._features(torch.cat([rows, rows + B]), self.width[rows].repeat(2),
                                       None if need is None else need.repeat(2, 1), xa.repeat(2, 1),
                                       mods.repeat(2, 1), self.positions[rows].repeat(2, 1), hidden, **hole)
                    lc = _logits(model, h[:len(rows)][where], mods[where], blank).float()
                    lu = _logits(model, h[len(rows):][where], mods[where], blank).float()
                    logits = torch.where(torch.isfinite(lc), lu + guidance * (lc - lu), lc)
                else:
                    h = self._features(rows, self.width[rows], need, xa, mods, self.positions[rows],
                                       self.pad_mask[rows], **hole)
                    logits = _logits(model, h[where], mods[where], blank).float()  # (n_masked, V)
            probs = logits.softmax(-1)  # (n_masked, V), float32
            u = hashed_uniform(self.seeds[rows][where[0]], k_row[rows, 0][where[0]], STREAM_TOKEN, where[1])
            tok, conf = propose(logits, u, self.temperature, self.top_k, self.top_p, probs=probs)
            tokens = torch.full_like(xa, MASK)
            tokens[where] = tok
            confidence = torch.zeros(xa.shape, dtype=torch.float64, device=device)
            confidence[where] = quantise_prob(conf.double())
            at = torch.full_like(xa, -1)  # index of each masked position's row in probs
            at[where] = torch.arange(len(tok), device=device)
            local_row = torch.full((B,), -1, dtype=torch.long, device=device)
            local_row[rows] = torch.arange(len(rows), device=device)
            commit = torch.zeros(xa.shape, dtype=torch.bool, device=device)
            for j, pol in enumerate(self.policies):
                idx = ((i_pol == j) & step_inst).nonzero().squeeze(1)
                if not len(idx):
                    continue
                lr, m = local_row[i_row[idx]], vm[idx]
                ctx = StepContext(masked=m, tokens=tokens[lr], confidence=confidence[lr], n_commit=n_commit[idx],
                                  p_unmask=p_unmask[idx], uniform=uniform[i_row[idx]], probs=probs[at[lr][m]],
                                  n_remasked=n_re[idx])
                chosen = (pol.commit(ctx) | last[idx].unsqueeze(1)) & m
                commit |= to_rows(chosen, lr, len(rows))
            x[rows] = torch.where(commit, tokens, xa)
            self.nfe[rows] += passes
        x[:] = torch.where(re, MASK, x)
        # Advance every live instance; a block is done after its last step or once nothing in it is masked.
        still = count((x == MASK) & in_block)
        done = live & ((step_inst & last) | (still == 0))
        self.cur[i_row, i_spec] = current + done.long()
        self.loc[i_row, i_spec] = torch.where(done, 0, torch.where(live, local + 1, local))
        if self.store is not None and done.any():  # a row that moves on to a new block (the dual cache refreshes)
            self.store.block_done(torch.cat([i_row[done] + j * B for j in range(passes)]))
        self.k += 1
        return rows
