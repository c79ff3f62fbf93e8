"""Python snippet metrics (unidiff_code.metrics): syntax validity, first_unit, infill matches, doctests, the CLI."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytest

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
sys.path.insert(0, str(PLUGINS))  # unidiff_code is not in the installed package list until it is reinstalled

from unidiff.errors import UnidiffError  # noqa: E402
from unidiff_code.corpus import stdlib_root  # noqa: E402
from unidiff_code.metrics import (doctest_units, exact_match, first_unit, import_lines, normalise,  # noqa: E402
                                  normalised_match, read_module, run_doctests, summary, syntax_valid,
                                  top_level_units, validity_rate)

METHOD = "    def area(self):\n        return self.w * self.h\n"


@pytest.mark.parametrize("code, prefix, suffix, expected", [
    ("def f(x):\n    return x + 1\n", "", "", True),
    ("def f(x)\n    return x + 1\n", "", "", False),  # missing colon
    ("y = max(1, (2 + 3)\n", "", "", False),  # unbalanced paren
    ("def f(x):\nreturn x\n", "", "", False),  # body not indented
    ("def f(x):\n    a = 1\n      b = 2\n", "", "", False),  # unexpected indent
    ("if x:\n        a = 1\n    b = 2\n", "", "", False),  # dedent to no enclosing level
    (METHOD, "", "", True),  # parses only after dedent
    (METHOD, "x = 1\n", "", False),  # with a prefix, no dedent
    (METHOD, "class Box:\n", "", True),
    ("x + 1) * (2", "y = (", ")\n", True),  # the fill parses only inside its prefix and suffix
    ("x + 1) * (2", "", "", False),
    ("", "", "", True),  # an empty module
    ("x = 1\0\n", "", "", False),  # null byte: ValueError inside ast.parse
    ("a" + ".b" * 100_000, "", "", False),  # RecursionError inside ast.parse
    ("x = " + "-" * 100_000 + "1", "", "", False),  # MemoryError (parser stack) inside ast.parse
])
def test_syntax_valid(code, prefix, suffix, expected):
    assert syntax_valid(code, prefix, suffix) is expected


def test_syntax_valid_ignores_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an invalid escape sequence would otherwise become a SyntaxError
        assert syntax_valid("x = '\\d'\n")


def test_validity_rate_and_summary():
    assert validity_rate(["x = 1\n", "def f(:\n", "print(x)\n"]) == 2 / 3
    assert validity_rate(["1)", "1"], prefixes=["f(", "f("], suffixes=["\n", "))\n"]) == 0.5
    assert validity_rate("x = 1") == 1.0  # one snippet, not five characters
    assert math.isnan(validity_rate([]))
    with pytest.raises(UnidiffError, match="2 snippets but 1 prefixes"):
        validity_rate(["a", "b"], prefixes=["x"])
    assert summary(["x = 1\n", "  \n", "def f(:\n", "y = 2\n"]) == {
        "n": 4, "valid": 3, "invalid": 1, "empty": 1, "validity_rate": 0.75}


RUN_ON = '''@cache
# a comment between decorator and def
def f(x):
    y = g(
1,
)
    """
docstring text at column 0
"""
    def inner():
        pass
# column-0 comment inside the body
    return y
# describes the next function

@other
def h():
    pass
'''


@pytest.mark.parametrize("text, expected", [
    (RUN_ON, RUN_ON[:RUN_ON.index("# describes")]),
    ("def f():\n    return g(\n1,\n2)\nprint(f())\n", "def f():\n    return g(\n1,\n2)\n"),
    ("class A:\n    x = 1\n\n    def m(self):\n        return 2\n\n\nA().m()\n",
     "class A:\n    x = 1\n\n    def m(self):\n        return 2\n"),
    ("# header\n\nimport os\nimport sys\n", "# header\n\nimport os\n"),
    ("try:\n    import a\nexcept ImportError:\n    a = None\nelse:\n    b = 1\nfinally:\n    c = 2\nd = 3\n",
     "try:\n    import a\nexcept ImportError:\n    a = None\nelse:\n    b = 1\nfinally:\n    c = 2\n"),  # clauses
    ("if x:\n    a()\nelif y:\n    b()\nprint()\n", "if x:\n    a()\nelif y:\n    b()\n"),
    ("x = 1 + \\\n2\ny = 3\n", "x = 1 + \\\n2\n"),
    (METHOD + "\n    def perimeter(self):\n        pass\n", METHOD),  # an indented unit ends at its own column
    ("def f():\n    return 1", "def f():\n    return 1"),  # nothing to cut
    ("def f():\n    return [1,\nx = 2\n", "def f():\n    return [1,\nx = 2\n"),  # unclosed bracket: kept whole
    ("", ""),
])
def test_first_unit(text, expected):
    assert first_unit(text) == expected


def test_infill_matches():
    truth = "    return x + 1\n"
    assert exact_match(truth, truth)
    assert not exact_match("    return x + 1", truth)
    assert normalised_match("\n\n    return x + 1   \n\n", truth)
    assert normalised_match("    return x + 1\r\n", truth)
    assert not normalised_match("return x + 1\n", truth)  # indentation is syntax
    assert normalise("\n  a  \n\n  b\t\n\n") == "  a\n\n  b"


PASSING = '''def square(x):
    """
    >>> square(3)
    9
    >>> square(-2)
    4
    """
    return x * x
'''
FAILING = PASSING.replace("return x * x", "return x + x")  # square(3) gives 6
RAISING = PASSING.replace("return x * x", "return x / 0")
LOOPING = '''def spin():
    """
    >>> spin()
    """
    while True:
        pass
'''
PLAIN = "def plain(x):\n    return x\n"
NEEDS_MATH = '''def root(x):
    """
    >>> root(16.0)
    4.0
    """
    return math.sqrt(x)
'''
EXPECTED_RAISE = '''def private():
    """
    >>> import socket
    >>> socket.getaddrinfo("localhost", 80)
    Traceback (most recent call last):
    OSError: network access is disabled while doctests run
    >>> open("left-behind.txt", "w").write("x")
    1
    """
'''


@pytest.mark.parametrize("unit, context, expected", [
    (PASSING, "", "pass"),
    (FAILING, "", "fail"),
    (RAISING, "", "error"),
    (PLAIN, "", "none"),
    (NEEDS_MATH, "import math\n", "pass"),
    (NEEDS_MATH, "", "error"),  # NameError: the context is needed
    (PASSING.replace("):", ")"), "", "error"),  # does not parse
    (PASSING, "import no_such_module_xyz\n", "error"),
    (EXPECTED_RAISE, "", "pass"),  # no network; a file written in the working directory
])
def test_run_doctests(unit, context, expected):
    assert run_doctests(unit, context) == expected


def test_run_doctests_timeout_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    start = time.monotonic()
    assert run_doctests(LOOPING, timeout=1) == "timeout"
    assert time.monotonic() - start < 3
    assert run_doctests(EXPECTED_RAISE) == "pass"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UnidiffError, match="timeout must be positive"):
        run_doctests(PASSING, timeout=0)


MODULE = '''"""A module."""
import math
from os import path as p

X = 1; Y = 2


def square(x):
    """
    >>> square(3)
    9
    """
    return x * x


def plain():
    return ">>> 1"


@decorate(
    1)
def decorated():
    """>>> decorated()"""


class Box:
    def area(self):
        """
        >>> Box().area()
        0
        """
        return 0
'''


def test_units_and_doctest_units():
    units = top_level_units(MODULE)
    assert units == ['"""A module."""\n', "import math\n", "from os import path as p\n", "X = 1; Y = 2\n",
                     MODULE[MODULE.index("def square"):MODULE.index("\n\ndef plain")],
                     'def plain():\n    return ">>> 1"\n',
                     MODULE[MODULE.index("@decorate"):MODULE.index("\n\nclass")],
                     MODULE[MODULE.index("class Box"):]]
    assert doctest_units(MODULE) == [units[4], units[6], units[7]]
    assert import_lines(MODULE) == "import math\nfrom os import path as p\n"
    assert run_doctests(units[7], import_lines(MODULE)) == "pass"


def test_stdlib_units_parse_alone():
    source = (stdlib_root() / "json" / "decoder.py").read_text(encoding="utf-8")
    units = top_level_units(source)
    assert len(units) > 10
    assert validity_rate(units) == 1.0
    assert summary(units)["invalid"] == 0
    assert [first_unit(u) for u in units] == units  # each unit is exactly one complete unit


def test_cli(tmp_path):
    good = tmp_path / "good.py"
    good.write_text(PASSING + "\n\n" + FAILING.replace("square", "double") + "\n\n" + PLAIN + "\nplain(1)\n")
    other = tmp_path / "other.py"
    other.write_text("import os\n\n\nx = (1,\n     2)\n")
    bad = tmp_path / "bad.py"  # a fill that broke its file: measured, not refused
    bad.write_text(PASSING.replace("return x * x", "return  >>>all(x"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "unidiff_code.metrics", str(good), str(other), str(bad), "--doctest"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"{bad}: does not parse as a whole (line 8: invalid syntax); counted as 0 units\n"
    rows = [line.split() for line in done.stdout.splitlines()]
    assert rows == [["file", "units", "parse", "rate", "doctest", "pass", "fail", "error", "timeout", "none"],
                    [str(good), "4", "4", "1.0000", "2", "1", "1", "0", "0", "0"],
                    [str(other), "2", "2", "1.0000", "0", "0", "0", "0", "0", "0"],
                    [str(bad), "0", "0", "-", "0", "0", "0", "0", "0", "0"],
                    ["total", "6", "6", "1.0000", "2", "1", "1", "0", "0", "0"]]


@pytest.mark.parametrize("content, needle", [
    (None, "no such file: .*in.py"),
    (b"", "in.py is empty"),
    (b"\n  \n", "in.py is empty"),
    (b"x = '\xff'\n", "in.py is not UTF-8 text"),
])
def test_read_module_refuses_what_it_cannot_read(tmp_path, content, needle):
    """What ``python -m unidiff_code.metrics`` reports as one line ``unidiff: error: ...`` (tests/test_plugin_tools)."""
    path = tmp_path / "in.py"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UnidiffError, match=needle):
        read_module(str(path))


def test_read_module_refuses_a_folder(tmp_path):
    with pytest.raises(UnidiffError, match="cannot read .*: Is a directory"):
        read_module(str(tmp_path))


def test_read_module_returns_the_source_and_its_units(tmp_path):
    (tmp_path / "in.py").write_text("import os\n\n\ndef f():\n    pass\n")
    assert read_module(str(tmp_path / "in.py")) == ("import os\n\n\ndef f():\n    pass\n",
                                                    ["import os\n", "def f():\n    pass\n"], None)


@pytest.mark.parametrize("content, error", [
    ("def f(:\n    pass\n", "line 1: invalid syntax"),
    ("x = (1,\n", "line 1: '(' was never closed"),
    ("x = 1\0\n", "source code string cannot contain null bytes"),  # ValueError, no line number
])
def test_read_module_measures_a_file_that_does_not_parse(tmp_path, content, error):
    """No units and where it fails: syntax validity is the measure, so such a file is a result, not an error."""
    (tmp_path / "in.py").write_text(content)
    assert read_module(str(tmp_path / "in.py")) == (content, [], error)
