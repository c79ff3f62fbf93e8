"""Every command of README.md runs as written, from a fresh folder holding only the repository's examples/ and
configs/ (symlinked), and gives a sensible result.

The ```sh blocks are read from README.md and split into commands the way the shell splits them (a newline ends a
command outside quotes, a backslash-newline continues it, ``#`` starts a comment); each command must appear in `RUNS`
(or `SETUP`), so a command added to the README without a run here fails `test_every_readme_command_is_run`. Each
run is ``bash -c COMMAND`` in a temporary folder, on one CPU thread; where the README's own values are slow (minutes
of sampling, a 45-minute bench, 200 training steps), `RUNS` appends smaller values, visible in its ``smaller``
column: an option given twice takes the last value, so the command runs with the README's flags at these sizes. A
command that reads a file another one writes (samples.fa, filled.py) runs in one test after it, as in the README.

The set-up block's ``pip install ...`` parts are not run here: CI runs them itself (.ci/run is the README's second
line, whose install holds the first's), and this suite runs inside what they installed;
`test_setup_commands_are_what_ci_runs` checks that both lines are in the README exactly and that .ci/run holds the
install-and-test line. What follows ``&&`` on the first line (``unidiff generate --num 2``) is run like any other
command.

The README's Python blocks run too: the "From Python" block in a fresh interpreter (with the replacements of
`PYTHON_SMALLER`), the plugin example in this one. examples/make.py must rewrite examples/ exactly.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
README = (ROOT / "README.md").read_text(encoding="utf-8")
LINKED = ("examples", "configs")  # what the commands read, reachable from their working folder


@dataclass(frozen=True)
class Run:
    """One README command: the arguments appended to make it small, regexes its stdout and stderr must match
    (re.search), and a file it must write (non-empty, and see `check_file`)."""

    readme: str
    smaller: str = ""
    stdout: str | None = None
    stderr: str | None = None
    writes: str | None = None


def report(samples: int, tokens: int, nfe: str = r"[\d-]+", precision: str = "fp32") -> str:
    """The closing stderr line of a sampling command: samples, generated tokens, forward passes per sample."""
    return rf"(?m)^{samples} sample\(s\), {tokens} tokens in [\d.]+ s: NFE {nfe} per sample, .*\({precision}, "


DNA = "[ACGT]"
SAMPLES = r"===== sample {} \(seed {}\) =====\n"
AT_MOST_12, AT_MOST_24 = r"([1-9]|1[0-2])", r"([1-9]|1\d|2[0-4])"
# The README's commands in groups; a group runs in one folder, in README order (later ones read what earlier wrote).
RUNS: list[tuple[Run, ...]] = [
    (Run("unidiff generate --num 2", "--length 16", SAMPLES.format(1, 1), report(2, 32)),),
    (Run('unidiff generate --prompt "ROMEO\n" --length 200 --steps 50 --num 3 --seed 1', "--length 24 --steps 6",
         rf"^{SAMPLES.format(0, 1)}ROMEO\n(.|\n)*{SAMPLES.format(2, 3)}ROMEO\n", report(3, 72, "6")),),
    (Run("unidiff generate --prompt $'<hamlet>\\n' --guidance 2", "--length 24", r"^<hamlet>\n",
         report(1, 24, "12")),),  # the model's 0.25 steps per token, two passes a step with guidance
    (Run("unidiff generate --policy ancestral --temperature 0.9 --top-p 0.95 --out samples.txt", "--length 24",
         stderr=report(1, 24), writes="samples.txt"),),
    (Run("unidiff generate --policy threshold --threshold 0.8", "--length 24", r"\S",
         report(1, 24, AT_MOST_24)),),  # adaptive, at most one pass per token
    (Run("unidiff generate --policy confidence --remask 0.1", "--length 24", r"\S", report(1, 24)),),
    (Run("unidiff generate --block-length 64 --schedule cosine", "--length 96 --steps 12", r"\S",
         report(1, 96, AT_MOST_12)),),  # two blocks; a step that would commit nothing is not run
    (Run("unidiff infill $'ROMEO\\nO, <mask:12> art thou Romeo?'", stdout=r"^ROMEO\nO, (.|\n)+ art thou Romeo\?\n$",
         stderr=report(1, 12)),),
    (Run("unidiff infill $'ROMEO\\nO Romeo, <blank:16> art thou Romeo?'",
         stdout=r"^ROMEO\nO Romeo, (.|\n)* art thou Romeo\?\n$", stderr=report(1, 16)),),
    (Run("unidiff infill examples/holes.txt",
         stdout=r"^MACBETH\nTo-morrow, and to-morrow, and to-morrow,\nCreeps in this (.|\n)+ from day to day\n"
                r"To the last syllable of recorded time,\n(.|\n)*Out, out, brief candle!\n$",
         stderr=report(1, 26)),),  # <mask:10> and <blank:16>
    (Run('unidiff edit "Now is the winter of our discontent" --strength 0.3', stdout=r"\S",
         stderr=report(1, 11)),),  # 30% of 35 bytes
    (Run("unidiff edit \"Now is the winter of our discontent\" --strength 0.3 --order confidence --prompt "
         "$'<macbeth>\\n'", stdout=r"^<macbeth>\n\S", stderr=report(1, 11, "11")),),  # 8 scoring passes, 3 steps
    (Run("unidiff generate --model dna --num 16 --length 256 --out samples.fa", "--length 32",
         stderr=report(16, 512), writes="samples.fa"),
     Run("unidiff dna metrics samples.fa --reference examples/real.fa --train examples/train.fa",
         stdout=r"^16 sequences, 512 bases; GC (.|\n)*k-mer JS divergence \(bits\) vs reference: k=1: "
                r"(.|\n)*verbatim copies: \d+\n$")),
    (Run("unidiff generate --model dna --condition plant --guidance 2 --num 4", "--length 32",
         rf"{SAMPLES.format(3, 3)}{DNA}{{32}}\n$", report(4, 128)),),
    (Run("unidiff infill --model dna 'ATGAAACTCTACAATCTGAAAGATCACAACGAG<mask:30>GCTTTGCGCAAGCCGTAACCCAGGGGTTGG'",
         stdout=rf"^ATGAAACTCTACAATCTGAAAGATCACAACGAG{DNA}{{30}}GCTTTGCGCAAGCCGTAACCCAGGGGTTGG\n$",
         stderr=report(1, 30)),),
    (Run("unidiff infill --model dna '<mask:100>GAATTC<mask:100>'", stdout=rf"^{DNA}{{100}}GAATTC{DNA}{{100}}\n$",
         stderr=report(1, 200)),),
    (Run("unidiff generate --model dna --symmetric", "--length 32", rf"^{DNA}{{32}}\n$",
         report(1, 32, "16")),),  # the model's 0.25 steps per token, two passes a step (both strands)
    (Run("unidiff generate --model code --prompt 'def fibonacci(n):' --num 4", "--length 16",
         rf"{SAMPLES.format(3, 3)}def fibonacci\(n\):", report(4, 64)),),
    (Run("unidiff infill --model code examples/holes.py --out filled.py", stderr=report(1, 12),  # <mask:4>, <blank:8>
         writes="filled.py"),
     Run("unidiff code metrics filled.py --doctest",  # a fill that breaks the file is measured: exit 0
         stdout=r"^file +units +parse +rate +doctest +pass +fail +error +timeout +none\nfilled.py +\d+ ")),
    (Run('unidiff generate --model image --prompt "a cat" --num 16 --guidance 3 --out grid.png', "--steps 4",
         stderr=report(16, 16 * 49, "8"), writes="grid.png"),),  # 7x7 codes; two passes a step with guidance
    (Run("unidiff caption --model image examples/cat.png", stdout=r"^\S.*\n$", stderr=report(1, 32)),),
    (Run('unidiff inpaint --model image examples/cat.png --box 0,0,14,28 --prompt "a horse" --out horse.png',
         stderr=report(1, 28), writes="horse.png"),),  # the 4x4-pixel cells the box touches: 4 columns x 7 rows
    (Run("unidiff eval --model text", "--windows 2",
         r"held-out .* \(2 windows of 256 tokens, .*\n  text: \d+\.\d+ bits/token", r"evaluated in [\d.]+ s"),),
    (Run("unidiff plugins", stdout=r"(?m)^bench .*commands: bench\n^code .*\n^dna .*\n^image .*\n"
                                 r"^text .*models: text, text-ar; commands: text corpus, .*\n"),),
    (Run("unidiff train configs/text-base.toml --set train.steps=200 --set train.out_dir=runs/try",
         "--set train.steps=2 --set train.batch_size=2 --set train.eval_windows=2", r"^step 2: held-out text: ",
         r"trained 2 steps to step 2 in .*; model: runs/try/model ", "runs/try/model/model.safetensors"),),
    (Run("unidiff generate --model code --length 256 --block-length 32 --cache", "--length 64", r"\S",
         report(1, 64)),),
    (Run("unidiff generate --model code --num 1000 --max-batch 64 --out many.py", "--num 3 --max-batch 2 --length 16",
         stderr=report(3, 48), writes="many.py"),),
    (Run("unidiff generate --model code --precision bf16", "--length 16", r"\S", report(1, 16, precision="bf16")),),
    (Run("unidiff generate --model code --quantize int8", "--length 16", r"\S", report(1, 16, precision="int8")),),
    (Run("unidiff bench --prompt '' --out my-bench.md", "--lengths 8 --batches 1 --samples 2 --no-judge --no-features "
         "--setting ar:T1 --setting diffusion:confidence:0.5:T1", writes="my-bench.md"),),
    (Run("unidiff bench --diffusion dna --autoregressive dna-ar --no-judge --setting ar:T1 "
         "--setting diffusion:ancestral:0.125:T1:blocks32:delta --out my-dna-bench.md",
         "--lengths 32 --batches 1 --samples 2 --no-features", writes="my-dna-bench.md"),),
]
# What each written file must hold beyond being non-empty.
PNG_SIZES = {"grid.png": (460, 460), "horse.png": (28, 28)}  # 4x4 grid: 4 columns * (28 + 1) * 4 - 4 pixels
FASTA_RECORDS = {"samples.fa": 16}
BENCH_ROWS = {"my-bench.md": 2, "my-dna-bench.md": 2}  # one row per setting: one length, one batch size

SETUP = ["pip install torch==2.13.0 -e . && unidiff generate --num 2",
         "pip install torch==2.13.0 -e '.[test]' && python -m pytest -q"]


def fenced(lang: str) -> list[str]:
    """The bodies of the README's fenced blocks of one language, in order."""
    return re.findall(rf"^```{lang}\n(.*?)^```", README, re.M | re.S)


def split_commands(block: str) -> list[str]:
    """The shell commands of a block: a newline outside quotes ends one, a backslash-newline (and the indent after
    it) joins two lines with one space, ``#`` at the start of a word outside quotes starts a comment. Quotes are
    '...', "..." and $'...', whose backslash escapes are kept as written (bash reads them when it runs)."""
    commands, text, quote, at_word_start, i = [], "", None, True, 0
    while i < len(block):
        c, pair = block[i], block[i:i + 2]
        if quote is None and pair == "\\\n":
            text, at_word_start, i = text.rstrip(" \t") + " ", True, i + 2
            while i < len(block) and block[i] in " \t":
                i += 1
            continue
        if c == "\\" and quote != "'":  # an escaped character, bare or inside "..." or $'...'
            text, at_word_start, i = text + pair, False, i + 2
            continue
        if quote is None:
            if c == "#" and at_word_start:
                i = block.find("\n", i) % (len(block) + 1)  # to the line's end (-1, none: the block's end)
                continue
            if c == "\n":
                commands.append(text.strip())
                text, at_word_start, i = "", True, i + 1
                continue
            quote = "$'" if pair == "$'" else c if c in "'\"" else None
            if quote == "$'":
                text, at_word_start, i = text + pair, False, i + 2
                continue
        elif c == quote[-1]:
            quote = None
        text, at_word_start, i = text + c, quote is None and c in " \t", i + 1
    commands.append(text.strip())
    return [c for c in commands if c]


def readme_commands() -> list[str]:
    return [c for block in fenced("sh") for c in split_commands(block)]


def test_split_commands_reads_like_the_shell():
    block = ("a --x \"two\nlines\" # not this\n  # a comment line\nb $'it''s\\n' 'c # d' \\\n    --more  # end\n"
             "e \"q \\\" #\" f\\ #g\n")
    assert split_commands(block) == ['a --x "two\nlines"', "b $'it''s\\n' 'c # d' --more", 'e "q \\" #" f\\ #g']


def test_every_readme_command_is_run():
    """Each README command once: a new command, or one changed, fails here until `RUNS` runs it. A group runs in
    README order (a command reads only what a command above it in the README wrote)."""
    found = readme_commands()
    handled = SETUP + [run.readme for group in RUNS[1:] for run in group]
    assert sorted(found) == sorted(handled) and len(set(found)) == len(found)
    assert RUNS[0][0].readme == SETUP[0].split(" && ", 1)[1]
    for group in RUNS[1:]:
        places = [found.index(run.readme) for run in group]
        assert places == sorted(places), group


def test_setup_commands_are_what_ci_runs():
    assert all(f"\n{line}\n" in README for line in SETUP)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert SETUP[1] in ci.splitlines()  # the README's install-and-test line, exactly


def environment() -> dict[str, str]:
    """This interpreter's scripts first on PATH (``unidiff``, ``python``), this checkout first on the import path,
    one CPU thread."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "UNIDIFF_THREADS": "1",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(PLUGINS), os.environ.get("PYTHONPATH")]))}


def workdir(tmp_path: Path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    return tmp_path


def check_file(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, f"{path.name} was not written"
    if path.name in PNG_SIZES:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", PNG_SIZES[path.name])
    if path.name in FASTA_RECORDS:
        from unidiff_dna.fasta import read_fasta

        records = read_fasta(path)
        assert len(records) == FASTA_RECORDS[path.name]
        assert all(re.fullmatch(f"{DNA}+", seq) for _, seq in records)
    if path.name in BENCH_ROWS:
        rows = [line for line in path.read_text().splitlines() if line.startswith(("| autoregressive", "| diffusion"))]
        assert len(rows) == BENCH_ROWS[path.name], path.read_text()
    if path.name == "filled.py":
        filled = path.read_text()
        assert "def mean(values):" in filled and "def clamp(x, low, high):" in filled
        assert "<mask:" not in filled and "<blank:" not in filled


@pytest.mark.parametrize("group", RUNS, ids=[group[0].readme.split(" --out")[0][:60] for group in RUNS])
def test_readme_command(group, tmp_path):
    cwd = workdir(tmp_path)
    for run in group:
        command = f"{run.readme} {run.smaller}".strip()
        done = subprocess.run(["bash", "-c", command], cwd=cwd, env=environment(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stderr}"
        for stream, pattern, text in (("stdout", run.stdout, done.stdout), ("stderr", run.stderr, done.stderr)):
            assert pattern is None or re.search(pattern, text), f"{command}\n{stream}: {text!r}"
        if run.writes is not None:
            check_file(cwd / run.writes)


# The "From Python" block with its slow values made small; each replaced text must occur in it exactly once.
PYTHON_SMALLER = [('pipe.complete("<hamlet>\\n", length=200,', 'pipe.complete("<hamlet>\\n", length=32,'),
                  ("length=128, steps=64,", "length=32, steps=8,"),
                  ('"a drawing of a cat", num=8, guidance=3', '"a drawing of a cat", num=2, guidance=3, steps=4')]
PYTHON_CHECKS = """
assert len(gen.texts) == 1 and gen.texts[0].startswith("<hamlet>\\n")
assert len(cats) == 2 and cats[0].size == (28, 28)
assert len(words) == 1 and isinstance(words[0], str)
assert len(both.contents("text")) == 4 and len(both.contents("image")) == 4
print("checked")
"""


def test_python_block(tmp_path):
    blocks = fenced("python")
    assert len(blocks) == 2 and blocks[0].startswith("from unidiff import Pipeline, Segment\n")
    code = blocks[0]
    for old, new in PYTHON_SMALLER:
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    done = subprocess.run([sys.executable, "-c", code + PYTHON_CHECKS], cwd=tmp_path, env=environment(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("checked\n")


def test_plugin_example_block():
    from unidiff.errors import ModalityInputError

    blocks = fenced("python")
    assert blocks[1].startswith("from unidiff.errors import ModalityInputError\n")
    namespace: dict = {}
    exec(compile(blocks[1], "README.md: Writing a plugin", "exec"), namespace)
    quad = namespace["Quad"]()
    assert quad.encode("GATTACA") == [2, 0, 3, 3, 0, 1, 0] and quad.decode([2, 0, 3, 3, 0, 1, 0]) == "GATTACA"
    with pytest.raises(ModalityInputError, match="letter 'N' at position 2 is not one of A, C, G, T"):
        quad.encode("ACNT")
    registered = []
    namespace["register_modalities"](lambda name, cls: registered.append((name, cls)))
    assert registered == [("quad", namespace["Quad"])]


def test_examples_are_what_make_writes(tmp_path):
    """examples/make.py rewrites every example from the shipped data: the same bytes (cat.png: the same pixels, its
    bytes follow Pillow's zlib); each file is small and examples/README.md describes it."""
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make.py"), "--out", str(tmp_path)],
                          env=environment(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from_make = sorted(p.name for p in tmp_path.iterdir())
    assert from_make == sorted(["holes.txt", "holes.py", "cat.png", "real.fa", "train.fa"])
    guide = (ROOT / "examples" / "README.md").read_text(encoding="utf-8")
    for name in from_make:
        shipped, made = ROOT / "examples" / name, tmp_path / name
        assert shipped.stat().st_size < 20_000 and f"`{name}`" in guide
        if name.endswith(".png"):
            with Image.open(shipped) as a, Image.open(made) as b:
                assert a.mode == b.mode == "L" and np.array_equal(np.asarray(a), np.asarray(b))
        else:
            assert shipped.read_bytes() == made.read_bytes(), name


# The shipped models' figures as the README states them, with the command that reproduces each (time draws per
# window, figure in bits per token: bytes for text, bases for DNA, BPE tokens for code, VQ codes for images).
FIGURES = {"text": (1, "2.678"), "text-ar": (1, "2.143"), "dna": (4, "1.939"), "dna-ar": (1, "1.905"),
           "code": (4, "6.725"), "code-ar": (1, "5.053"), "image": (1, "6.222")}


@pytest.mark.slow  # about 4 minutes for all seven; tests/test_golden.py checks the same path on 3 windows each
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_readme_figure_is_what_unidiff_eval_prints(name):
    from unidiff.training.evaluate import evaluate_model

    samples, figure = FIGURES[name]
    command = f"`unidiff eval --model {name}" + (f" --samples {samples}`" if samples > 1 else "`")
    row = next(line for line in README.splitlines() if line.startswith(f"| `{name}` |"))
    assert figure in row and command in row, row
    result, _ = evaluate_model(name, samples=samples)
    assert f"{next(iter(result.bits_per_token.values())):.3f}" == figure
