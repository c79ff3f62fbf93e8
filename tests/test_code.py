"""The code plugin: its modality (byte-level BPE, language tag, .py output), its registration through the entry
point, and the standard-library corpus (units, split by module)."""

from __future__ import annotations

import textwrap

import pytest

from unidiff.errors import ModalityInputError, UnidiffError, UnknownNameError
from unidiff.plugins import Registry
from unidiff_code import LANGUAGES, CodeModality
from unidiff_code.corpus import HOLD_OUT, functions, module_files, python, split_of, units


@pytest.fixture(scope="module")
def code():
    return CodeModality()


# --- the modality ----------------------------------------------------------------------------------------------

def test_code_round_trips_exactly_whitespace_included(code):
    source = "def f(x):\n\tif x:\r\n        return  x  \n\n\n    # é ✓\n"
    ids = code.encode(source)
    assert code.decode(ids) == source
    assert len(ids) < len(source.encode())  # merges: fewer tokens than bytes
    assert all(0 <= i < code.vocab_size for i in ids)


def test_the_language_tag_is_one_token_that_opens_units(code):
    assert code.tag == LANGUAGES["python"].tag == "<|python|>"
    assert code.encode(code.tag + "def f(): pass") == [code.tag_id] + code.encode("def f(): pass")
    assert code.encode(code.tag) == [code.tag_id]
    # Only where it opens the content; elsewhere the tag's text is text, and round-trips as such.
    assert code.tag_id not in code.encode("python <|python| |python|>") + code.encode("x = '<|python|>'")
    assert code.decode(code.encode("x = '<|python|>'")) == "x = '<|python|>'"
    assert code.decode([code.tag_id] + code.encode("x = 1")) == "<|python|>x = 1"


def test_code_modality_is_registered_through_its_entry_point():
    registry = Registry()
    code = registry.modality("code")
    assert isinstance(code, CodeModality) and code.file_suffix == ".py"
    assert registry.modality("code", **code.options()).options() == {
        "language": "python", "tokenizer": "python-bpe-8k", "tag": "<|python|>", "suffix": ".py"}
    assert registry.plugin_of("modalities", "code").name == "code"
    builder, meta = registry.dataset("python")
    assert meta["modality"] == "code"


def test_bad_code_input_names_the_problem():
    with pytest.raises(ModalityInputError, match="code content must be a str, got bytes"):
        CodeModality().encode(b"x = 1")
    with pytest.raises(UnknownNameError, match="rust") as e:
        CodeModality(language="rust")
    assert "python" in str(e.value) and "LANGUAGES" in str(e.value)
    with pytest.raises(ModalityInputError, match=r"has no tag token '<\|rust\|>' for rust"):
        CodeModality(language="rust", tokenizer="python-bpe-8k", tag="<|rust|>", suffix=".rs")


def test_a_language_can_be_added_by_options(tmp_path):
    """A tokenizer trained with another tag, and the options that name it: no code change."""
    from unidiff_code.tokenizer import save, train_bpe

    tok = train_bpe(["fn main() { println!(\"hi\"); }\n" * 20], merges=20, tags=("<|rust|>",))
    save(tok, tmp_path / "rust-bpe.json")
    rust = CodeModality(language="rust", tokenizer=str(tmp_path / "rust-bpe.json"), tag="<|rust|>", suffix=".rs")
    assert rust.file_suffix == ".rs" and rust.tag_id == 0 and 257 < rust.vocab_size <= 1 + 256 + 20
    assert rust.encode("<|rust|>fn main() {}")[0] == 0 and rust.decode(rust.encode("fn x")) == "fn x"
    assert CodeModality(**rust.options()).options() == rust.options()


def test_write_puts_samples_in_one_py_file(code, tmp_path):
    out = tmp_path / "samples.py"
    code.write(["def a():\n    return 1", "def b():\n    return 2\n"], out)
    assert out.read_text() == "def a():\n    return 1\n\n# ---- sample 1 ----\ndef b():\n    return 2\n"


# --- the corpus ------------------------------------------------------------------------------------------------

MODULE = textwrap.dedent('''\
    """Doc."""
    import os

    X = 1


    # helper for f
    @decorate
    @other(1)
    def f(a,
          b):
        return a + b

    class C(Base):
        """A class."""

        # about m
        @property
        def m(self):
            return 1

        async def n(self):
            pass

    if __name__ == "__main__":
        f(1, 2)
    ''')


def test_units_are_whole_definitions_with_decorators_and_comments_then_the_rest():
    got = units(MODULE, "pkg/mod.py")
    assert [(u.name, u.kind, u.lineno) for u in got] == [("f", "function", 7), ("C", "class", 14),
                                                         ("<module>", "module", 1)]
    assert got[0].source == "# helper for f\n@decorate\n@other(1)\ndef f(a,\n      b):\n    return a + b\n"
    assert got[1].source.startswith('class C(Base):\n    """A class."""\n') and \
        got[1].source.endswith("    async def n(self):\n        pass\n")
    assert got[2].source == '"""Doc."""\nimport os\n\nX = 1\n\n\n\n\nif __name__ == "__main__":\n    f(1, 2)\n'
    assert all(u.path == "pkg/mod.py" for u in got)
    assert units("def broken(:\n", "x.py") == []


def test_functions_are_top_level_functions_and_dedented_methods():
    got = functions(MODULE, "pkg/mod.py")
    assert [(u.name, u.kind, u.lineno) for u in got] == [("f", "function", 7), ("C.m", "method", 17),
                                                         ("C.n", "method", 22)]
    assert got[1].source == "# about m\n@property\ndef m(self):\n    return 1\n"
    assert got[2].source == "async def n(self):\n    pass\n"


def test_the_split_holds_out_whole_modules_by_path_hash():
    assert [split_of(p) for p in ("shutil.py", "copy.py", "os.py", "json/decoder.py")] == \
        ["valid", "valid", "train", "train"]
    assert split_of("json\\decoder.py") == split_of("json/decoder.py")
    every, train, valid = module_files(), module_files("train"), module_files("valid")
    assert len(every) > 500 and sorted(train + valid) == every
    assert 0.5 / HOLD_OUT < len(valid) / len(every) < 2.0 / HOLD_OUT
    assert not any("test" in rel.split("/")[:-1] or "tests" in rel.split("/")[:-1] for rel, _ in every)


def test_the_python_dataset_opens_every_unit_with_the_tag():
    docs = python("valid")
    assert len(docs) > 100 and all(d.startswith("<|python|>") for d in docs)
    assert any(d.startswith("<|python|>def copy(x):") for d in docs)  # copy.py is held out
    with pytest.raises(UnidiffError, match="splits 'train' and 'valid'; got 'test'"):
        python("test")

