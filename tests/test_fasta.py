"""FASTA and FASTQ reading and writing (`unidiff_dna.fasta`): round trips, format detection, clear errors on malformed
files, and atomic writes."""

from __future__ import annotations

import gzip
import re

import pytest

from unidiff.errors import UnidiffError
from unidiff_dna.fasta import read_fasta, read_fastq, read_sequences, write_fasta, write_fastq

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


def test_write_fastq_accepts_an_iterator(tmp_path):
    path = tmp_path / "reads.fq"
    write_fastq([("old", "AC", "II")], path)
    write_fastq(iter(FASTQ), path)
    assert read_fastq(path) == FASTQ
