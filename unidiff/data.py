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
EDIT_ORDERS = ("random", "confidence")


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
        order: which tokens an edit re-masks: "random", or "confidence" (those the model finds least likely in
            their context first; scored by the pipeline before sampling).
        variable: a 'generate' segment of *up to* ``length`` tokens: the model may fill some positions with BLANK,
            which decoding drops (needs a model trained with blanks, ``data.blank_runs > 0``).
        steps, policy, schedule: per-segment sampling control (None: the call's settings). Segments that set
            them decode as their own group, concurrently with the rest of the row, e.g. a short caption in a few
            steps and a long image in many.
    """

    modality: str
    content: Any = None
    role: str = "given"
    length: int | None = None
    strength: float | None = None
    order: str = "random"
    variable: bool = False
    steps: int | None = None
    policy: Any = None
    schedule: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise UnidiffError(f"segment role must be one of {', '.join(ROLES)}; got {self.role!r}")
        if self.role == "generate" and (self.length is None or self.length < 1):
            raise UnidiffError(f"a 'generate' segment needs a positive length; got {self.length!r}")
        if self.role == "edit" and (self.strength is None or not 0.0 <= self.strength <= 1.0):
            raise UnidiffError(f"an 'edit' segment needs a strength between 0 and 1; got {self.strength!r}")
        if self.order not in EDIT_ORDERS:
            raise UnidiffError(f"an edit's order must be one of {', '.join(EDIT_ORDERS)}; got {self.order!r}")
        if self.variable and self.role != "generate":
            raise UnidiffError("only a 'generate' segment can have a variable length")
        if self.steps is not None and self.steps < 1:
            raise UnidiffError(f"a segment's steps must be at least 1; got {self.steps}")

    @property
    def spec(self) -> tuple | None:
        """The segment's own sampling settings (policy, steps, schedule), or None if it has none."""
        if self.policy is None and self.steps is None and self.schedule is None:
            return None
        return (self.policy, self.steps, self.schedule)


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

    def to(self, device) -> "Batch":
        return Batch(*(None if getattr(self, f) is None else getattr(self, f).to(device)
                       for f in ("ids", "modality", "positions", "pad_mask", "targets", "condition", "blank_ok",
                                 "group")))

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
    if any(s.variable for s in segments) and not layout.has_blank:
        raise UnidiffError("variable-length holes need a model trained with blank tokens (data.blank_runs > 0) and "
                           "this one was not: use fixed-length holes (<mask:N>) or such a model")
    ids, mods, tgts, spans, segs, rescore = [], [], [], [], [], []
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
            if seg.role == "edit" and seg.order == "random":
                tgt = edit_targets(len(local), seg.strength, seed, len(ids))
            else:  # given, or an edit whose tokens the pipeline picks by confidence (see Row.rescore)
                tgt = [False] * len(local)

        if markers and seg.modality != prev:
            if prev is not None:
                ids.append(layout.block(prev).eos); mods.append(layout.index(prev)); tgts.append(False); segs.append(-1)
            ids.append(block.bos); mods.append(block.index); tgts.append(False); segs.append(-1)
        spans.append((seg.modality, len(ids), len(ids) + len(part), seg.role != "given"))
        if seg.role == "edit" and seg.order == "confidence":
            rescore.append((len(ids), len(part), seg.strength))
        ids += part; mods += [block.index] * len(part); tgts += tgt; segs += [i] * len(part)
        prev = seg.modality
    if markers:
        ids.append(layout.block(prev).eos); mods.append(layout.index(prev)); tgts.append(False); segs.append(-1)
    segment = torch.tensor(segs, dtype=torch.long)
    role = [s.role for s in segments]
    condition = torch.tensor([j >= 0 and role[j] == "given" for j in segs], dtype=torch.bool)
    blank_ok = torch.tensor([j >= 0 and segments[j].variable for j in segs], dtype=torch.bool)
    return Row(torch.tensor(ids, dtype=torch.long), torch.tensor(mods, dtype=torch.long),
               torch.tensor(tgts, dtype=torch.bool), spans, condition, blank_ok, segment, rescore)


def collate(rows: Sequence[Row], groups: Sequence[torch.Tensor] | None = None) -> Batch:
    """Right-pad rows into a batch; ``groups`` gives each row's (L,) sampling group ids (see `sample`)."""
    B, L = len(rows), max(len(r.ids) for r in rows)
    ids = torch.full((B, L), PAD, dtype=torch.long)
    modality = torch.zeros((B, L), dtype=torch.long)
    targets = torch.zeros((B, L), dtype=torch.bool)
    pad = torch.ones((B, L), dtype=torch.bool)
    condition, blank_ok = torch.zeros((B, L), dtype=torch.bool), torch.zeros((B, L), dtype=torch.bool)
    group = torch.zeros((B, L), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.ids)
        ids[b, :n], modality[b, :n], targets[b, :n], pad[b, :n] = r.ids, r.modality, r.targets, False
        condition[b, :n] = r.condition if r.condition is not None else ~r.targets
        if r.blank_ok is not None:
            blank_ok[b, :n] = r.blank_ok
        if groups is not None:
            group[b, :n] = groups[b]
    return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, targets, condition,
                 blank_ok if blank_ok.any() else None, group if groups is not None else None)


@dataclass
class Document:
    """A training document with a condition: ``condition`` (content of the same modality, e.g. a title) is given
    before every window cut from ``content``, unless condition dropout hides it."""

    content: Any
    condition: Any = None


def encode_docs(docs: Sequence[Any], modality: Modality, layout: VocabLayout) -> list[torch.Tensor]:
    """Encode whole documents of one modality into global-id tensors (a `Document` gives its content)."""
    return [layout.to_global(modality.name, modality.encode(d.content if isinstance(d, Document) else d))
            for d in docs]


def encode_conditions(docs: Sequence[Any], modality: Modality, layout: VocabLayout) -> list[torch.Tensor] | None:
    """The encoded conditions of `Document`s (an empty tensor for a document without one); None if none has one."""
    if not any(isinstance(d, Document) and d.condition is not None for d in docs):
        return None
    return [layout.to_global(modality.name, modality.encode(d.condition))
            if isinstance(d, Document) and d.condition is not None else torch.zeros(0, dtype=torch.long)
            for d in docs]


class Windows:
    """Fixed-length training rows over the encoded documents of one modality.

    A window never crosses a document boundary; a document shorter than ``length`` is one padded window. With
    ``conditions`` (one encoded condition per document), a row whose condition is kept holds the condition
    (given: not a target) followed by a window shortened to fit ``length``; condition dropout hides it, and the
    row is a plain window, so one model learns both p(x | condition) and p(x) (for classifier-free guidance).

    Args:
        docs: documents as global-id tensors.
        length: row length.
        modality_index: the modality's index in the layout.
        conditions: per document, the global ids of its condition (or None for no conditions).
    """

    def __init__(self, docs: Sequence[torch.Tensor], length: int, modality_index: int,
                 conditions: Sequence[torch.Tensor] | None = None):
        if length < 1:
            raise UnidiffError(f"window length must be at least 1; got {length}")
        keep = [i for i, d in enumerate(docs) if len(d)]
        if not keep:
            raise UnidiffError("the dataset is empty: no documents to train or evaluate on")
        docs = [docs[i] for i in keep]
        empty = torch.zeros(0, dtype=torch.long)
        conds = [conditions[i] for i in keep] if conditions is not None else [empty] * len(docs)
        longest = max(len(c) for c in conds)
        if longest >= length:
            raise UnidiffError(f"a document's condition takes {longest} tokens, leaving no room in rows of {length}: "
                               f"shorten the conditions or raise data.seq_len")
        self.length, self.modality_index = length, modality_index
        self.stream = torch.cat([d.long() for d in docs])
        self.cond_len = torch.tensor([len(c) for c in conds], dtype=torch.long)  # (D,)
        self.cond_ids = torch.full((len(docs), max(longest, 1)), PAD, dtype=torch.long)  # (D, Cmax)
        for i, c in enumerate(conds):
            self.cond_ids[i, :len(c)] = c
        starts, tiles, ends, docs_of, offset = [], [], [], [], 0
        for i, d in enumerate(docs):
            last = max(len(d) - length, 0)  # last start whose window fits in the document
            starts.append(offset + torch.arange(last + 1))
            tiles.append(offset + torch.arange(0, last + 1, length))
            ends.append(torch.full((last + 1,), offset + len(d)))
            docs_of.append(torch.full((last + 1,), i))
            offset += len(d)
        self.starts, self.tile_starts, self.ends = torch.cat(starts), torch.cat(tiles), torch.cat(ends)
        self.doc_of = torch.cat(docs_of)

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def batch(self, starts: torch.Tensor, keep_condition: torch.Tensor | None = None) -> Batch:
        """Rows whose windows begin at the given stream offsets (each one of ``self.starts``); ``keep_condition``
        (B,) bool says which rows carry their document's condition (default: none)."""
        B, L = len(starts), self.length
        at = torch.searchsorted(self.starts, starts)
        end, doc = self.ends[at], self.doc_of[at]  # (B,) end and index of each window's document
        c = self.cond_len[doc] if keep_condition is not None else torch.zeros(B, dtype=torch.long)
        if keep_condition is not None:
            c = torch.where(keep_condition, c, 0)
        j = torch.arange(L)
        in_cond = j < c.unsqueeze(1)  # (B, L)
        idx = starts.unsqueeze(1) + j - c.unsqueeze(1)  # stream index of each content position
        pad = ~in_cond & (idx >= end.unsqueeze(1))
        content = self.stream[idx.clamp(0, len(self.stream) - 1)]
        cond = self.cond_ids[doc][:, j.clamp(max=self.cond_ids.shape[1] - 1)]
        ids = torch.where(pad, PAD, torch.where(in_cond, cond, content))
        modality = torch.full((B, L), self.modality_index, dtype=torch.long)
        return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, ~pad & ~in_cond, in_cond)

    def sample(self, batch_size: int, generator: torch.Generator, cond_dropout: float = 1.0) -> Batch:
        """Random windows, drawn uniformly over all start offsets; each row keeps its condition with probability
        1 - cond_dropout."""
        starts = self.starts[torch.randint(len(self.starts), (batch_size,), generator=generator)]
        keep = torch.rand(batch_size, generator=generator) >= cond_dropout if cond_dropout < 1.0 else None
        return self.batch(starts, keep)

    def tiles(self, batch_size: int, max_windows: int | None = None):
        """Non-overlapping windows from the start of each document, in order, without conditions (evaluation)."""
        starts = self.tile_starts[:max_windows]
        for i in range(0, len(starts), batch_size):
            yield self.batch(starts[i:i + batch_size])


def insert_blanks(batch: Batch, blank: int, max_runs: int, max_len: int, generator: torch.Generator) -> Batch:
    """Insert BLANK runs into training rows: each row gets 0..max_runs insertions (uniform), each of 1..max_len
    blanks (uniform), at a uniform place in the row as it stands (so a later insertion may land next to or inside an
    earlier one, making one longer run); the row is then cut back to its length. Blanks are targets,
    so the model learns where "nothing" may stand, which is what lets it fill a hole of up to N tokens with fewer."""
    B, L = batch.ids.shape
    ids, targets, pad = batch.ids.clone(), batch.targets.clone(), batch.pad_mask.clone()
    n_runs = torch.randint(max_runs + 1, (B,), generator=generator)
    for b in range(B):
        tgt = batch.targets[b].nonzero().squeeze(1)
        if not int(n_runs[b]) or not len(tgt):
            continue
        first, stop = int(tgt[0]), int(tgt[-1]) + 1
        row = batch.ids[b, first:stop].tolist()
        for _ in range(int(n_runs[b])):
            at = int(torch.randint(len(row) + 1, (1,), generator=generator))
            row[at:at] = [blank] * int(torch.randint(1, max_len + 1, (1,), generator=generator))
        row = row[:L - first]
        ids[b, first:first + len(row)] = torch.tensor(row)
        targets[b, first:first + len(row)] = True
        pad[b, first:first + len(row)] = False
    return Batch(ids, batch.modality, batch.positions, pad, targets, batch.condition, None, batch.group)
