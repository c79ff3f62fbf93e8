"""Rows of a model with several modalities: every modality run is wrapped in its BOS/EOS markers, in the rows
`encode_row` builds for sampling and in the training windows `make_windows` cuts, and the two agree.

Layout used throughout: {"abc": 3, "xy": 2} gives
    0 PAD | 1 MASK | abc: BOS 2, EOS 3, content 4 5 6 | xy: BOS 7, EOS 8, content 9 10
"""

from __future__ import annotations

import pytest
import torch

from unidiff.data import (Document, Segment, Windows, collate, condition_modality, encode_conditions, encode_docs,
                          encode_row, make_windows)
from unidiff.errors import UnidiffError
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import Letters


ABC, XY = Letters("abc", "abc"), Letters("xy", "xy")
MODS = {"abc": ABC, "xy": XY}
LAYOUT = VocabLayout({"xy": 2, "abc": 3})
SINGLE = VocabLayout({"abc": 3})
A_BOS, A_EOS, X_BOS, X_EOS = 2, 3, 7, 8
a, b, c, x, y = 4, 5, 6, 9, 10
P, M = PAD, MASK
T, F = True, False
L = 10  # row length of the windows below: 8 content tokens between the markers


def test_layout():
    assert (LAYOUT.block("abc").bos, LAYOUT.block("abc").eos, LAYOUT.block("abc").start) == (A_BOS, A_EOS, a)
    assert (LAYOUT.block("xy").bos, LAYOUT.block("xy").eos, LAYOUT.block("xy").start) == (X_BOS, X_EOS, x)
    assert (LAYOUT.index("abc"), LAYOUT.index("xy")) == (0, 1)


# --- encode_row --------------------------------------------------------------------------------------------------


def test_single_modality_row_is_wrapped_when_the_model_has_two():
    row = encode_row([Segment("abc", "cab")], LAYOUT, MODS)
    assert row.ids.tolist() == [A_BOS, c, a, b, A_EOS]
    assert row.modality.tolist() == [0] * 5
    assert row.targets.tolist() == [F] * 5
    assert row.condition.tolist() == [T] * 5  # a wholly given run: its markers are given too
    assert row.segment.tolist() == [-1, 0, 0, 0, -1]
    assert row.spans == [("abc", 1, 4, False)]

    row = encode_row([Segment("xy", role="generate", length=3)], LAYOUT, MODS)
    assert row.ids.tolist() == [X_BOS, M, M, M, X_EOS]
    assert row.modality.tolist() == [1] * 5
    assert row.targets.tolist() == [F, T, T, T, F]
    assert row.condition.tolist() == [F] * 5
    assert row.spans == [("xy", 1, 4, True)]


def test_single_modality_layout_has_no_markers():
    row = encode_row([Segment("abc", "cab"), Segment("abc", role="generate", length=2)], SINGLE, {"abc": ABC})
    assert row.ids.tolist() == [c, a, b, M, M]
    assert row.condition.tolist() == [T, T, T, F, F]
    assert row.segment.tolist() == [0, 0, 0, 1, 1]


def test_given_a_then_generate_b():
    row = encode_row([Segment("abc", "ab"), Segment("xy", role="generate", length=3)], LAYOUT, MODS)
    assert row.ids.tolist() == [A_BOS, a, b, A_EOS, X_BOS, M, M, M, X_EOS]
    assert row.modality.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    assert row.targets.tolist() == [F, F, F, F, F, T, T, T, F]
    assert row.condition.tolist() == [T, T, T, T, F, F, F, F, F]  # exactly BOS_A .. EOS_A
    assert row.segment.tolist() == [-1, 0, 0, -1, -1, 1, 1, 1, -1]
    assert row.spans == [("abc", 1, 3, False), ("xy", 5, 8, True)]
    assert row.blank_ok.tolist() == [F] * 9


def test_a_run_mixing_given_and_generated_keeps_its_markers_out_of_the_condition():
    segs = [Segment("xy", "yx"), Segment("abc", "ab"), Segment("abc", role="generate", length=2), Segment("abc", "c")]
    row = encode_row(segs, LAYOUT, MODS)
    assert row.ids.tolist() == [X_BOS, y, x, X_EOS, A_BOS, a, b, M, M, c, A_EOS]
    assert row.modality.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert row.targets.tolist() == [F] * 7 + [T, T] + [F, F]
    # the xy run is wholly given (markers included); in the abc run only its given segments are
    assert row.condition.tolist() == [T, T, T, T, F, T, T, F, F, T, F]
    assert row.segment.tolist() == [-1, 0, 0, -1, -1, 1, 1, 2, 2, 3, -1]


def test_an_edit_makes_its_run_not_wholly_given():
    row = encode_row([Segment("xy", "x"), Segment("abc", "abc", role="edit", strength=0.0)], LAYOUT, MODS)
    assert row.ids.tolist() == [X_BOS, x, X_EOS, A_BOS, a, b, c, A_EOS]
    assert row.targets.tolist() == [F] * 8  # strength 0 re-masks nothing
    assert row.condition.tolist() == [T, T, T, F, F, F, F, F]


def test_collate_keeps_the_marker_condition():
    rows = [encode_row([Segment("abc", "ab"), Segment("xy", role="generate", length=1)], LAYOUT, MODS),
            encode_row([Segment("xy", role="generate", length=2)], LAYOUT, MODS)]
    batch = collate(rows)
    assert batch.ids.tolist() == [[A_BOS, a, b, A_EOS, X_BOS, M, X_EOS], [X_BOS, M, M, X_EOS, P, P, P]]
    assert batch.condition.tolist() == [[T, T, T, T, F, F, F], [F] * 7]
    assert batch.pad_mask.tolist() == [[F] * 7, [F, F, F, F, T, T, T]]


# --- make_windows: a condition of another modality -----------------------------------------------------------------


DOCS = [Document("abcabcabca", "xy", "xy"),  # 10 tokens: windows start at 0, 1, 2
        Document("cb", "y", "xy"),  # shorter than a row: one padded window
        Document("bbbbcccc", None),  # no condition
        Document("aabbccaabbccaabbccaabbcca", "yyx", "xy")]  # 25 tokens


def windows_of(docs, layout=LAYOUT, content="abc", length=L):
    cond_name = condition_modality(docs)
    cond_mod = MODS[cond_name or content]
    return make_windows(encode_docs(docs, MODS[content], layout), length, layout, content,
                        encode_conditions(docs, cond_mod, layout), cond_name)


def test_other_modality_condition_rows_by_hand():
    w = windows_of(DOCS)
    assert w.markers == (A_BOS, A_EOS) and w.cond_markers == (1, X_BOS, X_EOS)
    assert w.starts.tolist() == [0, 1, 2, 10, 12] + list(range(20, 38))
    kept = w.batch(torch.tensor([0, 2, 10, 12, 20]), torch.tensor([T] * 5))
    assert kept.ids.tolist() == [[X_BOS, x, y, X_EOS, A_BOS, a, b, c, a, A_EOS],
                                 [X_BOS, x, y, X_EOS, A_BOS, c, a, b, c, A_EOS],
                                 [X_BOS, y, X_EOS, A_BOS, c, b, A_EOS, P, P, P],
                                 [A_BOS, b, b, b, b, c, c, c, c, A_EOS],  # no condition: a plain row
                                 [X_BOS, y, y, x, X_EOS, A_BOS, a, a, b, A_EOS]]
    assert kept.modality.tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    assert kept.modality.tolist()[4] == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert kept.targets.tolist() == [[F, F, F, F, F, T, T, T, T, F],
                                     [F, F, F, F, F, T, T, T, T, F],
                                     [F, F, F, F, T, T, F, F, F, F],
                                     [F, T, T, T, T, T, T, T, T, F],
                                     [F, F, F, F, F, F, T, T, T, F]]
    assert kept.condition.tolist() == [[T, T, T, T, F, F, F, F, F, F],
                                       [T, T, T, T, F, F, F, F, F, F],
                                       [T, T, T, F, F, F, F, F, F, F],
                                       [F] * 10,
                                       [T, T, T, T, T, F, F, F, F, F]]
    assert kept.pad_mask.tolist()[2] == [F] * 7 + [T] * 3
    dropped = w.batch(torch.tensor([0, 2, 10, 12, 20]), torch.tensor([F] * 5))
    assert dropped.ids.tolist() == [[A_BOS, a, b, c, a, b, c, a, b, A_EOS],
                                    [A_BOS, c, a, b, c, a, b, c, a, A_EOS],  # up to the document's end
                                    [A_BOS, c, b, A_EOS, P, P, P, P, P, P],
                                    [A_BOS, b, b, b, b, c, c, c, c, A_EOS],
                                    [A_BOS, a, a, b, b, c, c, a, a, A_EOS]]
    assert (dropped.modality == 0).all() and not dropped.condition.any()


def content_tokens(doc: str, start: int, room: int) -> str:
    return doc[start:start + room]


@pytest.mark.parametrize("keep", [True, False])
def test_windows_match_encode_row(keep):
    """Every window of every document equals the row encode_row gives [condition, content] (kept) or [content]."""
    w = windows_of(DOCS)
    offsets, o = [], 0
    for d in DOCS:
        offsets.append(o)
        o += len(d.content)
    starts = w.starts
    batch = w.batch(starts, torch.full((len(starts),), keep))
    assert torch.equal(batch.positions, torch.arange(L).expand(len(starts), L))
    for i, s in enumerate(starts.tolist()):
        k = max(j for j, off in enumerate(offsets) if off <= s)
        doc, local = DOCS[k], s - offsets[k]
        cond = doc.condition if keep else None
        room = L - 2 - (len(cond) + 2 if cond else 0)
        content = content_tokens(doc.content, local, room)
        segs = ([Segment("xy", cond)] if cond else []) + [Segment("abc", content)]
        given = encode_row(segs, LAYOUT, MODS)
        gen = encode_row(([Segment("xy", cond)] if cond else []) + [Segment("abc", role="generate",
                                                                            length=len(content))], LAYOUT, MODS)
        n = len(given.ids)
        assert batch.ids[i, :n].tolist() == given.ids.tolist(), (s, keep)
        assert batch.ids[i, n:].tolist() == [P] * (L - n)
        assert batch.modality[i, :n].tolist() == given.modality.tolist()
        assert batch.pad_mask[i].tolist() == [F] * n + [T] * (L - n)
        # targets: exactly the content positions; condition: what encode_row hides for guidance
        assert batch.targets[i, :n].tolist() == (given.segment == len(segs) - 1).tolist()
        assert batch.targets[i, :n].tolist() == gen.targets.tolist()
        assert batch.condition[i, :n].tolist() == gen.condition.tolist()
        assert not batch.targets[i, n:].any() and not batch.condition[i, n:].any()


def test_sampled_rows_have_the_encode_row_layout():
    w = windows_of(DOCS)
    batch = w.sample(200, torch.Generator().manual_seed(0), cond_dropout=0.5)
    n_kept = 0
    for ids, mod, tgt, cnd, pad in zip(batch.ids, batch.modality, batch.targets, batch.condition, batch.pad_mask):
        live = ids[~pad].tolist()
        content = ABC.decode([t - a for t in ids[tgt].tolist()])
        if cnd.any():
            n_kept += 1
            cond = XY.decode([t - x for t in ids[cnd & (mod == 1) & (ids >= x)].tolist()])
            segs = [Segment("xy", cond), Segment("abc", content)]
        else:
            segs = [Segment("abc", content)]
        assert live == encode_row(segs, LAYOUT, MODS).ids.tolist()
    assert 60 <= n_kept <= 140  # 3 of 4 documents have a condition; half are kept


def test_condition_room_with_markers():
    # a condition of another modality costs its length + 2 markers; the content's own markers cost 2
    with pytest.raises(UnidiffError, match="condition takes 6 tokens, leaving no room in rows of 10"):
        windows_of([Document("abcabc", "xyxyxy", "xy")])
    w = windows_of([Document("abcabc", "xyxyx", "xy")])
    row = w.batch(torch.tensor([0]), torch.tensor([T]))
    assert row.ids.tolist() == [[X_BOS, x, y, x, y, x, X_EOS, A_BOS, a, A_EOS]]  # one content token left
    assert row.targets.tolist() == [[F] * 8 + [T, F]]


# --- make_windows: a condition of the content's own modality -------------------------------------------------------


SAME = [Document("abcabcabca", "cc"), Document("bab", None)]


def test_same_modality_condition_joins_the_content_run():
    w = windows_of(SAME)
    assert w.markers == (A_BOS, A_EOS) and w.cond_markers is None
    batch = w.batch(torch.tensor([0, 2, 10]), torch.tensor([T, T, T]))
    assert batch.ids.tolist() == [[A_BOS, c, c, a, b, c, a, b, c, A_EOS],
                                  [A_BOS, c, c, c, a, b, c, a, b, A_EOS],
                                  [A_BOS, b, a, b, A_EOS, P, P, P, P, P]]
    assert batch.targets.tolist() == [[F, F, F, T, T, T, T, T, T, F],
                                      [F, F, F, T, T, T, T, T, T, F],
                                      [F, T, T, T, F, F, F, F, F, F]]
    # the condition is hidden for guidance, the run's markers are not (the run is not wholly given)
    assert batch.condition.tolist() == [[F, T, T, F, F, F, F, F, F, F],
                                        [F, T, T, F, F, F, F, F, F, F],
                                        [F] * 10]
    assert (batch.modality == 0).all()
    for i, (cond, content) in enumerate([("cc", "abcabc"), ("cc", "cabcab")]):
        enc = encode_row([Segment("abc", cond), Segment("abc", content)], LAYOUT, MODS)
        gen = encode_row([Segment("abc", cond), Segment("abc", role="generate", length=len(content))], LAYOUT, MODS)
        n = len(enc.ids)
        assert batch.ids[i, :n].tolist() == enc.ids.tolist()
        assert batch.targets[i, :n].tolist() == gen.targets.tolist()
        assert batch.condition[i, :n].tolist() == gen.condition.tolist()


def test_same_modality_condition_room():
    with pytest.raises(UnidiffError, match="condition takes 8 tokens, leaving no room in rows of 10"):
        windows_of([Document("abcabc", "aaaaaaaa")])
    w = windows_of([Document("abcabc", "aaaaaaa")])
    assert w.batch(torch.tensor([0]), torch.tensor([T])).ids.tolist() == [[A_BOS] + [a] * 7 + [a, A_EOS]]


# --- make_windows: a single-modality layout (no markers) ------------------------------------------------------------


def test_single_modality_layout_rows_are_unchanged():
    docs = [Document("abcabcabca", "cc"), Document("bab", None)]
    w = make_windows(encode_docs(docs, ABC, SINGLE), 6, SINGLE, "abc", encode_conditions(docs, ABC, SINGLE), None)
    sa, sb, sc = 4, 5, 6  # abc content ids: the layout still reserves BOS 2, EOS 3 (unused)
    assert SINGLE.block("abc").start == sa and w.markers is None and w.cond_markers is None
    assert w.starts.tolist() == [0, 1, 2, 3, 4, 10]
    kept = w.batch(torch.tensor([0, 4, 10]), torch.tensor([T, T, T]))
    assert kept.ids.tolist() == [[sc, sc, sa, sb, sc, sa],
                                 [sc, sc, sb, sc, sa, sb],
                                 [sb, sa, sb, P, P, P]]
    assert kept.targets.tolist() == [[F, F, T, T, T, T], [F, F, T, T, T, T], [T, T, T, F, F, F]]
    assert kept.condition.tolist() == [[T, T, F, F, F, F], [T, T, F, F, F, F], [F] * 6]
    plain = w.batch(torch.tensor([0, 4, 10]))
    assert plain.ids.tolist() == [[sa, sb, sc, sa, sb, sc], [sb, sc, sa, sb, sc, sa], [sb, sa, sb, P, P, P]]
    assert torch.equal(plain.targets, ~plain.pad_mask) and not plain.condition.any()
    # the same as encode_row in that layout
    enc = encode_row([Segment("abc", "cc"), Segment("abc", "abca")], SINGLE, {"abc": ABC})
    assert kept.ids[0].tolist() == enc.ids.tolist()


def test_make_windows_without_conditions_on_two_modalities():
    docs = ["abcab", "c"]
    w = make_windows(encode_docs(docs, ABC, LAYOUT), 6, LAYOUT, "abc")
    batch = w.batch(w.starts)
    assert batch.ids.tolist() == [[A_BOS, a, b, c, a, A_EOS], [A_BOS, b, c, a, b, A_EOS], [A_BOS, c, A_EOS, P, P, P]]
    assert not batch.condition.any()


def test_xy_content_with_abc_conditions():
    """The content modality need not come first in the layout."""
    docs = [Document("xyyx", "ca", "abc")]
    w = make_windows(encode_docs(docs, XY, LAYOUT), 10, LAYOUT, "xy", encode_conditions(docs, ABC, LAYOUT), "abc")
    row = w.batch(torch.tensor([0]), torch.tensor([T]))
    expected = encode_row([Segment("abc", "ca"), Segment("xy", "xyyx")], LAYOUT, MODS)
    assert row.ids[0].tolist() == expected.ids.tolist() == [A_BOS, c, a, A_EOS, X_BOS, x, y, y, x, X_EOS]
    assert row.modality[0].tolist() == expected.modality.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    assert row.condition[0].tolist() == [T, T, T, T, F, F, F, F, F, F]


# --- tiles ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [6, 7, 10, 11])
def test_tiles_cover_documents_without_gaps_when_markers_shorten_rows(length):
    docs = ["abcabcabcabcabcabcabcabca", "cb", "aabbccaabbcc", "abcabcab"]  # 25, 2, 12, 8 tokens
    w = windows_of([Document(d, "x", "xy") for d in docs], length=length)
    stride = length - 2
    assert (w.tile_starts[1:] > w.tile_starts[:-1]).all()
    covered = {i: [] for i in range(len(docs))}
    offsets = [sum(len(d) for d in docs[:i]) for i in range(len(docs))]
    for batch in w.tiles(3):
        assert not batch.condition.any()  # evaluation rows carry no condition
        for ids, tgt, pad in zip(batch.ids, batch.targets, batch.pad_mask):
            live = ids[~pad].tolist()
            assert live[0] == A_BOS and live[-1] == A_EOS
            covered_text = ABC.decode([t - a for t in ids[tgt].tolist()])
            assert len(live) == len(covered_text) + 2
            covered.setdefault("rows", []).append(covered_text)
    rows = covered.pop("rows")
    i = 0
    for k, d in enumerate(docs):
        # a document's tiles start at its first token and follow each other with the stride (no gap, no overlap)
        tiles = [s - offsets[k] for s in w.tile_starts.tolist() if offsets[k] <= s < offsets[k] + len(d)]
        assert tiles == list(range(0, len(d), stride))
        text = "".join(rows[i:i + len(tiles)])
        i += len(tiles)
        assert text == d  # every token scored once, the last tile possibly short
    assert i == len(rows)


def test_tiles_with_max_windows():
    w = windows_of([Document("abcabcabcabcabcabcabcabca", "xy", "xy")])
    assert w.tile_starts.tolist() == [0, 8, 16, 24]  # 25 tokens: three full tiles of 8 and one of 1
    ids = torch.cat([bt.ids for bt in w.tiles(2, max_windows=2)])
    assert ids.tolist() == [[A_BOS, a, b, c, a, b, c, a, b, A_EOS], [A_BOS, c, a, b, c, a, b, c, a, A_EOS]]


# --- condition_modality --------------------------------------------------------------------------------------------


def test_condition_modality():
    assert condition_modality(["abc", Document("ab")]) is None
    assert condition_modality([Document("ab", "x", "xy"), Document("c", None, "abc"), "a"]) == "xy"
    assert condition_modality([Document("ab", "c")]) is None  # the document's own modality
    with pytest.raises(UnidiffError, match=r"conditions must all be of one modality; got \['abc', 'xy'\]"):
        condition_modality([Document("ab", "x", "xy"), Document("c", "a", "abc")])
    with pytest.raises(UnidiffError, match=r"one modality; got \['None', 'xy'\]"):
        condition_modality([Document("ab", "x", "xy"), Document("c", "a")])


def test_windows_refuse_other_modality_condition_without_markers():
    with pytest.raises(UnidiffError, match="needs markers around the content too"):
        Windows([torch.tensor([4, 5])], 6, 0, [torch.tensor([9])], markers=None, cond_markers=(1, X_BOS, X_EOS))
