"""The joint vocabulary: one contiguous id range per modality, plus shared special ids.

Layout (global ids)::

    0 PAD | 1 MASK | modality A: BOS, EOS, content 0..n_A-1 | modality B: BOS, EOS, content ... | ... [| BLANK]

Rows of a layout with ``markers`` wrap every modality run in its BOS/EOS ids: always with several modalities (a
row must say where each run starts), and on request with one (an autoregressive model conditions its first
token on BOS; without it the first token would have no context at all).

A layout built with ``blank=True`` ends with one shared BLANK id: the "nothing here" token of variable-length
holes (a hole of up to N tokens is filled with real tokens and blanks, and blanks are dropped on decode). It comes
last so that adding it leaves every other id where it was.

Modalities are laid out in name order, so the same set of modalities always gives the same layout; the layout is
stored in every checkpoint and checked on load. A position of modality m may only predict m's content ids: never
PAD, MASK, a BOS/EOS marker or another modality's ids (the model masks the rest to -inf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

from unidiff.errors import CheckpointError, UnknownNameError

PAD, MASK = 0, 1
N_SHARED = 2
N_MARKERS = 2  # BOS, EOS per modality


@dataclass(frozen=True)
class Block:
    name: str
    index: int  # modality index (embedding row, head index)
    bos: int
    eos: int
    start: int  # first content id
    size: int  # number of content ids

    @property
    def stop(self) -> int:
        return self.start + self.size


class VocabLayout:
    """Allocate global id ranges to modalities.

    Args:
        sizes: modality name -> number of local content ids.
        blank: add the shared BLANK id (for models trained with variable-length holes, see `unidiff.data.make_holes`).
        markers: wrap each run in BOS/EOS even with one modality (with several they always are).
    """

    def __init__(self, sizes: Mapping[str, int], blank: bool = False, markers: bool = False):
        if not sizes:
            raise ValueError("a vocabulary layout needs at least one modality")
        self.blocks: dict[str, Block] = {}
        nxt = N_SHARED
        for i, name in enumerate(sorted(sizes)):
            n = int(sizes[name])
            if n <= 0:
                raise ValueError(f"modality {name!r} has vocabulary size {n}; it must be positive")
            self.blocks[name] = Block(name, i, nxt, nxt + 1, nxt + N_MARKERS, n)
            nxt += N_MARKERS + n
        self.has_blank = bool(blank)
        self.blank = nxt if blank else None  # the BLANK id, or None
        self.size = nxt + int(self.has_blank)
        self.markers = bool(markers) or len(self.blocks) > 1

    @property
    def names(self) -> list[str]:
        return list(self.blocks)

    def block(self, name: str) -> Block:
        try:
            return self.blocks[name]
        except KeyError:
            raise UnknownNameError("modality", name, self.names,
                                   "This model was not trained on it; pick a model that has it") from None

    def index(self, name: str) -> int:
        return self.block(name).index

    def to_global(self, name: str, local: Sequence[int] | torch.Tensor) -> torch.Tensor:
        b = self.block(name)
        local = torch.as_tensor(local, dtype=torch.long)
        if local.numel() and (local.min() < 0 or local.max() >= b.size):
            raise ValueError(f"local ids for {name!r} must lie in [0, {b.size}); got {local.min()}..{local.max()}")
        return local + b.start

    def to_local(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Global ids of one modality's content -> local ids (raises if any id lies outside its range)."""
        b = self.block(name)
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.numel() and (ids.min() < b.start or ids.max() >= b.stop):
            raise ValueError(f"ids outside the range of modality {name!r}: [{b.start}, {b.stop})")
        return ids - b.start

    def to_dict(self) -> dict:
        d = {"sizes": {n: b.size for n, b in self.blocks.items()}, "size": self.size}
        if self.has_blank:
            d["blank"] = True
        if self.markers and len(self.blocks) == 1:  # a model of one modality that was trained with them
            d["markers"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config.json") -> "VocabLayout":
        """The layout a checkpoint's config.json (``where``) records; a malformed entry raises `CheckpointError`
        naming it."""
        def bad(key: str, value, what: str) -> CheckpointError:
            return CheckpointError(f"{where}: {key} = {value!r} is invalid: it must be {what}; the checkpoint's "
                                   f"config.json is damaged: restore it or re-train the model")

        def integer(v) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if not isinstance(d, dict):
            raise bad("layout", d, "a JSON object")
        sizes = d.get("sizes")
        if not isinstance(sizes, dict) or not sizes:
            raise bad("layout.sizes", sizes, "a JSON object of modality name -> vocabulary size")
        for name, n in sizes.items():
            if not integer(n) or n <= 0:
                raise bad(f"layout.sizes.{name}", n, "a positive integer")
        for key in ("blank", "markers"):
            if not isinstance(d.get(key, False), bool):
                raise bad(f"layout.{key}", d[key], "true or false")
        if not integer(d.get("size", 0)):
            raise bad("layout.size", d["size"], "an integer")
        layout = cls(sizes, blank=d.get("blank", False), markers=d.get("markers", False))
        if layout.size != d.get("size", layout.size):
            raise CheckpointError(f"vocabulary layout in checkpoint says size {d['size']} but its ranges give "
                                  f"{layout.size}: the checkpoint's config.json is inconsistent ({where}); restore "
                                  f"it or re-train the model")
        return layout

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VocabLayout) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        parts = ", ".join(f"{b.name}=[{b.start},{b.stop})" for b in self.blocks.values())
        extra = (", blank" if self.has_blank else "") + (", markers" if self.markers and len(self.blocks) == 1 else "")
        return f"VocabLayout(size={self.size}, {parts}{extra})"
