"""The modality contract: what a plugin must provide for the engine to train on and generate its content.

A modality owns a tokenizer (content <-> local ids ``0..vocab_size-1``), a default length, an output file format
and, optionally, an output head, a 2-D layout (``grid = (rows, cols)``: its tokens fill a grid in raster order,
and the model adds row and column embeddings to them), a ``mirror()`` symmetry and ``sample_metrics(contents)``:
the modality's own quality figures of a set of samples as ``{name: value}``, whose docstring says what each means
(``unidiff bench`` adds them to its table; see `sample_metrics`). The engine never looks inside content: it only
sees local ids, which `unidiff.vocab.VocabLayout` maps to a joint vocabulary. A plugin registers a *factory* so a
checkpoint can rebuild the same modality from the options it stored (``factory(**modality.options())``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

from torch import nn


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
