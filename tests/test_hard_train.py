"""Training and the writing commands against bad values and faults (issue 20, groups 2 and 4-6): non-finite or
out-of-range config values, a run that diverges, read-only and full disks, SIGKILL inside a checkpoint write,
and damaged resume state (two runs into one out_dir and atomic command outputs: tests/test_out_files.py). Each is refused with one `UnidiffError` line that names the
problem and the fix, and leaves nothing half-written."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError

import unidiff.training.checkpoint as ckpt
import unidiff.fs as fs
import unidiff.training.train as train_mod
from unidiff.training.config import Config, DataConfig, SampleConfig, TrainConfig, load_config
from unidiff.errors import CheckpointError, UnidiffError
from unidiff.fs import OutputError, ensure_writable
from unidiff.models.transformer import ModelConfig
from unidiff.plugins import Registry
from unidiff.training.train import STATE, TrainingError, train

from helpers import (ENOSPC, EVAL_DOCS, N, TRAIN_DOCS, assert_same_weights, cli, leftovers, one_error_line, read_log,
                     refuse_writes, saved_step, tiny_cfg, tiny_toml, weights)

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module, the killed children's included, on one thread: exact resume compares floats whose
    sums depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def back_to_one_thread():
    yield
    torch.set_num_threads(1)  # the CLI's --threads default may have changed it


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def run(cfg: Config, registry: Registry, **kw):
    return train(cfg, registry, registry.modality("text"), TRAIN_DOCS, EVAL_DOCS, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, registry) -> Path:
    """The out_dir of an uninterrupted N-step run."""
    out = tmp_path_factory.mktemp("reference")
    run(tiny_cfg(out), registry)
    return out


@pytest.fixture
def done(reference, tmp_path) -> Path:
    """A private copy of the finished reference run."""
    shutil.copytree(reference, tmp_path / "run")
    return tmp_path / "run"


# ------------------------------------------------------------------------------ group 2: values of the config


@pytest.mark.parametrize("override, needle", [
    ("train.lr=inf", "config key train.lr must be a finite number; got inf"),
    ("train.lr=-inf", "config key train.lr must be a finite number; got -inf"),
    ("train.weight_decay=nan", "config key train.weight_decay must be a finite number; got nan"),
    ("train.grad_clip=nan", "config key train.grad_clip must be a finite number; got nan"),
    ("train.grad_clip=0", "config key train.grad_clip must be positive"),
    ("train.lr=0", "config key train.lr must lie in (0, 1]; got 0.0"),
    ("train.lr=5", "config key train.lr must lie in (0, 1]; got 5.0"),
    ("train.beta2=nan", "config key train.beta2 must be a finite number"),
    ("train.ema=inf", "config key train.ema must be a finite number"),
    ("train.min_lr_ratio=1.5", "config key train.min_lr_ratio must lie in [0, 1]"),
    ("train.seed=-1", "config key train.seed must lie in [0, 2**62)"),
    ("train.out_dir=\"\"", "config key train.out_dir is empty"),
    ("model.mlp_ratio=inf", "config key model.mlp_ratio must be a finite number"),
    ("model.rope_base=nan", "config key model.rope_base must be a finite number"),
    ("model.dropout=nan", "config key model.dropout must be a finite number"),
    ("data.cond_dropout=-inf", "config key data.cond_dropout must be a finite number"),
    ("sample.temperature=1e308", "config key sample.temperature must lie in [0, 100]"),
    ("sample.temperature=nan", "config key sample.temperature must be a finite number"),
    ("sample.guidance=1e308", "config key sample.guidance must lie in [0, 100]"),
    ("sample.remask=inf", "config key sample.remask must be a finite number"),
    ("sample.steps_per_token=0", "config key sample.steps_per_token must lie in (0, 1]"),
    ("sample.policy=\"\"", "config key sample.policy must name an unmasking policy"),
])
def test_bad_float_values_are_refused_by_name(override, needle):
    with pytest.raises(UnidiffError) as e:
        load_config(None, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("build, needle", [
    (lambda: Config(train=TrainConfig(lr=float("inf"))), "train.lr must be a finite number"),
    (lambda: Config(train=TrainConfig(weight_decay=float("nan"))), "train.weight_decay must be a finite number"),
    (lambda: Config(train=TrainConfig(steps=True)), "train.steps takes an int; got True"),
    (lambda: Config(train=TrainConfig(steps=2.5)), "train.steps takes an int; got 2.5"),
    (lambda: Config(train=TrainConfig(progress=1)), "train.progress takes a bool"),
    (lambda: Config(train=TrainConfig(out_dir=5)), "train.out_dir takes a string; got 5"),
    (lambda: Config(train=TrainConfig(lr="1e-3")), "train.lr takes a float; got '1e-3'"),
    (lambda: Config(model=ModelConfig(d_model=True)), "model.d_model takes an int; got True"),
    (lambda: Config(sample=SampleConfig(temperature="hot")), "sample.temperature takes a float; got 'hot'"),
])
def test_python_configs_of_wrong_types_are_refused_by_name(build, needle):
    """A Config built in Python skips the TOML parser's type checks; validate() makes them."""
    with pytest.raises(UnidiffError, match="config key " + needle.replace("(", r"\(").replace(")", r"\)")):
        build().validate()


def test_sample_config_from_a_checkpoint_is_checked_by_key():
    assert SampleConfig.from_dict({"temperature": 0.6, "policy": "ancestral"}) == \
        SampleConfig(policy="ancestral", temperature=0.6)
    for bad, needle in [("hot", "sampling must be a table"), ({"temperature": "hot"}, "sampling.temperature takes a "
                                                                                       "float; got 'hot'"),
                        ({"guidance": float("inf")}, "sampling.guidance must be a finite number"),
                        ({"temperature": 1e308}, "sampling.temperature must lie in [0, 100]"),
                        ({"sped": 1}, "unknown config key sampling.sped; keys of [sampling] are: policy")]:
        with pytest.raises(UnidiffError) as e:
            SampleConfig.from_dict(bad)
        assert needle in str(e.value)


FLOAT_KEYS = [f"{section}.{f}" for section, sub in (("model", ModelConfig()), ("data", DataConfig()),
                                                    ("train", TrainConfig()), ("sample", SampleConfig()))
              for f, v in vars(sub).items() if isinstance(v, float)]


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(FLOAT_KEYS), value=st.floats(allow_nan=True, allow_infinity=True))
def test_any_float_for_any_float_key_is_taken_finite_or_refused_by_name(key, value):
    """Whatever float --set gives a float key: the config holds it as a finite number, or a `UnidiffError` names the
    key; never another exception, never a non-finite value."""
    text = "nan" if math.isnan(value) else ("inf" if value == math.inf else "-inf" if value == -math.inf else
                                             repr(value))
    try:
        cfg = load_config(None, [f"{key}={text}"])
    except UnidiffError as e:
        assert key in str(e) and "\n" not in str(e), str(e)
        return
    section, name = key.split(".")
    got = getattr(getattr(cfg, section), name)
    assert math.isfinite(got) and got == value


@pytest.mark.parametrize("override", ["train.lr=inf", "train.weight_decay=nan", "train.grad_clip=nan"])
def test_cli_refuses_non_finite_training_values_in_one_line(capsys, tmp_path, override):
    line = one_error_line(*cli(capsys, "train", str(tiny_toml(tmp_path, tmp_path / "run")), "--set", override))
    assert override.split("=")[0] in line and "finite number" in line
    assert not (tmp_path / "run").exists()  # refused before the out_dir is made


# -------------------------------------------------------------------------------------- group 2: divergence


def poison_step(monkeypatch, at: int, how: str) -> None:
    """Make training step ``at`` (1-based) go wrong: a NaN loss, or a finite loss whose gradient is NaN."""
    real, calls = train_mod.batch_loss, []

    def batch_loss(*args, **kwargs):
        sums, counts = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == at:
            sums = sums * float("nan") if how == "loss" else sums + (sums * 0).sqrt()  # d sqrt(x)/dx at 0: inf
        return sums, counts

    monkeypatch.setattr(train_mod, "batch_loss", batch_loss)


def all_finite(folder: Path) -> bool:
    return all(bool(t.isfinite().all()) for t in weights(folder).values() if t.is_floating_point())


@pytest.mark.parametrize("how, what", [("loss", "the loss is nan"), ("grad", "the gradient norm is nan")])
def test_a_diverging_run_stops_at_its_step_and_keeps_the_last_checkpoint(registry, tmp_path, monkeypatch, how,
                                                                         what):
    poison_step(monkeypatch, N // 2 + 2, how)
    with pytest.raises(TrainingError) as e:
        run(tiny_cfg(tmp_path), registry)
    msg = str(e.value)
    assert msg.startswith(f"training diverged at step {N // 2 + 2}: {what}; nothing of this step was saved")
    assert f"{tmp_path / 'last'} still holds step {N // 2}" in msg and "Lower train.lr (now 0.003)" in msg
    assert saved_step(tmp_path) == N // 2
    assert json.loads((tmp_path / "model" / "config.json").read_text())["figures"]["step"] == N // 2
    assert all_finite(tmp_path / "last") and all_finite(tmp_path / "model")
    assert [r["step"] for r in read_log(tmp_path)] == [N // 2]
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert run(tiny_cfg(tmp_path), registry).step == N  # the message's way on: a re-run resumes from step N/2


def test_a_run_that_diverges_before_its_first_save_writes_no_model(registry, tmp_path, monkeypatch):
    poison_step(monkeypatch, 2, "loss")
    with pytest.raises(TrainingError, match=r"training diverged at step 2: the loss is nan; .*nothing of this run "
                                            r"was saved"):
        run(tiny_cfg(tmp_path), registry)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]  # no model/, no last/, no log


def test_weights_that_become_infinite_are_never_saved(registry, tmp_path, monkeypatch):
    """An infinite learning rate at the last step: loss and gradients are finite, the updated weights are not."""
    real = train_mod.lr_at
    monkeypatch.setattr(train_mod, "lr_at", lambda step, cfg: math.inf if step == N - 1 else real(step, cfg))
    with pytest.raises(TrainingError, match=f"training diverged at step {N}: the weights are no longer finite"):
        run(tiny_cfg(tmp_path), registry)
    assert saved_step(tmp_path) == N // 2 and all_finite(tmp_path / "last") and all_finite(tmp_path / "model")


# ----------------------------------------------------------------------------- group 4: writability, disk full


def test_read_only_out_dir_is_refused_before_any_work(registry, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    refuse_writes(monkeypatch, out)
    monkeypatch.setattr(train_mod, "_train", lambda *a: pytest.fail("trained into a read-only out_dir"))
    with pytest.raises(OutputError) as e:
        run(tiny_cfg(out), registry)
    assert str(e.value) == (f"cannot write {out}: the file system is read-only (EROFS): remount it read-write, or "
                            f"set train.out_dir to another folder")
    assert list(out.iterdir()) == []  # the probe is gone too


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_read_only_folder_by_mode_bits(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="permission denied"):
        ensure_writable(folder)


def test_cli_read_only_out_dir_is_one_line(capsys, tmp_path, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    refuse_writes(monkeypatch, out, errno.EACCES)
    line = one_error_line(*cli(capsys, "train", str(tiny_toml(tmp_path, out))))
    assert line == (f"unidiff: error: cannot write {out}: permission denied (EACCES): change its permissions, or set "
                    f"train.out_dir to another folder")


def full_disk_at_state(monkeypatch, call: int) -> None:
    """The ``call``-th write of training_state.pt lands half its bytes, then the disk is full."""
    real, calls = train_mod.write_bytes, []

    def write_bytes(path, data):
        calls.append(path)
        if len(calls) == call:
            real(path, bytes(data[: len(data) // 2]))
            raise ENOSPC
        real(path, data)

    monkeypatch.setattr(train_mod, "write_bytes", write_bytes)


@pytest.mark.parametrize("fault", ["state", "safetensors"])
def test_disk_full_at_save_is_one_error_and_the_resume_is_exact(reference, registry, tmp_path, monkeypatch, fault):
    """The disk fills during the step-N save of last/ (the optimizer state, or the weights as safetensors reports
    it): one clear error, last/ keeps step N/2 whole, and the resumed run ends bit-exact with the uninterrupted one."""
    if fault == "state":
        full_disk_at_state(monkeypatch, call=2)
    else:
        real, calls = ckpt.save_file, []

        def save_file(tensors, filename, *args, **kwargs):
            calls.append(filename)
            if len(calls) == 4:  # model/, last/, model/, last/: the last/ write at step N
                Path(filename).write_bytes(b"\0" * 100)
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            return real(tensors, filename, *args, **kwargs)

        monkeypatch.setattr(ckpt, "save_file", save_file)
    with pytest.raises(OutputError) as e:
        run(tiny_cfg(tmp_path), registry)
    assert str(e.value).startswith(f"cannot write {tmp_path / 'last'}: no space is left on the device (ENOSPC): free "
                                   f"some space, or set train.out_dir to another folder ({tmp_path / 'last'} still "
                                   f"holds step {N // 2}")
    monkeypatch.undo()
    assert saved_step(tmp_path) == N // 2 and leftovers(tmp_path) == []
    assert run(tiny_cfg(tmp_path), registry).step == N
    assert_same_weights(tmp_path / "last", reference / "last")
    assert_same_weights(tmp_path / "model", reference / "model")
    assert torch.equal(torch.load(tmp_path / "last" / STATE, weights_only=True)["generator"],
                       torch.load(reference / "last" / STATE, weights_only=True)["generator"])


def test_disk_full_while_logging_keeps_the_log_whole(registry, tmp_path, monkeypatch):
    real, calls = fs.os.write, []

    def write(fd, data):  # the log is the only file of the run written while this is patched
        calls.append(len(data))
        real(fd, bytes(data[:10]))
        raise ENOSPC

    run(tiny_cfg(tmp_path, steps=N // 2), registry)
    before = (tmp_path / "log.jsonl").read_bytes()
    real_append = train_mod._append_log

    def append_on_full_disk(path, record):
        monkeypatch.setattr(fs.os, "write", write)
        try:
            real_append(path, record)
        finally:
            monkeypatch.setattr(fs.os, "write", real)

    monkeypatch.setattr(train_mod, "_append_log", append_on_full_disk)
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'log.jsonl'}: no space is left on the device"):
        run(tiny_cfg(tmp_path), registry)
    assert calls and (tmp_path / "log.jsonl").read_bytes() == before and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------- SIGKILL inside a checkpoint

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, sys.argv[3])
    import unidiff.training.checkpoint as ckpt, unidiff.training.train as train_mod
    from unidiff.plugins import Registry
    from helpers import EVAL_DOCS, TRAIN_DOCS, tiny_cfg

    mode, out = sys.argv[1], Path(sys.argv[2])
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    count = []
    if mode == "state":  # half of step N's training_state.pt is on disk
        real = train_mod.write_bytes
        def write_bytes(path, data):
            count.append(path)
            if len(count) == 2:
                real(path, bytes(data[: len(data) // 2]))
                die()
            real(path, data)
        train_mod.write_bytes = write_bytes
    elif mode == "weights":  # half of step N's last/model.safetensors is on disk
        real = ckpt.save_file
        def save_file(tensors, filename, *a, **k):
            count.append(filename)
            real(tensors, filename, *a, **k)
            if len(count) == 4:
                Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
                die()
        ckpt.save_file = save_file
    elif mode == "renames":  # last/ moved aside to .last.old, the new one not yet in place
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if Path(src).name == "last" and Path(dst).name == ".last.old":
                die()
        os.replace = replace
    registry = Registry()
    train_mod.train(tiny_cfg(out), registry, registry.modality("text"), TRAIN_DOCS, EVAL_DOCS)
    print("not killed")
""")


@pytest.mark.parametrize("mode", ["state", "weights", "renames"])
def test_sigkill_inside_a_checkpoint_write_then_resume_is_exact(reference, registry, tmp_path, mode):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(out), str(TESTS)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    result = run(tiny_cfg(out), registry)
    assert result.step == N and result.steps_run == N // 2  # resumed from the step-N/2 checkpoint
    assert_same_weights(out / "last", reference / "last")
    assert_same_weights(out / "model", reference / "model")
    assert [r["step"] for r in read_log(out)] == [r["step"] for r in read_log(reference)]
    assert leftovers(out) == [] and not (out / ".last.old").exists()


# --------------------------------------------------------------------------------- group 5: damaged state


def test_partial_or_non_utf8_last_log_line_is_dropped_with_a_warning(done, registry):
    log = done / "log.jsonl"
    for extra, tail in enumerate((b'{"step": 1', b"\xff\xfe\x00garbage\n"), 1):
        good = log.read_bytes()
        steps = [r["step"] for r in read_log(done)]
        log.write_bytes(good + tail)
        with pytest.warns(UserWarning, match=f"{log}: its last line is damaged .* dropped it"):
            run(tiny_cfg(done, steps=N + extra, eval_every=1), registry)
        assert [r["step"] for r in read_log(done)] == steps + [N + extra] and log.read_bytes().startswith(good)


def test_damaged_log_line_before_the_last_is_an_error_naming_it(done, registry):
    log = done / "log.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"not json\n" + lines[1])
    with pytest.raises(UnidiffError) as e:
        run(tiny_cfg(done, steps=N + 2), registry)
    msg = str(e.value)
    assert msg.startswith(f"{log}, line 1, is damaged (JSONDecodeError: ") and "delete that line" in msg
    assert log.read_bytes() == b"not json\n" + lines[1] and saved_step(done) == N  # nothing touched


def rewrite_state(out: Path, change) -> Path:
    path = out / "last" / STATE
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("change, needle", [
    (lambda s: s.pop("optimizer"), "is damaged: it has no optimizer, so the run cannot resume exactly"),
    (lambda s: (s.pop("ema"), s.pop("generator")), "is damaged: it has no ema, generator, so the run"),
    (lambda s: s.update(optimizer={"state": {}, "param_groups": []}), "is damaged (ValueError: "),
    (lambda s: s.update(step="5"), "is damaged (ValueError: step '5')"),
    (lambda s: s["ema"].pop("tok_emb.weight"), "is damaged (RuntimeError: "),
])
def test_damaged_training_state_says_what_and_how_to_go_on(done, registry, change, needle):
    path = rewrite_state(done, change)
    with pytest.raises(CheckpointError) as e:
        run(tiny_cfg(done, steps=N + 2), registry)
    msg = str(e.value)
    assert msg.startswith(f"{path} {needle}") and "\n" not in msg
    assert "start over with unidiff train --fresh" in msg
    assert f"--fresh --set train.init={done / 'model'}" in msg  # model/ is there: it is offered


def test_following_the_advice_goes_on_from_model(done, registry):
    rewrite_state(done, lambda s: s.pop("optimizer"))
    result = run(tiny_cfg(done, init=str(done / "model")), registry, fresh=True)
    assert result.step == N and result.steps_run == N
    assert [r["step"] for r in read_log(done)] == [N // 2, N]  # the new run's log only


def test_missing_or_corrupt_state_without_model_offers_only_fresh(done, registry):
    shutil.rmtree(done / "model")
    (done / "last" / STATE).unlink()
    with pytest.raises(CheckpointError) as e:
        run(tiny_cfg(done, steps=N + 2), registry)
    msg = str(e.value)
    assert msg == (f"{done / 'last'} is damaged: it has no {STATE} (the optimizer and RNG states), so the run cannot "
                   f"resume exactly; start over with unidiff train --fresh (it discards last/ and the log)")


def test_training_state_is_loaded_without_running_its_pickles(done, registry, tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    rewrite_state(done, lambda s: s.update(payload=Payload()))
    with pytest.raises(CheckpointError, match=r"is corrupt or truncated \(UnpicklingError\); start over"):
        run(tiny_cfg(done, steps=N + 2), registry)
    assert not marker.exists()


def test_resume_past_train_steps_says_so_and_names_model_only_if_there(done, registry):
    with pytest.raises(UnidiffError) as e:
        run(tiny_cfg(done, steps=N - 2), registry)
    assert str(e.value) == (f"{done / 'last'} is at step {N}, past train.steps = {N - 2}: raise train.steps to train "
                            f"on, start over with --fresh, or set train.out_dir to another folder; its model is "
                            f"{done / 'model'}")
    shutil.rmtree(done / "model")
    with pytest.raises(UnidiffError) as e:
        run(tiny_cfg(done, steps=N - 2), registry)
    assert str(done / "model") not in str(e.value) and saved_step(done) == N


def test_fresh_discards_last_and_log_and_repeats_the_run_exactly(reference, done, registry):
    (done / ".last.old").mkdir()  # a swap a crash interrupted: discarded too
    result = run(tiny_cfg(done), registry, fresh=True)
    assert result.steps_run == N
    assert_same_weights(done / "last", reference / "last")
    assert [r["step"] for r in read_log(done)] == [N // 2, N]
    assert not (done / ".last.old").exists() and leftovers(done) == []


def test_cli_fresh_and_a_finished_run_without_model(capsys, tmp_path):
    toml = tiny_toml(tmp_path, tmp_path / "run")
    assert cli(capsys, "train", str(toml), "--quiet")[0] == 0
    shutil.rmtree(tmp_path / "run" / "model")
    code, _, err = cli(capsys, "train", str(toml), "--quiet")
    assert code == 0 and f"{tmp_path / 'run' / 'model'} is gone: train again with --fresh" in err
    code, _, err = cli(capsys, "train", str(toml), "--quiet", "--fresh")
    assert code == 0 and "trained 2 steps to step 2" in err and (tmp_path / "run" / "model").is_dir()


def test_cli_damaged_state_is_one_line(capsys, tmp_path):
    toml = tiny_toml(tmp_path, tmp_path / "run")
    assert cli(capsys, "train", str(toml), "--quiet")[0] == 0
    rewrite_state(tmp_path / "run", lambda s: s.pop("optimizer"))
    line = one_error_line(*cli(capsys, "train", str(toml), "--quiet", "--set", "train.steps=4"))
    assert "it has no optimizer" in line and "--fresh" in line
