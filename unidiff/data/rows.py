"""From segments to model batches: one `Row` per sample, right-padded into a `Batch`.

Each segment is encoded by its modality, mapped into the joint vocabulary and concatenated into one row; positions
to generate start as MASK and are the row's *targets*. Adjacent segments of the same modality join into one run (a
prompt and its continuation are one text); when the model's vocabulary holds more than one modality (or is an
autoregressive model's, see `VocabLayout`), each run is wrapped in its modality's BOS/EOS markers, which are always
given. Rows are right-padded into a `Batch`, so column j of a row is its own position j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.modality import Modality, grids_of
from unidiff.vocab import MASK, PAD, VocabLayout
from unidiff.data.segments import Segment, edit_targets, encode_content


@dataclass
class Row:
    ids: torch.Tensor  # (L,) global ids; MASK where generated, the original token where edited
    modality: torch.Tensor  # (L,) modality index
    targets: torch.Tensor  # (L,) bool, positions to generate
    spans: list[tuple[str, int, int, bool]]  # (modality, start, stop, generated) per segment
    condition: torch.Tensor | None = None  # (L,) bool, positions of 'given' segments (what guidance hides)
    blank_ok: torch.Tensor | None = None  # (L,) bool, positions that may become BLANK (variable-length holes)
    segment: torch.Tensor | None = None  # (L,) long, index of the segment each position belongs to (-1: markers)
    rescore: list[tuple[int, int, float]] | None = None  # (start, length, strength) of edits ordered by confidence
    cells: torch.Tensor | None = None  # (L,) long, raster cell of each token of a grid modality, -1 elsewhere


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L)
    modality: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, L)
    pad_mask: torch.Tensor  # (B, L) bool, True on padding
    targets: torch.Tensor  # (B, L) bool
    condition: torch.Tensor | None = None  # (B, L) bool, what classifier-free guidance hides (None: ~targets)
    blank_ok: torch.Tensor | None = None  # (B, L) bool, where BLANK may be predicted (None: nowhere)
    group: torch.Tensor | None = None  # (B, L) long, sampling group of each target (None: all 0, see sample)
    # (B, L) bool: targets that training noises at the row's second time, independently of the others (a condition
    # that is itself a target, see `Windows.sample`); None: one time per row
    second: torch.Tensor | None = None
    # (B, L) long: the raster cell (2-D position) of each token of a grid modality, -1 elsewhere; None: no grids
    cells: torch.Tensor | None = None

    FIELDS = ("ids", "modality", "positions", "pad_mask", "targets", "condition", "blank_ok", "group", "second",
              "cells")

    def to(self, device) -> "Batch":
        return Batch(*(None if getattr(self, f) is None else getattr(self, f).to(device) for f in self.FIELDS))

    def select(self, rows: torch.Tensor) -> "Batch":
        """The batch of these rows (indices on the batch's device or the CPU)."""
        return Batch(*(None if getattr(self, f) is None else getattr(self, f)[rows.to(self.ids.device)]
                       for f in self.FIELDS))

    @property
    def lengths(self) -> torch.Tensor:
        return (~self.pad_mask).sum(1)


def grid_cells(ids: torch.Tensor, modality: torch.Tensor, index: int, bos: int, eos: int, cells: int) -> torch.Tensor:
    """(B, L) ids and modality indices -> (B, L) cell number k (raster order) of each token of a grid modality's run,
    -1 elsewhere. A run starts after its BOS marker (at position 0 in a layout without markers); k counts the
    tokens since, and only the first ``cells`` of a run lie on the grid."""
    L = ids.shape[1]
    j = torch.arange(L, device=ids.device).expand_as(ids)
    last_bos = torch.where(ids == bos, j, torch.full_like(j, -1)).cummax(dim=1).values
    k = j - last_bos - 1
    on = (modality == index) & (ids != bos) & (ids != eos) & (k < cells)
    return torch.where(on, k, torch.full_like(k, -1))


def cells_of(ids: torch.Tensor, modality: torch.Tensor, layout: VocabLayout,
             grids: Mapping[str, tuple[int, int]]) -> torch.Tensor | None:
    """(B, L) raster cells of the tokens of every grid modality (``grids``: name -> (rows, cols)), -1 elsewhere;
    None when the layout has no grid modality. This is where 2-D structure enters: the model reads it as given."""
    grids = {n: g for n, g in grids.items() if n in layout.blocks}
    if not grids:
        return None
    out = torch.full_like(ids, -1)
    for name, (rows, cols) in grids.items():
        b = layout.blocks[name]
        out = torch.where(modality == b.index, grid_cells(ids, modality, b.index, b.bos, b.eos, rows * cols), out)
    return out


def encode_row(segments: Sequence[Segment], layout: VocabLayout, modalities: Mapping[str, Modality],
               seed: int = 0) -> Row:
    """Encode one sample's segments into a row (raises a clear error on bad content).

    ``seed`` picks the tokens that 'edit' segments re-mask.
    """
    if not segments:
        raise UnidiffError("a sample needs at least one segment")
    markers = layout.markers  # as training rows have them (see make_windows)
    if any(s.variable for s in segments) and not layout.has_blank:
        raise UnidiffError("variable-length holes need a model trained with them (data.holes > 0) and "
                           "this one was not: use fixed-length holes (<mask:N>) or such a model")
    ids, mods, tgts, spans, segs, rescore = [], [], [], [], [], []
    run_of: list[int] = []  # per position: the modality run of a marker, -1 for content
    runs: list[list[int]] = []  # segment indices of each run

    def marker(token: int, name: str) -> None:
        ids.append(token); mods.append(layout.index(name)); tgts.append(False); segs.append(-1)
        run_of.append(len(runs) - 1)

    prev = None
    for i, seg in enumerate(segments):
        block = layout.block(seg.modality)
        if seg.role == "generate":
            part, tgt = [MASK] * seg.length, [True] * seg.length
        else:
            try:
                local = encode_content(modalities[seg.modality], seg.content)
                part = layout.to_global(seg.modality, local).tolist()
            except (ModalityInputError, ValueError) as e:
                raise ModalityInputError(f"segment {i} ({seg.modality}): {e}") from None
            if seg.role == "edit" and not local:
                raise UnidiffError(f"segment {i} ({seg.modality}) is an edit of empty content: give something to edit")
            if seg.role == "edit" and seg.order == "random":
                tgt = edit_targets(len(local), seg.strength, seed, len(ids))
            else:  # given, or an edit whose tokens the pipeline picks by confidence (see Row.rescore)
                tgt = [False] * len(local)

        if seg.modality != prev:
            if markers and prev is not None:
                marker(layout.block(prev).eos, prev)
            runs.append([])
            if markers:
                marker(block.bos, seg.modality)
        runs[-1].append(i)
        spans.append((seg.modality, len(ids), len(ids) + len(part), seg.role != "given"))
        if seg.role == "edit" and seg.order == "confidence":
            rescore.append((len(ids), len(part), seg.strength))
        ids += part; mods += [block.index] * len(part); tgts += tgt; segs += [i] * len(part)
        run_of += [-1] * len(part)
        prev = seg.modality
    if markers:
        marker(layout.block(prev).eos, prev)
    segment = torch.tensor(segs, dtype=torch.long)
    given = [s.role == "given" for s in segments]
    given_run = [all(given[j] for j in run) for run in runs]
    # What classifier-free guidance hides: given segments, and the markers of runs that are wholly given.
    condition = torch.tensor([given[j] if j >= 0 else given_run[r] for j, r in zip(segs, run_of)], dtype=torch.bool)
    blank_ok = torch.tensor([j >= 0 and segments[j].variable for j in segs], dtype=torch.bool)
    ids, mods = torch.tensor(ids, dtype=torch.long), torch.tensor(mods, dtype=torch.long)
    cells = cells_of(ids.unsqueeze(0), mods.unsqueeze(0), layout, grids_of(modalities.values()))
    return Row(ids, mods, torch.tensor(tgts, dtype=torch.bool), spans, condition, blank_ok, segment, rescore,
               None if cells is None else cells[0])


def collate(rows: Sequence[Row], groups: Sequence[torch.Tensor] | None = None) -> Batch:
    """Right-pad rows into a batch; ``groups`` gives each row's (L,) sampling group ids (see `sample`)."""
    B, L = len(rows), max(len(r.ids) for r in rows)
    ids = torch.full((B, L), PAD, dtype=torch.long)
    modality = torch.zeros((B, L), dtype=torch.long)
    targets = torch.zeros((B, L), dtype=torch.bool)
    pad = torch.ones((B, L), dtype=torch.bool)
    condition, blank_ok = torch.zeros((B, L), dtype=torch.bool), torch.zeros((B, L), dtype=torch.bool)
    group = torch.zeros((B, L), dtype=torch.long)
    cells = torch.full((B, L), -1, dtype=torch.long) if any(r.cells is not None for r in rows) else None
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n], modality[b, :n], targets[b, :n], pad[b, :n] = r.ids, r.modality, r.targets, False
        condition[b, :n] = r.condition if r.condition is not None else ~r.targets
        if r.blank_ok is not None:
            blank_ok[b, :n] = r.blank_ok
        if groups is not None:
            group[b, :n] = groups[b]
        if cells is not None and r.cells is not None:
            cells[b, :n] = r.cells
    return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, targets, condition,
                 blank_ok if blank_ok.any() else None, group if groups is not None else None, None, cells)
