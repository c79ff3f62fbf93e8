"""The sampling loop: hand-computed steps, commit budgets, clamping, batch invariance, proposal sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unidiff.data import Segment, collate, encode_row
from unidiff.errors import UnidiffError
from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.plugins import Registry
from unidiff.sampling.policies import Ancestral, Confidence
from unidiff.process.absorbing import step_budget
from unidiff.rng import STREAM_POLICY, STREAM_TOKEN, hashed_uniform
from unidiff.sampling import propose, sample
from unidiff.process.schedules import get_schedule
from unidiff.vocab import MASK, VocabLayout

# --- a hand-made model: fixed probabilities per position ------------------------------------------------------

PROBS = torch.tensor([[0.90, 0.05, 0.05],   # position 0: symbol 0, confidence 0.9
                      [0.20, 0.60, 0.20],   # position 1: symbol 1, confidence 0.6
                      [0.25, 0.25, 0.50],   # position 2: symbol 2, confidence 0.5
                      [0.10, 0.80, 0.10]],  # position 3: symbol 1, confidence 0.8
                     dtype=torch.float64)

from helpers import Bytes, rows_of, tiny_denoiser


class FixedModel(nn.Module):
    """Ignores its input: position i always predicts probs[i] over the 3 symbols of modality "abc"."""

    def __init__(self, probs=PROBS):
        super().__init__()
        self.probs = probs
        self.layout = VocabLayout({"abc": 3})
        self.start = self.layout.block("abc").start
        self.anchor = nn.Parameter(torch.zeros(()))

    def features(self, ids, modality, positions, pad_mask):
        return positions.unsqueeze(-1).double()  # (B, L, 1): the position, so logits() can look it up

    def logits(self, h, modality):
        out = torch.full((*h.shape[:-1], self.layout.size), float("-inf"), dtype=torch.float64)
        out[..., self.start:self.start + 3] = self.probs[h[..., 0].long()].log()
        return out


def fixed_batch():
    layout = VocabLayout({"abc": 3})
    row = encode_row([Segment("abc", role="generate", length=4)], layout, {})
    return collate([row])


def trace(model, batch, policy, **kw):
    states = []
    out = sample(model, batch, policy, callback=lambda k, rows, x: states.append(x.clone()), **kw)
    return out, states


def test_confidence_step_by_hand():
    """steps=2, greedy: step 0 commits the 2 most confident positions (0.9 at 0, 0.8 at 3), step 1 the rest."""
    out, states = trace(FixedModel(), fixed_batch(), Confidence(), steps=2, temperature=0.0)
    a, b, c = 4, 5, 6  # global ids of symbols 0, 1, 2
    assert states[0].tolist() == [[a, MASK, MASK, b]]
    assert states[1].tolist() == [[a, b, c, b]]
    assert out.nfe.tolist() == [2] and out.generated.tolist() == [4]


def test_confidence_follows_the_schedule_time_grid():
    """Cosine, 3 steps, N=4: after step k, floor(4 (1 - alpha(1 - (k+1)/3))) = 3, 2, 0 positions stay masked."""
    _, states = trace(FixedModel(), fixed_batch(), Confidence(), steps=3, temperature=0.0, schedule="cosine")
    masked = [int((s == MASK).sum()) for s in states]
    assert masked == [3, 2, 0]
    assert states[0][0, 0] == 4 and states[1][0, 3] == 5  # most confident first: position 0, then 3


def test_ancestral_step_by_hand():
    """Linear, 4 steps: step 0 reveals each position with p = (alpha(3/4) - alpha(1)) / (1 - alpha(1)) = 1/4,
    drawing its token by inverting the CDF of PROBS at the position's uniform."""
    seed = 11
    _, states = trace(FixedModel(), fixed_batch(), Ancestral(), steps=4, seeds=[seed])
    pos = torch.arange(4)
    u_policy = hashed_uniform(torch.tensor(seed), 0, STREAM_POLICY, pos).tolist()
    u_token = hashed_uniform(torch.tensor(seed), 0, STREAM_TOKEN, pos).tolist()
    expected = []
    for i in range(4):
        if u_policy[i] < 0.25:
            cdf = PROBS[i].cumsum(0).tolist()
            expected.append(4 + next(j for j in range(3) if cdf[j] > u_token[i]))
        else:
            expected.append(MASK)
    assert states[0].tolist() == [expected]


def test_ancestral_reveal_probabilities_are_one_over_steps_left():
    p, left, sigma = step_budget(torch.tensor([12] * 4), torch.tensor([4] * 4), 0, get_schedule("linear"))
    probs = [step_budget(torch.tensor([12]), torch.tensor([4]), k, get_schedule("linear"))[0].item()
             for k in range(4)]
    assert probs == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1.0])
    assert left.tolist() == [9] * 4
    assert sigma.tolist() == [0.0] * 4  # no remasking unless asked


REQUESTS = [("To be", 9), ("", 4), ("Once more unto", 17), ("A", 1)]


def test_one_commit_per_step_when_steps_equal_tokens():
    model = tiny_denoiser()
    batch = collate(rows_of(REQUESTS, model.layout))
    before = batch.targets.sum(1)
    counts = []
    prev = torch.where(batch.targets, MASK, batch.ids)

    def count(k, rows, x):
        nonlocal prev
        counts.append(((prev == MASK) & (x != MASK)).sum(1).tolist())
        prev = x.clone()

    out = sample(model, batch, Confidence(), steps=None, callback=count)
    n = before.tolist()
    for k, row_counts in enumerate(counts):
        assert row_counts == [1 if k < nb else 0 for nb in n]
    assert out.nfe.tolist() == n and len(counts) == max(n)


@pytest.mark.parametrize("policy", [Confidence(), Ancestral()])
@pytest.mark.parametrize("steps", [None, 3, 100])
def test_given_positions_never_change(policy, steps):
    model = tiny_denoiser(1)
    batch = collate(rows_of(REQUESTS, model.layout))
    seen = []
    out = sample(model, batch, policy, steps=steps, seeds=5, callback=lambda k, rows, x: seen.append(x.clone()))
    given = ~batch.targets
    for x in seen + [out.ids]:
        assert torch.equal(x[given], batch.ids[given])
    gen = out.ids[batch.targets]
    block = model.layout.block("text")
    assert ((gen >= block.start) & (gen < block.stop)).all()  # only the modality's own content ids
    cap = batch.targets.sum(1) if steps is None else torch.minimum(batch.targets.sum(1), torch.tensor(steps))
    assert (out.nfe <= cap).all()
    if isinstance(policy, Confidence):
        assert torch.equal(out.nfe, cap)


@pytest.mark.parametrize("policy", [Confidence(), Ancestral()])
@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.0}, {"top_k": 5, "top_p": 0.9, "temperature": 0.8}])
def test_batch_rows_equal_rows_generated_alone(policy, kwargs):
    model = tiny_denoiser(2)
    rows = rows_of(REQUESTS, model.layout)
    together = sample(model, collate(rows), policy, steps=6, seeds=100, **kwargs)
    for b, row in enumerate(rows):
        alone = sample(model, collate([row]), policy, steps=6, seeds=[100 + b], **kwargs)
        n = len(row.ids)
        assert torch.equal(alone.ids[0], together.ids[b, :n])
        assert alone.nfe.tolist() == [together.nfe[b].item()]


def test_different_seeds_give_different_samples_and_same_seed_repeats():
    model = tiny_denoiser(3)
    batch = collate(rows_of([("", 30)], model.layout))
    a = sample(model, batch, Ancestral(), steps=5, seeds=1).ids
    assert torch.equal(a, sample(model, batch, Ancestral(), steps=5, seeds=1).ids)
    assert not torch.equal(a, sample(model, batch, Ancestral(), steps=5, seeds=2).ids)


def test_bad_sampler_arguments_raise():
    model = tiny_denoiser()
    batch = collate(rows_of([("", 4)], model.layout))
    with pytest.raises(UnidiffError, match="steps must be at least 1"):
        sample(model, batch, Confidence(), steps=0)
    with pytest.raises(UnidiffError, match="temperature"):
        sample(model, batch, Confidence(), temperature=-1.0)


# --- proposals and the counter-based RNG ---------------------------------------------------------------------

def splitmix_reference(seed: int, step: int, stream: int, pos: int) -> float:
    """The same hash in plain Python integers (mod 2**64), as an independent implementation."""
    M = (1 << 64) - 1
    G, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB

    def mix(z):
        z = ((z ^ (z >> 30)) * M1) & M
        z = ((z ^ (z >> 27)) * M2) & M
        return z ^ (z >> 31)

    z = mix((seed * G + step * 4 + stream) & M)
    z = mix(z ^ ((pos * M1 + G) & M))
    return (z >> 11) * 2.0 ** -53


def test_hashed_uniform_matches_a_plain_python_reference():
    for seed, step, stream, pos in [(0, 0, 1, 0), (7, 3, 2, 5), (123456789, 40, 1, 255), (2**40, 1, 2, 9)]:
        got = hashed_uniform(torch.tensor(seed), step, stream, torch.tensor(pos)).item()
        assert got == splitmix_reference(seed, step, stream, pos)


def test_hashed_uniform_is_uniform_and_shape_independent():
    u = hashed_uniform(torch.arange(1000).unsqueeze(1), 3, STREAM_TOKEN, torch.arange(200))  # (1000, 200)
    assert u.min() >= 0 and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=0.002)
    assert u.var().item() == pytest.approx(1 / 12, abs=0.001)
    assert hashed_uniform(torch.tensor(17), 3, STREAM_TOKEN, torch.tensor(42)).item() == u[17, 42].item()


def test_propose_draws_in_proportion_and_never_a_forbidden_id():
    n = 200_000
    logits = torch.tensor([math.log(0.5), math.log(0.3), math.log(0.2), float("-inf")]).expand(n, 4)
    u = hashed_uniform(torch.tensor(0), 0, STREAM_TOKEN, torch.arange(n))
    tokens, conf = propose(logits, u)
    freq = torch.bincount(tokens, minlength=4).double() / n
    assert freq.tolist() == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=0.004)
    assert conf[tokens == 1].unique().tolist() == pytest.approx([0.3])
    top2 = torch.bincount(propose(logits, u, top_k=2)[0], minlength=4).double() / n
    assert top2.tolist() == pytest.approx([0.625, 0.375, 0.0, 0.0], abs=0.004)
    assert set(propose(logits, u, top_p=0.6)[0].unique().tolist()) == {0, 1}  # 0.5 < 0.6: needs the second id
    assert propose(logits, u, top_p=0.5)[0].unique().tolist() == [0]
    assert propose(logits, u, temperature=0.0)[0].unique().tolist() == [0]
    cold = torch.bincount(propose(logits, u, temperature=0.5)[0], minlength=4).double() / n
    p = torch.tensor([0.5, 0.3, 0.2]) ** 2
    assert cold[:3].tolist() == pytest.approx((p / p.sum()).tolist(), abs=0.004)


@pytest.mark.parametrize("temperature", [1e-30, 1e-45, 1.1125369292536007e-308, 5e-324])
def test_a_vanishing_temperature_is_the_greedy_limit(temperature):
    # A temperature below float32's range once gave NaN draws and an id past the vocabulary (found by hypothesis).
    logits = torch.tensor([[-11.0, -10.5, float("-inf"), -10.9], [float("-inf"), 3.0, 2.0, 3.0]])
    u = torch.tensor([0.99, 0.99])
    tokens, conf = propose(logits, u, temperature=temperature)
    assert tokens[0].item() == 1                       # a unique maximum is always drawn
    assert tokens[1].item() == 3                       # two tied maxima share the mass: u=0.99 takes the later one
    assert propose(logits, torch.tensor([0.0, 0.0]), temperature=temperature)[0].tolist() == [1, 1]
    assert conf.tolist() == pytest.approx(logits.softmax(-1).gather(1, tokens[:, None]).squeeze(1).tolist())
    # A top-p that rounds to 0 in float32 still keeps the most likely id (it once dropped every id).
    assert propose(logits, u, top_p=temperature)[0].tolist() == [1, 1]


# --- every registered policy against a hand computation -------------------------------------------------------

# Chosen so that confidence, margin and entropy rank the four positions in three different orders.
RANKED = torch.tensor([[0.60, 0.20, 0.20],   # confidence 0.60, margin 0.40, entropy 0.950
                       [0.50, 0.50, 0.00],   # confidence 0.50, margin 0.00, entropy 0.693
                       [0.70, 0.15, 0.15],   # confidence 0.70, margin 0.55, entropy 0.819
                       [0.30, 0.65, 0.05]],  # confidence 0.65, margin 0.35, entropy 0.791
                      dtype=torch.float64)


def commit_order(policy, **kwargs):
    """Greedy decoding with the RANKED model: the positions committed at each step."""
    _, states = trace(FixedModel(RANKED), fixed_batch(), policy, temperature=0.0, **kwargs)
    order, prev = [], torch.full((4,), MASK)
    for x in states:
        order.append(((prev == MASK) & (x[0] != MASK)).nonzero().flatten().tolist())
        prev = x[0].clone()
    return order, states[-1][0].tolist()


@pytest.mark.parametrize("name, expected", [
    ("confidence", [[2], [3], [0], [1]]),  # 0.70 > 0.65 > 0.60 > 0.50
    ("margin", [[2], [0], [3], [1]]),      # 0.55 > 0.40 > 0.35 > 0.00
    ("entropy", [[1], [3], [2], [0]]),     # 0.693 < 0.791 < 0.819 < 0.950
])
def test_budgeted_policies_commit_in_their_order(name, expected):
    order, final = commit_order(Registry().policy(name), steps=4)
    assert order == expected
    assert final == [4, 4, 4, 5]  # argmax symbols 0, 0 (tie: lowest id), 0, 1


def test_random_policy_commits_the_highest_uniform_each_step():
    seed = 3
    order, _ = commit_order(Registry().policy("random"), steps=4, seeds=[seed])
    left, expected = [0, 1, 2, 3], []
    for k in range(4):
        u = hashed_uniform(torch.tensor(seed), k, STREAM_POLICY, torch.arange(4))
        pick = max(left, key=lambda i: (u[i].item(), -i))
        expected.append([pick])
        left.remove(pick)
    assert order == expected


@pytest.mark.parametrize("threshold, expected", [
    (0.62, [[2, 3], [0], [1]]),     # 0.70 and 0.65 pass; then one at a time
    (0.55, [[0, 2, 3], [1]]),
    (0.95, [[2], [3], [0], [1]]),   # nothing passes: the most confident one each step
    (0.45, [[0, 1, 2, 3]]),         # everything passes: one forward pass
])
def test_threshold_policy_adapts_the_number_of_steps(threshold, expected):
    order, _ = commit_order(Registry().policy("threshold", threshold=threshold))
    assert order == expected


def test_policy_options_are_checked():
    with pytest.raises(UnidiffError, match="threshold"):
        Registry().policy("threshold", threshold=1.5)
    with pytest.raises(UnidiffError, match="does not take the options"):
        Registry().policy("confidence", threshold=0.5)


@pytest.mark.parametrize("steps, expected", [
    (4, [[0], [1], [2], [3]]),  # blocks {0, 1} then {2, 3}, two steps each, by confidence inside a block
    (2, [[0, 1], [2, 3]]),      # one step per block
    (None, [[0], [1], [2], [3]]),
])
def test_block_order_decodes_left_to_right(steps, expected):
    order, _ = commit_order(Confidence(), steps=steps, block_length=2)
    assert order == expected


def test_block_order_with_uneven_blocks_and_batch_invariance():
    model = tiny_denoiser(4)
    rows = rows_of(REQUESTS, model.layout)
    states = []
    together = sample(model, collate(rows), Confidence(), steps=8, seeds=0, block_length=4,
                      callback=lambda k, r, x: states.append(x.clone()))
    for b, row in enumerate(rows):
        alone = sample(model, collate([row]), Confidence(), steps=8, seeds=[b], block_length=4)
        assert torch.equal(alone.ids[0], together.ids[b, :len(row.ids)])
    # 8 steps shared out as evenly as possible, each block's share capped at its size:
    # 9 tokens, blocks 4, 4, 1: shares 3, 3, 2 -> 3 + 3 + 1 passes; 4 tokens: one block, 4 steps;
    # 17 tokens, blocks 4, 4, 4, 4, 1: shares 2, 2, 2, 1, 1 -> 8 passes; 1 token: 1.
    assert together.nfe.tolist() == [7, 4, 8, 1]
    targets = collate(rows).targets[2].nonzero().flatten()
    for x in states:  # nothing is committed beyond the block of the first still-masked target
        generated = (x[2, targets] != MASK).nonzero().flatten()
        still = (x[2, targets] == MASK).nonzero().flatten()
        if len(still) and len(generated):
            assert generated.max() < (still.min() // 4 + 1) * 4


class NoSkip:
    """The same policy without ``may_commit``: every step runs the model."""

    def __init__(self, policy):
        self.name, self.policy = policy.name, policy

    def commit(self, ctx):
        return self.policy.commit(ctx)


@pytest.mark.parametrize("name, schedule", [("ancestral", "linear"), ("confidence", "cosine"),
                                            ("margin", "polynomial")])
def test_steps_that_would_commit_nothing_skip_the_forward_pass(name, schedule):
    model = tiny_denoiser(5)
    batch = collate(rows_of(REQUESTS, model.layout))
    policy = Registry().policy(name)
    fast = sample(model, batch, policy, steps=12, seeds=2, schedule=schedule)
    slow = sample(model, batch, NoSkip(policy), steps=12, seeds=2, schedule=schedule)
    assert torch.equal(fast.ids, slow.ids)  # skipping changes nothing but the cost
    assert (fast.nfe <= slow.nfe).all() and fast.nfe.sum() < slow.nfe.sum()


def test_a_block_finished_early_does_not_cost_more_passes():
    model = tiny_denoiser(6)
    batch = collate(rows_of([("", 16)], model.layout))
    out = sample(model, batch, Registry().policy("threshold", threshold=1e-9), block_length=4)
    assert out.nfe.tolist() == [4]  # every proposal passes: one pass per block


def test_steps_are_shared_between_blocks_without_exceeding_the_budget():
    model = tiny_denoiser(6)
    batch = collate(rows_of([("", 16)], model.layout))
    assert sample(model, batch, Confidence(), steps=5, block_length=4).nfe.tolist() == [5]  # shares 2, 1, 1, 1
    with pytest.raises(UnidiffError, match=r"2 step\(s\) cannot decode 4 blocks of 4 tokens"):
        sample(model, batch, Confidence(), steps=2, block_length=4)  # each block takes at least one step
    assert sample(model, batch, Confidence(), steps=4, block_length=4).nfe.tolist() == [4]


def test_progress_counts_the_committed_targets():
    """sample, sample_stream and sample_causal report the target tokens committed so far: monotone without
    remasking, ending at the number of targets."""
    from unidiff.sampling.causal import sample_causal
    from unidiff.sampling.stream import sample_stream

    model = tiny_denoiser(3)
    batch = collate(rows_of(REQUESTS, model.layout))
    total = int(batch.targets.sum())
    for run in (lambda cb: sample(model, batch, Confidence(), steps=6, progress=cb),
                lambda cb: sample_stream(model, batch, Confidence(), 2, steps=6, progress=cb)):
        seen = []
        run(seen.append)
        assert seen == sorted(seen) and seen[-1] == total and seen[0] < total
    torch.manual_seed(0)
    causal = Denoiser(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64, kind="autoregressive"),
                      model.layout, {"text": make_head(type("M", (), {"vocab_size": 256}), 32)}).eval()
    seen = []
    sample_causal(causal, batch, progress=seen.append)
    assert seen == sorted(seen) and seen[-1] == total


def test_an_adaptive_policy_is_not_capped_by_the_recommended_steps():
    """A model that recommends 0.25 steps per token caps confidence decoding at 4 passes for 16 tokens; the
    threshold policy is capped at one token per step only (threshold 1: nothing passes, one token a step)."""
    from unidiff.pipeline import Pipeline

    model = tiny_denoiser(4)
    pipe = Pipeline(model, {"text": Bytes()}, {"sampling": {"steps_per_token": 0.25}})
    assert pipe.complete("ab", length=16, policy="confidence").nfe == [4]
    assert pipe.complete("ab", length=16, policy="threshold", policy_options={"threshold": 1.0}).nfe == [16]
    # and the recommendation is raised to one step per block: 16 tokens in blocks of 2 take 8 steps, not 4
    assert pipe.complete("ab", length=16, policy="confidence", block_length=2).nfe == [8]
