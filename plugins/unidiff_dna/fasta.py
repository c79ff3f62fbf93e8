"""FASTA and FASTQ reading and writing (plain or gzip-compressed, chosen by a ``.gz`` suffix).

A record is a ``(header, sequence)`` pair for FASTA (the header without its ``>``) and a ``(header, sequence,
quality)`` triple for FASTQ. Sequences are returned as written (line breaks and surrounding spaces removed); encode
them with `unidiff_dna.DnaModality` to validate the alphabet. Writers replace the file atomically, so an interrupted
write never leaves half a file behind.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterable, Sequence

from unidiff.errors import UnidiffError

LINE_WIDTH = 60


def _open_text(path: Path, mode: str):
    path = Path(path)
    if path.suffix == ".gz":
        return gzip.open(path, mode + "t", encoding="ascii", newline="\n")
    return open(path, mode, encoding="ascii", newline="\n")


def _read_lines(path: Path) -> list[str]:
    try:
        with _open_text(path, "r") as fh:
            return fh.read().splitlines()
    except FileNotFoundError:
        raise UnidiffError(f"no such file: {path}") from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise UnidiffError(f"cannot read {path} as {'gzip ' if str(path).endswith('.gz') else ''}ASCII text "
                           f"({type(e).__name__}): is it a FASTA/FASTQ file?") from None


def read_fasta(path: str | Path) -> list[tuple[str, str]]:
    """All records of a FASTA file as (header, sequence) pairs, in file order."""
    records: list[tuple[str, list[str]]] = []
    for n, line in enumerate(_read_lines(Path(path)), 1):
        line = line.strip()
        if line.startswith(">"):
            records.append((line[1:].strip(), []))
        elif line and not line.startswith(";"):  # ';' lines are old-style FASTA comments
            if not records:
                raise UnidiffError(f"{path} line {n}: sequence before the first '>' header: is it a FASTA file?")
            records[-1][1].append("".join(line.split()))
    if not records:
        raise UnidiffError(f"{path} holds no FASTA records (no line starts with '>')")
    return [(h, "".join(parts)) for h, parts in records]


def read_fastq(path: str | Path) -> list[tuple[str, str, str]]:
    """All records of a FASTQ file as (header, sequence, quality) triples (four-line records)."""
    lines = [ln for ln in _read_lines(Path(path)) if ln.strip()]
    if len(lines) % 4:
        raise UnidiffError(f"{path} has {len(lines)} non-empty lines, not a multiple of 4: a FASTQ record is four "
                           "lines (@header, sequence, +, quality); is the file truncated?")
    out = []
    for i in range(0, len(lines), 4):
        head, seq, plus, qual = (ln.strip() for ln in lines[i:i + 4])
        if not head.startswith("@") or not plus.startswith("+"):
            raise UnidiffError(f"{path} line {i + 1}: expected a FASTQ record (@header, sequence, +, quality)")
        if len(qual) != len(seq):
            raise UnidiffError(f"{path} line {i + 4}: quality has {len(qual)} characters for {len(seq)} bases")
        out.append((head[1:], seq, qual))
    return out


def read_sequences(path: str | Path) -> list[tuple[str, str]]:
    """(header, sequence) pairs from a FASTA or FASTQ file (FASTQ when its first character is '@')."""
    lines = _read_lines(Path(path))
    first = next((ln for ln in lines if ln.strip()), "")
    if first.startswith("@"):
        return [(h, s) for h, s, _ in read_fastq(path)]
    return read_fasta(path)


def _atomic_write(path: Path, lines: Iterable[str]) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        opener = gzip.open(tmp, "wt", encoding="ascii") if path.suffix == ".gz" else open(tmp, "w", encoding="ascii")
        with opener as fh:
            fh.writelines(lines)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_fasta(records: Sequence[tuple[str, str]], path: str | Path, width: int = LINE_WIDTH) -> None:
    """Write (header, sequence) records as FASTA with ``width`` bases per line."""
    def lines():
        for header, seq in records:
            yield f">{header}\n"
            for i in range(0, len(seq), width):
                yield seq[i:i + width] + "\n"
    _atomic_write(Path(path), lines())


def write_fastq(records: Sequence[tuple[str, str, str]], path: str | Path) -> None:
    """Write (header, sequence, quality) records as four-line FASTQ."""
    records = list(records)  # checked, then written: an iterator must not be used up by the check
    for header, seq, qual in records:
        if len(seq) != len(qual):
            raise UnidiffError(f"FASTQ record {header!r}: quality has {len(qual)} characters for {len(seq)} bases")
    _atomic_write(Path(path), (f"@{h}\n{s}\n+\n{q}\n" for h, s, q in records))
