"""The DNA model's figures, in one command that writes ``docs/results/dna.md``:

1. **Held-out bits per base**: the diffusion model's ELBO (an upper bound on its NLL), the exact NLL of the
   autoregressive baseline of the same size and training budget (``configs/dna-ar.toml``), and order-k Markov
   models fitted on the same training records (both strands), all on the same held-out windows.
2. **Sampler settings**: k-mer statistics of unconditional samples per policy, temperature and step count.
3. **Samples**: 256 generated sequences of 256 bp against held-out DNA — 3-mer and 6-mer Jensen-Shannon
   divergence, GC content, CpG and motif rates, and the highest identity to any training window (memorisation) —
   beside the same figures for random training windows (the natural floor) and for the best Markov model's samples.
4. **In-painting**: held-out windows with a 30 bp hole in the middle, restored by the model given both flanks, by
   the best Markov model's exact posterior (the base of highest marginal probability at each position) and by the
   autoregressive baseline given only the left flank.
5. **Conditioning**: a k-mer logistic-regression classifier trained on real training windows (its accuracy on
   held-out real windows reported) judges 48 sequences generated per requested class, at several guidance scales.

``python -m unidiff_dna.measure --ar runs/dna-ar/model --out docs/results/dna.md``
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np
import torch

from unidiff.cli import Parser
from unidiff.data import Segment, encode_docs, make_windows
from unidiff.modality import grids_of
from unidiff.training.evaluate import evaluate_model
from unidiff.pipeline import Pipeline
from unidiff.plugins import Registry
from unidiff.report import markdown_table, stamp
from unidiff_dna.classify import KmerClassifier
from unidiff_dna.corpus import CLASSES, load
from unidiff_dna.markov import fit_best
from unidiff_dna.metrics import exact_copies, gc_content, kmer_js, max_identity, motif_rate

LENGTH = 256
HOLE = 30
MOTIFS = ("CG", "TATAAT", "GAATTC")  # CpG; the bacterial -10 box; the EcoRI site


def random_windows(seqs: list[str], n: int, length: int, rng: np.random.Generator) -> list[str]:
    """``n`` windows drawn uniformly over all start positions of the sequences at least ``length`` long."""
    seqs = [s for s in seqs if len(s) >= length]
    weights = np.array([len(s) - length + 1 for s in seqs], dtype=np.float64)
    which = rng.choice(len(seqs), size=n, p=weights / weights.sum())
    return [seqs[i][(st := int(rng.integers(len(seqs[i]) - length + 1))):st + length] for i in which]


def held_out_tiles(pipe: Pipeline, registry: Registry) -> list[str]:
    """The bases of the held-out windows `unidiff eval` scores (so every model is scored on the same tokens)."""
    data = pipe.config["training"]["data"]
    builder, meta = registry.dataset(data["dataset"])
    dna = pipe.modalities[meta["modality"]]
    docs = builder(data["eval_split"])
    w = make_windows(encode_docs(docs, dna, pipe.layout), data["seq_len"], pipe.layout, dna.name,
                     grids=grids_of(pipe.modalities.values()))
    capacity = data["seq_len"] - 2 * w.wrap
    ends = w.doc_end[torch.searchsorted(w.doc_end, w.tile_starts, right=True)]
    start = pipe.layout.block(dna.name).start
    return [dna.decode((w.stream[s:min(s + capacity, e)] - start).tolist())
            for s, e in zip(w.tile_starts.tolist(), ends.tolist())]


def generate(pipe: Pipeline, num: int, seed: int, condition: str | None = None, batch: int = 64, **kw) -> list[str]:
    out = []
    for i in range(0, num, batch):
        gen = pipe.complete(num=min(batch, num - i), length=LENGTH, seed=seed + i, condition=condition, **kw)
        out += gen.texts
    return out


def likelihood(args, pipe, registry, train, tiles) -> tuple[str, object]:
    rows = []
    res, info = evaluate_model(args.model, registry, samples=4)
    rows.append(f"| unidiff diffusion ({pipe.model.num_params() / 1e6:.2f} M parameters), ELBO bound | "
                f"{res.bits_per_token['dna']:.4f} |")
    if args.ar:
        res_ar, _ = evaluate_model(args.ar, registry)
        bits = res_ar.bits_per_token["dna"]
        rows.append(f"| autoregressive transformer, same size and budget, exact NLL | {bits:.4f} |")
    best, table = fit_best(train, tiles)
    for k, bits in table.items():
        rows.append(f"| order-{k} Markov model{' (best)' if k == best.k else ''} | {bits:.4f} |")
    about = (f"Held-out bits per base on {info['windows']} windows of the held-out records (unseen organisms), "
             f"{sum(map(len, tiles))} bases; each window is scored with no context beyond it. The diffusion figure "
             f"is the ELBO averaged over 4 time samples per window; the Markov models are fitted on the training "
             f"records and their reverse complements.")
    return f"{about}\n\n" + markdown_table("| model | held-out bits/base |", rows), best


def sample_stats(name: str, seqs: list[str], held: list[str], train: list[str]) -> str:
    gc = gc_content(seqs)
    ident = max_identity(seqs, train)
    motifs = " | ".join(f"{motif_rate(seqs, m):.2f}" for m in MOTIFS)
    return (f"| {name} | {kmer_js(seqs, held, 3):.4f} | {kmer_js(seqs, held, 6):.4f} | {np.nanmean(gc):.3f} ± "
            f"{np.nanstd(gc):.3f} | {motifs} | {np.median(ident):.3f} / {ident.max():.3f} | "
            f"{exact_copies(seqs, train)} |")


def samples_section(args, pipe, train, held_records, best, rng) -> tuple[str, list[str]]:
    t0 = time.time()
    gen = generate(pipe, args.num, args.seed)
    seconds = time.time() - t0
    rows = [sample_stats("unidiff diffusion samples", gen, held_records, train),
            sample_stats(f"order-{best.k} Markov samples", best.sample(args.num, LENGTH, rng), held_records, train),
            sample_stats("random training windows (floor)", random_windows(train, args.num, LENGTH, rng),
                         held_records, train),
            sample_stats("random held-out windows", random_windows(held_records, args.num, LENGTH, rng),
                         held_records, train)]
    header = ("| sequences | 3-mer JS | 6-mer JS | GC | " + " | ".join(f"{m} /kb" for m in MOTIFS) +
              " | identity to train (median / max) | exact copies |")
    steps = math.ceil(LENGTH * (pipe.sampling.get("steps_per_token") or 1))
    about = (f"{args.num} sequences of {LENGTH} bp each. Jensen-Shannon divergence (bits) of k-mer spectra against "
             f"all held-out records; GC as mean ± sd over sequences; motif rates per kb on both strands; identity = "
             f"highest fraction of identical bases to any {LENGTH} bp window of the training records, either strand "
             f"(exact, by FFT), and the number of verbatim copies. The diffusion samples are unconditional, with the "
             f"model's recommended sampler ({pipe.sampling['policy']}, temperature {pipe.sampling['temperature']}, "
             f"{steps} steps) in {seconds:.0f} s.")
    return f"{about}\n\n" + markdown_table(header, rows), gen


SAMPLERS = (("ancestral", 1.0, 32), ("ancestral", 1.0, 64), ("ancestral", 1.0, 128), ("confidence", 1.0, 64),
            ("ancestral", 0.9, 64))


def sampler_section(args, pipe, held_records, rng) -> str:
    """Sample statistics per sampler setting, to choose the model's recommended sampler."""
    rows, floor = [], random_windows(held_records, args.sampler_num, LENGTH, rng)
    for policy, temperature, steps in SAMPLERS:
        seqs = generate(pipe, args.sampler_num, args.seed, policy=policy, temperature=temperature, steps=steps)
        gc = gc_content(seqs)
        rows.append(f"| {policy} | {temperature:g} | {steps} | {kmer_js(seqs, held_records, 3):.4f} | "
                    f"{kmer_js(seqs, held_records, 4):.4f} | {np.nanstd(gc):.3f} |")
    gc = gc_content(floor)
    rows.append(f"| random held-out windows | - | - | {kmer_js(floor, held_records, 3):.4f} | "
                f"{kmer_js(floor, held_records, 4):.4f} | {np.nanstd(gc):.3f} |")
    about = (f"{args.sampler_num} unconditional sequences of {LENGTH} bp per setting; k-mer JS divergence against all "
             f"held-out records (the last row: the same number of real held-out windows, the sampling floor) and "
             f"the spread of GC content between sequences (real DNA varies from sequence to sequence).")
    return f"{about}\n\n" + markdown_table("| policy | temperature | steps (NFE) | 3-mer JS | 4-mer JS | GC sd |", rows)


def inpainting_section(args, pipe, ar_pipe, held_records, best, rng) -> str:
    windows = random_windows(held_records, args.inpaint, LENGTH, rng)
    lo = (LENGTH - HOLE) // 2
    truth = [w[lo:lo + HOLE] for w in windows]

    def accuracy(fills: list[str]) -> float:
        return float(np.mean([sum(a == b for a, b in zip(f, t)) / HOLE for f, t in zip(fills, truth)]))

    def fill(p: Pipeline, samples: list[list[Segment]], **kw) -> list[str]:
        out = []
        for i in range(0, len(samples), 64):
            out += [g[lo:lo + HOLE] for g in p.generate(samples[i:i + 64], temperature=0.0, seed=args.seed, **kw).texts]
        return out

    holed = [[Segment("dna", w[:lo]), Segment("dna", role="generate", length=HOLE), Segment("dna", w[lo + HOLE:])]
             for w in windows]
    rows = []
    for steps in (HOLE, HOLE // 4):
        fills = fill(pipe, holed, policy="confidence", steps=steps)
        rows.append(f"| unidiff diffusion, both flanks, greedy confidence, {steps} steps | {accuracy(fills):.3f} |")
    fills = fill(pipe, holed, policy="confidence", steps=HOLE, symmetric=True)
    rows.append(f"| unidiff diffusion, both flanks, greedy confidence, {HOLE} steps, both strands (`--symmetric`) | "
                f"{accuracy(fills):.3f} |")
    markov = [best.infill(w[:lo], HOLE, w[lo + HOLE:]) for w in windows]
    rows.append(f"| order-{best.k} Markov, both flanks, exact posterior argmax | {accuracy(markov):.3f} |")
    if ar_pipe is not None:
        fills = fill(ar_pipe, [h[:2] for h in holed])
        rows.append(f"| autoregressive transformer, left flank only, greedy | {accuracy(fills):.3f} |")
    counts = np.array([sum(t.count(b) for t in truth) for b in "ACGT"])
    rows.append(f"| most frequent base of the held-out holes ({'ACGT'[counts.argmax()]}) | "
                f"{counts.max() / counts.sum():.3f} |")
    about = (f"{len(windows)} held-out windows of {LENGTH} bp; the middle {HOLE} bp (positions {lo}-{lo + HOLE - 1}) "
             f"are hidden and restored. Figure: fraction of restored bases equal to the truth.")
    return f"{about}\n\n" + markdown_table("| method | base accuracy |", rows)


def conditioning_section(args, pipe, records, rng) -> str:
    train = {c: [r.seq for r in records if r.split == "train" and r.cls == c] for c in CLASSES}
    held = {c: [r.seq for r in records if r.split == "valid" and r.cls == c] for c in CLASSES}
    xs, ys = [], []
    for c in CLASSES:
        xs += random_windows(train[c], 1500, LENGTH, rng); ys += [c] * 1500
    clf = KmerClassifier(CLASSES).fit(xs, ys)
    hx, hy = [], []
    for c in CLASSES:
        hx += random_windows(held[c], 400, LENGTH, rng); hy += [c] * 400
    real = clf.accuracy(hx, hy)
    rows = ["| real held-out windows (400 per class) | - | " +
            " | ".join(f"{real[c]:.3f}" for c in CLASSES) + f" | {real['mean']:.3f} | - |"]
    labels = [c for c in CLASSES for _ in range(args.per_class)]
    requests = [pipe.conditioned(c, [Segment("dna", role="generate", length=LENGTH)]) for c in labels]
    for w in args.guidance:
        seqs = []
        for i in range(0, len(requests), 96):  # every class in one batch
            seqs += pipe.generate(requests[i:i + 96], seed=args.seed + i, guidance=w).texts
        acc = clf.accuracy(seqs, labels)
        gc = " / ".join(f"{np.nanmean(gc_content(seqs[i * args.per_class:(i + 1) * args.per_class])):.3f}"
                        for i in range(len(CLASSES)))
        rows.append(f"| generated, {args.per_class} per class | {w:g} | " +
                    " | ".join(f"{acc[c]:.3f}" for c in CLASSES) + f" | {acc['mean']:.3f} | {gc} |")
    real_gc = " / ".join(f"{np.nanmean(gc_content(held[c])):.3f}" for c in CLASSES)
    about = (f"A k-mer (k = 1-4) logistic-regression classifier trained on 1500 random {LENGTH} bp training windows "
             f"per class judges sequences generated with the class as condition (`--condition CLASS`), at "
             f"classifier-free guidance scales w (0: unconditional, 1: conditional, no guidance). Chance is "
             f"{1 / len(CLASSES):.3f}. GC of the generated sequences per class ({', '.join(CLASSES)}); held-out real "
             f"DNA has {real_gc}.")
    header = "| sequences | guidance w | " + " | ".join(CLASSES) + " | mean | GC per class |"
    return f"{about}\n\n" + markdown_table(header, rows)


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_dna.measure") -> None:
    parser = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dna", help="diffusion model name or folder (default: dna)")
    parser.add_argument("--ar", help="folder of the autoregressive baseline (runs/dna-ar/model); omitted: no AR rows")
    parser.add_argument("--num", type=int, default=256, help="generated sequences for the sample statistics")
    parser.add_argument("--inpaint", type=int, default=200, help="held-out windows for the in-painting test")
    parser.add_argument("--per-class", type=int, default=48, help="generated sequences per class and guidance")
    parser.add_argument("--guidance", type=float, nargs="+", default=[0.0, 1.0, 2.0, 3.0])
    parser.add_argument("--sampler-num", type=int, default=96, help="sequences per sampler setting")
    parser.add_argument("--sections", nargs="+", default=["likelihood", "sampler", "samples", "inpainting",
                                                          "conditioning"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Markdown file to write (default: print only)")
    args = parser.parse_args(argv)
    start = time.time()
    registry = Registry()
    pipe = Pipeline.load(args.model, registry=registry)
    ar_pipe = Pipeline.load(args.ar, registry=registry) if args.ar else None
    records = load()
    train = [r.seq for r in records if r.split == "train"]
    held_records = [r.seq for r in records if r.split == "valid"]
    rng = np.random.default_rng(args.seed)
    tiles = held_out_tiles(pipe, registry)
    parts = []
    text, best = likelihood(args, pipe, registry, train, tiles)
    if "likelihood" in args.sections:
        parts.append("## Held-out likelihood\n\n" + text)
    if "sampler" in args.sections:
        parts.append("## Sampler settings\n\n" + sampler_section(args, pipe, held_records, rng))
    if "samples" in args.sections:
        parts.append("## Generated sequences\n\n" + samples_section(args, pipe, train, held_records, best, rng)[0])
    if "inpainting" in args.sections:
        parts.append("## In-painting\n\n" + inpainting_section(args, pipe, ar_pipe, held_records, best, rng))
    if "conditioning" in args.sections:
        parts.append("## Class conditioning and guidance\n\n" + conditioning_section(args, pipe, records, rng))
    command = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    text = f"# DNA model: measured figures\n\n{stamp('Figures of the shipped DNA model.', command, start)}\n\n" + \
        "\n\n".join(parts) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
