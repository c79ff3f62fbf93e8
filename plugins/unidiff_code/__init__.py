"""unidiff_code: source code as byte-level BPE tokens, the Python standard library corpus, and code metrics.

A code segment is a str in a programming language. The language (``CodeModality(language="python")``) picks the
tokenizer, the file suffix and the tag token that opens every training unit; a new language is a tokenizer
trained with its tag (``python -m unidiff_code.tokenizer``) plus either a `Language` entry or the modality
options ``language``, ``tokenizer``, ``tag`` and ``suffix``. The BPE is byte-level, so every string round-trips
exactly, whitespace and indentation included.

The ``python`` dataset (`unidiff_code.corpus`) holds the functions and classes of the standard library, split by
module; the shipped ``code`` model was trained on it. `unidiff_code.metrics` judges any set of snippets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Sequence

from unidiff.errors import ModalityInputError, UnidiffError, UnknownNameError
from unidiff.hookspecs import hookimpl

__version__ = "0.1.0"
MODEL_DIR = Path(__file__).parent / "model"
AR_MODEL_DIR = Path(__file__).parent / "model-ar"


@dataclass(frozen=True)
class Language:
    tag: str  # the special token that opens every training unit, e.g. "<|python|>"
    suffix: str  # output file suffix
    tokenizer: str  # default tokenizer asset (tokenizers/NAME.json)


LANGUAGES = {"python": Language(tag="<|python|>", suffix=".py", tokenizer="python-bpe-8k")}
SUFFIX = re.compile(r"\.[A-Za-z0-9_+-]{1,16}")
MAX_OPTION_CHARS = 4096  # a language, tag or tokenizer path longer than this is not one


def _check_text(option: str, value, what: str) -> None:
    """Refuse a string option that is not a non-empty, printable str of sane length, naming it and its value."""
    if not (isinstance(value, str) and value and len(value) <= MAX_OPTION_CHARS and value.isprintable()):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        raise UnidiffError(f"code option {option}={shown} must be {what} (a non-empty printable str of at most "
                           f"{MAX_OPTION_CHARS} characters)")


class CodeModality:
    """Source code as byte-level BPE tokens.

    Args:
        language: a key of `LANGUAGES`, or a new language when ``tag`` and ``suffix`` are given too.
        tokenizer: the tokenizer (default: the language's): the bare name of one shipped in ``tokenizers/``, or the
            path of a Hugging Face tokenizer ``.json`` file; it must hold the tag. A checkpoint's options may name
            any file, so it is read as data only (`unidiff_code.tokenizer.load`: at most 32 MiB of JSON parsed by
            ``tokenizers``, never executed).
        tag, suffix: the language's tag token and file suffix (default: its `LANGUAGES` entry); the suffix is a dot
            and 1..16 letters, digits, ``_``, ``+`` or ``-``, as it names output files. A checkpoint stores all
            four, so a language added by these options is rebuilt as it was trained.
    """

    name = "code"
    default_length = 128

    def __init__(self, language: str = "python", tokenizer: str | None = None, tag: str | None = None,
                 suffix: str | None = None):
        # unidiff_code.tokenizer is imported where it is used, never at the top of this package: a module loaded
        # with the package would be loaded again by ``python -m unidiff_code.tokenizer`` (Python warns of that).
        from unidiff_code.tokenizer import load

        # Every option is checked before the tokenizer is read: a checkpoint's options are untrusted input.
        _check_text("language", language, "a language name such as 'python'")
        if tokenizer is not None and not isinstance(tokenizer, PurePath):
            _check_text("tokenizer", tokenizer, "a tokenizer name such as 'python-bpe-8k' or a .json path")
        if tag is not None:
            _check_text("tag", tag, "the language's tag token, e.g. '<|python|>'")
        if suffix is not None and not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)):
            raise UnidiffError(f"code option suffix={suffix!r} must be a file suffix: a dot and 1..16 letters, "
                               f"digits, '_', '+' or '-', e.g. '.py'")
        known = LANGUAGES.get(language)
        if known is None and (tokenizer is None or tag is None or suffix is None):
            raise UnknownNameError("language", language, sorted(LANGUAGES),
                                   "Give its tokenizer, tag and suffix as modality options, or add a Language "
                                   "entry to unidiff_code.LANGUAGES")
        self.language = language
        self.tokenizer_name = known.tokenizer if tokenizer is None else str(tokenizer)
        self.tag = tag or known.tag
        self.file_suffix = suffix or known.suffix
        try:
            self.tokenizer = load(self.tokenizer_name)
        except UnidiffError as e:
            raise UnidiffError(f"code option tokenizer={self.tokenizer_name!r}: {e}") from None
        self.vocab_size = self.tokenizer.get_vocab_size()
        self.tag_id = self.tokenizer.token_to_id(self.tag)
        if self.tag_id is None:
            raise ModalityInputError(f"code option tag={self.tag!r}: tokenizer {self.tokenizer_name!r} has no tag token "
                                     f"{self.tag!r} for {language}: train it with that tag "
                                     f"(python -m unidiff_code.tokenizer)")

    def encode(self, content: str) -> list[int]:
        if not isinstance(content, str):
            raise ModalityInputError(f"code content must be a str, got {type(content).__name__}")
        from unidiff_code.tokenizer import encode

        # The tag is a token only where it opens the content (as in the training units); anywhere else, and
        # every other special-looking string, is plain text (the tokenizer encodes special tokens as text).
        head = [self.tag_id] if content.startswith(self.tag) else []
        body = content[len(self.tag):] if head else content
        return head + encode(self.tokenizer, body)

    def decode(self, ids: Sequence[int]) -> str:
        from unidiff_code.tokenizer import decode

        # Byte-level pieces of a multi-byte character that generation split come back as U+FFFD, not an error.
        return decode(self.tokenizer, [int(i) for i in ids])

    def write(self, contents: Sequence[str], path: Path) -> None:
        """One file; samples after the first are separated by a comment line naming them."""
        parts = [c if c.endswith("\n") else c + "\n" for c in contents]
        text = "".join(p if i == 0 else f"\n# ---- sample {i} ----\n{p}" for i, p in enumerate(parts))
        Path(path).write_text(text, encoding="utf-8")

    def sample_metrics(self, contents: Sequence[str]) -> dict[str, float]:
        """parses = the fraction of samples whose first complete unit (a def, a class or a statement, after the
        language tag) parses (`unidiff_code.metrics`; Python only)."""
        from unidiff_code.metrics import first_unit, validity_rate

        if self.language != "python":
            return {}
        return {"parses": validity_rate([first_unit(c[len(self.tag):] if c.startswith(self.tag) else c)
                                         for c in contents])}

    def options(self) -> dict:
        return {"language": self.language, "tokenizer": self.tokenizer_name, "tag": self.tag,
                "suffix": self.file_suffix}


@hookimpl
def register_modalities(register):
    register("code", CodeModality)


@hookimpl
def register_datasets(register):
    from unidiff_code.corpus import python

    register("python", python, modality="code")


@hookimpl
def register_models(register):
    if MODEL_DIR.is_dir():
        register("code", MODEL_DIR)
    if AR_MODEL_DIR.is_dir():  # the autoregressive twin of "code": same network, data and budget (unidiff bench)
        register("code-ar", AR_MODEL_DIR)


@hookimpl
def register_commands(register):
    """Each tool of this plugin as ``unidiff code TOOL`` (also ``python -m unidiff_code.TOOL``)."""
    register("code measure", "unidiff_code.measure:main", help="the code model's figures (docs/results/code.md)")
    register("code metrics", "unidiff_code.metrics:main",
             help="quality metrics of Python files: syntax, first unit, doctests")
    register("code tokenizer", "unidiff_code.tokenizer:main", help="train the code BPE tokenizer")
