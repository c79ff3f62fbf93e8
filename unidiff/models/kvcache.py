"""The approximate key/value caches of the diffusion sampler (``sample(cache=...)``).

A bidirectional denoiser has no exact cache: every position's keys and values depend on every other position.
Two approximations, both starting each row with one full pass that stores every layer's keys and values:

- ``"dual"`` (``cache=True``; Fast-dLLM's dual cache): a row's first step in each block is a full pass that
  refreshes the store; its other steps in the block compute only the block's positions and attend to the stored
  keys and values elsewhere (the prompt, earlier and later blocks as they stood when the block began).
- ``"delta"``: no full pass after the first. Every step computes the block's masked positions and every position
  whose token changed since its keys and values were stored (the last step's commits), and writes what it
  computed back into the store. Finished blocks and the prompt are never recomputed; the still masked positions
  after the block keep the keys and values of the last pass that computed them.
"""

from __future__ import annotations

import torch

from unidiff.errors import UnidiffError

CACHE_MODES = ("dual", "delta")


def cache_mode(cache: bool | str | None) -> str | None:
    """``sample``'s ``cache`` argument as a mode name: False/None -> None, True -> "dual"."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return "dual"
    if cache not in CACHE_MODES:
        raise UnidiffError(f"unknown cache {cache!r}; use one of {', '.join(CACHE_MODES)}")
    return cache


class KVStore:
    """The keys and values of every layer for each of ``n`` slots (a row, or a row's unconditional pass) of up to
    ``width`` positions, and whether they hold a pass of the slot's current row. A slot's passes may be cut to the
    row's own width (the sampler does at reduced precision); the store then reads and writes that many positions."""

    def __init__(self, n: int, width: int, mode: str = "dual"):
        self.n, self.width, self.mode, self.kv = n, width, mode, None
        self.fresh = torch.zeros(n, dtype=torch.bool)
        self.ids: torch.Tensor | None = None  # "delta": each slot's ids when its keys and values were stored

    def reset(self, slots: torch.Tensor) -> None:
        """These slots hold new rows: their next pass is a full one."""
        self.fresh[slots.cpu()] = False

    def block_done(self, slots: torch.Tensor) -> None:
        """These slots move on to a new block: the dual cache refreshes them with a full pass."""
        if self.mode == "dual":
            self.reset(slots)

    def features(self, model, slots: torch.Tensor, block: torch.Tensor, ids, modality, positions,
                 pad_mask, hole=None, cells=None) -> torch.Tensor:
        """(b, L, d) features of these slots' rows: a full pass (that refills the store) for slots that need one,
        the ``block`` positions (the caller's; for "delta" also the positions whose ids changed since stored) for
        the others, the rest of the state left zero."""
        b, L = ids.shape
        fresh = self.fresh[slots.cpu()]
        h = None
        full, part = (~fresh).nonzero().squeeze(1), fresh.nonzero().squeeze(1)
        def hole_of(i):  # the rows' hole marks and grid cells, where the batch has them
            return {name: t[i] for name, t in (("hole", hole), ("cells", cells)) if t is not None}

        if len(full):
            kv = [{} for _ in model.blocks]
            hf = model.features(ids[full], modality[full], positions[full], pad_mask[full], kv=kv, **hole_of(full))
            h = hf.new_zeros(b, L, hf.shape[-1])
            h[full] = hf
            if self.kv is None:
                self.kv = [{name: t.new_zeros((self.n, t.shape[1], self.width, t.shape[3]))
                            for name, t in layer.items()} for layer in kv]
                self.ids = ids.new_zeros((self.n, self.width))
            at = slots[full.to(slots.device)]
            self._put(at, kv, ids[full])
            self.fresh[at.cpu()] = True
        if len(part):
            at = slots[part.to(slots.device)]
            sel = block[part]
            if self.mode == "delta":
                sel = sel | (ids[part] != self.ids[at, :L])
            counts = sel.sum(1)
            n = int(counts.max())
            # Each row's selected positions first (stable); a row with fewer repeats its first one to fill n, so
            # that what a row computes (and stores) never depends on its batch-mates.
            order = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :n]
            j = torch.arange(n, device=order.device)
            span = torch.where(j < counts.unsqueeze(1), order, order[:, :1])
            kv = [{name: store[name][at, :, :L] for name in ("k", "v")} for store in self.kv]
            hp = model.features(ids[part], modality[part], positions[part], pad_mask[part], kv=kv, span=span,
                                **hole_of(part))
            if self.mode == "delta":  # the pass left every layer's keys and values, fresh at the span, in kv
                self._put_span(at, span, kv, ids[part])
            if h is None:
                h = hp.new_zeros(b, L, hp.shape[-1])
            h[part] = h[part].scatter(1, span.unsqueeze(-1).expand(-1, -1, hp.shape[-1]), hp)
        return h

    def _put_span(self, at: torch.Tensor, span: torch.Tensor, kv: list[dict], ids: torch.Tensor) -> None:
        """Store the keys and values at the ``span`` positions of these slots (the rest of the store is as it was)."""
        rows = at.unsqueeze(1)  # (b, 1) with span (b, n): the store's (b, n, H, hd) entries
        for store, layer in zip(self.kv, kv):
            for name in ("k", "v"):
                t = layer[name]
                fresh = t.gather(2, span[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))
                store[name][rows, :, span] = fresh.transpose(1, 2).to(store[name].dtype)
        self.ids[rows, span] = ids.gather(1, span)

    def _put(self, at: torch.Tensor, kv: list[dict], ids: torch.Tensor) -> None:
        L = ids.shape[1]
        if L > self.width:
            raise UnidiffError(f"rows of {L} positions do not fit the cache's {self.width}: start a new sampler")
        for store, layer in zip(self.kv, kv):
            for name in ("k", "v"):
                store[name][at, :, :L] = layer[name].to(store[name].dtype)
        self.ids[at] = 0
        self.ids[at, :L] = ids
