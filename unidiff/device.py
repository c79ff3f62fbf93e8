"""Device and precision choices shared by training, evaluation and generation."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from pathlib import Path

import torch

from unidiff.errors import UnidiffError

PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnidiffError(f"device {name!r} was asked for but no CUDA GPU is available: use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UnidiffError(f"unknown device {name!r}; use auto, cpu or cuda") from None


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX bf16 tiles, where bf16 autocast is about 2.4x faster than fp32 for our models."""
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device, cpu_bf16: bool = False) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    ``auto`` is bf16 on GPUs that have it and fp32 on the CPU, where batched fp32 sampling is batch-invariant (a
    sample does not depend on its batch-mates) and figures do not depend on the machine; ``cpu_bf16`` (training)
    lets ``auto`` take bf16 on CPUs with AMX, where it is about 2.4x faster."""
    if precision not in PRECISIONS:
        raise UnidiffError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_bf16 and cpu_has_fast_bf16() else None


def precision_name(dtype: torch.dtype | None) -> str:
    """What a report calls an autocast dtype: "bf16" or "fp32"."""
    return "fp32" if dtype is None else {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


THREADS_ENV = "UNIDIFF_THREADS"


def run_conditions(precision: str) -> str:
    """What a command's closing line says it ran with: "fp32, 2 CPU thread(s)"."""
    return f"{precision}, {torch.get_num_threads()} CPU thread(s)"


def default_threads(window: float = 0.1) -> int:
    """The CPU threads a command uses unless told: the cores this process may run on that other processes are not
    keeping busy, at least one. On a shared machine torch's own default (every core) oversubscribes them, and its
    threads then wait on each other: beside one busy process on 2 cores, generation at batch 1 ran 3.5x slower
    with 2 threads than with 1 (bench/threads-cpu.md). Busy cores are read from /proc/stat over ``window``
    seconds (Linux; elsewhere every core counts as free)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    busy = _busy_cores(cores, window)
    return max(1, len(cores) - round(busy))


def _busy_cores(cores: list[int], window: float) -> float:
    """How many of ``cores`` other processes kept busy over ``window`` seconds (0 where /proc/stat is unreadable)."""
    def ticks() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as fh:
            for line in fh:
                name, *fields = line.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in wanted:
                    values = [int(v) for v in fields]
                    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
                    out[int(name[3:])] = (sum(values[:8]), idle)
        return out

    wanted = set(cores)
    try:
        before = ticks()
        time.sleep(window)
        after = ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    busy = 0.0
    for cpu, (total, idle) in after.items():
        if cpu in before and total > before[cpu][0]:
            d_total, d_idle = total - before[cpu][0], idle - before[cpu][1]
            busy += 1.0 - d_idle / d_total
    return busy


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU thread pool: ``threads`` (``--threads``), else ``$UNIDIFF_THREADS``, else
    `default_threads`. Returns the number set."""
    source = "--threads"
    if threads is None and os.environ.get(THREADS_ENV, "").strip():
        text, source = os.environ[THREADS_ENV].strip(), THREADS_ENV
        threads = int(text) if text.isdigit() else 0
        if threads < 1:
            raise UnidiffError(f"{THREADS_ENV}={text!r} is not a positive whole number of threads: set it to e.g. 1, "
                               f"or unset it")
    if threads is None:
        threads = default_threads()
    if threads < 1:
        raise UnidiffError(f"{source} must be at least 1; got {threads}")
    torch.set_num_threads(threads)
    return threads


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
