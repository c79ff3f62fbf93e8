"""Infilling on held-out text: restore a hidden word given the text before and after it.

From the held-out plays (never trained on), take ``--num`` evenly spaced places; at each, hide one whole word
(3 to 12 letters) with ``--context`` bytes of text on either side. Fill it

- at fixed length: a ``<mask:n>`` hole of the word's true length n;
- at variable length: a ``<blank:N>`` hole of up to N bytes (default 16) that the model fills with the word and
  blanks (dropped on decode), so it must also decide the length;

and report the exact-match rate, how often the variable-length fill has the right length, and the likelihood of
the true word: its masked-diffusion ELBO in bits per byte given the context (an upper bound on -log2 p), for the
variable-length hole with the blanks after the word (one arrangement among several, so again an upper bound).

    python -m unidiff_text.infilling --out docs/results/text-infilling.md
"""

from __future__ import annotations

import math
import re
import time

import torch

WORD = re.compile(r"[A-Za-z]{3,12}")


def cases(num: int, context: int) -> list[tuple[str, str, str]]:
    """(prefix, word, suffix) triples from the held-out plays, evenly spaced."""
    from unidiff_text.corpus import shakespeare

    text = "\n".join(shakespeare("valid"))
    out, stride = [], (len(text) - 4 * context) // num
    for i in range(num):
        at = context + i * stride
        m = WORD.search(text, at)
        while m and not (text[m.start() - 1].isspace() and not text[m.end()].isalpha()):
            m = WORD.search(text, m.end())
        out.append((text[m.start() - context:m.start()], m.group(0), text[m.end():m.end() + context]))
    return out


@torch.no_grad()
def span_elbo_bits(pipe, prefix: str, word: str, suffix: str, hole: int | None, samples: int, seed: int) -> float:
    """ELBO (bits) of the word given the context: in a fixed hole of its own length (``hole`` None), or in a
    variable-length hole of ``hole`` positions, filled canonically (the word, then blanks)."""
    from unidiff.data import Batch, Segment, encode_row
    from unidiff.training.objectives import batch_elbo
    from unidiff.process.schedules import get_schedule

    layout, m = pipe.layout, pipe.modalities["text"]
    row = encode_row([Segment("text", prefix), Segment("text", word), Segment("text", suffix)], layout,
                     pipe.modalities)
    n, start = len(m.encode(word)), len(m.encode(prefix))
    size = n if hole is None else hole
    ids = row.ids.tolist()
    ids[start + n:start + n] = [layout.blank] * (size - n)
    x0 = torch.tensor([ids] * samples)
    span = torch.zeros_like(x0, dtype=torch.bool)
    span[:, start:start + size] = True
    L = x0.shape[1]
    batch = Batch(x0, torch.full_like(x0, int(row.modality[0])), torch.arange(L).expand(samples, L).clone(),
                  torch.zeros_like(span), span, None, None if hole is None else span)
    sums, _ = batch_elbo(pipe.model, batch, get_schedule("linear"), torch.Generator().manual_seed(seed),
                         process=pipe.process)
    return float(sums.sum() / samples) / math.log(2)


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.infilling") -> None:
    from unidiff import Pipeline
    from unidiff.cli import Parser
    from unidiff.data import parse_holes
    from unidiff.report import write_table

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="text")
    p.add_argument("--num", type=int, default=200, help="hidden words (default 200)")
    p.add_argument("--context", type=int, default=96, help="bytes of context on each side (default 96)")
    p.add_argument("--max-length", type=int, default=16, help="size of the variable-length hole (default 16)")
    p.add_argument("--elbo-samples", type=int, default=32, help="time samples per ELBO estimate (default 32)")
    p.add_argument("--policy", default="confidence")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)
    pipe = Pipeline.load(args.model)
    data = cases(args.num, args.context)
    start = time.time()
    rows = []
    for kind in ("fixed", "variable"):
        templates = [f"{a}<mask:{len(w)}>{b}" if kind == "fixed" else f"{a}<blank:{args.max_length}>{b}"
                     for a, w, b in data]
        steps = [len(w) if kind == "fixed" else args.max_length for _, w, _ in data]  # one step per position
        gen = pipe.generate([parse_holes(t, "text") for t in templates], steps=steps, policy=args.policy,
                            temperature=args.temperature, remask=0.0, guidance=1.0)
        fills = [out[len(a):len(out) - len(b)] for out, (a, _, b) in zip(gen.texts, data)]
        hits = sum(f == w for f, (_, w, _) in zip(fills, data))
        length_ok = sum(len(f) == len(w) for f, (_, w, _) in zip(fills, data))
        nfe = sum(gen.nfe)
        bits = sum(span_elbo_bits(pipe, a, w, b, None if kind == "fixed" else args.max_length,
                                  args.elbo_samples, i) for i, (a, w, b) in enumerate(data))
        n_bytes = sum(len(w) for _, w, _ in data)
        rows.append(f"| {kind} | {'n' if kind == 'fixed' else f'up to {args.max_length}'} | "
                    f"{hits / len(data):.3f} | {length_ok / len(data):.3f} | {bits / n_bytes:.3f} | "
                    f"{nfe / len(data):.1f} |")
        print(rows[-1], flush=True)
    write_table(f"Infilling on held-out plays: model `{args.model}`, {len(data)} hidden words of 3-12 letters with "
                f"{args.context} bytes of context on each side; policy {args.policy}, temperature "
                f"{args.temperature:g}, one step per position.",
                "| hole | positions | exact match | right length | true word: ELBO bits/byte | NFE/fill |", rows,
                prog, start, args.out)


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
