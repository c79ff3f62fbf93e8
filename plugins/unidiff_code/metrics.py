"""Quality metrics for Python snippets: syntax validity, the first complete unit, infill matches and doctests.

Every function takes plain strings (a single ``str`` counts as one snippet), so it judges any code, generated or
not: the code model's functions and infills, or a real module split into its top-level units.

- `parses`, `syntax_valid`, `validity_rate`: does a snippet (inside its infilling prefix and suffix) parse?
- `first_unit`: cut generated text that runs on past the function it was asked for.
- `exact_match`, `normalised_match`: compare an infill with the text that was cut out.
- `top_level_units`, `doctest_units`, `run_doctests`: split a module and run its doctests in a subprocess.
- `summary`: counts and validity rate of a set of snippets.

"Parses" means ``ast.parse`` accepts it: errors found only by the compiler (``return`` outside a function,
``nonlocal`` at module level) do not count. Usage::

    python -m unidiff_code.metrics generated.py [more.py ...] [--doctest]

A file that does not parse as a whole is measured as 0 units (a note on stderr says where it fails), not refused:
a fill that breaks its file is a result. A missing, unreadable, non-UTF-8 or empty file is an error.
"""

from __future__ import annotations

import ast
import doctest
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import tokenize
import warnings
from collections import Counter
from typing import Sequence

from unidiff.errors import UnidiffError

Snippets = str | Sequence[str]
OUTCOMES = ("pass", "fail", "error", "timeout", "none")  # the results of `run_doctests`
_EXIT_CODES = {20: "pass", 21: "fail", 22: "error", 23: "none"}  # how the doctest subprocess reports; else "error"
_MEMORY_LIMIT = 4 << 30  # address space of the doctest subprocess (bytes), so a runaway example cannot starve others
_CLAUSES = {"elif", "else", "except", "finally"}  # keywords that go on a compound statement: no cut
_PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)  # ValueError: a null byte in the source


def as_list(snippets: Snippets) -> list[str]:
    """The snippets as a list; a single string is one snippet (not a list of characters)."""
    return [snippets] if isinstance(snippets, str) else list(snippets)


def parses(text: str) -> bool:
    """Whether ``ast.parse`` accepts the text as it stands; never raises (warnings such as an invalid escape
    sequence are ignored, so ``-W error`` does not change the answer)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(text)
    except _PARSE_ERRORS:
        return False
    return True


def syntax_valid(code: str, prefix: str = "", suffix: str = "") -> bool:
    """Whether ``prefix + code + suffix`` parses; for an infill, prefix and suffix are the text around the hole.

    With an empty prefix, text that does not parse as it stands is tried once more after ``textwrap.dedent``, so
    an indented unit (a method taken out of its class) counts as valid. The dedent is never tried with a prefix:
    there the indentation of the fill is fixed by its surroundings. Empty code parses (an empty module).
    """
    text = prefix + code + suffix
    return parses(text) or (not prefix and parses(textwrap.dedent(text)))


def aligned(snippets: Snippets, texts: Snippets | None, what: str) -> list[str]:
    """``texts`` (prefixes or suffixes) as a list as long as ``snippets``; None gives empty strings."""
    n = len(as_list(snippets))
    if texts is None:
        return [""] * n
    texts = as_list(texts)
    if len(texts) != n:
        raise UnidiffError(f"{n} snippets but {len(texts)} {what}: give one {what[:-2]} per snippet, or none")
    return texts


def validity_flags(snippets: Snippets, prefixes: Snippets | None = None,
                   suffixes: Snippets | None = None) -> list[bool]:
    """`syntax_valid` of each snippet with its prefix and suffix (both optional)."""
    return [syntax_valid(code, p, s) for code, p, s in zip(as_list(snippets), aligned(snippets, prefixes, "prefixes"),
                                                          aligned(snippets, suffixes, "suffixes"))]


def validity_rate(snippets: Snippets, prefixes: Snippets | None = None, suffixes: Snippets | None = None) -> float:
    """Fraction of snippets that are `syntax_valid` (with their prefixes and suffixes); nan for no snippets."""
    flags = validity_flags(snippets, prefixes, suffixes)
    return sum(flags) / len(flags) if flags else float("nan")


def first_unit(code: str) -> str:
    """The text up to the end of its first complete unit: a def or class with its decorators, or a statement.

    The unit starts at the first logical line of code (after leading blank and comment lines, which are kept);
    decorator lines belong to the def or class that follows them. The text is cut before the first later logical
    line that starts at or left of the unit's column (column 0 for a top-level unit) and is not a clause of the
    same statement (``elif``, ``else``, ``except``, ``finally``). Logical lines come from ``tokenize``, so lines
    inside brackets, strings or after a backslash never cut, nor do comment or blank lines.
    Trailing blank lines and trailing comment lines at the unit's column or left of it are dropped: they belong
    to what follows. Text that fails to tokenize (an unclosed bracket or string) before a cut is kept whole.
    """
    lines = io.StringIO(code).readlines()  # split at "\n" only, as the tokenizer does
    cut, column, at_line_start = len(lines), None, True
    try:
        for tok in tokenize.generate_tokens(iter(lines).__next__):
            if tok.type == tokenize.NEWLINE:
                at_line_start = True
            elif at_line_start and tok.type not in (tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT,
                                                    tokenize.ENDMARKER):
                at_line_start = False
                row, col = tok.start
                if column is not None and col <= column and tok.string not in _CLAUSES:
                    cut = row - 1
                    break
                if tok.string != "@" and column is None:
                    column = col
    except (tokenize.TokenError, SyntaxError):  # unclosed bracket or string, inconsistent dedent
        pass
    kept = lines[:cut]
    while kept and (not kept[-1].strip() or (kept[-1].lstrip().startswith("#") and column is not None
                                             and len(kept[-1]) - len(kept[-1].lstrip()) <= column)):
        kept.pop()
    return "".join(kept)


def exact_match(fill: str, truth: str) -> bool:
    """Whether the infill is exactly the text that was cut out."""
    return fill == truth


def normalise(text: str) -> str:
    """The text without trailing whitespace on any line or leading and trailing blank lines; "\\r\\n" reads as
    "\\n". Indentation is kept: it is syntax in Python."""
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def normalised_match(fill: str, truth: str) -> bool:
    """Whether the infill equals the truth up to `normalise` (trailing spaces, blank lines at either end)."""
    return normalise(fill) == normalise(truth)


def unit_spans(tree: ast.Module) -> list[tuple[int, int]]:
    """(first, last) 1-based line of each top-level statement, decorators included; statements that share a line
    (``import a; import b``) are merged into one span."""
    spans: list[tuple[int, int]] = []
    for node in tree.body:
        first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
        if spans and first <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], node.end_lineno))
        else:
            spans.append((first, node.end_lineno))
    return spans


def top_level_units(source: str) -> list[str]:
    """The source lines of each top-level statement of a module (see `unit_spans`), in order; comments and blank
    lines between statements belong to none. Raises SyntaxError if the module does not parse."""
    lines = io.StringIO(source).readlines()
    return ["".join(lines[first - 1:last]) for first, last in unit_spans(ast.parse(source))]


def has_examples(node: ast.AST) -> bool:
    """Whether the docstring of a def or class, or (for a class) of anything defined in its body, holds doctest
    examples: the objects `run_doctests` looks at."""
    doc = ast.get_docstring(node, clean=False)
    if doc and doctest.DocTestParser().get_examples(doc):
        return True
    return isinstance(node, ast.ClassDef) and any(
        has_examples(child) for child in node.body
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def doctest_units(source: str) -> list[str]:
    """The top-level defs and classes of a module that hold doctest examples (a class's methods count), as source
    text with their decorators. Raises SyntaxError if the module does not parse."""
    tree = ast.parse(source)
    lines = io.StringIO(source).readlines()
    wanted = [node.lineno for node in tree.body
              if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and has_examples(node)]
    return ["".join(lines[first - 1:last]) for first, last in unit_spans(tree)
            if any(first <= line <= last for line in wanted)]


def import_lines(source: str) -> str:
    """The module's top-level import statements, one per line: a context for `run_doctests`."""
    return "".join(f"{ast.unparse(node)}\n" for node in ast.parse(source).body
                   if isinstance(node, (ast.Import, ast.ImportFrom)))


# Runs in the doctest subprocess: reads {"context", "unit"} as JSON on stdin, runs the context and the unit in one
# namespace, then the doctests of the unit's top-level defs and classes; the exit code is the outcome.
_RUNNER = r"""
import ast, doctest, json, socket, sys
try:
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = MEMORY if hard == resource.RLIM_INFINITY else min(MEMORY, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
except (ImportError, ValueError, OSError):
    pass

def no_network(*args, **kwargs):
    raise OSError("network access is disabled while doctests run")

socket.socket.connect = socket.socket.connect_ex = no_network
socket.create_connection = socket.getaddrinfo = no_network

class Runner(doctest.DocTestRunner):
    errors = 0

    def report_unexpected_exception(self, out, test, example, exc_info):
        self.errors += 1

data = json.loads(sys.stdin.read())
namespace = {"__name__": "__doctest_unit__"}
try:
    exec(compile(data["context"], "<context>", "exec"), namespace)
    tree = ast.parse(data["unit"])
    exec(compile(tree, "<unit>", "exec"), namespace)
except BaseException:
    sys.exit(22)
runner, examples = Runner(verbose=False), 0
for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in namespace:
        for test in doctest.DocTestFinder().find(namespace[node.name], node.name, module=False, globs=namespace):
            examples += len(test.examples)
            runner.run(test, out=lambda text: None)
sys.exit(22 if runner.errors else 21 if runner.failures else 23 if not examples else 20)
"""


def run_doctests(unit_source: str, context: str = "", timeout: float = 5.0) -> str:
    """Run the doctests of a unit in a fresh ``python -I`` process; one of `OUTCOMES`.

    Args:
        unit_source: one or more top-level defs or classes; the docstrings of each (and, for a class, of what its
            body defines) are run with ``doctest`` default options.
        context: code run first in the same namespace: the module the unit belongs to (the unit then runs
            again after it), or only its imports (`import_lines`).
        timeout: seconds before the process (and anything it started) is killed.

    Returns "pass" (every example gave its expected output), "fail" (some example printed something else),
    "error" (an example raised an exception it did not expect, or the context or unit failed to parse or run),
    "timeout", or "none" (no examples: no process is started when the text holds no ``>>>``). The process runs in
    an empty temporary directory (removed afterwards) with socket connections and name lookups disabled and its
    address space capped at 4 GiB; this stops accidents, not an attacker: it is no sandbox.
    """
    if timeout <= 0:
        raise UnidiffError(f"the doctest timeout must be positive, got {timeout} seconds")
    if not parses(unit_source) or not parses(context):
        return "error"
    if ">>>" not in unit_source:
        return "none"
    payload = json.dumps({"context": context, "unit": unit_source}).encode()
    runner = _RUNNER.replace("MEMORY", str(_MEMORY_LIMIT))
    with tempfile.TemporaryDirectory(prefix="unidiff-doctest-") as cwd:
        with subprocess.Popen([sys.executable, "-I", "-c", runner], cwd=cwd, stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True) as proc:
            try:
                proc.communicate(payload, timeout=timeout)
            except subprocess.TimeoutExpired:
                if hasattr(os, "killpg"):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: children it started go too
                else:
                    proc.kill()
                proc.wait()
                return "timeout"
    return _EXIT_CODES.get(proc.returncode, "error")


def summary(snippets: Snippets, prefixes: Snippets | None = None, suffixes: Snippets | None = None) -> dict:
    """{"n", "valid", "invalid", "empty", "validity_rate"} of a set of snippets; "empty" counts whitespace-only
    snippets (they parse, so they count as valid too)."""
    codes = as_list(snippets)
    flags = validity_flags(codes, prefixes, suffixes)
    return {"n": len(codes), "valid": sum(flags), "invalid": len(codes) - sum(flags),
            "empty": sum(not code.strip() for code in codes),
            "validity_rate": sum(flags) / len(flags) if flags else float("nan")}


def read_module(name: str) -> tuple[str, list[str], str | None]:
    """A Python source file as (its text, its `top_level_units`, None). A file that does not parse as a whole is
    measured, not refused (syntax validity is what is measured): (its text, no units, where it fails, e.g.
    "line 9: invalid syntax"). A file that is missing, unreadable, not UTF-8 or empty is a `UnidiffError`."""
    from pathlib import Path

    from unidiff_code.corpus import read_source

    try:
        source = read_source(Path(name))
    except FileNotFoundError:
        raise UnidiffError(f"no such file: {name}") from None
    except OSError as e:
        raise UnidiffError(f"cannot read {name}: {e.strerror}") from None
    if source is None:
        raise UnidiffError(f"{name} is not UTF-8 text: give Python source files")
    if not source.strip():
        raise UnidiffError(f"{name} is empty: there is no code to measure")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return source, top_level_units(source), None
    except _PARSE_ERRORS as e:
        return source, [], f"line {e.lineno}: {e.msg}" if getattr(e, "lineno", None) else str(e) or type(e).__name__


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_code.metrics") -> None:
    """Split Python files into top-level units (decorators included) and report how many parse on their own and,
    with --doctest, the doctest outcomes of the defs and classes that have examples. A file that does not parse
    as a whole (e.g. a generated fill) counts as 0 units, with a note on stderr saying where it fails."""
    from unidiff.cli import Parser

    p = Parser(prog=prog, description=main.__doc__)
    p.add_argument("files", nargs="+", help="Python source files")
    p.add_argument("--doctest", action="store_true", help="run the doctests of each unit that has examples")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per unit's doctests (default 5)")
    p.add_argument("--context", choices=["module", "imports"], default="module",
                   help="what runs before each unit: the whole file, as an import would (default), or only its "
                        "import statements (then a unit that needs the file's other names errs)")
    args = p.parse_args(argv)
    modules = [(name, *read_module(name)) for name in args.files]  # every file is checked before any is measured
    header = ["file", "units", "parse", "rate"] + (["doctest", *OUTCOMES] if args.doctest else [])
    rows, totals = [], Counter()
    for name, source, units, error in modules:
        outcomes: Counter = Counter()
        if error is not None:
            print(f"{name}: does not parse as a whole ({error}); counted as 0 units", file=sys.stderr)
        elif args.doctest:
            context = source if args.context == "module" else import_lines(source)
            outcomes.update(run_doctests(unit, context, args.timeout) for unit in doctest_units(source))
        counts = Counter(units=len(units), parse=sum(syntax_valid(u) for u in units), doctest=sum(outcomes.values()),
                         **outcomes)
        totals.update(counts)
        rows.append([name, *(counts[k] for k in header[1:])])
    if len(rows) > 1:
        rows.append(["total", *(totals[k] for k in header[1:])])
    for row in rows:
        row[3] = f"{row[2] / row[1]:.4f}" if row[1] else "-"  # parse / units
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
