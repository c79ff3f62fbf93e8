"""The code model's figures, in one command that writes ``docs/results/code.md``:

1. **Held-out bits per byte** of the diffusion model (ELBO, an upper bound on its NLL) beside the exact NLL of the
   autoregressive baseline of the same size and training budget (``configs/code-ar.toml``), on the same windows
   of the held-out modules.
2. **Generation from signatures**: held-out functions (top-level functions and methods) prompted by their
   signature (the ``<|python|>`` tag, decorators and ``def`` line); the first complete unit of prompt +
   generated code must parse (``ast``). Several policies and step counts, and the autoregressive baseline, with
   forward passes (NFE) per token and tokens per second measured in the same run. Held-out functions with
   doctests are also prompted with their signature and docstring, and the doctests run on the result.
3. **Infilling**: held-out functions with one body line, or one block (the body of a compound statement),
   hidden: exact match (ignoring trailing whitespace) and syntax validity of prefix + fill + suffix, for a hole
   of the true length (``<mask:n>``), a variable-length hole (``<blank:N>``: the model decides the length), and
   the autoregressive baseline given only the prefix (and the true length).

Holes and prompts are cut at token boundaries of the whole unit's tokenization and handed to the model as
`unidiff.data.Tokens`, so the model sees the tokens it would see in the file (BPE pieces of a cut text would
differ at the cut).

``python -m unidiff_code.measure --ar runs/code-ar/model --out docs/results/code.md``
"""

from __future__ import annotations

import ast
import time
from dataclasses import dataclass

import torch

from unidiff.cli import Parser
from unidiff.data import Segment, Tokens
from unidiff.training.evaluate import evaluate_model
from unidiff.pipeline import Pipeline
from unidiff.plugins import Registry
from unidiff.report import markdown_table, stamp
from unidiff_code.corpus import functions, module_files, read_source
from unidiff_code.metrics import doctest_units, first_unit, normalised_match, run_doctests, syntax_valid

GEN_LENGTH = 128  # tokens generated after a signature
LINE_HOLE, BLOCK_HOLE = 32, 64  # sizes of the variable-length holes


@dataclass
class Case:
    """A held-out function as tokens, with a token span [a, b) to generate."""

    path: str
    name: str
    ids: list[int]  # the tag, then the function's tokens
    a: int
    b: int


def token_offsets(code, ids: list[int]) -> list[int]:
    """Byte offset in the source of each token of ``tag + source`` (the tag, which has no source bytes, gets 0)."""
    out, at = [], 0
    for i in ids:
        out.append(at)
        if i != code.tag_id:
            at += len(code.tokenizer.id_to_token(i))  # one byte-level symbol per byte
    return out


def span_tokens(offsets: list[int], start: int, stop: int) -> tuple[int, int]:
    """The tokens that begin inside the bytes [start, stop)."""
    inside = [k for k, o in enumerate(offsets) if start <= o < stop and k > 0]
    return (inside[0], inside[-1] + 1) if inside else (0, 0)


def line_starts(source: bytes) -> list[int]:
    starts = [0]
    for k, ch in enumerate(source):
        if ch == 0x0A:
            starts.append(k + 1)
    return starts


def held_out(code, max_tokens: int) -> list[tuple[object, list[int], ast.AST]]:
    """Held-out functions that parse alone and fit in ``max_tokens`` with their tag: (unit, ids, def node)."""
    out = []
    for rel, path in module_files("valid"):
        source = read_source(path)
        for unit in functions(source or "", rel):
            try:
                node = ast.parse(unit.source).body[0]
            except SyntaxError:
                continue
            ids = code.encode(code.tag + unit.source)
            if len(ids) <= max_tokens and node.body[0].lineno > node.lineno:  # the body starts on its own line
                out.append((unit, ids, node))
    return out


def evenly(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    return [items[int(k * len(items) / n)] for k in range(n)]


def signature_cases(code, pool) -> list[Case]:
    cases = []
    for unit, ids, node in pool:
        src = unit.source.encode()
        body_at = line_starts(src)[node.body[0].lineno - 1]
        offsets = token_offsets(code, ids)
        a = next(k for k, o in enumerate(offsets) if k > 0 and o >= body_at)
        cases.append(Case(unit.path, unit.name, ids, a, a))
    return cases


def hole_cases(code, pool, kind: str, limit: int, max_len: int = 256) -> list[Case]:
    """One hidden body line (not the docstring) or one block (a compound statement's suite) per function, whose
    row with a variable-length hole of ``limit`` tokens fits in ``max_len``."""
    cases = []
    for unit, ids, node in pool:
        src = unit.source.encode()
        starts = line_starts(src) + [len(src)]
        body = node.body[1:] if isinstance(node.body[0], ast.Expr) and isinstance(
            getattr(node.body[0], "value", None), ast.Constant) else node.body
        if kind == "line":
            lines = [s for s in body if s.end_lineno == s.lineno]
            if not lines:
                continue
            pick = lines[len(lines) // 2]
            first, last = pick.lineno, pick.end_lineno
        else:
            blocks = [s for s in ast.walk(node) if s is not node and isinstance(s, ast.stmt) and hasattr(s, "body")
                      and isinstance(s.body, list) and len(s.body) and s.body[0].lineno > s.lineno]
            if not blocks:
                continue
            pick = blocks[len(blocks) // 2]
            first, last = pick.body[0].lineno, pick.body[-1].end_lineno
        a, b = span_tokens(token_offsets(code, ids), starts[first - 1], starts[last])
        if 0 < b - a <= limit and b < len(ids) and len(ids) - (b - a) + limit <= max_len:
            cases.append(Case(unit.path, unit.name, ids, a, b))
    return cases


def run(pipe: Pipeline, segments: list[list[Segment]], before: list[str], after: list[str], batch: int = 50,
        **kw):
    """Generate in batches; returns (the generated text of each sample: its decoded row less the given ``before``
    and ``after`` texts, total NFE, generated tokens, seconds)."""
    fills, nfe, tokens, seconds = [], 0, 0, 0.0
    for i in range(0, len(segments), batch):
        part = {k: v[i:i + batch] if isinstance(v, list) else v for k, v in kw.items()}  # per-sample settings
        gen = pipe.generate(segments[i:i + batch], **part)
        for text, b, a in zip(gen.texts, before[i:i + batch], after[i:i + batch]):
            fills.append(text[len(b):len(text) - len(a)])
        nfe += int(sum(gen.nfe))
        tokens += int(sum(gen.generated))
        seconds += gen.seconds
    return fills, nfe, tokens, seconds


def likelihood(args, registry, models) -> str:
    docs = registry.dataset("python")[0]("valid")
    n_bytes = sum(len(d.encode()) - len(b"<|python|>") for d in docs)
    rows = []
    for label, path in models:
        res, info = evaluate_model(path, registry, samples=1 if "autoregressive" in label else 4)
        bits = res.bits_per_token["code"]
        rows.append(f"| {label} | {info['objective']} | {bits:.4f} | {bits * res.tokens['code'] / n_bytes:.4f} | "
                    f"{res.tokens['code']} |")
        print(rows[-1], flush=True)
    return (f"**Held-out likelihood.** Held-out modules ({len(docs)} units, {n_bytes:,} bytes) in non-overlapping "
            f"windows covering every token; bits per byte = total bits / bytes of the units' source (the opening tag "
            f"is a token, not a byte).\n\n"
            + markdown_table("| model | objective | bits/token | bits/byte | tokens scored |", rows))


def generation(args, pipe, ar, pool) -> str:
    code = pipe.modalities["code"]
    cases = evenly(signature_cases(code, pool), args.num)
    segs = [[Segment("code", Tokens(c.ids[:c.a])), Segment("code", role="generate", length=GEN_LENGTH)]
            for c in cases]
    prompts = [code.decode(c.ids[:c.a]) for c in cases]  # the tag's text included, as the decoded rows have it
    tag = len(code.tag)
    settings = [("diffusion", pipe, dict(policy="confidence", temperature=0.8, steps=s)) for s in (32, 64, 128)]
    settings += [("diffusion", pipe, dict(policy="ancestral", temperature=1.0, steps=s)) for s in (64, 128)]
    if ar is not None:
        settings.append(("autoregressive", ar, dict(temperature=0.8)))
    rows = []
    for label, model, kw in settings:
        fills, nfe, tokens, seconds = run(model, segs, prompts, [""] * len(segs), seed=args.seed, **kw)
        units = [first_unit(p[tag:] + f) for p, f in zip(prompts, fills)]
        ok = sum(syntax_valid(u) for u in units)
        rows.append(f"| {label} | {kw.get('policy', 'left to right')} | {kw.get('temperature')} | "
                    f"{kw.get('steps', GEN_LENGTH)} | {ok / len(cases):.3f} | {nfe / tokens:.3f} | "
                    f"{tokens / seconds:.0f} |")
        print(rows[-1], flush=True)
    table = (f"**Generation from signatures.** {len(cases)} held-out functions prompted by their signature; "
             f"{GEN_LENGTH} tokens generated; the first complete unit of prompt + generation must parse. NFE per "
             f"token and tokens/s on this machine, in the same run.\n\n"
             + markdown_table("| model | policy | temperature | steps | syntax valid | NFE/token | tokens/s |", rows))
    return table + "\n\n" + doctests(args, pipe, ar)


def doctests(args, pipe, ar) -> str:
    """Held-out functions with doctests, prompted by signature + docstring; their doctests run on the result."""
    code = pipe.modalities["code"]
    cases = []
    for rel, path in module_files("valid"):
        source = read_source(path) or ""
        for unit in doctest_units(source):
            node = ast.parse(unit).body[0]
            cut = line_starts(unit.encode())[node.body[0].end_lineno]  # after the docstring
            ids = code.encode(code.tag + unit)
            offsets = token_offsets(code, ids)
            a = next((k for k, o in enumerate(offsets) if k > 0 and o >= cut), None)
            if a is not None and a + GEN_LENGTH <= 256:
                cases.append((ids[:a], source))  # the whole module runs first, as an import would
    if not cases:
        return "No held-out function has doctests that fit in a window."
    rows = []
    for label, model in [("diffusion", pipe)] + ([("autoregressive", ar)] if ar is not None else []):
        kw = dict(policy="confidence", steps=GEN_LENGTH) if label == "diffusion" else {}
        segs = [[Segment("code", Tokens(ids)), Segment("code", role="generate", length=GEN_LENGTH)]
                for ids, _ in cases]
        heads = [code.decode(ids) for ids, _ in cases]
        fills, *_ = run(model, segs, heads, [""] * len(segs), seed=args.seed, temperature=0.8, **kw)
        outcomes = [run_doctests(first_unit(h[len(code.tag):] + f), context)
                    for h, (_, context), f in zip(heads, cases, fills)]
        rows.append(f"| {label} | {len(cases)} | " + " | ".join(
            str(outcomes.count(k)) for k in ("pass", "fail", "error", "timeout")) + " |")
        print(rows[-1], flush=True)
    return ("**Execution check.** Held-out functions with doctests, prompted by signature and docstring; the "
            "doctests run on the first complete unit.\n\n"
            + markdown_table("| model | functions | doctests pass | fail | error | timeout |", rows))


def infilling(args, pipe, ar, pool) -> str:
    code = pipe.modalities["code"]
    rows = []
    for kind, limit in (("line", LINE_HOLE), ("block", BLOCK_HOLE)):
        cases = evenly(hole_cases(code, pool, kind, limit), args.num)
        truth = [code.decode(c.ids[c.a:c.b]) for c in cases]
        before = [code.decode(c.ids[:c.a]) for c in cases]
        after = [code.decode(c.ids[c.b:]) for c in cases]
        variants = [("diffusion", "fixed", pipe), ("diffusion", "variable", pipe)]
        if ar is not None:
            variants.append(("autoregressive, prefix only", "fixed", ar))
        for label, hole, model in variants:
            segs = []
            for c in cases:
                n = c.b - c.a
                s = [Segment("code", Tokens(c.ids[:c.a])),
                     Segment("code", role="generate", length=n if hole == "fixed" else limit,
                             variable=hole == "variable")]
                if model is pipe:
                    s.append(Segment("code", Tokens(c.ids[c.b:])))
                segs.append(s)
            steps = None if model is ar else [limit if hole == "variable" else c.b - c.a for c in cases]
            fills, nfe, tokens, _ = run(model, segs, before, after if model is pipe else [""] * len(segs),
                                        seed=args.seed, policy="confidence", temperature=0.0, steps=steps)
            exact = sum(normalised_match(f, t) for f, t in zip(fills, truth))
            valid = sum(syntax_valid(f, p[len(code.tag):], s) for f, p, s in zip(fills, before, after))
            lengths = sum(len(code.encode(f)) == c.b - c.a for f, c in zip(fills, cases))
            rows.append(f"| {kind} | {label} | {hole if hole == 'fixed' else f'up to {limit}'} | {len(cases)} | "
                        f"{exact / len(cases):.3f} | {valid / len(cases):.3f} | {lengths / len(cases):.3f} | "
                        f"{nfe / len(cases):.1f} |")
            print(rows[-1], flush=True)
    return ("**Infilling.** Held-out functions with one body line or one block hidden (greedy: confidence policy at "
            "temperature 0, one step per position; the autoregressive baseline sees only the prefix and is told the "
            "true length). Exact match ignores trailing whitespace; valid: prefix + fill + suffix parses.\n\n"
            + markdown_table("| hidden | model | hole | cases | exact match | syntax valid | right length | NFE/fill |",
                             rows))


SECTIONS = ("likelihood", "generation", "infilling")


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_code.measure") -> None:
    p = Parser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="code")
    p.add_argument("--ar", help="the autoregressive baseline's model folder (configs/code-ar.toml)")
    p.add_argument("--num", type=int, default=200, help="functions per table (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--out", help="write the tables (Markdown) to this file")
    args = p.parse_args(argv)
    t0 = time.time()
    torch.manual_seed(args.seed)
    registry = Registry()
    pipe = Pipeline.load(args.model)
    ar = Pipeline.load(args.ar) if args.ar else None
    pool = held_out(pipe.modalities["code"], max_tokens=256 - GEN_LENGTH)
    parts = []

    def save() -> None:  # after every section, so a late failure keeps what was measured
        if args.out:
            command = f"{prog}{' --ar ' + args.ar if args.ar else ''}"
            with open(args.out, "w") as fh:
                fh.write("# Code model measurements\n\n" + stamp(f"Model `{args.model}`.", command, t0) + "\n\n"
                         + "\n\n".join(parts) + "\n")

    if "likelihood" in args.sections:
        models = [(f"unidiff diffusion ({pipe.model.num_params() / 1e6:.2f} M parameters)", args.model)]
        if args.ar:
            models.append((f"autoregressive ({ar.model.num_params() / 1e6:.2f} M parameters)", args.ar))
        parts.append(likelihood(args, registry, models))
        save()
    if "generation" in args.sections:
        parts.append(generation(args, pipe, ar, pool))
        save()
    if "infilling" in args.sections:
        parts.append(infilling(args, pipe, ar, held_out(pipe.modalities["code"], max_tokens=256)))
        save()
    print("\n\n".join(parts))


if __name__ == "__main__":
    from unidiff.cli import run as run_command

    raise SystemExit(run_command(main))
