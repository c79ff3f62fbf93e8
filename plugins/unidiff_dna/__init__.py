"""unidiff_dna: the nucleotide modality, the Biopython genome corpus and the shipped ``dna`` model.

One token per base: A, C, G, T and N (unknown), lowercase accepted. Any other character is rejected with an error
naming it and its position, unless the modality is built with ``iupac="n"``, which reads the IUPAC ambiguity codes
(R, Y, S, W, K, M, B, D, H, V) as N. Sequences are written as FASTA (`unidiff_dna.fasta`).

Datasets (built offline from the Biopython 1.88 source distribution, see `unidiff_dna.corpus`):
``genomes`` (sequences of the train or valid split, split by record) and ``genomes-labelled`` (the same, each with
its source class — plant, animal or microbe — as a text condition, for class-conditioned generation and
classifier-free guidance).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Sequence

from unidiff.errors import ModalityInputError, UnidiffError
from unidiff.hookspecs import hookimpl

__version__ = "0.1.0"
MODEL_DIR = Path(__file__).parent / "model"
AR_MODEL_DIR = Path(__file__).parent / "model-ar"
ALPHABET = "ACGTN"
IUPAC_AMBIGUOUS = "RYSWKMBDHV"
IUPAC_MODES = ("error", "n")


def __getattr__(name: str):
    """`reverse_complement`, part of the plugin's API, is taken from `unidiff_dna.metrics` on first use: importing
    that module here would load it before ``python -m unidiff_dna.metrics`` runs it (Python warns of that)."""
    if name == "reverse_complement":
        from unidiff_dna.metrics import reverse_complement

        return reverse_complement
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class DnaModality:
    """Nucleotides as tokens: A=0, C=1, G=2, T=3, N=4.

    Args:
        iupac: what to do with IUPAC ambiguity codes: "error" (default: reject them like any other character) or
            "n" (read them as N).
    """

    name = "dna"
    vocab_size = len(ALPHABET)
    default_length = 256
    file_suffix = ".fa"

    def __init__(self, iupac: str = "error"):
        if not isinstance(iupac, str) or iupac not in IUPAC_MODES:
            raise UnidiffError(f"dna option iupac must be one of {', '.join(IUPAC_MODES)}; got {iupac!r}: give "
                               f"iupac='error' (the default) or iupac='n'")
        self.iupac = iupac
        table = {c: i for i, c in enumerate(ALPHABET)}
        table.update({c.lower(): i for c, i in list(table.items())})
        if iupac == "n":
            table.update({c: 4 for c in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower()})
        self._table = table

    def encode(self, content: str) -> list[int]:
        if not isinstance(content, str):
            raise ModalityInputError(f"DNA content must be a str of A, C, G, T, N; got {type(content).__name__}")
        table = self._table
        try:
            return [table[c] for c in content]
        except KeyError:
            pos = next(i for i, c in enumerate(content) if c not in table)
            bad = content[pos]
            if bad in IUPAC_AMBIGUOUS + IUPAC_AMBIGUOUS.lower():
                fix = "it is an IUPAC ambiguity code: map such codes to N with iupac='n' (DnaModality(iupac='n'))"
            elif bad.isspace():
                fix = "remove whitespace and line breaks (read FASTA files with unidiff_dna.fasta.read_fasta)"
            else:
                fix = "a DNA sequence may only hold A, C, G, T and N (either case)"
            raise ModalityInputError(f"invalid nucleotide {bad!r} at position {pos}: {fix}") from None

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(ALPHABET[int(i)] for i in ids)

    def write(self, contents: Sequence[str], path: Path) -> None:
        from unidiff_dna.fasta import write_fasta

        write_fasta([(f"sample_{i} length={len(s)}", s) for i, s in enumerate(contents)], path)

    def mirror(self) -> list[int]:
        """The complement of each id (A<->T, C<->G, N->N): with the sequence read backwards, the reverse-complement
        strand, which `unidiff.models.symmetry` uses for strand-symmetric sampling (``--symmetric``)."""
        return [ALPHABET.index(c) for c in "TGCAN"]

    def options(self) -> dict:
        return {"iupac": self.iupac}

    def sample_metrics(self, contents: Sequence[str]) -> dict[str, float]:
        """3-mer JS = Jensen-Shannon divergence (bits) of the samples' 3-mer spectrum from the held-out genomes'
        (64 random 256 bp training windows score about 0.013); GC = the samples' mean GC fraction (held-out
        records: 0.51)."""
        import numpy as np

        from unidiff_dna.metrics import gc_content, js_divergence, kmer_counts

        contents = list(contents)
        return {"3-mer JS": js_divergence(kmer_counts(contents, 3), held_out_kmer_counts(3)),
                "GC": float(np.nanmean(gc_content(contents)))}


@functools.cache
def held_out_kmer_counts(k: int):
    """k-mer counts of the held-out genomes (read once: building the corpus split takes about a second)."""
    from unidiff_dna.corpus import genomes
    from unidiff_dna.metrics import kmer_counts

    return kmer_counts(genomes("valid"), k)


@hookimpl
def register_modalities(register):
    register("dna", DnaModality)


@hookimpl
def register_datasets(register):
    from unidiff_dna.corpus import CLASSES, genomes, genomes_labelled

    register("genomes", genomes, modality="dna")
    # conditions: the closed set of classes, so a request for another is refused, listing these
    register("genomes-labelled", genomes_labelled, modality="dna", conditions=CLASSES)


@hookimpl
def register_models(register):
    register("dna", MODEL_DIR)
    if AR_MODEL_DIR.is_dir():  # the autoregressive twin of "dna": same network, data and budget (unidiff bench)
        register("dna-ar", AR_MODEL_DIR)


@hookimpl
def register_commands(register):
    """Each tool of this plugin as ``unidiff dna TOOL`` (also ``python -m unidiff_dna.TOOL``)."""
    register("dna corpus", "unidiff_dna.corpus:main",
             help="rebuild the genome corpus from the Biopython source distribution")
    register("dna measure", "unidiff_dna.measure:main", help="the DNA model's figures (docs/results/dna.md)")
    register("dna metrics", "unidiff_dna.metrics:main",
             help="sequence metrics of DNA samples: composition, k-mers, motifs, memorisation")
