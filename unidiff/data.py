"""From user content to model batches: segments, rows, padding, and training windows.

A sample is a list of `Segment`s. Each is encoded by its modality, mapped into the joint vocabulary and
concatenated into one row; positions to generate start as MASK and are the row's *targets*. Adjacent segments
of the same modality join into one run (a prompt and its continuation are one text); when a row holds more than
one modality, each run is wrapped in its modality's BOS/EOS markers, which are always given.
Rows are right-padded into a `Batch`, so column j of a row is its own position j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.modality import Modality
from unidiff.rng import STREAM_EDIT, hashed_uniform
from unidiff.vocab import MASK, PAD, VocabLayout

ROLES = ("given", "generate", "edit")


@dataclass
class Segment:
    """One part of a sample.

    Args:
        modality: registry name of the modality, e.g. "text".
        content: what the modality encodes (a str for text); for ``role="generate"`` it is ignored.
        role: "given" (kept fixed), "generate" (starts fully masked) or "edit" (the content, of which a fraction
            ``strength`` of the tokens is re-masked and generated again).
        length: number of tokens to generate (``role="generate"`` only).
        strength: fraction of the content's tokens an edit re-generates: 0 keeps it, 1 regenerates all of it.
    """

    modality: str
    content: Any = None
    role: str = "given"
    length: int | None = None
    strength: float | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise UnidiffError(f"segment role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if self.role == "generate" and (self.length is None or self.length < 1):
            raise UnidiffError(f"a 'generate' segment needs a positive length; got {self.length!r}")
        if self.role == "edit" and (self.strength is None or not 0.0 <= self.strength <= 1.0):
            raise UnidiffError(f"an 'edit' segment needs a strength between 0 and 1; got {self.strength!r}")


@dataclass
class Row:
    ids: torch.Tensor  # (L,) global ids; MASK where generated, the original token where edited
    modality: torch.Tensor  # (L,) modality index
    targets: torch.Tensor  # (L,) bool, positions to generate
    spans: list[tuple[str, int, int, bool]]  # (modality, start, stop, generated) per segment


@dataclass
class Batch:
    ids: torch.Tensor  # (B, L)
    modality: torch.Tensor  # (B, L)
    positions: torch.Tensor  # (B, L)
    pad_mask: torch.Tensor  # (B, L) bool, True on padding
    targets: torch.Tensor  # (B, L) bool

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) for f in ("ids", "modality", "positions", "pad_mask", "targets")))

    @property
    def lengths(self) -> torch.Tensor:
        return (~self.pad_mask).sum(1)


def edit_targets(n: int, strength: float, seed: int, offset: int) -> list[bool]:
    """Which of an edited segment's n tokens to re-mask: strength * n of them, rounded half up, chosen by the counter-based
    RNG (seed, and the segment's offset in its row), so the choice is reproducible and batch-independent."""
    k = math.floor(strength * n + 0.5)  # half rounds up: strength 0.5 of one token edits it
    u = hashed_uniform(torch.tensor(seed), 0, STREAM_EDIT, torch.arange(offset, offset + n))
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.sort(u, stable=True).indices[:k]] = True
    return chosen.tolist()


def encode_row(segments: Sequence[Segment], layout: VocabLayout, modalities: Mapping[str, Modality],
               seed: int = 0) -> Row:
    """Encode one sample's segments into a row (raises a clear error on bad content).

    ``seed`` picks the tokens that 'edit' segments re-mask.
    """
    if not segments:
        raise UnidiffError("a sample needs at least one segment")
    markers = len({s.modality for s in segments}) > 1
    ids, mods, tgts, spans = [], [], [], []
    prev = None
    for i, seg in enumerate(segments):
        block = layout.block(seg.modality)
        if seg.role == "generate":
            part, tgt = [MASK] * seg.length, [True] * seg.length
        else:
            try:
                local = modalities[seg.modality].encode(seg.content)
            except ModalityInputError as e:
                raise ModalityInputError(f"segment {i} ({seg.modality}): {e}") from None
            part = layout.to_global(seg.modality, local).tolist()
            if seg.role == "edit" and not local:
                raise UnidiffError(f"segment {i} ({seg.modality}) is an edit of empty content: give something to edit")
            tgt = edit_targets(len(local), seg.strength, seed, len(ids)) if seg.role == "edit" \
                else [False] * len(local)
        if markers and seg.modality != prev:
            if prev is not None:
                ids.append(layout.block(prev).eos); mods.append(layout.index(prev)); tgts.append(False)
            ids.append(block.bos); mods.append(block.index); tgts.append(False)
        spans.append((seg.modality, len(ids), len(ids) + len(part), seg.role != "given"))
        ids += part; mods += [block.index] * len(part); tgts += tgt
        prev = seg.modality
    if markers:
        ids.append(layout.block(prev).eos); mods.append(layout.index(prev)); tgts.append(False)
    return Row(torch.tensor(ids, dtype=torch.long), torch.tensor(mods, dtype=torch.long),
               torch.tensor(tgts, dtype=torch.bool), spans)


def collate(rows: Sequence[Row]) -> Batch:
    """Right-pad rows into a batch."""
    B, L = len(rows), max(len(r.ids) for r in rows)
    ids = torch.full((B, L), PAD, dtype=torch.long)
    modality = torch.zeros((B, L), dtype=torch.long)
    targets = torch.zeros((B, L), dtype=torch.bool)
    pad = torch.ones((B, L), dtype=torch.bool)
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n], modality[b, :n], targets[b, :n], pad[b, :n] = r.ids, r.modality, r.targets, False
    return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, targets)


def encode_docs(docs: Sequence[Any], modality: Modality, layout: VocabLayout) -> list[torch.Tensor]:
    """Encode whole documents of one modality into global-id tensors."""
    return [layout.to_global(modality.name, modality.encode(d)) for d in docs]


class Windows:
    """Fixed-length training windows over the encoded documents of one modality.

    A window never crosses a document boundary; a document shorter than ``length`` is one padded window.

    Args:
        docs: documents as global-id tensors.
        length: window length.
        modality_index: the modality's index in the layout.
    """

    def __init__(self, docs: Sequence[torch.Tensor], length: int, modality_index: int):
        if length < 1:
            raise UnidiffError(f"window length must be at least 1; got {length}")
        docs = [d for d in docs if len(d)]
        if not docs:
            raise UnidiffError("the dataset is empty: no documents to train or evaluate on")
        self.length, self.modality_index = length, modality_index
        self.stream = torch.cat([d.long() for d in docs])
        starts, tiles, ends, offset = [], [], [], 0
        for d in docs:
            last = max(len(d) - length, 0)  # last start whose window fits in the document
            starts.append(offset + torch.arange(last + 1))
            tiles.append(offset + torch.arange(0, last + 1, length))
            ends.append(torch.full((last + 1,), offset + len(d)))
            offset += len(d)
        self.starts, self.tile_starts, self.ends = torch.cat(starts), torch.cat(tiles), torch.cat(ends)

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def batch(self, starts: torch.Tensor) -> Batch:
        """Windows beginning at the given stream offsets (each one of ``self.starts``)."""
        B, L = len(starts), self.length
        idx = starts.unsqueeze(1) + torch.arange(L)  # (B, L)
        end = self.ends[torch.searchsorted(self.starts, starts)]  # (B,) end of each window's document
        pad = idx >= end.unsqueeze(1)
        ids = torch.where(pad, PAD, self.stream[idx.clamp(max=len(self.stream) - 1)])
        modality = torch.full((B, L), self.modality_index, dtype=torch.long)
        return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, ~pad)

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        """Random windows, drawn uniformly over all start offsets."""
        return self.batch(self.starts[torch.randint(len(self.starts), (batch_size,), generator=generator)])

    def tiles(self, batch_size: int, max_windows: int | None = None):
        """Non-overlapping windows from the start of each document, in order (for evaluation)."""
        starts = self.tile_starts[:max_windows]
        for i in range(0, len(starts), batch_size):
            yield self.batch(starts[i:i + batch_size])
