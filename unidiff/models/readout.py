"""What the sampling loop asks of a denoiser: logits for these rows at these positions (`Readout.logits`).

Everything that changes *how* those logits are computed wraps the denoiser here, so the loop never branches on it:

- `Passes` runs the denoiser's own passes: through the approximate key/value cache when the sampler keeps one
  (`unidiff.models.kvcache.KVStore`, keyed by the rows' slots), and cut to each row's own width where reduced
  precision would otherwise round a row by its batch (`unidiff.models.widths`);
- `Guided` wraps a `Passes` with classifier-free guidance: one batched pass of the rows twice over, the second with
  the conditioning positions hidden from attention, read out separately and combined as
  ``uncond + w (cond - uncond)``.

The denoiser itself may be the built-in transformer or any architecture with ``features``/``logits`` (strand
symmetry's `Mirrored` is one such wrapper).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

import torch

from unidiff.models.kvcache import KVStore
from unidiff.models.widths import by_width


@dataclass
class Rows:
    """The (b, L) inputs of one pass over some of the sampler's slots."""

    ids: torch.Tensor  # (b, L) global ids
    modality: torch.Tensor  # (b, L) modality index
    positions: torch.Tensor  # (b, L) sequence positions
    pad_mask: torch.Tensor  # (b, L) True on padding
    condition: torch.Tensor  # (b, L) True where guidance hides the position (the conditioning segments)
    slots: torch.Tensor  # (b,) each row's slot in the key/value store
    widths: torch.Tensor  # (b,) each row's width up to its last real position
    need: torch.Tensor | None = None  # (b, L) the positions a cached pass must compute
    hole: torch.Tensor | None = None  # (b, L) variable-length hole positions
    cells: torch.Tensor | None = None  # (b, L) grid cells of grid-modality tokens (-1 elsewhere)


class Readout(Protocol):
    def logits(self, rows: Rows, at: tuple[torch.Tensor, torch.Tensor], blank: torch.Tensor | None) -> torch.Tensor:
        """(n, V) float32 logits at the n positions ``at`` (row, column index tensors) of ``rows``; ``blank`` (n,)
        says where BLANK may be predicted (None: nowhere)."""


class Passes:
    """The denoiser's own passes (cached and cut to widths as the sampler set up), read out at the asked positions."""

    def __init__(self, model, store: KVStore | None = None, cut: bool = False):
        self.model, self.store, self.cut = model, store, cut

    def features(self, rows: Rows) -> torch.Tensor:
        """(b, L, d) states of ``rows``, in one pass or, when cutting, one pass per distinct row width."""
        model, store = self.model, self.store

        def run(sel: slice | torch.Tensor, w: int) -> torch.Tensor:
            args = [t[sel, :w] for t in (rows.ids, rows.modality, rows.positions, rows.pad_mask)]
            kw = {name: t[sel, :w] for name, t in (("hole", rows.hole), ("cells", rows.cells)) if t is not None}
            if store is None:
                return model.features(*args, **kw)
            return store.features(model, rows.slots[sel], rows.need[sel, :w], *args, **kw)

        L = rows.ids.shape[1]
        return by_width(run, rows.widths, L) if self.cut else run(slice(None), L)

    def readout(self, h: torch.Tensor, modality: torch.Tensor, blank: torch.Tensor | None) -> torch.Tensor:
        return self.model.logits(h, modality) if blank is None else self.model.logits(h, modality, blank=blank)

    def logits(self, rows, at, blank):
        return self.readout(self.features(rows)[at], rows.modality[at], blank).float()


class Guided:
    """Classifier-free guidance with scale ``w`` around ``inner``: the rows' conditional and unconditional passes
    in one batch (the unconditional one in the store's second half of slots, ``slots + n_slots``)."""

    def __init__(self, inner: Passes, scale: float, n_slots: int):
        self.inner, self.scale, self.n_slots = inner, scale, n_slots

    def logits(self, rows, at, blank):
        n = len(rows.ids)
        twice = lambda t: None if t is None else t.repeat(2, 1)  # noqa: E731
        both = replace(rows, ids=twice(rows.ids), modality=twice(rows.modality), positions=twice(rows.positions),
                       pad_mask=torch.cat([rows.pad_mask, rows.pad_mask | rows.condition]),
                       condition=twice(rows.condition), slots=torch.cat([rows.slots, rows.slots + self.n_slots]),
                       widths=rows.widths.repeat(2), need=twice(rows.need), hole=twice(rows.hole),
                       cells=twice(rows.cells))
        h = self.inner.features(both)
        cond = self.inner.readout(h[:n][at], rows.modality[at], blank).float()
        uncond = self.inner.readout(h[n:][at], rows.modality[at], blank).float()
        return torch.where(torch.isfinite(cond), uncond + self.scale * (cond - uncond), cond)
