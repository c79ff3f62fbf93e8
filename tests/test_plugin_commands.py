"""``register_commands``: a plugin adds ``unidiff`` subcommands. A throwaway package outside the tree registers a
one-word and a two-word command (and some bad registrations), and runs them through ``python -m unidiff.cli``;
the built-in plugins' tools and the benchmark are such commands, each also ``python -m unidiff_<plugin>.<tool>``."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from unidiff.cli import main
from unidiff.plugins import CORE_COMMANDS, DISABLE_ENV, Registry

from helpers import write_dist

ROOT = Path(__file__).resolve().parents[1]

HELLOPLUG = """
from unidiff.hookspecs import hookimpl


@hookimpl
def register_commands(register):
    register("hello", "helloplug.tool:main", help="say hello")
    register("greet loud", "helloplug.tool:loud", help="greet loudly")
    register("greet", "helloplug.tool:main")          # clashes with the group 'greet': refused
    register("train", "helloplug.tool:main")          # a core command: refused
    register("oops", "not a target")                  # neither 'module:function' nor a callable: refused
    register("gone", "helloplug.missing:main", help="its module does not exist")
"""

TOOL = """
from unidiff.cli import Parser
from unidiff.errors import UnidiffError

LOADED = True


def main(argv, prog):
    p = Parser(prog=prog, description="Say hello.")
    p.add_argument("--name", default="world")
    args = p.parse_args(argv)
    if args.name == "nobody":
        raise UnidiffError("--name nobody: give a name")
    print(f"hello {args.name} from {prog}")


def loud(argv, prog):
    print(" ".join(argv).upper() + f" ({prog})")
    return 3
"""


@pytest.fixture(scope="module")
def hello(tmp_path_factory) -> Path:
    root = write_dist(tmp_path_factory.mktemp("hello"), "helloplug", "0.2.0", {"hello": "helloplug"},
                      {"helloplug": HELLOPLUG})
    (root / "helloplug" / "tool.py").write_text(TOOL)
    return root


def unidiff(*args: str, path: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DISABLE_ENV, None)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "unidiff.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_a_plugin_command_runs_with_its_arguments_and_its_own_errors(hello):
    done = unidiff("hello", "--name", "Ada", path=hello)
    assert (done.returncode, done.stdout) == (0, "hello Ada from unidiff hello\n"), done.stderr
    done = unidiff("greet", "loud", "hi", "there", path=hello)
    assert (done.returncode, done.stdout) == (3, "HI THERE (unidiff greet loud)\n")  # its status is the exit status
    done = unidiff("hello", "--name", "nobody", path=hello)
    assert done.returncode == 2 and done.stderr.splitlines()[-1] == "unidiff: error: --name nobody: give a name"
    done = unidiff("hello", "--bogus", path=hello)
    assert done.returncode == 2 and "unrecognized arguments: --bogus (see unidiff hello --help)" in done.stderr


def test_bad_registrations_are_refused_by_name_and_the_rest_works(hello):
    done = unidiff("plugins", path=hello)
    assert done.returncode == 0
    line = next(x for x in done.stdout.splitlines() if x.startswith("hello  "))
    assert line == "hello  (helloplug 0.2.0)  commands: gone, greet loud, hello"
    broken = next(x for x in done.stdout.splitlines() if x.startswith("hello  BROKEN"))
    assert "register_commands refused command 'train': 'train' is one of unidiff's own commands" in broken
    assert "register_commands refused command 'oops': a command is registered as 'module:function'" in broken
    assert "command 'greet' ignored: it clashes with the command 'greet loud' of plugin 'hello'" in broken
    done = unidiff("gone", path=hello)
    assert done.returncode == 2 and done.stderr.splitlines()[-1].startswith(
        "unidiff: error: plugin 'hello' (helloplug 0.2.0): command 'gone' runs helloplug.missing:main, which does "
        "not import: ModuleNotFoundError")


def test_help_lists_plugin_commands_and_groups(hello):
    done = unidiff("--help", path=hello)
    assert done.returncode == 0
    assert "say hello [hello plugin]" in done.stdout and "greet commands of plugins" in done.stdout
    done = unidiff("greet", "--help", path=hello)
    assert done.returncode == 0 and "greet loudly [hello plugin]" in done.stdout
    done = unidiff("greet", path=hello)
    assert done.returncode == 2 and "required: COMMAND" in done.stderr
    done = unidiff("hello", "--help", path=hello)
    assert done.returncode == 0 and done.stdout.startswith("usage: unidiff hello [-h] [--name NAME]")
    done = unidiff("hello")  # without the plugin on the path: an unknown command, the known ones listed
    assert done.returncode == 2 and "invalid choice: 'hello'" in done.stderr and "'bench'" in done.stderr


def test_a_command_is_imported_only_when_it_runs(hello, monkeypatch):
    monkeypatch.syspath_prepend(str(hello))
    monkeypatch.delenv(DISABLE_ENV, raising=False)
    for name in [m for m in sys.modules if m.startswith("helloplug")]:
        monkeypatch.delitem(sys.modules, name)
    registry = Registry()
    assert "greet loud" in registry.names("commands") and "helloplug.tool" not in sys.modules
    assert registry.command("hello").__module__ == "helloplug.tool" and "helloplug.tool" in sys.modules
    for name in [m for m in sys.modules if m.startswith("helloplug")]:
        monkeypatch.delitem(sys.modules, name)


BUILTIN = {
    "bench": "unidiff_bench.command:main",
    **{f"{p} {t}": f"unidiff_{p}.{t}:main" for p, tools in {
        "text": ("corpus", "editing", "frontier", "guidance", "infilling", "metrics"),
        "code": ("measure", "metrics", "tokenizer"), "dna": ("corpus", "measure", "metrics"),
        "image": ("animals", "measure", "vq")}.items() for t in tools},
}


def test_every_python_m_tool_is_a_command():
    registry = Registry()
    got = {n: registry.entries["commands"][n][0] for n in registry.names("commands")}
    assert {n: t for n, t in got.items() if n in BUILTIN} == BUILTIN
    tools = sorted(f"{p.parent.name}.{p.stem}:main" for p in (ROOT / "plugins").glob("unidiff_*/*.py")
                   if 'if __name__ == "__main__":' in p.read_text(encoding="utf-8"))
    assert tools == sorted(BUILTIN.values())
    assert not {n.split()[0] for n in got} & CORE_COMMANDS
    assert all(registry.command_help(n) for n in BUILTIN)


def test_a_builtin_command_is_its_python_m_tool_under_another_name(tmp_path, capsys):
    from unidiff_code.metrics import main as tool

    (tmp_path / "a.py").write_text("def f(x):\n    return x + 1\n")
    (tmp_path / "b.py").write_text("def g(:\n")
    files = [str(tmp_path / "a.py"), str(tmp_path / "b.py")]
    assert main(["code", "metrics", *files]) == 0
    via_unidiff = capsys.readouterr().out
    tool(files)
    assert via_unidiff == capsys.readouterr().out and "a.py" in via_unidiff
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as e:
        main(["text", "metrics", "--help"])
    assert e.value.code == 0 and out.getvalue().startswith("usage: unidiff text metrics")


def test_core_commands_are_the_parsers_own():
    from unidiff.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == CORE_COMMANDS
