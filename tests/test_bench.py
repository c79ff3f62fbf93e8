"""`unidiff bench`: the shipped code model against its autoregressive twin on a tiny workload."""

from __future__ import annotations

import math

import pytest
import torch

from unidiff_bench.bench import Bench, Setting, distinct_4grams, non_canonical, score
from unidiff_bench.table import run_bench
from unidiff.cli import main
from unidiff.data import Tokens
from unidiff.errors import UnidiffError
from unidiff.pipeline import Generation, Pipeline
from unidiff.plugins import Registry


def test_distinct_4grams_counts_repeats():
    # 1 2 3 4 1 2 3 4: five 4-grams, (1, 2, 3, 4) twice -> 4 distinct; 5 6 7 8: one, distinct.
    assert distinct_4grams([[1, 2, 3, 4, 1, 2, 3, 4], [5, 6, 7, 8]]) == pytest.approx((4 / 5 + 1) / 2)


def test_bench_table_has_every_row_with_exact_forward_passes(tmp_path):
    out = tmp_path / "bench.md"
    settings = [Setting("autoregressive", temperature=1.0),
                Setting("diffusion", 0.5, "confidence", 0.8, block_length=4, cache=True)]
    text = run_bench("code", "code-ar", [8], [1, 2], settings=settings, quality_samples=2, judge=False,
                     device="cpu", feature_length=None, out=out, log=lambda m: None)
    assert out.read_text() == text
    assert "sliding window" not in text  # no output is longer than the context
    rows = [line.rstrip(" |").split(" | ") for line in text.splitlines() if line.startswith("| autoregressive:")
            or line.startswith("| diffusion:")]
    assert len(rows) == 4  # 2 settings x 2 batch sizes at length 8
    nfe = {(r[0], r[2]): float(r[5]) for r in rows}
    assert nfe[("| autoregressive: AR, KV cache, T1", "1")] == 1.0  # one pass per token
    assert nfe[("| diffusion: confidence, 0.5 steps/token, T0.8, blocks of 4, cache", "2")] == 0.5  # 4 steps / 8
    # Each setting's figures are those of its largest batch's 2 samples, which a fresh bench draws again (seeded):
    # scored here by each model's own `score` of the generated ids and the plain figures of their content.
    bench = Bench("code", "code-ar", device="cpu")
    for setting in settings:
        (g,), _ = bench.run(setting, 8, 2, 2)
        ids = [Tokens(bench.prompt_ids + t) for t in g.tokens]
        encoded = [bench.modality.encode(t) for t in g.texts]
        want = [score(bench.pipes["autoregressive"], ids), score(bench.pipes["diffusion"], ids),
                sum(e != list(i) for e, i in zip(encoded, ids)) / 2, distinct_4grams(encoded)]
        for r in (r for r in rows if r[0] == f"| {setting.model}: {setting.label}"):
            assert [float(v) for v in r[8:12]] == [float(f"{v:.3f}" if v >= 0.1 else f"{v:.4f}") for v in want]
            assert float(r[12]) in (0.0, 0.5, 1.0)  # parses: a fraction of 2 samples
    assert "| diff bits | non-canonical | distinct | parses |" in text
    assert "non-canonical = the fraction of samples whose ids differ" in text
    assert "the modality's own figures: parses = the fraction" in text


def test_non_canonical_by_hand():
    text, code = Registry().modality("text"), Registry().modality("code")
    # Bytes: 0xff and a lone 0xc3 (the first byte of a two-byte character) decode to U+FFFD, whose encoding is
    # EF BF BD; "hi" and the two bytes of "é" are valid UTF-8.
    assert non_canonical(text, [[0xFF], [0xC3], list(b"hi"), list("é".encode())]) == 0.5
    # BPE: the tokenizer writes " return" as one token (339), not " ret" (3054) + "urn" (4735); the tag (0) is a
    # token only where it opens the content, so a second one re-encodes as text.
    assert code.encode(" return") == [339] and code.encode(" ret") == [3054] and code.encode("urn") == [4735]
    assert non_canonical(code, [[0, 3054, 4735], [0, 339], [0, 339, 0]]) == pytest.approx(2 / 3)
    assert non_canonical(code, [[0, 339]]) == 0.0


def _ar_bits_by_hand(model, seq: list[int]) -> tuple[float, int]:
    """(bits per token, tokens scored) of local ids ``seq`` under an autoregressive code model, by its key/value
    cache path (not the evaluator's): consecutive windows of the context, each a row as `encode_row` lays it out,
    every token after the row's first scored given those before it."""
    layout, wrap = model.layout, int(model.layout.markers)
    block = layout.block("code")
    nats, count = 0.0, 0
    for start in range(0, len(seq), model.cfg.max_len - 2 * wrap):
        part = layout.to_global("code", seq[start:start + model.cfg.max_len - 2 * wrap]).tolist()
        ids = torch.tensor([block.bos] * wrap + part + [block.eos] * wrap).unsqueeze(0)  # (1, L)
        modality = torch.full_like(ids, block.index)
        with torch.no_grad():
            h = model.decode_step(ids, modality, torch.arange(ids.shape[1]).unsqueeze(0), [])  # (1, L, d)
            logp = model.logits(h[0, :-1], modality[0, 1:]).log_softmax(-1)  # (L - 1, V): row j predicts j + 1
        scored = torch.arange(1, ids.shape[1]) < wrap + len(part)  # content, not the closing EOS
        nats -= float(logp[scored].gather(1, ids[0, 1:][scored].unsqueeze(1)).sum())
        count += int(scored.sum())
    return nats / math.log(2) / count, count


def test_bench_scores_the_generated_ids_not_their_re_tokenisation():
    bench = Bench("code", "code-ar", device="cpu")
    m, ar = bench.modality, bench.pipes["autoregressive"].model
    # A sliding-window sample longer than the context (256): the tag prompt, then 25 units of 12 generated tokens
    # that write " return" as " ret" + "urn", as a diffusion model may. Its text re-encodes to fewer tokens.
    unit = [481, 287, 8, 88, 306, 266, 3054, 4735, 842, 475, 473, 199]
    assert m.decode(unit) == "def f(x):\n    return x + 1\n"
    gen = unit * 25
    seq = bench.prompt_ids + gen
    assert bench.prompt_ids == [0] and len(seq) == 301 and len(m.encode(m.decode(seq))) <= 301 - 25
    g = Generation([[("code", m.decode(seq))]], nfe=[300], generated=[300], seconds=1.0, tokens=[gen])
    q = bench.quality([g], None, 1)
    bits, count = _ar_bits_by_hand(ar, seq)
    # Two windows of the context (256 + 45 tokens without markers), each row's first token unscored unless BOS
    # opens it: 299 (301 with markers) of the 301.
    assert count == len(seq) - (0 if ar.layout.markers else 2)
    assert q["AR bits"] == pytest.approx(bits, rel=1e-5)
    assert _ar_bits_by_hand(ar, m.encode(m.decode(seq)))[0] != pytest.approx(bits, rel=1e-3)  # what re-encoding gave
    diffusion = bench.pipes["diffusion"]
    assert q["diff bits"] == score(diffusion, [Tokens(seq)])
    assert q["diff bits"] != pytest.approx(score(diffusion, [m.decode(seq)]), rel=1e-3)
    assert q["non-canonical"] == 1.0
    # The content figures read the decoded text: its first unit parses; 4-grams of its re-encoding.
    assert q["parses"] == 1.0 and q["distinct"] == distinct_4grams([m.encode(m.decode(seq))])


def test_generations_carry_the_ids_their_texts_decode():
    # What `Bench.quality` relies on, for a plain completion and a sliding window past the context: a sample's
    # text is the decoding of the prompt's ids and its generated tokens.
    bench = Bench("code", "code-ar", device="cpu")
    for length in (4, bench.max_length() + 5):
        (g,), _ = bench.run(Setting("autoregressive", temperature=1.0), length, 1, 1)
        assert len(g.tokens[0]) == length and g.texts[0] == bench.modality.decode(bench.prompt_ids + g.tokens[0])


def test_small_figures_keep_two_digits():
    from unidiff_bench.table import _figure

    assert (_figure(1.95123), _figure(0.00603), _figure(0.85)) == ("1.951", "0.0060", "0.850")


def test_modality_sample_metrics_by_hand():
    from unidiff.modality import sample_metrics, sample_metrics_doc
    from unidiff.plugins import Registry

    get_modality = Registry().modality

    # text: 6 of the 7 words are the plays' words ("xqzv" is not).
    text = get_modality("text")
    figures, doc = sample_metrics(text, ["To be, or not to be", "xqzv"]), sample_metrics_doc(text)
    assert figures == {"words": pytest.approx(6 / 7)} and doc.startswith("words = the fraction")
    # code: the first unit of each sample (the language tag dropped); the second never closes its parameters.
    code = get_modality("code")
    figures = sample_metrics(code, ["<|python|>def f():\n    return 1\nx = (", "def g(:\n    pass\n"])
    assert figures == {"parses": 0.5}
    # DNA: the held-out genomes against themselves diverge by exactly 0; GC of GGCC and ATAT is 1 and 0.
    from unidiff_dna.corpus import genomes

    dna = get_modality("dna")
    assert sample_metrics(dna, genomes("valid"))["3-mer JS"] == 0.0
    assert sample_metrics(dna, ["GGCC", "ATAT"])["GC"] == 0.5
    # A modality without the method has no figures.
    assert sample_metrics(object(), ["x"]) == {} and sample_metrics_doc(object()) == ""


def test_bench_refuses_models_in_the_wrong_roles():
    with pytest.raises(UnidiffError, match="not a diffusion model"):
        Bench("code-ar", "code", device="cpu")
    with pytest.raises(UnidiffError, match="not an autoregressive model"):
        Bench("code", "code", device="cpu")


def test_bench_refuses_twins_that_tokenize_differently(monkeypatch):
    load = Pipeline.load

    def other_tokenizer(model, **kwargs):  # the twin as if trained with another BPE: its ids mean other strings
        pipe = load(model, **kwargs)
        if model == "code-ar":
            pipe.modalities["code"].tokenizer_name = "python-bpe-16k"
        return pipe

    monkeypatch.setattr(Pipeline, "load", other_tokenizer)
    with pytest.raises(UnidiffError, match="tokenize code differently .*python-bpe-16k"):
        Bench("code", "code-ar", device="cpu")


def test_bench_command_line_writes_the_table(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert main(["bench", "--lengths", "4", "--batches", "1", "--samples", "1", "--no-judge", "--no-features",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert "| autoregressive: AR, KV cache, T0.8 | 4 | 1 |" in out.read_text()


def test_speed_features_measure_each_feature_once_and_leave_the_models_as_they_were():
    from unidiff_bench.bench import features

    bench = Bench("code", "code-ar", device="cpu")
    d = bench.pipes["diffusion"]
    before = {k: v.clone() for k, v in d.model.state_dict().items()}
    blocks, amp = d.model.blocks, d.amp_dtype
    probe = d.complete(bench.prompt, num=2, length=8, steps=4, seed=5).tokens
    rows = features(bench, 8, 2, block=4, compile=False)
    assert [(model, name.split(":")[0]) for model, name, _, _ in rows] == [
        ("diffusion", "baseline"), ("diffusion", "blocks of 4, no cache"), ("diffusion", "blocks of 4 + dual cache"),
        ("diffusion", "blocks of 4 + delta cache"), ("diffusion", "dual cache, one block (prompt only)"),
        ("diffusion", "bf16 autocast"), ("diffusion", "int8 linear layers"), ("diffusion", "static batches of 2"),
        ("diffusion", "continuous batching, 2 slots"), ("autoregressive", "KV cache (the default)"),
        ("autoregressive", "no cache (a full pass per token)")]
    assert rows[0][1] == "baseline: fp32, 4 steps, one block"  # 0.5 steps/token of 8 tokens
    assert rows[7][1].endswith("8 requests of 1-8 tokens, 0.5 steps/token") and "mean latency" in rows[8][3]
    assert all(0 < tps < float("inf") for _, _, tps, _ in rows)
    # int8 and bf16 were undone: the same modules, weights and precision, so the same samples as before
    assert d.model.blocks is blocks and d.amp_dtype == amp
    assert all(torch.equal(before[k], v) for k, v in d.model.state_dict().items())
    assert d.complete(bench.prompt, num=2, length=8, steps=4, seed=5).tokens == probe
    assert all("mean latency" in note for _, name, _, note in rows if "batch" in name)


def test_flop_counter_counts_every_matrix_product_and_attention():
    from unidiff_bench.bench import count_flops

    pipe = Bench("code", "code-ar", device="cpu").pipes["diffusion"]
    model, L = pipe.model, 10
    d, layers = model.cfg.d_model, model.cfg.n_layers
    ids = torch.zeros(1, L, dtype=torch.long)
    _, flops = count_flops(lambda: model.features(ids, torch.zeros_like(ids)))
    # Per layer: q, k, v and out projections (4 d^2) and the MLP (2 x 4 d^2) per position, 2 FLOPs per
    # multiply-add; attention: Q K^T and A V over L keys, 2 x 2 L d per position.
    assert flops == layers * (L * 2 * 12 * d * d + 4 * L * L * d)


def test_scaled_bench_is_speed_only_with_mfu(tmp_path):
    text = run_bench("code", "code-ar", [6], [1], settings=[Setting("autoregressive", temperature=1.0)],
                     quality_samples=4, judge=False, device="cpu", feature_length=None, log=lambda m: None,
                     scale={"d_model": 64, "n_layers": 2, "n_heads": 2})
    assert "Speed only: both networks are untrained" in text
    row = next(line for line in text.splitlines() if line.startswith("| autoregressive:"))
    cells = row.strip("| ").split(" | ")
    assert len(cells) == 8  # no quality columns
    flops = float(cells[6]) * 1e9
    assert 0 < flops < 2 * (2 * 12 * 64 * 64 + 64 * 8257 + 4 * 2 * 64 * 16) * 1.01  # about 2 x params + attention
    assert cells[7].endswith("%") and 0 < float(cells[7][:-1]) < 100
    with pytest.raises(UnidiffError, match="--scale"):
        Bench("code", "code-ar", device="cpu", scale={"width": 3})
    with pytest.raises(UnidiffError, match="--scale"):
        Bench("code", "code-ar", device="cpu", scale={"d_model": 100, "n_heads": 3})


def test_dna_twins_are_the_same_network_and_the_ar_twin_beats_uniform():
    import gzip
    from pathlib import Path

    import unidiff_dna
    from unidiff_bench.bench import score

    bench = Bench("dna", "dna-ar", device="cpu")
    d, a = bench.pipes["diffusion"].model, bench.pipes["autoregressive"].model
    assert d.num_params() == a.num_params() and d.layout.names == a.layout.names
    fasta = Path(unidiff_dna.__file__).parent / "data" / "biopython-dna.fa.gz"
    seq = "".join(line.strip() for line in gzip.open(fasta, "rt").read().split(">")[1].splitlines()[1:])[:2000]
    seq = "".join(c for c in seq.upper() if c in "ACGT")
    # Real DNA: both models need fewer than the 2 bits/base of a uniform guess (the AR twin's held-out NLL is 1.905).
    assert score(bench.pipes["autoregressive"], [seq]) < 2.0
    assert score(bench.pipes["diffusion"], [seq]) < 2.0


def test_bench_table_names_its_command(tmp_path):
    out = tmp_path / "t.md"
    assert main(["bench", "--lengths", "4", "--batches", "1", "--samples", "1", "--no-judge", "--no-features",
                 "--device", "cpu", "--setting", "ar:T1", "--out", str(out)]) == 0
    assert f"Command: `unidiff bench --lengths 4 --batches 1 --samples 1 --no-judge --no-features --device cpu " \
           f"--setting ar:T1 --out {out}`." in out.read_text()
