"""What a request is made of: `Segment`s (content or `Tokens`, a role, optional sampling settings), checked as
the Python API receives them, and the content encoding they share with training.

A sample is a list of segments, each given, generated or edited; an edit's re-masked positions are drawn by the
counter-based RNG (`edit_targets`), and `regenerate_positions` turns chosen positions of given content into
generated segments (in-painting).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from unidiff import checks
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.modality import Modality, checked_encode
from unidiff.process.schedules import Schedule
from unidiff.rng import STREAM_EDIT, hashed_uniform

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


def edit_targets(n: int, strength: float, seed: int, offset: int) -> list[bool]:
    """Which of an edited segment's n tokens to re-mask: strength * n of them, rounded half up, chosen by the
    counter-based RNG (seed, and the segment's offset in its row), so the choice is reproducible and
    batch-independent."""
    k = math.floor(strength * n + 0.5)  # half rounds up: strength 0.5 of one token edits it
    u = hashed_uniform(torch.tensor(seed), 0, STREAM_EDIT, torch.arange(offset, offset + n))
    chosen = torch.zeros(n, dtype=torch.bool)
    chosen[torch.sort(u, stable=True).indices[:k]] = True
    return chosen.tolist()


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


HOLE = re.compile(r"<(mask|blank):(\d+)>")


def parse_holes(template: str, modality: str) -> list[Segment]:
    """Split a template into given segments and holes: ``<mask:N>`` is exactly N tokens to generate,
    ``<blank:N>`` up to N (the model fills unused positions with BLANK, dropped on decode)."""
    segments, pos = [], 0
    for match in HOLE.finditer(template):
        if match.start() > pos:
            segments.append(Segment(modality, template[pos:match.start()]))
        n = int(match.group(2))
        if n < 1:
            raise UnidiffError(f"hole {match.group(0)!r} at character {match.start()} must ask for at least 1 token")
        segments.append(Segment(modality, role="generate", length=n, variable=match.group(1) == "blank"))
        pos = match.end()
    if pos < len(template):
        segments.append(Segment(modality, template[pos:]))
    if not any(seg.role == "generate" for seg in segments):
        raise UnidiffError("the template has no hole to fill: mark one with <mask:N> (exactly N tokens) or "
                           "<blank:N> (up to N), e.g. 'To be, <mask:12> be'")
    return segments
