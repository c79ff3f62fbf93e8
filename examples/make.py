"""Write the example inputs that the README's commands read, from the data unidiff ships (see examples/README.md).

Every file is cut from held-out or training data by a fixed rule, so a rerun writes the same bytes (the PNG: the
same pixels; its bytes follow Pillow's zlib):

- holes.txt: the start of Macbeth's "To-morrow" speech (Macbeth is held out of the text model's training) with
  two words cut into holes.
- holes.py: two small functions written for this example, each with a doctest and a hole.
- cat.png: the first cat of the held-out part of Animal-MNIST.
- real.fa, train.fa: one 256-base window from the middle of each of 24 held-out (real.fa) and 24 training
  (train.fa) records of the DNA corpus, the records spread evenly over the corpus.

Usage, from the repository root::

    python examples/make.py [--out DIR]
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ("holes.txt", "holes.py", "cat.png", "real.fa", "train.fa")

SPEECH = "To-morrow, and to-morrow, and to-morrow,"  # where the passage of holes.txt starts
SPEECH_LINES = 5
TEXT_HOLES = (("petty pace", "<mask:10>"), ("dusty death", "<blank:16>"))  # exact length 10; up to 16 bytes

HOLES_PY = '''def mean(values):
    """The arithmetic mean of a non-empty sequence of numbers.

    >>> mean([1, 2, 3, 4])
    2.5
    """
    if not values:
        raise ValueError("mean of an empty sequence")
    return <mask:4> / len(values)


def clamp(x, low, high):
    """x limited to the range from low to high.

    >>> clamp(5, 0, 3)
    3
    """
    return max(low, <blank:8>)
'''

DNA_RECORDS = 24  # records per file
DNA_WINDOW = 256  # bases per record: the README's --length 256


def holes_txt() -> str:
    """The speaker and the first lines of the speech, with `TEXT_HOLES` cut in."""
    from unidiff_text.corpus import shakespeare

    macbeth = next(play for play in shakespeare("valid") if play.startswith("Macbeth\n"))
    start = macbeth.index(SPEECH)
    lines = macbeth[start:].split("\n")[:SPEECH_LINES]
    text = "MACBETH\n" + "\n".join(lines) + "\n"
    for words, hole in TEXT_HOLES:
        if text.count(words) != 1:
            raise AssertionError(f"{words!r} occurs {text.count(words)} times in the passage, not once")
        text = text.replace(words, hole)
    return text


def cat_image():
    """The first cat of the held-out Animal-MNIST images, as a 28x28 grayscale PIL image."""
    import numpy as np
    from PIL import Image

    from unidiff_image.animals import CLASSES, animals

    images, labels = animals("valid")
    return Image.fromarray(images[np.flatnonzero(labels == CLASSES.index("cat"))[0]], mode="L")


def dna_windows(split: str) -> list[tuple[str, str]]:
    """(header, 256 bases) from the middle of `DNA_RECORDS` records of one split, spread evenly over its records
    in corpus order; the header keeps the record's id, class, split, source and organism and names the window."""
    from unidiff_dna.corpus import load

    records = [r for r in load() if r.split == split and len(r.seq) >= DNA_WINDOW]
    picked = [records[round(i * (len(records) - 1) / (DNA_RECORDS - 1))] for i in range(DNA_RECORDS)]
    out = []
    for r in picked:
        start = (len(r.seq) - DNA_WINDOW) // 2
        out.append((f"{r.header()} bases={start}-{start + DNA_WINDOW}", r.seq[start:start + DNA_WINDOW]))
    return out


def make(out: Path) -> list[Path]:
    """Write every file of `FILES` into ``out`` (made if missing); returns their paths."""
    from unidiff_dna.fasta import write_fasta

    out.mkdir(parents=True, exist_ok=True)
    (out / "holes.txt").write_text(holes_txt(), encoding="utf-8")
    (out / "holes.py").write_text(HOLES_PY, encoding="utf-8")
    cat_image().save(out / "cat.png")
    write_fasta(dna_windows("valid"), out / "real.fa")
    write_fasta(dna_windows("train"), out / "train.fa")
    return [out / name for name in FILES]


def main(argv: list[str] | None = None) -> None:
    """Write the README's example inputs (holes.txt, holes.py, cat.png, real.fa, train.fa) from the shipped data."""
    from unidiff.cli import Parser

    p = Parser(prog="python examples/make.py", description=main.__doc__)
    p.add_argument("--out", default=str(HERE), help=f"folder to write them into (default: {HERE})")
    args = p.parse_args(argv)
    for path in make(Path(args.out)):
        print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
