"""The joint vocabulary layout: exact id ranges, local <-> global mapping, content ranges and serialisation."""

from __future__ import annotations

import pytest
import torch

from unidiff.errors import CheckpointError, UnknownNameError
from unidiff.vocab import MASK, PAD, VocabLayout

SIZES = {"text": 256, "dna": 4}


@pytest.fixture
def layout():
    return VocabLayout(SIZES)


def test_shared_ids():
    assert (PAD, MASK) == (0, 1)


def test_exact_layout(layout):
    # Name order: dna before text, whatever order the dict is in.
    assert layout.names == ["dna", "text"]
    dna, text = layout.block("dna"), layout.block("text")
    assert (dna.index, dna.bos, dna.eos, dna.start, dna.stop, dna.size) == (0, 2, 3, 4, 8, 4)
    assert (text.index, text.bos, text.eos, text.start, text.stop, text.size) == (1, 8, 9, 10, 266, 256)
    assert layout.size == 266
    assert layout.index("dna") == 0 and layout.index("text") == 1
    assert repr(layout) == "VocabLayout(size=266, dna=[4,8), text=[10,266))"


def test_dict_order_does_not_matter(layout):
    other = VocabLayout({"dna": 4, "text": 256})
    assert other == layout
    assert other.blocks == layout.blocks


def test_different_sizes_are_different_layouts(layout):
    assert VocabLayout({"text": 256, "dna": 5}) != layout
    assert layout != SIZES  # only another layout compares equal


def test_single_modality_layout():
    lay = VocabLayout({"text": 3})
    b = lay.block("text")
    assert (b.bos, b.eos, b.start, b.stop) == (2, 3, 4, 7)
    assert lay.size == 7


def test_to_global_and_back(layout):
    assert layout.to_global("dna", [0, 1, 2, 3]).tolist() == [4, 5, 6, 7]
    assert layout.to_global("text", [0, 255, 7]).tolist() == [10, 265, 17]
    local = torch.arange(256)
    g = layout.to_global("text", local)
    assert g.dtype == torch.long
    assert torch.equal(layout.to_local("text", g), local)
    assert layout.to_local("dna", torch.tensor([[7, 4], [5, 6]])).tolist() == [[3, 0], [1, 2]]
    # Empty input is fine and stays empty.
    assert layout.to_global("dna", []).tolist() == []
    assert layout.to_local("dna", torch.tensor([], dtype=torch.long)).tolist() == []


@pytest.mark.parametrize("local", [[4], [-1], [0, 1, 4], [3, -2]])
def test_to_global_out_of_range(layout, local):
    with pytest.raises(ValueError, match=r"'dna'.*\[0, 4\)"):
        layout.to_global("dna", local)


@pytest.mark.parametrize("ids", [[3], [8], [PAD], [MASK], [2], [10], [4, 5, 9]])
def test_to_local_out_of_range(layout, ids):
    # The markers (2, 3), the shared ids and the other modality's ids are all outside dna's content range.
    with pytest.raises(ValueError, match=r"'dna': \[4, 8\)"):
        layout.to_local("dna", torch.tensor(ids))


def test_content_ids_are_exactly_each_blocks_own_range(layout):
    """What a position of each modality may predict: its block's content ids, never PAD, MASK or a marker."""
    assert [(b.name, b.start, b.stop) for b in layout.blocks.values()] == [("dna", 4, 8), ("text", 10, 266)]
    content = {i for b in layout.blocks.values() for i in range(b.start, b.stop)}
    assert content.isdisjoint({PAD, MASK, 2, 3, 8, 9}) and len(content) == 4 + 256
    assert [layout.block(n).stop - layout.block(n).start for n in ("dna", "text")] == [4, 256]


def test_dict_round_trip(layout):
    d = layout.to_dict()
    assert d == {"sizes": {"dna": 4, "text": 256}, "size": 266}
    back = VocabLayout.from_dict(d)
    assert back == layout
    assert back.blocks == layout.blocks


def test_from_dict_without_size_is_accepted(layout):
    assert VocabLayout.from_dict({"sizes": {"text": 256, "dna": 4}}) == layout


def test_from_dict_inconsistent_size():
    with pytest.raises(CheckpointError, match="size 300.*266"):
        VocabLayout.from_dict({"sizes": {"text": 256, "dna": 4}, "size": 300})


def test_unknown_modality_lists_known(layout):
    with pytest.raises(UnknownNameError) as info:
        layout.block("protein")
    msg = str(info.value)
    assert "unknown modality 'protein'" in msg
    assert "known modalities: dna, text" in msg
    assert info.value.known == ["dna", "text"]
    # It is also a KeyError, and every name-taking method raises it.
    for call in (lambda: layout.index("protein"), lambda: layout.to_global("protein", [0]),
                 lambda: layout.to_local("protein", torch.tensor([10]))):
        with pytest.raises(KeyError):
            call()


@pytest.mark.parametrize("size", [0, -1])
def test_nonpositive_size(size):
    with pytest.raises(ValueError, match=rf"'dna' has vocabulary size {size}"):
        VocabLayout({"text": 256, "dna": size})


def test_empty_layout():
    with pytest.raises(ValueError, match="at least one modality"):
        VocabLayout({})
