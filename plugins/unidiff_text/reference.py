"""An independent reference model for judging text samples: a byte-level n-gram model (Witten-Bell interpolation).

Sample quality measured by the model that generated the samples flatters that model; this one shares nothing with
it but the training plays. ``bits_per_byte`` of samples under it says how much they read like the plays (lower is
more plausible; a sampler that repeats common words also scores low, so it is read beside a diversity figure).

    from unidiff_text.reference import reference_model
    ref = reference_model()                 # order 5, fitted on the training plays (about 20 s, cached)
    ref.bits_per_byte(["ROMEO.\\nO, she doth teach the torches to burn bright!"])
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Iterable


class ByteNgram:
    """Interpolated n-gram model over bytes (Witten-Bell smoothing down to a uniform over 256 bytes).

    Args:
        texts: training documents.
        order: longest n-gram (the context is order - 1 bytes).
    """

    def __init__(self, texts: Iterable[str], order: int = 5):
        if order < 1:
            raise ValueError(f"order must be at least 1; got {order}")
        self.order = order
        self.counts: list[Counter] = [Counter() for _ in range(order + 1)]  # counts[n][n-gram]
        for text in texts:
            data = text.encode("utf-8")
            for n in range(1, order + 1):
                self.counts[n].update(data[i:i + n] for i in range(len(data) - n + 1))
        # Per context h: the total count C(h) and the number of distinct following bytes T(h).
        self.total: Counter = Counter()
        self.types: Counter = Counter()
        for n in range(1, order + 1):
            for gram, c in self.counts[n].items():
                self.total[gram[:-1]] += c
                self.types[gram[:-1]] += 1

    def prob(self, history: bytes, byte: int) -> float:
        """P(byte | the last order - 1 bytes of history)."""
        p = 1.0 / 256
        for n in range(1, self.order + 1):
            if n - 1 > len(history):
                break
            ctx = history[len(history) - (n - 1):]
            total = self.total.get(ctx)
            if not total:
                break  # a longer context containing an unseen one is unseen too
            types = self.types[ctx]
            p = (self.counts[n].get(ctx + bytes([byte]), 0) + types * p) / (total + types)
        return p

    def bits(self, text: str, context: str = "") -> tuple[float, int]:
        """(total bits, number of bytes) of ``text`` following ``context``."""
        data = context.encode("utf-8")
        body = text.encode("utf-8")
        full = data + body
        k = self.order - 1
        total = 0.0
        for i in range(len(data), len(full)):
            total -= math.log2(self.prob(full[max(0, i - k):i], full[i]))
        return total, len(body)

    def bits_per_byte(self, texts: Iterable[str]) -> float:
        """Bits per byte over all texts (each scored from its own start)."""
        bits = n = 0
        for t in texts:
            b, m = self.bits(t)
            bits, n = bits + b, n + m
        return bits / max(n, 1)


@functools.cache
def reference_model(order: int = 5) -> ByteNgram:
    """The reference model fitted on the training plays of the ``shakespeare`` dataset."""
    from unidiff_text.corpus import shakespeare

    return ByteNgram(shakespeare("train"), order)
