"""Rows computed at their own widths: how batched passes stay batch-invariant at reduced precision on the CPU.

A row padded to its batch's width is rounded differently by the attention kernel than the same row alone; in bf16
those last-bit differences become different samples. `by_width` runs a pass once per distinct row width instead,
and `cut_to_width` says where that is needed.
"""

from __future__ import annotations

from typing import Callable

import torch


def cut_to_width(device: torch.device, amp_dtype: torch.dtype | None) -> bool:
    """Whether passes compute each row at its own width, one pass per distinct width (see `by_width`): at reduced
    precision on the CPU. Padding a row to its batch's width changes how the attention kernel rounds it, and bf16
    turns those last-bit differences into different samples; the CPU's matmuls do not depend on how many rows a pass
    holds, so a row cut to its width is computed exactly as it is alone. fp32 keeps one padded pass (its rounding
    moves a logit by about 1e-5, bf16's by 0.1, and the quantised confidences absorb it); a GPU's matmuls may
    depend on the number of rows, and it would pay kernel launches per width."""
    return amp_dtype is not None and device.type == "cpu"


def row_widths(pad_mask: torch.Tensor) -> torch.Tensor:
    """(B,) each row's width: its last position that is not padding, plus one (at least 1)."""
    cols = torch.arange(1, pad_mask.shape[1] + 1, device=pad_mask.device)
    return torch.where(pad_mask, 0, cols).amax(1).clamp(min=1)


def by_width(run: Callable[[torch.Tensor, int], torch.Tensor], widths: torch.Tensor, L: int) -> torch.Tensor:
    """(n, L, d) features of n rows, from ``run(rows, w)``: the (len(rows), w, d) features of those rows cut to
    width w, called once per distinct width in ``widths`` ((n,)), so no row is padded (zeros past each width)."""
    h = None
    for w in torch.unique(widths).tolist():  # Python work per distinct width, never per row
        rows = (widths == w).nonzero().squeeze(1)
        part = run(rows, w)
        h = part.new_zeros(len(widths), L, part.shape[-1]) if h is None else h
        h[rows, :w] = part
    return h
