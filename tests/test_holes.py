"""Variable-length holes: the hole mark the model reads, and the paths that hand it over (training ELBO, sampler,
guidance), down to a tiny model that learns how long a fill should be."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from unidiff.data import Batch, collate, encode_row
from unidiff.errors import UnidiffError
from unidiff.training.objectives import batch_elbo
from unidiff.data import parse_holes
from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.sampling.policies import Confidence
from unidiff.sampling.loop import sample
from unidiff.process.schedules import get_schedule
from unidiff.vocab import VocabLayout


class Bytes:
    vocab_size = 256

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def denoiser(blank=True, n_layers=1, seed=0):
    torch.manual_seed(seed)
    layout = VocabLayout({"text": 256}, blank=blank)
    return Denoiser(ModelConfig(d_model=16, n_layers=n_layers, n_heads=2, max_len=64), layout,
                    {"text": make_head(Bytes, 16)}).eval()


def test_the_hole_mark_is_a_learned_vector_added_to_the_input():
    """With no transformer layers, the features are the final norm of token + modality (+ hole) embeddings."""
    model = denoiser(n_layers=0)
    ids = torch.tensor([[2 + 97, 1, 1, 2 + 98]])
    mod = torch.zeros_like(ids)
    hole = torch.tensor([[False, True, True, False]])
    with torch.no_grad():
        x = model.tok_emb(ids) + model.mod_emb(mod)
        assert torch.allclose(model.features(ids, mod), model.norm(x))
        marked = model.features(ids, mod, hole=hole)
        assert torch.allclose(marked, model.norm(x + hole.unsqueeze(-1) * model.hole_emb))
        assert torch.equal(marked[~hole], model.features(ids, mod)[~hole])
        assert not torch.allclose(marked[hole], model.features(ids, mod)[hole])


def test_a_model_without_holes_refuses_the_mark():
    model = denoiser(blank=False)
    assert model.hole_emb is None and model.blank_head is None
    with pytest.raises(UnidiffError, match=r"trained with them \(data.holes > 0\).*<mask:N>"):
        model.features(torch.tensor([[3, 1]]), torch.zeros(1, 2, dtype=torch.long), hole=torch.ones(1, 2).bool())


class Spy(torch.nn.Module):
    """Records the hole mark of every features() call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.layout, self.cfg, self.marks = model, model.layout, model.cfg, []

    def features(self, ids, modality, positions=None, pad_mask=None, hole=None):
        self.marks.append(None if hole is None else hole.clone())
        return self.model.features(ids, modality, positions, pad_mask, hole=hole)

    def logits(self, h, modality, blank=None):
        return self.model.logits(h, modality, blank=blank)


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_the_sampler_marks_the_variable_hole_in_every_pass(guidance):
    model = Spy(denoiser())
    row = encode_row(parse_holes("ab<blank:3>c<mask:2>d", "text"), model.layout, {"text": Bytes()})
    batch = collate([row, row])
    sample(model, batch, Confidence(), steps=5, seeds=[0, 1], guidance=guidance)
    expected = torch.tensor([False, False, True, True, True, False, False, False, False])
    assert model.marks and all(m is not None for m in model.marks)
    for m in model.marks:  # guidance runs the rows twice, both times with the mark
        assert m.shape[0] in (1, 2, 4) and (m == expected).all()


def test_the_elbo_marks_holes_and_allows_blank_only_there():
    """batch_elbo on a row with a hole equals the hand computation: masked positions scored by the model's
    logits given the hole mark, BLANK allowed in the hole only, weighted by 1/t (linear schedule)."""
    model = denoiser()
    blank = model.layout.blank
    g = model.layout.to_global("text", list(b"abcdef")).tolist()
    x0 = torch.tensor([[g[0], g[1], blank, blank, g[2], g[3]]])
    hole = torch.tensor([[False, True, True, True, False, False]])
    targets = torch.ones_like(hole)
    batch = Batch(x0, torch.zeros_like(x0), torch.arange(6).unsqueeze(0), torch.zeros_like(hole), targets, None,
                  hole)
    schedule = get_schedule("linear")
    sums, counts = batch_elbo(model, batch, schedule, torch.Generator().manual_seed(4), stratified=False)
    g = torch.Generator().manual_seed(4)  # replay the draws: one time, then the mask
    t = 1e-3 + (1 - 1e-3) * torch.rand(1, generator=g)
    masked = (torch.rand(x0.shape, generator=g) < schedule.mask_prob(t).unsqueeze(1)) & targets
    assert masked[0, 2] or masked[0, 3]  # a BLANK target is scored
    with torch.no_grad():
        h = model.features(torch.where(masked, 1, x0), batch.modality, hole=hole)
        logits = model.logits(h[masked], batch.modality[masked], blank=hole[masked])
        nll = F.cross_entropy(logits, x0[masked], reduction="sum")
    assert counts.tolist() == [6.0]
    assert sums.item() == pytest.approx((schedule.weight(t) * nll).item(), rel=1e-5)
    outside = Batch(x0, batch.modality, batch.positions, batch.pad_mask, targets, None,
                    torch.tensor([[False, True, False, False, False, False]]))  # a BLANK outside the marked hole
    sums, _ = batch_elbo(model, outside, schedule, torch.Generator().manual_seed(4), stratified=False)
    assert sums.item() == float("inf")


# --- learning: a tiny model trained with holes fills them with what is missing, no more, no less ---------------

CYCLE = "ACGT"  # a hole of up to 3 between two stretches of the cycle: their phases say how much is missing


def cyclic(start: int, n: int) -> str:
    return "".join(CYCLE[(start + i) % len(CYCLE)] for i in range(n))


@pytest.fixture(scope="module")
def hole_model(tmp_path_factory):
    from unidiff.training.config import Config, DataConfig, TrainConfig
    from unidiff.plugins import Registry
    from unidiff.training.train import train

    registry = Registry()
    docs = [cyclic(i, 64) for i in range(16)]
    cfg = Config(ModelConfig(d_model=64, n_layers=2, n_heads=4, max_len=32),
                 DataConfig(seq_len=32, holes=10, hole_max=3),  # many holes per row: the length signal
                 TrainConfig(steps=800, batch_size=32, lr=3e-3, warmup=20, eval_every=800, eval_windows=4,
                             save_every=800, seed=0, precision="fp32", device="cpu", progress=False,
                             out_dir=str(tmp_path_factory.mktemp("holes") / "run")))
    return train(cfg, registry, registry.modality("dna"), docs, docs[:2]).out_dir / "model"


def test_a_trained_model_fills_a_variable_hole_with_what_is_missing(hole_model):
    """Every phase and every missing length 0..3 in a <blank:3> hole: the fill must be exactly the missing bases
    (one miss of 16 is tolerated: the model is tiny and trained for seconds; a model that ignored the hole mark
    or never chose BLANK would get at most the 4 cases with nothing blank)."""
    from unidiff import Pipeline

    pipe = Pipeline.load(hole_model)
    hits = 0
    for start in range(4):
        for missing in range(4):
            prefix, fill, suffix = cyclic(start, 9), cyclic(start + 9, missing), cyclic(start + 9 + missing, 9)
            out = pipe.infill(f"{prefix}<blank:3>{suffix}", policy="confidence", temperature=0.0, steps=3)
            hits += out.texts == [prefix + fill + suffix]
    assert hits >= 15
