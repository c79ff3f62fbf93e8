"""The shipped genome corpus (`unidiff_dna.corpus`): splits by organism, classes, both strands for training, and the
GenBank/EMBL/FASTA parsers and de-duplication it is built with."""

from __future__ import annotations

import random
import re

import pytest

from unidiff.data import Document
from unidiff.errors import UnidiffError
from unidiff.plugins import Registry
from unidiff_dna import reverse_complement
from unidiff_dna import corpus


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()

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
    for name, fn, extra in (("genomes", corpus.genomes, {}),
                            ("genomes-labelled", corpus.genomes_labelled, {"conditions": corpus.CLASSES})):
        builder, meta = registry.dataset(name)
        assert builder is fn and meta == {"modality": "dna", **extra}


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
