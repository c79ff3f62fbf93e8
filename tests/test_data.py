"""Segments, rows, padding and training windows, with expected ids written out by hand.

Layout used throughout: {"abc": 3, "xy": 2} gives
    0 PAD | 1 MASK | abc: BOS 2, EOS 3, content 4 5 6 | xy: BOS 7, EOS 8, content 9 10
"""

from __future__ import annotations

import pytest
import torch

from unidiff.data import Batch, Row, Segment, Tokens, Windows, collate, encode_docs, encode_row
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import Letters


ABC, XY = Letters("abc", "abc"), Letters("xy", "xy")
MODS = {"abc": ABC, "xy": XY}
LAYOUT = VocabLayout({"xy": 2, "abc": 3})
A_BOS, A_EOS, X_BOS, X_EOS = 2, 3, 7, 8
a, b, c, x, y = 4, 5, 6, 9, 10


def test_layout_is_as_documented():
    assert (LAYOUT.block("abc").bos, LAYOUT.block("abc").start, LAYOUT.block("xy").bos, LAYOUT.block("xy").start,
            LAYOUT.size) == (A_BOS, a, X_BOS, x, 11)


# --- Segment -----------------------------------------------------------------------------------------------------

def test_segment_bad_role():
    with pytest.raises(UnidiffError, match="role must be one of 'given', 'generate', 'edit'; got 'prompt'"):
        Segment("abc", "ab", role="prompt")


@pytest.mark.parametrize("length", [None, 0, -3])
def test_generate_segment_needs_positive_length(length):
    with pytest.raises(UnidiffError, match=f"positive length .*got None|length must be at least 1; got {length}"):
        Segment("abc", role="generate", length=length)


def test_segment_defaults():
    s = Segment("abc", "ab")
    assert (s.role, s.length) == ("given", None)
    assert Segment("abc", role="generate", length=1).length == 1


# --- encode_row --------------------------------------------------------------------------------------------------

def test_single_modality_model_rows_have_no_markers():
    layout = VocabLayout({"abc": 3})  # PAD, MASK, BOS, EOS, a=4, b=5, c=6
    row = encode_row([Segment("abc", "cab"), Segment("abc", role="generate", length=2)], layout, MODS)
    assert row.ids.tolist() == [c, a, b, MASK, MASK]
    assert row.modality.tolist() == [0] * 5
    assert row.targets.tolist() == [False, False, False, True, True]
    assert row.spans == [("abc", 0, 3, False), ("abc", 3, 5, True)]
    assert row.ids.dtype == torch.long and row.modality.dtype == torch.long and row.targets.dtype == torch.bool


def test_single_modality_row_of_a_two_modality_model_is_wrapped():
    """A model with several modalities always sees markers (its training rows have them), even around one run."""
    row = encode_row([Segment("abc", "cab"), Segment("abc", role="generate", length=2)], LAYOUT, MODS)
    assert row.ids.tolist() == [A_BOS, c, a, b, MASK, MASK, A_EOS]
    assert row.targets.tolist() == [False, False, False, False, True, True, False]
    assert row.spans == [("abc", 1, 4, False), ("abc", 4, 6, True)]


def test_single_modality_of_second_block():
    row = encode_row([Segment("xy", "yx")], LAYOUT, MODS)
    assert row.ids.tolist() == [X_BOS, y, x, X_EOS]
    assert row.modality.tolist() == [1, 1, 1, 1]
    assert row.targets.tolist() == [False] * 4
    assert row.spans == [("xy", 1, 3, False)]


def test_two_modality_row_markers_and_spans():
    segs = [Segment("abc", "ba"), Segment("xy", role="generate", length=3), Segment("abc", "c")]
    row = encode_row(segs, LAYOUT, MODS)
    assert row.ids.tolist() == [A_BOS, b, a, A_EOS, X_BOS, MASK, MASK, MASK, X_EOS, A_BOS, c, A_EOS]
    assert row.modality.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0]
    # Markers are always given; only the generated run is a target.
    assert row.targets.tolist() == [False] * 5 + [True] * 3 + [False] * 4
    assert row.spans == [("abc", 1, 3, False), ("xy", 5, 8, True), ("abc", 10, 11, False)]
    for mod, start, stop, _ in row.spans:
        assert (row.modality[start:stop] == LAYOUT.index(mod)).all()


def test_adjacent_same_modality_segments_join_into_one_run():
    segs = [Segment("xy", "x"), Segment("abc", "ab"), Segment("abc", role="generate", length=2), Segment("abc", "c")]
    row = encode_row(segs, LAYOUT, MODS)
    # One BOS/EOS pair around the whole abc run, none between its segments.
    assert row.ids.tolist() == [X_BOS, x, X_EOS, A_BOS, a, b, MASK, MASK, c, A_EOS]
    assert row.modality.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert row.targets.tolist() == [False] * 6 + [True, True] + [False] * 2
    assert row.spans == [("xy", 1, 2, False), ("abc", 4, 6, False), ("abc", 6, 8, True), ("abc", 8, 9, False)]


def test_generate_segment_refuses_content():
    """Content given to a segment that starts fully masked would be silently dropped: it is refused instead."""
    with pytest.raises(UnidiffError, match="starts fully masked"):
        Segment("abc", "not letters!", role="generate", length=2)
    row = encode_row([Segment("abc", role="generate", length=2)], LAYOUT, MODS)
    assert row.ids.tolist() == [A_BOS, MASK, MASK, A_EOS]


def test_encode_error_names_segment():
    segs = [Segment("abc", "ab"), Segment("xy", "xy"), Segment("abc", "abz")]
    with pytest.raises(ModalityInputError, match=r"^segment 2 \(abc\): 'z' at position 2 is not in 'abc'$"):
        encode_row(segs, LAYOUT, MODS)


def test_empty_sample():
    with pytest.raises(UnidiffError, match="at least one segment"):
        encode_row([], LAYOUT, MODS)


def test_unknown_modality_segment():
    with pytest.raises(UnidiffError, match="unknown modality 'rna'"):
        encode_row([Segment("rna", "acgu")], LAYOUT, MODS)


# --- collate -----------------------------------------------------------------------------------------------------

def test_collate_right_pads():
    r1 = encode_row([Segment("abc", "ab"), Segment("abc", role="generate", length=1)], LAYOUT, MODS)
    r2 = encode_row([Segment("xy", "y"), Segment("abc", role="generate", length=2)], LAYOUT, MODS)
    r3 = encode_row([Segment("xy", "x")], LAYOUT, MODS)
    batch = collate([r1, r2, r3])
    assert isinstance(batch, Batch)
    assert batch.ids.tolist() == [
        [A_BOS, a, b, MASK, A_EOS, PAD, PAD],
        [X_BOS, y, X_EOS, A_BOS, MASK, MASK, A_EOS],
        [X_BOS, x, X_EOS, PAD, PAD, PAD, PAD],
    ]
    assert batch.pad_mask.tolist() == [
        [False] * 5 + [True] * 2,
        [False] * 7,
        [False] * 3 + [True] * 4,
    ]
    assert batch.targets.tolist() == [
        [False, False, False, True] + [False] * 3,
        [False] * 4 + [True, True, False],
        [False] * 7,
    ]
    assert batch.modality[1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    assert batch.modality[2, 0].item() == 1
    assert batch.positions.tolist() == [list(range(7))] * 3
    assert batch.lengths.tolist() == [5, 7, 3]
    assert not (batch.targets & batch.pad_mask).any()
    moved = batch.to("cpu")
    assert torch.equal(moved.ids, batch.ids) and torch.equal(moved.pad_mask, batch.pad_mask)


def test_collate_single_row_has_no_padding():
    r = Row(torch.tensor([a, b]), torch.tensor([0, 0]), torch.tensor([False, True]), [("abc", 0, 2, False)])
    batch = collate([r])
    assert batch.ids.tolist() == [[a, b]]
    assert not batch.pad_mask.any()
    assert batch.targets.tolist() == [[False, True]]


# --- Windows -----------------------------------------------------------------------------------------------------

def docs_of(*lengths):
    """Documents whose tokens carry (document, offset) so a window's origin can be read back: id = 100*d + i."""
    return [torch.arange(n) + 100 * (d + 1) for d, n in enumerate(lengths)]


def test_encode_docs():
    got = encode_docs(["ab", "cca"], ABC, LAYOUT)
    assert [g.tolist() for g in got] == [[a, b], [c, c, a]]
    with pytest.raises(ModalityInputError):
        encode_docs(["ax"], ABC, LAYOUT)


def test_windows_starts_never_cross_documents():
    w = Windows(docs_of(5, 2, 4), length=3, modality_index=1)
    # doc 0 at stream offsets 0..4 (starts 0,1,2); doc 1 at 5..6 (short: one start 5); doc 2 at 7..10 (starts 7,8).
    assert w.starts.tolist() == [0, 1, 2, 5, 7, 8]
    assert w.tile_starts.tolist() == [0, 3, 5, 7, 10]  # every token in one tile; a document's last may be short
    assert w.num_tokens == 11
    batch = w.batch(w.starts)
    assert batch.ids.tolist() == [
        [100, 101, 102], [101, 102, 103], [102, 103, 104],
        [200, 201, PAD],
        [300, 301, 302], [301, 302, 303],
    ]
    assert batch.pad_mask.tolist() == [[False] * 3] * 3 + [[False, False, True]] + [[False] * 3] * 2
    assert torch.equal(batch.targets, ~batch.pad_mask)
    assert (batch.modality == 1).all()
    assert batch.positions.tolist() == [[0, 1, 2]] * 6


def test_short_document_is_one_padded_window():
    w = Windows(docs_of(2), length=5, modality_index=0)
    assert w.starts.tolist() == [0]
    batch = w.batch(w.starts)
    assert batch.ids.tolist() == [[100, 101, PAD, PAD, PAD]]
    assert batch.targets.tolist() == [[True, True, False, False, False]]
    # The last document's padding does not read past the stream.
    w2 = Windows(docs_of(6, 1), length=4, modality_index=0)
    assert w2.batch(torch.tensor([6])).ids.tolist() == [[200, PAD, PAD, PAD]]


def test_tiles_are_non_overlapping_from_each_document_start():
    w = Windows(docs_of(9, 3, 2, 7), length=3, modality_index=0)
    batches = list(w.tiles(batch_size=4))
    assert [bt.ids.shape[0] for bt in batches] == [4, 4]
    ids = torch.cat([bt.ids for bt in batches]).tolist()
    # doc 0 tiles exactly; doc 1 is one window; doc 2 is one padded window; doc 3 (7 tokens) gives windows at 0 and 3
    # and a padded one for its last token, so every token is scored exactly once.
    assert ids == [
        [100, 101, 102], [103, 104, 105], [106, 107, 108],
        [200, 201, 202],
        [300, 301, PAD],
        [400, 401, 402], [403, 404, 405], [406, PAD, PAD],
    ]
    pads = torch.cat([bt.pad_mask for bt in batches])
    assert pads.sum().item() == 3 and pads[4, 2] and pads[7, 1:].all()
    # max_windows truncates in the same order.
    first = torch.cat([bt.ids for bt in w.tiles(batch_size=2, max_windows=3)]).tolist()
    assert first == ids[:3]


def test_sample_is_deterministic_and_draws_valid_starts():
    w = Windows(docs_of(6, 2, 5), length=4, modality_index=0)
    # Valid starts: doc 0 at 0..2, doc 1 (short) at 6, doc 2 at 8..9.
    assert w.starts.tolist() == [0, 1, 2, 6, 8, 9]
    s1 = w.sample(64, torch.Generator().manual_seed(7))
    s2 = w.sample(64, torch.Generator().manual_seed(7))
    assert torch.equal(s1.ids, s2.ids) and torch.equal(s1.pad_mask, s2.pad_mask)
    s3 = w.sample(64, torch.Generator().manual_seed(8))
    assert not torch.equal(s1.ids, s3.ids)
    valid = {tuple(r) for r in w.batch(w.starts).ids.tolist()}
    drawn = {tuple(r) for r in s1.ids.tolist()}
    assert drawn <= valid
    assert drawn == valid  # 64 uniform draws over 6 starts hit every one (fixed seed)
    # The draw is exactly starts[randint(...)] with the same generator state.
    idx = torch.randint(6, (64,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(s1.ids, w.batch(w.starts[idx]).ids)
    # Every window comes from one document: its first token's document is the document of all its tokens.
    docs = torch.where(s1.pad_mask, -1, s1.ids // 100)
    assert ((docs == docs[:, :1]) | s1.pad_mask).all()


def test_empty_documents_are_skipped():
    w = Windows([torch.tensor([], dtype=torch.long), torch.tensor([4, 5]), torch.tensor([], dtype=torch.long)], 3, 0)
    assert w.starts.tolist() == [0] and w.num_tokens == 2
    assert w.batch(w.starts).ids.tolist() == [[4, 5, PAD]]


@pytest.mark.parametrize("docs", [[], [torch.tensor([], dtype=torch.long)]])
def test_empty_dataset(docs):
    with pytest.raises(UnidiffError, match="dataset is empty"):
        Windows(docs, length=4, modality_index=0)


def test_tokens_content_skips_the_tokenizer_and_is_range_checked():
    layout = VocabLayout({"abc": 3, "xy": 2})
    mods = {"abc": ABC, "xy": XY}
    as_text = encode_row([Segment("abc", "cab"), Segment("abc", role="generate", length=2)], layout, mods)
    as_ids = encode_row([Segment("abc", Tokens([2, 0, 1])), Segment("abc", role="generate", length=2)], layout,
                        mods)
    assert torch.equal(as_ids.ids, as_text.ids) and torch.equal(as_ids.targets, as_text.targets)
    with pytest.raises(ModalityInputError,
                       match=r"segment 1 \(xy\): Tokens id 2 at position 1 is outside the xy vocabulary \(0\.\.1\)"):
        encode_row([Segment("abc", "a"), Segment("xy", Tokens([0, 2]))], layout, mods)
