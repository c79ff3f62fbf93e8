"""One training run per out_dir (the lock) and the writing commands' atomic outputs (issue 20, groups 4 and 6): a
second run into a locked out_dir is refused naming the holder's pid, a killed holder frees it, and ``--out`` files,
bench tables and reports are written whole or not at all, with one error line on a full or read-only disk."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import unidiff_bench.table as bench_mod
import unidiff.fs as fs
import unidiff.training.train as train_mod
from unidiff.errors import UnidiffError
from unidiff.fs import OutputError, atomic_path, atomic_write, folder_lock
from unidiff.plugins import Registry
from unidiff.training.train import train

from helpers import ENOSPC, EVAL_DOCS, TRAIN_DOCS, cli, leftovers, one_error_line, refuse_writes, tiny_cfg, tiny_toml


@pytest.fixture(autouse=True)
def back_to_one_thread():
    yield
    torch.set_num_threads(1)  # the CLI's --threads default may have changed it


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def run(cfg, registry: Registry, **kw):
    return train(cfg, registry, registry.modality("text"), TRAIN_DOCS, EVAL_DOCS, **kw)


# -------------------------------------------------------------------------------------- group 6: the lock


def test_second_run_into_a_locked_out_dir_is_refused_naming_the_pid(registry, tmp_path, monkeypatch):
    with folder_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
        monkeypatch.setattr(train_mod, "_train", lambda *a: pytest.fail("ran into a locked out_dir"))
        with pytest.raises(UnidiffError) as e:
            run(tiny_cfg(tmp_path), registry)
        assert str(e.value) == (f"{tmp_path} is in use by another run (pid {os.getpid()}): wait for it to finish or "
                                f"stop it, or pick another train.out_dir")
    monkeypatch.undo()
    assert (tmp_path / ".lock").read_text() == ""
    assert run(tiny_cfg(tmp_path, steps=2), registry).step == 2  # free again


def test_lock_held_by_another_process(capsys, tmp_path):
    """A process holds the out_dir: the CLI refuses in one line naming that pid; once it exits, training runs."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from unidiff.fs import folder_lock\n"
                               "with folder_lock(sys.argv[1]):\n    print('locked', flush=True); sys.stdin.read()",
                               str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert holder.stdout.readline() == "locked\n"
        line = one_error_line(*cli(capsys, "train", str(tiny_toml(tmp_path, out)), "--quiet"))
        assert line == (f"unidiff: error: {out} is in use by another run (pid {holder.pid}): wait for it to finish "
                        f"or stop it, or pick another train.out_dir")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert cli(capsys, "train", str(tiny_toml(tmp_path, out)), "--quiet")[0] == 0


def test_a_killed_holder_leaves_the_out_dir_free(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os, signal, sys; from unidiff.fs import folder_lock\n"
                           "with folder_lock(sys.argv[1]):\n    os.kill(os.getpid(), signal.SIGKILL)", str(tmp_path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=60)
    assert proc.returncode == -signal.SIGKILL and (tmp_path / ".lock").read_text().strip().isdigit()
    with folder_lock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


# ------------------------------------------------------------------------------ group 4: --out is atomic


def test_atomic_write_on_a_full_disk_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "table.md"
    target.write_text("old table\n")
    real = os.write

    def write(fd, data):
        real(fd, bytes(data[:5]))
        raise ENOSPC

    monkeypatch.setattr(fs.os, "write", write)
    with pytest.raises(OutputError) as e:
        bench_mod._write(target, "new table\n" * 1000)
    monkeypatch.undo()
    assert str(e.value) == (f"cannot write {target}: no space is left on the device (ENOSPC): free some space, or "
                            f"give --out another path")
    assert target.read_text() == "old table\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]


def test_bench_out_folder_is_refused_up_front(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_mod, "run_bench", lambda *a, **k: pytest.fail("measured before checking --out"))
    line = one_error_line(*cli(capsys, "bench", "--out", str(tmp_path)))
    assert line == f"unidiff: error: --out {tmp_path} is a folder: give the path of a file (e.g. {tmp_path / 'out'})"
    with pytest.raises(OutputError, match="it is a folder"):
        bench_mod._write(tmp_path, "x")
    assert list(tmp_path.iterdir()) == []  # no .tmpPID file


def test_generate_out_on_a_full_disk_is_one_line_and_leaves_no_partial_file(capsys, tmp_path, monkeypatch):
    from unidiff_text import TextModality

    def write(self, contents, path):  # half the samples land, then the disk is full
        Path(path).write_text(contents[0][: len(contents[0]) // 2])
        raise ENOSPC

    target = tmp_path / "samples.txt"
    monkeypatch.setattr(TextModality, "write", write)
    line = one_error_line(*cli(capsys, "generate", "--length", "8", "--steps", "2", "--out", str(target)))
    assert line == (f"unidiff: error: cannot write {target}: no space is left on the device (ENOSPC): free some "
                    f"space, or give --out another path")
    assert list(tmp_path.iterdir()) == []
    target.write_text("earlier samples\n")
    one_error_line(*cli(capsys, "generate", "--length", "8", "--steps", "2", "--out", str(target)))
    assert target.read_text() == "earlier samples\n" and list(tmp_path.iterdir()) == [target]


def test_generate_out_read_only_is_refused_before_sampling(capsys, tmp_path, monkeypatch):
    import unidiff.cli as cli_mod

    refuse_writes(monkeypatch, tmp_path)
    monkeypatch.setattr(cli_mod, "load_pipeline", lambda args: pytest.fail("sampled before checking --out"))
    line = one_error_line(*cli(capsys, "generate", "--out", str(tmp_path / "x.txt")))
    assert line == (f"unidiff: error: cannot write {tmp_path}: the file system is read-only (EROFS): remount it "
                    f"read-write, or give --out another path")


def test_atomic_path_keeps_the_file_name_for_writers_that_read_it(tmp_path):
    with atomic_path(tmp_path / "grid.png") as tmp:
        assert tmp.name == "grid.png" and tmp.parent.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "grid.png").read_bytes() == b"png" and leftovers(tmp_path) == []
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "grid.png") as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert (tmp_path / "grid.png").read_bytes() == b"png" and leftovers(tmp_path) == []
    atomic_write(tmp_path / "sub" / "new.md", "é")
    assert (tmp_path / "sub" / "new.md").read_text(encoding="utf-8") == "é"


def test_report_write_table_is_atomic(tmp_path, monkeypatch, capsys):
    from unidiff.report import write_table

    target = tmp_path / "t.md"
    refuse_writes(monkeypatch, tmp_path, errno.EDQUOT)
    with pytest.raises(OutputError, match=f"cannot write {target}: the disk quota is used up \\(EDQUOT\\)"):
        write_table("About.", "| a |", ["| 1 |"], "cmd", 0.0, str(target))
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    write_table("About.", "| a |", ["| 1 |"], "cmd", 0.0, str(target))
    assert target.read_text().endswith("| a |\n|---|\n| 1 |\n")
