"""The genome corpus: real DNA that the Biopython 1.88 source distribution carries in its tests and examples.

Provenance: biopython-1.88.tar.gz from PyPI (``pip download --no-binary :all: --no-deps biopython==1.88``), files
under ``Tests/`` and ``Doc/examples/``: GenBank and EMBL records (the sequence and the organism's lineage) and
FASTA files whose source organism the table `FASTA_SOURCES` states. Biopython is distributed under the Biopython
License Agreement / BSD 3-Clause licence; the sequences themselves are public records of GenBank/ENA/RefSeq
(NCBI, EMBL-EBI), UCSC genome browser extracts and Ensembl, which place no restrictions on their use.

Building (`build`): every record is read, upper-cased, gap characters removed and IUPAC ambiguity codes read as N;
records shorter than ``MIN_LENGTH`` or not DNA are dropped; exact duplicates (on either strand) and records contained
in another record are dropped, so no sequence is counted twice. Each record gets a class from its lineage — plant
(Viridiplantae), animal (Metazoa) or microbe (Bacteria, Archaea, viruses and their plasmids and vectors) — and a
split: whole organisms are held out (`HELD_OUT`), so held-out figures measure unseen organisms or genome regions,
never unseen windows of a training record. The result, ``data/biopython-dna.fa.gz`` in this package, is shipped
(about 250 kB), so training and evaluation need no download; ``python -m unidiff_dna.corpus --sdist PATH`` rebuilds
it and prints its manifest.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from unidiff.data import Document
from unidiff.errors import UnidiffError

CORPUS = Path(__file__).parent / "data" / "biopython-dna.fa.gz"
SDIST = "biopython-1.88.tar.gz"
SPLITS = ("train", "valid")
CLASSES = ("animal", "microbe", "plant")
MIN_LENGTH = 200

# FASTA files carry no lineage: their source, from the files' headers and Biopython's test documentation.
FASTA_SOURCES = {
    "Tests/Blat/hg38.fa": ("Homo sapiens", "animal"),
    "Tests/Blat/panTro5.fa": ("Pan troglodytes", "animal"),
    "Tests/Blat/panTro6.fa": ("Pan troglodytes", "animal"),
    "Tests/Blat/balAcu1.fa": ("Balaenoptera acutorostrata", "animal"),
    "Tests/Blat/dna.fa": ("Homo sapiens", "animal"),
    "Tests/codonalign/egfr_nucl.fa": ("EGFR orthologues", "animal"),
    "Tests/codonalign/nucl3.fa": ("Homo sapiens", "animal"),
    "Tests/codonalign/nucl4.fa": ("Homo sapiens", "animal"),
    "Tests/codonalign/drosophila.fasta": ("Drosophila Adh", "animal"),
    "Tests/Fasta/nucleotide_lib.fa": ("mammalian mRNAs", "animal"),
    "Tests/MAF/cnksr3.fa": ("Mus musculus", "animal"),
    "Tests/CodonUsage/HighlyExpressedGenes.txt": ("Escherichia coli", "microbe"),
    "Tests/GFF/NC_001802.fna": ("Human immunodeficiency virus 1", "microbe"),
    "Doc/examples/opuntia.fasta": ("Opuntia", "plant"),
    "Tests/Fasta/wisteria.nu": ("Wisteria", "plant"),
    "Tests/Fasta/elderberry.nu": ("Sambucus", "plant"),
}
# Held out for evaluation: whole organisms (matched against the start of the organism name), about a tenth of
# each class.
HELD_OUT = ("Balaenoptera", "Drosophila Adh", "Phragmipedium", "Cypripedium", "Opuntia", "Brassica",
            "Human immunodeficiency virus", "coliphage phiX174", "Streptomyces coelicolor")


@dataclass
class Record:
    id: str
    organism: str
    cls: str
    source: str  # path inside the sdist
    seq: str
    split: str = "train"

    def header(self) -> str:
        return f"{self.id} class={self.cls} split={self.split} source={self.source} organism={self.organism}"


_NOT_DNA = re.compile(r"[^ACGTN]")
_GAPS = re.compile(r"[-.*\s\d]")


def clean(seq: str) -> str | None:
    """Upper-case, gaps and digits removed, IUPAC codes as N; None unless at least 95% of it is A/C/G/T."""
    seq = _GAPS.sub("", seq.upper())
    if not seq or sum(seq.count(c) for c in "ACGT") < 0.95 * len(seq):
        return None
    return _NOT_DNA.sub("N", seq)


def class_of(lineage: str, organism: str, description: str) -> str | None:
    """plant / animal / microbe from a GenBank or EMBL lineage (None: unknown or not one of these)."""
    text = f"{lineage} {organism}"
    if "Viridiplantae" in text:
        return "plant"
    if "Metazoa" in text:
        return "animal"
    if re.search(r"Bacteria|Archaea|Viruses|phage", text, re.I):
        return "microbe"
    if re.search(r"plasmid|vector", f"{organism} {description}", re.I):
        return "microbe"  # synthetic constructs: bacterial plasmids and cloning vectors
    return None


def parse_genbank(text: str, source: str) -> list[Record]:
    out = []
    for chunk in re.split(r"^//\s*$", text, flags=re.M):
        if "LOCUS" not in chunk or "\nORIGIN" not in chunk:
            continue
        locus = re.search(r"^LOCUS\s+(\S+)(.*)$", chunk, re.M)
        if locus is None or re.search(r"\baa\b", locus.group(2)):
            continue  # protein record
        organism = re.search(r"^  ORGANISM[ \t]*(.*)\n((?: {12}.*\n)*)", chunk, re.M)
        org, lineage = (organism.group(1).strip(), organism.group(2)) if organism else ("", "")
        desc = re.search(r"^DEFINITION\s+(.*)$", chunk, re.M)
        seq = clean(chunk.split("\nORIGIN", 1)[1])
        cls = class_of(lineage, org, desc.group(1) if desc else "")
        if seq and cls:
            out.append(Record(locus.group(1), org or "synthetic construct", cls, source, seq))
    return out


def parse_embl(text: str, source: str) -> list[Record]:
    out = []
    for chunk in re.split(r"^//\s*$", text, flags=re.M):
        ident = re.search(r"^ID\s+([^;\s]+)", chunk, re.M)
        if ident is None or "\nSQ " not in chunk:
            continue
        org = " ".join(re.findall(r"^OS\s+(.*)$", chunk, re.M)).strip()
        lineage = " ".join(re.findall(r"^OC\s+(.*)$", chunk, re.M))
        desc = " ".join(re.findall(r"^DE\s+(.*)$", chunk, re.M))
        seq = clean("".join(chunk.split("\nSQ ", 1)[1].splitlines()[1:]))
        cls = class_of(lineage, org, desc)
        if seq and cls:
            out.append(Record(ident.group(1), org or "synthetic construct", cls, source, seq))
    return out


def parse_fasta(text: str, source: str) -> list[Record]:
    organism, cls = FASTA_SOURCES[source]
    out = []
    for i, chunk in enumerate(text.split(">")[1:]):
        head, _, body = chunk.partition("\n")
        seq = clean(body)
        if seq:
            ident = (head.split() or [f"record{i}"])[0]
            out.append(Record(ident, organism, cls, source, seq))
    return out


def read_sdist(sdist: Path) -> list[Record]:
    """Every usable record of the sdist, in path order."""
    records = []
    try:
        tar = tarfile.open(sdist)
    except FileNotFoundError:
        raise UnidiffError(f"no such file: {sdist} (give the path of {SDIST} to --sdist)") from None
    except OSError as e:
        raise UnidiffError(f"cannot read {sdist}: {e.strerror}") from None
    except tarfile.TarError:
        raise UnidiffError(f"{sdist} is not a tar archive: --sdist takes {SDIST} from PyPI") from None
    with tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)
        for m in members:
            rel = m.name.split("/", 1)[1] if "/" in m.name else m.name
            if not rel.startswith(("Tests/", "Doc/examples/")):
                continue
            text = tar.extractfile(m).read().decode("latin-1")
            if rel in FASTA_SOURCES:
                records += parse_fasta(text, rel)
            elif text.startswith("LOCUS"):
                records += parse_genbank(text, rel)
            elif text.startswith("ID ") and "\nSQ " in text:
                records += parse_embl(text, rel)
    return records


def deduplicate(records: list[Record]) -> list[Record]:
    """Drop short records, exact duplicates (either strand) and records contained in a longer kept record."""
    from unidiff_dna.metrics import reverse_complement

    kept: list[Record] = []
    seen: set[str] = set()
    for r in sorted((r for r in records if len(r.seq) >= MIN_LENGTH), key=lambda r: (-len(r.seq), r.source, r.id)):
        if r.seq in seen:
            continue
        rc = reverse_complement(r.seq)
        if any(r.seq in k.seq or rc in k.seq for k in kept):
            continue
        seen.update((r.seq, rc))
        kept.append(r)
    return sorted(kept, key=lambda r: (r.source, r.id))


def assign_splits(records: list[Record]) -> list[Record]:
    for r in records:
        r.split = "valid" if r.organism.startswith(HELD_OUT) else "train"
    return records


def build(sdist: Path, out: Path = CORPUS) -> dict:
    """Build the corpus file from the sdist; returns its manifest."""
    records = assign_splits(deduplicate(read_sdist(sdist)))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as fh:  # mtime 0: the same input gives the same bytes
        for r in records:
            fh.write(f">{r.header()}\n".encode())
            for i in range(0, len(r.seq), 60):
                fh.write((r.seq[i:i + 60] + "\n").encode())
    tmp.replace(out)
    return manifest(records, out)


def manifest(records: list[Record], path: Path) -> dict:
    table: dict = {"source": f"{SDIST} (PyPI), Tests/ and Doc/examples/", "held_out": list(HELD_OUT),
                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    for split in SPLITS:
        rs = [r for r in records if r.split == split]
        table[split] = {"records": len(rs), "bases": sum(len(r.seq) for r in rs),
                        "by_class": {c: sum(len(r.seq) for r in rs if r.cls == c) for c in CLASSES}}
    return table


def load(path: Path = CORPUS) -> list[Record]:
    """The shipped corpus as records."""
    from unidiff_dna.fasta import read_fasta

    if not path.exists():
        raise UnidiffError(f"the DNA corpus {path} is missing: reinstall unidiff, or rebuild it with "
                           f"python -m unidiff_dna.corpus --sdist {SDIST}")
    out = []
    for header, seq in read_fasta(path):
        ident, *fields = header.split(" ")
        meta = dict(f.split("=", 1) for f in fields if "=" in f)
        organism = header.split(" organism=", 1)[1] if " organism=" in header else ""
        out.append(Record(ident, organism, meta["class"], meta["source"], seq, meta["split"]))
    return out


def _records(split: str, dataset: str) -> list[Record]:
    if split not in SPLITS:
        raise UnidiffError(f"unknown split {split!r} of dataset {dataset!r}; use one of {', '.join(SPLITS)}")
    return [r for r in load() if r.split == split]


def _strands(records: list[Record], split: str) -> list[tuple[Record, str]]:
    """Each record's sequence; training records also as their reverse complement (the augmentation: a genome
    reads the same on both strands, so the model should too). Held-out records are scored as given."""
    from unidiff_dna.metrics import reverse_complement

    out = [(r, r.seq) for r in records]
    if split == "train":
        out += [(r, reverse_complement(r.seq)) for r in records]
    return out


def genomes(split: str) -> list[str]:
    """The sequences of one split ("train" or "valid"), one document per record and strand (see `_strands`)."""
    return [seq for _, seq in _strands(_records(split, "genomes"), split)]


def class_prompt(cls: str) -> str:
    """The text condition of a record of class ``cls`` in ``genomes-labelled``: the class name, e.g. ``"plant"``."""
    return cls


def genomes_labelled(split: str) -> list[Document]:
    """``genomes`` with each record's class (plant, animal, microbe) as a text condition."""
    return [Document(seq, class_prompt(r.cls), condition_modality="text")
            for r, seq in _strands(_records(split, "genomes-labelled"), split)]


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_dna.corpus") -> None:
    """Rebuild the shipped corpus from the Biopython sdist (downloaded with pip if no --sdist is given)."""
    import subprocess
    import sys
    import tempfile

    from unidiff.cli import Parser

    parser = Parser(prog=prog, description=main.__doc__)
    parser.add_argument("--sdist", help=f"path to {SDIST} (default: pip download it into a temporary folder)")
    parser.add_argument("--out", default=str(CORPUS), help=f"output file (default: {CORPUS})")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        sdist = Path(args.sdist) if args.sdist else None
        if sdist is None:
            pip = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "biopython==1.88",
                   "-d", tmp, "-q"]
            if subprocess.run(pip).returncode:
                raise UnidiffError(f"pip could not download {SDIST} (its error is above): download it yourself and "
                                   f"give its path with --sdist")
            sdist = Path(tmp) / SDIST
        print(json.dumps(build(sdist, Path(args.out)), indent=2))


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
