"""Training rows: documents (with an optional condition, possibly of another modality) encoded once and cut into
windows that never cross a document, laid out exactly as `encode_row` lays out the same segments; variable-length
holes cut into training batches (`make_holes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from unidiff.errors import UnidiffError
from unidiff.modality import Modality, checked_encode_many
from unidiff.vocab import PAD, VocabLayout
from unidiff.data.rows import Batch, cells_of
from unidiff.data.segments import Tokens, encode_content


@dataclass
class Document:
    """A training document with a condition: ``condition`` is given before every window cut from ``content``,
    unless condition dropout hides it. It is content of ``condition_modality`` (None: the document's own modality),
    e.g. a play's title in text, or a DNA record's class name as text before its sequence."""

    content: Any
    condition: Any = None
    condition_modality: str | None = None




def encode_docs(docs: Sequence[Any], modality: Modality, layout: VocabLayout) -> list[torch.Tensor]:
    """Encode whole documents of one modality into global-id tensors (a `Document` gives its content; content
    given as `Tokens` is taken as the modality's local ids, e.g. images encoded once; the rest is encoded in
    batches when the modality has ``encode_many``)."""
    contents = [d.content if isinstance(d, Document) else d for d in docs]
    plain = [k for k, c in enumerate(contents) if not isinstance(c, Tokens)]  # encoded in batches (encode_many)
    ids = dict(zip(plain, checked_encode_many(modality, [contents[k] for k in plain])))
    return [layout.to_global(modality.name, ids[k] if k in ids else encode_content(modality, c))
            for k, c in enumerate(contents)]


def condition_modality(docs: Sequence[Any]) -> str | None:
    """The modality the documents' conditions are written in (None: their own, or no conditions); all documents
    of a dataset must agree."""
    names = {d.condition_modality for d in docs if isinstance(d, Document) and d.condition is not None}
    if len(names) > 1:
        raise UnidiffError(f"a dataset's conditions must all be of one modality; got {sorted(map(str, names))}")
    return names.pop() if names else None


def encode_conditions(docs: Sequence[Any], modality: Modality, layout: VocabLayout) -> list[torch.Tensor] | None:
    """The encoded conditions of `Document`s (an empty tensor for a document without one); None if none has one.
    ``modality`` encodes them: the documents' `condition_modality` (see `condition_modality`)."""
    if not any(isinstance(d, Document) and d.condition is not None for d in docs):
        return None
    return [layout.to_global(modality.name, encode_content(modality, d.condition))
            if isinstance(d, Document) and d.condition is not None else torch.zeros(0, dtype=torch.long)
            for d in docs]


def make_windows(docs: Sequence[torch.Tensor], length: int, layout: VocabLayout, modality: str,
                 conditions: Sequence[torch.Tensor] | None = None, cond_modality: str | None = None,
                 cond_hole: int = 0, grids: Mapping[str, tuple[int, int]] | None = None) -> "Windows":
    """`Windows` whose rows have the layout `encode_row` gives the same segments: in a layout with markers (several
    modalities, or an autoregressive model's), each modality run is wrapped in its BOS/EOS markers (a condition of another modality is its own
    run, one of the same modality joins the content's run). ``cond_hole``: see `Windows`. ``grids`` (name ->
    (rows, cols), `unidiff.modality.grids_of`) gives the rows' tokens of grid modalities their cells (``Batch.cells``)."""
    if cond_hole and not layout.has_blank:
        raise UnidiffError("conditions generated as variable-length holes (data.cond_hole) need BLANK in the "
                           "vocabulary")
    blank = layout.blank if cond_hole else None
    cells = None if not grids else (lambda ids, mod: cells_of(ids, mod, layout, grids))
    if not layout.markers:
        return Windows(docs, length, layout.index(modality), conditions, cond_hole=cond_hole, blank=blank,
                       cells=cells)
    block = layout.block(modality)
    other = layout.block(cond_modality) if cond_modality not in (None, modality) else None
    return Windows(docs, length, block.index, conditions, markers=(block.bos, block.eos),
                   cond_markers=(other.index, other.bos, other.eos) if other else None, cond_hole=cond_hole,
                   blank=blank, cells=cells)


class Windows:
    """Fixed-length training rows over the encoded documents of one modality.

    A window never crosses a document boundary; a document shorter than a row is one padded window. With
    ``conditions`` (one encoded condition per document), a row whose condition is kept holds the condition
    (given: not a target) followed by a window shortened to fit ``length``; condition dropout hides it, and the
    row is a plain window, so one model learns both p(x | condition) and p(x) (for classifier-free guidance).

    Rows of a model with several modalities carry markers, as `encode_row` writes them: ``[BOS cond... window...
    EOS]``, or ``[BOS_c cond... EOS_c BOS window... EOS]`` when the condition is of another modality
    (``cond_markers``); a plain row is ``[BOS window... EOS]``. Use `make_windows` to get these from a layout.

    A kept condition may itself be a target (`sample`'s ``cond_target``), noised at a second time independent of
    the content's (``Batch.second``), and the content may then be wholly given (``content_given``): one model
    learns p(x | c), p(x), p(c | x) and p(c, x), e.g. text -> image, image -> caption and both at once. With
    ``cond_hole`` > 0 a target condition is a variable-length hole of that many positions, its tokens followed by
    BLANKs (marked in ``Batch.blank_ok``), as `encode_row` lays out a ``variable`` segment to generate.

    Args:
        docs: documents as global-id tensors.
        length: row length.
        modality_index: the modality's index in the layout.
        conditions: per document, the global ids of its condition (or None for no conditions).
        markers: (BOS, EOS) ids that wrap the content's run, or None for no markers.
        cond_markers: (modality index, BOS, EOS) of the conditions' modality when it is not the content's.
        cond_hole: positions of a target condition (0: its own length, no BLANKs).
        blank: the BLANK id (with ``cond_hole``).
        cells: ``cells(ids, modality)`` -> the rows' ``Batch.cells`` (grid modalities), or None for none.
    """

    def __init__(self, docs: Sequence[torch.Tensor], length: int, modality_index: int,
                 conditions: Sequence[torch.Tensor] | None = None, markers: tuple[int, int] | None = None,
                 cond_markers: tuple[int, int, int] | None = None, cond_hole: int = 0, blank: int | None = None,
                 cells=None):
        if length < 1:
            raise UnidiffError(f"window length must be at least 1; got {length}")
        if cond_markers is not None and markers is None:
            raise UnidiffError("a condition of another modality needs markers around the content too")
        keep = [i for i, d in enumerate(docs) if len(d)]
        if not keep:
            raise UnidiffError("the dataset is empty: no documents to train or evaluate on")
        docs = [docs[i] for i in keep]
        empty = torch.zeros(0, dtype=torch.long)
        conds = [conditions[i] for i in keep] if conditions is not None else [empty] * len(docs)
        self.markers, self.cond_markers = markers, cond_markers
        self.wrap = 1 if markers is not None else 0  # BOS/EOS around the content
        self.sep = 2 if cond_markers is not None else 0  # BOS_c/EOS_c around a condition of another modality
        capacity = length - 2 * self.wrap  # content tokens of a row without a condition
        if capacity < 1:
            raise UnidiffError(f"rows of {length} tokens leave no room for content between the BOS/EOS markers: "
                               f"raise data.seq_len")
        longest = max(len(c) for c in conds)
        if cond_hole and (blank is None or longest > cond_hole):
            raise UnidiffError(f"a document's condition takes {longest} tokens, more than data.cond_hole = "
                               f"{cond_hole}: raise data.cond_hole")
        self.cond_hole, self.blank, self.cells = cond_hole, blank, cells
        longest = max(longest, cond_hole)
        if longest + self.sep >= capacity:
            raise UnidiffError(f"a document's condition takes {longest} tokens, leaving no room in rows of {length}: "
                               f"shorten the conditions or raise data.seq_len")
        self.length, self.modality_index = length, modality_index
        self.stream = torch.cat([d.long() for d in docs])
        self.cond_len = torch.tensor([len(c) for c in conds], dtype=torch.long)  # (D,)
        self.cond_ids = torch.full((len(docs), max(longest, 1)), PAD, dtype=torch.long)  # (D, Cmax)
        for i, c in enumerate(conds):
            self.cond_ids[i, :len(c)] = c
        starts, tiles, offset = [], [], 0
        for d in docs:
            last = max(len(d) - capacity, 0)  # last start whose window fits in the document
            starts.append(offset + torch.arange(last + 1))
            tiles.append(offset + torch.arange(0, len(d), capacity))  # the last tile may be short: every token once
            offset += len(d)
        self.starts, self.tile_starts = torch.cat(starts), torch.cat(tiles)
        self.doc_end = torch.tensor([len(d) for d in docs]).cumsum(0)  # (D,) stream offset where each doc ends

    @property
    def num_tokens(self) -> int:
        return len(self.stream)

    def batch(self, starts: torch.Tensor, keep_condition: torch.Tensor | None = None,
              cond_target: torch.Tensor | None = None, content_given: torch.Tensor | None = None) -> Batch:
        """Rows whose windows begin at the given stream offsets (each one of ``self.starts`` or
        ``self.tile_starts``); ``keep_condition`` (B,) bool says which rows carry their document's condition
        (default: none), ``cond_target`` which of those generate it too (noised at the row's second time), and
        ``content_given`` which of those give their content whole (default: none)."""
        B, L, w = len(starts), self.length, self.wrap
        doc = torch.searchsorted(self.doc_end, starts, right=True)  # (B,) index of each window's document
        end = self.doc_end[doc]
        c = self.cond_len[doc] if keep_condition is not None else torch.zeros(B, dtype=torch.long)
        if keep_condition is not None:
            c = torch.where(keep_condition, c, 0)
        gen_c = (c > 0) & cond_target if cond_target is not None else torch.zeros(B, dtype=torch.bool)
        real_c = c  # the condition's own tokens; a generated one fills a hole of cond_hole positions with BLANKs
        if self.cond_hole:
            c = torch.where(gen_c, self.cond_hole, c)
        has = c > 0
        first = torch.where(has, c + self.sep, 0) + w  # (B,) position of the first content token
        n = torch.minimum(end - starts, L - w - first)  # (B,) content tokens
        j = torch.arange(L)
        first_, stop_ = first.unsqueeze(1), (first + n).unsqueeze(1)
        in_cond = (j >= w) & (j < (w + c).unsqueeze(1))  # (B, L) the condition's own tokens
        in_content = (j >= first_) & (j < stop_)
        content = self.stream[(starts.unsqueeze(1) + j - first_).clamp(0, len(self.stream) - 1)]
        cond = self.cond_ids[doc][:, (j - w).clamp(0, self.cond_ids.shape[1] - 1)]
        if self.cond_hole:
            cond = torch.where(j >= (w + real_c).unsqueeze(1), self.blank, cond)
        ids = torch.where(in_content, content, torch.where(in_cond, cond, PAD))
        modality = torch.full((B, L), self.modality_index, dtype=torch.long)
        second = in_cond & gen_c.unsqueeze(1)
        targets = in_content & ~(content_given & gen_c).unsqueeze(1) if content_given is not None else in_content
        targets = targets | second
        given = in_cond & ~second  # what classifier-free guidance hides: a given condition and its own markers
        if w:
            bos, eos = self.markers
            bos_at = torch.where(has & (self.sep > 0), first - 1, 0).unsqueeze(1)
            ids = torch.where(j == bos_at, bos, torch.where(j == stop_, eos, ids))
            if self.sep:
                c_index, c_bos, c_eos = self.cond_markers
                opens, closes = has.unsqueeze(1) & (j == 0), has.unsqueeze(1) & (j == (c + 1).unsqueeze(1))
                ids = torch.where(opens, c_bos, torch.where(closes, c_eos, ids))
                given |= (opens | closes) & ~gen_c.unsqueeze(1)
                modality = torch.where(in_cond | opens | closes, c_index, modality)
        pad = j >= stop_ + w
        joint = cond_target is not None
        return Batch(ids, modality, torch.arange(L).expand(B, L).contiguous(), pad, targets, given,
                     second if self.cond_hole and joint else None, None, second if joint else None,
                     None if self.cells is None else self.cells(ids, modality))

    def sample(self, batch_size: int, generator: torch.Generator, cond_dropout: float = 1.0,
               cond_target: float = 0.0, content_given: float = 0.0) -> Batch:
        """Random windows, drawn uniformly over all start offsets; each row keeps its condition with probability
        1 - cond_dropout; a kept condition is a target too with probability ``cond_target``, and then the content
        is wholly given with probability ``content_given``."""
        starts = self.starts[torch.randint(len(self.starts), (batch_size,), generator=generator)]
        keep = torch.rand(batch_size, generator=generator) >= cond_dropout if cond_dropout < 1.0 else None
        if not cond_target or keep is None:
            return self.batch(starts, keep)
        target = torch.rand(batch_size, generator=generator) < cond_target
        given = torch.rand(batch_size, generator=generator) < content_given
        return self.batch(starts, keep, target, given)

    def tiles(self, batch_size: int, max_windows: int | None = None):
        """Non-overlapping windows that cover every token of every document once, in order, without conditions
        (evaluation); a document's last window may be shorter than a row."""
        starts = self.tile_starts[:max_windows]
        for i in range(0, len(starts), batch_size):
            yield self.batch(starts[i:i + batch_size])


def make_holes(batch: Batch, blank: int, max_holes: int, max_len: int, generator: torch.Generator) -> Batch:
    """Turn stretches of training rows into variable-length holes, as `encode_row` lays out a ``<blank:K>`` hole.

    Each row gets 0..max_holes holes (uniform). A hole has K = 1..max_len positions (uniform) and holds the next
    n = 0..K tokens of the text (uniform) followed by K - n BLANKs: the text after the hole moves right by K - n
    and the row's content is cut back to its length, so markers and padding stay where they were. Holes lie
    inside the content (the targets), apart from each other, and are marked in ``blank_ok``: the model sees the
    mark as an input and may predict BLANK there (and nowhere else). This is the canonical arrangement of a fill
    (its tokens first, then blanks), so a hole's ELBO bounds the likelihood of the text it holds.

    Returns a new Batch whose ``blank_ok`` marks the holes' positions.
    """
    if batch.cells is not None:
        raise UnidiffError("variable-length holes (data.holes) would move a grid modality's tokens off their cells: "
                           "train grid modalities without data.holes")
    B, L = batch.ids.shape
    ids, hole = batch.ids.clone(), torch.zeros((B, L), dtype=torch.bool)
    n_holes = torch.randint(max_holes + 1, (B,), generator=generator)
    for b in range(B):
        where = batch.targets[b].nonzero().squeeze(1)
        if not int(n_holes[b]) or not len(where):
            continue
        first, stop = int(where[0]), int(where[-1]) + 1  # the content: one run of targets
        row, mark = ids[b, first:stop].tolist(), [False] * (stop - first)
        for _ in range(int(n_holes[b])):
            k = min(int(torch.randint(1, max_len + 1, (1,), generator=generator)), len(row))
            n = int(torch.randint(k + 1, (1,), generator=generator))
            at = int(torch.randint(len(row) - k + 1, (1,), generator=generator))
            if any(mark[max(at - 1, 0):at + k + 1]):
                continue  # would touch an earlier hole: two holes side by side would read as one
            row = (row[:at + n] + [blank] * (k - n) + row[at + n:])[:stop - first]
            mark = (mark[:at] + [True] * k + mark[at + n:])[:stop - first]
        ids[b, first:stop] = torch.tensor(row)
        hole[b, first:stop] = torch.tensor(mark)
    return Batch(ids, batch.modality, batch.positions, batch.pad_mask, batch.targets, batch.condition, hole,
                 batch.group, batch.second)
