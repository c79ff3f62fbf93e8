"""The modality contract: what a plugin must provide for the engine to train on and generate its content.

A modality owns a tokenizer (content <-> local ids ``0..vocab_size-1``), a default length and an output file
format (`Modality`, required), and may have any of the members `ModalityExtras` declares: an output head, a 2-D
layout (``grid``), a ``mirror()`` symmetry, its own quality figures (``sample_metrics``), a terminal preview, a file
reader, in-painting boxes, batch encoding. The engine reads an optional member only through `optional`, which
refuses a name the contract does not declare. The engine never looks inside content: it only
sees local ids, which `unidiff.vocab.VocabLayout` maps to a joint vocabulary. A plugin registers a *factory* so a
checkpoint can rebuild the same modality from the options it stored (``factory(**modality.options())``).

The engine calls a plugin's ``encode``/``decode`` through `checked_encode`/`checked_decode`: ids that are not a flat
sequence of ints in ``0..vocab_size-1``, or an exception other than `UnidiffError`, become a `PluginError` that
names the modality, its plugin's module and the offending value, instead of a traceback from deep inside.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from torch import nn

from unidiff.errors import PluginError, UnidiffError

MAX_REPR = 80  # characters of an offending value an error message shows


@runtime_checkable
class Modality(Protocol):
    name: str  # registry name, e.g. "text"
    vocab_size: int  # number of local content ids
    default_length: int  # tokens generated when the user gives no length
    file_suffix: str  # e.g. ".txt", ".fa", ".png"

    def encode(self, content: Any) -> list[int]:
        """Content -> local ids. Raise `ModalityInputError` naming the bad item and its position."""

    def decode(self, ids: Sequence[int]) -> Any:
        """Local ids -> content."""

    def write(self, contents: Sequence[Any], path: Path) -> None:
        """Write generated contents to ``path`` in the modality's file format."""

    def options(self) -> dict:
        """JSON-serialisable keyword arguments that rebuild this modality through its factory."""


class ModalityExtras(Protocol):
    """The optional members of a modality: each one the engine or the CLI uses when a modality has it. The engine
    reads them only through `optional` (one place, so nothing is looked up that this contract does not name)."""

    grid: tuple[int, int]
    """(rows, cols): the tokens fill a grid in raster order; the model adds row and column embeddings (VQ images)."""
    prompt_as_condition: bool
    """True: a text prompt is the caption to draw (the condition), not content to continue (images)."""
    tag: str
    """The opener of one unit of content (e.g. ``<|python|>``): ``unidiff bench``'s default prompt (code)."""

    def make_head(self, d_model: int) -> nn.Module:
        """The modality's own output head, (..., d_model) -> (..., vocab_size); without it, a bias-free linear."""

    def mirror(self) -> Sequence[int]:
        """A permutation of the local ids under which the content reads the same reversed (the DNA complement):
        ``--symmetric`` averages the model over both strands."""

    def sample_metrics(self, contents: Sequence[Any]) -> dict[str, float]:
        """The modality's own quality figures of a set of samples, ``{name: value}``; the first paragraph of the
        docstring says what each means (``unidiff bench`` prints it under its table)."""

    def show(self, content: Any) -> str:
        """A terminal preview of content that is not text (images), printed by the sampling commands."""

    def to_array(self, path: str) -> Any:
        """The content of a file (an image file as a uint8 array): how ``caption``/``inpaint`` read their file;
        without it, the file is read as UTF-8 text."""

    def cells_of_box(self, box: Sequence[int]) -> list[int]:
        """The token positions a pixel box covers, for ``unidiff inpaint --box``."""

    def encode_many(self, contents: Sequence[Any]) -> list[list[int]]:
        """``[encode(c) for c in contents]`` in one batch (e.g. one pass of a VQ encoder): training documents are
        encoded with it."""


OPTIONAL = frozenset(n for n in (*ModalityExtras.__annotations__, *vars(ModalityExtras)) if not n.startswith("_"))


def optional(modality: Any, name: str, default: Any = None) -> Any:
    """The optional member ``name`` of ``modality`` (see `ModalityExtras`), or ``default`` if it has none."""
    if name not in OPTIONAL:
        raise ValueError(f"{name!r} is not an optional modality member; declare it in ModalityExtras: "
                         f"{sorted(OPTIONAL)}")
    return getattr(modality, name, default)


def short_repr(value: Any) -> str:
    """``repr(value)``, cut to `MAX_REPR` characters: an error message shows the offending value, not a megabyte."""
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."


def vocab_size_problem(value: Any) -> str | None:
    """Why ``value`` is not a usable vocab_size (a positive int, not a bool), or None if it is."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return f"vocab_size must be a positive int (the number of local ids); got {short_repr(value)}"
    return None


def _is_array(value: Any) -> bool:
    """A torch tensor or numpy array (duck-typed: numpy is not a dependency of the core)."""
    return hasattr(value, "ndim") and hasattr(value, "tolist")


def _who(modality: Any) -> str:
    return f"modality {getattr(modality, 'name', '?')!r} (plugin module {type(modality).__module__})"


def _bug(modality: Any, what: str, hint: str = "") -> PluginError:
    return PluginError(f"{_who(modality)}: {what}; this is a bug in the plugin: report it to its authors{hint}")


def checked_ids(modality: Modality, ids: Any, call: str) -> list[int]:
    """``ids`` (what ``call`` returned) as a list of ints in ``0..vocab_size-1``, or a `PluginError` naming the
    first offending value and its position."""
    size = getattr(modality, "vocab_size", None)
    if (problem := vocab_size_problem(size)) is not None:
        raise _bug(modality, problem)
    if _is_array(ids):
        ids = ids.tolist()  # a float, bool or 2-D array becomes floats, bools or lists, refused below
    if not isinstance(ids, (list, tuple)):
        raise _bug(modality, f"{call} returned {type(ids).__name__} {short_repr(ids)}, not a list of ints")
    ids = list(ids)
    if set(map(type, ids)) - {int}:  # the fast path for the usual list of plain ints skips this loop
        for k, i in enumerate(ids):
            if isinstance(i, bool) or not isinstance(i, numbers.Integral):
                raise _bug(modality, f"{call} returned {type(i).__name__} {short_repr(i)} at position {k}; ids "
                                     f"must be ints in 0..{size - 1}")
            ids[k] = int(i)
    if ids and (min(ids) < 0 or max(ids) >= size):
        k = next(k for k, i in enumerate(ids) if not 0 <= i < size)
        raise _bug(modality, f"{call} returned id {ids[k]} at position {k}, outside 0..{size - 1} "
                             f"(vocab_size {size})")
    return ids


def checked_encode(modality: Modality, content: Any) -> list[int]:
    """``modality.encode(content)`` as a list of ints in ``0..vocab_size-1``; the plugin's own `UnidiffError`
    (e.g. `ModalityInputError`) passes through, anything else it raises or returns is a `PluginError`."""
    try:
        ids = modality.encode(content)
    except UnidiffError:
        raise
    except Exception as e:
        raise _bug(modality, f"encode({short_repr(content)}) raised {type(e).__name__}: {e}",
                   " (a modality raises ModalityInputError for content it cannot encode)") from e
    return checked_ids(modality, ids, f"encode({short_repr(content)})")


def checked_decode(modality: Modality, ids: Sequence[int]) -> Any:
    """``modality.decode(ids)``; the plugin's own `UnidiffError` passes through, anything else it raises is a
    `PluginError` naming the ids."""
    try:
        return modality.decode(ids)
    except UnidiffError:
        raise
    except Exception as e:
        shown = ids.tolist() if _is_array(ids) else ids
        raise _bug(modality, f"decode({short_repr(shown)}) raised {type(e).__name__}: {e}") from e


def checked_encode_many(modality: Modality, contents: Sequence[Any], batch: int = 256) -> list[list[int]]:
    """`checked_encode` of each of ``contents``, through the modality's ``encode_many`` (``batch`` at a time) when
    it has one."""
    many = optional(modality, "encode_many")
    if many is None:
        return [checked_encode(modality, c) for c in contents]
    out = []
    for start in range(0, len(contents), batch):
        part = list(contents[start:start + batch])
        try:
            rows = many(part)
        except UnidiffError:
            raise
        except Exception as e:
            raise _bug(modality, f"encode_many of {len(part)} items raised {type(e).__name__}: {e}",
                       " (a modality raises ModalityInputError for content it cannot encode)") from e
        if not isinstance(rows, (list, tuple)) or len(rows) != len(part):
            raise _bug(modality, f"encode_many of {len(part)} items returned {short_repr(rows)}, not one list of "
                                 f"ids per item")
        out += [checked_ids(modality, ids, f"encode_many (item {start + k})") for k, ids in enumerate(rows)]
    return out


def make_head(modality: Modality, d_model: int) -> nn.Module:
    """The output head of a modality: its own ``make_head(d_model)`` if it has one, else a linear projection."""
    custom = optional(modality, "make_head")
    if custom is not None:
        return custom(d_model)
    return nn.Linear(d_model, modality.vocab_size, bias=False)


def sample_metrics(modality: Modality, contents: Sequence[Any]) -> dict[str, float]:
    """The modality's own quality figures of ``contents``; ``{}`` for a modality without them."""
    fn = optional(modality, "sample_metrics")
    return {} if fn is None else {k: float(v) for k, v in fn(contents).items()}


def sample_metrics_doc(modality: Modality) -> str:
    """What the modality's figures mean: the first paragraph of its ``sample_metrics`` docstring, on one line
    ("" for a modality without them)."""
    fn = optional(modality, "sample_metrics")
    return " ".join((getattr(fn, "__doc__", None) or "").split("\n\n")[0].split())


def grids_of(modalities) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each modality that declares a ``grid`` attribute (e.g. VQ image codes)."""
    out = {}
    for m in modalities:
        grid = optional(m, "grid")
        if grid is not None:
            rows, cols = (int(v) for v in grid)
            if rows < 1 or cols < 1:
                raise ValueError(f"modality {m.name!r} declares grid {grid}: rows and columns must be positive")
            out[m.name] = (rows, cols)
    return out
