"""The code tokenizer: exact round trips, the language tag, load errors, deterministic training, the shipped file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from unidiff.errors import ModalityInputError, UnidiffError

ROOT = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("unidiff_code") is None:  # the plugin is not installed as a package yet
    sys.path.insert(0, str(ROOT / "plugins"))

from unidiff_code.corpus import module_files, read_source  # noqa: E402
from unidiff_code.tokenizer import TAGS, decode, encode, load, train_bpe  # noqa: E402

SHIPPED = ROOT / "tokenizers" / "python-bpe-8k.json"
SHIPPED_VOCAB = 8257  # 1 tag + 256 bytes + 8000 merges
TAG = "<|python|>"


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load("python-bpe-8k")


def test_round_trip_on_every_stdlib_file(tok):
    files = [(rel, s) for rel, path in module_files() if (s := read_source(path)) is not None]
    assert len(files) > 500
    encodings = tok.encode_batch([s for _, s in files], add_special_tokens=False)
    decoded = tok.decode_batch([e.ids for e in encodings], skip_special_tokens=False)
    bad = [rel for (rel, s), d in zip(files, decoded) if d != s]
    assert not bad, f"{len(bad)} files do not round-trip, e.g. {bad[:5]}"


@pytest.mark.parametrize("text", [
    "",
    "\n",
    "\n\n\n",
    "\tif x:\n\t\treturn 1\t\n",
    "a = 1\r\nb = 2\r\n\r\n",
    "x = 1   \n   \ny = 2 \t \n",
    "nul\x00byte\x00",
    "emoji = '😀🐍👩‍💻'  # naïve café, 日本語, Ω\n",
    "".join(" " * (4 * d) + f"if x{d}:\n" for d in range(60)) + " " * 240 + "pass\n",
    "  leading spaces and trailing spaces  ",
    "\r",
    "\u00a0\u2028\u200b\ufeffzero-width and friends",
    "<|python|",
    "\ud7ff\U0010ffff",
])
def test_round_trip_on_nasty_strings(tok, text):
    assert decode(tok, encode(tok, text)) == text


def test_a_lone_surrogate_is_a_clear_error(tok):
    with pytest.raises(ModalityInputError, match="character 2 .* lone surrogate"):
        encode(tok, "ab\ud800c")


def test_tag_has_the_first_id_and_never_comes_from_text(tok):
    tag_id = tok.token_to_id(TAG)
    assert TAGS == (TAG,) and tag_id == 0 and tok.id_to_token(0) == TAG
    merged = {a + b for a, b in json.loads(tok.to_str())["model"]["merges"]}
    assert TAG not in merged  # no merge spells the tag
    for text in ["python", " python", "<|python", TAG, f"x = '{TAG}'\n", TAG + TAG]:
        ids = encode(tok, text)
        assert tag_id not in ids, text
        assert decode(tok, ids) == text
    # A tag written in a source file is ordinary text, several byte-level tokens ...
    assert len(encode(tok, TAG)) > 1
    # ... and the tag id, put there by a modality, decodes to the tag's text.
    assert decode(tok, [tag_id] + encode(tok, "x\n")) == TAG + "x\n"


def test_a_raw_tokenizer_file_maps_the_literal_tag_to_the_tag():
    # The reason `load` switches `encode_special_tokens` on: the switch is not stored in the JSON.
    raw = Tokenizer.from_file(str(SHIPPED))
    assert raw.encode(TAG, add_special_tokens=False).ids == [0]


def test_load_by_path_and_missing_name():
    assert load(SHIPPED).get_vocab_size() == SHIPPED_VOCAB
    with pytest.raises(UnidiffError) as e:
        load("python-bpe-1k")
    msg = str(e.value)
    assert "python-bpe-1k.json" in msg and "python-bpe-8k" in msg  # the missing file and the known names
    assert "python -m unidiff_code.tokenizer --out tokenizers/python-bpe-1k.json" in msg  # the fix
    with pytest.raises(UnidiffError, match="--out /no/such/dir/x.json"):
        load("/no/such/dir/x.json")


@pytest.mark.parametrize("content", ['{"model": {"type": "BPE", "vocab": ', "{}", "not json at all", ""])
def test_load_corrupt_file_is_a_unidiff_error(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(UnidiffError, match="broken.json"):
        load(path)


def test_training_is_deterministic():
    sources = [read_source(path) for _, path in module_files("valid")[:5]]
    assert train_bpe(sources, merges=300).to_str() == train_bpe(sources, merges=300).to_str()


def test_training_learns_the_merges_worked_by_hand():
    # One word of 200 a's: (a, a) occurs 199 times -> "aa" (100 of them); then (aa, aa) occurs 99 times -> "aaaa".
    tok = train_bpe(["aaaa" * 50], merges=2)
    model = json.loads(tok.to_str())["model"]
    assert model["merges"] == [["a", "a"], ["aa", "aa"]]
    assert tok.get_vocab_size() == 1 + 256 + 2
    assert (tok.token_to_id(TAG), tok.token_to_id("aa"), tok.token_to_id("aaaa")) == (0, 257, 258)
    assert encode(tok, "aaaa" * 50) == [258] * 50
    # A pair seen once is below min_frequency 2: nothing is merged, whatever the budget.
    assert json.loads(train_bpe(["ab"], merges=5).to_str())["model"]["merges"] == []


def test_shipped_file(tok):
    assert tok.get_vocab_size() == SHIPPED_VOCAB
    assert len(json.loads(SHIPPED.read_text())["model"]["merges"]) == 8000
