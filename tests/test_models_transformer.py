"""The denoiser on tiny CPU configs: shapes, per-modality logit ranges, padding and RoPE invariances, sizes.

Layout {"dna": 4, "text": 12}: 0 PAD | 1 MASK | dna: BOS 2, EOS 3, content 4..7 | text: BOS 8, EOS 9, content 10..21.
Weights are re-drawn with a large std so attention is sharp and position effects are far above float noise: with
the default 0.02 init attention is nearly uniform and an invariance test would pass for any position encoding.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import allowed as allowed_ids

LAYOUT = VocabLayout({"text": 12, "dna": 4})
V = 22
DNA, TEXT = LAYOUT.block("dna"), LAYOUT.block("text")


class Plain:
    """A fake modality without a custom head."""

    default_length, file_suffix = 8, ".txt"

    def __init__(self, name, vocab_size):
        self.name, self.vocab_size = name, vocab_size


class ConstHead(nn.Module):
    """Logits that are `value` for every id, whatever the input (so its range in the output is known exactly)."""

    def __init__(self, n: int, value: float):
        super().__init__()
        self.n, self.value = n, value

    def forward(self, h):  # (N, d) -> (N, n)
        return h.new_full((*h.shape[:-1], self.n), self.value)


class WithHead(Plain):
    def __init__(self, name, vocab_size):
        super().__init__(name, vocab_size)
        self.calls = []

    def make_head(self, d_model):
        self.calls.append(d_model)
        return ConstHead(self.vocab_size, 3.5)


def build(layout=LAYOUT, d_model=16, n_layers=2, n_heads=2, seed=0, std=0.5, heads=None):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=64)
    if heads is None:
        heads = {n: make_head(Plain(n, b.size), d_model) for n, b in layout.blocks.items()}
    model = Denoiser(cfg, layout, heads).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(std=std)
    return model


@pytest.fixture(scope="module")
def model():
    return build()


def mixed_batch(B=3, L=10, seed=1):
    """Random two-modality rows: the first half of each row dna, the rest text, with some MASKs."""
    g = torch.Generator().manual_seed(seed)
    modality = torch.zeros(B, L, dtype=torch.long)
    modality[:, L // 2:] = 1
    dna = torch.randint(DNA.start, DNA.stop, (B, L), generator=g)
    text = torch.randint(TEXT.start, TEXT.stop, (B, L), generator=g)
    ids = torch.where(modality == 0, dna, text)
    ids[torch.rand(B, L, generator=g) < 0.3] = MASK
    return ids, modality


def test_output_shape(model):
    ids, mod = mixed_batch(B=3, L=10)
    with torch.no_grad():
        out = model(ids, mod)
    assert out.shape == (3, 10, V) and out.dtype == torch.float32
    h = model.features(ids, mod)
    assert h.shape == (3, 10, 16)


def test_logits_only_in_own_range(model):
    ids, mod = mixed_batch()
    mod[1] = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1, 0])  # interleaved modalities too
    with torch.no_grad():
        out = model(ids, mod)
        h = model.features(ids, mod)
    allowed = allowed_ids(LAYOUT, mod)  # (B, L, V)
    assert torch.isneginf(out[~allowed]).all()
    assert torch.isfinite(out[allowed]).all()
    # Each range holds exactly that modality's head applied to the final hidden state.
    for name, b in LAYOUT.blocks.items():
        sel = mod == b.index
        with torch.no_grad():
            expected = model.heads[name](h[sel])
        torch.testing.assert_close(out[sel][:, b.start:b.stop], expected)
    # In particular PAD, MASK and every marker are never predicted.
    assert torch.isneginf(out[..., [PAD, MASK, DNA.bos, DNA.eos, TEXT.bos, TEXT.eos]]).all()


def test_single_modality_layout_range():
    layout = VocabLayout({"dna": 4})
    m = build(layout)
    ids = torch.tensor([[4, 5, MASK, 7, 6]])
    with torch.no_grad():
        out = m(ids, torch.zeros_like(ids))
    assert out.shape == (1, 5, 8)
    assert torch.isneginf(out[..., :4]).all()
    assert torch.isfinite(out[..., 4:8]).all()


def test_key_padding_invariance(model):
    ids, mod = mixed_batch(B=2, L=12, seed=3)
    n = 7  # row 0 keeps 7 tokens, then padding
    short_ids, short_mod = ids[:1, :n], mod[:1, :n]
    pad_ids, pad_mod = ids.clone(), mod.clone()
    pad_ids[0, n:], pad_mod[0, n:] = PAD, 0
    pad_mask = torch.zeros(2, 12, dtype=torch.bool)
    pad_mask[0, n:] = True
    with torch.no_grad():
        alone = model(short_ids, short_mod)
        batched = model(pad_ids, pad_mod, pad_mask=pad_mask)
        longer_alone = model(ids[1:], mod[1:])
        unmasked = model(pad_ids, pad_mod)  # the same batch without telling the model about padding
    torch.testing.assert_close(batched[0, :n], alone[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batched[1], longer_alone[0], atol=1e-5, rtol=0)
    # The mask matters: attending to the PAD keys changes the short row's logits.
    fin = torch.isfinite(alone[0])
    assert (unmasked[0, :n][fin] - alone[0][fin]).abs().max() > 1e-2


def test_all_false_pad_mask_equals_none(model):
    ids, mod = mixed_batch()
    with torch.no_grad():
        a = model(ids, mod)
        b = model(ids, mod, pad_mask=torch.zeros_like(ids, dtype=torch.bool))
    assert torch.equal(a, b)


def test_rope_is_order_sensitive(model):
    ids, mod = mixed_batch(B=1, L=10, seed=4)
    ids[0, :5] = torch.tensor([4, 5, 6, 7, 4])
    perm = torch.tensor([1, 0, 2, 3, 4, 5, 6, 7, 8, 9])  # swap the first two (different) tokens
    with torch.no_grad():
        out = model(ids, mod)
        swapped = model(ids[:, perm], mod[:, perm])[:, perm]
    # Without position information the model would be permutation-equivariant and these would be equal.
    fin = torch.isfinite(out)
    assert torch.equal(fin, torch.isfinite(swapped))
    assert (swapped[fin] - out[fin]).abs().max() > 1e-2


def test_rope_depends_only_on_relative_positions(model):
    ids, mod = mixed_batch(B=2, L=10, seed=5)
    base = torch.arange(10).expand(2, 10)
    with torch.no_grad():
        default = model(ids, mod)
        explicit = model(ids, mod, positions=base)
        shifted = model(ids, mod, positions=base + 37)
        per_row = model(ids, mod, positions=base + torch.tensor([[3], [11]]))
        spread = model(ids, mod, positions=base * 2)
    assert torch.equal(default, explicit)
    finite = torch.isfinite(default)
    torch.testing.assert_close(shifted[finite], default[finite], atol=1e-4, rtol=0)
    torch.testing.assert_close(per_row[finite], default[finite], atol=1e-4, rtol=0)
    # A change of relative distances is seen.
    assert (spread[finite] - default[finite]).abs().max() > 1e-2


def test_heads_must_match_layout():
    cfg = ModelConfig(d_model=16, n_layers=1, n_heads=2)
    with pytest.raises(ValueError, match=r"heads \['dna'\] do not match the layout's modalities \['dna', 'text'\]"):
        Denoiser(cfg, LAYOUT, {"dna": nn.Linear(16, 4, bias=False)})
    with pytest.raises(ValueError, match="do not match"):
        Denoiser(cfg, LAYOUT, {"dna": nn.Linear(16, 4), "text": nn.Linear(16, 12), "image": nn.Linear(16, 3)})
    # Dict order of heads does not matter.
    m = Denoiser(cfg, LAYOUT, {"text": nn.Linear(16, 12, bias=False), "dna": nn.Linear(16, 4, bias=False)})
    assert list(m.heads) == ["dna", "text"]


@pytest.mark.parametrize("d_model, n_heads", [(18, 4), (12, 4)])  # not divisible; odd head size 3
def test_head_size_must_be_whole_and_even(d_model, n_heads):
    cfg = ModelConfig(d_model=d_model, n_layers=1, n_heads=n_heads)
    heads = {"dna": nn.Linear(d_model, 4), "text": nn.Linear(d_model, 12)}
    with pytest.raises(ValueError, match=f"d_model {d_model} / n_heads {n_heads} must be a whole, even head size"):
        Denoiser(cfg, LAYOUT, heads)


def test_make_head_default_is_bias_free_linear():
    head = make_head(Plain("text", 12), 24)
    assert type(head) is nn.Linear
    assert head.weight.shape == (12, 24)
    assert head.bias is None
    assert head(torch.zeros(5, 24)).shape == (5, 12)


def test_make_head_uses_modality_own_head():
    mod = WithHead("dna", 4)
    head = make_head(mod, 16)
    assert isinstance(head, ConstHead) and mod.calls == [16]
    # Inside the model, that head fills dna's range: exactly 3.5 there, -inf elsewhere for dna positions.
    m = build(heads={"dna": head, "text": make_head(Plain("text", 12), 16)})
    ids, modality = mixed_batch(B=2, L=6)
    with torch.no_grad():
        out = m(ids, modality)
    dna_pos = modality == 0
    assert torch.equal(out[dna_pos][:, DNA.start:DNA.stop], torch.full((int(dna_pos.sum()), 4), 3.5))
    assert torch.isneginf(out[dna_pos][:, TEXT.start:TEXT.stop]).all()


def test_num_params():
    d, n_layers, hidden, M = 16, 2, 64, 2  # hidden = int(mlp_ratio * d) with mlp_ratio 4
    m = build(d_model=d, n_layers=n_layers)
    assert m.num_params() == sum(p.numel() for p in m.parameters())
    # tok_emb V*d + mod_emb M*d
    # + per block: two LayerNorms (weight + bias) 2*2d, qkv 3d^2, out d^2, MLP d*hidden + hidden*d (no biases)
    # + final LayerNorm 2d + bias-free heads d*(sum of content sizes)
    per_block = 4 * d + 3 * d * d + d * d + 2 * d * hidden
    formula = V * d + M * d + n_layers * per_block + 2 * d + d * (4 + 12)
    assert formula == 352 + 32 + 2 * 3136 + 32 + 256 == 6944
    assert m.num_params() == formula
