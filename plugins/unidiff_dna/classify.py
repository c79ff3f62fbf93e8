"""A k-mer logistic-regression classifier of sequence class: the judge of conditional generation.

Features are the frequencies of every k-mer for k = 1..``max_k`` (N-containing k-mers skipped), standardised with
the training set's mean and spread; the model is multinomial logistic regression with an L2 penalty, fitted by
L-BFGS to convergence (a convex problem, so the fit does not depend on a seed). It is trained on real training
windows only and its accuracy on real held-out windows is reported beside its verdict on generated ones.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from unidiff.errors import UnidiffError
from unidiff_dna.metrics import kmer_counts


def kmer_features(seqs: Sequence[str], max_k: int = 4) -> np.ndarray:
    """(N, sum_k 4**k) k-mer frequencies of each sequence, k = 1..max_k (each k's block sums to 1, or 0)."""
    rows = []
    for s in seqs:
        parts = []
        for k in range(1, max_k + 1):
            c = kmer_counts([s], k).astype(np.float64)
            parts.append(c / max(c.sum(), 1.0))
        rows.append(np.concatenate(parts))
    return np.stack(rows)


class KmerClassifier:
    """Multinomial logistic regression on k-mer frequencies.

    Args:
        classes: the class names, in a fixed order.
        max_k: the longest k-mer counted.
        l2: penalty on the weights (per training example: the loss is mean cross-entropy + l2 * |W|^2).
    """

    def __init__(self, classes: Sequence[str], max_k: int = 4, l2: float = 1e-3):
        self.classes, self.max_k, self.l2 = list(classes), max_k, l2
        self.mean = self.scale = self.weight = self.bias = None

    def _standardise(self, seqs: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy((kmer_features(seqs, self.max_k) - self.mean) / self.scale)

    def fit(self, seqs: Sequence[str], labels: Sequence[str]) -> "KmerClassifier":
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise UnidiffError(f"labels {unknown} are not among the classifier's classes {self.classes}")
        feats = kmer_features(seqs, self.max_k)
        self.mean, self.scale = feats.mean(0), feats.std(0) + 1e-8
        x = torch.from_numpy((feats - self.mean) / self.scale)
        y = torch.tensor([self.classes.index(c) for c in labels])
        w = torch.zeros(x.shape[1], len(self.classes), dtype=torch.float64, requires_grad=True)
        b = torch.zeros(len(self.classes), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, y) + self.l2 * (w * w).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.weight, self.bias = w.detach(), b.detach()
        return self

    def predict(self, seqs: Sequence[str]) -> list[str]:
        if self.weight is None:
            raise UnidiffError("fit the classifier before predicting")
        scores = self._standardise(seqs) @ self.weight + self.bias
        return [self.classes[i] for i in scores.argmax(1).tolist()]

    def accuracy(self, seqs: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
        """Accuracy per class (over the sequences of that label) and their mean, "mean" (balanced accuracy)."""
        pred = self.predict(seqs)
        out = {}
        for c in self.classes:
            idx = [i for i, lab in enumerate(labels) if lab == c]
            if idx:
                out[c] = sum(pred[i] == c for i in idx) / len(idx)
        out["mean"] = float(np.mean([out[c] for c in self.classes if c in out]))
        return out
