"""The Python corpus: the standard library of the interpreter that runs unidiff, split by module.

Provenance and licence: the ``.py`` files of CPython's standard library (``sysconfig.get_paths()["stdlib"]``),
Copyright (c) 2001-2024 Python Software Foundation, under the PSF License Agreement (Python-2.0). Nothing is
downloaded: every machine that runs unidiff carries them. The shipped tokenizer and code model were built from
CPython 3.11.7's; another 3.11 gives nearly the same files.

Left out: test suites (``test/``, ``tests/``, ``idle_test/``: long and repetitive), ``site-packages`` and
anything that does not parse. The split is by file, so whole modules are held out: a file is held out when the
CRC-32 of its path relative to the stdlib root (with ``/`` separators) is 0 mod 20 (about 5% of the files),
a rule that does not depend on which other files a machine has.
"""

from __future__ import annotations

import ast
import sysconfig
import textwrap
import zlib
from dataclasses import dataclass
from pathlib import Path

from unidiff.errors import UnidiffError

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
HOLD_OUT = 20  # one file in HOLD_OUT (by path hash) is held out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(relpath: str) -> str:
    """'train' or 'valid' for a path relative to the stdlib root, e.g. 'json/decoder.py'."""
    return "valid" if zlib.crc32(relpath.replace("\\", "/").encode()) % HOLD_OUT == 0 else "train"


def module_files(split: str | None = None, root: Path | None = None) -> list[tuple[str, Path]]:
    """(relative path, path) of the stdlib's .py files outside test suites, sorted by relative path; ``split``
    ('train' or 'valid') keeps one side of the split."""
    root = root or stdlib_root()
    out = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root)
        if SKIP_DIRS & set(rel.parts[:-1]):
            continue
        relpath = rel.as_posix()
        if split is None or split_of(relpath) == split:
            out.append((relpath, path))
    return sorted(out)


def read_source(path: Path) -> str | None:
    """A file's text exactly as stored (newlines kept), or None if it is not UTF-8."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class Unit:
    """A piece of a module that makes sense alone."""

    path: str  # the module's path relative to the stdlib root
    name: str  # qualified name: "JSONDecoder", "JSONDecoder.decode", "<module>"
    kind: str  # "function", "class", "method" or "module" (the module's other lines)
    source: str  # its lines exactly as written (a method dedented to column 0)
    lineno: int  # first line in the module (1-based)


def _start(node: ast.AST, lines: list[str]) -> int:
    """0-based first line of a definition: its first decorator, and the comment lines right above it."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])]) - 1
    while first > 0 and lines[first - 1].lstrip().startswith("#"):
        first -= 1
    return first


def units(source: str, path: str = "<string>") -> list[Unit]:
    """The top-level functions and classes of a module (with their decorators and the comments right above
    them), then one "module" unit of every other line (docstring, imports, constants, main block) if any holds
    code. Returns [] for a module that does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    out, used = [], [False] * len(lines)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            a, b = _start(node, lines), node.end_lineno
            kind = "class" if isinstance(node, ast.ClassDef) else "function"
            out.append(Unit(path, node.name, kind, "".join(lines[a:b]), a + 1))
            used[a:b] = [True] * (b - a)
    rest = "".join(line for line, u in zip(lines, used) if not u)
    if any(s.strip() and not s.lstrip().startswith("#") for s in rest.splitlines()):
        out.append(Unit(path, "<module>", "module", rest, 1))
    return out


def functions(source: str, path: str = "<string>") -> list[Unit]:
    """Every function of a module that evaluation can prompt with its signature: top-level functions and the
    methods of top-level classes (dedented to column 0, with their decorators and comments), in file order."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    out = []
    for node in tree.body:
        defs = [(node, "function", node.name)] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else []
        if isinstance(node, ast.ClassDef):
            defs = [(m, "method", f"{node.name}.{m.name}") for m in node.body
                    if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for d, kind, name in defs:
            a = _start(d, lines)
            text = "".join(lines[a:d.end_lineno])
            out.append(Unit(path, name, kind, textwrap.dedent(text) if kind == "method" else text, a + 1))
    return out


def python(split: str) -> list[str]:
    """The ``python`` dataset: the units of the split's modules, one document each, in path order, each opened
    by the language tag (``<|python|>``, one token) so the model knows where a unit begins."""
    from unidiff_code import LANGUAGES

    tag = LANGUAGES["python"].tag
    if split not in ("train", "valid"):
        raise UnidiffError(f"the python dataset has splits 'train' and 'valid'; got {split!r}")
    docs = []
    for rel, path in module_files(split):
        source = read_source(path)
        if source is not None:
            docs.extend(tag + u.source for u in units(source, rel))
    return docs
