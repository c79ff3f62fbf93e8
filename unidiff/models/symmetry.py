"""Symmetric sampling: average the model's predictions over a modality's mirror symmetry.

Some content reads the same mirrored: a DNA molecule is the same read along either strand, so a sequence and its
reverse complement are one molecule. A modality declares such a symmetry with a method ``mirror()`` that returns
a permutation of its local ids (DNA: A<->T, C<->G, N->N): the mirror image of a run of its content is the run read
backwards with every token permuted.

`Mirrored` wraps a model so that each prediction is the normalised geometric mean of the model's prediction on
the row and its prediction on the mirrored row, mapped back: log p(v at j) = (log p_fwd(v at j) +
log p_mirror(perm(v) at mirror(j))) / 2 + const. A model trained with mirror augmentation (reverse-complement
windows) learns both readings, and the product of the two is a strand-symmetric denoiser. Both readings go through
the network as one batch of twice the rows, so a step costs two forward passes (counted as such in NFE).
"""

from __future__ import annotations

import torch
from torch import nn

from unidiff.errors import UnidiffError
from unidiff.modality import optional
from unidiff.vocab import PAD, VocabLayout


class Mirrored(nn.Module):
    """``model`` with predictions averaged over the mirror symmetries of ``perms`` (modality name -> local id
    permutation). Has the model's ``features``/``logits`` interface, so the sampler uses it unchanged."""

    def __init__(self, model: nn.Module, perms: dict[str, list[int]]):
        super().__init__()
        if not perms:
            raise UnidiffError("symmetric sampling needs a modality with a mirror symmetry (e.g. dna); this model's "
                               "modalities have none")
        self.model, self.layout, self.cfg = model, model.layout, model.cfg
        layout: VocabLayout = model.layout
        self.perm = torch.arange(layout.size)  # global id -> id of its mirror token
        self.blocks = []
        for name, perm in perms.items():
            b = layout.block(name)
            if sorted(perm) != list(range(b.size)):
                raise UnidiffError(f"modality {name!r} declares a mirror that is not a permutation of its {b.size} ids")
            self.perm[b.start:b.stop] = torch.tensor(perm) + b.start
            self.blocks.append(b)

    def mirror_index(self, ids: torch.Tensor, modality: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        """(B, L) index of the position each position maps to: within a row's run of a symmetric modality, its
        reflection (first + last - j); every other position maps to itself."""
        B, L = ids.shape
        j = torch.arange(L, device=ids.device).expand(B, L)
        index = j.clone()
        for b in self.blocks:
            content = (modality == b.index) & (ids != b.bos) & (ids != b.eos) & (ids != PAD)
            if pad_mask is not None:
                content &= ~pad_mask
            first = torch.where(content, j, L).min(1).values
            last = torch.where(content, j, -1).max(1).values
            if ((last - first + 1).clamp(min=0) != content.sum(1)).any():
                raise UnidiffError(f"symmetric sampling needs each row's {b.name} content in one run; a row holds "
                                   f"{b.name} segments separated by other content")
            index = torch.where(content, first.unsqueeze(1) + last.unsqueeze(1) - j, index)
        return index

    def features(self, ids, modality, positions=None, pad_mask=None, hole=None, cells=None) -> torch.Tensor:
        """(B, L, 2d): the model's features on the rows and, aligned back position by position, on their mirrors."""
        if hole is not None:  # a mirrored hole holds its fill last, not first: not the arrangement models learn
            raise UnidiffError("symmetric sampling does not take variable-length holes (<blank:N>); use <mask:N> "
                               "holes or drop --symmetric")
        index = self.mirror_index(ids, modality, pad_mask)
        mirrored = self.perm.to(ids.device)[ids.gather(1, index)]
        h = self.model.features(torch.cat([ids, mirrored]), modality.repeat(2, 1),
                                None if positions is None else positions.repeat(2, 1),
                                None if pad_mask is None else pad_mask.repeat(2, 1),
                                **({} if cells is None else {"cells": cells.repeat(2, 1)}))
        fwd, back = h.chunk(2)
        back = back.gather(1, index.unsqueeze(-1).expand_as(back))
        return torch.cat([fwd, back], dim=-1)

    def logits(self, h: torch.Tensor, modality: torch.Tensor, blank=None) -> torch.Tensor:
        fwd, back = h.chunk(2, dim=-1)
        kw = {} if blank is None else {"blank": blank}
        lf = self.model.logits(fwd, modality, **kw).float().log_softmax(-1)
        lb = self.model.logits(back, modality, **kw).float().log_softmax(-1)[..., self.perm.to(h.device)]
        return (lf + lb) / 2


def mirror_perms(modalities: dict) -> dict[str, list[int]]:
    """The mirror permutations of the modalities that declare one (``modality.mirror()``)."""
    return {name: list(m.mirror()) for name, m in modalities.items() if callable(optional(m, "mirror"))}
