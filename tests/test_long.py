"""`Pipeline.complete_long`: outputs longer than the model's context, by a sliding window."""

from __future__ import annotations

import pytest

from unidiff_bench.bench import Bench, Setting
from unidiff.errors import UnidiffError
from unidiff.pipeline import Pipeline


@pytest.fixture(scope="module")
def text():
    return Pipeline.load("text", device="cpu")


def test_first_window_is_complete_and_every_window_counts(text):
    # The text model's rows have no markers: a window of 256 bytes. With the 7-byte prompt the first window
    # generates 249; the next keeps 128 and generates the remaining 51 (at most 256 - 128).
    prompt, spt = "ROMEO.\n", 0.1
    first = text.complete(prompt, length=249, steps=25, seed=3, guidance=1.0)
    out = text.complete_long(prompt, length=300, steps_per_token=spt, seed=3, guidance=1.0)
    assert out.generated == [300]
    assert out.nfe == [25 + 5]  # round(0.1 * 249) + round(0.1 * 51) steps, one pass each (no guidance)
    assert len(out.texts[0]) == 7 + 300  # bytes: one token each
    assert out.texts[0].startswith(first.texts[0])  # window 1 is exactly complete()'s sample with the same seed


def test_windows_keep_the_overlap_and_the_condition():
    dna = Pipeline.load("dna", device="cpu")
    out = dna.complete_long(length=400, num=2, overlap=200, condition="plant", steps_per_token=0.05, seed=1)
    assert out.generated == [400, 400]
    assert [len(t) for t in out.texts] == [400, 400] and set("".join(out.texts)) <= set("ACGT")
    assert out.texts[0] != out.texts[1]  # rows keep their own seeds


def test_complete_long_refuses_bad_requests(text):
    with pytest.raises(UnidiffError, match="overlap must be in"):
        text.complete_long(length=300, overlap=256)
    with pytest.raises(UnidiffError, match="steps_per_token"):
        text.complete_long(length=300, steps=10)
    with pytest.raises(UnidiffError, match="no room to generate"):
        text.complete_long("x" * 256, length=300)


def test_bench_generates_lengths_beyond_the_context_by_window():
    bench = Bench("code", "code-ar", device="cpu")
    # 256 positions less the code tag that opens every row and the twin's BOS/EOS markers (code has none)
    assert bench.max_length() == 253
    gens, _ = bench.run(Setting("autoregressive", temperature=0.8), 300, 1, 1)
    assert gens[0].generated == [300] and gens[0].nfe == [300]  # AR: one pass per token, windows included


def test_bench_settings_parse():
    assert Setting.parse("ar:T0.8") == Setting("autoregressive", temperature=0.8)
    assert Setting.parse("diffusion:ancestral:0.25:T1:blocks32:cache") == Setting(
        "diffusion", 0.25, "ancestral", 1.0, block_length=32, cache=True)
    for bad in ("ar", "diffusion:confidence:0:T1", "diffusion:confidence:0.5:T1:blocks", "gpt:T1",
                "diffusion:confidence:nan:T1", "diffusion:confidence:0.5:T1:cache:delta"):
        with pytest.raises(UnidiffError, match="bad bench setting"):
            Setting.parse(bad)


def test_command_line_sliding_window(capsys):
    from unidiff.cli import main

    assert main(["generate", "--model", "dna", "--length", "400", "--sliding-window", "--steps", "20",
                 "--seed", "2"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip()) == 400 and set(out.strip()) <= set("ACGT")
    assert "400 tokens" in err
    assert main(["generate", "--model", "dna", "--length", "40", "--overlap", "5"]) == 2
    assert "add --sliding-window" in capsys.readouterr().err


def test_windows_carry_ids_and_keep_a_same_modality_condition_out_of_the_output(text):
    # The text model's condition is text too ("<hamlet>\n" before the row): it is given again in every window but
    # must appear in no output; a byte cut mid-character at a window's edge must survive (ids, not decoded text).
    cond, prompt = "<hamlet>\n", "ROMEO.\n"
    window = 256 - len(cond)
    first = text.complete(prompt, condition=cond, length=window - len(prompt), steps=24, seed=5, guidance=1.0)
    out = text.complete_long(prompt, condition=cond, length=400, steps_per_token=0.1, seed=5, guidance=1.0)
    assert first.texts[0].startswith(cond)  # complete(): one run of text, condition first
    assert out.texts[0].startswith(first.texts[0][len(cond):])
    assert cond not in out.texts[0]
    assert len(out.tokens[0]) == 400 and out.generated == [400]
    assert text.modality(None).decode(text.modality(None).encode(prompt) + out.tokens[0]) == out.texts[0]
