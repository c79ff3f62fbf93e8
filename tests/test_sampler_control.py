"""Sampler control: ReMDM remasking, classifier-free guidance, per-group settings and BLANK in variable holes.

Hand-made models ignore their input ids (position i always predicts row i of a table), so every proposal,
confidence and commit order can be written out by hand; a tiny random `Denoiser` covers batch invariance.
Layout {"abc": 3}: 0 PAD | 1 MASK | BOS 2, EOS 3 | symbols a b c = 4 5 6.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unidiff import Pipeline
from unidiff.data import Segment, collate, encode_row
from unidiff.errors import UnidiffError
from unidiff.data import parse_holes
from unidiff.pipeline import decode_row
from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.plugins import Registry
from unidiff.sampling.policies import Ancestral, Confidence, Random
from unidiff.rng import STREAM_REMASK, hashed_uniform
from unidiff.process.absorbing import step_budget
from unidiff.sampling.loop import GroupSpec, sample
from unidiff.process.schedules import get_schedule
from unidiff.vocab import MASK, VocabLayout

from helpers import Letters

A = 4  # global id of symbol 0 of "abc"


class TableModel(nn.Module):
    """Ignores the ids: position i predicts ``cond[i]`` (logits over the 3 symbols); when the row hides position 0
    from attention (the unconditional pass of guidance hides the given positions), it predicts ``uncond[i]``.
    Records the padding masks it is given."""

    def __init__(self, cond: torch.Tensor, uncond: torch.Tensor | None = None):
        super().__init__()
        self.cond = cond.double()
        self.uncond = self.cond if uncond is None else uncond.double()
        self.layout = VocabLayout({"abc": 3})
        self.anchor = nn.Parameter(torch.zeros(()))
        self.masks = []

    def features(self, ids, modality, positions, pad_mask):
        self.masks.append(pad_mask.clone())
        hidden = pad_mask[:, :1].expand_as(positions)
        return torch.stack([positions.double(), hidden.double()], -1)  # (B, L, 2)

    def logits(self, h, modality):
        pos, hidden = h[..., 0].long(), h[..., 1:] > 0
        out = torch.full((*h.shape[:-1], self.layout.size), float("-inf"), dtype=torch.float64)
        out[..., A:A + 3] = torch.where(hidden, self.uncond[pos], self.cond[pos])
        return out


def abc_row(*segments):
    return encode_row(list(segments), VocabLayout({"abc": 3}), {"abc": Letters()})


def trace(model, batch, policy, **kw):
    states = []
    out = sample(model, batch, policy, callback=lambda k, rows, x: states.append(x.clone()), **kw)
    return out, states


def tiny_denoiser(seed=0, blank=False):
    torch.manual_seed(seed)
    layout = VocabLayout({"text": 256}, blank=blank)

    class M:
        vocab_size = 256

    model = Denoiser(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64), layout,
                     {"text": make_head(M, 32)}).eval()
    with torch.no_grad():  # sharper than the init, so proposals are not near-ties (see test_sampling_loop.py)
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


class Bytes:
    name, vocab_size = "text", 256

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def text_rows(requests, layout):
    rows = []
    for prompt, n in requests:
        segs = ([Segment("text", prompt)] if prompt else []) + [Segment("text", role="generate", length=n)]
        rows.append(encode_row(segs, layout, {"text": Bytes()}))
    return rows


REQUESTS = [("To be", 9), ("", 6), ("Once more", 12)]


# --- remasking (ReMDM, rescaled) ------------------------------------------------------------------------------

def test_step_budget_with_remasking_by_hand():
    """Linear, N=12, S=4: m_t, m_s = (1, 3/4), (3/4, 1/2), (1/2, 1/4), (1/4, 0);
    sigma = remask * min(1, m_s / (1 - m_t)) (0 at the first step, where nothing is committed yet, and at the last,
    where m_s = 0); p_unmask = (m_t - m_s + sigma (1 - m_t)) / m_t."""
    lin = get_schedule("linear")
    n, s, k = torch.tensor([12] * 4), torch.tensor([4] * 4), torch.arange(4)
    p, left, sigma = step_budget(n, s, k, lin, remask=0.5)
    assert sigma.tolist() == pytest.approx([0.0, 0.5, 0.25, 0.0])  # 0.5 min(1, 2), 0.5 min(1, 1/2)
    assert p.tolist() == pytest.approx([0.25, 0.5, 0.75, 1.0])  # (1/4 + 1/8) / (3/4), (1/4 + 1/8) / (1/2)
    assert left.tolist() == [9, 6, 3, 0]  # remasking never changes the schedule's masked counts
    p, left, sigma = step_budget(n, s, k, lin, remask=1.0)
    assert sigma.tolist() == pytest.approx([0.0, 1.0, 0.5, 0.0])
    assert p.tolist() == pytest.approx([0.25, 2 / 3, 1.0, 1.0])  # (1/4 + 1/4) / (3/4), (1/4 + 1/4) / (1/2)
    assert step_budget(n, s, k, lin, remask=0.0)[2].tolist() == [0.0] * 4
    # Cosine, N=8, S=4: m(t) = cos(pi/2 (1 - t)).
    m = [math.cos(math.pi / 2 * (1 - t)) for t in (1.0, 0.75, 0.5, 0.25, 0.0)]
    p, left, sigma = step_budget(torch.tensor([8] * 4), s, k, get_schedule("cosine"), remask=0.7)
    want_sigma = [0.0] + [0.7 * min(1.0, m[j + 1] / (1 - m[j])) for j in (1, 2)] + [0.0]
    want_p = [(m[j] - m[j + 1] + want_sigma[j] * (1 - m[j])) / m[j] for j in range(4)]
    assert sigma.tolist() == pytest.approx(want_sigma)
    assert p.tolist() == pytest.approx(want_p)
    assert left.tolist() == [math.floor(8 * m[j + 1] + 1e-6) for j in range(4)] == [7, 5, 3, 0]


def remask_trajectory(seed, remask):
    model = tiny_denoiser(1)
    batch = collate(text_rows([("ab", 12)], model.layout))
    out, states = trace(model, batch, Confidence(), steps=4, seeds=[seed], remask=remask)
    return batch, out, states


def test_remasking_is_exactly_the_committed_tokens_whose_uniform_is_below_sigma():
    """Each step re-masks the committed tokens with hashed_uniform(seed, k, STREAM_REMASK, pos) < sigma_k, re-predicts
    them later, and (the re-masks not outnumbering the schedule's masked count) keeps 9, 6, 3, 0 masked."""
    seed, remask = 0, 0.5
    batch, out, states = remask_trajectory(seed, remask)
    sigmas = step_budget(torch.tensor([12] * 4), torch.tensor([4] * 4), torch.arange(4), get_schedule("linear"),
                         remask)[2]
    targets = batch.targets[0]
    prev = torch.where(batch.targets, MASK, batch.ids)[0]
    remasked_total = 0
    for k, x in enumerate(states):
        u = hashed_uniform(torch.tensor(seed), k, STREAM_REMASK, torch.arange(len(prev)))
        expected_re = targets & (prev != MASK) & (u < sigmas[k])
        assert torch.equal(expected_re, (prev != MASK) & (x[0] == MASK))
        assert int(expected_re.sum()) <= [9, 6, 3, 0][k]  # this seed stays within the schedule ...
        assert int((x[0] == MASK).sum()) == [9, 6, 3, 0][k]  # ... which is then kept exactly
        assert torch.equal(x[0, ~targets], batch.ids[0, ~targets])  # given positions never change
        remasked_total += int(expected_re.sum())
        prev = x[0]
    assert remasked_total > 0  # the trajectory did revisit earlier choices
    assert not (out.ids == MASK).any() and out.nfe.tolist() == [4]


def test_remasking_never_leaves_more_masked_than_the_schedule():
    """Seed 1, remask 0.5: at step 2 five of the 6 committed tokens draw u < sigma = 1/4, but the schedule leaves
    floor(12 * 1/4) = 3 masked: only the 3 with the smallest uniforms are re-masked, n_commit = 6 - 3 + 3 commits
    all 6 masked positions, and the step ends with exactly the schedule's 3 masked."""
    seed, remask = 1, 0.5
    batch, _, states = remask_trajectory(seed, remask)
    assert [int((x == MASK).sum()) for x in states] == [9, 6, 3, 0]
    before, after = states[1][0], states[2][0]
    u = hashed_uniform(torch.tensor(seed), 2, STREAM_REMASK, torch.arange(len(before)))
    candidates = batch.targets[0] & (before != MASK) & (u < 0.25)
    assert int(candidates.sum()) == 5
    remasked = (before != MASK) & (after == MASK)
    smallest = u.masked_fill(~candidates, 2.0).argsort()[:3]
    assert sorted(remasked.nonzero().flatten().tolist()) == sorted(smallest.tolist())


def test_a_remasked_position_is_masked_again_then_predicted_again():
    _, out, states = remask_trajectory(0, 1.0)
    revisited = [(j, k, p) for j in range(len(states)) for k in range(j + 1, len(states))
                 for p in range(states[0].shape[1]) if states[j][0, p] != MASK and states[k][0, p] == MASK]
    assert revisited  # committed at step j, MASK again at a later step k
    for _, _, p in revisited:
        assert out.ids[0, p] != MASK


@pytest.mark.parametrize("policy", [Confidence(), Ancestral()])
def test_remask_off_is_the_default_and_remasking_keeps_batch_invariance(policy):
    model = tiny_denoiser(2)
    rows = text_rows(REQUESTS, model.layout)
    batch = collate(rows)
    plain = sample(model, batch, policy, steps=5, seeds=3)
    assert torch.equal(sample(model, batch, policy, steps=5, seeds=3, remask=0.0).ids, plain.ids)
    together = sample(model, batch, policy, steps=5, seeds=3, remask=0.8)
    assert not torch.equal(together.ids, plain.ids)
    assert not (together.ids[batch.targets] == MASK).any()
    assert torch.equal(together.ids[~batch.targets], batch.ids[~batch.targets])
    for b, row in enumerate(rows):
        alone = sample(model, collate([row]), policy, steps=5, seeds=[3 + b], remask=0.8)
        assert torch.equal(alone.ids[0], together.ids[b, :len(row.ids)])
        assert alone.nfe.tolist() == [together.nfe[b].item()]


# --- classifier-free guidance ---------------------------------------------------------------------------------

# Position 0 is the given token; positions 1-3 are generated. Guided logits: uncond + w (cond - uncond).
COND = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.5, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 0.0]])
UNCOND = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 2.0], [0.0, 2.0, 1.0], [1.0, 0.0, 0.0]])


def guidance_batch():
    return collate([abc_row(Segment("abc", "a"), Segment("abc", role="generate", length=3))])


@pytest.mark.parametrize("w, symbols", [
    (0.0, [2, 1, 0]),  # unconditional: argmax of UNCOND
    (1.0, [0, 2, 0]),  # conditional: argmax of COND
    (3.0, [1, 2, 0]),  # position 1: [1 + 3, 0 + 4.5, 2 - 6] -> symbol 1; position 3: cond = uncond, no effect
])
def test_guidance_moves_the_argmax_as_computed_by_hand(w, symbols):
    out = sample(TableModel(COND, UNCOND), guidance_batch(), Confidence(), steps=1, temperature=0.0, guidance=w)
    assert out.ids.tolist() == [[A] + [A + s for s in symbols]]


class Recorder(Confidence):
    """The confidence policy, keeping the model distribution it is shown at every step."""

    def __init__(self):
        self.probs = []

    def commit(self, ctx):
        self.probs.append(ctx.probs.clone())
        return super().commit(ctx)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.5])
def test_guided_proposal_distribution_and_cost(w):
    model, policy = TableModel(COND, UNCOND), Recorder()
    out = sample(model, guidance_batch(), policy, steps=1, guidance=w, seeds=5)
    expected = torch.softmax((UNCOND + w * (COND - UNCOND))[1:].double(), -1)  # (3 masked positions, 3)
    probs = policy.probs[0]
    assert probs.shape == (3, 7)
    assert torch.allclose(probs[:, A:A + 3].double(), expected, rtol=0, atol=1e-6)
    assert probs[:, :A].sum() == 0
    if w == 1.0:  # off: one pass on the real padding mask
        assert out.nfe.tolist() == [1] and [m.tolist() for m in model.masks] == [[[False] * 4]]
    else:  # conditional rows, then the same rows with the given position hidden
        assert out.nfe.tolist() == [2]
        assert [m.tolist() for m in model.masks] == [[[False] * 4, [True, False, False, False]]]


def test_the_unconditional_pass_hides_the_given_positions_and_the_padding():
    model = TableModel(COND, UNCOND)
    batch = collate([abc_row(Segment("abc", "a"), Segment("abc", role="generate", length=3)),
                     abc_row(Segment("abc", "ab"), Segment("abc", role="generate", length=1))])
    F, T = False, True
    sample(model, batch, Confidence(), steps=1, guidance=2.0)
    assert model.masks[0].tolist() == [[F, F, F, F], [F, F, F, T],  # conditional: the padding only
                                       [T, F, F, F], [T, T, F, T]]  # unconditional: padding and given tokens


def test_guidance_one_is_the_default_and_guidance_doubles_the_nfe():
    model = tiny_denoiser(3)
    batch = collate(text_rows(REQUESTS, model.layout))
    plain = sample(model, batch, Confidence(), steps=4, seeds=1)
    assert torch.equal(sample(model, batch, Confidence(), steps=4, seeds=1, guidance=1.0).ids, plain.ids)
    guided = sample(model, batch, Confidence(), steps=4, seeds=1, guidance=2.0)
    assert guided.nfe.tolist() == [8, 8, 8] and plain.nfe.tolist() == [4, 4, 4]
    assert torch.equal(guided.ids[~batch.targets], batch.ids[~batch.targets])
    assert not torch.equal(guided.ids, plain.ids)


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": -0.5}, "guidance"), ({"guidance": float("nan")}, "guidance"),
    ({"guidance": float("inf")}, "guidance"), ({"remask": -0.1}, "remask"), ({"remask": 1.5}, "remask"),
    ({"remask": float("nan")}, "remask")])
def test_bad_guidance_and_remask_values_raise(kwargs, match):
    with pytest.raises(UnidiffError, match=match):
        sample(TableModel(COND), guidance_batch(), Confidence(), **kwargs)


# --- groups: per-segment policy, steps and schedule -----------------------------------------------------------

def distinct_table(n, seed=0):
    """(n, 3) logits whose argmax confidences are all different (no ties in the commit order)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g) * 2


def grouped_batch(n0, n1):
    """One row of n0 + n1 generated positions: the first n0 in group 0, the rest in group 1."""
    return collate([abc_row(Segment("abc", role="generate", length=n0 + n1))], [torch.tensor([0] * n0 + [1] * n1)])


def committed_per_group(states, n0):
    return [(int((x[0, :n0] != MASK).sum()), int((x[0, n0:] != MASK).sum())) for x in states]


def test_groups_take_their_own_steps_concurrently():
    """Group 0: 4 targets in the call's 2 steps; group 1: 8 targets in its own 8 steps, one a step, in one loop."""
    out, states = trace(TableModel(distinct_table(12)), grouped_batch(4, 8), Confidence(), steps=2,
                        temperature=0.0, groups=[GroupSpec(steps=8)])
    assert committed_per_group(states, 4) == [(2, 1), (4, 2)] + [(4, j) for j in range(3, 9)]
    assert out.nfe.tolist() == [8] and out.generated.tolist() == [12]


def test_a_group_follows_its_own_schedule():
    """Group 1 on cosine, 8 targets, 4 steps: floor(8 cos(pi/2 (k+1)/4)) = 7, 5, 3, 0 stay masked; group 0 on linear,
    4 targets, 2 steps: 2, 0."""
    _, states = trace(TableModel(distinct_table(12, 1)), grouped_batch(4, 8), Confidence(), steps=2,
                      temperature=0.0, groups=[GroupSpec(steps=4, schedule="cosine")])
    assert committed_per_group(states, 4) == [(2, 1), (4, 3), (4, 5), (4, 8)]


def test_group_with_its_own_policy_equals_that_policy_alone():
    model = tiny_denoiser(4)
    rows = text_rows(REQUESTS, model.layout)
    mixed = torch.zeros(len(rows[2].ids), dtype=torch.long)
    mixed[rows[2].targets.nonzero().flatten()[::2]] = 1
    groups = [torch.zeros(len(rows[0].ids), dtype=torch.long), torch.ones(len(rows[1].ids), dtype=torch.long), mixed]
    specs = [GroupSpec(policy=Random(), steps=3)]
    together = sample(model, collate(rows, groups), Confidence(), steps=5, seeds=10, groups=specs)
    first = sample(model, collate([rows[0]]), Confidence(), steps=5, seeds=[10])
    second = sample(model, collate([rows[1]]), Random(), steps=3, seeds=[11])
    third = sample(model, collate([rows[2]], [mixed]), Confidence(), steps=5, seeds=[12], groups=specs)
    for b, alone in enumerate([first, second, third]):
        assert torch.equal(alone.ids[0], together.ids[b, :len(rows[b].ids)])
    assert together.nfe.tolist() == [5, 3, 5]


def test_segments_with_their_own_settings_decode_as_groups_in_the_pipeline():
    """Two segments with steps=1 share one group (all 7 targets in one step), a random-policy segment takes its
    6 steps, the plain segment the call's 2: the row costs 6 passes."""
    pipe = Pipeline(tiny_denoiser(6), {"text": Bytes()}, config={}, registry=Registry())
    segments = [Segment("text", "ab"), Segment("text", role="generate", length=4, steps=1),
                Segment("text", role="generate", length=6, policy="random", steps=6),
                Segment("text", role="generate", length=3, steps=1), Segment("text", role="generate", length=2)]
    specs, groups = pipe._groups([segments], pipe.encode([segments]))
    assert [(type(g.policy).__name__ if g.policy else None, g.steps) for g in specs] == [(None, 1), ("Random", 6)]
    assert groups[0].tolist() == [0, 0] + [1] * 4 + [2] * 6 + [1] * 3 + [0] * 2
    gen = pipe.generate([segments], steps=2, seed=0)
    assert gen.nfe == [6] and gen.generated == [15] and gen.texts[0].startswith("ab")


def test_groups_that_have_no_spec_or_bad_steps_raise():
    batch = grouped_batch(2, 2)
    with pytest.raises(UnidiffError, match="group 1 but only 0 GroupSpec"):
        sample(TableModel(distinct_table(4)), batch, Confidence())
    with pytest.raises(UnidiffError, match="steps must be at least 1"):
        sample(TableModel(distinct_table(4)), batch, Confidence(), groups=[GroupSpec(steps=0)])


# --- BLANK: variable-length holes -----------------------------------------------------------------------------

def blank_lover(seed=5):
    """A blank model whose BLANK logit dwarfs every other wherever it is allowed."""
    model = tiny_denoiser(seed, blank=True)
    with torch.no_grad():
        model.blank_head.bias.fill_(100.0)
    return model


def test_blank_only_where_blank_ok():
    model = blank_lover()
    row = encode_row(parse_holes("ab<blank:3>c<mask:2>", "text"), model.layout, {"text": Bytes()})
    assert row.blank_ok.tolist() == [False, False, True, True, True, False, False, False]
    batch = collate([row])
    out = sample(model, batch, Confidence(), steps=5, seeds=0)
    blank, text = model.layout.blank, model.layout.block("text")
    assert out.ids[0, 2:5].tolist() == [blank] * 3
    fixed = out.ids[0, 6:]
    assert ((fixed >= text.start) & (fixed < text.stop)).all()  # a fixed hole never gets BLANK
    # The whole pipeline drops the blanks: the variable hole vanishes, the fixed one keeps 2 bytes.
    assert decode_row(out.ids[0], row, model.layout, {"text": Bytes()}) == \
        [("text", "abc" + Bytes().decode((fixed - text.start).tolist()))]
    pipe = Pipeline(model, {"text": Bytes()}, config={}, registry=Registry())
    assert pipe.infill("ab<blank:3>c", steps=3).texts == ["abc"]


def test_decode_row_drops_blank_ids():
    layout = VocabLayout({"text": 256}, blank=True)
    row = encode_row(parse_holes("a<blank:3>b<mask:2>", "text"), layout, {"text": Bytes()})
    g = layout.to_global("text", list(b"axbyz")).tolist()
    ids = torch.tensor([g[0], layout.blank, g[1], layout.blank, g[2], g[3], g[4]])
    assert decode_row(ids, row, layout, {"text": Bytes()}) == [("text", "axbyz")]


def test_parse_holes_marks_blank_holes_variable():
    segs = parse_holes("a<blank:3>b<mask:2>", "text")
    assert [(s.role, s.content, s.length, s.variable) for s in segs] == [
        ("given", "a", None, False), ("generate", None, 3, True), ("given", "b", None, False),
        ("generate", None, 2, False)]


def test_variable_holes_need_a_blank_layout():
    with pytest.raises(UnidiffError, match=r"variable-length holes need a model trained with them \(data.holes > 0\)"):
        encode_row(parse_holes("a<blank:3>b", "text"), VocabLayout({"text": 256}), {"text": Bytes()})
    with pytest.raises(UnidiffError, match="only a 'generate' segment"):
        Segment("text", "a", variable=True)


def test_threshold_with_remasking_commits_at_least_what_it_re_masks():
    """An unreachable threshold commits only its minimum each step: one more token than the step re-masked, so the
    masked count falls by one a step and re-masked tokens do not pile up for the last step."""
    from unidiff.sampling.policies import Threshold

    model = tiny_denoiser(1)
    batch = collate(text_rows([("ab", 24)], model.layout))
    for seed in range(4):
        out, states = trace(model, batch, Threshold(1.0), steps=12, seeds=[seed], remask=1.0)
        masked = [24] + [int((x[0] == MASK).sum()) for x in states]
        assert masked[:-1] == list(range(24, 24 - 12, -1)), masked  # one net token a step ...
        assert masked[-1] == 0  # ... and the last step commits the rest
        assert not (out.ids == MASK).any()
