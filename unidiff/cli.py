"""The ``unidiff`` command: train, generate, infill, edit, caption, inpaint, eval, plugins.

Every user error (`UnidiffError`) is printed as one line, ``unidiff: error: ...``, with exit status 2 and no
traceback; generated content goes to stdout (or ``--out``), reports go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Callable

from unidiff.checks import MAX_GUIDANCE, MAX_TEMPERATURE, SEED_MAX
from unidiff.errors import UnidiffError
from unidiff.fs import atomic_path, ensure_writable

EXIT_USER_ERROR = 2


def cmd_train(args) -> None:
    from unidiff.training.config import load_config
    from unidiff.device import run_conditions
    from unidiff.training.train import train

    cfg = load_config(args.config, args.set or [])
    if args.no_progress or args.quiet:
        cfg.train.progress = False
    result = train(cfg, fresh=args.fresh)
    if result.eval is not None:
        from unidiff.training.objectives import objective_of

        print(f"held-out {objective_of(cfg.model).name}: {result.eval.summary()}", file=sys.stderr)
    model = result.out_dir / "model"
    where = f"model: {model} ({run_conditions(result.precision)})"
    if result.steps_run == 0:
        where = where if model.is_dir() else f"{model} is gone: train again with --fresh to make it anew"
        print(f"{result.out_dir / 'last'} had already finished all {result.step} steps: nothing to train; {where}. "
              f"Raise train.steps to train on, or pick a fresh train.out_dir", file=sys.stderr)
    else:
        resumed = f" (resumed at step {result.step - result.steps_run})" if result.step > result.steps_run else ""
        print(f"trained {result.steps_run} steps{resumed} to step {result.step} in {result.seconds:.0f} s; {where}",
              file=sys.stderr)


def policy_options(args) -> dict:
    if args.threshold is None:
        return {}
    if args.policy != "threshold":  # None (the model's default) included
        raise UnidiffError(f"--threshold goes with --policy threshold, not --policy {args.policy}")
    return {"threshold": args.threshold}


def schedule_spec(args) -> str | None:
    """--schedule, or with --times the explicit grid over it (``grid:times=...,base=...``)."""
    if args.times is None:
        return args.schedule
    times = [t.strip() for t in args.times.split(",")]
    try:
        [float(t) for t in times]
    except ValueError:
        raise UnidiffError(f"--times {args.times}: give the grid's times as numbers from 1 down to 0, e.g. "
                           f"--times 1,0.6,0.2,0") from None
    return f"grid:times={'/'.join(times)},base={args.schedule or 'linear'}"


def sampling_options(args) -> dict:
    return dict(steps=args.steps, policy=args.policy, policy_options=policy_options(args), seed=args.seed,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, block_length=args.block_length,
                schedule=schedule_spec(args), remask=args.remask, guidance=args.guidance, symmetric=args.symmetric,
                cache=args.cache_mode or args.cache, max_batch=args.max_batch, progress=not args.quiet)


def emit(gen, modality, args) -> None:
    """Samples to --out (in the modality's format) or stdout; the NFE and speed report to stderr."""
    from unidiff.modality import optional

    if args.out:
        out = Path(args.out)
        with atomic_path(out, "give --out another path") as tmp:  # a full disk leaves no half-written file
            modality.write(gen.texts, tmp)
        print(f"wrote {out}", file=sys.stderr)
    else:
        show = optional(modality, "show")  # a terminal preview of content that is not text (images)
        for i, content in enumerate(gen.texts):
            if args.num > 1:
                print(f"===== sample {i} (seed {args.seed + i}) =====")
            print(show(content) if show else content)
    print(gen.report(), file=sys.stderr)


def load_pipeline(args):
    """The model of a sampling command, on its device, precision and quantization."""
    from unidiff.pipeline import Pipeline

    return Pipeline.load(args.model, device=args.device, precision=args.precision, quantize=args.quantize)


def check_out(args) -> None:
    """Refuse an --out that cannot be written before any work: a folder, or a place where no file can be made."""
    if getattr(args, "out", None):
        out = Path(args.out)
        if out.name in ("", ".", "..") or out.is_dir():
            raise UnidiffError(f"--out {args.out} is a folder: give the path of a file (e.g. {out / 'out'})")
        ensure_writable(out.parent, "give --out another path")


def _sample_command(args, call) -> None:
    """Load the model, run ``call(pipeline, **sampling options)``, write the samples and the report."""
    check_out(args)
    pipe = load_pipeline(args)
    emit(call(pipe, **sampling_options(args)), pipe.modality(args.modality), args)


def cmd_generate(args) -> None:
    if args.sliding_window:
        _sample_command(args, _complete_long(args))
        return
    if args.overlap is not None:
        raise UnidiffError("--overlap sets the sliding window's overlap: add --sliding-window")
    _sample_command(args, lambda pipe, **kw: pipe.complete(args.prompt, modality=args.modality, num=args.num,
                                                           length=args.length, condition=args.condition, **kw))


def _complete_long(args):
    """`unidiff generate --sliding-window`: --length beyond the context; --steps are spread over the windows."""
    if args.length is None:
        raise UnidiffError("--sliding-window needs --length (the whole output, longer than the context)")

    def call(pipe, steps=None, **kw):
        spt = None if steps is None else steps / args.length
        return pipe.complete_long(args.prompt, modality=args.modality, num=args.num, length=args.length,
                                  condition=args.condition, overlap=args.overlap, steps_per_token=spt, **kw)
    return call


def read_content(m, path: str):
    """A file's content for modality ``m``: its own reader (``to_array`` for images), else UTF-8 text."""
    from unidiff.modality import optional

    if not Path(path).is_file():
        raise UnidiffError(f"no such file: {path}")
    if (to_array := optional(m, "to_array")) is not None:
        return to_array(path)
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnidiffError(f"{path} is not UTF-8 text, which the {m.name} modality reads; give a file it reads or "
                           f"a model of that kind of file (e.g. --model image for an image)") from None


def cmd_caption(args) -> None:
    pipe = load_pipeline(args)
    m = pipe.modality(args.modality)
    pipe.caption_modality(m)  # a model that cannot caption says so before its file is read
    content = read_content(m, args.file)
    gen = pipe.caption(content, modality=args.modality, num=args.num, length=args.length,
                       **sampling_options(args))
    for i, text in enumerate(gen.contents(pipe.config["condition_modality"])):
        print(f"{args.file}\t{i}\t{text}" if args.num > 1 else text)
    print(gen.report(), file=sys.stderr)


def cmd_inpaint(args) -> None:
    from unidiff.data import regenerate_positions
    from unidiff.modality import checked_encode, optional

    check_out(args)
    pipe = load_pipeline(args)
    m = pipe.modality(args.modality)
    cells_of_box = optional(m, "cells_of_box")
    if cells_of_box is None:
        raise UnidiffError(f"the {m.name} modality has no 2-D regions to in-paint; use unidiff infill with "
                           f"<mask:N> holes")
    segments = regenerate_positions(m.name, checked_encode(m, read_content(m, args.file)),
                                    cells_of_box(args.box))
    segments = pipe.conditioned(args.prompt, segments)
    emit(pipe.generate([segments] * args.num, **sampling_options(args)), m, args)


def read_template(arg: str) -> str:
    """The infill argument: a template, or the path of a file that holds one (an argument without holes or line
    breaks is read as a file)."""
    from unidiff.data import HOLE

    path = Path(arg)
    if HOLE.search(arg) is not None or "\n" in arg:
        return arg
    if not path.is_file():
        raise UnidiffError(f"the template {arg!r} has no hole to fill, and no file {path} exists to read one "
                           f"from: mark holes with <mask:N> or <blank:N> (e.g. 'To be, <mask:12> be') or give the "
                           f"path of a file that holds such a template")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnidiffError(f"cannot read the template file {path}: {e}") from None


def cmd_infill(args) -> None:
    template = read_template(args.template)
    _sample_command(args, lambda pipe, **kw: pipe.infill(template, modality=args.modality, num=args.num,
                                                         condition=args.condition, **kw))


def cmd_edit(args) -> None:
    _sample_command(args, lambda pipe, **kw: pipe.edit(args.content, args.strength, modality=args.modality,
                                                       num=args.num, order=args.order, prompt=args.prompt, **kw))


def cmd_eval(args) -> None:
    import time

    from unidiff.device import run_conditions
    from unidiff.training.evaluate import evaluate_model

    start = time.time()
    result, info = evaluate_model(args.model, device=args.device, precision=args.precision, max_windows=args.windows,
                                  samples=args.samples, seed=args.seed, progress=not args.quiet)
    print(f"{args.model}: held-out {info['objective']} on {info['dataset']}/{info['split']} "
          f"({info['windows']} windows of {info['seq_len']} tokens, {args.samples} time sample(s) each)")
    for name, bits in result.bits_per_token.items():
        print(f"  {name}: {bits:.4f} bits/token  ({result.nats_per_token[name]:.4f} nats/token, "
              f"{result.tokens[name]} tokens)")
    print(f"evaluated in {time.time() - start:.1f} s ({run_conditions(info['precision'])})", file=sys.stderr)


def cmd_plugins(args) -> None:
    from unidiff.plugins import Registry

    reg = Registry()
    for info in reg.info.values():
        provides = "; ".join(f"{kind}: {', '.join(sorted(names))}"
                             for kind, names in info.provides.items()) or "nothing"
        print(f"{info.name}  ({info.package} {info.version})  {provides}")
    for name, why in reg.broken.items():
        print(f"{name}  BROKEN: {why}")


def _number(cast, ok, rule: str):
    """An argparse type: ``cast(text)``, refused with "must be <rule>" unless ``ok(value)``."""
    kind = "a whole number" if cast is int else "a number"

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value

    return parse


positive = _number(int, lambda v: v >= 1, "at least 1")  # argparse types, also for plugins' commands
_fraction = _number(float, lambda v: 0.0 <= v <= 1.0, "between 0 and 1")
_guidance = _number(float, lambda v: 0.0 <= v <= MAX_GUIDANCE, f"a number in [0, {MAX_GUIDANCE}]")
_temperature = _number(float, lambda v: 0.0 <= v <= MAX_TEMPERATURE, f"a number in [0, {MAX_TEMPERATURE}]")
_probability = _number(float, lambda v: 0.0 < v <= 1.0, "in (0, 1]")
_count = _number(int, lambda v: v >= 0, "at least 0")
_seed = _number(int, lambda v: 0 <= v <= SEED_MAX, "between 0 and 2**62")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (``--help`` shows the usage), and an
    ``epilog_fn`` writes the epilog only when help is shown (e.g. what loading the plugins tells)."""

    def __init__(self, *args, epilog_fn=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.epilog_fn = epilog_fn

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"unidiff: error: {message} (see {self.prog} --help)\n")

    def format_help(self) -> str:
        if self.epilog_fn is not None:
            self.epilog = self.epilog_fn()
        return super().format_help()


def common_arguments() -> argparse.ArgumentParser:
    """The options every command takes: CPU threads and quiet."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--threads", type=positive, help="CPU threads for torch (default: $UNIDIFF_THREADS, else the "
                                                     "cores other processes leave free; see bench/threads-cpu.md)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar (it is shown only on a terminal)")
    return p


def train_help() -> str:
    """The epilog of ``unidiff train --help``: config sections and keys with their defaults, datasets, configs."""
    import dataclasses
    import json
    import textwrap

    from unidiff.training.config import Config
    from unidiff.plugins import Registry

    lines = ["config sections and keys (TOML; --set SECTION.KEY=VALUE overrides one):"]
    for section in dataclasses.fields(Config):
        sub = getattr(Config(), section.name)
        keys = ", ".join(f"{f.name} = {json.dumps(getattr(sub, f.name))}" for f in dataclasses.fields(sub))
        lines += textwrap.wrap(f"[{section.name}] {keys}", 110, initial_indent="  ", subsequent_indent="    ")
    reg = Registry()
    datasets = ", ".join(f"{n} ({reg.dataset(n)[1].get('modality', '?')})" for n in reg.names("datasets"))
    lines += ["", *textwrap.wrap(f"registered datasets (data.dataset): {datasets or 'none'}", 110,
                                 subsequent_indent="  "),
              "", *textwrap.wrap("the shipped configs live in configs/ of the unidiff repository (e.g. "
                                 "configs/text-base.toml); each model's config.json records the config it was "
                                 "trained with", 110)]
    return "\n".join(lines)


def add_sampling_arguments(p: argparse.ArgumentParser, model: str = "text") -> None:
    """The options the sampling commands share: model, number of samples, sampler, output."""
    p.add_argument("--model", default=model, help=f"registered model name or model folder (default: {model})")
    p.add_argument("--modality", help="modality to generate (default: the model's only one)")
    p.add_argument("--num", type=positive, default=1, help="number of samples (default 1)")
    p.add_argument("--steps", type=positive, help="sampling steps (default: the model's recommendation, else one "
                                                    "per generated token)")
    p.add_argument("--policy", help="unmasking policy: confidence, margin, entropy, random, ancestral, threshold, or "
                                    "a plugin's (default: the model's recommendation, else confidence)")
    p.add_argument("--threshold", type=_probability, help="confidence threshold of --policy threshold (default 0.9)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed; sample i uses seed + i (default 0)")
    p.add_argument("--temperature", type=_temperature, help="proposal temperature, 0 = greedy (default: the model's "
                                                      "recommendation, else 1)")
    p.add_argument("--top-k", type=_count, default=0, help="keep only the k likeliest tokens (default: all)")
    p.add_argument("--top-p", type=_probability, default=1.0, help="nucleus sampling mass (default 1: off)")
    p.add_argument("--block-length", type=positive, help="decode left to right in blocks of this many tokens "
                                                          "(semi-autoregressive, as LLaDA); default: one block")
    p.add_argument("--schedule", help="time grid of the steps: linear, cosine (MaskGIT: few tokens first, many "
                                      "last), polynomial[:power=P] or a plugin's, as NAME[:KEY=VALUE,...] "
                                      "(default: the model's recommendation, else linear)")
    p.add_argument("--times", metavar="1,...,0",
                   help="an explicit time grid over --schedule (default linear): S steps visit these S+1 times, "
                        "from 1 down to 0 (e.g. --steps 3 --times 1,0.6,0.2,0); other step counts interpolate it")
    p.add_argument("--remask", type=_fraction, help="ReMDM remasking strength, 0 (off) to 1: committed tokens may be "
                                                     "re-masked and predicted again (default: the model's "
                                                     "recommendation, else 0)")
    p.add_argument("--guidance", type=_guidance, help="classifier-free guidance scale w: uncond + w * (cond - "
                                                       "uncond), the given content being the condition; 1 = off, "
                                                       "0 = unconditional; costs a second forward pass per step")
    p.add_argument("--symmetric", action="store_true", help="average each prediction with the model's prediction "
                                                              "on the mirrored sequence (dna: the reverse-complement "
                                                              "strand); costs a second forward pass per step")
    p.add_argument("--cache", action="store_true",
                   help="approximate key/value cache (diffusion models; fastest with --block-length; quality cost "
                        "measured in bench/): a full pass when a block starts, its other steps compute only the "
                        "block (Fast-dLLM's dual cache)")
    p.add_argument("--cache-mode", choices=("dual", "delta"),
                   help="the cache's policy (implies --cache): dual (as --cache), or delta: no full pass after the "
                        "first, each step computes the block's masked positions and the tokens committed since")
    p.add_argument("--max-batch", type=positive, help="generate at most this many samples at once (continuous "
                                                         "batching: a finished sample's slot goes to the next one)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="forward-pass precision (default auto: bf16 on GPUs, fp32 on the CPU; --precision bf16 is "
                        "faster on CPUs with AMX, but a sample may then depend on its batch-mates)")
    p.add_argument("--quantize", choices=("int8",), help="int8 linear layers (CPU only; fp32 around them)")
    p.add_argument("--out", help="write samples to this file in the modality's format instead of stdout")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda")


CONDITION_HELP = ("a condition given first, in the model's condition modality: e.g. a class for the dna model "
                  "(plant, animal or microbe), a title line for the text model")


def build_parser(registry=None) -> argparse.ArgumentParser:
    """The ``unidiff`` parser: the core commands, and the commands of ``registry``'s plugins (listed with their
    help; `main` runs them before this parser sees their arguments)."""
    from unidiff import __version__

    p = Parser(prog="unidiff", description="Discrete diffusion for text, code, DNA and images.")
    p.add_argument("--version", action="version", version=f"unidiff {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    common = [common_arguments()]

    t = sub.add_parser("train", help="train a model from a TOML config", parents=common, epilog_fn=train_help,
                       formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "Train (or resume: a run restarts from OUT_DIR/last when it exists) a denoiser from a config in configs/."))
    t.add_argument("config", help="TOML file with [model], [data] and [train] sections")
    t.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set train.steps=100 (repeatable)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--fresh", action="store_true",
                   help="discard OUT_DIR/last and OUT_DIR/log.jsonl of an earlier run and start at step 0 "
                        "(OUT_DIR/model stays until the first save replaces it, so --set train.init=OUT_DIR/model "
                        "may start from it)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("generate", help="generate samples from a model", parents=common, description=(
        "Generate NUM samples: the prompt (if any) followed by LENGTH generated tokens. Content goes to stdout "
        "or --out; the number of forward passes (NFE) and tokens/s go to stderr."))
    g.add_argument("--prompt", help="given content that the samples continue")
    g.add_argument("--condition", help=CONDITION_HELP)
    g.add_argument("--length", type=positive, help="tokens to generate (default: the modality's default length, "
                                                     "cut to the model's context)")
    g.add_argument("--sliding-window", action="store_true",
                   help="an output longer than the model's context: each window after the first continues the last "
                        "--overlap tokens of the one before (Pipeline.complete_long); --steps are spread over them")
    g.add_argument("--overlap", type=_count, help="tokens each window keeps from the last (default: half the window)")
    add_sampling_arguments(g)
    g.set_defaults(func=cmd_generate)

    f = sub.add_parser("infill", help="fill holes in a given text", parents=common, description=(
        "Fill every hole of TEMPLATE given everything around it: <mask:N> with exactly N generated tokens, "
        "<blank:N> with up to N (unused positions become blanks, dropped from the output; needs a model trained "
        "with holes, as the shipped text and code models are), "
        "e.g. unidiff infill $'ROMEO\\nO, <blank:12> art thou Romeo?'"))
    f.add_argument("template", help="content with <mask:N> and <blank:N> holes, or a file that holds it "
                                    "(e.g. unidiff infill --model code holes.py)")
    f.add_argument("--condition", help=CONDITION_HELP)
    add_sampling_arguments(f)
    f.set_defaults(func=cmd_infill)

    d = sub.add_parser("edit", help="re-generate a fraction of a given text", parents=common, description=(
        "Re-mask a fraction STRENGTH of the tokens of CONTENT and generate them again given the rest: strength 0 "
        "returns the input, 1 regenerates it entirely. --prompt edits under a different condition (style transfer), "
        "e.g. unidiff edit --strength 0.3 --prompt $'<macbeth>\\n' 'To be, or not to be, that is the question'"))
    d.add_argument("content", help="the content to edit")
    d.add_argument("--strength", type=_fraction, required=True, help="fraction of tokens to regenerate, 0 to 1")
    d.add_argument("--order", choices=("random", "confidence"), default="random",
                   help="which tokens to re-mask: random (default, per seed) or confidence (the ones the model finds "
                        "least likely in their context first)")
    d.add_argument("--prompt", help="a condition given before the content (the output starts with it)")
    add_sampling_arguments(d)
    d.set_defaults(func=cmd_edit)

    c = sub.add_parser("caption", help="describe an image (a model's condition from its content)", parents=common, description=(
        "Generate the condition of given content: for the image model, a caption of a 28x28 image file, e.g. "
        "unidiff caption --model image cat.png. Prints one caption per sample."))
    c.add_argument("file", help="the content: an image file for the image model")
    c.add_argument("--length", type=positive, help="longest caption in tokens (default: the longest the model was "
                                                     "trained on)")
    add_sampling_arguments(c, model="image")
    c.set_defaults(func=cmd_caption)

    n = sub.add_parser("inpaint", help="regenerate a box of an image", parents=common, description=(
        "Regenerate the part of an image inside --box (pixels x0,y0,x1,y1, x1 and y1 exclusive; every 4x4-pixel "
        "cell it touches is redrawn), optionally conditioned on a caption, e.g. unidiff inpaint --model image "
        "cat.png --box 0,0,14,28 --prompt 'a cat' --out fixed.png"))
    n.add_argument("file", help="the image file")
    n.add_argument("--box", required=True, help="the region to regenerate: x0,y0,x1,y1 in pixels")
    n.add_argument("--prompt", help="a caption to condition on (default: none)")
    add_sampling_arguments(n, model="image")
    n.set_defaults(func=cmd_inpaint)

    e = sub.add_parser("eval", help="held-out ELBO of a model", parents=common, description=(
        "Estimate the masked-diffusion ELBO (an upper bound on the NLL) in bits per token on the held-out split "
        "of the dataset the model was trained on."))
    e.add_argument("--model", default="text", help="registered model name or model folder (default: text)")
    e.add_argument("--windows", type=positive, help="evaluate only the first N held-out windows (default: all)")
    e.add_argument("--samples", type=positive, default=1, help="time samples per window (default 1)")
    e.add_argument("--seed", type=_seed, default=1234, help="seed of the Monte-Carlo estimate (default 1234)")
    e.add_argument("--device", default="auto", help="auto (default), cpu or cuda")
    e.add_argument("--precision", default="fp32", choices=("auto", "fp32", "bf16"),
                   help="forward-pass precision (default fp32: the figures of record do not depend on the machine)")
    e.set_defaults(func=cmd_eval)

    pl = sub.add_parser("plugins", help="list installed plugins", parents=common, description=(
        "List each plugin with its package, version and what it registers; broken plugins are named."))
    pl.set_defaults(func=cmd_plugins)
    if registry is not None:
        add_plugin_commands(sub, registry)
    return p


def add_plugin_commands(sub, registry) -> None:
    """A subparser per plugin command (help only); a two-word command's first word is a group of them."""
    groups = {}
    for name in registry.names("commands"):
        owner = registry.plugin_of("commands", name)
        text = registry.command_help(name) + (f" [{owner.name} plugin]" if owner else "")
        first, _, second = name.partition(" ")
        if not second:
            sub.add_parser(name, help=text, add_help=False)
            continue
        if first not in groups:
            group = sub.add_parser(first, help=f"{first} commands of plugins (unidiff {first} --help lists them)",
                                   description=f"Commands that plugins register under {first!r}.")
            groups[first] = group.add_subparsers(dest="plugin_command", required=True, metavar="COMMAND",
                                                 parser_class=Parser)
        groups[first].add_parser(second, help=text, add_help=False)


def plugin_command(registry, argv: list[str]) -> tuple[str, list[str]] | None:
    """(command name, its arguments) if ``argv`` starts with a plugin's command, else None."""
    names = set(registry.names("commands"))
    for words in (2, 1):
        if len(argv) >= words and " ".join(argv[:words]) in names:
            return " ".join(argv[:words]), argv[words:]
    return None


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"unidiff: warning: {message}", file=sys.stderr)


def run(command: Callable[[], object]) -> int:
    """Call ``command()`` as a command line and return its exit status: a `UnidiffError` prints as one line
    ``unidiff: error: ...`` (status 2, no traceback), Ctrl-C as ``unidiff: interrupted`` (130), and output piped
    into e.g. head is no error. A plugin's ``python -m`` tool ends with ``raise SystemExit(run(main))``."""
    try:
        command()
    except UnidiffError as e:
        print(f"unidiff: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("unidiff: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        sys.stderr.close()  # output piped into e.g. head: not an error
    return 0


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _one_line_warning  # e.g. a broken plugin: one line, not a source listing

    def command() -> None:
        from unidiff.device import set_threads
        from unidiff.plugins import CORE_COMMANDS

        given = sys.argv[1:] if argv is None else list(argv)
        registry = None
        if not given or given[0] not in CORE_COMMANDS:  # help, a plugin's command, or a mistyped name
            from unidiff.plugins import Registry

            registry = Registry()
            if (found := plugin_command(registry, given)) is not None:
                name, rest = found
                set_threads(None)  # the default of every command; a command's own --threads overrides it
                status = registry.command(name)(rest, prog=f"unidiff {name}")
                if isinstance(status, int) and not isinstance(status, bool) and status:
                    raise SystemExit(status)
                return
        args = build_parser(registry).parse_args(given)
        args.argv = given
        set_threads(args.threads)
        args.func(args)

    return run(command)


if __name__ == "__main__":
    sys.exit(main())
