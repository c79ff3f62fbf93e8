"""Held-out evaluation: the masked-diffusion ELBO in nats and bits per token, per modality.

The estimate is a Monte-Carlo average over windows and times; with a fixed ``seed`` it is deterministic, and
``samples`` draws of t per window lower its variance. Because the ELBO is an upper bound on the negative
log-likelihood, the reported bits per token are an upper bound on the model's true figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from unidiff.checkpoint import load_model
from unidiff.data import Batch, Windows, encode_docs, make_windows
from unidiff.device import autocast, precision_name, resolve_device, resolve_precision
from unidiff.errors import CheckpointError
from unidiff.losses import corrupt, elbo_terms, per_modality, sample_times
from unidiff.model import Denoiser
from unidiff.plugins import Registry
from unidiff.schedules import Schedule, get_schedule


def batch_elbo(model: Denoiser, batch: Batch, schedule: Schedule, generator: torch.Generator,
               amp_dtype: torch.dtype | None = None, stratified: bool = True):
    """One Monte-Carlo ELBO estimate on a batch. Positions in ``batch.blank_ok`` are variable-length holes (see
    `unidiff.data.make_holes`): the model is told so and may predict BLANK there. Positions in ``batch.second`` are
    noised at a second time per row, drawn independently: each segment's terms are then its own ELBO given the
    other's noised state.

    Returns:
        (sums, counts): (M,) summed ELBO terms (nats) and target-token counts per modality; sums carries gradient.
    """
    device = batch.ids.device
    t = sample_times(len(batch.ids), generator, stratified=stratified, device=device)
    if batch.second is not None:  # e.g. a caption noised independently of its image: per-position times
        t2 = sample_times(len(batch.ids), generator, stratified=stratified, device=device)
        t = torch.where(batch.second, t2.unsqueeze(1), t.unsqueeze(1))
    xt, masked = corrupt(batch.ids, t, schedule, batch.targets, generator)
    hole = batch.blank_ok
    with autocast(device, amp_dtype):
        marks = {} if hole is None else {"hole": hole}  # models without holes need not take the argument
        h = model.features(xt, batch.modality, batch.positions, batch.pad_mask, **marks)  # (B, L, d)
        logits = model.logits(h[masked], batch.modality[masked], **({} if hole is None else {"blank": hole[masked]}))
    nll = torch.zeros(batch.ids.shape, device=device)
    nll[masked] = F.cross_entropy(logits.float(), batch.ids[masked], reduction="none")
    terms = elbo_terms(nll, masked, t, schedule)
    return per_modality(terms, batch.targets, batch.modality, len(model.layout.names))


def batch_nll(model: Denoiser, batch: Batch, amp_dtype: torch.dtype | None = None):
    """The exact negative log-likelihood of an autoregressive model on a batch: each target token scored given
    everything before it (a target at position 0 has no context and is not scored). Same return as `batch_elbo`."""
    targets = batch.targets.clone()
    targets[:, 0] = False
    with autocast(batch.ids.device, amp_dtype):
        h = model.features(batch.ids, batch.modality, batch.positions, batch.pad_mask)
        logits = model.logits(h[targets], batch.modality[targets])
    nll = torch.zeros(batch.ids.shape, device=batch.ids.device)
    nll[targets] = F.cross_entropy(logits.float(), batch.ids[targets], reduction="none")
    return per_modality(nll, targets, batch.modality, len(model.layout.names))


def batch_loss(model: Denoiser, batch: Batch, schedule: Schedule, generator: torch.Generator,
               amp_dtype: torch.dtype | None = None, stratified: bool = True):
    """The training/evaluation objective of the model's kind: the masked-diffusion ELBO, or the exact NLL of an
    autoregressive model (which draws nothing from ``generator``)."""
    if getattr(getattr(model, "cfg", None), "kind", "diffusion") == "autoregressive":
        return batch_nll(model, batch, amp_dtype)
    return batch_elbo(model, batch, schedule, generator, amp_dtype, stratified)


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
             amp_dtype: torch.dtype | None = None, progress: bool = False) -> EvalResult:
    """Held-out ELBO over the non-overlapping windows of ``windows`` (deterministic for a given seed);
    ``progress`` shows a bar of the windows done on stderr (on a terminal)."""
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
            s, c = batch_loss(model, batch.to(device), schedule, generator, amp_dtype)
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
    windows = make_windows(encode_docs(docs, modality, model.layout), data["seq_len"], model.layout, modality.name)
    amp = resolve_precision(precision, dev)
    result = evaluate(model, windows, get_schedule(train_cfg["schedule"]), batch_size, max_windows, samples, seed,
                      amp, progress)
    n = len(windows.tile_starts) if max_windows is None else min(max_windows, len(windows.tile_starts))
    info = {"dataset": data["dataset"], "split": data["eval_split"], "seq_len": data["seq_len"], "windows": n,
            "objective": "NLL" if model.cfg.kind == "autoregressive" else "ELBO", "precision": precision_name(amp)}
    return result, info
