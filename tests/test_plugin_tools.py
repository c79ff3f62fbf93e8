"""The plugins' ``python -m`` tools: none is loaded with its package (``python -m`` would warn that it was), and a
bad input is one line ``unidiff: error: ...`` with exit status 2 and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
TOOLS = sorted(f"{path.parent.name}.{path.stem}" for path in PLUGINS.glob("unidiff_*/*.py")
               if 'if __name__ == "__main__":' in path.read_text(encoding="utf-8"))
MODEL_TOOLS = ["unidiff_code.measure", "unidiff_dna.measure", "unidiff_text.editing", "unidiff_text.frontier",
               "unidiff_text.guidance", "unidiff_text.infilling", "unidiff_text.metrics"]  # they take --model


def python(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """``python ARGS`` with this checkout's unidiff and plugins first on the path, on one CPU thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(PLUGINS), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit status 2, nothing on stdout, and stderr one line ``unidiff: error: ...`` holding every needle."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("unidiff: error: "), done.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_the_tools_are_found():
    """The tool list, read from the source files, holds what the tests below rely on."""
    assert set(MODEL_TOOLS) < set(TOOLS)
    assert {"unidiff_code.metrics", "unidiff_code.tokenizer", "unidiff_dna.corpus", "unidiff_dna.metrics",
            "unidiff_text.corpus"} < set(TOOLS)


def test_no_tool_is_loaded_with_its_package():
    """``python -m pkg.tool`` imports ``pkg`` first; a tool already loaded then runs twice and Python warns."""
    packages = sorted({t.split(".")[0] for t in TOOLS})
    done = python("-c", f"import sys\nfor p in {packages!r}: __import__(p)\n"
                        f"print([t for t in {TOOLS!r} if t in sys.modules])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("tool", ["unidiff_code.tokenizer", "unidiff_dna.metrics"])  # the two that were loaded
def test_help_runs_without_a_warning(tool):
    done = python("-m", tool, "--help")
    assert done.returncode == 0 and done.stdout.startswith(f"usage: python -m {tool}")
    assert done.stderr == ""


def test_dna_metrics_runs_without_a_warning(tmp_path):
    (tmp_path / "samples.fa").write_text(">a\nACGTACGTAA\n>b\nGGCCATAT\n")
    (tmp_path / "train.fa").write_text(">t\nTTACGTACGTAACC\n")
    done = python("-m", "unidiff_dna.metrics", "samples.fa", "--reference", "train.fa", "--train", "train.fa",
                  "--motif", "ACGT", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no RuntimeWarning
    lines = done.stdout.splitlines()
    assert lines[0].startswith("2 sequences, 18 bases; GC 0.4500 ± 0.0500")  # 4/10 and 4/8
    assert lines[1] == "ACGT: 111.111 per kb"  # two sites in 18 bases (the motif is its own reverse complement)
    assert lines[-1].endswith("verbatim copies: 1")  # sample a is inside the training sequence


def test_dna_metrics_names_a_missing_file(tmp_path):
    (tmp_path / "samples.fa").write_text(">a\nACGT\n")
    done = python("-m", "unidiff_dna.metrics", "samples.fa", "--reference", "real.fa", cwd=tmp_path)
    assert_one_line_error(done, "no such file: real.fa")


def test_code_metrics_names_a_missing_file(tmp_path):
    (tmp_path / "good.py").write_text("x = 1\n")
    done = python("-m", "unidiff_code.metrics", "good.py", "missing.py", cwd=tmp_path)
    assert_one_line_error(done, "no such file: missing.py")


def test_dna_corpus_names_a_missing_sdist(tmp_path):
    done = python("-m", "unidiff_dna.corpus", "--sdist", "nosuch.tar.gz", "--out", "corpus.fa.gz", cwd=tmp_path)
    assert_one_line_error(done, "no such file: nosuch.tar.gz", "--sdist")
    assert not (tmp_path / "corpus.fa.gz").exists()


def test_text_corpus_names_an_output_folder_it_cannot_make(tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    done = python("-m", "unidiff_text.corpus", "--out", "taken/corpus", cwd=tmp_path)
    assert_one_line_error(done, "cannot make the output folder taken/corpus")


@pytest.mark.parametrize("tool", MODEL_TOOLS)
def test_model_tools_name_a_missing_model(tmp_path, tool):
    done = python("-m", tool, "--model", str(tmp_path / "nosuch"), cwd=tmp_path)
    assert_one_line_error(done, f"unknown model '{tmp_path / 'nosuch'}'")


def test_a_usage_error_is_one_line():
    done = python("-m", "unidiff_dna.metrics")
    assert_one_line_error(done, "required: fasta", "(see python -m unidiff_dna.metrics --help)")
