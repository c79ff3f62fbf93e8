"""Joint denoising of two segments and 2-D grids: training rows whose condition is itself a target (noised at its own
time, possibly as a variable-length hole), rows whose content is wholly given, per-position noise times, and the
row/column embeddings of a grid modality.

Layout used throughout (with BLANK): {"abc": 3, "xy": 2} gives
    0 PAD | 1 MASK | abc: BOS 2, EOS 3, content 4 5 6 | xy: BOS 7, EOS 8, content 9 10 | BLANK 11
"""

from __future__ import annotations

import pytest
import torch

from unidiff.data import Document, Segment, encode_conditions, encode_docs, encode_row, make_windows
from unidiff.errors import UnidiffError
from unidiff.process.absorbing import corrupt, elbo_terms
from unidiff.modality import grids_of, make_head
from unidiff.data.rows import cells_of, grid_cells
from unidiff.models.transformer import Denoiser, GridEmbedding, ModelConfig
from unidiff.process.schedules import get_schedule
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import Letters

ABC, XY = Letters("abc", "abc"), Letters("xy", "xy")
LAYOUT = VocabLayout({"xy": 2, "abc": 3}, blank=True)
A_BOS, A_EOS, X_BOS, X_EOS, BL = 2, 3, 7, 8, 11
a, b, c, x, y = 4, 5, 6, 9, 10
P, M = PAD, MASK
T, F = True, False


def windows(cond_hole=0, length=10):
    docs = [Document("abcabcabca", "xy", "xy"), Document("cb", "y", "xy")]
    return make_windows(encode_docs(docs, ABC, LAYOUT), length, LAYOUT, "abc", encode_conditions(docs, XY, LAYOUT),
                        "xy", cond_hole=cond_hole)


# --- training rows ----------------------------------------------------------------------------------------------


def test_a_target_condition_is_noised_at_the_second_time_and_not_hidden_by_guidance():
    w = windows()
    starts = torch.tensor([0, 10, 0])
    batch = w.batch(starts, keep_condition=torch.tensor([T, T, T]), cond_target=torch.tensor([T, T, F]),
                    content_given=torch.tensor([F, T, T]))
    assert batch.ids.tolist() == [[X_BOS, x, y, X_EOS, A_BOS, a, b, c, a, A_EOS],
                                  [X_BOS, y, X_EOS, A_BOS, c, b, A_EOS, P, P, P],
                                  [X_BOS, x, y, X_EOS, A_BOS, a, b, c, a, A_EOS]]
    # row 0: caption and image both targets (p(c, x)); row 1: caption only, the content given (p(c | x));
    # row 2: a plain conditioned row (content_given only applies where the condition is a target)
    assert batch.targets.tolist() == [[F, T, T, F, F, T, T, T, T, F],
                                      [F, T, F, F, F, F, F, F, F, F],
                                      [F, F, F, F, F, T, T, T, T, F]]
    assert batch.second.tolist() == [[F, T, T, F, F, F, F, F, F, F],
                                     [F, T, F, F, F, F, F, F, F, F],
                                     [F] * 10]
    assert batch.condition.tolist() == [[F] * 10, [F] * 10, [T, T, T, T, F, F, F, F, F, F]]
    assert batch.blank_ok is None  # without cond_hole a target condition keeps its own length


def test_a_target_condition_becomes_a_variable_length_hole_padded_with_blanks():
    w = windows(cond_hole=3, length=12)
    batch = w.batch(torch.tensor([0, 10]), keep_condition=torch.tensor([T, T]), cond_target=torch.tensor([T, F]))
    assert batch.ids.tolist() == [[X_BOS, x, y, BL, X_EOS, A_BOS, a, b, c, a, b, A_EOS],
                                  [X_BOS, y, X_EOS, A_BOS, c, b, A_EOS, P, P, P, P, P]]  # given: its own length
    assert batch.blank_ok.tolist() == [[F, T, T, T, F, F, F, F, F, F, F, F], [F] * 12]
    assert batch.second.tolist() == batch.blank_ok.tolist()
    assert batch.targets.tolist()[0] == [F, T, T, T, F, F, T, T, T, T, T, F]
    # the same layout `encode_row` gives when sampling a caption of up to 3 tokens for a given image
    row = encode_row([Segment("xy", role="generate", length=3, variable=True), Segment("abc", "abcab")],
                     LAYOUT, {"abc": ABC, "xy": XY})
    assert row.ids.tolist() == [X_BOS, M, M, M, X_EOS, A_BOS, a, b, c, a, b, A_EOS]
    assert row.blank_ok.tolist() == batch.blank_ok.tolist()[0]


def test_cond_hole_must_hold_every_condition_and_needs_blank():
    with pytest.raises(UnidiffError, match="raise data.cond_hole"):
        windows(cond_hole=1)
    docs = [Document("abc", "xy", "xy")]
    no_blank = VocabLayout({"xy": 2, "abc": 3})
    with pytest.raises(UnidiffError, match="need BLANK"):
        make_windows(encode_docs(docs, ABC, no_blank), 10, no_blank, "abc", encode_conditions(docs, XY, no_blank),
                     "xy", cond_hole=3)


def test_sampling_joint_rows_draws_each_role_at_its_rate():
    w = windows()
    g = torch.Generator().manual_seed(0)
    batch = w.sample(4000, g, cond_dropout=0.2, cond_target=0.5, content_given=0.5)
    has_cond = batch.ids[:, 0] == X_BOS
    joint = batch.second.any(1)
    content_target = (batch.targets & (batch.modality == LAYOUT.index("abc"))).any(1)
    assert abs(has_cond.float().mean() - 0.8) < 0.03
    assert abs(joint.float().mean() - 0.4) < 0.03  # 0.8 * 0.5
    assert abs((joint & ~content_target).float().mean() - 0.2) < 0.03  # 0.8 * 0.5 * 0.5
    assert not (~joint & ~content_target).any()
    # the old draws are unchanged when no condition is a target: the same rows as before this feature
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(w.sample(8, g1, cond_dropout=0.2).ids, w.sample(8, g2, cond_dropout=0.2, cond_target=0.0).ids)


# --- per-position times -----------------------------------------------------------------------------------------


def test_per_position_times_mask_and_weight_each_position_by_its_own_time():
    s = get_schedule("linear")  # mask probability t, ELBO weight 1/t
    x0 = torch.full((2, 4), 5)
    t = torch.tensor([[1e-9, 1e-9, 1.0, 1.0], [1.0, 1.0, 1e-9, 1e-9]])
    xt, masked = corrupt(x0, t, s, torch.ones(2, 4, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert masked.tolist() == [[F, F, T, T], [T, T, F, F]]
    assert (xt == torch.where(masked, MASK, 5)).all()
    t = torch.tensor([[0.5, 0.25, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    terms = elbo_terms(torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool), t, s)
    assert terms.tolist() == [[2.0, 4.0, 1.0, 1.0], [1.0] * 4]


# --- 2-D grids --------------------------------------------------------------------------------------------------


def test_grid_cells_count_from_the_runs_bos_in_raster_order():
    ab = LAYOUT.index("abc")
    ids = torch.tensor([[X_BOS, x, X_EOS, A_BOS, a, M, c, a, A_EOS, P],
                        [A_BOS, b, b, A_EOS, X_BOS, y, X_EOS, A_BOS, c, A_EOS]])
    mod = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]])
    cells = grid_cells(ids, mod, ab, A_BOS, A_EOS, cells=3)
    assert cells.tolist() == [[-1, -1, -1, -1, 0, 1, 2, -1, -1, -1],  # a 4th token lies off a 3-cell grid
                              [-1, 0, 1, -1, -1, -1, -1, -1, 0, -1]]  # a second run starts again at cell 0
    # without markers (a one-modality model) the run starts at position 0
    plain = grid_cells(torch.tensor([[4, 5, 6, 4]]), torch.zeros(1, 4, dtype=torch.long), 0, -5, -6, cells=4)
    assert plain.tolist() == [[0, 1, 2, 3]]


def test_grid_embedding_adds_row_and_column_and_nothing_off_grid():
    g = GridEmbedding(2, 3, 4)
    out = g(torch.tensor([[0, 4, -1, 5]]))
    assert torch.equal(out[0, 1], g.row.weight[1] + g.col.weight[1])  # cell 4 = row 1, column 1
    assert torch.equal(out[0, 3], g.row.weight[1] + g.col.weight[2])
    assert torch.equal(out[0, 0], g.row.weight[0] + g.col.weight[0])
    assert (out[0, 2] == 0).all()


def tiny(grids=None):
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=16)
    return Denoiser(cfg, LAYOUT, {n: make_head(m, 16) for n, m in (("abc", ABC), ("xy", XY))}, grids)


def test_a_grid_model_embeds_position_on_the_grid_and_old_models_are_unchanged():
    plain, grid = tiny(), tiny({"abc": (2, 2)})
    assert not any(k.startswith("grids.") for k in plain.state_dict())  # old checkpoints load as before
    assert {k for k in grid.state_dict() if k.startswith("grids.")} == {"grids.abc.row.weight", "grids.abc.col.weight"}
    ids = torch.tensor([[X_BOS, x, X_EOS, A_BOS, a, a, a, a, A_EOS]])
    mod = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0, 0]])
    base = plain.tok_emb(ids) + plain.mod_emb(mod)
    assert torch.equal(plain.embed(ids, mod), base)
    cells = cells_of(ids, mod, LAYOUT, {"abc": (2, 2)})  # the data layer gives the 2-D positions
    assert cells.tolist() == [[-1, -1, -1, -1, 0, 1, 2, 3, -1]]
    e = grid.embed(ids, mod, cells) - (grid.tok_emb(ids) + grid.mod_emb(mod))
    r, k = grid.grids["abc"].row.weight, grid.grids["abc"].col.weight
    assert torch.allclose(e[0, 4:8], torch.stack([r[0] + k[0], r[0] + k[1], r[1] + k[0], r[1] + k[1]]))
    assert (e[0, :4] == 0).all() and (e[0, 8] == 0).all()
    with pytest.raises(UnidiffError, match="needs each token's cell from the data layer"):
        grid.embed(ids, mod)  # the model derives nothing from BOS ids itself


def test_grids_of_reads_the_modalities_grid_attribute():
    class Image(Letters):
        grid = (7, 7)

    assert grids_of([ABC, Image("img", "abc")]) == {"img": (7, 7)}
    bad = Image("img", "abc")
    bad.grid = (0, 3)
    with pytest.raises(ValueError, match="rows and columns must be positive"):
        grids_of([bad])
