"""The text plugin: byte-level modality, the Shakespeare corpus, and its sample metric."""

from __future__ import annotations

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
