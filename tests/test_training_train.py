"""The training loop: learning-rate schedule, exact resume, the eval log, and crash safety of its checkpoints."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import unidiff.training.checkpoint as ckpt
import unidiff.training.train as train_mod
from unidiff.training.checkpoint import load_model
from unidiff.training.config import Config, TrainConfig
from unidiff.errors import CheckpointError, UnidiffError
from unidiff.fs import OutputError
from unidiff.plugins import Registry
from unidiff.training.train import STATE, lr_at, train

from helpers import EVAL_DOCS, N, TRAIN_DOCS, assert_same_weights, read_log, saved_step, tiny_cfg, weights


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


def run(cfg: Config, registry: Registry, eval_docs=EVAL_DOCS):
    return train(cfg, registry, registry.modality("text"), TRAIN_DOCS, eval_docs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, registry):
    """An uninterrupted N-step run: (out_dir, TrainResult)."""
    out = tmp_path_factory.mktemp("reference")
    return out, run(tiny_cfg(out), registry)


@pytest.fixture
def ref_copy(reference, tmp_path) -> Path:
    """A private copy of the reference run's out_dir."""
    dst = tmp_path / "run"
    shutil.copytree(reference[0], dst)
    return dst


def figures(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())["figures"]


class Interrupted(Exception):
    pass


# ---------------------------------------------------------------------------------------------------- lr_at


def test_lr_at_by_hand():
    cfg = TrainConfig(lr=1e-3, warmup=10, steps=110, min_lr_ratio=0.1)
    approx = lambda x: pytest.approx(x, rel=1e-12, abs=0)  # noqa: E731
    assert lr_at(0, cfg) == approx(1e-4)  # lr / warmup
    assert lr_at(4, cfg) == approx(5e-4)  # linear warm-up
    assert lr_at(9, cfg) == approx(1e-3)
    assert lr_at(10, cfg) == approx(1e-3)  # end of warm-up: the full lr
    assert lr_at(60, cfg) == approx(1e-3 * (0.1 + 0.9 / 2))  # cosine midpoint
    assert lr_at(35, cfg) == approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))))
    assert lr_at(110, cfg) == approx(1e-4)  # lr * min_lr_ratio at the end
    assert lr_at(500, cfg) == approx(1e-4)  # and it stays there
    lrs = [lr_at(s, cfg) for s in range(111)]
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # rises during warm-up (steps 0..9)
    assert lrs[9] == lrs[10] == pytest.approx(1e-3, rel=1e-12)  # the peak is reached at step warmup - 1
    assert all(a > b for a, b in zip(lrs[10:110], lrs[11:111]))  # then decays


def test_lr_at_without_warmup():
    cfg = TrainConfig(lr=2e-3, warmup=0, steps=100, min_lr_ratio=0.0)
    assert lr_at(0, cfg) == pytest.approx(2e-3, rel=1e-12)
    assert lr_at(50, cfg) == pytest.approx(1e-3, rel=1e-12)
    assert lr_at(100, cfg) == pytest.approx(0.0, abs=1e-18)


# ------------------------------------------------------------------------------------------ run, log, figures


def test_run_layout_log_and_figures(reference):
    out, result = reference
    assert result.step == N and result.out_dir == out
    assert not result.model.training
    assert sorted(p.name for p in out.iterdir()) == [".lock", "last", "log.jsonl", "model"]
    assert (out / ".lock").read_text() == ""  # the pid of a run in progress; empty once it ended
    assert sorted(p.name for p in (out / "last").iterdir()) == ["config.json", "model.safetensors", STATE]
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "model.safetensors"]
    assert saved_step(out) == N

    log = read_log(out)
    assert [r["step"] for r in log] == [N // 2, N]
    for r in log:
        assert set(r) == {"step", "elapsed_s", "eval_bits_per_token", "train_bits"}
        assert list(r["eval_bits_per_token"]) == ["text"]
        bits = r["eval_bits_per_token"]["text"]
        assert math.isfinite(bits) and 0 < bits < 16
        assert math.isfinite(r["train_bits"]) and r["train_bits"] > 0
    assert result.eval.bits_per_token == log[-1]["eval_bits_per_token"]
    assert result.eval.tokens["text"] > 0

    assert figures(out / "model") == {"step": N, "eval_bits_per_token": log[-1]["eval_bits_per_token"]}
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["training"] == tiny_cfg(out).to_dict()
    assert config["sampling"] == tiny_cfg(out).to_dict()["sample"]  # the [sample] recommendation travels along

    # model/ holds the EMA weights that TrainResult.model has; last/ the raw weights, which differ
    ema = result.model.state_dict()
    for k, v in weights(out / "model").items():
        assert torch.equal(v, ema[k]), k
    raw = weights(out / "last")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)
    state = torch.load(out / "last" / STATE, weights_only=True)
    assert set(state) == {"step", "optimizer", "ema", "generator", "torch_rng", "last_eval"}
    assert state["last_eval"]["nats_per_token"] == result.eval.nats_per_token
    for k, v in state["ema"].items():
        assert torch.equal(v, ema[k]), k


def test_no_eval_docs_no_log(registry, tmp_path):
    result = run(tiny_cfg(tmp_path, steps=2, save_every=2), registry, eval_docs=None)
    assert result.step == 2 and result.eval is None
    assert not (tmp_path / "log.jsonl").exists()
    assert figures(tmp_path / "model") == {"step": 2}


def test_same_seed_same_run(reference, registry, tmp_path):
    run(tiny_cfg(tmp_path), registry)
    assert_same_weights(tmp_path / "last", reference[0] / "last")
    assert_same_weights(tmp_path / "model", reference[0] / "model")


def test_train_argument_errors(registry, tmp_path):
    with pytest.raises(UnidiffError, match="pass the modality"):
        train(tiny_cfg(tmp_path), registry, train_docs=TRAIN_DOCS)
    with pytest.raises(UnidiffError, match="data.seq_len 64 exceeds model.max_len 32"):
        run(tiny_cfg(tmp_path, seq_len=64), registry)


# ---------------------------------------------------------------------------------------------- exact resume


def test_exact_resume(reference, registry, tmp_path, monkeypatch):
    """Interrupted right after the checkpoint at N/2 and resumed: the same parameters as the uninterrupted run."""
    real_save = train_mod._save

    def save_then_stop(out, model, ema, opt, generator, step, *args):
        real_save(out, model, ema, opt, generator, step, *args)
        if step == N // 2:
            raise Interrupted

    monkeypatch.setattr(train_mod, "_save", save_then_stop)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(Interrupted):
        run(cfg, registry)
    monkeypatch.undo()
    assert saved_step(tmp_path) == N // 2
    assert figures(tmp_path / "model")["step"] == N // 2

    torch.manual_seed(12345)  # disturb the global RNG: resume must restore it
    result = run(cfg, registry)
    assert result.step == N
    ref_out, ref_result = reference
    assert_same_weights(tmp_path / "last", ref_out / "last")  # raw weights
    assert_same_weights(tmp_path / "model", ref_out / "model")  # EMA weights
    ref_state = torch.load(ref_out / "last" / STATE, weights_only=True)
    state = torch.load(tmp_path / "last" / STATE, weights_only=True)
    assert state["step"] == N
    assert torch.equal(state["generator"], ref_state["generator"])
    # the eval log is the same too: one record per eval step, same figures
    strip = lambda log: [(r["step"], r["eval_bits_per_token"], r["train_bits"]) for r in log]  # noqa: E731
    assert strip(read_log(tmp_path)) == strip(read_log(ref_out))
    assert result.eval.bits_per_token == ref_result.eval.bits_per_token


def test_resume_with_more_steps_is_allowed(ref_copy, registry):
    result = run(tiny_cfg(ref_copy, steps=N + 4), registry)
    assert result.step == N + 4 and result.steps_run == 4
    assert saved_step(ref_copy) == N + 4
    assert [r["step"] for r in read_log(ref_copy)] == [N // 2, N, N + 4]
    assert figures(ref_copy / "model")["step"] == N + 4


def test_resume_when_already_done_changes_nothing(reference, ref_copy, registry):
    result = run(tiny_cfg(ref_copy), registry)
    assert result.step == N and result.steps_run == 0  # the command says it had already finished
    assert_same_weights(ref_copy / "last", reference[0] / "last")
    assert_same_weights(ref_copy / "model", reference[0] / "model")
    assert read_log(ref_copy) == read_log(reference[0])
    ema = weights(reference[0] / "model")
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ema[k]), k


@pytest.mark.parametrize("section, change", [
    ("model", dict(n_layers=2)),
    ("model", dict(dropout=0.0)),
    ("data", dict(seq_len=16)),
])
def test_resume_with_other_model_or_data_config_fails(reference, ref_copy, registry, section, change):
    with pytest.raises(UnidiffError) as e:
        run(tiny_cfg(ref_copy, **change), registry)
    msg = str(e.value)
    assert f"different [{section}] config" in msg
    assert str(ref_copy / "last") in msg
    assert_same_weights(ref_copy / "last", reference[0] / "last")  # untouched


def test_resume_from_corrupt_training_state(ref_copy, registry):
    path = ref_copy / "last" / STATE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        run(tiny_cfg(ref_copy, steps=N + 2), registry)
    assert f"{path} is corrupt or truncated" in str(e.value)


def test_resume_recovers_interrupted_swap(reference, ref_copy, registry):
    """A crash between the two renames of last/ left only .last.old: training picks it up again."""
    (ref_copy / "last").rename(ref_copy / ".last.old")
    result = run(tiny_cfg(ref_copy), registry)
    assert result.step == N
    assert not (ref_copy / ".last.old").exists()
    assert_same_weights(ref_copy / "last", reference[0] / "last")


# ----------------------------------------------------------------------------------------- crash during save


def failing_save_file(monkeypatch, fail_on_call: int) -> list:
    """Make the fail_on_call-th safetensors write raise (2 writes per checkpoint: last/ then model/)."""
    real, calls = ckpt.save_file, []

    def save_file(tensors, filename, *args, **kwargs):
        calls.append(Path(filename).parent.name)
        if len(calls) == fail_on_call:
            raise OSError(28, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_file)
    return calls


def test_crash_while_saving_last_keeps_previous_checkpoint(reference, registry, tmp_path, monkeypatch):
    calls = failing_save_file(monkeypatch, fail_on_call=4)  # the last/ write at step N (model/ goes first)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(OutputError) as e:
        run(cfg, registry)
    assert str(e.value) == (f"cannot write {tmp_path / 'last'}: no space is left on the device (ENOSPC): free some "
                            f"space, or set train.out_dir to another folder ({tmp_path / 'last'} still holds step "
                            f"{N // 2}, and a re-run resumes from it)")
    monkeypatch.undo()
    assert calls == [".model.tmp", ".last.tmp", ".model.tmp", ".last.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "last", "log.jsonl", "model"]  # no .last.tmp
    assert saved_step(tmp_path) == N // 2
    model, _, config = load_model(tmp_path / "last", registry)  # still loadable
    assert config["training"]["train"]["steps"] == N
    assert figures(tmp_path / "model")["step"] == N
    load_model(tmp_path / "model", registry)
    # resuming from the intact checkpoint reaches the uninterrupted run exactly
    result = run(cfg, registry)
    assert result.step == N
    assert_same_weights(tmp_path / "last", reference[0] / "last")
    assert_same_weights(tmp_path / "model", reference[0] / "model")
    # the eval at step N logged before the crash is dropped on resume and logged again once: the same log
    assert read_log(tmp_path) == [{**r, "elapsed_s": read_log(tmp_path)[i]["elapsed_s"]}
                                  for i, r in enumerate(read_log(reference[0]))]
    assert figures(tmp_path / "model") == figures(reference[0] / "model")


def test_crash_while_saving_model_keeps_previous_export(registry, tmp_path, monkeypatch):
    calls = failing_save_file(monkeypatch, fail_on_call=3)  # the model/ write at step N
    with pytest.raises(OutputError, match=f"cannot write {tmp_path / 'model'}: no space is left on the device"):
        run(tiny_cfg(tmp_path), registry)
    monkeypatch.undo()
    assert calls == [".model.tmp", ".last.tmp", ".model.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "last", "log.jsonl", "model"]  # no .model.tmp
    assert saved_step(tmp_path) == N // 2
    assert figures(tmp_path / "model")["step"] == N // 2
    load_model(tmp_path / "model", registry)


def test_rerun_after_crash_in_final_model_save_updates_model(reference, registry, tmp_path, monkeypatch):
    failing_save_file(monkeypatch, fail_on_call=3)
    cfg = tiny_cfg(tmp_path)
    with pytest.raises(OutputError):
        run(cfg, registry)
    monkeypatch.undo()
    result = run(cfg, registry)
    assert result.step == N
    assert figures(tmp_path / "model")["step"] == N
    assert_same_weights(tmp_path / "model", reference[0] / "model")
