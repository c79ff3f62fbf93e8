"""Held-out evaluation: the diffusion ELBO (of the model's noise process) in nats and bits per token, per modality.

The estimate is a Monte-Carlo average over windows and times; with a fixed ``seed`` it is deterministic, and
``samples`` draws of t per window lower its variance. Because the ELBO is an upper bound on the negative
log-likelihood, the reported bits per token are an upper bound on the model's true figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from unidiff.training.checkpoint import load_model
from unidiff.data import Windows, encode_docs, make_windows
from unidiff.device import precision_name, resolve_device, resolve_precision
from unidiff.errors import CheckpointError
from unidiff.modality import grids_of
from unidiff.models.transformer import Denoiser
from unidiff.plugins import Registry
from unidiff.process import Process, get_process
from unidiff.training.objectives import ABSORBING, batch_loss, objective_of
from unidiff.process.schedules import Schedule, get_schedule


@dataclass
class EvalResult:
    nats_per_token: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    @property
    def bits_per_token(self) -> dict[str, float]:
        return {k: v / math.log(2) for k, v in self.nats_per_token.items()}

    def summary(self) -> str:
        return ", ".join(f"{k}: {b:.4f} bits/token ({self.tokens[k]} tokens)" for k, b in self.bits_per_token.items())


@torch.no_grad()
def evaluate(model: Denoiser, windows: Windows, schedule: Schedule, batch_size: int = 32,
             max_windows: int | None = None, samples: int = 1, seed: int = 1234,
             amp_dtype: torch.dtype | None = None, progress: bool = False,
             process: Process = ABSORBING) -> EvalResult:
    """Held-out ELBO (under ``process``) over the non-overlapping windows of ``windows`` (deterministic for a given
    seed); ``progress`` shows a bar of the windows done on stderr (on a terminal)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    M = len(model.layout.names)
    sums, counts = torch.zeros(M, dtype=torch.float64), torch.zeros(M, dtype=torch.float64)
    n = len(windows.tile_starts[:max_windows])
    bar = tqdm(total=n * samples, unit="window", desc="eval", leave=False, disable=None if progress else True,
               dynamic_ncols=True)
    for _ in range(samples):
        for batch in windows.tiles(batch_size, max_windows):
            s, c = batch_loss(model, batch.to(device), schedule, generator, amp_dtype, process=process)
            sums += s.double().cpu()
            counts += c.double().cpu()
            bar.update(len(batch.ids))
    bar.close()
    model.train(was_training)
    result = EvalResult()
    for name, b in model.layout.blocks.items():
        if counts[b.index] > 0:
            result.nats_per_token[name] = float(sums[b.index] / counts[b.index])
            result.tokens[name] = int(counts[b.index]) // samples
    return result


def evaluate_model(name_or_path, registry=None, device: str = "auto", precision: str = "fp32",
                   max_windows: int | None = None, samples: int = 1, seed: int = 1234,
                   batch_size: int = 32, progress: bool = False) -> tuple[EvalResult, dict]:
    """Held-out ELBO of a model folder or registered model on the held-out split of the data it was trained on,
    in fp32 by default (the figures of record: the same on every machine).

    Returns:
        (result, info): info names the dataset, split, window length, number of windows and the precision.
    """
    registry = registry or Registry()
    dev = resolve_device(device)
    model, modalities, config = load_model(name_or_path, registry, dev)
    training = config.get("training")
    if not training:
        raise CheckpointError(f"{name_or_path} records no training data to evaluate on (no \"training\" entry in "
                              f"its config.json)")
    data, train_cfg = training["data"], training["train"]
    builder, meta = registry.dataset(data["dataset"])
    modality = modalities[meta["modality"]]
    docs = builder(data["eval_split"])
    windows = make_windows(encode_docs(docs, modality, model.layout), data["seq_len"], model.layout, modality.name,
                           grids=grids_of(modalities.values()))
    amp = resolve_precision(precision, dev)
    result = evaluate(model, windows, get_schedule(train_cfg["schedule"]), batch_size, max_windows, samples, seed,
                      amp, progress, get_process(train_cfg.get("process", "absorbing"), registry))
    n = len(windows.tile_starts) if max_windows is None else min(max_windows, len(windows.tile_starts))
    info = {"dataset": data["dataset"], "split": data["eval_split"], "seq_len": data["seq_len"], "windows": n,
            "objective": objective_of(model).name, "precision": precision_name(amp)}
    return result, info
