"""Training and editing under conditions: conditioned windows, BLANK insertion and the BLANK id, fine-tuning from
a blank-free checkpoint, and edits whose tokens are picked by the model's confidence.

Windows below use plain ids (Windows never looks inside them): documents 10..19, 30..35 and 40..42, with
conditions [100, 101], none and [102].
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unidiff import Pipeline
from unidiff.training.checkpoint import init_weights, write_model
from unidiff.data import Document, Segment, Windows, encode_conditions, encode_docs, encode_row, make_holes
from unidiff.errors import CheckpointError, UnidiffError
from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.plugins import Registry
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import Letters
from helpers import allowed as allowed_ids

DOCS = [torch.arange(10, 20), torch.arange(30, 36), torch.arange(40, 43)]
CONDS = [torch.tensor([100, 101]), torch.zeros(0, dtype=torch.long), torch.tensor([102])]
P = PAD


@pytest.fixture
def windows():
    return Windows(DOCS, 6, 0, CONDS)


# --- conditioned windows --------------------------------------------------------------------------------------

def test_kept_conditions_come_first_and_shorten_the_window(windows):
    assert windows.starts.tolist() == [0, 1, 2, 3, 4, 10, 16]
    batch = windows.batch(torch.tensor([0, 4, 10, 16]), torch.tensor([True, True, True, True]))
    assert batch.ids.tolist() == [[100, 101, 10, 11, 12, 13],
                                  [100, 101, 14, 15, 16, 17],
                                  [30, 31, 32, 33, 34, 35],  # a document without a condition: the plain window
                                  [102, 40, 41, 42, P, P]]
    F, T = False, True
    assert batch.condition.tolist() == [[T, T, F, F, F, F], [T, T, F, F, F, F], [F] * 6, [T, F, F, F, F, F]]
    assert batch.targets.tolist() == [[F, F, T, T, T, T], [F, F, T, T, T, T], [T] * 6, [F, T, T, T, F, F]]
    assert batch.pad_mask.tolist() == [[F] * 6, [F] * 6, [F] * 6, [F, F, F, F, T, T]]
    assert batch.positions.tolist() == [list(range(6))] * 4 and (batch.modality == 0).all()


def test_rows_without_their_condition_are_plain_windows(windows):
    starts = torch.tensor([0, 4, 10, 16])
    plain = [[10, 11, 12, 13, 14, 15], [14, 15, 16, 17, 18, 19], [30, 31, 32, 33, 34, 35], [40, 41, 42, P, P, P]]
    for batch in (windows.batch(starts, torch.tensor([False] * 4)), windows.batch(starts)):
        assert batch.ids.tolist() == plain
        assert not batch.condition.any()
        assert torch.equal(batch.targets, ~batch.pad_mask)
    mixed = windows.batch(starts, torch.tensor([True, False, True, False]))
    assert mixed.ids.tolist() == [[100, 101, 10, 11, 12, 13], plain[1], plain[2], plain[3]]


def test_condition_dropout_keeps_the_condition_at_the_expected_rate():
    w = Windows(DOCS[:2], 6, 0, [torch.tensor([100]), torch.tensor([101, 102])])  # every document has one

    def kept(batch):
        return int(batch.condition.any(1).sum())

    assert kept(w.sample(300, torch.Generator().manual_seed(0), cond_dropout=0.0)) == 300
    assert kept(w.sample(300, torch.Generator().manual_seed(0), cond_dropout=1.0)) == 0
    a = w.sample(2000, torch.Generator().manual_seed(1), cond_dropout=0.25)
    b = w.sample(2000, torch.Generator().manual_seed(1), cond_dropout=0.25)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.condition, b.condition)  # deterministic given the seed
    assert 1400 <= kept(a) <= 1600  # 1500 expected, sd 19
    for row, cond in zip(a.ids, a.condition):  # a kept condition is its document's, whole
        if cond.any():
            assert row[cond].tolist() in ([100], [101, 102])


def test_a_condition_must_leave_room_for_content():
    with pytest.raises(UnidiffError, match="condition takes 6 tokens, leaving no room in rows of 6"):
        Windows(DOCS, 6, 0, [torch.arange(6), CONDS[1], CONDS[2]])
    Windows(DOCS, 6, 0, [torch.arange(5), CONDS[1], CONDS[2]])  # 5 of 6 is fine


def test_documents_carry_their_conditions():
    layout, m = VocabLayout({"abc": 16}), Letters("abc", "abcdefghijklmnop", default_length=8)
    docs = [Document("abc", condition="p"), "de", Document("fg")]
    assert [d.tolist() for d in encode_docs(docs, m, layout)] == [[4, 5, 6], [7, 8], [9, 10]]
    assert [c.tolist() for c in encode_conditions(docs, m, layout)] == [[19], [], []]
    assert encode_conditions(["abc", Document("de")], m, layout) is None


# --- BLANK insertion ------------------------------------------------------------------------------------------

BLANK = 999


def runs_of(mask: list[bool]) -> list[int]:
    """Lengths of the maximal runs of True."""
    out, n = [], 0
    for v in mask + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def conditioned_batch(seed=0):
    w = Windows(DOCS, 8, 0, CONDS)
    return w.sample(64, torch.Generator().manual_seed(seed), cond_dropout=0.5)


@pytest.mark.parametrize("seed", range(4))
def test_make_holes_hold_the_text_then_blanks_and_keep_the_rest(seed):
    batch = conditioned_batch(seed)
    out = make_holes(batch, BLANK, max_holes=2, max_len=3, generator=torch.Generator().manual_seed(seed))
    for field in ("modality", "positions", "pad_mask", "targets", "condition"):
        assert torch.equal(getattr(out, field), getattr(batch, field)), field
    assert not (out.blank_ok & ~batch.targets).any()  # holes lie inside the content
    assert torch.equal(out.ids == BLANK, out.blank_ok & (out.ids == BLANK)) and not (batch.ids == BLANK).any()
    made = 0
    for b in range(len(batch.ids)):
        before = batch.ids[b, batch.targets[b]].tolist()
        after = out.ids[b, out.targets[b]].tolist()
        text = [t for t in after if t != BLANK]
        assert text == before[:len(text)]  # the original tokens, in order, cut back to the content's length
        hole = out.blank_ok[b].tolist()
        runs = runs_of(hole)
        assert len(runs) <= 2 and all(1 <= r <= 3 for r in runs)
        j = 0
        while j < len(hole):  # each hole: its tokens first, then its blanks
            if hole[j]:
                k = j + runs_of(hole[j:])[0]
                blanks = [int(t) == BLANK for t in out.ids[b, j:k]]
                assert blanks == sorted(blanks)
                j = k
            j += 1
        made += len(runs)
    assert made > 0 and (out.ids == BLANK).any()


def test_make_holes_with_none_is_the_identity():
    batch = conditioned_batch(1)
    out = make_holes(batch, BLANK, max_holes=0, max_len=5, generator=torch.Generator().manual_seed(0))
    for field in ("ids", "modality", "positions", "pad_mask", "targets", "condition"):
        assert torch.equal(getattr(out, field), getattr(batch, field)), field
    assert not out.blank_ok.any()


def test_make_holes_by_hand_on_one_row():
    """One row, targets 10..15 after a condition of 2; replaying the generator's draws gives the expected row."""
    w = Windows(DOCS, 8, 0, CONDS)
    batch = w.batch(torch.tensor([0]), torch.tensor([True]))
    assert batch.ids.tolist() == [[100, 101, 10, 11, 12, 13, 14, 15]]
    seed = 16
    g = torch.Generator().manual_seed(seed)
    assert int(torch.randint(2, (1,), generator=g)) == 1  # one hole
    k = int(torch.randint(1, 5, (1,), generator=g))
    n = int(torch.randint(k + 1, (1,), generator=g))
    at = int(torch.randint(6 - k + 1, (1,), generator=g))
    assert 0 < n < k  # the draws give a hole with text and blanks
    row = list(range(10, 10 + at + n)) + [BLANK] * (k - n) + list(range(10 + at + n, 16))
    out = make_holes(batch, BLANK, max_holes=1, max_len=4, generator=torch.Generator().manual_seed(seed))
    assert out.ids.tolist() == [[100, 101] + row[:6]]
    assert out.blank_ok.tolist() == [[False, False] + [at <= j < at + k for j in range(6)]]


# --- the BLANK id and its head --------------------------------------------------------------------------------

def test_blank_is_the_last_id_and_leaves_the_others_in_place():
    plain, blank = VocabLayout({"text": 256, "dna": 4}), VocabLayout({"text": 256, "dna": 4}, blank=True)
    assert (plain.size, plain.blank, plain.has_blank) == (266, None, False)
    assert (blank.size, blank.blank, blank.has_blank) == (267, 266, True)
    assert blank.blocks == plain.blocks
    assert blank.to_dict() == {"sizes": {"dna": 4, "text": 256}, "size": 267, "blank": True}
    assert VocabLayout.from_dict(blank.to_dict()) == blank and blank != plain
    assert VocabLayout.from_dict(plain.to_dict()) == plain
    allowed = allowed_ids(blank, torch.tensor([0, 1]))
    assert allowed.shape == (2, 267) and not allowed[:, 266].any()
    assert torch.equal(allowed[:, :266], allowed_ids(plain, torch.tensor([0, 1])))
    with pytest.raises(CheckpointError, match="size 266"):
        VocabLayout.from_dict({"sizes": {"dna": 4, "text": 256}, "size": 266, "blank": True})


def denoiser(layout, d_model=32, n_layers=1, seed=0):
    torch.manual_seed(seed)
    heads = {n: make_head(type("M", (), {"vocab_size": layout.block(n).size}), d_model) for n in layout.names}
    return Denoiser(ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=2, max_len=32), layout, heads).eval()


def test_blank_logit_only_where_allowed():
    layout = VocabLayout({"text": 16, "dna": 4}, blank=True)
    model = denoiser(layout)
    with torch.no_grad():
        model.blank_head.bias.fill_(0.5)
    h = torch.randn(5, 32)
    modality = torch.tensor([0, 1, 1, 0, 1])
    ok = torch.tensor([True, False, True, False, True])
    with torch.no_grad():
        score = model.blank_head(h).squeeze(-1)
        out = model.logits(h, modality, blank=ok)
        assert torch.equal(out[ok, layout.blank], score[ok])
        assert torch.isneginf(out[~ok, layout.blank]).all()
        assert torch.isneginf(model.logits(h, modality)[:, layout.blank]).all()
        assert torch.equal(model.logits(h, modality, blank=True)[:, layout.blank], score)
        assert torch.isneginf(model.logits(h, modality, blank=False)[:, layout.blank]).all()
        # The other ids do not depend on the blank argument.
        assert torch.equal(out[:, :layout.blank], model.logits(h, modality)[:, :layout.blank])


# --- fine-tuning a blank model from a blank-free checkpoint ----------------------------------------------------

def write(folder, model):
    folder.mkdir()
    registry = Registry()
    write_model(folder, model, {"text": registry.modality("text")}, registry)
    return folder


def test_init_weights_copies_every_shared_parameter(tmp_path):
    old = denoiser(VocabLayout({"text": 256}), seed=0)
    folder = write(tmp_path / "old", old)
    new = denoiser(VocabLayout({"text": 256}, blank=True), seed=1)
    fresh = copy.deepcopy(new.state_dict())
    assert init_weights(folder, new, Registry()) == folder
    mine, theirs = new.state_dict(), old.state_dict()
    assert set(mine) - set(theirs) == {"blank_head.weight", "blank_head.bias", "hole_emb"}
    for key, value in theirs.items():
        if key == "tok_emb.weight":
            assert value.shape[0] == 260 and mine[key].shape[0] == 261
            assert torch.equal(mine[key][:260], value)
            assert torch.equal(mine[key][260:], fresh[key][260:])  # the BLANK row keeps its fresh init
        else:
            assert torch.equal(mine[key], value), key
    for key in ("blank_head.weight", "blank_head.bias", "hole_emb"):
        assert torch.equal(mine[key], fresh[key])


def test_init_weights_refuses_another_architecture(tmp_path):
    folder = write(tmp_path / "old", denoiser(VocabLayout({"text": 256})))
    with pytest.raises(CheckpointError, match=r"train.init: .*parameter \S+ \(\d+(, \d+)*\) does not fit .*\[model\]"):
        init_weights(folder, denoiser(VocabLayout({"text": 256}, blank=True), d_model=16), Registry())
    with pytest.raises(CheckpointError, match=r"parameter blocks\.0\.\S+ .*\(absent\)"):
        init_weights(folder, denoiser(VocabLayout({"text": 256}), n_layers=0), Registry())
    with pytest.raises(CheckpointError, match="same modalities"):
        init_weights(folder, denoiser(VocabLayout({"text": 255})), Registry())


# --- edits ordered by confidence ------------------------------------------------------------------------------

CONTENT = "abcabcdefghijklmnopa"  # 20 tokens


@pytest.fixture(scope="module")
def pipe():
    layout = VocabLayout({"abc": 16})
    model = denoiser(layout, seed=3)
    with torch.no_grad():  # sharper than the init, so the scores are well apart
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    letters = Letters("abc", "abcdefghijklmnop", default_length=8)
    return Pipeline(model, {"abc": letters}, config={}, registry=Registry())


def scores_by_hand(model, row, start, n, folds=8):
    """Log-probability of each of the n tokens from start, token r scored with tokens r' = r mod folds hidden,
    along with every target of the row."""
    logp = torch.zeros(n, dtype=torch.float64)
    for j in range(folds):
        hide = [start + r for r in range(n) if r % folds == j]
        x = torch.where(row.targets, MASK, row.ids)
        x[hide] = MASK
        with torch.no_grad():
            lp = model(x[None], row.modality[None])[0].double().log_softmax(-1)
        for p in hide:
            logp[p - start] = lp[p, row.ids[p]]
    return logp


def test_confidence_edit_is_scored_not_drawn():
    segs = [Segment("abc", "ab"), Segment("abc", CONTENT, role="edit", strength=0.25, order="confidence")]
    row = encode_row(segs, VocabLayout({"abc": 16}), {"abc": Letters("abc", "abcdefghijklmnop", default_length=8)})
    assert not row.targets.any()  # the pipeline picks them by confidence
    assert row.rescore == [(2, 20, 0.25)]
    assert row.condition.tolist() == [True] * 2 + [False] * 20


def confidence_edit_samples(strength):
    return [[Segment("abc", "ab"), Segment("abc", CONTENT, role="edit", strength=strength, order="confidence"),
             Segment("abc", "ponmlk", role="edit", strength=1.0), Segment("abc", role="generate", length=3)],
            [Segment("abc", "ponm" * 3, role="edit", strength=strength, order="confidence")]]


def test_confidence_edit_masks_the_least_likely_tokens(pipe):
    """Strength s re-masks the floor(s n + 1/2) tokens of lowest log-probability (scored in 8 folds, with the
    row's other targets, here a random-order edit of 6 tokens and a 'generate' segment of 3, hidden too). Every
    count from 0 to n is checked, which pins the whole ranking; 0.125 of 20 (2.5) rounds half up to 3."""
    rows = pipe.encode(confidence_edit_samples(1.0))
    order = []
    for row in rows:
        (start, n, _), = row.rescore
        order.append(start + torch.sort(scores_by_hand(pipe.model, row, start, n), stable=True).indices)
    strengths = [k / 20 for k in range(21)] + [0.125]
    for strength in strengths:
        rows = pipe.encode(confidence_edit_samples(strength))
        given = [r.targets.clone() for r in rows]
        ks = [math.floor(strength * len(o) + 0.5) for o in order]
        assert pipe._rescore(rows).tolist() == [8 if k else 0 for k in ks]  # nothing to re-mask: no scoring
        for row, before, least_likely in zip(rows, given, order):
            k = math.floor(strength * len(least_likely) + 0.5)
            want = before.clone()
            want[least_likely[:k]] = True
            assert torch.equal(row.targets, want), strength
    assert [int(r.targets.sum()) for r in rows] == [3 + 6 + 3, 2]  # the last strength: 0.125


def test_confidence_edit_changes_only_its_targets(pipe):
    rows = pipe.encode([[Segment("abc", CONTENT, role="edit", strength=0.3, order="confidence")]])
    pipe._rescore(rows)
    targets = rows[0].targets
    gen = pipe.edit(CONTENT, 0.3, order="confidence", steps=3, seed=0, temperature=0.0)
    assert gen.generated == [6] and gen.nfe == [8 + 3]  # 8 scoring passes, then 3 sampling steps
    out = gen.texts[0]
    assert len(out) == 20
    assert all(out[i] == CONTENT[i] for i in range(20) if not targets[i])
    prompted = pipe.edit(CONTENT, 0.3, order="confidence", prompt="pp", steps=3, seed=0)
    assert prompted.texts[0].startswith("pp") and len(prompted.texts[0]) == 22
    guided = pipe.edit(CONTENT, 0.3, order="confidence", prompt="pp", steps=3, seed=0, guidance=2.0)
    assert guided.nfe == [8 + 2 * 3]  # scoring is unguided; each sampling step takes two passes


def test_confidence_edit_of_strength_zero_changes_nothing(pipe):
    gen = pipe.edit(CONTENT, 0.0, order="confidence", num=2)
    assert gen.texts == [CONTENT, CONTENT] and gen.generated == [0, 0]


def test_unknown_edit_order_raises(pipe):
    with pytest.raises(UnidiffError, match="order must be one of 'random', 'confidence'; got 'best'"):
        Segment("abc", CONTENT, role="edit", strength=0.5, order="best")
    with pytest.raises(UnidiffError, match="order"):
        pipe.edit(CONTENT, 0.5, order="best")
