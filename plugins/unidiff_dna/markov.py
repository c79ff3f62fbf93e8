"""Order-k Markov chains over A, C, G, T: the baseline a DNA diffusion model has to beat.

An order-k model predicts base x_i from the k bases before it:
p(b | c) = (n(c b) + alpha) / (n(c) + 4 alpha), with n counting the N-free (k+1)-mers c b of the training
sequences (and of their reverse complements when fitted on both strands) and alpha an additive pseudo-count.
Counts are kept for every order 0..k: a position with fewer than k bases before it — at the start of a sequence or
just after an N — uses the longest N-free context it has (order min(k, bases since the sequence start or last N)).
N positions are not scored. Contexts are indexed as k-mers in `unidiff_dna.metrics` (first base most significant).

`MarkovModel.infill_marginals` computes exact posterior marginals of a hole between a prefix and a suffix by
forward-backward over the 4**k context states; `fit_best` picks the order by held-out bits per base.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unidiff.errors import UnidiffError
from unidiff_dna.metrics import UNKNOWN, Seqs, as_list, encode, encode_joined, kmer_counts_of_codes, reverse_complement

_LETTERS = np.frombuffer(b"ACGT", dtype=np.uint8)


def context_orders(codes: np.ndarray, k: int) -> np.ndarray:
    """Order used at each position i: min(k, i - j - 1) where j is the last N before i (-1 if none)."""
    positions = np.arange(len(codes))
    last_unknown = np.maximum.accumulate(np.where(codes == UNKNOWN, positions, -1))
    before = np.concatenate([[-1], last_unknown[:-1]])
    return np.minimum(k, positions - before - 1)


def conditional_table(counts: np.ndarray, alpha: float) -> np.ndarray:
    """p(b | c) = (counts[c, b] + alpha) / (sum_b' counts[c, b'] + 4 alpha), shape (4**order, 4)."""
    smoothed = counts + alpha
    return smoothed / smoothed.sum(axis=1, keepdims=True)


def letters(codes: np.ndarray) -> str:
    """The string of a code array holding only 0..3."""
    return _LETTERS[codes].tobytes().decode("ascii")


def state_index(codes: np.ndarray, k: int) -> int:
    """k-mer index of the last k codes, N read as A and missing leading bases as A (for k = 0: 0)."""
    tail = np.concatenate([np.zeros(k, dtype=np.int64), np.where(codes == UNKNOWN, 0, codes)])[len(codes):]
    return int(sum(int(c) * 4 ** (k - 1 - j) for j, c in enumerate(tail)))


class MarkovModel:
    """An order-k Markov chain with additive smoothing, falling back to lower orders where context is short.

    Args:
        k: the order (context length), 0 for i.i.d. bases.
        alpha: pseudo-count added to every (context, base) count (> 0).
    """

    def __init__(self, k: int, alpha: float = 0.5):
        if k < 0 or alpha <= 0:
            raise UnidiffError(f"a Markov model needs order k >= 0 and pseudo-count alpha > 0; got k={k}, "
                               f"alpha={alpha}")
        self.k, self.alpha = k, alpha
        self.probs: list[np.ndarray] = []  # probs[j][c, b] = p(b | order-j context c), j = 0..k

    def fit(self, seqs: Seqs, both_strands: bool = True) -> MarkovModel:
        """Count the N-free (j+1)-mers for j = 0..k (of the reverse complements too with both_strands)."""
        seqs = as_list(seqs)
        if both_strands:
            seqs = seqs + [reverse_complement(s) for s in seqs]
        codes = encode_joined(seqs)
        self.probs = [conditional_table(kmer_counts_of_codes(codes, j + 1).reshape(4 ** j, 4), self.alpha)
                      for j in range(self.k + 1)]
        return self

    def _fitted(self) -> list[np.ndarray]:
        if not self.probs:
            raise UnidiffError("this MarkovModel is not fitted yet: call fit(sequences) first")
        return self.probs

    def log2_probs(self, seq: str) -> np.ndarray:
        """log2 p(x_i | context_i) for each A/C/G/T position i of seq, in order (N positions are skipped).

        context_i is the o_i bases before i, o_i = `context_orders` (the longest N-free context up to k).
        """
        probs = self._fitted()
        codes = encode(seq)
        orders = context_orders(codes, self.k)
        bases = np.where(codes == UNKNOWN, 0, codes).astype(np.int64)
        scored = codes != UNKNOWN
        out = np.zeros(len(codes))
        context = np.zeros(len(codes), dtype=np.int64)  # order-j context index, updated to order j+1 below
        for j, table in enumerate(probs):
            at = scored & (orders == j)
            out[at] = np.log2(table[context[at], bases[at]])
            context[j + 1:] += bases[:max(len(codes) - j - 1, 0)] * 4 ** j
        return out[scored]

    def bits_per_base(self, seqs: Seqs) -> float:
        """Mean of -log2 p(x_i | context_i) over all scored positions of all sequences (nan if none)."""
        log2p = self.log2_probs("N".join(as_list(seqs)))
        return float(-log2p.mean()) if len(log2p) else float("nan")

    def sample(self, num: int, length: int, rng: np.random.Generator) -> list[str]:
        """num sequences of the given length drawn from the chain; base i < k uses the order-i table."""
        probs = self._fitted()
        states = 4 ** self.k
        out = np.zeros((num, length), dtype=np.int64)
        context = np.zeros(num, dtype=np.int64)
        for i in range(length):
            cumulative = np.cumsum(probs[min(i, self.k)][context], axis=1)
            out[:, i] = (rng.random((num, 1)) >= cumulative[:, :3]).sum(axis=1)
            context = (context * 4 + out[:, i]) % states
        return [letters(row) for row in out]

    def _step_weights(self, order: int, base: int | None) -> np.ndarray:
        """W[s, b]: factor of moving from the k-base state s by emitting b at a position using the given order.

        Free (hidden) position, base None: W[s, b] = p(b | last `order` bases of s). Fixed base b: that column
        only. Fixed N: weight 1 in column 0 (an N is not scored, and no later context reaches back over it).
        """
        table = self.probs[order][np.arange(4 ** self.k) % 4 ** order]
        if base is None:
            return table
        weights = np.zeros_like(table)
        if base == UNKNOWN:
            weights[:, 0] = 1.0
        else:
            weights[:, base] = table[:, base]
        return weights

    def infill_marginals(self, prefix: str, hole: int, suffix: str) -> np.ndarray:
        """Exact posterior p(x_t = b | prefix, suffix), shape (hole, 4), for the hidden bases between them.

        The chain factorises as in `log2_probs` over prefix + hole + suffix; only the hidden positions and the first
        k suffix positions have factors that involve hidden bases. The state after position t is its last k bases
        (as a k-mer index; bases before the prefix or N stand in as A and are never read, because each position
        only reads its own order's context). Forward: a_t[s'] = sum_{s, b: s' = (4s + b) mod 4**k} a_{t-1}[s]
        W_t[s, b]; backward: beta_{t-1}[s] = sum_b W_t[s, b] beta_t[(4s + b) mod 4**k]; marginal of hidden t:
        proportional to sum_s a_{t-1}[s] W_t[s, b] beta_t[(4s + b) mod 4**k]. Messages are rescaled each step.
        """
        self._fitted()
        if hole < 0:
            raise UnidiffError(f"a hole is a number of bases >= 0, got {hole}")
        k, states = self.k, 4 ** self.k
        pre, post = encode(prefix), encode(suffix)[:k]
        full = np.concatenate([pre, np.zeros(hole, dtype=np.uint8), post])
        orders = context_orders(full, k)[len(pre):]
        fixed: list[int | None] = [None] * hole + [int(c) for c in post]
        steps = list(zip((int(o) for o in orders), fixed))
        nxt = (np.arange(states)[:, None] * 4 + np.arange(4)) % states
        forward = [np.zeros(states)]
        forward[0][state_index(pre, k)] = 1.0
        for order, base in steps:
            w = self._step_weights(order, base)
            a = np.bincount(nxt.ravel(), weights=(forward[-1][:, None] * w).ravel(), minlength=states)
            forward.append(a / a.sum())
        marginals = np.zeros((hole, 4))
        backward = np.ones(states)
        for t in range(len(steps) - 1, -1, -1):
            joint = self._step_weights(*steps[t]) * backward[nxt]
            if t < hole:
                m = forward[t] @ joint
                marginals[t] = m / m.sum()
            backward = joint.sum(axis=1)
            backward /= backward.max()
        return marginals

    def infill(self, prefix: str, hole: int, suffix: str) -> str:
        """The hole filled base by base with the most probable base of its marginal (max expected accuracy)."""
        return letters(self.infill_marginals(prefix, hole, suffix).argmax(axis=1))


def fit_best(train_seqs: Seqs, valid_seqs: Seqs, orders: Sequence[int] = (0, 1, 2, 3, 4, 5),
             alpha: float = 0.5) -> tuple[MarkovModel, dict[int, float]]:
    """Fit each order on train (both strands); return the one with the lowest valid bits/base, and the table
    {order: valid bits/base}. Ties go to the lower order."""
    models = {k: MarkovModel(k, alpha).fit(train_seqs) for k in orders}
    scores = {k: model.bits_per_base(valid_seqs) for k, model in models.items()}
    best = min(sorted(scores), key=scores.__getitem__)
    return models[best], scores
