"""From user content to model batches and training windows: `segments` (what a request is made of), `rows` (one
row per sample, padded into a `Batch`) and `windows` (training rows cut from documents)."""

from unidiff.data.rows import Batch, Row, collate, encode_row
from unidiff.data.segments import (EDIT_ORDERS, HOLE, ROLES, Segment, Tokens, check_samples, check_schedule,
                                   edit_targets, encode_content, parse_holes, regenerate_positions)
from unidiff.data.windows import (Document, Windows, condition_modality, encode_conditions, encode_docs, make_holes,
                                  make_windows)

__all__ = ["Batch", "Document", "EDIT_ORDERS", "HOLE", "ROLES", "Row", "Segment", "Tokens", "Windows",
           "check_samples", "check_schedule", "collate", "condition_modality", "edit_targets", "encode_conditions", "encode_content",
           "encode_docs", "encode_row", "make_holes", "make_windows", "parse_holes", "regenerate_positions"]
