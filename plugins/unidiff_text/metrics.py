"""Sample-quality metrics for the text modality.

``word_validity``: the fraction of the words in a text that occur in the training plays' vocabulary. Held-out
Shakespeare scores 0.948 (new plays bring new names and rare words); byte soup scores near 0. It is crude
but independent of the model being measured, cheap, and it moves with what a reader notices first: whether the
words are words. A sampler can game it by repeating common words ("you your you"), so it is read beside
``distinct_words``: the mean fraction of distinct words within a sample, against held-out windows of the same
length.

    python -m unidiff_text.metrics --model text --num 32 --length 256 --steps 64 --policy confidence
"""

from __future__ import annotations

import functools
import re
from typing import Iterable

WORD = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)*")


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


@functools.cache
def vocabulary() -> frozenset[str]:
    """Every word of the training plays, lower-cased."""
    from unidiff_text.corpus import shakespeare

    return frozenset(w for play in shakespeare("train") for w in words(play))


def word_validity(texts: Iterable[str], vocab: frozenset[str] | None = None) -> float:
    """Fraction of words (over all texts) found in ``vocab`` (default: the training plays' vocabulary)."""
    vocab = vocabulary() if vocab is None else vocab
    found = [w in vocab for t in texts for w in words(t)]
    return sum(found) / len(found) if found else 0.0


def distinct_words(texts: Iterable[str]) -> float:
    """Mean over texts of (distinct words / words): low when a sample repeats itself."""
    ratios = [len(set(ws)) / len(ws) for ws in map(words, texts) if ws]
    return sum(ratios) / len(ratios) if ratios else 0.0


def held_out_windows(length: int, n: int = 256) -> list[str]:
    """n evenly spaced byte windows of the held-out plays (the reference for a sample of that length)."""
    from unidiff_text.corpus import shakespeare

    data = "\n".join(shakespeare("valid")).encode()
    stride = max((len(data) - length) // n, 1)
    return [data[i:i + length].decode("utf-8", errors="replace") for i in range(0, stride * n, stride)]


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.metrics") -> None:
    from unidiff import Pipeline
    from unidiff.cli import Parser

    p = Parser(prog=prog, description="Word validity of samples.")
    p.add_argument("--model", default="text")
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--steps", type=int, nargs="*", default=[None])
    p.add_argument("--policy", nargs="*", default=[None], help="default: the model's recommendation")
    p.add_argument("--temperature", type=float, help="default: the model's recommendation")
    p.add_argument("--block-length", type=int)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ref = held_out_windows(args.length)
    pipe = Pipeline.load(args.model)
    print("| policy | steps | NFE/sample | tokens/s | word validity | distinct words |")
    print("|---|---|---|---|---|---|")
    print(f"| held-out text | - | - | - | {word_validity(ref):.3f} | {distinct_words(ref):.3f} |")
    for policy in args.policy:
        for steps in args.steps:
            gen = pipe.complete(None, num=args.num, length=args.length, steps=steps, policy=policy,
                                seed=args.seed, temperature=args.temperature, block_length=args.block_length)
            nfe = sum(gen.nfe) / len(gen.nfe)
            print(f"| {policy or pipe.sampling['policy']} | {steps or 'default'} | {nfe:.1f} | "
                  f"{gen.tokens_per_second:.0f} | "
                  f"{word_validity(gen.texts):.3f} | {distinct_words(gen.texts):.3f} |")


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
