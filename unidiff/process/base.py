"""The noise process as an object: what training corrupts and weighs, and what a reverse step decides.

A discrete diffusion model is trained against a forward process q(x_t | x_0) that destroys tokens as the time t runs
from 0 (clean) to 1 (pure noise) on a `Schedule`, and samples by walking it back. Everything that depends on *which*
process it is lives behind this interface, so the trainer, the evaluator and the sampling loop stay the same for
another one (a uniform-noise process: see docs/architecture.md, "Noise processes"):

- training and evaluation: `corrupt` draws x_t (and says which positions the ELBO scores), `elbo_terms` turns the
  denoiser's logits at those positions into per-position nats of the continuous-time bound;
- sampling: `start` is the state at t = 1, `budget` how many still-open positions a step from t to s leaves open
  and with which probability it decides one, `posterior` the distribution a proposal is drawn from given the
  denoiser's, and `reopen` puts decided positions back to noise (ReMDM remasking). The sampler itself keeps which
  target positions are still open; under the absorbing process these are exactly the MASK ones.

Plugins add processes with the ``register_processes`` hook (``register(name, factory)``); ``train.process`` names
the one a model is trained with, and it is recorded with the model, so sampling and evaluation follow it.
"""

from __future__ import annotations

from typing import Any

import torch

from unidiff.errors import UnidiffError
from unidiff.process.schedules import Schedule
from unidiff.vocab import VocabLayout


class Process:
    """The interface every noise process implements; the built-in one is `unidiff.process.absorbing.Absorbing`.
    Tensors are (B, L) over a batch's rows unless said otherwise; ``t`` is (B,) or (B, L) float times;
    ``modality`` (B, L) holds each position's modality index in ``layout`` (a process whose noise is a token draws
    it from that modality's range: ``layout.blocks[name].start`` and ``.size``)."""

    name = "base"
    #: True if the denoiser must be told the time t (uniform noise); the absorbing process's posterior does not
    #: depend on t, so its denoisers take none (MDLM).
    time_conditioned = False

    def corrupt(self, x0: torch.Tensor, t: torch.Tensor, targets: torch.Tensor, schedule: Schedule,
                generator: torch.Generator | None, modality: torch.Tensor,
                layout: VocabLayout) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_t, scored): the noised ids (only ``targets`` may change) and the positions whose ELBO terms count;
        every random draw comes from ``generator``, after the times (training and evaluation reproduce)."""
        raise NotImplementedError

    def elbo_terms(self, logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, scored: torch.Tensor,
                   t: torch.Tensor, schedule: Schedule) -> torch.Tensor:
        """(B, L) nats of the bound, zero off ``scored``, from the (n, V) logits at the n ``scored`` positions
        (row-major order); carries the logits' gradient."""
        raise NotImplementedError

    def start(self, ids: torch.Tensor, targets: torch.Tensor, modality: torch.Tensor, layout: VocabLayout,
              uniform: torch.Tensor) -> torch.Tensor:
        """The sampler's state at t = 1: ``ids`` with every target position noised (``uniform``: (B, L)
        counter-based uniforms of each row's own seed, for a process that draws its noise tokens)."""
        raise NotImplementedError

    def budget(self, n_targets: torch.Tensor, steps: torch.Tensor, k: int | torch.Tensor, schedule: Schedule,
               remask: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For blocks of N target positions decoded in S steps, at step k (one per block): ``(p_decide, n_left,
        sigma)``, (G,) tensors: the probability that the step decides an open position (ancestral sampling;
        `StepContext.p_unmask`), the open positions the step leaves (float64 maths, so every group of one schedule
        takes the same counts) and the probability of re-opening a decided one (``remask`` times the largest
        admissible value; ``p_decide`` already includes the matching rise)."""
        raise NotImplementedError

    def posterior(self, logits: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        """(n, V) logits a proposal for n open positions is drawn from, given the denoiser's (n, V) logits of the
        clean token and the positions' ``current`` (n,) ids."""
        raise NotImplementedError

    def reopen(self, x: torch.Tensor, chosen: torch.Tensor, modality: torch.Tensor, layout: VocabLayout,
               uniform: torch.Tensor) -> torch.Tensor:
        """``x`` with the ``chosen`` positions put back to noise (``uniform`` as in `start`)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"Process({self.name!r})"


def get_process(process: "str | Process", registry: Any = None) -> Process:
    """The process a name denotes (a built-in or a plugin's, ``register_processes``); a `Process` as it is."""
    if isinstance(process, Process):
        return process
    if not isinstance(process, str) or not process.strip():
        raise UnidiffError(f"a noise process is named by a string such as 'absorbing', or is a Process; got "
                           f"{type(process).__name__} {process!r:.60}")
    from unidiff.process.absorbing import Absorbing

    if process == Absorbing.name:
        return Absorbing()
    if registry is None:
        from unidiff.plugins import Registry

        registry = Registry()
    return registry.process(process)  # an unknown name lists every registered process
