"""Classifier-free guidance, measured: does the text follow its condition more as the guidance scale grows?

Two conditional tasks, each with a model trained with condition dropout (so one model gives both p(x | c) and
p(x); the logits at scale w are ``uncond + w * (cond - uncond)``, w = 0 ignoring the condition and w = 1 plain
conditioning):

- ``--task keyword`` (model: ``unidiff train configs/text-keyword.toml``): the condition is a word (``<murder>\\n``)
  taken from a chunk of a held-out play; the metric is the fraction of samples that contain that word.
- ``--task play`` (the shipped text model, whose windows carried their play's title half of the time): the
  condition is a training play's title (``<hamlet>\\n``); an independent classifier, a word-level multinomial naive
  Bayes model fitted on the first 90% of every training play, names the play of each sample. Its accuracy on real
  256-byte windows of the last 10% is reported as the ceiling; chance is 1 / (number of plays).

Word validity and distinct words (see `unidiff_text.metrics`) show what the guidance costs in quality.

    python -m unidiff_text.guidance --model runs/text-keyword/model --out docs/results/text-guidance.md
    python -m unidiff_text.guidance --task play --model text
"""

from __future__ import annotations

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


def keyword_prompts(num: int) -> list[str]:
    """``num`` keywords of held-out chunks, evenly spaced over the held-out plays."""
    from unidiff_text.corpus import keyword_chunks

    chunks = keyword_chunks("valid")
    step = max(len(chunks) // num, 1)
    return [word.lower() for _, word in chunks[::step][:num]]


def contains(text: str, word: str) -> bool:
    import re

    return re.search(rf"(?<![A-Za-z]){re.escape(word)}(?![A-Za-z])", text, re.IGNORECASE) is not None


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.guidance") -> None:
    from unidiff import Pipeline
    from unidiff.cli import Parser
    from unidiff.data import Segment
    from unidiff.report import write_table
    from unidiff_text.corpus import title_prompt
    from unidiff_text.metrics import distinct_words, word_validity

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=("keyword", "play"), default="keyword")
    p.add_argument("--model", default="runs/text-keyword/model")
    p.add_argument("--num", type=int, default=96, help="keywords (keyword task) or samples per play (play task)")
    p.add_argument("--length", type=int, default=200, help="bytes generated per sample (default 200)")
    p.add_argument("--scales", type=float, nargs="+", default=[0, 1, 1.5, 2, 3, 5])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)

    if args.task == "play":
        fit, rest = split_plays()
        clf = PlayClassifier(fit)
        windows = [(k, t[i:i + 256]) for k, t in rest.items() for i in range(0, len(t) - 256, 256)]
        ceiling = sum(clf.predict(w) == k for k, w in windows) / len(windows)
        conditions = [k for k in clf.labels for _ in range(args.num)]
        about = (f"{len(clf.labels)} training plays x {args.num} samples from the title prompt; play accuracy by a "
                 f"naive Bayes word classifier whose accuracy on {len(windows)} real 256-byte windows it was not "
                 f"fitted on is {ceiling:.3f} (chance {1 / len(clf.labels):.3f})")
        score = lambda text, k: clf.predict(text) == k  # noqa: E731
        metric = "play accuracy"
    else:
        conditions = keyword_prompts(args.num)
        about = (f"{len(conditions)} keywords (6+ letters) from chunks of the held-out plays, one sample each; "
                 f"keyword rate = fraction of samples containing the keyword as a word")
        score = contains
        metric = "keyword rate"
    pipe = Pipeline.load(args.model)
    samples = [[Segment("text", title_prompt(c)), Segment("text", role="generate", length=args.length)]
               for c in conditions]
    start = time.time()
    rows = []
    for w in args.scales:
        gen = pipe.generate(samples, steps=args.steps, seed=args.seed, guidance=w)
        texts = [t[len(title_prompt(c)):] for t, c in zip(gen.texts, conditions)]
        hit = sum(score(t, c) for t, c in zip(texts, conditions)) / len(texts)
        rows.append(f"| {w:g} | {hit:.3f} | {word_validity(texts):.3f} | {distinct_words(texts):.3f} | "
                    f"{sum(gen.nfe) / len(gen.nfe):.0f} |")
        print(rows[-1], flush=True)
    rec = pipe.sampling
    write_table(f"Classifier-free guidance, task `{args.task}`: model `{args.model}`, {about}. {args.length} bytes "
                f"per sample, {args.steps} steps, policy {rec['policy']}, temperature {rec['temperature']:g}, seed "
                f"{args.seed}.", f"| guidance w | {metric} | word validity | distinct words | NFE/sample |", rows,
                f"{prog} --task {args.task} --model {args.model}", start, args.out)


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
