"""Device, precision and thread choices (unidiff/device.py)."""

from __future__ import annotations

import os

import pytest
import torch

import unidiff.device as device
from unidiff.errors import UnidiffError


def test_auto_precision_is_fp32_on_the_cpu_even_with_amx(monkeypatch):
    """Sampling and evaluation stay fp32 on the CPU (batch-invariant, machine-independent figures); training may
    take bf16 where AMX makes it faster."""
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    cpu = torch.device("cpu")
    assert device.resolve_precision("auto", cpu) is None
    assert device.resolve_precision("auto", cpu, cpu_bf16=True) is torch.bfloat16
    assert device.resolve_precision("bf16", cpu) is torch.bfloat16 and device.resolve_precision("fp32", cpu) is None
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.resolve_precision("auto", cpu, cpu_bf16=True) is None
    assert [device.precision_name(d) for d in (None, torch.bfloat16)] == ["fp32", "bf16"]
    with pytest.raises(UnidiffError, match="unknown precision 'fp8'"):
        device.resolve_precision("fp8", cpu)


@pytest.mark.parametrize("busy, expected", [(0.0, 4), (0.4, 4), (0.6, 3), (1.0, 3), (2.51, 1), (7.0, 1)])
def test_default_threads_leaves_the_busy_cores_alone(monkeypatch, busy, expected):
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(device, "_busy_cores", lambda cores, window: busy)
    assert device.default_threads() == expected


def test_busy_cores_reads_proc_stat():
    cores = sorted(os.sched_getaffinity(0))
    busy = device._busy_cores(cores, 0.05)
    assert 0.0 <= busy <= len(cores)


def test_set_threads_order_and_errors(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("UNIDIFF_THREADS", "1")
        assert device.set_threads() == 1 == torch.get_num_threads()
        assert device.set_threads(2) == 2 == torch.get_num_threads()  # --threads wins over the variable
        for bad in ("0", "-1", "two", "1.5"):
            monkeypatch.setenv("UNIDIFF_THREADS", bad)
            with pytest.raises(UnidiffError, match=f"UNIDIFF_THREADS='{bad}' is not a positive whole number"):
                device.set_threads()
        monkeypatch.delenv("UNIDIFF_THREADS")
        monkeypatch.setattr(device, "default_threads", lambda: 1)
        assert device.set_threads() == 1
        with pytest.raises(UnidiffError, match="--threads must be at least 1"):
            device.set_threads(0)
    finally:
        torch.set_num_threads(before)
