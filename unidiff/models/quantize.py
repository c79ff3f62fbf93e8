"""int8 inference on the CPU: the transformer's linear layers with int8 weights and dynamically quantised int8
activations (`torch.ao.quantization.quantize_dynamic`); its speed and quality are in bench/."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from unidiff.errors import UnidiffError


def quantize_int8(model, device: torch.device):
    """The model with the linear layers of its transformer blocks quantised to int8 (CPU)."""
    if device.type != "cpu":
        raise UnidiffError("int8 quantization runs on the CPU only: drop --quantize or use --device cpu")
    import warnings

    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():  # torch marks its quantized tensor types for a future move to torchao
        warnings.simplefilter("ignore")
        model.blocks = quantize_dynamic(model.blocks, {torch.nn.Linear}, dtype=torch.qint8)
    return model


@contextmanager
def int8_while(model, device: torch.device):
    """``with int8_while(model, device):`` runs the block with the model quantised to int8 and gives it back as it
    was afterwards (the same modules and weights): a measurement of int8 beside fp32 on one loaded model."""
    blocks = model.blocks
    try:
        yield quantize_int8(model, device)
    finally:
        model.blocks = blocks


def bad_quantize(name: str):
    raise UnidiffError(f"unknown quantization {name!r}; the one available is int8")
