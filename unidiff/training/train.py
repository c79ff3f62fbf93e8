"""The training loop: AdamW, linear warm-up then cosine decay, gradient clipping, EMA, periodic held-out ELBO,
atomic checkpoints and exact resume.

Layout of ``train.out_dir``::

    last/   config.json, model.safetensors (raw weights), training_state.pt (optimizer, EMA, RNG, step)
    model/  config.json (+ figures), model.safetensors (EMA weights): the folder to generate or evaluate with
    log.jsonl  one line per evaluation
    .lock   held (flock) by the run in progress, with its pid: a second run into the same folder is refused

All randomness of the loop (windows, times, masks) comes from one CPU generator whose state is checkpointed, so a
run stopped and resumed from ``last/`` reaches the same parameters as one that never stopped. Every write replaces
its file or folder in one rename (`unidiff.fs`), so a crash or a full disk leaves the previous checkpoint whole;
a loss, gradient or weight that stops being a finite number ends the run (`TrainingError`) before anything of
that step is written.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from unidiff.models.architectures import build_denoiser
from unidiff.training.checkpoint import atomic_dir, init_weights, load_weights, read_config, recover, write_model
from unidiff.training.config import Config
from unidiff.data import condition_modality, encode_conditions, encode_docs, make_holes, make_windows
from unidiff.device import precision_name, resolve_device, resolve_precision
from unidiff.errors import CheckpointError, UnidiffError
from unidiff.training.evaluate import EvalResult, evaluate
from unidiff.training.objectives import batch_loss, objective_of
from unidiff.fs import OutputError, atomic_write, ensure_writable, folder_lock, os_error, write_bytes, writes_here
from unidiff.modality import Modality, grids_of
from unidiff.models.transformer import Denoiser
from unidiff.plugins import Registry
from unidiff.process import get_process
from unidiff.process.schedules import get_schedule
from unidiff.vocab import VocabLayout

STATE = "training_state.pt"
STATE_KEYS = ("step", "optimizer", "ema", "generator", "torch_rng")
ELSEWHERE = "set train.out_dir to another folder"


class TrainingError(UnidiffError):
    """A run that cannot go on: its loss, gradients or weights stopped being finite numbers."""


@dataclass
class TrainResult:
    out_dir: Path
    model: Denoiser  # the EMA model (what model/ holds)
    step: int
    eval: EvalResult | None
    seconds: float
    steps_run: int = 0  # steps this call trained (0: a resumed run that had already finished)
    precision: str = "fp32"  # what the forward passes ran in


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def load_dataset(cfg: Config, registry: Registry) -> tuple[Modality, list, list]:
    builder, meta = registry.dataset(cfg.data.dataset)
    modality = registry.modality(meta["modality"])
    return modality, builder(cfg.data.train_split), builder(cfg.data.eval_split)


def train(cfg: Config, registry: Registry | None = None, modality: Modality | None = None,
          train_docs: list | None = None, eval_docs: list | None = None, fresh: bool = False) -> TrainResult:
    """Train (or resume) a denoiser.

    Args:
        cfg: the configuration.
        registry: plugins; a fresh `Registry()` if omitted.
        modality, train_docs, eval_docs: train on these contents instead of the dataset named in ``cfg.data``.
        fresh: discard the checkpoint ``last/`` and the log of an earlier run in ``train.out_dir`` and start at
            step 0 (``model/`` stays until the first save replaces it, so ``train.init`` may name it).
    """
    t_start = time.time()
    cfg.validate()
    registry = registry or Registry()
    if train_docs is not None and modality is None:
        raise UnidiffError("train(): pass the modality of train_docs")
    out = ensure_writable(Path(cfg.train.out_dir), ELSEWHERE)
    with folder_lock(out):
        if fresh:
            _discard(out)
        return _train(cfg, registry, modality, train_docs, eval_docs, out, t_start)


def _train(cfg: Config, registry: Registry, modality: Modality | None, train_docs: list | None,
           eval_docs: list | None, out: Path, t_start: float) -> TrainResult:
    """The run itself, in an out_dir that this process holds locked."""
    tc = cfg.train
    schedule = get_schedule(tc.schedule)
    process = get_process(tc.process, registry)  # an unknown name is refused before any data is read
    if train_docs is None:
        modality, train_docs, eval_docs = load_dataset(cfg, registry)
    device = resolve_device(tc.device)
    amp = resolve_precision(tc.precision, device, cpu_bf16=True)

    modalities = {modality.name: modality}
    cond_name = condition_modality(train_docs)  # conditions may be of another modality, e.g. a class name as text
    if cond_name is not None and cond_name not in modalities:
        modalities[cond_name] = registry.modality(cond_name)
    cond_modality = modalities[cond_name or modality.name]
    # An autoregressive model's rows start with BOS: its first token is predicted from BOS, not from nothing.
    layout = VocabLayout({m.name: m.vocab_size for m in modalities.values()},
                         blank=cfg.data.holes > 0 or cfg.data.cond_hole > 0,
                         markers=objective_of(cfg.model).markers)
    grids = grids_of(modalities.values())  # the 2-D cells of grid modalities' tokens come with the rows
    train_w = make_windows(encode_docs(train_docs, modality, layout), cfg.data.seq_len, layout, modality.name,
                           encode_conditions(train_docs, cond_modality, layout), cond_name, cfg.data.cond_hole, grids)
    eval_w = make_windows(encode_docs(eval_docs, modality, layout), cfg.data.seq_len, layout, modality.name,
                          grids=grids) if eval_docs else None

    torch.manual_seed(tc.seed)
    model = build_denoiser(cfg.model, layout, {m.name: m for m in modalities.values()}, registry)
    if tc.init:
        init_weights(tc.init, model, registry)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    decay, no_decay = [], []
    for p in model.parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=tc.lr, betas=(tc.beta1, tc.beta2), fused=device.type == "cuda")
    generator = torch.Generator().manual_seed(tc.seed)
    step = 0

    last_eval: EvalResult | None = None
    saved: int | None = None  # the step that last/ holds
    recover(out / "last")
    if (out / "last").exists():
        step, last_eval = _resume(out, cfg, model, ema, opt, generator)
        if step > tc.steps:
            model_dir = f"; its model is {out / 'model'}" if (out / "model").is_dir() else ""
            raise UnidiffError(f"{out / 'last'} is at step {step}, past train.steps = {tc.steps}: raise train.steps "
                               f"to train on, start over with --fresh, or set train.out_dir to another folder"
                               f"{model_dir}")
        _truncate_log(out / "log.jsonl", step)
        saved = step
        print(f"resumed from {out / 'last'} at step {step}")

    # "modality": what the model generates by default; "condition_modality": what its conditions are written in.
    extra = {"training": cfg.to_dict(), "sampling": cfg.to_dict()["sample"], "modality": modality.name,
             "condition_modality": cond_name or modality.name}
    first_step = step
    bar = tqdm(total=tc.steps, initial=step, disable=None if tc.progress else True, desc="train",
               dynamic_ncols=True)
    model.train()
    while step < tc.steps:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tc)
        batch = train_w.sample(tc.batch_size, generator, cfg.data.cond_dropout, cfg.data.cond_target,
                               cfg.data.content_given)
        if cfg.data.holes:
            batch = make_holes(batch, layout.blank, cfg.data.holes, cfg.data.hole_max, generator)
        sums, counts = batch_loss(model, batch.to(device), schedule, generator, amp, process=process)
        loss = sums.sum() / counts.sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        step += 1
        with torch.no_grad():
            d = min(tc.ema, (1 + step) / (10 + step)) if tc.ema > 0 else 0.0
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1.0 - d)
        loss_value, norm = loss.item(), grad_norm.item()  # the bar reads them anyway: no extra synchronisation
        if not math.isfinite(loss_value):
            raise _diverged(out, step, f"loss is {loss_value}", tc, saved)
        if not math.isfinite(norm):
            raise _diverged(out, step, f"gradient norm is {norm}", tc, saved)
        bar.update(1)
        bar.set_postfix(bits=f"{loss_value / math.log(2):.3f}", gnorm=f"{norm:.2f}")
        done = step == tc.steps
        if eval_w is not None and (step % tc.eval_every == 0 or done):
            last_eval = evaluate(ema, eval_w, schedule, tc.batch_size, tc.eval_windows, amp_dtype=amp, process=process)
            record = {"step": step, "elapsed_s": round(time.time() - t_start, 1),
                      "eval_bits_per_token": last_eval.bits_per_token, "train_bits": loss_value / math.log(2)}
            _append_log(out / "log.jsonl", record)
            bar.write(f"step {step}: held-out {last_eval.summary()}")
        if step % tc.save_every == 0 or done:
            for name, net in (("weights", model), ("EMA weights", ema)):
                if not _finite(net):
                    raise _diverged(out, step, f"{name} are no longer finite", tc, saved)
            try:
                _save(out, model, ema, opt, generator, step, modalities, registry, extra, last_eval)
            except OutputError as e:
                kept = (f"{out / 'last'} still holds step {saved}, and a re-run resumes from it" if saved is not None
                        else "no checkpoint of this run was written yet")
                raise OutputError(f"{e} ({kept})", e.errno) from None
            saved = step
    bar.close()
    return TrainResult(out, ema.eval(), step, last_eval, time.time() - t_start, step - first_step, precision_name(amp))


def _finite(net: torch.nn.Module) -> bool:
    """Whether every parameter of ``net`` is a finite number (one synchronisation)."""
    return bool(torch.stack([p.isfinite().all() for p in net.parameters()]).all())


def _diverged(out: Path, step: int, what: str, tc, saved: int | None) -> TrainingError:
    kept = (f"{out / 'last'} still holds step {saved}, and a re-run resumes from it with the [train] settings it is "
            f"given" if saved is not None else "nothing of this run was saved")
    return TrainingError(f"training diverged at step {step}: the {what}; nothing of this step was saved ({kept}). "
                         f"Lower train.lr (now {tc.lr:g}), lengthen train.warmup (now {tc.warmup}) or lower "
                         f"train.grad_clip (now {tc.grad_clip:g}), and train again")


def _discard(out: Path) -> None:
    """--fresh: remove an earlier run's checkpoint (a crash inside a swap included) and log. last/ is first renamed
    aside, so a crash here cannot leave half a checkpoint that a later run would resume from."""
    try:
        for name in ("last", ".last.old", ".last.tmp"):
            if (out / name).exists():
                aside = out / f".{name.lstrip('.')}.discarded"
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(out / name, aside)
                shutil.rmtree(aside)
        (out / "log.jsonl").unlink(missing_ok=True)
    except OSError as e:
        raise os_error(out, e, ELSEWHERE) from None


def _save(out, model, ema, opt, generator, step, modalities, registry, extra, last_eval) -> None:
    # model/ first: if writing last/ then fails, a re-run resumes from the previous last/ and redoes the steps,
    # so model/ never lags behind a last/ that claims the run is finished.
    figures = {"step": step}
    if last_eval is not None:
        figures["eval_bits_per_token"] = last_eval.bits_per_token
    folder = out / "model"
    try:
        with atomic_dir(folder) as tmp:
            write_model(tmp, ema, modalities, registry, extra={**extra, "figures": figures},
                        dtype=torch.float16 if extra["training"]["train"]["save_dtype"] == "fp16" else None)
        folder = out / "last"
        with atomic_dir(folder) as tmp:
            write_model(tmp, model, modalities, registry, extra=extra)
            state = {"step": step, "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                     "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                     "last_eval": vars(last_eval) if last_eval is not None else None}
            if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
                state["cuda_rng"] = torch.cuda.get_rng_state_all()
            buffer = io.BytesIO()  # serialised in memory: a full disk then fails in a plain write, as an OSError
            torch.save(state, buffer)
            write_bytes(tmp / STATE, buffer.getbuffer())
    except Exception as e:  # a full disk: safetensors and the fsyncs raise their own kinds of error
        if not writes_here(e):
            raise
        raise os_error(folder, e, ELSEWHERE) from None


def _way_out(out: Path) -> str:
    """How to go on when last/ cannot be resumed: start over, or from the weights of model/ when it is there."""
    fresh = "start over with unidiff train --fresh (it discards last/ and the log)"
    model = out / "model"
    if not (model / "config.json").is_file():
        return fresh
    return (f"{fresh}, or go on from the weights of {model} (the optimizer state and the step start afresh) with "
            f"--fresh --set train.init={model}")


def _normalised(section: str, values):
    """A saved config section with the defaults of keys added since it was written (e.g. model.architecture), so
    that a run resumes after an upgrade; as saved if it does not read as a config."""
    try:
        return Config.from_dict({section: values}).to_dict()[section]
    except (UnidiffError, TypeError, AttributeError):
        return values


def _resume(out: Path, cfg: Config, model, ema, opt, generator) -> tuple[int, EvalResult | None]:
    folder, path = out / "last", out / "last" / STATE
    try:
        saved = read_config(folder).get("training")
        saved = saved if isinstance(saved, dict) else {}
        for section in ("model", "data"):
            if _normalised(section, saved.get(section)) != cfg.to_dict()[section]:
                raise UnidiffError(f"{folder} holds a run with a different [{section}] config; resume with the same "
                                   f"config, start over with --fresh, or set train.out_dir to another folder")
        load_weights(folder, model)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; to go on, {_way_out(out)}") from None
    if not path.is_file():
        raise CheckpointError(f"{folder} is damaged: it has no {STATE} (the optimizer and RNG states), so the run "
                              f"cannot resume exactly; {_way_out(out)}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}); {_way_out(out)}") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise CheckpointError(f"{path} is damaged: it has no {', '.join(missing)}, so the run cannot resume exactly; "
                              f"{_way_out(out)}")
    try:
        if isinstance(state["step"], bool) or not isinstance(state["step"], int) or state["step"] < 0:
            raise ValueError(f"step {state['step']!r}")
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        last_eval = EvalResult(**state["last_eval"]) if state.get("last_eval") else None
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        detail = " ".join(str(e).split())[:200]
        raise CheckpointError(f"{path} is damaged ({type(e).__name__}: {detail}), so the run cannot resume "
                              f"exactly; {_way_out(out)}") from None
    return state["step"], last_eval


def _log_records(path: Path) -> list[dict]:
    """The records of log.jsonl. A damaged last line (a write cut short by a crash or a power loss) is dropped with
    a warning; a damaged line before it is an error that says which line and what to do."""
    lines = path.read_bytes().split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    records = []
    for i, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
            if not isinstance(record, dict) or isinstance(record.get("step"), bool) \
                    or not isinstance(record.get("step"), int):
                raise ValueError("a record without an integer step")
        except (UnicodeDecodeError, ValueError) as e:  # json.JSONDecodeError is a ValueError
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:120]}"
            if i == len(lines):
                warnings.warn(f"{path}: its last line is damaged ({why}), as a crash while it was written leaves "
                              f"it; dropped it", stacklevel=3)
                continue
            raise UnidiffError(f"{path}, line {i}, is damaged ({why}): delete that line, or the whole file (it "
                               f"only records the evaluations; the checkpoint in {path.parent / 'last'} is not "
                               f"affected), and train again") from None
        records.append(record)
    return records


def _append_log(path: Path, record: dict) -> None:
    """Add one record to log.jsonl; the file is replaced whole (it holds one short line per evaluation)."""
    old = path.read_bytes() if path.exists() else b""
    atomic_write(path, old + (json.dumps(record) + "\n").encode("utf-8"), ELSEWHERE)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past the resumed step (a crash after an evaluation but before its checkpoint), so the
    log of a resumed run reads like that of an uninterrupted one."""
    if path.exists():
        kept = [r for r in _log_records(path) if r["step"] <= step]
        atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept), ELSEWHERE)
