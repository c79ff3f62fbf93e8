"""Strand-symmetric (mirror) sampling: `unidiff.models.symmetry.Mirrored`."""

import pytest
import torch

from unidiff.data import Segment, collate, encode_row
from unidiff.errors import UnidiffError
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.modality import make_head
from unidiff.sampling.loop import sample
from unidiff.models.symmetry import Mirrored, mirror_perms
from unidiff.vocab import MASK, VocabLayout
from unidiff_dna import DnaModality, reverse_complement
from unidiff_text import TextModality

MODS = {"dna": DnaModality(), "text": TextModality()}
LAYOUT = VocabLayout({"dna": 5, "text": 256})


def model(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=64)
    return Denoiser(cfg, LAYOUT, {n: make_head(m, 32) for n, m in MODS.items()}).eval()


def row(seq, cond="plant"):
    return encode_row([Segment("text", cond), Segment("dna", seq)], LAYOUT, MODS)


def test_dna_mirror_is_the_complement():
    assert mirror_perms(MODS) == {"dna": [3, 2, 1, 0, 4]}  # A<->T, C<->G, N->N; text declares none


def test_mirror_index_reflects_only_the_dna_run():
    r = row("ACGTT")
    b = collate([r])
    m = Mirrored(model(), mirror_perms(MODS))
    index = m.mirror_index(b.ids, b.modality, b.pad_mask)[0].tolist()
    # [BOS_t p l a n t EOS_t BOS_d A C G T T EOS_d]: positions 8..12 reflect, the rest stay.
    assert index == list(range(8)) + [12, 11, 10, 9, 8] + [13]


def test_mirrored_predictions_are_exactly_strand_equivariant():
    """The symmetrised model's prediction at position j of a sequence equals, complemented, its prediction at the
    reflected position of the reverse complement: the two strands are one molecule."""
    seq = "ACGGTNTTAC"
    x, y = collate([row(seq)]), collate([row(reverse_complement(seq))])
    hide = torch.tensor([8, 10, 13])  # mask some positions (and their reflections in y)
    x.ids[0, hide] = MASK
    y.ids[0, 8 + 17 - hide] = MASK
    m = Mirrored(model(), mirror_perms(MODS))
    with torch.no_grad():
        lx = m.logits(m.features(x.ids, x.modality, x.positions, x.pad_mask), x.modality)[0]
        ly = m.logits(m.features(y.ids, y.modality, y.positions, y.pad_mask), y.modality)[0]
    start = LAYOUT.block("dna").start
    perm = torch.tensor([3, 2, 1, 0, 4]) + start
    for j in range(8, 18):
        a, b = lx[j, start:start + 5], ly[8 + 17 - j][perm]
        assert torch.allclose(a, b, atol=1e-5), j


def test_mirrored_logits_average_the_two_readings():
    net = model()
    m = Mirrored(net, mirror_perms(MODS))
    b = collate([row("AACG")])
    b.ids[0, 9] = MASK
    with torch.no_grad():
        got = m.logits(m.features(b.ids, b.modality, b.positions, b.pad_mask), b.modality)[0, 9]
        fwd = net(b.ids, b.modality, b.positions, b.pad_mask)[0, 9].log_softmax(-1)
        rc = b.ids.clone()
        rc[0, 8:12] = torch.tensor([1, 2, 3, 3]) + LAYOUT.block("dna").start  # CGTT: reverse complement, MASK kept
        rc[0, 10] = MASK  # position 9 reflects to 10
        back = net(rc, b.modality, b.positions, b.pad_mask)[0, 10].log_softmax(-1)
    start = LAYOUT.block("dna").start
    expect = (fwd[start:start + 5] + back[start:start + 5][[3, 2, 1, 0, 4]]) / 2
    assert torch.allclose(got[start:start + 5], expect, atol=1e-5)
    assert torch.isinf(got[:start]).all()  # other modalities' ids stay impossible


def test_symmetric_sampling_counts_two_passes_and_refuses_split_runs():
    net = model()
    r = encode_row([Segment("text", "plant"), Segment("dna", role="generate", length=6)], LAYOUT, MODS)
    out = sample(Mirrored(net, mirror_perms(MODS)), collate([r]), policy=_policy(), steps=3, seeds=0)
    assert out.nfe.tolist() == [3]  # the sampler counts steps; Pipeline.generate doubles them for the two readings
    split = encode_row([Segment("dna", "AC"), Segment("text", "x"), Segment("dna", role="generate", length=2)],
                       LAYOUT, MODS)
    with pytest.raises(UnidiffError, match="one run"):
        sample(Mirrored(net, mirror_perms(MODS)), collate([split]), policy=_policy(), steps=2, seeds=0)


def test_no_mirror_no_symmetric_sampling():
    with pytest.raises(UnidiffError, match="mirror symmetry"):
        Mirrored(model(), mirror_perms({"text": TextModality()}))


def _policy():
    from unidiff.plugins import Registry
    return Registry().policy("confidence")
