"""The autoregressive baseline (``model.kind = "autoregressive"``): a causal denoiser, its exact NLL, training with
exact resume, and left-to-right generation (one forward pass per token; temperature 0 is greedy decoding).

Layout of the fake two-modality vocabulary: {"abc": 3, "xy": 2} gives
    0 PAD | 1 MASK | abc: BOS 2, EOS 3, content 4 5 6 | xy: BOS 7, EOS 8, content 9 10
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import unidiff.training.train as train_mod
from unidiff.cli import main
from unidiff.training.config import Config, DataConfig, TrainConfig, load_config
from unidiff.data import Batch, Segment, encode_docs, make_windows
from unidiff.errors import UnidiffError
from unidiff.training.evaluate import evaluate
from unidiff.training.objectives import batch_loss, batch_nll
from unidiff.pipeline import Pipeline
from unidiff.modality import make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.plugins import Registry
from unidiff.process.schedules import get_schedule
from unidiff.training.train import STATE, train
from unidiff.vocab import MASK, PAD, VocabLayout

from helpers import Letters, assert_same_weights


LAYOUT = VocabLayout({"abc": 3, "xy": 2})
MODS = {"abc": Letters("abc", "abc"), "xy": Letters("xy", "xy")}


def tiny(kind: str, n_layers: int = 2, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_layers=n_layers, n_heads=2, max_len=32, kind=kind)
    return Denoiser(cfg, LAYOUT, {n: make_head(m, 32) for n, m in MODS.items()}).eval()


def random_row(L: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, L) ids and modality indices: each position one modality, with one of its content ids."""
    mod = torch.randint(0, 2, (1, L), generator=gen)
    abc = torch.randint(4, 7, (1, L), generator=gen)
    xy = torch.randint(9, 11, (1, L), generator=gen)
    return torch.where(mod == 0, abc, xy), mod


def other_token(token: int, modality_index: int) -> int:
    """Another content id of the same modality."""
    choices = [4, 5, 6] if modality_index == 0 else [9, 10]
    return next(t for t in choices if t != token)


# --- the causal network --------------------------------------------------------------------------------------------


@torch.no_grad()
def test_autoregressive_features_are_causal_exactly():
    model = tiny("autoregressive")
    gen = torch.Generator().manual_seed(0)
    L = 12
    ids, mod = random_row(L, gen)
    h = model.features(ids, mod)
    logits = model(ids, mod)
    assert h.shape == (1, L, 32)
    assert torch.equal(h[0, 0], torch.zeros(32))  # nothing comes before position 0
    for j in range(L):
        for _ in range(3):
            ids2, mod2 = ids.clone(), mod.clone()
            new_ids, new_mod = random_row(L, gen)
            ids2[:, j:], mod2[:, j:] = new_ids[:, j:], new_mod[:, j:]
            h2 = model.features(ids2, mod2)
            assert torch.equal(h2[:, :j + 1], h[:, :j + 1]), j  # positions <= j see only positions < j
            logits2 = model(ids2, mod2)
            same_mod = (mod2[0, :j + 1] == mod[0, :j + 1])
            assert torch.equal(logits2[0, :j + 1][same_mod], logits[0, :j + 1][same_mod]), j
        if j + 1 < L:  # ... and the token at j does change what comes after it
            ids3 = ids.clone()
            ids3[0, j] = other_token(int(ids[0, j]), int(mod[0, j]))
            assert not torch.equal(model.features(ids3, mod)[0, j + 1], h[0, j + 1]), j


@torch.no_grad()
def test_autoregressive_features_ignore_right_padding():
    model = tiny("autoregressive")
    gen = torch.Generator().manual_seed(1)
    ids, mod = random_row(10, gen)
    pad = torch.zeros(1, 10, dtype=torch.bool)
    pad[0, 7:] = True
    h = model.features(ids, mod, pad_mask=pad)
    ids2 = ids.clone()
    ids2[0, 7:] = PAD
    assert torch.equal(model.features(ids2, mod, pad_mask=pad)[0, :8], h[0, :8])
    # = the unpadded row, up to float rounding (a shorter row may take another kernel path on some CPUs)
    assert torch.allclose(model.features(ids[:, :7], mod[:, :7])[0], h[0, :7], atol=1e-6)


@torch.no_grad()
def test_diffusion_features_see_the_whole_row():
    model = tiny("diffusion")
    gen = torch.Generator().manual_seed(0)
    ids, mod = random_row(12, gen)
    h = model.features(ids, mod)
    assert h[0, 0].abs().sum() > 0
    ids2 = ids.clone()
    ids2[0, -1] = MASK
    assert not torch.equal(model.features(ids2, mod)[0, 0], h[0, 0])  # position 0 sees the last token


def test_same_weights_for_both_kinds():
    """The baseline is the same network: only the mask and the shift differ."""
    ar, dif = tiny("autoregressive"), tiny("diffusion")
    sa, sd = ar.state_dict(), dif.state_dict()
    assert sa.keys() == sd.keys() and all(torch.equal(sa[k], sd[k]) for k in sa)


# --- the exact NLL -------------------------------------------------------------------------------------------------


def nll_batch() -> Batch:
    P = PAD
    ids = torch.tensor([[2, 4, 5, 6, 3, 7, 9, 10, 8],
                        [9, 10, 9, 9, 10, P, P, P, P]])
    modality = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1],
                             [1, 1, 1, 1, 1, 0, 0, 0, 0]])
    pad = ids == P
    T, F_ = True, False
    targets = torch.tensor([[F_, T, T, T, F_, F_, T, T, F_],
                            [T, T, F_, T, T, F_, F_, F_, F_]])  # row 1's position 0 is a target: never scored
    return Batch(ids, modality, torch.arange(9).expand(2, 9).contiguous(), pad, targets, ~targets)


@torch.no_grad()
def test_batch_nll_by_hand():
    model = tiny("autoregressive")
    batch = nll_batch()
    sums, counts = batch_nll(model, batch)
    logits = model(batch.ids, batch.modality, batch.positions, batch.pad_mask).double()
    expected = torch.zeros(2, dtype=torch.float64)
    expected_counts = [0, 0]
    for b in range(2):
        for j in range(1, 9):
            if batch.targets[b, j]:
                m = int(batch.modality[b, j])
                expected[m] += -logits[b, j].log_softmax(-1)[batch.ids[b, j]]
                expected_counts[m] += 1
    assert counts.tolist() == expected_counts == [3, 5]  # abc: 4 5 6; xy: 9 10 (row 0), 10 9 10 (row 1)
    assert sums.tolist() == pytest.approx(expected.tolist(), rel=1e-5)
    assert (sums > 0).all()
    # the same through batch_loss, which draws nothing from the generator
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    s2, c2 = batch_loss(model, batch, get_schedule("linear"), gen)
    assert torch.equal(s2, sums) and torch.equal(c2, counts)
    assert torch.equal(gen.get_state(), state)


@torch.no_grad()
def test_batch_nll_of_a_row_scored_from_position_one():
    """A single-token row has nothing to score; a row of two scores only its second token."""
    model = tiny("autoregressive")
    ids = torch.tensor([[4, 6]])
    mod = torch.zeros_like(ids)
    pos = torch.arange(2).unsqueeze(0)
    no, yes = torch.zeros(1, 1, dtype=torch.bool), torch.ones(1, 1, dtype=torch.bool)
    one = Batch(ids[:, :1], mod[:, :1], pos[:, :1], no, yes)
    sums, counts = batch_nll(model, one)
    assert counts.tolist() == [0, 0] and sums.tolist() == [0, 0]
    two = Batch(ids, mod, pos, torch.zeros(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    sums, counts = batch_nll(model, two)
    # position 1's state is the one computed at position 0 from token 4 alone
    logits = model(ids, mod)[0, 1].double()
    assert counts.tolist() == [1, 0]
    assert sums[0].item() == pytest.approx(-logits.log_softmax(-1)[6].item(), rel=1e-6)


@torch.no_grad()
def test_untrained_nll_is_near_uniform():
    """A fresh model (weights of std 0.02) predicts nearly uniformly: ln 3 nats per abc token, ln 2 per xy token."""
    sums, counts = batch_nll(tiny("autoregressive"), nll_batch())
    per = (sums / counts).tolist()
    assert per[0] == pytest.approx(math.log(3), abs=0.05) and per[1] == pytest.approx(math.log(2), abs=0.05)


# --- configuration -------------------------------------------------------------------------------------------------


def test_config_rejects_unknown_kind():
    cfg = Config(ModelConfig(kind="foo"))
    with pytest.raises(UnidiffError, match=r"^config key model.kind must be one of diffusion, autoregressive; "
                                           r"got 'foo'$"):
        cfg.validate()
    with pytest.raises(UnidiffError, match="model.kind must be one of diffusion, autoregressive"):
        load_config(None, ["model.kind=foo"])
    assert load_config(None, ["model.kind=autoregressive"]).model.kind == "autoregressive"
    assert Config().model.kind == "diffusion"


def test_cli_train_rejects_unknown_kind(tmp_path, capsys):
    code = main(["train", str(Path(__file__).parent.parent / "configs" / "text.toml"), "--set", "model.kind=causal",
                 "--set", f"train.out_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "unidiff: error: config key model.kind must be one of diffusion, autoregressive; got 'causal'\n"
    assert not (tmp_path / "run").exists()


# --- training ------------------------------------------------------------------------------------------------------


PATTERN = "AACGT"
TRAIN_DOCS = [PATTERN * 40, PATTERN * 30 + "AA"]
EVAL_DOCS = [PATTERN * 20]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def ar_cfg(out: Path, steps: int = 50, **kw) -> Config:
    t = dict(steps=steps, batch_size=8, lr=1e-2, warmup=5, eval_every=25, eval_windows=8, save_every=steps, seed=0,
             precision="fp32", device="cpu", progress=False, out_dir=str(out), ema=0.0)
    t.update(kw)
    return Config(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=32, kind="autoregressive"),
                  DataConfig(seq_len=32), TrainConfig(**t))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, registry):
    out = tmp_path_factory.mktemp("ar")
    result = train(ar_cfg(out), registry, registry.modality("dna"), TRAIN_DOCS, EVAL_DOCS)
    return out, result


def eval_windows(layout):
    dna = Registry().modality("dna")
    return make_windows(encode_docs(EVAL_DOCS, dna, layout), 32, layout, "dna")


def test_training_learns_a_repeating_pattern(trained, registry):
    out, result = trained
    assert result.step == 50
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model"]["kind"] == "autoregressive"
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [25, 50]
    # the untrained model (same seed, same initial weights) vs the trained one, on the held-out document
    torch.manual_seed(0)
    fresh = Denoiser(result.model.cfg, result.model.layout, {"dna": make_head(registry.modality("dna"), 32)})
    w = eval_windows(result.model.layout)
    before = evaluate(fresh, w, get_schedule("linear"))
    after = evaluate(result.model, w, get_schedule("linear"))
    # rows are [BOS window... EOS]: 4 non-overlapping windows (30, 30, 30 and 10 bases) cover the 100 bases, and
    # every base is scored, the first of each window given BOS
    assert before.tokens == after.tokens == {"dna": 100}
    assert before.bits_per_token["dna"] == pytest.approx(math.log2(5), abs=0.1)  # uniform over A, C, G, T, N
    assert after.bits_per_token["dna"] < 0.25 < before.bits_per_token["dna"] / 4
    assert result.eval.bits_per_token == log[-1]["eval_bits_per_token"] == after.bits_per_token
    # both evaluations are near the floor already (the first base after BOS is one of the pattern's phases)
    assert max(r["eval_bits_per_token"]["dna"] for r in log) < 0.25


def test_autoregressive_evaluation_is_exact(trained):
    """The AR figure is an exact NLL, not a Monte-Carlo estimate: it does not depend on the seed or sample count."""
    model = trained[1].model
    w = eval_windows(model.layout)
    sched = get_schedule("linear")
    a = evaluate(model, w, sched, seed=1)
    b = evaluate(model, w, sched, seed=99, batch_size=2)
    c = evaluate(model, w, sched, seed=5, samples=3)
    assert a.tokens == b.tokens == c.tokens == {"dna": 100}
    assert a.nats_per_token["dna"] == pytest.approx(b.nats_per_token["dna"], rel=1e-6)
    assert a.nats_per_token["dna"] == pytest.approx(c.nats_per_token["dna"], rel=1e-6)


class Interrupted(Exception):
    pass


def test_exact_resume(tmp_path, registry, monkeypatch):
    """4 steps in one go == 2 steps, a crash right after the checkpoint, and 2 more steps resumed from last/."""
    dna = registry.modality("dna")

    def cfg(out):
        c = ar_cfg(out, steps=4, save_every=2, eval_every=2, ema=0.9, warmup=1)
        c.model.dropout = 0.1  # the loop then draws from the global RNG too
        return c

    ref = tmp_path / "ref"
    train(cfg(ref), registry, dna, TRAIN_DOCS, EVAL_DOCS)

    real_save = train_mod._save

    def save_then_stop(out, model, ema, opt, generator, step, *args):
        real_save(out, model, ema, opt, generator, step, *args)
        if step == 2:
            raise Interrupted

    monkeypatch.setattr(train_mod, "_save", save_then_stop)
    run = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(cfg(run), registry, dna, TRAIN_DOCS, EVAL_DOCS)
    monkeypatch.undo()
    assert torch.load(run / "last" / STATE, weights_only=True)["step"] == 2
    with pytest.raises(AssertionError):  # after 2 steps the weights are not yet those of step 4
        assert_same_weights(run / "last", ref / "last")
    torch.manual_seed(777)  # disturb the global RNG: resume restores it
    result = train(cfg(run), registry, dna, TRAIN_DOCS, EVAL_DOCS)
    assert result.step == 4
    assert_same_weights(run / "last", ref / "last")  # raw weights
    assert_same_weights(run / "model", ref / "model")  # EMA weights
    strip = lambda p: [(r["step"], r["eval_bits_per_token"], r["train_bits"])  # noqa: E731
                       for r in map(json.loads, (p / "log.jsonl").read_text().splitlines())]
    assert strip(run) == strip(ref)


# --- generation ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(trained, registry):
    return Pipeline.load(trained[0] / "model", device="cpu", registry=registry)


@torch.no_grad()
def greedy_by_hand(model: Denoiser, prompt: list[int], n: int, modality_index: int = 0) -> list[int]:
    """Run the model on prompt + n MASKs and fill the next position with the argmax, n times."""
    x = torch.tensor([prompt + [MASK] * n])
    mod = torch.full_like(x, modality_index)
    for j in range(len(prompt), len(prompt) + n):
        logits = model(x, mod)[0, j]
        x[0, j] = int(logits.argmax())
    return x[0].tolist()


def test_greedy_generation_equals_greedy_decoding_by_hand(pipe):
    dna, layout = pipe.modalities["dna"], pipe.layout
    prompt = "AACGTAA"
    out = pipe.complete(prompt, length=12, temperature=0)
    ids = greedy_by_hand(pipe.model, layout.to_global("dna", dna.encode(prompt)).tolist(), 12)
    assert out.texts == [dna.decode(layout.to_local("dna", torch.tensor(ids)).tolist())]
    assert out.nfe == [12] and out.generated == [12]
    assert out.texts == ["AACGTAA" + "CGTAACGTAACG"]  # the learnt pattern continues


def test_greedy_without_prompt_and_with_a_random_model(registry):
    """Greedy decoding from scratch (position 0 predicted from nothing) on an untrained model."""
    torch.manual_seed(5)
    dna = registry.modality("dna")
    layout = VocabLayout({"dna": 5})
    model = Denoiser(ModelConfig(d_model=32, n_layers=2, n_heads=2, max_len=32, kind="autoregressive"), layout,
                     {"dna": make_head(dna, 32)}).eval()
    with torch.no_grad():  # make the random model less flat, so that greedy choices vary with the context
        for p in model.parameters():
            p.mul_(20)
    p = Pipeline(model, {"dna": dna}, {}, registry=registry)
    out = p.complete(length=16, temperature=0)
    ids = greedy_by_hand(model, [], 16)
    assert out.texts == [dna.decode(layout.to_local("dna", torch.tensor(ids)).tolist())]
    assert out.nfe == [15]  # the first token, from nothing, needs no pass
    assert len(set(out.texts[0])) > 1  # not a degenerate constant sequence


SEGS = [[Segment("dna", "AACG"), Segment("dna", role="generate", length=5)],
        [Segment("dna", role="generate", length=9)],
        [Segment("dna", "AAC"), Segment("dna", role="generate", length=2), Segment("dna", "TTT"),
         Segment("dna", role="generate", length=3)]]


def test_one_forward_pass_per_generated_token(pipe):
    """Alone, a row takes one pass per generated token (the key/value cache reads its BOS and a prompt, or a given
    stretch between holes, in the pass that draws the token after it). In a batch the rows are left-padded so that
    their first tokens line up (row 1 shifts right by 4, row 2 by 1), and a row rides along while the others draw:
    row 1 joins the pass that reads row 0's prompt (9 passes), and row 2, drawing at columns 5, 6 and 10..12, has
    taken 8 passes by its last token (alone it reads its middle "TTT" in one)."""
    segs = SEGS
    alone = [pipe.generate([s], temperature=1.0, seed=3 + i) for i, s in enumerate(segs)]
    assert [a.nfe[0] for a in alone] == [5, 9, 5] and [a.generated[0] for a in alone] == [5, 9, 5]
    out = pipe.generate(segs, temperature=1.0, seed=3)
    assert out.nfe == [5, 9, 8] and out.generated == [5, 9, 5]
    assert out.samples == [a.samples[0] for a in alone]  # row b draws with seed 3 + b, in a batch or alone
    # steps, block length and remasking are the diffusion sampler's; an AR model ignores them
    again = pipe.generate(segs, temperature=1.0, seed=3, steps=2, block_length=4, remask=0.5)
    assert again.nfe == [5, 9, 8] and again.samples == out.samples
    # rows are decoded left to right: the given middle stays, each row has its generated length
    texts = [run[0][1] for run in out.samples]
    assert [len(t) for t in texts] == [9, 9, 11]
    assert texts[0].startswith("AACG") and texts[2][:3] == "AAC" and texts[2][5:8] == "TTT"


def test_prompts_of_different_lengths_are_continued_in_lockstep(pipe):
    """Continuations of prompts of different lengths take one pass per generated token in one batch, as alone
    (the rows are left-padded, and no row attends to the padding), and draw the tokens they draw alone."""
    prompts = ["A", "AACGTTAC", "ACG"]
    segs = [[Segment("dna", p), Segment("dna", role="generate", length=6)] for p in prompts]
    out = pipe.generate(segs, temperature=1.0, seed=5)
    assert out.nfe == [6, 6, 6] and out.generated == [6, 6, 6]
    alone = [pipe.generate([s], temperature=1.0, seed=5 + i) for i, s in enumerate(segs)]
    assert out.samples == [a.samples[0] for a in alone]


def test_temperature_sampling_is_reproducible_and_seeded(pipe):
    a = pipe.complete("AAC", length=20, num=3, temperature=1.0, seed=0)
    b = pipe.complete("AAC", length=20, num=3, temperature=1.0, seed=0)
    assert a.texts == b.texts and a.nfe == [20, 20, 20]
    alone = pipe.complete("AAC", length=20, temperature=1.0, seed=2)
    assert alone.texts == [a.texts[2]]  # sample i uses seed + i, in a batch or alone


# --- the key/value cache ------------------------------------------------------------------------------------------


@torch.no_grad()
def test_cached_decoding_gives_the_uncached_states():
    """decode_step fed a row in chunks (a prompt, single tokens, a stretch) gives, at each position j, the state
    that `features` puts at j + 1 (the one that predicts token j + 1)."""
    model = tiny("autoregressive")
    ids, mod = random_row(14, torch.Generator().manual_seed(3))
    pos = torch.arange(14).unsqueeze(0)
    full = model.features(ids, mod)
    cache, states = [], []
    for a, b in ((0, 5), (5, 6), (6, 7), (7, 11), (11, 14)):
        states.append(model.decode_step(ids[:, a:b], mod[:, a:b], pos[:, a:b], cache))
    cached = torch.cat(states, dim=1)
    assert cache[0]["k"].shape == (1, 2, 14, 16) and len(cache) == 2
    assert torch.allclose(cached[:, :-1], full[:, 1:], atol=1e-5)
    with pytest.raises(UnidiffError, match="needs an autoregressive model"):
        tiny("diffusion").decode_step(ids[:, :3], mod[:, :3], pos[:, :3], [])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_sampling_draws_what_the_uncached_loop_draws(pipe, temperature):
    from unidiff.data import collate
    from unidiff.sampling.policies import Confidence
    from unidiff.sampling.causal import sample_causal
    from unidiff.sampling.loop import sample

    batch = collate(pipe.encode(SEGS, 0))
    slow = sample(pipe.model, batch, Confidence(), seeds=7, temperature=temperature, block_length=1)
    fast = sample_causal(pipe.model, batch, seeds=7, temperature=temperature)
    assert torch.equal(fast.ids, slow.ids) and not (fast.ids == MASK).any()
    assert slow.nfe.tolist() == [5, 9, 5] and fast.nfe.tolist() == [5, 9, 8]
