"""The DNA plugin: the nucleotide modality, reverse complements, and the ``unidiff generate`` command on a freshly
trained class-conditioned DNA model.

(FASTA/FASTQ files: test_fasta.py; the corpus: test_dna_corpus.py; metrics and Markov baselines:
test_dna_metrics.py.)
"""

from __future__ import annotations

import json
import random
import re

import pytest

from unidiff.cli import main
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.plugins import Registry
from unidiff_dna import ALPHABET, DnaModality, reverse_complement
from unidiff_dna.fasta import read_fasta


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


# --- DnaModality ---------------------------------------------------------------------------------------------------


def test_encode_decode_exact():
    m = DnaModality()
    assert (m.name, m.vocab_size, m.file_suffix) == ("dna", 5, ".fa")
    assert m.encode("ACGTNacgtn") == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert m.encode("") == []
    assert m.decode([0, 1, 2, 3, 4, 4, 3]) == "ACGTNNT"
    assert m.decode([]) == ""
    seq = "GATTACANNCG"
    assert m.decode(m.encode(seq)) == seq
    assert m.decode(m.encode(seq.lower())) == seq  # decoding is upper case


@pytest.mark.parametrize("seq, bad, pos", [("ACGXA", "X", 3), ("U", "U", 0), ("ACGT-", "-", 4), ("acgt*a", "*", 4),
                                           ("ACGTé", "é", 4)])
def test_invalid_character_is_named_with_its_position(seq, bad, pos):
    with pytest.raises(ModalityInputError) as e:
        DnaModality().encode(seq)
    msg = str(e.value)
    assert msg.startswith(f"invalid nucleotide {bad!r} at position {pos}: ")
    assert "only hold A, C, G, T and N" in msg


def test_first_invalid_character_is_reported():
    with pytest.raises(ModalityInputError, match=r"^invalid nucleotide 'Z' at position 2: "):
        DnaModality().encode("ACZXQ")


@pytest.mark.parametrize("code", list("RYSWKMBDHVrysw"))
def test_iupac_codes_rejected_by_default_and_read_as_n_on_request(code):
    with pytest.raises(ModalityInputError) as e:
        DnaModality().encode(f"AC{code}T")
    msg = str(e.value)
    assert msg.startswith(f"invalid nucleotide {code!r} at position 2: ")
    assert "IUPAC" in msg and "iupac='n'" in msg
    assert DnaModality(iupac="n").encode(f"AC{code}T") == [0, 1, 4, 3]


def test_iupac_n_mode_still_rejects_other_characters():
    m = DnaModality(iupac="n")
    assert m.encode("RYSWKMBDHVN") == [4] * 11
    with pytest.raises(ModalityInputError, match=r"^invalid nucleotide 'X' at position 1: "):
        m.encode("AXR")
    with pytest.raises(ModalityInputError, match=r"^invalid nucleotide 'U' at position 0: "):
        m.encode("U")


@pytest.mark.parametrize("seq, bad, pos", [("AC GT", " ", 2), ("ACGT\n", "\n", 4), ("\tA", "\t", 0)])
def test_whitespace_error_mentions_whitespace(seq, bad, pos):
    with pytest.raises(ModalityInputError) as e:
        DnaModality().encode(seq)
    msg = str(e.value)
    assert msg.startswith(f"invalid nucleotide {bad!r} at position {pos}: ")
    assert "whitespace" in msg and "read_fasta" in msg


@pytest.mark.parametrize("content, kind", [(b"ACGT", "bytes"), (["A", "C"], "list"), (None, "NoneType"), (3, "int")])
def test_non_str_content_rejected(content, kind):
    with pytest.raises(ModalityInputError, match=f"DNA content must be a str of A, C, G, T, N; got {kind}$"):
        DnaModality().encode(content)


@pytest.mark.parametrize("iupac", ["error", "n"])
def test_options_rebuild_through_the_registry(registry, iupac):
    m = DnaModality(iupac=iupac)
    assert m.options() == {"iupac": iupac}
    json.dumps(m.options())  # stored in config.json
    again = registry.modality("dna", **m.options())
    assert isinstance(again, DnaModality) and again.options() == m.options()
    probe = "ACGTR"
    if iupac == "n":
        assert again.encode(probe) == [0, 1, 2, 3, 4]
    else:
        with pytest.raises(ModalityInputError):
            again.encode(probe)


def test_default_registry_modality_is_strict(registry):
    assert registry.modality("dna").options() == {"iupac": "error"}


@pytest.mark.parametrize("mode", ["N", "x", "", "ignore"])
def test_invalid_iupac_mode(mode, registry):
    with pytest.raises(UnidiffError, match=re.escape(f"iupac must be one of error, n; got {mode!r}")):
        DnaModality(iupac=mode)
    with pytest.raises(UnidiffError, match="iupac must be one of"):
        registry.modality("dna", iupac=mode)


def test_write_is_fasta_with_sample_headers(tmp_path):
    path = tmp_path / "out.fa"
    DnaModality().write(["ACGT", "A" * 61], path)
    assert path.read_text() == ">sample_0 length=4\nACGT\n>sample_1 length=61\n" + "A" * 60 + "\nA\n"


# --- reverse complement ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq, rc", [("", ""), ("A", "T"), ("ACGT", "ACGT"), ("AAAC", "GTTT"), ("GATTACA", "TGTAATC"),
                                     ("ACGTN", "NACGT"), ("acgtn", "nacgt"), ("AcGt", "aCgT"), ("NNAG", "CTNN")])
def test_reverse_complement_examples(seq, rc):
    assert reverse_complement(seq) == rc


def test_reverse_complement_is_an_involution_and_preserves_composition():
    rng = random.Random(0)
    for n in (0, 1, 2, 7, 60, 301):
        seq = "".join(rng.choice(ALPHABET + ALPHABET.lower()) for _ in range(n))
        rc = reverse_complement(seq)
        assert len(rc) == n and reverse_complement(rc) == seq
        for a, b in ("AT", "CG", "NN"):
            assert seq.count(a) == rc.count(b) and seq.count(b) == rc.count(a)


# --- the command line on a freshly trained class-conditioned DNA model --------------------------------------------


@pytest.fixture(scope="module")
def dna_model(tmp_path_factory):
    from unidiff.training.config import Config, DataConfig, TrainConfig
    from unidiff.models.transformer import ModelConfig
    from unidiff.training.train import train

    out = tmp_path_factory.mktemp("dna-run")
    cfg = Config(ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=64),
                 DataConfig(dataset="genomes-labelled", seq_len=64, cond_dropout=0.2),
                 TrainConfig(steps=2, batch_size=4, warmup=1, eval_every=2, eval_windows=2, save_every=2,
                             device="cpu", precision="fp32", progress=False, out_dir=str(out)))
    result = train(cfg)
    assert result.step == 2
    return out / "model"


def test_trained_dna_model_config(dna_model):
    config = json.loads((dna_model / "config.json").read_text())
    assert config["modality"] == "dna" and config["condition_modality"] == "text"
    assert config["layout"] == {"sizes": {"dna": 5, "text": 256}, "size": 267}
    assert config["modalities"]["dna"]["options"] == {"iupac": "error"}
    assert list(config["figures"]["eval_bits_per_token"]) == ["dna"]


def test_generate_with_condition_writes_fasta(dna_model, tmp_path, capsys):
    out = tmp_path / "s.fa"
    code = main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", "20", "--num", "2",
                 "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0 and stdout == ""
    assert f"wrote {out}" in err and "NFE 20 per sample" in err
    recs = read_fasta(out)
    assert [h for h, _ in recs] == ["sample_0 length=20", "sample_1 length=20"]
    for _, seq in recs:
        assert len(seq) == 20 and set(seq) <= set("ACGTN")


def test_generate_without_condition_prints_dna(dna_model, capsys):
    code = main(["generate", "--model", str(dna_model), "--length", "12", "--seed", "4"])
    stdout, _ = capsys.readouterr()
    assert code == 0
    assert re.fullmatch(r"[ACGTN]{12}\n", stdout)


def test_generate_too_long_is_a_one_line_error(dna_model, capsys):
    code = main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", "100"])
    stdout, err = capsys.readouterr()
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith("unidiff: error: sample 0 needs ")
    assert "the model's context is 64" in err


def test_generate_longest_that_fits(dna_model, capsys):
    # [BOS_text p l a n t EOS_text BOS_dna ... EOS_dna]: 9 positions besides the generated ones
    assert main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", "55"]) == 0
    assert re.fullmatch(r"[ACGTN]{55}\n", capsys.readouterr()[0])
    assert main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", "56"]) == 2
    err = capsys.readouterr()[1]
    assert "sample 0 needs 65 positions (9 given + 56 to generate)" in err and "at most 55 tokens" in err


def test_advised_length_fits(dna_model, capsys):
    main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", "100"])
    advised = int(re.search(r"ask for at most (\d+) tokens", capsys.readouterr()[1]).group(1))
    assert main(["generate", "--model", str(dna_model), "--condition", "plant", "--length", str(advised)]) == 0
