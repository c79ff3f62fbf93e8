"""The training loop: AdamW, linear warm-up then cosine decay, gradient clipping, EMA, periodic held-out ELBO,
atomic checkpoints and exact resume.

Layout of ``train.out_dir``::

    last/   config.json, model.safetensors (raw weights), training_state.pt (optimizer, EMA, RNG, step)
    model/  config.json (+ figures), model.safetensors (EMA weights): the folder to generate or evaluate with
    log.jsonl  one line per evaluation

All randomness of the loop (windows, times, masks) comes from one CPU generator whose state is checkpointed, so a
run stopped and resumed from ``last/`` reaches the same parameters as one that never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from unidiff.checkpoint import (atomic_dir, ensure_writable, init_weights, load_weights, read_config, recover,
                                write_model)
from unidiff.config import Config
from unidiff.data import condition_modality, encode_conditions, encode_docs, make_holes, make_windows
from unidiff.device import precision_name, resolve_device, resolve_precision
from unidiff.errors import CheckpointError, UnidiffError
from unidiff.evaluate import EvalResult, batch_loss, evaluate
from unidiff.modality import Modality, grids_of, make_head
from unidiff.model import Denoiser
from unidiff.plugins import Registry
from unidiff.schedules import get_schedule
from unidiff.vocab import VocabLayout

STATE = "training_state.pt"


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
          train_docs: list | None = None, eval_docs: list | None = None) -> TrainResult:
    """Train (or resume) a denoiser.

    Args:
        cfg: the configuration.
        registry: plugins; a fresh `Registry()` if omitted.
        modality, train_docs, eval_docs: train on these contents instead of the dataset named in ``cfg.data``.
    """
    t_start = time.time()
    cfg.validate()
    registry = registry or Registry()
    tc = cfg.train
    if train_docs is None:
        modality, train_docs, eval_docs = load_dataset(cfg, registry)
    elif modality is None:
        raise UnidiffError("train(): pass the modality of train_docs")
    device = resolve_device(tc.device)
    amp = resolve_precision(tc.precision, device, cpu_bf16=True)
    schedule = get_schedule(tc.schedule)
    out = Path(tc.out_dir)
    ensure_writable(out)

    modalities = {modality.name: modality}
    cond_name = condition_modality(train_docs)  # conditions may be of another modality, e.g. a class name as text
    if cond_name is not None and cond_name not in modalities:
        modalities[cond_name] = registry.modality(cond_name)
    cond_modality = modalities[cond_name or modality.name]
    # An autoregressive model's rows start with BOS: its first token is predicted from BOS, not from nothing.
    layout = VocabLayout({m.name: m.vocab_size for m in modalities.values()},
                         blank=cfg.data.holes > 0 or cfg.data.cond_hole > 0,
                         markers=cfg.model.kind == "autoregressive")
    train_w = make_windows(encode_docs(train_docs, modality, layout), cfg.data.seq_len, layout, modality.name,
                           encode_conditions(train_docs, cond_modality, layout), cond_name, cfg.data.cond_hole)
    eval_w = make_windows(encode_docs(eval_docs, modality, layout), cfg.data.seq_len, layout, modality.name) \
        if eval_docs else None

    torch.manual_seed(tc.seed)
    model = Denoiser(cfg.model, layout, {m.name: make_head(m, cfg.model.d_model) for m in modalities.values()},
                     grids_of(modalities.values()))
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
    recover(out / "last")
    if (out / "last").exists():
        step, last_eval = _resume(out / "last", cfg, model, ema, opt, generator)
        _truncate_log(out / "log.jsonl", step)
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
        sums, counts = batch_loss(model, batch.to(device), schedule, generator, amp)
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
        bar.update(1)
        bar.set_postfix(bits=f"{loss.item() / math.log(2):.3f}", gnorm=f"{grad_norm.item():.2f}")
        done = step == tc.steps
        if eval_w is not None and (step % tc.eval_every == 0 or done):
            last_eval = evaluate(ema, eval_w, schedule, tc.batch_size, tc.eval_windows, amp_dtype=amp)
            record = {"step": step, "elapsed_s": round(time.time() - t_start, 1),
                      "eval_bits_per_token": last_eval.bits_per_token, "train_bits": loss.item() / math.log(2)}
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            bar.write(f"step {step}: held-out {last_eval.summary()}")
        if step % tc.save_every == 0 or done:
            _save(out, model, ema, opt, generator, step, modalities, registry, extra, last_eval)
    bar.close()
    return TrainResult(out, ema.eval(), step, last_eval, time.time() - t_start, step - first_step, precision_name(amp))


def _save(out, model, ema, opt, generator, step, modalities, registry, extra, last_eval) -> None:
    # model/ first: if writing last/ then fails, a re-run resumes from the previous last/ and redoes the steps,
    # so model/ never lags behind a last/ that claims the run is finished.
    figures = {"step": step}
    if last_eval is not None:
        figures["eval_bits_per_token"] = last_eval.bits_per_token
    with atomic_dir(out / "model") as tmp:
        write_model(tmp, ema, modalities, registry, extra={**extra, "figures": figures},
                    dtype=torch.float16 if extra["training"]["train"]["save_dtype"] == "fp16" else None)
    with atomic_dir(out / "last") as tmp:
        write_model(tmp, model, modalities, registry, extra=extra)
        state = {"step": step, "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                 "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                 "last_eval": vars(last_eval) if last_eval is not None else None}
        if torch.cuda.is_available():  # dropout on the GPU draws from the CUDA generators
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        torch.save(state, tmp / STATE)


def _resume(folder: Path, cfg: Config, model, ema, opt, generator) -> tuple[int, EvalResult | None]:
    saved = read_config(folder).get("training", {})
    now = cfg.to_dict()
    for section in ("model", "data"):
        if saved.get(section) != now[section]:
            raise UnidiffError(f"{folder} holds a run with a different [{section}] config; resume with the same "
                               f"config, or pick a fresh train.out_dir")
    load_weights(folder, model)
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{folder / STATE} is corrupt or truncated ({type(e).__name__}); delete {folder} "
                              f"to start over") from None
    opt.load_state_dict(state["optimizer"])
    ema.load_state_dict(state["ema"])
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    last_eval = EvalResult(**state["last_eval"]) if state.get("last_eval") else None
    return int(state["step"]), last_eval


def _truncate_log(path: Path, step: int) -> None:
    """Drop log records past the resumed step (a crash after an evaluation but before its checkpoint), so the
    log of a resumed run reads like that of an uninterrupted one."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(ln + "\n" for ln in lines))
    os.replace(tmp, path)
