"""The quality-vs-forward-passes frontier of the text sampler: one command, one table.

For each unmasking policy, step count, temperature and remasking strength, generate ``--num`` unconditional
samples of ``--length`` bytes and report the forward passes per sample (NFE) beside three quality figures read
together:

- reference bits/byte: the samples' likelihood under an independent model, a byte 5-gram model fitted on the
  training plays (`unidiff_text.reference`); lower reads more like the plays;
- word validity: the fraction of words found in the training plays' vocabulary;
- distinct words: the mean fraction of distinct words within a sample; a sampler that repeats itself ("you your
  you") gets a flattering reference figure and a low one here.

The first row scores held-out text the same way. The recommended setting (the ``[sample]`` section of
configs/text.toml) is the one with the lowest reference bits/byte among settings whose distinct-word fraction is
at least 90% of held-out text's, at no more than 64 forward passes per 256 bytes.

    python -m unidiff_text.frontier --out docs/results/text-frontier.md
"""

from __future__ import annotations

import datetime
import sys
import time


def parse_policy(text: str) -> tuple[str, dict]:
    """'threshold:0.7' -> ("threshold", {"threshold": 0.7}); 'confidence' -> ("confidence", {})."""
    name, _, value = text.partition(":")
    return (name, {"threshold": float(value)}) if value else (name, {})


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.frontier") -> None:
    from unidiff import Pipeline
    from unidiff.cli import Parser
    from unidiff.report import machine
    from unidiff_text.metrics import distinct_words, held_out_windows, word_validity
    from unidiff_text.reference import reference_model

    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="text")
    p.add_argument("--num", type=int, default=16, help="samples per setting (default 16)")
    p.add_argument("--length", type=int, default=256, help="bytes per sample (default 256)")
    p.add_argument("--policies", nargs="+", default=["ancestral", "confidence", "margin", "entropy", "random"],
                   help="policies run at every step count; 'threshold:T' for the threshold policy")
    p.add_argument("--steps", type=int, nargs="+", default=[16, 64, 256])
    p.add_argument("--thresholds", type=float, nargs="*", default=[0.5, 0.7, 0.9],
                   help="threshold policy values (their NFE is adaptive; steps cap at --length)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.6, 1.0])
    p.add_argument("--remask", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the table (Markdown) to this file")
    args = p.parse_args(argv)

    pipe = Pipeline.load(args.model)  # first: a wrong --model is reported before the reference model is fitted
    ref = reference_model()
    held = held_out_windows(args.length, 64)
    settings = [(pol, s) for pol in args.policies for s in args.steps] + \
        [(f"threshold:{t}", args.length) for t in args.thresholds]
    lines = ["| policy | steps | temperature | remask | NFE/sample | reference bits/byte | word validity | "
             "distinct words | tokens/s |", "|---|---|---|---|---|---|---|---|---|",
             f"| held-out text | - | - | - | - | {ref.bits_per_byte(held):.3f} | {word_validity(held):.3f} | "
             f"{distinct_words(held):.3f} | - |"]
    print("\n".join(lines), flush=True)
    start = time.time()
    for temperature in args.temperatures:
        for remask in args.remask:
            for policy, steps in settings:
                name, options = parse_policy(policy)
                gen = pipe.complete(None, num=args.num, length=args.length, steps=steps, policy=name,
                                    policy_options=options, seed=args.seed, temperature=temperature, remask=remask,
                                    guidance=1.0)
                nfe = sum(gen.nfe) / len(gen.nfe)
                line = (f"| {policy} | {steps} | {temperature:g} | {remask:g} | {nfe:.1f} | "
                        f"{ref.bits_per_byte(gen.texts):.3f} | {word_validity(gen.texts):.3f} | "
                        f"{distinct_words(gen.texts):.3f} | {gen.tokens_per_second:.0f} |")
                lines.append(line)
                print(line, flush=True)
    header = (f"Text sampler frontier: model `{args.model}`, {args.num} samples of {args.length} bytes per row, "
              f"seed {args.seed}. Machine: {machine()}. Date: {datetime.date.today()}. "
              f"Took {time.time() - start:.0f} s.\n\nCommand: `{prog} "
              f"{' '.join(argv if argv is not None else sys.argv[1:])}`\n\n")
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(header + "\n".join(lines) + "\n")


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
