"""Masking schedules: the probability ``alpha(t)`` that a token is still clean at time t in [0, 1].

alpha(0) = 1 (clean), alpha(1) = 0 (all masked). The continuous-time ELBO weights the cross-entropy on masked
positions by ``-alpha'(t) / (1 - alpha(t))`` (MD4, MDLM). A schedule used for training and the time grid a sampler
walks are separate choices.

A schedule is named by a spec string wherever one is chosen (``--schedule``, ``Segment(schedule=...)``, the
``sample.schedule`` and ``train.schedule`` config keys): ``"cosine"``, ``"polynomial:power=3"``, or
``"grid:times=1/0.7/0.3/0,base=cosine"`` (an explicit time grid, diffusers' ``set_timesteps(timesteps=...)``: S
steps visit exactly those times). Plugins add schedules with the ``register_schedules`` hook; the built-in ones
are registered by this module.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch

from unidiff.errors import UnidiffError
from unidiff.hookspecs import hookimpl


class Schedule:
    """The masking schedule: ``alpha`` and ``dalpha`` define it; ``params()`` are the keyword arguments that build
    it again (its spec string is ``name:key=value,...``)."""

    name = "base"

    def params(self) -> dict[str, Any]:
        return {}

    @property
    def spec(self) -> str:
        """The spec string that `get_schedule` builds this schedule from."""
        params = ",".join(f"{k}={_spec_value(v)}" for k, v in self.params().items())
        return self.name + (f":{params}" if params else "")

    def __eq__(self, other) -> bool:  # schedules of one spec step alike (the sampler shares their budgets)
        return isinstance(other, Schedule) and type(other) is type(self) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"Schedule({self.spec!r})"

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
        if isinstance(power, bool) or not isinstance(power, (int, float)) or not 0 < power < math.inf:
            raise UnidiffError(f"schedule polynomial: power must be a positive number; got {power!r}")
        self.power = float(power)

    def params(self) -> dict[str, Any]:
        return {"power": self.power}

    def alpha(self, t):
        return 1.0 - t ** self.power

    def dalpha(self, t):
        return -self.power * t ** (self.power - 1.0)

    def mask_prob(self, t):
        return t ** self.power


class TimeGrid(Schedule):
    """An explicit time grid ``1 = t_0 > t_1 > ... > t_S = 0`` over a ``base`` schedule: a sampler with S steps
    visits exactly those times (masked fraction ``base.mask_prob(t_k)`` after step k), as diffusers'
    ``set_timesteps(timesteps=...)``. With another number of steps the grid is interpolated linearly: the schedule
    is ``base`` at a piecewise-linear warp of time, so training with it is defined too."""

    name = "grid"

    def __init__(self, times: Sequence[float], base: "str | Schedule" = "linear"):
        times = (times,) if isinstance(times, (int, float)) else tuple(times)
        for k, v in enumerate(times):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise UnidiffError(f"schedule grid: times[{k}] = {v!r} is not a finite number")
        if len(times) < 2 or times[0] != 1 or times[-1] != 0:
            raise UnidiffError(f"schedule grid: times must run from 1 down to 0 (at least two of them); got "
                               f"{list(times)}")
        bad = next((k for k in range(1, len(times)) if not times[k] < times[k - 1]), None)
        if bad is not None:
            raise UnidiffError(f"schedule grid: times must decrease; times[{bad}] = {times[bad]} follows "
                               f"{times[bad - 1]}")
        self.times = tuple(float(v) for v in times)
        if isinstance(base, TimeGrid) or isinstance(base, str) and parse_spec(base)[0] == self.name:
            raise UnidiffError("schedule grid: the base of a time grid is a schedule, not another grid")
        self.base = get_schedule(base)

    def params(self) -> dict[str, Any]:
        return {"times": self.times, "base": self.base.spec}

    def _warp(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the grid's time at the uniform grid's time t, its derivative in t)."""
        S = len(self.times) - 1
        grid = torch.tensor(self.times, dtype=t.dtype, device=t.device)
        p = (1.0 - t) * S  # progress in steps
        p = torch.where((p - p.round()).abs() < 1e-9, p.round(), p)  # a knot is hit exactly despite rounding
        k = p.floor().clamp(0, S - 1).long()
        lo, hi = grid[k], grid[k + 1]
        return lo + (p - k) * (hi - lo), S * (lo - hi)

    def alpha(self, t):
        return self.base.alpha(self._warp(t)[0])

    def dalpha(self, t):
        w, dw = self._warp(t)
        return self.base.dalpha(w) * dw

    def mask_prob(self, t):
        return self.base.mask_prob(self._warp(t)[0])


SCHEDULES: dict[str, Callable[..., Schedule]] = {"linear": LogLinear, "cosine": Cosine, "polynomial": Polynomial,
                                                 "grid": TimeGrid}  # the built-in ones


@hookimpl
def register_schedules(register):
    for name, factory in SCHEDULES.items():
        register(name, factory)


def _spec_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "/".join(_spec_value(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _parse_value(text: str) -> Any:
    if "/" in text:
        return tuple(_parse_value(v) for v in text.split("/"))
    try:
        return float(text)
    except ValueError:
        return text  # a name, e.g. a grid's base schedule


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"polynomial:power=3"`` -> ``("polynomial", {"power": 3.0})``; values are numbers, ``/``-separated lists
    of numbers, or names."""
    name, _, rest = spec.strip().partition(":")
    params = {}
    for part in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = part.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise UnidiffError(f"schedule {spec!r}: {part!r} is not KEY=VALUE; write e.g. polynomial:power=3 or "
                               f"grid:times=1/0.6/0.2/0,base=cosine")
        params[key.strip()] = _parse_value(value.strip())
    return name.strip(), params


def get_schedule(spec: "str | Schedule", **kwargs) -> Schedule:
    """The schedule a spec string names (see `parse_spec`), with ``kwargs`` added to its parameters: a built-in
    one, else one a plugin registers (``register_schedules``). A `Schedule` is returned as it is."""
    if isinstance(spec, Schedule) and not kwargs:
        return spec
    if not isinstance(spec, str):
        raise UnidiffError(f"a schedule is a spec string such as 'cosine' or 'polynomial:power=3', or a Schedule; "
                           f"got {type(spec).__name__} {spec!r:.60}")
    name, params = parse_spec(spec)
    params.update(kwargs)
    factory = SCHEDULES.get(name)
    if factory is None:
        from unidiff.plugins import Registry

        factory = Registry().schedule_factory(name)  # an unknown name lists every registered schedule
    signature = inspect.signature(factory)
    try:
        signature.bind(**params)
    except TypeError:
        takes = {p: q for p, q in signature.parameters.items() if p != "self"}
        unknown = sorted(set(params) - set(takes))
        if unknown:
            raise UnidiffError(f"schedule {name!r} does not take {unknown}; it takes "
                               f"{', '.join(takes) or 'no parameters'}") from None
        missing = [p for p, q in takes.items() if q.default is q.empty and p not in params]
        raise UnidiffError(f"schedule {name!r} needs {', '.join(missing)}: write e.g. "
                           f"{name}:{missing[0]}=...") from None
    schedule = factory(**params)
    if not isinstance(schedule, Schedule):
        raise UnidiffError(f"schedule {name!r} was built as {type(schedule).__name__}, not a unidiff Schedule")
    return schedule
