"""Editing strength, measured: the fraction of bytes an edit changes, for each strength and re-masking order.

``--num`` held-out windows of ``--length`` bytes are edited at each strength; the table gives the fraction of
bytes that differ from the input (strength 0 must give 0: the identity) and the word validity of the result.

    python -m unidiff_text.editing --out docs/results/text-editing.md
"""

from __future__ import annotations

import time


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.editing") -> None:
    from unidiff import Pipeline
    from unidiff.cli import Parser
    from unidiff.data import Segment
    from unidiff.report import write_table
    from unidiff_text.metrics import held_out_windows, word_validity

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="text")
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--strengths", type=float, nargs="+", default=[0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)
    pipe = Pipeline.load(args.model)
    texts = [t.encode()[:args.length].decode("utf-8", "ignore") for t in held_out_windows(args.length, args.num)]
    start = time.time()
    rows = []
    for order in ("random", "confidence"):
        for s in args.strengths:
            gen = pipe.generate([[Segment("text", t, role="edit", strength=s, order=order)] for t in texts])
            changed = sum(sum(a != b for a, b in zip(x.encode(), y.encode())) + abs(len(x.encode()) - len(y.encode()))
                          for x, y in zip(texts, gen.texts)) / sum(len(t.encode()) for t in texts)
            rows.append(f"| {order} | {s:g} | {changed:.3f} | {word_validity(gen.texts):.3f} | "
                        f"{sum(gen.nfe) / len(gen.nfe):.1f} |")
            print(rows[-1], flush=True)
    rec = pipe.sampling
    write_table(f"Editing: model `{args.model}`, {len(texts)} held-out windows of {args.length} bytes, sampler "
                f"{rec['policy']} at temperature {rec['temperature']:g}. Held-out text itself has word validity "
                f"{word_validity(texts):.3f}.", "| order | strength | bytes changed | word validity | NFE/edit |",
                rows, prog, start, args.out)


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
