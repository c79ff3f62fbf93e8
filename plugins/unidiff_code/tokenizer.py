"""The code tokenizer: a byte-level BPE over Python source, trained and loaded with Hugging Face ``tokenizers``.

Choices:
- Byte level: every str that UTF-8 can encode (any character but a lone surrogate; NUL, CRLF, tabs, emoji)
  encodes, and ``decode(encode(s)) == s`` exactly. There is no normalizer and no prefix space; the GPT-2 regex
  pre-tokenizer splits words, numbers, punctuation and runs of whitespace, so indentation becomes a few
  whitespace tokens (a newline and the next line's indentation but one space are often a single token).
- The language tags (``TAGS``, e.g. ``<|python|>``) are special tokens with the FIRST ids (0, 1, ...), then the
  256 byte symbols, then the merges in the order they were learned. A modality finds a tag by ``token_to_id``.
- Text is always text: `load` and `train_bpe` return tokenizers with ``encode_special_tokens`` on, so a tag
  written literally in a source file encodes as ordinary byte tokens and a tag id appears only where a
  modality puts it. (That switch is not saved in the JSON: a tokenizer opened with ``Tokenizer.from_file``
  would map the literal string to the tag id.) `encode` never adds special tokens either.
- `decode` keeps special tokens (a tag decodes to its own text) and does no clean-up of spaces. An id
  sequence that is not the encoding of a str (e.g. a sampled one) may cut a UTF-8 character; its bytes then
  decode to U+FFFD.

Provenance: the shipped ``python-bpe-8k`` was trained by this file's command line on the train split of
`unidiff_code.corpus` (CPython 3.11.7's standard library, PSF License Agreement); see ``tokenizers/README.md``.
Training is deterministic: the same sources give the same JSON.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff_code.corpus import module_files, read_source

TAGS = ("<|python|>",)
DEFAULT_NAME = "python-bpe-8k"
ASSETS = Path(__file__).parent / "assets"  # a symlink to the top-level tokenizers/ folder
MAX_BYTES = 32 * 2**20  # the shipped python-bpe-8k is 0.5 MiB; a 256k-token BPE is about 20 MiB
BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def train_bpe(sources: Iterable[str], merges: int = 8000, tags: Sequence[str] = TAGS) -> Tokenizer:
    """Learn a byte-level BPE on ``sources``.

    Args:
        sources: the training texts, each encoded as one document.
        merges: how many merges to learn (fewer if no pair occurs twice any more).
        tags: language tags; they become special tokens with ids 0 .. len(tags) - 1.

    Returns:
        The tokenizer, of vocabulary size at most 256 + merges + len(tags).
    """
    if merges < 0:
        raise UnidiffError(f"merges must be >= 0, got {merges}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=256 + merges + len(tags),
        min_frequency=2,
        special_tokens=list(tags),  # the trainer gives special tokens the first ids
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sources, trainer)
    tok.encode_special_tokens = True
    return tok


def resolve(name_or_path: str | os.PathLike) -> Path:
    """The JSON file of a tokenizer: a path to a ``.json`` file, or a bare name such as "python-bpe-8k" (a file
    shipped in assets); anything else (another suffix, an odd name) is refused with what is accepted."""
    text = os.fspath(name_or_path)
    if os.sep in text or "/" in text or text.endswith(".json"):
        if not text.endswith(".json") or "\0" in text:
            raise UnidiffError(f"tokenizer {text!r} must be a bare name of a shipped tokenizer (e.g. {DEFAULT_NAME}) "
                               f"or the path of a Hugging Face tokenizer .json file")
        return Path(text)
    if not BARE_NAME.fullmatch(text):
        raise UnidiffError(f"tokenizer name {text!r} must be letters, digits, '.', '_' and '-' (e.g. {DEFAULT_NAME}), "
                           f"or the path of a Hugging Face tokenizer .json file")
    return ASSETS / f"{text}.json"


def load(name_or_path: str | os.PathLike = DEFAULT_NAME) -> Tokenizer:
    """Open a tokenizer by name (a JSON file in ``tokenizers/``) or by path to its JSON file.

    A checkpoint's options may name any file here, so it is read as data only: at most `MAX_BYTES`, UTF-8 JSON
    parsed by `tokenizers` (which runs nothing), and a regular file (not a device or a pipe)."""
    path = resolve(name_or_path)
    out = f"tokenizers/{path.name}` from the repository root" if path.parent == ASSETS else f"{path}`"
    if not path.is_file():
        known = sorted(p.stem for p in ASSETS.glob("*.json")) if ASSETS.is_dir() else []
        raise UnidiffError(f"no tokenizer file {path} (known tokenizers: {', '.join(known) or 'none'}); build it "
                           f"with `python -m unidiff_code.tokenizer --out {out}")
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)  # capped by reading, not by stat: /proc files claim size 0
    if len(data) > MAX_BYTES:
        raise UnidiffError(f"tokenizer file {path} is over {MAX_BYTES / 2**20:g} MiB, larger than any tokenizer this "
                           f"plugin reads: give the .json of a byte-level BPE (python -m unidiff_code.tokenizer)")
    try:
        tok = Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises a bare Exception for bad JSON or an unknown layout
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UnidiffError(f"cannot read tokenizer {path} ({why}): the file is corrupt or not a Hugging Face "
                           f"tokenizer JSON; rebuild it with `python -m unidiff_code.tokenizer --out {out}") from None
    tok.encode_special_tokens = True
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of ``text``, with no special tokens added."""
    try:
        return tok.encode(text, add_special_tokens=False).ids
    except TypeError:  # what tokenizers raises for a str that UTF-8 cannot encode
        if not isinstance(text, str):
            raise
        bad = next((i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)
        if bad is None:
            raise
        raise ModalityInputError(f"character {bad} of the text is a lone surrogate {text[bad]!r}, which UTF-8 cannot "
                                 "encode (was it read with errors='surrogateescape'?): read it with "
                                 "errors='replace' or fix the text") from None


def decode(tok: Tokenizer, ids: Sequence[int]) -> str:
    """The text of ``ids``; exact inverse of `encode`."""
    return tok.decode(list(ids), skip_special_tokens=False)


def bytes_per_token(tok: Tokenizer, sources: Sequence[str]) -> float:
    """UTF-8 bytes of ``sources`` divided by their number of tokens."""
    encodings = tok.encode_batch(list(sources), add_special_tokens=False)
    n_tokens = sum(len(e.ids) for e in encodings)
    return sum(len(s.encode("utf-8")) for s in sources) / max(n_tokens, 1)


def save(tok: Tokenizer, out: Path) -> None:
    """Write ``tok`` as JSON, atomically: a temporary file in the same folder, then a rename."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as e:
        raise UnidiffError(f"cannot write {out}: {e.strerror}") from None
    os.close(fd)
    try:
        tok.save(tmp, pretty=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_sources(split: str) -> list[str]:
    """The texts of a split's module files (files that are not UTF-8 are skipped)."""
    return [s for _, path in module_files(split) if (s := read_source(path)) is not None]


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_code.tokenizer") -> None:
    """Train the code tokenizer on the train split of the stdlib corpus and write its JSON."""
    from unidiff.cli import Parser

    parser = Parser(prog=prog, description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="output JSON, e.g. tokenizers/python-bpe-8k.json")
    parser.add_argument("--merges", type=int, default=8000, help="number of BPE merges to learn (default 8000)")
    args = parser.parse_args(argv)
    train, valid = split_sources("train"), split_sources("valid")
    tok = train_bpe(train, merges=args.merges)
    save(tok, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): vocab size {tok.get_vocab_size()}, "
          f"tags {', '.join(f'{t}={tok.token_to_id(t)}' for t in TAGS)}")
    for split, sources in (("train", train), ("valid", valid)):
        print(f"{split}: {len(sources)} files, {bytes_per_token(tok, sources):.3f} bytes/token")


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
