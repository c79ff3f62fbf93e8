"""The DNA plugin: the nucleotide modality, reverse complements, FASTA/FASTQ files, the shipped genome corpus and its
parsers, and the ``unidiff generate`` command on a freshly trained class-conditioned DNA model.

(The plugin's metrics and Markov baselines are tested in test_dna_metrics.py.)
"""

from __future__ import annotations

import gzip
import json
import random
import re

import pytest

from unidiff.cli import main
from unidiff.data import Document
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.plugins import Registry
from unidiff_dna import ALPHABET, DnaModality, reverse_complement
from unidiff_dna import corpus
from unidiff_dna.fasta import read_fasta, read_fastq, read_sequences, write_fasta, write_fastq


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


# --- FASTA / FASTQ -----------------------------------------------------------------------------------------------


RECORDS = [("chr1 some description with  spaces", "ACGT" * 32 + "AC"),  # 130 bases: lines of 60, 60, 10
           ("short", "N"),
           ("exactly60", "G" * 60),
           ("x|y=z", "acgtnACGTN")]


def test_fasta_round_trip_and_layout(tmp_path):
    path = tmp_path / "recs.fa"
    write_fasta(RECORDS, path)
    lines = path.read_text().split("\n")
    assert lines[:5] == [">chr1 some description with  spaces", RECORDS[0][1][:60], RECORDS[0][1][60:120],
                         RECORDS[0][1][120:], ">short"]
    assert [len(ln) for ln in lines[1:4]] == [60, 60, 10]
    assert path.read_text() == (f">{RECORDS[0][0]}\n{RECORDS[0][1][:60]}\n{RECORDS[0][1][60:120]}\n"
                                f"{RECORDS[0][1][120:]}\n>short\nN\n>exactly60\n{'G' * 60}\n>x|y=z\nacgtnACGTN\n")
    assert read_fasta(path) == RECORDS
    assert read_sequences(path) == RECORDS


def test_fasta_custom_width(tmp_path):
    path = tmp_path / "w.fa"
    write_fasta([("h", "ACGTACG")], path, width=3)
    assert path.read_text() == ">h\nACG\nTAC\nG\n"
    assert read_fasta(path) == [("h", "ACGTACG")]


def test_read_fasta_tolerates_comments_blank_lines_crlf_and_spaces(tmp_path):
    path = tmp_path / "messy.fa"
    path.write_bytes(b";old comment\n\n>  first rec  \r\nAC GT\r\n\r\n  TTA  \n>second\n>third\nG\n")
    assert read_fasta(path) == [("first rec", "ACGTTTA"), ("second", ""), ("third", "G")]


def test_gzip_round_trip(tmp_path):
    path = tmp_path / "recs.fa.gz"
    write_fasta(RECORDS, path)
    raw = path.read_bytes()
    assert raw[:2] == b"\x1f\x8b"  # really gzip
    assert gzip.decompress(raw).decode().startswith(">chr1 some description")
    assert read_fasta(path) == RECORDS
    fq = tmp_path / "reads.fq.gz"
    write_fastq([("r1", "ACGT", "IIII")], fq)
    assert fq.read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress(fq.read_bytes()) == b"@r1\nACGT\n+\nIIII\n"
    assert read_fastq(fq) == [("r1", "ACGT", "IIII")]
    assert read_sequences(fq) == [("r1", "ACGT")]


FASTQ = [("read1 lane=3", "ACGTN", "II#I!"), ("read2", "GG", "@@"), ("read3", "T", "+")]


def test_fastq_round_trip(tmp_path):
    path = tmp_path / "reads.fastq"
    write_fastq(FASTQ, path)
    assert path.read_text() == "@read1 lane=3\nACGTN\n+\nII#I!\n@read2\nGG\n+\n@@\n@read3\nT\n+\n+\n"
    assert read_fastq(path) == FASTQ


def test_read_sequences_detects_the_format(tmp_path):
    fq, fa = tmp_path / "a.txt", tmp_path / "b.txt"  # suffixes say nothing: the first character decides
    write_fastq(FASTQ, fq)
    write_fasta([(h, s) for h, s, _ in FASTQ], fa)
    assert read_sequences(fq) == [(h, s) for h, s, _ in FASTQ]
    assert read_sequences(fa) == [(h, s) for h, s, _ in FASTQ]
    lead = tmp_path / "lead.fq"  # blank lines before the first record do not hide the format
    lead.write_text("\n\n@r\nAC\n+\nII\n")
    assert read_sequences(lead) == [("r", "AC")]


def test_sequence_before_header(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text("\nACGT\n>h\nAC\n")
    with pytest.raises(UnidiffError, match=re.escape(f"{path} line 2: sequence before the first '>' header")):
        read_fasta(path)
    with pytest.raises(UnidiffError, match="sequence before the first '>' header"):
        read_sequences(path)


def test_fasta_without_records(tmp_path):
    path = tmp_path / "empty.fa"
    path.write_text(";just a comment\n\n")
    with pytest.raises(UnidiffError, match=re.escape(f"{path} holds no FASTA records")):
        read_fasta(path)


def test_fastq_with_five_lines(tmp_path):
    path = tmp_path / "bad.fq"
    path.write_text("@r1\nACGT\n+\nIIII\n@r2\n")
    with pytest.raises(UnidiffError, match=re.escape(f"{path} has 5 non-empty lines, not a multiple of 4")):
        read_fastq(path)
    with pytest.raises(UnidiffError, match="not a multiple of 4"):
        read_sequences(path)


def test_fastq_quality_length_mismatch(tmp_path):
    path = tmp_path / "bad.fq"
    path.write_text("@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n")
    with pytest.raises(UnidiffError, match=re.escape(f"{path} line 8: quality has 3 characters for 4 bases")):
        read_fastq(path)
    with pytest.raises(UnidiffError, match=re.escape("FASTQ record 'r2': quality has 3 characters for 4 bases")):
        write_fastq([("r1", "AC", "II"), ("r2", "ACGT", "III")], tmp_path / "out.fq")
    assert not (tmp_path / "out.fq").exists()


def test_fastq_bad_record_markers(tmp_path):
    path = tmp_path / "bad.fq"
    path.write_text("@r1\nACGT\n+\nIIII\nr2\nACGT\n+\nIIII\n")
    with pytest.raises(UnidiffError, match=re.escape(f"{path} line 5: expected a FASTQ record")):
        read_fastq(path)


def test_missing_and_unreadable_files(tmp_path):
    missing = tmp_path / "nope.fa"
    for reader in (read_fasta, read_fastq, read_sequences):
        with pytest.raises(UnidiffError, match=re.escape(f"no such file: {missing}")):
            reader(missing)
    fake_gz = tmp_path / "plain.fa.gz"
    fake_gz.write_text(">h\nACGT\n")  # not gzip-compressed
    with pytest.raises(UnidiffError, match=re.escape(f"cannot read {fake_gz} as gzip ASCII text")):
        read_fasta(fake_gz)
    binary = tmp_path / "bin.fa"
    binary.write_bytes(b">h\n\xff\xfe\n")
    with pytest.raises(UnidiffError, match=re.escape(f"cannot read {binary} as ASCII text")):
        read_fasta(binary)


def test_write_leaves_no_temp_file(tmp_path):
    write_fasta(RECORDS, tmp_path / "a.fa")
    write_fasta(RECORDS, tmp_path / "b.fa.gz")
    write_fastq(FASTQ, tmp_path / "c.fq")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "b.fa.gz", "c.fq"]
    write_fasta(RECORDS[:1], tmp_path / "a.fa")  # replacing an existing file
    assert read_fasta(tmp_path / "a.fa") == RECORDS[:1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "b.fa.gz", "c.fq"]


class Boom(Exception):
    pass


def failing_records():
    yield ("first", "ACGT" * 100)
    yield ("second", "GG")
    raise Boom("disk pulled out")


@pytest.mark.parametrize("name", ["target.fa", "target.fa.gz"])
def test_failed_write_keeps_the_old_file(tmp_path, name):
    target = tmp_path / name
    write_fasta([("old", "TTTT")], target)
    before = target.read_bytes()
    with pytest.raises(Boom):
        write_fasta(failing_records(), target)
    assert target.read_bytes() == before
    assert read_fasta(target) == [("old", "TTTT")]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temp file left behind


def test_failed_write_of_a_new_file_leaves_nothing(tmp_path):
    with pytest.raises(Boom):
        write_fasta(failing_records(), tmp_path / "new.fa")
    assert list(tmp_path.iterdir()) == []


# --- the shipped corpus ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def records():
    return corpus.load()


def test_corpus_is_shipped_and_has_both_splits_and_all_classes(records):
    assert corpus.CORPUS.is_file() and corpus.CORPUS.suffix == ".gz"
    assert {r.split for r in records} == set(corpus.SPLITS)
    assert {r.cls for r in records} == set(corpus.CLASSES)
    assert all(r.cls in corpus.CLASSES for r in records)
    assert all(len(r.seq) >= corpus.MIN_LENGTH for r in records)
    assert all(set(r.seq) <= set("ACGTN") for r in records)
    assert len({(r.source, r.id) for r in records}) == len(records)  # ids are unique within a source file


def test_held_out_split_is_whole_organisms(records):
    for r in records:
        assert (r.split == "valid") == r.organism.startswith(corpus.HELD_OUT), (r.id, r.organism)


def test_train_and_valid_are_disjoint(records):
    train = [r for r in records if r.split == "train"]
    valid = [r for r in records if r.split == "valid"]
    assert train and valid
    assert not {r.id for r in train} & {r.id for r in valid}
    train_seqs = [r.seq for r in train]
    for v in valid:
        rc = reverse_complement(v.seq)
        for t in train_seqs:
            assert v.seq not in t and rc not in t, v.id
            assert t not in v.seq and reverse_complement(t) not in v.seq, v.id


def test_held_out_fraction_of_each_class(records):
    for cls in corpus.CLASSES:
        train = sum(len(r.seq) for r in records if r.cls == cls and r.split == "train")
        valid = sum(len(r.seq) for r in records if r.cls == cls and r.split == "valid")
        assert 0.05 <= valid / (train + valid) <= 0.20, cls


def test_genomes_train_has_both_strands_valid_only_forward(records):
    train = [r for r in records if r.split == "train"]
    valid = [r for r in records if r.split == "valid"]
    docs = corpus.genomes("train")
    assert len(docs) == 2 * len(train)
    assert docs == [r.seq for r in train] + [reverse_complement(r.seq) for r in train]
    assert corpus.genomes("valid") == [r.seq for r in valid]


def test_genomes_labelled(records):
    for split in corpus.SPLITS:
        docs = corpus.genomes_labelled(split)
        rs = [r for r in records if r.split == split]
        classes = [r.cls for r in rs] * (2 if split == "train" else 1)
        assert all(isinstance(d, Document) for d in docs)
        assert [d.content for d in docs] == corpus.genomes(split)
        assert [d.condition for d in docs] == classes
        assert {d.condition_modality for d in docs} == {"text"}


@pytest.mark.parametrize("dataset", [corpus.genomes, corpus.genomes_labelled])
def test_unknown_split(dataset):
    name = "genomes" if dataset is corpus.genomes else "genomes-labelled"
    with pytest.raises(UnidiffError, match=re.escape(f"unknown split 'test' of dataset {name!r}; use one of train, "
                                                     "valid")):
        dataset("test")


def test_datasets_are_registered(registry):
    for name, fn in (("genomes", corpus.genomes), ("genomes-labelled", corpus.genomes_labelled)):
        builder, meta = registry.dataset(name)
        assert builder is fn and meta == {"modality": "dna"}


def test_load_missing_corpus(tmp_path):
    with pytest.raises(UnidiffError, match=re.escape(f"the DNA corpus {tmp_path / 'x.fa.gz'} is missing")):
        corpus.load(tmp_path / "x.fa.gz")


# --- cleaning and parsing ----------------------------------------------------------------------------------------


def test_clean_examples():
    assert corpus.clean("acgt") == "ACGT"
    assert corpus.clean("  1 acgtacgtac gtacgt--..**\n 21 ACGT") == "ACGTACGTACGTACGTACGT"  # gaps, digits removed
    assert corpus.clean("ACGT" * 10 + "R") == "ACGT" * 10 + "N"  # IUPAC code read as N
    assert corpus.clean("ACGT" * 10 + "ry") == "ACGT" * 10 + "NN"
    assert corpus.clean("ACGT" * 5 + "X") == "ACGT" * 5 + "N"  # 20 of 21 are ACGT (95.2%)
    # the 95% boundary: 19 of 20 is kept, 18 of 20 is not
    assert corpus.clean("A" * 19 + "R") == "A" * 19 + "N"
    assert corpus.clean("A" * 18 + "RR") is None
    assert corpus.clean("MKVLAAGIVGLLLAQWERTYHHKLPQ") is None  # a protein
    assert corpus.clean("This is English prose, not DNA.") is None
    assert corpus.clean("") is None
    assert corpus.clean(" 1 --- ..\n") is None  # nothing left


GENBANK = """\
LOCUS       TESTPLANT1               250 bp    DNA     linear   PLN 01-JAN-2000
DEFINITION  Arabidopsis thaliana test gene, partial sequence.
ACCESSION   TESTPLANT1
VERSION     TESTPLANT1.1
SOURCE      Arabidopsis thaliana (thale cress)
  ORGANISM  Arabidopsis thaliana
            Eukaryota; Viridiplantae; Streptophyta; Embryophyta; Tracheophyta;
            Spermatophyta; Magnoliopsida; eudicotyledons; Brassicales;
            Brassicaceae; Camelineae; Arabidopsis.
FEATURES             Location/Qualifiers
     source          1..250
                     /organism="Arabidopsis thaliana"
ORIGIN      
{origin}
//
"""


def origin_lines(seq: str) -> str:
    """GenBank's ORIGIN block: numbered lines of six groups of ten bases."""
    out = []
    for i in range(0, len(seq), 60):
        groups = " ".join(seq[j:j + 10] for j in range(i, min(i + 60, len(seq)), 10))
        out.append(f"{i + 1:>9} {groups}")
    return "\n".join(out)


_rng = random.Random(1)
SEQ = "".join(_rng.choice("acgt") for _ in range(250))


def test_parse_genbank_plant_record():
    text = GENBANK.format(origin=origin_lines(SEQ))
    assert "        1 " + SEQ[:10] in text and "      241 " + SEQ[240:] in text
    recs = corpus.parse_genbank(text, "Tests/GenBank/test.gb")
    assert len(recs) == 1
    r = recs[0]
    assert (r.id, r.organism, r.cls, r.source, r.split) == ("TESTPLANT1", "Arabidopsis thaliana", "plant",
                                                            "Tests/GenBank/test.gb", "train")
    assert r.seq == SEQ.upper() and len(r.seq) == 250


def test_parse_genbank_several_records_and_skips():
    plant = GENBANK.format(origin=origin_lines(SEQ))
    animal = plant.replace("TESTPLANT1", "TESTANIMAL").replace("Viridiplantae; Streptophyta", "Metazoa; Chordata")
    fungus = plant.replace("TESTPLANT1", "TESTFUNGUS").replace("Viridiplantae; Streptophyta", "Fungi; Dikarya")
    protein = plant.replace("TESTPLANT1               250 bp    DNA", "TESTPROT                  83 aa")
    recs = corpus.parse_genbank(plant + fungus + protein + animal, "x.gb")
    assert [(r.id, r.cls) for r in recs] == [("TESTPLANT1", "plant"), ("TESTANIMAL", "animal")]
    assert all(r.seq == SEQ.upper() for r in recs)


EMBL = """\
ID   TESTBACT; SV 1; linear; genomic DNA; STD; PRO; 250 BP.
XX
AC   TESTBACT;
XX
DE   Escherichia coli test region,
DE   complete sequence.
XX
OS   Escherichia coli
OC   Bacteria; Pseudomonadota; Gammaproteobacteria; Enterobacterales;
OC   Enterobacteriaceae; Escherichia.
XX
FH   Key             Location/Qualifiers
FT   source          1..250
XX
SQ   Sequence 250 BP; 60 A; 62 C; 64 G; 64 T; 0 other;
{sq}
//
"""


def sq_lines(seq: str) -> str:
    """EMBL's sequence block: six groups of ten bases, then the running count."""
    out = []
    for i in range(0, len(seq), 60):
        groups = " ".join(seq[j:j + 10] for j in range(i, min(i + 60, len(seq)), 10))
        out.append(f"     {groups:<66}{min(i + 60, len(seq)):>10}")
    return "\n".join(out)


def test_parse_embl_microbe_record():
    assert len(set(SEQ)) == 4
    recs = corpus.parse_embl(EMBL.format(sq=sq_lines(SEQ)), "Tests/EMBL/test.embl")
    assert len(recs) == 1
    r = recs[0]
    assert (r.id, r.organism, r.cls, r.source) == ("TESTBACT", "Escherichia coli", "microbe", "Tests/EMBL/test.embl")
    assert r.seq == SEQ.upper()


def test_parse_embl_unknown_lineage_is_dropped():
    text = EMBL.format(sq=sq_lines(SEQ)).replace("Bacteria; Pseudomonadota; Gammaproteobacteria; Enterobacterales;",
                                                 "Eukaryota; Fungi; Dikarya; Ascomycota;")
    text = text.replace("Enterobacteriaceae; Escherichia.", "Saccharomycetaceae; Saccharomyces.")
    text = text.replace("OS   Escherichia coli", "OS   Saccharomyces cerevisiae")
    text = text.replace("Escherichia coli test", "yeast")
    assert "acteria" not in text
    assert corpus.parse_embl(text, "x.embl") == []


@pytest.mark.parametrize("lineage, organism, description, cls", [
    ("Eukaryota; Viridiplantae; Streptophyta", "Zea mays", "", "plant"),
    ("Eukaryota; Metazoa; Chordata", "Homo sapiens", "", "animal"),
    ("Archaea; Euryarchaeota", "Methanococcus", "", "microbe"),
    ("Viruses; Riboviria", "HIV-1", "", "microbe"),
    ("", "Enterobacteria phage lambda", "", "microbe"),
    ("other sequences; artificial sequences", "synthetic construct", "Cloning vector pUC19", "microbe"),
    ("Eukaryota; Fungi; Dikarya", "Saccharomyces cerevisiae", "", None),
    ("", "", "", None),
])
def test_class_of(lineage, organism, description, cls):
    assert corpus.class_of(lineage, organism, description) == cls


def test_deduplicate_and_splits():
    R = corpus.Record
    rng = random.Random(2)
    long = "".join(rng.choice("ACGT") for _ in range(400))
    other = "".join(rng.choice("ACGT") for _ in range(300))
    recs = [R("a", "Homo sapiens", "animal", "s1", long),
            R("b", "Homo sapiens", "animal", "s2", long),  # exact duplicate
            R("c", "Pan troglodytes", "animal", "s3", reverse_complement(long)),  # the other strand
            R("d", "Homo sapiens", "animal", "s4", long[50:300]),  # contained
            R("e", "Homo sapiens", "animal", "s5", reverse_complement(long[10:250])),  # contained, other strand
            R("f", "Opuntia ficus-indica", "plant", "s6", other),
            R("g", "Homo sapiens", "animal", "s7", other[:199])]  # shorter than MIN_LENGTH
    kept = corpus.assign_splits(corpus.deduplicate(recs))
    assert [(r.id, r.split) for r in kept] == [("a", "train"), ("f", "valid")]  # Opuntia is held out


# --- the command line on a freshly trained class-conditioned DNA model --------------------------------------------


@pytest.fixture(scope="module")
def dna_model(tmp_path_factory):
    from unidiff.config import Config, DataConfig, TrainConfig
    from unidiff.model import ModelConfig
    from unidiff.train import train

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


def test_write_fastq_accepts_an_iterator(tmp_path):
    path = tmp_path / "reads.fq"
    write_fastq([("old", "AC", "II")], path)
    write_fastq(iter(FASTQ), path)
    assert read_fastq(path) == FASTQ
