"""Sequence metrics for DNA samples: composition, k-mer spectra, motif rates and a memorisation check.

Every function takes plain strings (a single ``str`` counts as one sequence), so it works on any user's sequences,
generated or not. Case is ignored. A, C, G, T are bases; N — and any other character — is an unknown base: it never
matches anything and a k-mer or window holding it is skipped. Bases are numbered A=0, C=1, G=2, T=3 and a k-mer
x_1..x_k has the index sum_j x_j 4^(k-j) (first base most significant).

- `gc_content`: (G+C)/(A+C+G+T) per sequence.
- `kmer_counts`, `js_divergence`, `kmer_js`, `kmer_js_table`: compare the k-mer spectra of two sets of sequences.
- `motif_rate`, `pwm_hits`: occurrences per kilobase of an IUPAC motif or a position weight matrix.
- `max_identity`, `exact_copies`: how close each generated sequence comes to a window of the training data.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from unidiff.errors import UnidiffError

Seqs = str | Sequence[str]
UNKNOWN = 4  # the code of N (and of any character that is not A, C, G or T)
_CODES = np.full(256, UNKNOWN, dtype=np.uint8)
for _i, _b in enumerate("ACGT"):
    _CODES[ord(_b)] = _CODES[ord(_b.lower())] = _i
_COMPLEMENT = str.maketrans("ACGTRYSWKMBDHVNacgtryswkmbdhvn", "TGCAYRSWMKVHDBNtgcayrswmkvhdbn")
_IUPAC = {"A": "A", "C": "C", "G": "G", "T": "T", "R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC",
          "B": "CGT", "D": "AGT", "H": "ACT", "V": "ACG", "N": "ACGT"}
_FFT_BLOCK_MIN = 1 << 14  # smallest FFT block of `max_identity` (longer queries get 4x their length, a power of 2)
_FFT_BATCH_BYTES = 1 << 27  # memory for one batch of `max_identity` correlations (~128 MiB)


def as_list(seqs: Seqs) -> list[str]:
    """The sequences as a list; a single string is one sequence (not a list of one-letter sequences)."""
    return [seqs] if isinstance(seqs, str) else list(seqs)


def encode(seq: str) -> np.ndarray:
    """uint8 codes of a sequence: A=0, C=1, G=2, T=3 (either case), anything else 4 (unknown)."""
    return _CODES[np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)]


def encode_joined(seqs: Seqs) -> np.ndarray:
    """Codes of all sequences joined by one N, so that no k-mer or window spans two sequences."""
    return encode("N".join(as_list(seqs)))


def reverse_complement(seq: str) -> str:
    """Reverse complement (A<->T, C<->G, N->N; IUPAC codes map to their complements, e.g. R<->Y); case is kept."""
    return seq.translate(_COMPLEMENT)[::-1]


def window_index(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each window start i of length k: its k-mer index sum_j x_{i+j} 4^(k-1-j), and whether it is N-free.

    The index of a window holding N is meaningless; the boolean array says which ones to keep.
    """
    m = len(codes) - k + 1
    if m <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    index = np.zeros(m, dtype=np.int64)
    for j in range(k):
        index = index * 4 + codes[j:j + m]
    unknown = np.concatenate([[0], np.cumsum(codes == UNKNOWN)])
    return index, unknown[k:] == unknown[:-k]


def kmer_counts_of_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """Counts (shape (4**k,)) of the N-free k-mers of a code array."""
    if k < 1:
        raise UnidiffError(f"k-mer length must be at least 1, got {k}")
    index, ok = window_index(codes, k)
    return np.bincount(index[ok], minlength=4 ** k)


def gc_content(seqs: Seqs) -> np.ndarray:
    """Per sequence (G+C)/(A+C+G+T), N ignored; nan for a sequence with no A, C, G or T."""
    seqs = as_list(seqs)
    codes = encode("".join(seqs))
    owner = np.repeat(np.arange(len(seqs)), [len(s) for s in seqs])
    counts = np.bincount(owner * 5 + codes, minlength=5 * len(seqs)).reshape(len(seqs), 5)
    bases = counts[:, :4].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(bases > 0, (counts[:, 1] + counts[:, 2]) / bases, np.nan)


def kmer_counts(seqs: Seqs, k: int) -> np.ndarray:
    """Counts of every N-free k-mer over all sequences, shape (4**k,), indexed as in the module docstring."""
    return kmer_counts_of_codes(encode_joined(seqs), k)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two count or probability vectors, in [0, 1].

    With p, q normalised to sum 1 and m = (p+q)/2: JS = KL(p||m)/2 + KL(q||m)/2, KL(p||m) = sum_i p_i log2(p_i/m_i)
    and 0 log 0 = 0. It is 0 for identical distributions and 1 for disjoint supports.
    """
    p, q = (np.asarray(v, dtype=np.float64).ravel() for v in (p, q))
    if p.shape != q.shape:
        raise UnidiffError(f"js_divergence needs vectors of one length, got {p.size} and {q.size}")
    if (p < 0).any() or (q < 0).any() or p.sum() <= 0 or q.sum() <= 0:
        raise UnidiffError("js_divergence needs non-negative vectors with a positive sum")
    p, q = p / p.sum(), q / q.sum()
    total = p + q
    half_kl = [np.sum(v[v > 0] * np.log2(2 * v[v > 0] / total[v > 0])) / 2 for v in (p, q)]
    return float(np.clip(sum(half_kl), 0.0, 1.0))


def kmer_js(a_seqs: Seqs, b_seqs: Seqs, k: int) -> float:
    """Jensen-Shannon divergence (bits) between the k-mer spectra of two sets of sequences."""
    return js_divergence(kmer_counts(a_seqs, k), kmer_counts(b_seqs, k))


def kmer_js_table(a_seqs: Seqs, b_seqs: Seqs, ks: Sequence[int] = (1, 2, 3, 4, 5, 6)) -> dict[int, float]:
    """{k: kmer_js(a_seqs, b_seqs, k)} for each k of ks."""
    a, b = encode_joined(a_seqs), encode_joined(b_seqs)
    return {k: js_divergence(kmer_counts_of_codes(a, k), kmer_counts_of_codes(b, k)) for k in ks}


def motif_table(motif: str) -> np.ndarray:
    """Score table (L, 5) of an IUPAC motif: 0 where position j admits code c, -inf elsewhere (N admits nothing).

    A window matches the motif exactly when its summed score is 0.
    """
    motif = motif.upper()
    bad = sorted(set(motif) - set(_IUPAC))
    if not motif or bad:
        raise UnidiffError(f"a motif is a non-empty string of IUPAC codes ({''.join(_IUPAC)}); got {motif!r}")
    table = np.full((len(motif), 5), -np.inf)
    for j, code in enumerate(motif):
        table[j, ["ACGT".index(b) for b in _IUPAC[code]]] = 0.0
    return table


def reverse_table(table: np.ndarray) -> np.ndarray:
    """The score table (L, 5) of the reverse strand: T[j, c] -> T[L-1-j, complement(c)] (N stays N)."""
    return table[::-1][:, [3, 2, 1, 0, 4]]


def window_scores(codes: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Score of each window start i: sum_j table[j, codes[i+j]] (length len(codes) - L + 1, or 0)."""
    m = len(codes) - len(table) + 1
    if m <= 0:
        return np.zeros(0)
    scores = np.zeros(m)
    for j, row in enumerate(table):
        scores += row[codes[j:j + m]]
    return scores


def hits_per_kb(seqs: Seqs, table: np.ndarray, threshold: float, both_strands: bool) -> float:
    """Windows scoring >= threshold (on either strand: a window counts once) per 1000 bases of sequence."""
    seqs = as_list(seqs)
    bases = sum(len(s) for s in seqs)
    if bases == 0:
        return float("nan")
    codes = encode_joined(seqs)
    hit = window_scores(codes, table) >= threshold
    if both_strands:
        hit |= window_scores(codes, reverse_table(table)) >= threshold
    return float(hit.sum() / (bases / 1000))


def motif_rate(seqs: Seqs, motif: str, both_strands: bool = True) -> float:
    """Occurrences of an IUPAC motif (e.g. "TATAAT", "GAATTC", "TTGANN") per kilobase of sequence.

    Overlapping occurrences all count. With both_strands a window also counts when it matches the reverse complement
    of the motif, but a window matching both (a palindromic motif's site) counts once. Kilobases = total length/1000.
    """
    return hits_per_kb(seqs, motif_table(motif), 0.0, both_strands)


def pwm_log_odds(pwm: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """log2(P[j, b] / background[b]) of a (L, 4) matrix over A, C, G, T.

    Rows that all sum to 1 are read as probabilities (a zero gives -inf: that base never fits); otherwise the matrix
    holds counts, which get a pseudo-count of 0.25 per cell before each row is normalised. The background defaults
    to uniform (0.25 each) and is normalised to sum 1.
    """
    pwm = np.asarray(pwm, dtype=np.float64)
    if pwm.ndim != 2 or pwm.shape[1] != 4 or len(pwm) == 0 or (pwm < 0).any():
        raise UnidiffError(f"a PWM is a non-negative (L, 4) matrix over A, C, G, T; got shape {pwm.shape}")
    bg = np.full(4, 0.25) if background is None else np.asarray(background, dtype=np.float64)
    if bg.shape != (4,) or (bg <= 0).any():
        raise UnidiffError(f"the background is 4 positive frequencies of A, C, G, T; got {bg!r}")
    if not np.allclose(pwm.sum(axis=1), 1.0):
        pwm = pwm + 0.25
    with np.errstate(divide="ignore"):
        return np.log2(pwm / pwm.sum(axis=1, keepdims=True)) - np.log2(bg / bg.sum())


def pwm_hits(seqs: Seqs, pwm: np.ndarray, threshold: float, both_strands: bool = True,
             background: np.ndarray | None = None) -> float:
    """Windows whose log2-odds score sum_j W[j, x_{i+j}] is >= threshold, per kilobase of sequence.

    W = `pwm_log_odds`(pwm, background). Windows holding N never hit. With both_strands the reverse-complement
    matrix W[L-1-j, complement(b)] is scored too and a window counts once if either strand passes.
    """
    log_odds = pwm_log_odds(pwm, background)
    table = np.concatenate([log_odds, np.full((len(log_odds), 1), -np.inf)], axis=1)
    return hits_per_kb(seqs, table, threshold, both_strands)


def one_hot(codes: np.ndarray) -> np.ndarray:
    """(4, n) float one-hot of a code array; an N column is all zero, so N matches nothing."""
    return (codes[None, :] == np.arange(4)[:, None]).astype(np.float64)


def fft_block(n: int) -> int:
    """FFT block length for queries of length n: a power of 2, at least 4n and `_FFT_BLOCK_MIN`."""
    return max(_FFT_BLOCK_MIN, 1 << (4 * n - 1).bit_length())


def window_starts_ok(lengths: Sequence[int], n: int) -> np.ndarray:
    """For each start t of the joined references: whether [t, t+n) lies inside one reference."""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    return owner[:len(owner) - n + 1] == owner[n - 1:]


def reference_spectra(ref: np.ndarray, n: int, block: int) -> np.ndarray:
    """rfft (4, blocks, block//2+1) of the overlapping blocks of a (4, M) one-hot reference.

    Block b covers reference positions [b*s, b*s + block) with s = block - n + 1, so its circular correlation with
    a query of length n is exact (no wrap-around) at the s offsets b*s .. b*s + s - 1; the blocks tile all M - n + 1
    offsets.
    """
    step = block - n + 1
    blocks = -(-(ref.shape[1] - n + 1) // step)
    padded = np.zeros((4, (blocks - 1) * step + block))
    padded[:, :ref.shape[1]] = ref
    windows = np.lib.stride_tricks.sliding_window_view(padded, block, axis=1)[:, ::step]
    return np.fft.rfft(windows, axis=-1)


def best_matches(queries: np.ndarray, spectra: np.ndarray, bad: np.ndarray, block: int) -> np.ndarray:
    """Per query (B, 4, n) one-hot: max over offsets t of matches(t) = sum_{c,j} q[c, j] r[c, t+j].

    The correlation within block b is irfft(sum_c R_bc conj(Q_c)); its first s = block - n + 1 values are the
    offsets b*s + u. ``bad`` (flat indices into the (blocks, s) offset grid) are excluded: windows crossing a
    reference boundary or past the end. The float maximum is rounded to the integer it approximates.
    """
    step = block - queries.shape[2] + 1
    q_spectra = np.fft.rfft(queries, n=block, axis=-1).conj()
    corr = np.fft.irfft(np.einsum("qcf,cbf->qbf", q_spectra, spectra), n=block, axis=-1)[:, :, :step]
    corr[:, bad // step, bad % step] = -1.0
    return np.rint(corr.max(axis=(1, 2))) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0


def bad_offsets(starts_ok: np.ndarray, blocks: int, step: int) -> np.ndarray:
    """Flat indices into the (blocks, step) offset grid of the offsets that start no window (see
    `window_starts_ok`), including those past the end of the references."""
    ok = np.zeros(blocks * step, dtype=bool)
    ok[:len(starts_ok)] = starts_ok
    return np.flatnonzero(~ok)


def max_identity(generated: Seqs, reference: Seqs, both_strands: bool = True) -> np.ndarray:
    """For each generated sequence g of length n: max over every length-n window w of every reference (and of its
    reverse complement with both_strands) of (#positions j with g_j = w_j, N matching nothing) / n.

    1.0 means g is an exact copy of a reference window (a memorisation check). Exact: the matches at every offset
    are the sum over A, C, G, T of the cross-correlations of one-hot channels, computed by FFT in overlapping
    blocks of the joined references and rounded to integers. The reverse strand is scored by matching the reverse
    complement of g against the forward references. Windows never span two references; nan where no reference is
    at least n long (or g is empty).
    """
    gens, refs = as_list(generated), as_list(reference)
    ref_codes = encode("".join(refs))
    ref = one_hot(ref_codes)
    lengths = [len(r) for r in refs]
    result = np.full(len(gens), np.nan)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(gens):
        by_length[len(g)].append(i)
    for n, members in by_length.items():
        starts_ok = window_starts_ok(lengths, n) if 0 < n <= len(ref_codes) else np.zeros(0, dtype=bool)
        if not starts_ok.any():
            continue
        block = fft_block(n)
        spectra = reference_spectra(ref, n, block)
        bad = bad_offsets(starts_ok, spectra.shape[1], block - n + 1)
        strands = [gens[i] for i in members]
        if both_strands:
            strands += [reverse_complement(gens[i]) for i in members]
        batch = max(1, _FFT_BATCH_BYTES // (16 * spectra.shape[1] * block))
        best = np.concatenate([
            best_matches(np.stack([one_hot(encode(s)) for s in strands[lo:lo + batch]]), spectra, bad, block)
            for lo in range(0, len(strands), batch)])
        result[members] = best.reshape(-1, len(members)).max(axis=0) / n
    return result


def exact_copies(generated: Seqs, reference: Seqs, both_strands: bool = True) -> int:
    """Number of non-empty generated sequences found verbatim (case ignored) inside one reference sequence, or,
    with both_strands, inside its reverse complement. A literal substring test: an N matches an N here."""
    haystack = "|".join(as_list(reference)).upper()
    return sum(bool(g) and (g in haystack or (both_strands and reverse_complement(g) in haystack))
               for g in (s.upper() for s in as_list(generated)))


def read_bases(path: str) -> list[str]:
    """The sequences of a FASTA or FASTQ file, which must hold at least one A, C, G or T to be measured."""
    from unidiff_dna.fasta import read_sequences

    seqs = [s for _, s in read_sequences(path)]
    if not (encode_joined(seqs) < UNKNOWN).any():
        raise UnidiffError(f"{path} has no A, C, G or T base (only N or other characters): nothing to measure")
    return seqs


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_dna.metrics") -> None:
    """Metrics of the sequences in a FASTA/FASTQ file: GC content, motif rates and, against a reference file,
    k-mer Jensen-Shannon divergence (k = 1..6) and, against a training file, the memorisation check."""
    from unidiff.cli import Parser

    p = Parser(prog=prog, description=main.__doc__)
    p.add_argument("fasta", help="the sequences to measure (FASTA or FASTQ, optionally .gz)")
    p.add_argument("--reference", help="sequences to compare k-mer spectra with (e.g. held-out real DNA)")
    p.add_argument("--train", help="training sequences: report each sequence's highest identity to them")
    p.add_argument("--motif", action="append", default=[], help="IUPAC motif to count per kb, both strands "
                                                                 "(repeatable; default CG, TATAAT, GAATTC)")
    args = p.parse_args(argv)
    seqs = read_bases(args.fasta)
    ref = read_bases(args.reference) if args.reference else None
    train = read_bases(args.train) if args.train else None
    gc = gc_content(seqs)
    lines = [f"{len(seqs)} sequences, {sum(map(len, seqs))} bases; GC {np.nanmean(gc):.4f} ± {np.nanstd(gc):.4f} "
             f"(quartiles {' / '.join(f'{q:.3f}' for q in np.nanpercentile(gc, [25, 50, 75]))})"]
    lines += [f"{motif}: {motif_rate(seqs, motif):.3f} per kb" for motif in args.motif or ["CG", "TATAAT", "GAATTC"]]
    if ref is not None:
        lines.append("k-mer JS divergence (bits) vs reference: " +
                     ", ".join(f"k={k}: {v:.4f}" for k, v in kmer_js_table(seqs, ref).items()))
    if train is not None:
        ident = max_identity(seqs, train)
        lines.append(f"highest identity to a training window: median {np.nanmedian(ident):.3f}, max "
                     f"{np.nanmax(ident):.3f}; verbatim copies: {exact_copies(seqs, train)}")
    print("\n".join(lines))  # all measured first: a bad --motif or input is an error before any output


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
