"""Counter-based random numbers: a uniform is a hash of (seed, step, stream, position).

Nothing is drawn from a stateful generator, so a row's randomness does not depend on the other rows of its batch,
on padding, on the device or on the order of operations: row i of a batch equals the same row generated alone
with the same seed. The hash is SplitMix64's finaliser, applied twice, on int64 tensors.
"""

from __future__ import annotations

import torch

# Independent streams (four fit in a step): the token draws, the policy's choices, the positions an edit
# re-masks, the tokens a sampling step re-masks (remasking).
STREAM_TOKEN, STREAM_POLICY, STREAM_EDIT, STREAM_REMASK = 1, 2, 3, 0


def _i64(x: int) -> int:
    """An unsigned 64-bit constant as the signed int64 torch stores."""
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _M1, _M2 = _i64(0x9E3779B97F4A7C15), _i64(0xBF58476D1CE4E5B9), _i64(0x94D049BB133111EB)


def _srl(z: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (z >> n) & ((1 << (64 - n)) - 1)


def _mix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    z = (z ^ _srl(z, 30)) * _M1
    z = (z ^ _srl(z, 27)) * _M2
    return z ^ _srl(z, 31)


def hashed_uniform(seed: torch.Tensor, step: int, stream: int, position: torch.Tensor) -> torch.Tensor:
    """Uniforms in [0, 1) (float64, 53 random bits) that depend only on (seed, step, stream, position).

    ``seed`` and ``position`` broadcast against each other.
    """
    z = _mix(seed.long() * _GOLDEN + (step * 4 + stream))
    z = _mix(z ^ (position.long() * _M1 + _GOLDEN))
    return _srl(z, 11).double() * 2.0 ** -53


#: Positions of the remasking stream from here on carry the noise a re-opened position takes (a process whose
#: noise is a token, e.g. uniform noise, draws it from these; no row has 2**32 positions).
NOISE_POSITIONS = 1 << 32


def noise_uniform(seed: torch.Tensor, step: int, position: torch.Tensor) -> torch.Tensor:
    """The uniforms a process may draw re-opened positions' noise from, independent of those that chose them."""
    return hashed_uniform(seed, step, STREAM_REMASK, position + NOISE_POSITIONS)
