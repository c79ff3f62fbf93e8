"""Argument checks at the Python API's entry points: a wrong type or value raises one `UnidiffError` naming the
argument, what it takes and what it got, before any work, instead of a `TypeError` from deep inside torch.

A whole number is an int (or numpy integer), never a bool and never a float, so ``steps=1.5`` is refused rather
than truncated; a real number is an int or a float, finite and within its range.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any, Callable, Iterable

from unidiff.errors import UnidiffError

MAX_TEMPERATURE = 100  # beyond it float32 logits / T are all but uniform, and a huge T overflows
MAX_GUIDANCE = 100  # uncond + w * (cond - uncond) overflows float32 long before w = 1e308
MAX_COUNT = 2 ** 31  # steps, block lengths, batch sizes: beyond it a tensor of counts overflows int32 kernels
SEED_MAX = 2 ** 62  # seeds are int64 in the sampler, and sample i of window w adds i + w * 10**6


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def whole(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in [lo, hi] (either end None: open), or a `UnidiffError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UnidiffError(f"{name} takes a whole number (an int); got {type(value).__name__} {_shown(value)}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rule = (f"between {lo} and {hi}" if lo is not None and hi is not None
                else f"at least {lo}" if lo is not None else f"at most {hi}")
        raise UnidiffError(f"{name} must be {rule}; got {value}")
    return value


def real(name: str, value: Any, lo: float, hi: float, *, low_open: bool = False) -> float:
    """``value`` as a finite float in [lo, hi] ((lo, hi] with ``low_open``), or a `UnidiffError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UnidiffError(f"{name} takes a number; got {type(value).__name__} {_shown(value)}")
    value = float(value)
    if not math.isfinite(value) or not ((lo < value) if low_open else (lo <= value)) or value > hi:
        interval = f"{'(' if low_open else '['}{lo:g}, {hi:g}]"
        raise UnidiffError(f"{name} must be a finite number in {interval}; got {value}")
    return value


def optional(check: Callable[..., Any], name: str, value: Any, *args, **kwargs) -> Any:
    """``check(name, value, ...)``, or None where ``value`` is None (the caller's default)."""
    return None if value is None else check(name, value, *args, **kwargs)


def proposal(temperature: Any, top_k: Any, top_p: Any, *, default_temperature: bool = False
             ) -> tuple[float | None, int, float]:
    """How proposals are drawn, checked once for every sampler: temperature in [0, MAX_TEMPERATURE] (0: the
    argmax; None where ``default_temperature``: the model's recommendation), top_k >= 0 (0: all ids), top_p in
    (0, 1]."""
    if temperature is not None or not default_temperature:
        temperature = real("temperature", temperature, 0, MAX_TEMPERATURE)
    return temperature, whole("top_k", top_k, 0), real("top_p", top_p, 0, 1, low_open=True)


def text(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` as a str (non-empty unless ``empty``), or a `UnidiffError` naming ``name``."""
    if not isinstance(value, str):
        raise UnidiffError(f"{name} takes a string; got {type(value).__name__} {_shown(value)}")
    if not value and not empty:
        raise UnidiffError(f"{name} must not be empty")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool (True or False, nothing else), or a `UnidiffError` naming ``name``."""
    if not isinstance(value, bool):
        raise UnidiffError(f"{name} takes True or False; got {type(value).__name__} {_shown(value)}")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``, or a `UnidiffError` listing them."""
    choices = list(choices)
    if isinstance(value, bool) or value not in choices:
        raise UnidiffError(f"{name} must be one of {', '.join(map(repr, choices))}; got {_shown(value)}")
    return value


def keywords(where: str, given: dict, target: Callable, also: Iterable[str] = ()) -> None:
    """Refuse keyword arguments that ``target`` (which ``where`` passes them to) does not take, listing those it
    does: a misspelt ``temprature=`` is an error naming it, not a `TypeError` or a silently ignored option."""
    known = [name for name, p in inspect.signature(target).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY] + list(also)
    unknown = [k for k in given if k not in known]
    if unknown:
        raise UnidiffError(f"{where} got unknown keyword argument(s) {', '.join(unknown)}; it takes: "
                           f"{', '.join(known)}")
