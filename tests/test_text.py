"""The text plugin: byte-level modality, the Shakespeare corpus, and its sample metric."""

from __future__ import annotations

import math

import pytest

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff_text import TextModality
from unidiff_text.corpus import HELD_OUT, clean, play_files, shakespeare
from unidiff_text.metrics import distinct_words, word_validity, words


def test_bytes_round_trip_any_string():
    m = TextModality()
    s = "Ay, marry — ‘tis so. Ω\n"
    ids = m.encode(s)
    assert ids == list(s.encode("utf-8")) and all(0 <= i < 256 for i in ids)
    assert m.decode(ids) == s


def test_cut_multibyte_character_decodes_with_a_replacement():
    m = TextModality()
    assert m.decode(list("é".encode())[:1] + [65]) == "\ufffdA"


def test_non_string_content_is_refused():
    with pytest.raises(ModalityInputError, match="text content must be a str, got int"):
        TextModality().encode(42)


def test_clean_strips_markdown_by_hand():
    md = "# Macbeth\n\n## ACT I\n\n**FIRST WITCH**\nWhen shall we three meet again\\\n_Thunder._\n\n\n\nEnd"
    assert clean(md) == "Macbeth\n\nACT I\n\nFIRST WITCH\nWhen shall we three meet again\nThunder.\n\nEnd\n"


def test_whole_plays_are_held_out():
    names = [f.stem for f in play_files()]
    assert len(names) == 38 and set(HELD_OUT) <= set(names)
    train, valid = shakespeare("train"), shakespeare("valid")
    assert (len(train), len(valid)) == (35, 3)
    titles = sorted(v.split("\n", 1)[0] for v in valid)
    assert titles == ["Macbeth", "The Tempest", "Twelfth Night"]
    assert not any(t.split("\n", 1)[0] in titles for t in train)
    with pytest.raises(UnidiffError, match="unknown split 'test'"):
        shakespeare("test")


def test_word_validity_by_hand():
    vocab = frozenset({"the", "king", "is", "dead", "o'er"})
    assert words("The KING is dead, zzz o'er!") == ["the", "king", "is", "dead", "zzz", "o'er"]
    assert word_validity(["The KING is dead, zzz o'er!"], vocab) == 5 / 6
    assert word_validity([""], vocab) == 0.0


def test_held_out_plays_score_high_and_noise_scores_low():
    held = "\n".join(shakespeare("valid"))
    assert word_validity([held]) == pytest.approx(0.948, abs=0.001)  # unseen plays bring unseen names
    assert word_validity(["xq zzkv bfrw qqt plmn wxyz"]) == 0.0


def test_distinct_words_by_hand():
    assert distinct_words(["you your you your you", "to be or not to be"]) == pytest.approx((2 / 5 + 4 / 6) / 2)


def test_reference_ngram_probabilities_by_hand():
    from unidiff_text.reference import ByteNgram

    ref = ByteNgram(["abab"], order=2)
    p1 = {c: (2 + 2 / 256) / (4 + 2) for c in "ab"}  # Witten-Bell: (count + types * uniform) / (total + types)
    assert ref.prob(b"", ord("a")) == pytest.approx(p1["a"])
    assert ref.prob(b"a", ord("b")) == pytest.approx((2 + 1 * p1["b"]) / (2 + 1))  # "ab" twice; "a" has 1 type
    assert ref.prob(b"a", ord("a")) == pytest.approx((0 + 1 * p1["a"]) / 3)
    assert ref.prob(b"z", ord("a")) == pytest.approx(p1["a"])  # an unseen context backs off to the unigram
    assert sum(ref.prob(b"a", c) for c in range(256)) == pytest.approx(1.0)
    bits, n = ref.bits("ab")
    assert n == 2 and bits == pytest.approx(-math.log2(p1["a"]) - math.log2((2 + p1["b"]) / 3))


def test_titled_and_keyword_datasets():
    from unidiff_text.corpus import shakespeare_keywords, shakespeare_titled

    titled = shakespeare_titled("valid")
    assert sorted(d.condition for d in titled) == sorted(f"<{slug}>\n" for slug in HELD_OUT)
    assert [d.content for d in titled] == shakespeare("valid")
    chunks = shakespeare_keywords("valid")
    assert len(chunks) > 1000
    for d in chunks:
        word = d.condition[1:-2]
        assert d.condition == f"<{word}>\n" and len(word) >= 6
        assert word in d.content.lower() and len(d.content.encode()) <= 224
    with pytest.raises(UnidiffError, match="unknown split"):
        shakespeare_keywords("test")


def test_every_shipped_config_loads():
    from pathlib import Path

    from unidiff.training.config import load_config

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert {c.name for c in configs} >= {"text.toml", "text-base.toml", "text-keyword.toml"}
    for path in configs:
        load_config(path)  # validates


def test_editing_command_writes_its_table(tmp_path):
    """The measurement commands share one table writer; the editing table of strength 0 is the identity."""
    from unidiff_text.editing import main

    out = tmp_path / "edit.md"
    main(["--num", "2", "--length", "24", "--strengths", "0", "1", "--out", str(out)])
    text = out.read_text()
    assert "Command: `python -m unidiff_text.editing`" in text and "Machine: " in text
    rows = [ln.split("|")[1:-1] for ln in text.splitlines() if ln.startswith("| random") or ln.startswith("| conf")]
    assert [(r[0].strip(), r[1].strip(), r[2].strip(), r[4].strip()) for r in rows if r[1].strip() == "0"] == \
        [("random", "0", "0.000", "0.0"), ("confidence", "0", "0.000", "0.0")]  # unchanged, no forward pass
    assert all(float(r[2]) > 0.5 for r in rows if r[1].strip() == "1")  # strength 1 regenerates everything
    assert "|---|---|---|---|---|" in text
