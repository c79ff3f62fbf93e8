"""The modality contract: what a plugin must provide for the engine to train on and generate its content.

A modality owns a tokenizer (content <-> local ids ``0..vocab_size-1``), a default length, an output file format
and, optionally, an output head, a 2-D layout (``grid = (rows, cols)``: its tokens fill a grid in raster order,
and the model adds row and column embeddings to them), a ``mirror()`` symmetry and ``sample_metrics(contents)``:
the modality's own quality figures of a set of samples as ``{name: value}``, whose docstring says what each means
(``unidiff bench`` adds them to its table; see `sample_metrics`). The engine never looks inside content: it only
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


def make_head(modality: Modality, d_model: int) -> nn.Module:
    """The output head of a modality: its own ``make_head(d_model)`` if it has one, else a linear projection."""
    custom = getattr(modality, "make_head", None)
    if custom is not None:
        return custom(d_model)
    return nn.Linear(d_model, modality.vocab_size, bias=False)


def sample_metrics(modality: Modality, contents: Sequence[Any]) -> dict[str, float]:
    """The modality's own quality figures of ``contents``; ``{}`` for a modality without them."""
    fn = getattr(modality, "sample_metrics", None)
    return {} if fn is None else {k: float(v) for k, v in fn(contents).items()}


def sample_metrics_doc(modality: Modality) -> str:
    """What the modality's figures mean: the first paragraph of its ``sample_metrics`` docstring, on one line
    ("" for a modality without them)."""
    fn = getattr(modality, "sample_metrics", None)
    return " ".join((getattr(fn, "__doc__", None) or "").split("\n\n")[0].split())


def grids_of(modalities) -> dict[str, tuple[int, int]]:
    """(rows, cols) of each modality that declares a ``grid`` attribute (e.g. VQ image codes)."""
    out = {}
    for m in modalities:
        grid = getattr(m, "grid", None)
        if grid is not None:
            rows, cols = (int(v) for v in grid)
            if rows < 1 or cols < 1:
                raise ValueError(f"modality {m.name!r} declares grid {grid}: rows and columns must be positive")
            out[m.name] = (rows, cols)
    return out
