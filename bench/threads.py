"""How many threads generation should use: tokens/s of the shipped text model at batch 1 and 64, on an idle
machine and beside a busy process, for several thread settings. It chose the default of ``--threads``
(`unidiff.device.default_threads`: the cores other processes leave free) and writes bench/threads-cpu.md.

    python bench/threads.py --out bench/threads-cpu.md

Each measurement runs in a fresh process (a thread pool is fixed when torch starts working): one warm-up call,
then the timed one. The busy neighbour is a second Python process spinning on one core, as another user's job.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = r"""
import json, sys, time, torch
from unidiff.pipeline import Pipeline
from unidiff.device import set_threads
threads, batch, length = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if threads == "auto":
    set_threads()  # the commands' default
elif threads != "torch":
    torch.set_num_threads(int(threads))
pipe = Pipeline.load("text", precision="fp32")
pipe.complete("", num=batch, length=length, seed=0)
gen = pipe.complete("", num=batch, length=length, seed=1)
print(json.dumps({"threads": torch.get_num_threads(), "tokens_per_second": gen.tokens_per_second}))
"""


def measure(threads: str, batch: int, length: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(batch), str(length)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--out", help="write the table here (Markdown)")
    args = p.parse_args()
    from unidiff.report import write_table

    start = time.time()
    cores = len(os.sched_getaffinity(0))
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "UNIDIFF_THREADS")}
    variants = [("torch's default, every core (the old default)", "torch", {}),
                ("1 thread", "1", {}),
                (f"{cores} threads, OMP_WAIT_POLICY=PASSIVE", str(cores), {"OMP_WAIT_POLICY": "PASSIVE"}),
                ("the new default: cores not kept busy by others (`default_threads`)", "auto", {})]
    rows = []
    for busy in (False, True):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            if spinner:
                time.sleep(2)
            for name, threads, extra in variants:
                speeds = [measure(threads, b, args.length, {**base, **extra}) for b in args.batches]
                rows.append(f"| {'busy' if busy else 'idle'} | {name} | {speeds[0]['threads']} | "
                            + " | ".join(f"{s['tokens_per_second']:.0f}" for s in speeds) + " |")
                print(rows[-1], file=sys.stderr)
        finally:
            if spinner:
                spinner.kill()
    header = "| machine | setting | threads | " + " | ".join(f"tokens/s, batch {b}" for b in args.batches) + " |"
    write_table(f"Generation speed of the shipped `text` model ({args.length} bytes, its default sampler, fp32) by "
                f"thread setting, on an idle machine and beside one busy process ({cores} cores).", header, rows,
                "python bench/threads.py" + (f" --out {args.out}" if args.out else ""), start, args.out)


if __name__ == "__main__":
    main()
