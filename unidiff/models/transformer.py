"""The denoiser: a bidirectional pre-norm transformer over the joint vocabulary (or, as a baseline, the same network
made causal: ``ModelConfig.kind = "autoregressive"``).

Notable choices: rotary position embeddings on explicit ``positions`` (the sequence order), learned row and column
embeddings for the tokens of a modality laid out on a 2-D grid (VQ image codes; their cells come from the data
layer, ``Batch.cells``), a learned modality embedding added to the token embedding, PyTorch's
``scaled_dot_product_attention`` with a key-padding mask, and one output head per modality (supplied by its
plugin) whose logits land in that modality's id range; every other id gets -inf. No time conditioning: with the
absorbing process the clean-token posterior does not depend on t (MDLM). The model knows nothing of tokenizers
or schedules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from unidiff.errors import UnidiffError
from unidiff.vocab import VocabLayout


@dataclass
class ModelConfig:
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    max_len: int = 256  # longest sequence (prompt + generated) the model accepts
    dropout: float = 0.0
    rope_base: float = 10000.0
    # "diffusion": bidirectional denoiser; "autoregressive": the same network with a causal mask whose output at
    # position j is computed from positions < j (the baseline diffusion is compared with, see `Denoiser.features`).
    kind: str = "diffusion"
    architecture: str = "transformer"  # see unidiff.models.architectures

    def validate(self) -> "ModelConfig":
        """Check every field's type and range (a config.json may hold anything); raises `UnidiffError` naming
        ``model.<key>``, its value and what it must be."""
        def need(key: str, ok: bool, what: str) -> None:
            if not ok:
                raise UnidiffError(f"model.{key} = {getattr(self, key)!r} is invalid: it must be {what}")

        def number(v) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for key in ("d_model", "n_layers", "n_heads", "max_len"):
            v = getattr(self, key)
            need(key, isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive integer")
        need("mlp_ratio", number(self.mlp_ratio) and self.mlp_ratio * self.d_model >= 1,
             f"a finite number with mlp_ratio * d_model >= 1 (d_model = {self.d_model})")
        need("dropout", number(self.dropout) and 0 <= self.dropout < 1, "a number in [0, 1)")
        need("rope_base", number(self.rope_base) and self.rope_base > 1, "a finite number above 1")
        need("kind", isinstance(self.kind, str) and self.kind in KINDS, f"one of {', '.join(map(repr, KINDS))}")
        if (problem := head_size_problem(self.d_model, self.n_heads)) is not None:
            raise UnidiffError(f"model.n_heads = {self.n_heads!r} is invalid: {problem}")
        return self


def head_size_problem(d_model: int, n_heads: int) -> str | None:
    """Why ``d_model`` split over ``n_heads`` is no usable head size, or None if it is."""
    if d_model % n_heads or (d_model // n_heads) % 2:
        return (f"d_model {d_model} / n_heads {n_heads} must be a whole, even head size (rotary embeddings rotate "
                f"pairs of dimensions)")
    return None


KINDS = ("diffusion", "autoregressive")


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) positions -> cos, sin of shape (B, 1, L, head_dim/2)."""
    inv = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    ang = positions.float().unsqueeze(-1) * inv  # (B, L, hd/2)
    return ang.cos().unsqueeze(1), ang.sin().unsqueeze(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, L, hd/2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class GridEmbedding(nn.Module):
    """Learned row + column embeddings of a grid of ``rows`` x ``cols`` tokens (2-D positions): added to the input
    of each token the data layer places on the grid (``Batch.cells``, see `unidiff.data.rows.cells_of`)."""

    def __init__(self, rows: int, cols: int, d_model: int):
        super().__init__()
        self.rows, self.cols = rows, cols
        self.row = nn.Embedding(rows, d_model)
        self.col = nn.Embedding(cols, d_model)

    def forward(self, cell: torch.Tensor) -> torch.Tensor:
        on = cell >= 0
        k = cell.clamp(min=0)
        return (self.row(k // self.cols) + self.col(k % self.cols)) * on.unsqueeze(-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if (problem := head_size_problem(cfg.d_model, cfg.n_heads)) is not None:
            raise ValueError(problem)
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, attn_mask, cache: dict | None = None, kv: dict | None = None,
                span: torch.Tensor | None = None):
        """``cache`` (causal decoding): a dict that keeps this layer's keys and values; the new positions attend
        to everything cached before them, then are appended to it.

        ``kv`` (bidirectional caching, see `Denoiser.features`): without ``span``, the layer stores every position's
        keys and values in it; with ``span`` ((B, n) positions, ``x`` holding only those), it attends to the
        stored ones with fresh keys and values at the span's positions."""
        B, L, D = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # (B, H, L, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        if kv is not None:
            if span is None:
                kv["k"], kv["v"] = k, v
            else:
                at = span[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
                k = kv["k"].to(k.dtype).scatter(2, at, k)
                v = kv["v"].to(v.dtype).scatter(2, at, v)
                kv["k"], kv["v"] = k, v  # the caller may keep them (the sampler's "delta" cache)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(B, L, D))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, cfg.d_model, bias=False))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, cos, sin, attn_mask, cache: dict | None = None, kv: dict | None = None,
                span: torch.Tensor | None = None):
        x = x + self.drop(self.attn(self.norm1(x), cos, sin, attn_mask, cache, kv, span))
        return x + self.drop(self.mlp(self.norm2(x)))


class Denoiser(nn.Module):
    """Predicts clean tokens at every position from a partly masked sequence.

    Args:
        cfg: sizes of the transformer.
        layout: the joint vocabulary.
        heads: one module per modality (in layout order) mapping (N, d_model) -> (N, that modality's vocab size).
        grids: (rows, cols) of each modality whose tokens lie on a 2-D grid (see `unidiff.modality.grids_of`).
    """

    def __init__(self, cfg: ModelConfig, layout: VocabLayout, heads: dict[str, nn.Module],
                 grids: dict[str, tuple[int, int]] | None = None):
        super().__init__()
        if sorted(heads) != layout.names:
            raise ValueError(f"heads {sorted(heads)} do not match the layout's modalities {layout.names}")
        self.cfg, self.layout = cfg, layout
        self.tok_emb = nn.Embedding(layout.size, cfg.d_model)
        self.mod_emb = nn.Embedding(len(layout.names), cfg.d_model)
        grids = grids or {}
        if not set(grids) <= set(layout.names):
            raise ValueError(f"grids {sorted(grids)} name modalities outside the layout {layout.names}")
        self.grids = nn.ModuleDict({n: GridEmbedding(*grids[n], cfg.d_model) for n in sorted(grids)})
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.heads = nn.ModuleDict({n: heads[n] for n in layout.names})
        # Variable-length holes: the BLANK logit, shared by all modalities and only where the caller allows it, and
        # a learned vector added to the input at every position of a hole, so the model knows which masked
        # positions may turn out to be nothing (and how long the hole is).
        self.blank_head = nn.Linear(cfg.d_model, 1) if layout.has_blank else None
        self.hole_emb = nn.Parameter(torch.zeros(cfg.d_model)) if layout.has_blank else None
        self.apply(self._init)
        if self.hole_emb is not None:
            nn.init.normal_(self.hole_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def embed(self, ids: torch.Tensor, modality: torch.Tensor, cells: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) -> (B, L, d): token + modality embeddings, plus row/column embeddings at the grid ``cells`` the
        data layer gives (``Batch.cells``) on grid modalities."""
        x = self.tok_emb(ids) + self.mod_emb(modality)
        if len(self.grids) and cells is None:
            raise UnidiffError("a model with grid modalities needs each token's cell from the data layer "
                               "(Batch.cells, from unidiff.data.cells_of): pass cells= to features")
        for name, grid in self.grids.items():
            index = self.layout.blocks[name].index
            x = x + grid(torch.where(modality == index, cells, -1)).to(x.dtype)
        return x

    def features(self, ids: torch.Tensor, modality: torch.Tensor, positions: torch.Tensor | None = None,
                 pad_mask: torch.Tensor | None = None, hole: torch.Tensor | None = None,
                 kv: list[dict] | None = None, span: torch.Tensor | None = None,
                 cells: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids, modality indices, positions, bool padding -> (B, L, d_model) final hidden states.

        ``hole`` ((B, L) bool) marks the positions of variable-length holes, on a model whose layout has BLANK;
        ``cells`` ((B, L) long) the raster cell of each token of a grid modality (-1 elsewhere; `Batch.cells`).

        Approximate key/value caching (a bidirectional model, Fast-dLLM's "dual cache"): with ``kv`` (one dict per
        layer) and no ``span``, the pass also stores every layer's keys and values there; with ``span`` ((B, n)
        position indices) it computes those n positions only, as (B, n, d_model), attending to the stored keys and
        values of every other position, and leaves in ``kv`` each layer's keys and values with the span's fresh
        ones scattered in (the caller may store them: the sampler's delta cache does). Exact only while the other
        positions are unchanged since they were stored (see `unidiff.models.kvcache` for the sampler's two policies; their
        cost is measured in bench/).
        """
        B, L = ids.shape
        if positions is None:
            positions = torch.arange(L, device=ids.device).expand(B, L)
        if span is not None:
            if kv is None or self.cfg.kind != "diffusion":
                raise UnidiffError("features over a span need a bidirectional model and the keys and values of a "
                                   "full pass (kv)")
            positions = positions.gather(1, span)
        cos, sin = rope_tables(positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base)
        # (B, 1, 1, L): True where a key takes part; None (faster kernels) when nothing is padded.
        attn_mask = None if pad_mask is None or not pad_mask.any() else ~pad_mask[:, None, None, :]
        causal = self.cfg.kind == "autoregressive"
        if causal:
            tril = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()
            attn_mask = tril if attn_mask is None else attn_mask & tril
        x = self.embed(ids, modality, cells)
        if hole is not None:
            if self.hole_emb is None:
                raise UnidiffError("variable-length holes need a model trained with them (data.holes > 0), and "
                                   "this one was not: use fixed-length holes (<mask:N>)")
            x = x + hole.unsqueeze(-1).to(x.dtype) * self.hole_emb
        if span is not None:  # the whole row was embedded; keep the span's positions
            x = x.gather(1, span.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, attn_mask, kv=None if kv is None else kv[i], span=span)
        x = self.norm(x)
        if causal:  # position j holds the state that predicts token j: the one computed at j - 1
            x = torch.cat([x.new_zeros(B, 1, x.shape[-1]), x[:, :-1]], dim=1)
        return x

    def decode_step(self, ids: torch.Tensor, modality: torch.Tensor, positions: torch.Tensor,
                    cache: list[dict], key_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Causal decoding with a key/value cache (autoregressive kind only): feed the next (B, n) tokens of rows
        whose earlier tokens are in ``cache`` (one dict per layer, empty at first) and get (B, n, d) states, the
        one at position j predicting token j + 1. The rows advance in lockstep; ``key_valid`` ((B, cached + n)
        bool, all true by default) marks padding that no position may attend to, so rows of different lengths
        can be left-padded to line up. The states of real positions equal `features`' (shifted by one) up to
        float rounding; a padding position attends to itself only, and its state means nothing."""
        if self.cfg.kind != "autoregressive":
            raise UnidiffError("decode_step needs an autoregressive model (model.kind = \"autoregressive\")")
        B, n = ids.shape
        cos, sin = rope_tables(positions, self.cfg.d_model // self.cfg.n_heads, self.cfg.rope_base)
        past = cache[0]["k"].shape[2] if cache and "k" in cache[0] else 0
        # New positions see every cached one and the new ones up to themselves.
        attn_mask = None if n == 1 else torch.ones(n, past + n, dtype=torch.bool, device=ids.device).tril(past)
        if key_valid is not None and not bool(key_valid.all()):
            own = torch.zeros(n, past + n, dtype=torch.bool, device=ids.device)
            own[:, past:] = torch.eye(n, dtype=torch.bool, device=ids.device)
            keys = key_valid[:, None, None, :] | own  # (B, 1, n, past + n)
            attn_mask = keys if attn_mask is None else keys & attn_mask
        if len(self.grids):
            raise UnidiffError("cached causal decoding does not place grid tokens (their row and column come from "
                               "the whole run): an autoregressive model of a grid modality is not supported")
        x = self.tok_emb(ids) + self.mod_emb(modality)
        while len(cache) < len(self.blocks):
            cache.append({})
        for block, layer_cache in zip(self.blocks, cache):
            x = block(x, cos, sin, attn_mask, layer_cache)
        return self.norm(x)

    def logits(self, h: torch.Tensor, modality: torch.Tensor, blank: torch.Tensor | bool | None = None) -> torch.Tensor:
        """(..., d) hidden states and (...,) modality indices -> (..., V) logits, -inf outside each range.

        ``blank`` ((...,) bool, or True for everywhere) lets those positions predict BLANK as well, on a model whose
        layout has it; by default no position may.
        """
        out = h.new_full((*h.shape[:-1], self.layout.size), float("-inf"))
        for name, head in self.heads.items():
            b = self.layout.blocks[name]
            if len(self.heads) == 1:
                out[..., b.start:b.stop] = head(h)
            else:  # an empty selection is fine, and checking for one would cost a device sync per head
                sel = modality == b.index
                out[sel, b.start:b.stop] = head(h[sel]).to(out.dtype)
        if blank is not None and blank is not False and self.blank_head is not None:
            score = self.blank_head(h).squeeze(-1).to(out.dtype)
            out[..., self.layout.blank] = score if blank is True else score.masked_fill(~blank, float("-inf"))
        return out

    def forward(self, ids, modality, positions=None, pad_mask=None, cells=None) -> torch.Tensor:
        """(B, L) -> (B, L, V) logits at every position (for tests and debugging; the engine reads out only where
        it needs to)."""
        return self.logits(self.features(ids, modality, positions, pad_mask, cells=cells), modality)
