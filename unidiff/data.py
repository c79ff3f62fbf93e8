"""From user content to model batches: segments, rows, padding, and training windows.

A sample is a list of `Segment`s. Each is encoded by its modality, mapped into the joint vocabulary and
concatenated into one row; positions to generate start as MASK and are the row's *targets*. Adjacent segments
of the same modality join into one run (a prompt and its continuation are one text); when the model's vocabulary
holds more than one modality (or is an autoregressive model's, see `VocabLayout`), each run is wrapped in its
modality's BOS/EOS markers, which are always given.
Rows are right-padded into a `Batch`, so column j of a row is its own position j.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch

from unidiff import checks
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.modality import Modality, checked_encode, checked_encode_many
from unidiff.schedules import Schedule
from unidiff.rng import STREAM_EDIT, hashed_uniform
from unidiff.vocab import MASK, PAD, VocabLayout

ROLES = ("given", "generate", "edit")
EDIT_ORDERS = ("random", "confidence")


class Tokens(list):
    """A modality's local ids, given as a segment's content instead of what its tokenizer encodes: e.g. a BPE
    text cut at token boundaries, which encoding the pieces separately would tokenize differently.

    Every id must be an int (a float is refused, never truncated); its range is checked against the modality's
    vocabulary when the segment is encoded."""

    def __init__(self, ids: Any = ()):
        if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
            raise UnidiffError(f"Tokens takes a list of ints (a modality's local ids); got {type(ids).__name__} "
                               f"{ids!r:.60}")
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        super().__init__(checks.whole(f"Tokens id {k}", i) for k, i in enumerate(ids))


@dataclass
class Segment:
    """One part of a sample.

    Args:
        modality: registry name of the modality, e.g. "text".
        content: what the modality encodes (a str for text), or its local ids as `Tokens`; required for
            "given" and "edit", refused for "generate" (which starts fully masked).
        role: "given" (kept fixed), "generate" (starts fully masked) or "edit" (the content, of which a fraction
            ``strength`` of the tokens is re-masked and generated again).
        length: number of tokens to generate (``role="generate"`` only, an int >= 1).
        strength: fraction of the content's tokens an edit re-generates: 0 keeps it, 1 regenerates all of it
            (``role="edit"`` only).
    Wrong types and values raise `UnidiffError` naming the field (a float length is refused, not truncated).
        order: which tokens an edit re-masks: "random", or "confidence" (those the model finds least likely in
            their context first; scored by the pipeline before sampling).
        variable: a 'generate' segment of *up to* ``length`` tokens: the model may fill some positions with BLANK,
            which decoding drops (needs a model trained with holes, ``data.holes > 0``).
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
    schedule: "str | Schedule | None" = None  # a spec string, e.g. "polynomial:power=3"

    def __post_init__(self):
        checks.text("Segment modality", self.modality)
        checks.one_of("segment role", self.role, ROLES)
        if self.role == "generate":
            if self.length is None:
                raise UnidiffError("a 'generate' segment needs a positive length (tokens to generate); got None")
            self.length = checks.whole("a 'generate' segment's length", self.length, 1)
        elif self.length is not None:
            raise UnidiffError(f"only a 'generate' segment has a length (a {self.role!r} segment's is its "
                               f"content's); got length={self.length!r}")
        if self.role == "edit":
            if self.strength is None:
                raise UnidiffError("an 'edit' segment needs a strength between 0 and 1; got None")
            self.strength = checks.real("an 'edit' segment's strength", self.strength, 0.0, 1.0)
        elif self.strength is not None:
            raise UnidiffError(f"only an 'edit' segment has a strength; got strength={self.strength!r} on a "
                               f"{self.role!r} segment")
        checks.one_of("an edit's order", self.order, EDIT_ORDERS)
        checks.flag("a segment's variable", self.variable)
        if self.variable and self.role != "generate":
            raise UnidiffError("only a 'generate' segment can have a variable length")
        self.steps = checks.optional(checks.whole, "a segment's steps", self.steps, 1, checks.MAX_COUNT)
        if isinstance(self.policy, bool) or not (self.policy is None or isinstance(self.policy, str)
                                                 or callable(getattr(self.policy, "commit", None))):
            raise UnidiffError(f"a segment's policy takes a policy name (unidiff plugins lists them) or a policy "
                               f"object; got {type(self.policy).__name__} {self.policy!r:.60}")
        check_schedule("a segment's schedule", self.schedule)
        if self.role == "generate" and self.content is not None:
            raise UnidiffError("a 'generate' segment starts fully masked: give its content to a 'given' or 'edit' "
                               "segment, not to it")
        if self.role != "generate" and self.content is None:
            raise UnidiffError(f"a {self.role!r} segment needs content (what its modality encodes, or Tokens)")

    @property
    def spec(self) -> tuple | None:
        """The segment's own sampling settings (policy, steps, schedule), or None if it has none."""
        if self.policy is None and self.steps is None and self.schedule is None:
            return None
        return (self.policy, self.steps, self.schedule)


def check_schedule(name: str, value: Any) -> None:
    """``value`` is None, a `Schedule` or a non-empty spec string (e.g. ``"polynomial:power=3"``)."""
    if value is not None and not isinstance(value, Schedule):
        checks.text(name, value)


def check_samples(samples: Any) -> None:
    """``samples`` is a non-empty list (or tuple) of samples, each a non-empty list of `Segment`s, else a
    `UnidiffError` saying what was given (e.g. a bare string, whose prompt belongs to `Pipeline.complete`)."""
    fix = ("generate takes a list of samples, each a list of unidiff.Segment, e.g. "
           "[[Segment('text', 'KING.'), Segment('text', role='generate', length=64)]]; for a prompt use complete()")
    if not isinstance(samples, (list, tuple)):
        raise UnidiffError(f"{fix}; got {type(samples).__name__} {samples!r:.60}")
    if not samples:
        raise UnidiffError(f"no samples to generate: {fix}")
    for i, segments in enumerate(samples):
        if isinstance(segments, Segment) or not isinstance(segments, (list, tuple)):
            raise UnidiffError(f"sample {i} is a {type(segments).__name__}, not a list of Segment: {fix}")
        if not segments:
            raise UnidiffError(f"sample {i} has no segments: {fix}")
        for j, seg in enumerate(segments):
            if not isinstance(seg, Segment):
                raise UnidiffError(f"sample {i}, segment {j} is a {type(seg).__name__} {seg!r:.40}, not a Segment: "
                                   f"{fix}")


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
    # (B, L) bool: targets that training noises at the row's second time, independently of the others (a condition
    # that is itself a target, see `Windows.sample`); None: one time per row
    second: torch.Tensor | None = None

    FIELDS = ("ids", "modality", "positions", "pad_mask", "targets", "condition", "blank_ok", "group", "second")

    def to(self, device) -> "Batch":
        return Batch(*(None if getattr(self, f) is None else getattr(self, f).to(device) for f in self.FIELDS))

    def select(self, rows: torch.Tensor) -> "Batch":
        """The batch of these rows (indices on the batch's device or the CPU)."""
        return Batch(*(None if getattr(self, f) is None else getattr(self, f)[rows.to(self.ids.device)]
                       for f in self.FIELDS))

    @property
    def lengths(self) -> torch.Tensor:
        return (~self.pad_mask).sum(1)


def edit_targets(n: int, strength: float, seed: int, offset: int) -> list[bool]:
    """Which of an edited segment's n tokens to re-mask: strength * n of them, rounded half up, chosen by the
    counter-based RNG (seed, and the segment's offset in its row), so the choice is reproducible and
    batch-independent."""
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
    """A training document with a condition: ``condition`` is given before every window cut from ``content``,
    unless condition dropout hides it. It is content of ``condition_modality`` (None: the document's own modality),
    e.g. a play's title in text, or a DNA record's class name as text before its sequence."""

    content: Any
    condition: Any = None
    condition_modality: str | None = None


def encode_content(modality: Modality, content: Any) -> list[int]:
    """The local ids of a segment's content: `Tokens` as given (checked against the vocabulary), anything else as
    the modality encodes it (`checked_encode`)."""
    if not isinstance(content, Tokens):
        return checked_encode(modality, content)
    bad = next((k for k, i in enumerate(content) if not 0 <= i < modality.vocab_size), None)
    if bad is not None:
        raise ModalityInputError(f"Tokens id {content[bad]} at position {bad} is outside the {modality.name} "
                           f"vocabulary (0..{modality.vocab_size - 1})")
    return list(content)


def regenerate_positions(modality: str, ids: Sequence[int], hide: set[int] | Sequence[int]) -> list[Segment]:
    """Segments that give ``ids`` (local ids of one modality) except at the positions in ``hide``, which are
    generated: e.g. the cells of an image box to in-paint. Adjacent segments form one run, so the layout is that
    of the whole content."""
    hide = set(hide)
    if not hide <= set(range(len(ids))):
        raise UnidiffError(f"positions to regenerate must lie in 0..{len(ids) - 1}")
    segments, k = [], 0
    while k < len(ids):
        j = k
        while j < len(ids) and (j in hide) == (k in hide):
            j += 1
        segments.append(Segment(modality, role="generate", length=j - k) if k in hide
                        else Segment(modality, Tokens(ids[k:j])))
        k = j
    return segments


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
                 cond_hole: int = 0) -> "Windows":
    """`Windows` whose rows have the layout `encode_row` gives the same segments: in a layout with markers (several
    modalities, or an autoregressive model's), each modality run is wrapped in its BOS/EOS markers (a condition of another modality is its own
    run, one of the same modality joins the content's run). ``cond_hole``: see `Windows`."""
    if cond_hole and not layout.has_blank:
        raise UnidiffError("conditions generated as variable-length holes (data.cond_hole) need BLANK in the "
                           "vocabulary")
    blank = layout.blank if cond_hole else None
    if not layout.markers:
        return Windows(docs, length, layout.index(modality), conditions, cond_hole=cond_hole, blank=blank)
    block = layout.block(modality)
    other = layout.block(cond_modality) if cond_modality not in (None, modality) else None
    return Windows(docs, length, block.index, conditions, markers=(block.bos, block.eos),
                   cond_markers=(other.index, other.bos, other.eos) if other else None, cond_hole=cond_hole,
                   blank=blank)


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
    """

    def __init__(self, docs: Sequence[torch.Tensor], length: int, modality_index: int,
                 conditions: Sequence[torch.Tensor] | None = None, markers: tuple[int, int] | None = None,
                 cond_markers: tuple[int, int, int] | None = None, cond_hole: int = 0, blank: int | None = None):
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
        self.cond_hole, self.blank = cond_hole, blank
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
                     second if self.cond_hole and joint else None, None, second if joint else None)

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
