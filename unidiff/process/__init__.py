"""Noise processes and their schedules: `Process` (corruption, ELBO terms, reverse-step budgets and posterior),
the built-in `Absorbing` one, and `unidiff.process.schedules` (alpha(t), spec strings, time grids)."""

from unidiff.process.absorbing import Absorbing
from unidiff.process.base import Process, get_process

__all__ = ["Absorbing", "Process", "get_process"]
