"""Masking schedules: the probability ``alpha(t)`` that a token is still clean at time t in [0, 1].

alpha(0) = 1 (clean), alpha(1) = 0 (all masked). The continuous-time ELBO weights the cross-entropy on masked
positions by ``-alpha'(t) / (1 - alpha(t))`` (MD4, MDLM). A schedule used for training and the time grid a sampler
walks are separate choices.
"""

from __future__ import annotations

import math

import torch

from unidiff.errors import UnidiffError, UnknownNameError


class Schedule:
    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """1 - alpha(t), computed directly: ``1 - alpha`` cancels to 0 for small t (inf weights, NaN gradients)."""
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight -alpha'(t) / (1 - alpha(t)), >= 0."""
        return -self.dalpha(t) / self.mask_prob(t)


class LogLinear(Schedule):
    """alpha = 1 - t: MDLM's log-linear noise (sigma(t) = -log(1 - t)); weight 1/t."""

    name = "linear"

    def alpha(self, t):
        return 1.0 - t

    def dalpha(self, t):
        return -torch.ones_like(t)

    def mask_prob(self, t):
        return t


class Cosine(Schedule):
    """alpha = 1 - cos(pi/2 (1 - t)) (MD4's cosine)."""

    name = "cosine"

    def alpha(self, t):
        return 1.0 - torch.cos(0.5 * math.pi * (1.0 - t))

    def dalpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * (1.0 - t))

    def mask_prob(self, t):
        return torch.cos(0.5 * math.pi * (1.0 - t))


class Polynomial(Schedule):
    """alpha = 1 - t**p."""

    name = "polynomial"

    def __init__(self, power: float = 2.0):
        self.power = float(power)

    def alpha(self, t):
        return 1.0 - t ** self.power

    def dalpha(self, t):
        return -self.power * t ** (self.power - 1.0)

    def mask_prob(self, t):
        return t ** self.power


SCHEDULES = {"linear": LogLinear, "cosine": Cosine, "polynomial": Polynomial}


def get_schedule(name: str, **kwargs) -> Schedule:
    if name not in SCHEDULES:
        raise UnknownNameError("schedule", name, sorted(SCHEDULES))
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError:
        raise UnidiffError(f"schedule {name!r} takes no options {sorted(kwargs)}; only polynomial takes power=")

