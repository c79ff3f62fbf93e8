"""Pieces the tests share: a fake modality (a str over an alphabet, one local id per letter) and checkpoint
weight comparison."""

from pathlib import Path

import torch
from safetensors.torch import load_file

from unidiff.errors import ModalityInputError


class Letters:
    """Content is a str over ``alphabet``; a letter outside it raises `ModalityInputError` naming it and its place."""

    file_suffix = ".txt"

    def __init__(self, name: str = "abc", alphabet: str = "abc", default_length: int = 4):
        self.name, self.alphabet, self.vocab_size = name, alphabet, len(alphabet)
        self.default_length = default_length

    def encode(self, content):
        out = []
        for i, ch in enumerate(content):
            if ch not in self.alphabet:
                raise ModalityInputError(f"{ch!r} at position {i} is not in {self.alphabet!r}")
            out.append(self.alphabet.index(ch))
        return out

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)

    def options(self):
        return {}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    """The model folders a and b hold bit-identical weights."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a}/{k} differs"
