"""The modality contract written down: every optional member the engine or the CLI uses is declared in
`ModalityExtras` and read only through `optional`; sampling, infilling, editing, captioning, in-painting and the
CLI's readers touch no other attribute of a modality; `encode_many` encodes training documents in batches."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stdout

import pytest
import torch

from unidiff import Pipeline
from unidiff.data import Document, Tokens, encode_docs
from unidiff.errors import PluginError
from unidiff.modality import OPTIONAL, Modality, checked_encode_many, optional
from unidiff.vocab import VocabLayout

from helpers import Letters

REQUIRED = {"name", "vocab_size", "default_length", "file_suffix", "encode", "decode", "write", "options"}


def test_the_optional_members_are_exactly_those_declared():
    assert OPTIONAL == {"grid", "prompt_as_condition", "tag", "make_head", "mirror", "sample_metrics", "show",
                        "to_array", "cells_of_box", "encode_many"}
    assert not OPTIONAL & REQUIRED
    assert set(Modality.__annotations__) | {"encode", "decode", "write", "options"} == REQUIRED


def test_optional_reads_a_declared_member_and_refuses_any_other():
    text = Letters("ab", "ab")
    assert optional(text, "grid") is None and optional(text, "prompt_as_condition", False) is False
    with pytest.raises(ValueError, match="'tokenizer' is not an optional modality member; declare it in "
                                         "ModalityExtras"):
        optional(text, "tokenizer")


class Recorder:
    """A modality that records every attribute the engine reads of it."""

    def __init__(self, inner):
        self.__dict__["_inner"], self.__dict__["read"] = inner, set()

    def __getattr__(self, name):
        self.__dict__["read"].add(name)
        return getattr(self.__dict__["_inner"], name)


def _recorded(name: str) -> tuple[Pipeline, dict[str, Recorder]]:
    pipe = Pipeline.load(name, device="cpu")
    recorders = {k: Recorder(m) for k, m in pipe.modalities.items()}
    return Pipeline(pipe.model, recorders, pipe.config, pipe.amp_dtype, pipe.registry), recorders


def test_the_engine_reads_no_modality_member_outside_the_contract(tmp_path):
    from unidiff.cli import emit, read_content

    text, text_rec = _recorded("text")
    text.complete("KING\n", length=4, steps=2)
    text.infill("ROMEO\n<mask:3> Romeo", steps=2)
    text.edit("KING\nNow is the winter", 0.2, steps=2)
    text.complete_long("KING\n", length=20, steps_per_token=0.25)
    args = argparse.Namespace(out=None, num=1, seed=0)
    with redirect_stdout(io.StringIO()):
        emit(text.complete("KING\n", length=4, steps=2), text_rec["text"], args)
    (tmp_path / "a.txt").write_text("KING\n")
    assert read_content(text_rec["text"], str(tmp_path / "a.txt")) == "KING\n"

    image, image_rec = _recorded("image")
    gen = image.complete("a cat", steps=4)
    with redirect_stdout(io.StringIO()):
        emit(gen, image_rec["image"], args)
    picture = tmp_path / "cat.png"
    gen.texts[0].save(picture)
    content = read_content(image_rec["image"], str(picture))
    image.caption(content)
    read = set().union(*(r.read for r in (*text_rec.values(), *image_rec.values())))
    assert read <= REQUIRED | OPTIONAL, f"outside the contract: {sorted(read - REQUIRED - OPTIONAL)}"
    assert {"show", "to_array", "prompt_as_condition"} <= image_rec["image"].read  # the image paths were taken


class Batched(Letters):
    """Letters with a batch encoder that counts its calls."""

    def __init__(self, alphabet: str, fail: bool = False):
        super().__init__("abc", alphabet)
        self.calls, self.fail = [], fail

    def encode_many(self, contents):
        self.calls.append(len(contents))
        ids = [self.encode(c) for c in contents]
        return ids[:-1] if self.fail else ids


def test_training_documents_are_encoded_in_batches_with_the_same_ids():
    m = Batched("abc")
    layout = VocabLayout({m.name: m.vocab_size})
    docs = ["ab", Document("cab"), Tokens([2, 2]), "c"] + ["a"] * 300
    got = encode_docs(docs, m, layout)
    plain = encode_docs(docs, Letters("abc", "abc"), layout)  # one encode per document
    assert all(torch.equal(a, b) for a, b in zip(got, plain)) and len(got) == len(docs)
    assert m.calls == [256, 47]  # the 303 documents that are not Tokens, 256 at a time
    with pytest.raises(PluginError, match=r"encode_many of 2 items returned .*not one list of ids per item"):
        checked_encode_many(Batched("abc", fail=True), ["a", "b"])
