"""The approximate key/value cache of the diffusion sampler (``sample(cache=True)``, Fast-dLLM's dual cache)."""

from __future__ import annotations

import torch


class KVStore:
    """The approximate key/value cache of `sample` (``cache=True``): every layer's keys and values for each of
    ``n`` slots (a row, or a row's unconditional pass), and whether they are current for the slot's block."""

    def __init__(self, n: int):
        self.n, self.kv, self.fresh = n, None, torch.zeros(n, dtype=torch.bool)

    def stale(self, slots: torch.Tensor) -> None:
        self.fresh[slots.cpu()] = False

    def features(self, model, slots: torch.Tensor, block: torch.Tensor, ids, modality, positions,
                 pad_mask, hole=None) -> torch.Tensor:
        """(b, L, d) features of these slots' rows: a full pass (that refills the store) for slots whose block has
        just begun, the ``block`` positions only (the rest of the state left zero) for the others."""
        b, L = ids.shape
        fresh = self.fresh[slots.cpu()]
        h = None
        full, part = (~fresh).nonzero().squeeze(1), fresh.nonzero().squeeze(1)
        hole_of = (lambda i: {}) if hole is None else (lambda i: {"hole": hole[i]})
        if len(full):
            kv = [{} for _ in model.blocks]
            hf = model.features(ids[full], modality[full], positions[full], pad_mask[full], kv=kv, **hole_of(full))
            h = hf.new_zeros(b, L, hf.shape[-1])
            h[full] = hf
            if self.kv is None:
                self.kv = [{name: t.new_zeros((self.n,) + t.shape[1:]) for name, t in layer.items()} for layer in kv]
            at = slots[full.to(slots.device)]
            for store, layer in zip(self.kv, kv):
                for name in ("k", "v"):
                    store[name][at] = layer[name].to(store[name].dtype)
            self.fresh[at.cpu()] = True
        if len(part):
            sel = block[part]
            n = int(sel.sum(1).max())
            # Each row's block positions first (stable), then other positions to fill n: computing a few extra
            # positions afresh is harmless.
            span = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :n]
            at = slots[part.to(slots.device)]
            kv = [{name: store[name][at] for name in ("k", "v")} for store in self.kv]
            hp = model.features(ids[part], modality[part], positions[part], pad_mask[part], kv=kv, span=span,
                                **hole_of(part))
            if h is None:
                h = hp.new_zeros(b, L, hp.shape[-1])
            h[part] = h[part].scatter(1, span.unsqueeze(-1).expand(-1, -1, hp.shape[-1]), hp)
        return h
