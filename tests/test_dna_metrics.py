"""DNA sequence metrics (unidiff_dna.metrics) and the order-k Markov baselines (unidiff_dna.markov)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unidiff.errors import UnidiffError
from unidiff_dna.markov import MarkovModel, fit_best
from unidiff_dna.metrics import (exact_copies, gc_content, js_divergence, kmer_counts, kmer_js, kmer_js_table,
                                 max_identity, motif_rate, pwm_hits, read_bases, reverse_complement)

BASES = np.array(list("ACGT"))


def random_dna(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(BASES, size=length))


def strand_symmetric_chain(seed: int) -> tuple[np.ndarray, float]:
    """An order-1 chain whose reverse complement is the same chain, and its entropy rate in bits.

    Pair frequencies D symmetric (D = D^T: stationary, reversible) and reverse-complement invariant
    (D[a, b] = D[3-b, 3-a]); transitions T = D / pi with pi = row sums; entropy rate -sum_ab D_ab log2 T_ab.
    """
    m = np.random.default_rng(seed).random((4, 4)) ** 3
    d = m + m.T
    d = d + d[::-1, ::-1].T
    d /= d.sum()
    transitions = d / d.sum(axis=1, keepdims=True)
    return transitions, float(-(d * np.log2(transitions)).sum())


def sample_chain(transitions: np.ndarray, length: int, rng: np.random.Generator) -> str:
    """One sequence from an order-1 chain started in its stationary distribution."""
    stationary = np.linalg.matrix_power(transitions, 200)[0]
    uniforms = rng.random(length)
    cumulative = np.cumsum(transitions, axis=1)
    x = [int(np.searchsorted(np.cumsum(stationary), uniforms[0], side="right"))]
    for u in uniforms[1:]:
        x.append(min(int(np.searchsorted(cumulative[x[-1]], u, side="right")), 3))
    return "".join(BASES[x])


def naive_max_identity(g: str, refs: list[str], both_strands: bool) -> float:
    strands = refs + ([reverse_complement(r) for r in refs] if both_strands else [])
    scores = [sum(a == b != "N" for a, b in zip(g, r[t:t + len(g)]))
              for r in strands for t in range(len(r) - len(g) + 1)]
    return max(scores) / len(g) if scores else math.nan


# --- composition and k-mer spectra ---------------------------------------------------------------------------


def test_gc_content_ignores_n_and_case():
    assert gc_content("GGCCAT") == pytest.approx([4 / 6])
    got = gc_content(["GGCCAT", "gcNNat", "NNNN", ""])
    assert got[:2] == pytest.approx([4 / 6, 0.5]) and np.isnan(got[2:]).all()


def test_kmer_counts_index_and_n_skipping():
    counts = kmer_counts("ACGT", 2)
    assert counts.shape == (16,) and counts.sum() == 3
    assert counts[0 * 4 + 1] == counts[1 * 4 + 2] == counts[2 * 4 + 3] == 1  # AC, CG, GT
    assert kmer_counts(["ACG", "TT"], 2).sum() == 3  # AC, CG, TT: no k-mer spans two sequences
    assert kmer_counts("ACNGT", 2).tolist() == kmer_counts(["AC", "GT"], 2).tolist()
    assert kmer_counts("TTT", 3)[63] == 1 and kmer_counts("GAT", 3)[2 * 16 + 0 * 4 + 3] == 1


def test_js_divergence_exact_values():
    assert js_divergence([1, 2, 3], [2, 4, 6]) == 0.0
    assert js_divergence([1, 0], [0, 5]) == 1.0
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4); JS = [log2(4/3) + (1/2)log2(2/3) + (1/2)log2(2)] / 2
    expected = (math.log2(4 / 3) + 0.5 * math.log2(2 / 3) + 0.5) / 2
    assert js_divergence([1, 0], [0.5, 0.5]) == pytest.approx(expected, abs=1e-15)
    with pytest.raises(UnidiffError):
        js_divergence([1, 2], [1, 2, 3])


def test_kmer_js_of_a_set_with_itself_is_zero_and_table_matches():
    rng = np.random.default_rng(0)
    a, b = [random_dna(rng, 500) for _ in range(3)], ["AT" * 300]
    table = kmer_js_table(a, b, ks=(1, 2, 3))
    assert kmer_js(a, a, 4) == 0.0 and list(table) == [1, 2, 3]
    assert table[2] == kmer_js(a, b, 2) and 0 < table[1] < table[3] <= 1


def test_reverse_complement():
    assert reverse_complement("aacgtN") == "Nacgtt"  # case is kept
    assert reverse_complement("GAATTC") == "GAATTC"


def test_reverse_complement_is_part_of_the_package_api():
    import unidiff_dna

    assert unidiff_dna.reverse_complement is reverse_complement  # loaded on first use, not with the package
    assert not hasattr(unidiff_dna, "nosuch")  # any other name is an AttributeError


@pytest.mark.parametrize("content, needle", [
    (None, "no such file"),
    (b"", "holds no FASTA records"),
    (b"hello\n", "sequence before the first '>' header"),
    (b">a\nAC\xffGT\n", "cannot read .* as ASCII text"),
    (b">a\n\n>b\nNNNN\n", "has no A, C, G or T base"),
])
def test_read_bases_refuses_what_it_cannot_measure(tmp_path, content, needle):
    """What ``python -m unidiff_dna.metrics`` reports as one line ``unidiff: error: ...`` (tests/test_plugin_tools)."""
    path = tmp_path / "in.fa"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnidiffError, match=needle):
        read_bases(str(path))


def test_read_bases_needs_one_base_only(tmp_path):
    (tmp_path / "in.fa").write_text(">a\nNNNN\n>b\nnna\n")
    assert read_bases(str(tmp_path / "in.fa")) == ["NNNN", "nna"]


# --- motifs and PWMs -----------------------------------------------------------------------------------------


def test_motif_rate_overlapping_both_strands_and_palindromes():
    seq = "AAAA" + "TT" + "GAATTC" + "C" * 8  # 20 bases
    # "AA" (forward): AAAA holds 3 overlapping, GAATTC 1. Its reverse complement "TT": TT 1, AATT 1.
    assert motif_rate(seq, "AA", both_strands=False) == pytest.approx(4 / 0.02)
    assert motif_rate(seq, "AA") == pytest.approx(6 / 0.02)
    # GAATTC is its own reverse complement: one site, counted once on both strands.
    assert motif_rate(seq, "GAATTC") == motif_rate(seq, "GAATTC", both_strands=False) == pytest.approx(1 / 0.02)
    # IUPAC: "TTGANN" never meets N in the sequence; W = A/T.
    assert motif_rate(["TTGACA", "TTGANA"], "TTGANN", both_strands=False) == pytest.approx(1 / 0.012)
    assert motif_rate("ATTA", "WW", both_strands=False) == pytest.approx(3 / 0.004)
    with pytest.raises(UnidiffError):
        motif_rate(seq, "AXA")


def test_pwm_hits_of_a_one_hot_pwm_equal_motif_rate_of_its_consensus():
    rng = np.random.default_rng(1)
    seqs = [random_dna(rng, 3000) + "TATAAT" + random_dna(rng, 200) for _ in range(4)]
    seqs[0] = seqs[0][:100] + "N" + seqs[0][101:]
    consensus = "TATAAT"
    one_hot = np.eye(4)[["ACGT".index(b) for b in consensus]]
    for both in (True, False):
        rate = motif_rate(seqs, consensus, both_strands=both)
        assert rate > 0
        assert pwm_hits(seqs, one_hot, threshold=2.0 * 6, both_strands=both) == pytest.approx(rate)
        # As counts (10 observations per column): the consensus is the only window at the top score.
        counts = 10 * one_hot
        top = 6 * math.log2((10.25 / 11) / 0.25)
        assert pwm_hits(seqs, counts, threshold=top - 1e-9, both_strands=both) == pytest.approx(rate)


def test_pwm_hits_threshold_admits_one_mismatch_and_a_background():
    pwm = np.eye(4)[[0, 0, 0]] * 0.96 + 0.01  # probabilities: 0.97 for A, 0.01 for each other base
    match, miss = math.log2(0.97 / 0.25), math.log2(0.01 / 0.25)
    seq = "AAAC"  # windows AAA (3 matches), AAC (2 matches + 1 miss); reverse strand: TTT, GTT
    eps = 1e-9
    assert pwm_hits(seq, pwm, 3 * match - eps, both_strands=False) == pytest.approx(1 / 0.004)
    assert pwm_hits(seq, pwm, 2 * match + miss - eps, both_strands=False) == pytest.approx(2 / 0.004)
    assert pwm_hits(seq, pwm, 3 * match - eps, both_strands=True) == pytest.approx(1 / 0.004)
    rich_a = np.array([0.485, 0.015, 0.015, 0.485])  # against this background AAA scores 3 log2(0.97/0.485) = 3
    assert pwm_hits(seq, pwm, 3.0 - 1e-9, both_strands=False, background=rich_a) == pytest.approx(1 / 0.004)
    assert pwm_hits(seq, pwm, 3.0 + 1e-9, both_strands=False, background=rich_a) == 0.0


# --- memorisation --------------------------------------------------------------------------------------------


def test_max_identity_copies_substitutions_and_strands():
    rng = np.random.default_rng(2)
    refs = [random_dna(rng, 5000), random_dna(rng, 3000)]
    copy = refs[1][1000:1100]
    mutated = list(copy)
    for i in (5, 50, 95):
        mutated[i] = {"A": "C", "C": "G", "G": "T", "T": "A"}[mutated[i]]
    rc = reverse_complement(refs[0][200:300])
    got = max_identity([copy, "".join(mutated), rc], refs)
    assert got[0] == 1.0 and got[1] == pytest.approx(0.97) and got[2] == 1.0
    assert max_identity([rc], refs, both_strands=False)[0] < 0.6
    assert max_identity(copy[:50] + "N" + copy[51:], refs)[0] == pytest.approx(0.99)


def test_max_identity_windows_do_not_span_references_and_short_references_give_nan():
    assert max_identity("AACC", ["TTAA", "CCTT"], both_strands=False)[0] == 0.0  # AACC spans the two
    assert max_identity("AACC", ["TTAACCTT"], both_strands=False)[0] == 1.0
    got = max_identity(["ACGTACGT", "ACG", ""], ["ACGT", "TTT"])
    assert np.isnan(got[0]) and got[1] == 1.0 and np.isnan(got[2])


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_max_identity_equals_a_naive_loop(seed):
    rng = np.random.default_rng(seed)
    refs = [random_dna(rng, int(n)) for n in rng.integers(1, 120, size=5)]
    refs[0] = refs[0][:3] + "N" + refs[0][4:]
    gens = [random_dna(rng, int(n)) for n in rng.integers(1, 30, size=12)] + ["ANNA"]
    for both in (True, False):
        expected = [naive_max_identity(g, refs, both) for g in gens]
        np.testing.assert_array_equal(max_identity(gens, refs, both_strands=both), expected)


def test_exact_copies():
    refs = ["ACGTTGCA" * 3, "GGGAAACCC"]
    gens = ["TTGCAAC", "GGAAAC", reverse_complement("GAAACC"), "GCAGGG", "acgttg", ""]
    assert exact_copies(gens, refs) == 4  # not GCAGGG: it would span two references; not the empty sequence
    assert exact_copies(gens, refs, both_strands=False) == 3


# --- Markov baselines ----------------------------------------------------------------------------------------


def test_order_0_on_uniform_iid_bases_needs_two_bits():
    rng = np.random.default_rng(7)
    model = MarkovModel(0).fit(random_dna(rng, 200_000))
    assert model.bits_per_base(random_dna(rng, 100_000)) == pytest.approx(2.0, abs=0.01)


def test_periodic_sequence_is_predictable_under_order_1():
    seq = "ACGT" * 1000
    model = MarkovModel(1, alpha=1e-6).fit(seq)
    assert model.bits_per_base(seq) < 0.001  # only the first base (order 0) costs 2 bits
    assert model.infill("ACGTA", 6, "TACG") == "CGTACG"


@pytest.mark.parametrize("k", [1, 2])
def test_fitted_model_recovers_the_entropy_rate_of_an_order_1_chain(k):
    transitions, entropy_rate = strand_symmetric_chain(0)
    rng = np.random.default_rng(8)
    model = MarkovModel(k).fit(sample_chain(transitions, 100_000, rng))
    assert entropy_rate < 1.9
    assert model.bits_per_base(sample_chain(transitions, 50_000, rng)) == pytest.approx(entropy_rate, abs=0.015)


def test_log2_probs_fall_back_to_shorter_contexts():
    model = MarkovModel(2, alpha=0.5).fit(["ACGTTGCAAC", "GGTACCANNTT"])
    lp = model.log2_probs("ACNGTA")
    assert lp.shape == (5,)
    tables = model.probs
    idx = {b: i for i, b in enumerate("ACGT")}
    expected = [tables[0][0, idx["A"]], tables[1][idx["A"], idx["C"]],  # A | -, C | A
                tables[0][0, idx["G"]], tables[1][idx["G"], idx["T"]],  # G | - (after N), T | G
                tables[2][idx["G"] * 4 + idx["T"], idx["A"]]]  # A | GT
    np.testing.assert_allclose(lp, np.log2(expected))


def brute_force_marginals(model: MarkovModel, prefix: str, hole: int, suffix: str) -> np.ndarray:
    weights = np.zeros((4,) * hole)
    for filling in itertools.product(range(4), repeat=hole):
        seq = prefix + "".join(BASES[list(filling)]) + suffix
        weights[filling] = 2.0 ** model.log2_probs(seq).sum()
    weights /= weights.sum()
    return np.stack([weights.sum(axis=tuple(a for a in range(hole) if a != t)) for t in range(hole)])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("prefix,suffix", [("GATTACA", "CCGTA"), ("T", "AGNCT"), ("", "GGA"), ("ACNG", "")])
def test_infill_marginals_equal_brute_force_enumeration(k, prefix, suffix):
    rng = np.random.default_rng(9)
    model = MarkovModel(k, alpha=0.3).fit([random_dna(rng, 400), "ACGCGCGTATATAAAA" * 20])
    marginals = model.infill_marginals(prefix, 4, suffix)
    assert marginals.shape == (4, 4)
    np.testing.assert_allclose(marginals.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(marginals, brute_force_marginals(model, prefix, 4, suffix), rtol=1e-9, atol=1e-12)


def test_sample_alphabet_length_and_order_0_frequencies():
    rng = np.random.default_rng(10)
    samples = MarkovModel(3).fit(random_dna(rng, 5000)).sample(7, 33, rng)
    assert len(samples) == 7 and all(len(s) == 33 and set(s) <= set("ACGT") for s in samples)
    at_rich = MarkovModel(0, alpha=1e-9).fit("AAAT", both_strands=False).sample(2, 20_000, rng)
    assert gc_content("".join(at_rich))[0] == 0.0
    assert "".join(at_rich).count("A") / 40_000 == pytest.approx(0.75, abs=0.01)


def test_fit_best_picks_order_1_on_order_1_data():
    transitions, _ = strand_symmetric_chain(1)
    rng = np.random.default_rng(11)
    model, table = fit_best(sample_chain(transitions, 60_000, rng), sample_chain(transitions, 30_000, rng))
    assert model.k == 1 and sorted(table) == [0, 1, 2, 3, 4, 5]
    assert table[0] > table[1] + 0.05


def test_unfitted_model_and_bad_arguments_raise():
    with pytest.raises(UnidiffError, match="not fitted"):
        MarkovModel(2).bits_per_base("ACGT")
    with pytest.raises(UnidiffError):
        MarkovModel(-1)
