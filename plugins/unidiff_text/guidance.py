"""Classifier-free guidance on the title-conditioned text model: does the text follow the requested play?

The shipped text model was fine-tuned on windows that carry their play's title as a given condition (``<hamlet>\\n``)
half of the time (condition dropout 0.5), so one model gives both p(text | title) and p(text). For each training
play, ``--num`` samples are generated from the title prompt at each guidance scale w (logits
``uncond + w * (cond - uncond)``; w = 0 ignores the title, w = 1 is plain conditioning), and an independent
classifier names the play each sample comes from. The classifier is a word-level multinomial naive Bayes model
fitted on the first 90% of every training play; its accuracy on 256-byte windows of the last 10% is reported as
the ceiling. Chance is 1 / (number of plays).

    python -m unidiff_text.guidance --out docs/results/text-guidance.md
"""

from __future__ import annotations

import argparse
import datetime
import math
import time
from collections import Counter


class PlayClassifier:
    """Multinomial naive Bayes over lower-cased words (additive smoothing ``alpha``), uniform prior over plays."""

    def __init__(self, texts: dict[str, str], alpha: float = 0.1):
        from unidiff_text.metrics import words

        self.labels = sorted(texts)
        self.counts = {k: Counter(words(texts[k])) for k in self.labels}
        self.vocab = set().union(*self.counts.values())
        self.totals = {k: sum(self.counts[k].values()) for k in self.labels}
        self.alpha = alpha

    def scores(self, text: str) -> dict[str, float]:
        from unidiff_text.metrics import words

        ws = [w for w in words(text) if w in self.vocab]
        a, v = self.alpha, len(self.vocab)
        return {k: sum(math.log((self.counts[k][w] + a) / (self.totals[k] + a * v)) for w in ws)
                for k in self.labels}

    def predict(self, text: str) -> str:
        s = self.scores(text)
        return max(self.labels, key=lambda k: s[k])


def split_plays(fraction: float = 0.9) -> tuple[dict[str, str], dict[str, str]]:
    """The training plays by slug, cut into (first fraction, rest)."""
    from unidiff_text.corpus import HELD_OUT, clean, play_files

    plays = {f.stem: clean(f.read_text(encoding="utf-8")) for f in play_files() if f.stem not in HELD_OUT}
    cut = {k: int(len(t) * fraction) for k, t in plays.items()}
    return {k: t[:cut[k]] for k, t in plays.items()}, {k: t[cut[k]:] for k, t in plays.items()}


def main(argv: list[str] | None = None) -> None:
    from unidiff import Pipeline
    from unidiff.data import Segment
    from unidiff_text.corpus import title_prompt
    from unidiff_text.frontier import machine
    from unidiff_text.metrics import distinct_words, word_validity

    p = argparse.ArgumentParser(prog="python -m unidiff_text.guidance", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="text")
    p.add_argument("--num", type=int, default=2, help="samples per play and scale (default 2)")
    p.add_argument("--length", type=int, default=200, help="bytes generated per sample (default 200)")
    p.add_argument("--scales", type=float, nargs="+", default=[0, 1, 2, 3, 5])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)

    fit, rest = split_plays()
    clf = PlayClassifier(fit)
    windows = [(k, t[i:i + 256]) for k, t in rest.items() for i in range(0, len(t) - 256, 256)]
    ceiling = sum(clf.predict(w) == k for k, w in windows) / len(windows)
    print(f"classifier accuracy on {len(windows)} held-out windows of the training plays: {ceiling:.3f}")

    pipe = Pipeline.load(args.model)
    labels = clf.labels
    samples = [[Segment("text", title_prompt(k)), Segment("text", role="generate", length=args.length)]
               for k in labels for _ in range(args.num)]
    truth = [k for k in labels for _ in range(args.num)]
    start = time.time()
    rows = []
    for w in args.scales:
        gen = pipe.generate(samples, steps=args.steps, seed=args.seed, guidance=w)
        texts = [t[len(title_prompt(k)):] for t, k in zip(gen.texts, truth)]
        acc = sum(clf.predict(t) == k for t, k in zip(texts, truth)) / len(texts)
        rows.append(f"| {w:g} | {acc:.3f} | {word_validity(texts):.3f} | {distinct_words(texts):.3f} | "
                    f"{sum(gen.nfe) / len(gen.nfe):.0f} |")
        print(rows[-1], flush=True)
    table = ["| guidance w | play accuracy | word validity | distinct words | NFE/sample |", "|---|---|---|---|---|",
             *rows]
    rec = pipe.sampling
    header = (f"Classifier-free guidance: model `{args.model}`, {len(labels)} training plays x {args.num} samples of "
              f"{args.length} bytes from the title prompt, {args.steps} steps, policy {rec['policy']}, temperature "
              f"{rec['temperature']:g}, seed {args.seed}. Classifier (naive Bayes on words) accuracy on "
              f"{len(windows)} real 256-byte windows it was not fitted on: {ceiling:.3f}; chance "
              f"{1 / len(labels):.3f}. Machine: {machine()}. Date: {datetime.date.today()}. "
              f"Took {time.time() - start:.0f} s.\n\nCommand: `python -m unidiff_text.guidance`\n\n")
    print("\n".join(table))
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(header + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
