"""The tables of the measurement commands: a Markdown table under a line that says what was measured, on which
machine, on which date, how long it took and the command that reproduces it."""

from __future__ import annotations

import datetime
import platform
import time

import torch

from unidiff.fs import atomic_write


def machine() -> str:
    """The CPU model, torch's thread count, the torch version and the GPU if there is one."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    out = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    return out + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")


def markdown_table(header: str, rows: list[str]) -> str:
    """A Markdown table from its header line ("| a | b |") and formatted rows."""
    return "\n".join([header, "|" + "---|" * (len(header.split("|")) - 2), *rows])


def stamp(about: str, command: str, start: float) -> str:
    """What was measured, the machine, the date, the time taken and the command that reproduces it."""
    return (f"{about} Machine: {machine()}. Date: {datetime.date.today()}. Took {time.time() - start:.0f} s.\n\n"
            f"Command: `{command}`")


def write_table(about: str, header: str, rows: list[str], command: str, start: float, out: str | None) -> None:
    """Print the table and, with ``out``, write it with its description to that file.

    Args:
        about: what was measured (one or more sentences).
        header: the column names, "| a | b |".
        rows: the table rows, already formatted.
        command: the command that reproduces the table.
        start: ``time.time()`` when the measurement began.
        out: a Markdown file to write, or None.
    """
    table = markdown_table(header, rows)
    text = f"{stamp(about, command, start)}\n\n{table}\n"
    print(table)
    if out:
        atomic_write(out, text, "give --out another path")
