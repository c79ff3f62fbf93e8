"""The sampling loop: iterative parallel unmasking of a batch, visible in one function (`sample`).

Every position to generate starts as the noise process's noise (MASK under the built-in absorbing process; see
`unidiff.process`) and is *open* until a step decides it; given positions (a prompt, the other segments) are
clamped and never change. The targets of a row decode in *groups*: by default one per row; segments with their own policy, steps or
schedule (``batch.group``, see `GroupSpec`) form their own, decoded concurrently with the rest of the row, and
with ``block_length`` each group is cut, left to right, into blocks decoded one after the other (LLaDA's
semi-autoregressive order), each with its share of the group's steps and its own time grid. Step k of a block
with S steps walks the reverse process from t = 1 - k/S to s = 1 - (k+1)/S on its schedule. Each step:

1. computes each group's budget (the process's `Process.budget`; absorbing:
   ``p_unmask = (alpha(s) - alpha(t)) / (1 - alpha(t))``, the probability that
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
from unidiff.models.kvcache import KVStore, cache_mode
from unidiff.models.readout import Guided, Passes, Readout, Rows
from unidiff.models.transformer import Denoiser
from unidiff.models.widths import cut_to_width, row_widths
from unidiff.process import Process, get_process
from unidiff.process.schedules import Schedule, get_schedule
from unidiff.rng import STREAM_POLICY, STREAM_REMASK, STREAM_TOKEN, hashed_uniform, noise_uniform
from unidiff.sampling.policies import Policy, StepContext, quantise_prob, top_n
from unidiff.sampling.proposals import propose
from unidiff.training.objectives import objective_of
from unidiff.vocab import MASK


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


def _scatter_sum(index: torch.Tensor, values: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.long, device=index.device).index_add_(0, index, values.long())


@torch.no_grad()
def sample(model: Denoiser, batch: Batch, policy: Policy, steps: int | Sequence[int] | torch.Tensor | None = None,
           seeds: int | Sequence[int] | torch.Tensor = 0, temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, schedule: Schedule | str = "linear", amp_dtype: torch.dtype | None = None,
           block_length: int | None = None, remask: float = 0.0, guidance: float = 1.0,
           groups: Sequence[GroupSpec] = (), cache: bool | str = False,
           callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
           progress: Callable[[int], None] | None = None, process: Process | str = "absorbing") -> SampleOutput:
    """Generate the target positions of ``batch``.

    Args:
        model: the denoiser (its device is used).
        batch: rows to complete; ``batch.targets`` marks the positions to generate, every other non-pad position
            is given and stays as it is. ``batch.group`` (optional) puts targets in groups: 0 follows this call's
            settings, g >= 1 follows ``groups[g - 1]``. ``batch.blank_ok`` marks positions that may become BLANK.
        policy: which masked positions each step commits (see `unidiff.sampling.policies`).
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
            changed since they were stored, and stores them (see `unidiff.models.kvcache`). Neither is exact: their
            quality cost is measured in bench/.
        callback: called after every step with (k, rows, x): the step index, the rows that took part and the
            whole (B, L) batch of ids so far (MASK where still masked); for tracing the denoising trajectory.
        progress: called after every step with the number of target tokens committed so far (a progress bar).
        process: the noise process the model was trained with (a name or a `Process`; default absorbing).
    """
    device = next(model.parameters()).device
    batch = batch.to(device)
    B, L = batch.ids.shape
    sampler = Sampler(model, policy, B, L, temperature=temperature, top_k=top_k, top_p=top_p, schedule=schedule,
                      amp_dtype=amp_dtype, block_length=block_length, remask=remask, guidance=guidance,
                      groups=groups, cache=cache, process=process)
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
                 guidance: float = 1.0, groups: Sequence[GroupSpec] = (), cache: bool | str = False,
                 process: Process | str = "absorbing"):
        temperature, top_k, top_p = checks.proposal(temperature, top_k, top_p)
        remask = checks.real("remask", remask, 0, 1)  # 0: off
        guidance = checks.real("guidance", guidance, 0, checks.MAX_GUIDANCE)  # 1: off, 0: unconditional
        block_length = checks.optional(checks.whole, "block_length", block_length, 1, checks.MAX_COUNT)
        self.model, self.temperature, self.top_k, self.top_p = model, temperature, top_k, top_p
        self.amp_dtype, self.remask, self.guidance = amp_dtype, remask, guidance
        self.process = get_process(process)
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
        if cache and objective_of(model).causal:
            raise UnidiffError("the approximate key/value cache is for diffusion models; an autoregressive model "
                               "decodes with its exact cache (sample_causal)")
        mode = cache_mode(cache)
        self.store = KVStore(self.passes * slots, width, mode) if mode else None
        # What the loop asks of the denoiser: logits for these rows at these positions (see unidiff.models.readout).
        self.readout: Readout = Passes(model, self.store, cut_to_width(device, amp_dtype))
        if guidance != 1.0:
            self.readout = Guided(self.readout, guidance, slots)
        self.arange_L = torch.arange(width, device=device)
        S, L = slots, width
        zeros = lambda dtype: torch.zeros((S, L), dtype=dtype, device=device)  # noqa: E731
        self.x, self.modality, self.positions = zeros(torch.long), zeros(torch.long), zeros(torch.long)
        self.pad_mask = torch.ones((S, L), dtype=torch.bool, device=device)
        self.targets, self.condition, self.group = zeros(torch.bool), zeros(torch.bool), zeros(torch.long)
        self.open = zeros(torch.bool)  # target positions no step has decided yet (or re-opened by remasking)
        self.blank_ok = None
        self.cells = None  # (S, L) grid cells, once a batch with a grid modality is admitted
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
        """Target tokens of the active slots that are committed now (not open)."""
        return int((self.targets & self.active.unsqueeze(1) & ~self.open).sum())

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
        seeds = torch.as_tensor(seeds, dtype=torch.long, device=dev).reshape(b)
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
        put(self.x, self.process.start(batch.ids, targets, batch.modality, self.model.layout,
                                       noise_uniform(seeds.reshape(b, 1), -1, torch.arange(n, device=dev))), 0)
        put(self.open, targets, False)
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
        if batch.cells is not None and self.cells is None:
            self.cells = torch.full((self.S, self.L), -1, dtype=torch.long, device=dev)
        if self.cells is not None:
            put(self.cells, batch.cells if batch.cells is not None else torch.full_like(batch.ids, -1), -1)
        # Each target's rank within its (row, group) cuts it into blocks.
        rank = onehot.cumsum(1).gather(2, group.unsqueeze(-1)).squeeze(-1) - 1
        put(self.block_of, torch.where(targets, rank // self.size, -1), -1)
        self.n_group[slots] = n_group
        self.cur[slots], self.loc[slots] = 0, 0
        self.seeds[slots] = seeds
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
        return (self.active & ~(self.targets & self.open).any(1)).nonzero().squeeze(1)

    def release(self, slots: torch.Tensor) -> None:
        self.active[slots] = False

    def step(self) -> torch.Tensor | None:
        """One step of every active slot; returns the slots that ran the denoiser (None: nothing left to do).

        The algorithm, in order: the time grid gives each block's budget for this step (`_plan`); remasking picks
        decided positions to re-open; the rows whose policies may commit something run the denoiser, which gives
        logits at their open positions of the current blocks (`Readout`: guidance and the caches behind it); the
        process turns them into the distribution proposals are drawn from; each group's policy picks what to
        commit; then blocks advance."""
        plan = self._plan()
        if plan is None:
            return None
        reopen = self._choose_reopened(plan)
        rows = self._rows_that_run(plan, reopen)
        if len(rows):
            deciding = plan.open_in_block[rows]  # (b, L) the open positions of these rows' current blocks
            where = deciding.nonzero(as_tuple=True)
            with autocast(self.device, self.amp_dtype):
                logits = self.readout.logits(self._rows(rows, plan), where,
                                             None if self.blank_ok is None else self.blank_ok[rows][where])
            logits = self.process.posterior(logits, self.x[rows][where])  # absorbing: the clean-token draw itself
            tokens, confidence, probs, at = self._propose(rows, where, logits, plan.k_row)
            chosen = self._choose_commits(plan, rows, tokens, confidence, probs, at)
            self.x[rows] = torch.where(chosen, tokens, self.x[rows])
            self.open[rows] &= ~chosen
            self.nfe[rows] += self.passes
        if self.remask > 0:  # the re-masked positions are open again, as noise
            self.x[:] = self.process.reopen(self.x, reopen, self.modality, self.model.layout,
                                            noise_uniform(self.seeds.unsqueeze(1), plan.k_row, self.arange_L))
            self.open |= reopen
        self._advance(plan)
        self.k += 1
        return rows

    def _plan(self) -> "StepPlan | None":
        """This step's instances (one per (slot, group) with targets), their current blocks and their budgets,
        all known before the forward pass; None when no block has anything open."""
        device, B, L, G = self.device, self.S, self.L, self.G
        targets = self.targets & self.active.unsqueeze(1)
        key = torch.arange(B, device=device).unsqueeze(1) * G + self.group  # (B, L)
        uniq, inst = torch.unique(key[targets], return_inverse=True)
        I = len(uniq)
        if I == 0:
            return None
        inst_at = torch.full((B, L), -1, dtype=torch.long, device=device)
        inst_at[targets] = inst
        row, spec = uniq // G, uniq % G  # (I,)
        current, local = self.cur[row, spec], self.loc[row, spec]
        n_inst = self.n_group[row, spec]
        n_blocks = ((n_inst + self.size - 1) // self.size).clamp(min=1)
        own_steps = self.spec_steps[spec]
        steps = torch.where(own_steps > 0, own_steps, self.row_steps[row])  # (I,)
        inst_of = inst_at.clamp(min=0)  # (B, L) each target's instance (0 elsewhere: masked out by `targets`)
        plan = StepPlan(targets=targets, inst_of=inst_of, row=row, spec=spec, current=current, local=local,
                        own=inst_at[row] == torch.arange(I, device=device).unsqueeze(1),
                        k_row=(self.k - self.k0).unsqueeze(1))
        in_block = targets & (self.block_of == current[inst_of])  # (B, L): each instance's current block
        plan.in_block, plan.open_in_block = in_block, targets & self.open & in_block
        plan.n_open = plan.count(plan.open_in_block)
        if not (plan.n_open > 0).any():
            return None
        plan.live = plan.n_open > 0  # (I,)
        # The block's share of its group's steps, and the time grid's budget for this step of it.
        n_block = plan.count(in_block)
        block_steps = (steps // n_blocks + (current < steps % n_blocks).long()).clamp(min=1)
        plan.block_steps = torch.minimum(block_steps, n_block.clamp(min=1))
        plan.p_decide = torch.zeros(I, dtype=torch.float64, device=device)
        plan.n_left = torch.zeros(I, dtype=torch.long, device=device)
        plan.sigma = torch.zeros(I, dtype=torch.float64, device=device)
        schedule_of = self.sch_of[spec]
        for j, schedule in enumerate(self.schedules):
            p_j, left_j, sigma_j = self.process.budget(n_block, plan.block_steps, local, schedule, self.remask)
            sel = schedule_of == j
            plan.p_decide = torch.where(sel, p_j, plan.p_decide)
            plan.n_left = torch.where(sel, left_j, plan.n_left)
            plan.sigma = torch.where(sel, sigma_j, plan.sigma)
        plan.last = local + 1 >= plan.block_steps  # a block's final step commits all it has left
        plan.uniform = hashed_uniform(self.seeds.unsqueeze(1), plan.k_row, STREAM_POLICY, self.arange_L)  # (B, L)
        return plan

    def _choose_reopened(self, plan: "StepPlan") -> torch.Tensor:
        """ReMDM: the decided positions of the current blocks that go back to noise, each with probability sigma,
        at most as many as the step leaves open (the smallest uniforms win); sets the commit counts to match."""
        reopen = torch.zeros_like(plan.open_in_block)
        if self.remask > 0:
            u = hashed_uniform(self.seeds.unsqueeze(1), plan.k_row, STREAM_REMASK, self.arange_L)
            candidates = plan.in_block & ~plan.open_in_block & (u < plan.sigma[plan.inst_of]) & \
                (plan.live & ~plan.last)[plan.inst_of]
            picked = top_n(-u[plan.row], candidates[plan.row] & plan.own, plan.n_left)
            reopen = plan.to_rows(picked, plan.row, self.S)
        plan.n_reopened = plan.count(reopen)
        plan.n_commit = torch.minimum((plan.n_open - plan.n_left).clamp(min=0) + plan.n_reopened, plan.n_open)
        return reopen

    def _rows_that_run(self, plan: "StepPlan", reopen: torch.Tensor) -> torch.Tensor:
        """The slots with a group whose policy may commit something this step; the others skip the forward pass
        (and cost no NFE)."""
        plan.open_of_instance = plan.open_in_block[plan.row] & plan.own  # (I, L): one policy "row" per instance
        go = plan.live & (plan.last | (plan.n_reopened > 0))
        policy_of = self.pol_of[plan.spec]
        for j, policy in enumerate(self.policies):
            may = getattr(policy, "may_commit", None)  # an optional member of the Policy protocol
            sel = (policy_of == j) & plan.live
            if may is None:
                go |= sel
            elif sel.any():
                idx = sel.nonzero().squeeze(1)
                ctx = StepContext(masked=plan.open_of_instance[idx], tokens=None, confidence=None,
                                  n_commit=plan.n_commit[idx], p_unmask=plan.p_decide[idx],
                                  uniform=plan.uniform[plan.row[idx]])
                go[idx] |= may(ctx)
        run = _scatter_sum(plan.row, go, self.S) > 0
        plan.decided = plan.live & run[plan.row]  # instances the model decides this step
        return run.nonzero().squeeze(1)

    def _rows(self, rows: torch.Tensor, plan: "StepPlan") -> Rows:
        """The denoiser's inputs for these slots. The positions a cached pass must compute: the dual cache's
        store holds the block as it stood at the block's start, so all of it; the delta cache's holds every
        position as last computed, so the open ones (whose states the step reads) and, added by the store, those
        that changed since."""
        store = self.store
        need = None if store is None else (plan.open_in_block if store.mode == "delta" else plan.in_block)[rows]
        return Rows(ids=self.x[rows], modality=self.modality[rows], positions=self.positions[rows],
                    pad_mask=self.pad_mask[rows], condition=self.condition[rows], slots=rows,
                    widths=self.width[rows], need=need,
                    hole=None if self.blank_ok is None else self.blank_ok[rows],
                    cells=None if self.cells is None else self.cells[rows])

    def _propose(self, rows, where, logits, k_row):
        """A clean token and its confidence at each deciding position: (b, L) tokens (MASK elsewhere), (b, L)
        float64 quantised confidences, the (n, V) probabilities and each position's index into them."""
        probs = logits.softmax(-1)  # (n, V), float32
        u = hashed_uniform(self.seeds[rows][where[0]], k_row[rows, 0][where[0]], STREAM_TOKEN, where[1])
        tok, conf = propose(logits, u, self.temperature, self.top_k, self.top_p, probs=probs)
        shape = (len(rows), self.L)
        tokens = torch.full(shape, MASK, dtype=torch.long, device=self.device)
        tokens[where] = tok
        confidence = torch.zeros(shape, dtype=torch.float64, device=self.device)
        confidence[where] = quantise_prob(conf.double())
        at = torch.full(shape, -1, dtype=torch.long, device=self.device)
        at[where] = torch.arange(len(tok), device=self.device)
        return tokens, confidence, probs, at

    def _choose_commits(self, plan, rows, tokens, confidence, probs, at) -> torch.Tensor:
        """(b, L) the positions each group's policy commits (a block's last step: all it has open)."""
        local_row = torch.full((self.S,), -1, dtype=torch.long, device=self.device)
        local_row[rows] = torch.arange(len(rows), device=self.device)
        chosen = torch.zeros((len(rows), self.L), dtype=torch.bool, device=self.device)
        policy_of = self.pol_of[plan.spec]
        for j, policy in enumerate(self.policies):
            idx = ((policy_of == j) & plan.decided).nonzero().squeeze(1)
            if not len(idx):
                continue
            lr, open_ = local_row[plan.row[idx]], plan.open_of_instance[idx]
            ctx = StepContext(masked=open_, tokens=tokens[lr], confidence=confidence[lr],
                              n_commit=plan.n_commit[idx], p_unmask=plan.p_decide[idx],
                              uniform=plan.uniform[plan.row[idx]], probs=probs[at[lr][open_]],
                              n_remasked=plan.n_reopened[idx])
            picked = (policy.commit(ctx) | plan.last[idx].unsqueeze(1)) & open_
            chosen |= plan.to_rows(picked, lr, len(rows))
        return chosen

    def _advance(self, plan: "StepPlan") -> None:
        """Every live instance moves on a step; a block is done after its last step or once nothing in it is open."""
        still = plan.count(self.open & plan.in_block)
        done = plan.live & ((plan.decided & plan.last) | (still == 0))
        self.cur[plan.row, plan.spec] = plan.current + done.long()
        self.loc[plan.row, plan.spec] = torch.where(done, 0, torch.where(plan.live, plan.local + 1, plan.local))
        if self.store is not None and done.any():  # a row that moves on to a new block (the dual cache refreshes)
            self.store.block_done(torch.cat([plan.row[done] + j * self.S for j in range(self.passes)]))


@dataclass
class StepPlan:
    """One step's bookkeeping, per instance (a (slot, group) with targets; tensors of length I) and per position
    ((B, L) masks over the sampler's slots). Filled by `Sampler._plan` and the phases after it."""

    targets: torch.Tensor  # (B, L) targets of the active slots
    inst_of: torch.Tensor  # (B, L) each target's instance
    row: torch.Tensor  # (I,) the instance's slot
    spec: torch.Tensor  # (I,) its settings entry (0: the call's, g: GroupSpec g)
    current: torch.Tensor  # (I,) the block it decodes
    local: torch.Tensor  # (I,) the step within that block
    own: torch.Tensor  # (I, L) its positions, in its row
    k_row: torch.Tensor  # (B, 1) each slot's own step counter
    in_block: torch.Tensor | None = None  # (B, L) the current blocks' targets
    open_in_block: torch.Tensor | None = None  # (B, L) ... that are still open
    n_open: torch.Tensor | None = None  # (I,)
    live: torch.Tensor | None = None  # (I,) instances with something open
    block_steps: torch.Tensor | None = None  # (I,) steps of the current block
    p_decide: torch.Tensor | None = None  # (I,) float64, the process's reveal probability (StepContext.p_unmask)
    n_left: torch.Tensor | None = None  # (I,) open positions the step leaves
    sigma: torch.Tensor | None = None  # (I,) float64, the re-opening probability (ReMDM)
    last: torch.Tensor | None = None  # (I,) the block's final step
    uniform: torch.Tensor | None = None  # (B, L) the policies' uniforms
    n_reopened: torch.Tensor | None = None  # (I,)
    n_commit: torch.Tensor | None = None  # (I,) what a budgeted policy commits
    open_of_instance: torch.Tensor | None = None  # (I, L) the policy "rows"
    decided: torch.Tensor | None = None  # (I,) instances the model decides this step

    def count(self, mask: torch.Tensor) -> torch.Tensor:
        """(I,) number of True positions of each instance in a (B, L) mask of target positions."""
        return _scatter_sum(self.inst_of.flatten(), (mask & self.targets).flatten(), len(self.row))

    @staticmethod
    def to_rows(per_instance: torch.Tensor, rows_of: torch.Tensor, n_rows: int) -> torch.Tensor:
        """(n, L) masks of instances -> (n_rows, L) masks of their rows (an instance's row index in rows_of)."""
        out = torch.zeros((n_rows, per_instance.shape[1]), dtype=torch.long, device=per_instance.device)
        return out.index_add_(0, rows_of, per_instance.long()) > 0
