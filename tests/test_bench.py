"""`unidiff bench`: the shipped code model against its autoregressive twin on a tiny workload."""

from __future__ import annotations

import pytest
import torch

from unidiff.bench import Bench, Setting, distinct_4grams, run_bench
from unidiff.cli import main
from unidiff.errors import UnidiffError


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
    for r in rows:
        ar_bits, diff_bits, distinct, parses = map(float, r[8:12])
        assert 0 < ar_bits < 14 and 0 < diff_bits < 14  # bits/token below uniform over 8,257 codes (13.0)
        assert 0 < distinct <= 1
        assert parses in (0.0, 0.5, 1.0)  # the code modality's own figure over 2 samples
    assert "| distinct | parses |" in text and "The modality's own figures: parses = the fraction" in text


def test_small_figures_keep_two_digits():
    from unidiff.bench import _figure

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


def test_bench_command_line_writes_the_table(tmp_path, capsys):
    out = tmp_path / "t.md"
    assert main(["bench", "--lengths", "4", "--batches", "1", "--samples", "1", "--no-judge", "--no-features",
                 "--device", "cpu", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().err
    assert "| autoregressive: AR, KV cache, T0.8 | 4 | 1 |" in out.read_text()


def test_speed_features_each_measured():
    from unidiff.bench import features

    bench = Bench("code", "code-ar", device="cpu")
    rows = features(bench, 8, 2, block=4, compile=False)
    names = [name for _, name, _, _ in rows]
    assert any("dual cache" in n for n in names) and any("delta cache" in n for n in names)
    assert any("int8" in n for n in names)
    assert any(n.startswith("continuous batching") for n in names) and any(n.startswith("static") for n in names)
    assert any("no cache" in n for n in names)
    assert all(tps > 0 for _, _, tps, _ in rows)
    assert all("mean latency" in note for _, name, _, note in rows if "batch" in name)


def test_flop_counter_counts_every_matrix_product_and_attention():
    from unidiff.bench import count_flops

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
    from unidiff.bench import score

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
