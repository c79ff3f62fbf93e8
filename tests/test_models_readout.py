"""`unidiff.models.readout`: what the loop asks of a denoiser (logits for these rows at these positions) and the
adapters behind it, checked against the denoiser's own passes computed by hand."""

from __future__ import annotations

import torch

from unidiff.data import Segment, collate, encode_row
from unidiff.models.readout import Guided, Passes, Rows
from unidiff.models.widths import row_widths
from unidiff.vocab import MASK

from helpers import Bytes, tiny_denoiser


def rows_and_model():
    model = tiny_denoiser(seed=6)
    samples = [[Segment("text", "KING:"), Segment("text", role="generate", length=9)],
               [Segment("text", "a"), Segment("text", role="generate", length=4)]]
    batch = collate([encode_row(s, model.layout, {"text": Bytes()}) for s in samples])
    ids = torch.where(batch.targets, MASK, batch.ids)
    rows = Rows(ids=ids, modality=batch.modality, positions=batch.positions, pad_mask=batch.pad_mask,
                condition=batch.condition & ~batch.pad_mask, slots=torch.arange(2),
                widths=row_widths(batch.pad_mask))
    return model, rows, batch.targets.nonzero(as_tuple=True)


def by_hand(model, ids, modality, positions, pad_mask, at):
    return model.logits(model.features(ids, modality, positions, pad_mask)[at], modality[at]).float()


def test_passes_read_the_denoiser_out_at_the_asked_positions_whole_or_cut_to_widths():
    model, rows, at = rows_and_model()
    expected = by_hand(model, rows.ids, rows.modality, rows.positions, rows.pad_mask, at)
    assert torch.equal(Passes(model).logits(rows, at, None), expected)
    cut = Passes(model, cut=True).logits(rows, at, None)  # the short row computed at its own width
    assert rows.widths.tolist() == [14, 5]
    torch.testing.assert_close(cut, expected, rtol=1e-5, atol=1e-5)


def test_guidance_combines_the_conditional_and_the_unconditional_pass():
    model, rows, at = rows_and_model()
    cond = by_hand(model, rows.ids, rows.modality, rows.positions, rows.pad_mask, at)
    uncond = by_hand(model, rows.ids, rows.modality, rows.positions, rows.pad_mask | rows.condition, at)
    assert not torch.allclose(cond[torch.isfinite(cond)], uncond[torch.isfinite(uncond)])  # the condition matters
    for w in (0.0, 1.0, 2.5):
        guided = Guided(Passes(model), w, n_slots=2).logits(rows, at, None)
        finite = torch.isfinite(cond)
        torch.testing.assert_close(guided[finite], (uncond + w * (cond - uncond))[finite], rtol=1e-5, atol=1e-5)
        assert torch.isneginf(guided[~finite]).all()  # ids outside the position's modality stay impossible
