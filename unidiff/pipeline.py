"""The high-level API: load a model, turn user requests into segments, sample, decode.

    from unidiff import Pipeline, Segment
    pipe = Pipeline.load("text")                       # a registered model name or a model folder
    out = pipe.complete("ROMEO.\\n", num=2, length=200)  # prompt + continuation, as strings
    out = pipe.generate([[Segment("text", "KING.\\n"), Segment("text", role="generate", length=64)]])
    print(out.texts, out.nfe, out.tokens_per_second)

Requests are checked before any work: an unknown modality, content the modality cannot encode, or a row longer
than the model's context each raise a `UnidiffError` naming the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from unidiff import checks
from unidiff.training.checkpoint import load_model
from unidiff.checks import MAX_GUIDANCE
from unidiff.training.config import SampleConfig
from unidiff.data import (Row, Segment, Tokens, check_samples, check_schedule, collate, encode_content, encode_row,
                          parse_holes)
from unidiff.device import autocast, precision_name, resolve_device, resolve_precision, run_conditions
from unidiff.errors import UnidiffError
from unidiff.modality import checked_decode, optional
from unidiff.plugins import Registry
from unidiff.models.quantize import bad_quantize, quantize_int8
from unidiff.sampling.causal import sample_causal
from unidiff.sampling.loop import GroupSpec, SampleOutput, sample
from unidiff.process import get_process
from unidiff.training.objectives import marks, objective_of
from unidiff.rng import noise_uniform
from unidiff.process.schedules import Schedule
from unidiff.sampling.stream import sample_stream
from unidiff.models.symmetry import Mirrored, mirror_perms
from unidiff.vocab import VocabLayout


WINDOW_SEED_STRIDE = 10**6  # complete_long: window w of sample i uses seed + w * stride + i


@dataclass
class Generation:
    """Decoded outputs of one `Pipeline.generate` call.

    samples: per row, its runs as (modality, content); adjacent segments of one modality form one run.
    nfe: per row, the forward passes it took.
    generated: per row, the number of generated tokens.
    seconds: wall time of the sampling loop.
    tokens: per row, the local ids of its generated (and edited) segments, in order, BLANK dropped: what a
        follow-up request can give back without decoding and re-encoding.
    precision: what the forward passes ran in: "fp32", "bf16", or "int8" (int8 linear layers, fp32 elsewhere).
    """

    samples: list[list[tuple[str, Any]]]
    nfe: list[int]
    generated: list[int]
    seconds: float
    tokens: list[list[int]] | None = None
    precision: str = "fp32"

    @property
    def tokens_per_second(self) -> float:
        return sum(self.generated) / max(self.seconds, 1e-9)

    @property
    def texts(self) -> list[Any]:
        """Per row, the content of its last run (the whole row when it holds a single modality)."""
        return [runs[-1][1] for runs in self.samples]

    def contents(self, modality: str) -> list[Any]:
        """Per row, the content of its first run of ``modality`` (e.g. the caption of a caption + image row)."""
        out = []
        for runs in self.samples:
            found = [content for name, content in runs if name == modality]
            if not found:
                raise UnidiffError(f"a generated row has no {modality!r} run")
            out.append(found[0])
        return out

    def report(self) -> str:
        nfe = sorted(set(self.nfe))
        nfe_s = str(nfe[0]) if len(nfe) == 1 else f"{nfe[0]}-{nfe[-1]}"
        return (f"{len(self.samples)} sample(s), {sum(self.generated)} tokens in {self.seconds:.2f} s: "
                f"NFE {nfe_s} per sample, {self.tokens_per_second:.0f} tokens/s ({run_conditions(self.precision)})")


def decode_row(ids: torch.Tensor, row: Row, layout: VocabLayout, modalities) -> list[tuple[str, Any]]:
    """Decode a finished row run by run (a run: adjacent spans of one modality)."""
    runs: list[list] = []
    for name, start, stop, _ in row.spans:
        if runs and runs[-1][0] == name and runs[-1][2] == start:
            runs[-1][2] = stop
        else:
            runs.append([name, start, stop])
    return [(name, checked_decode(modalities[name], local_ids(ids[start:stop], name, layout)))
            for name, start, stop in runs]


def local_ids(part: torch.Tensor, name: str, layout: VocabLayout) -> list[int]:
    """A stretch of one modality's joint ids as its local ids, BLANK (the unused positions of variable-length
    holes) dropped."""
    if layout.has_blank:
        part = part[part != layout.blank]
    return layout.to_local(name, part).tolist()


def _concat(outs: list[SampleOutput]) -> SampleOutput:
    """One `SampleOutput` of batches run one after the other (rows padded to the widest)."""
    if len(outs) == 1:
        return outs[0]
    width = max(o.ids.shape[1] for o in outs)
    ids = torch.cat([torch.nn.functional.pad(o.ids.cpu(), (0, width - o.ids.shape[1])) for o in outs])
    return SampleOutput(ids=ids, nfe=torch.cat([o.nfe for o in outs]), generated=torch.cat([o.generated for o in outs]),
                        seconds=sum(o.seconds for o in outs))


class Pipeline:
    """A loaded model with its modalities, ready to generate.

    Args:
        model: the denoiser.
        modalities: name -> modality, as the checkpoint rebuilt them.
        config: the checkpoint's config.json contents.
        amp_dtype: autocast dtype for sampling (None: fp32).
        registry: the plugins (policies are looked up there); a fresh `Registry()` if omitted.
    """

    def __init__(self, model, modalities: dict, config: dict, amp_dtype: torch.dtype | None = None,
                 registry: Registry | None = None):
        self.model, self.modalities, self.config, self.amp_dtype = model, modalities, config, amp_dtype
        self.precision = precision_name(amp_dtype)  # what reports say the passes ran in
        self.layout: VocabLayout = model.layout
        self.registry = registry or Registry()  # where policies are looked up
        if "sampling" in config:  # a config.json may hold anything: checked as the loader checks it
            SampleConfig.from_dict(config["sampling"])
        # The model's recommended sampling settings (see generate), over the engine's own defaults.
        self.sampling = {"policy": "confidence", "temperature": 1.0, "steps_per_token": None, "remask": 0.0,
                         "guidance": 1.0, **config.get("sampling", {})}
        # The noise process the model was trained with (models from before processes were named: absorbing).
        trained = config.get("training", {}).get("train", {}) if isinstance(config.get("training"), dict) else {}
        self.process = get_process(trained.get("process", "absorbing"), self.registry)

    @classmethod
    def load(cls, model: str | Path = "text", device: str = "auto", precision: str = "auto",
             registry: Registry | None = None, quantize: str | None = None) -> "Pipeline":
        """Load a registered model name (see ``unidiff plugins``) or a model folder.

        ``quantize="int8"`` (CPU only) runs the transformer's linear layers with int8 weights and dynamically
        quantised int8 activations (`torch.ao.quantization.quantize_dynamic`); its speed and quality are in bench/.
        """
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str):  # an empty or blank name is the loader's to refuse, with its advice
            raise UnidiffError(f"Pipeline.load takes a registered model name (unidiff plugins lists them) or the "
                               f"path of a model folder; got {model!r}")
        checks.text("device", device)
        checks.text("precision", precision)
        if registry is not None and not isinstance(registry, Registry):
            raise UnidiffError(f"registry takes a unidiff.Registry; got {type(registry).__name__}")
        registry = registry or Registry()
        dev = resolve_device(device)
        if quantize is not None and quantize != "int8":
            bad_quantize(quantize)
        if quantize and precision == "bf16":
            raise UnidiffError("--quantize int8 runs the linear layers in int8 with fp32 around them: drop "
                               "--precision bf16 (or --quantize)")
        net, modalities, config = load_model(model, registry, dev)
        amp = resolve_precision(precision, dev)
        if quantize is not None:  # int8 kernels take fp32 activations: no autocast, whatever auto would pick
            net, amp = quantize_int8(net, dev), None
        pipe = cls(net, modalities, config, amp, registry)
        pipe.precision = "int8" if quantize else precision_name(amp)
        return pipe

    @property
    def max_len(self) -> int:
        return self.model.cfg.max_len

    def modality(self, name: str | None):
        """The model's modality of that name; None picks the one it was trained to generate (``"modality"`` in its
        config.json), else its only one (an error if it has several)."""
        if name is None:
            default = self.config.get("modality")  # what the model was trained to generate
            if default in self.modalities:
                return self.modalities[default]
            if len(self.modalities) > 1:
                raise UnidiffError(f"this model has several modalities ({', '.join(self.modalities)}); "
                                   f"say which one to generate with --modality")
            return next(iter(self.modalities.values()))
        checks.text("modality", name)
        self.layout.block(name)  # raises, listing the model's modalities
        return self.modalities[name]

    def encode(self, samples: Sequence[Sequence[Segment]], seed: int = 0) -> list[Row]:
        """Encode and check the samples; sample i uses seed + i (for the tokens its edits re-mask)."""
        check_samples(samples)
        rows = []
        for i, segments in enumerate(samples):
            for seg in segments:
                self.layout.block(seg.modality)
            asked = sum(seg.length for seg in segments if seg.role == "generate")
            if asked > self.max_len:  # refuse before allocating a row of that size
                probe = [dataclasses.replace(s, length=1) if s.role == "generate" else s for s in segments]
                row = encode_row(probe, self.layout, self.modalities, seed=seed + i)
                given = len(row.ids) - int(row.targets.sum())  # given content and markers
                self._too_long(i, given + asked, given, asked)
            row = encode_row(segments, self.layout, self.modalities, seed=seed + i)
            if len(row.ids) > self.max_len:
                self._too_long(i, len(row.ids), int((~row.targets).sum()), int(row.targets.sum()))
            if all(seg.role == "given" for seg in segments):
                raise UnidiffError(f"sample {i} has nothing to generate: add a segment with role 'generate' or "
                                   f"'edit'")
            rows.append(row)
        return rows

    def _too_long(self, i: int, total: int, given: int, asked: int):
        raise UnidiffError(f"sample {i} needs {total} positions ({given} given + {asked} to generate) but the "
                           f"model's context is {self.max_len}: shorten the prompt or ask for at most "
                           f"{max(self.max_len - given, 0)} tokens (--length)")

    def generate(self, samples: Sequence[Sequence[Segment]], *, steps: int | None = None,
                 policy: str | None = None, policy_options: dict | None = None, seed: int = 0,
                 temperature: float | None = None, top_k: int = 0, top_p: float = 1.0,
                 schedule: "str | Schedule | None" = None,
                 block_length: int | None = None, remask: float | None = None,
                 guidance: float | None = None, symmetric: bool = False, cache: bool | str = False,
                 max_batch: int | None = None, progress: bool = False) -> Generation:
        """Generate every 'generate' segment (and re-generate every 'edit') of every sample in one batch.

        ``steps``, ``policy``, ``temperature``, ``remask``, ``guidance`` and ``schedule`` left as None take the
        model's recommended sampling settings (the ``"sampling"`` entry of its config.json, chosen from
        measurements), else one step per token, the confidence policy, temperature 1, no remasking and no guidance.
        A segment's own ``steps``, ``policy`` or ``schedule`` override these for that segment.

        Args:
            samples: one list of `Segment`s per output.
            steps: sampling steps per sample (fewer is faster).
            policy: unmasking policy name (``unidiff plugins`` lists them).
            policy_options: keyword arguments of the policy's factory, e.g. ``{"threshold": 0.9}``.
            seed: sample i uses seed + i, so it is the same whether generated alone or in a batch.
            temperature, top_k, top_p: proposal sampling (temperature 0 = greedy).
            schedule: time grid of the reverse process: a spec string (``"cosine"``, ``"polynomial:power=3"``,
                ``"grid:times=1/0.6/0.2/0"``: see `unidiff.process.schedules`) or a `Schedule`.
            block_length: decode the generated positions left to right in blocks of this many (semi-autoregressive).
            remask: ReMDM remasking strength in [0, 1] (0: off).
            guidance: classifier-free guidance scale (1: off); the given segments are the condition.
            symmetric: average every prediction with the model's prediction on the mirrored row, for modalities
                that declare a mirror symmetry (DNA: the reverse-complement strand; see `unidiff.models.symmetry`); doubles
                the forward passes.
            cache: approximate key/value cache for a diffusion model (see `unidiff.models.kvcache`): True or "dual" (a
                block's later steps compute only the block), "delta" (no full pass after the first: each step
                computes the block and the positions that changed); fastest with ``block_length``. An
                autoregressive model always decodes with its exact cache.
            max_batch: run at most this many rows at once (memory): a diffusion model serves the samples by
                continuous batching (a finished row's slot goes to the next sample at once, `sample_stream`); an
                autoregressive model in successive batches. The samples are the same as without it.
            progress: a progress bar of the generated tokens on stderr (tqdm; shown only on a terminal).
        """
        if isinstance(steps, (list, tuple)):  # one budget per sample
            steps = [checks.whole(f"steps[{i}]", s, 1, checks.MAX_COUNT) for i, s in enumerate(steps)]
        else:
            steps = checks.optional(checks.whole, "steps", steps, 1, checks.MAX_COUNT)
        checks.optional(checks.text, "policy", policy)
        if policy_options is not None and not isinstance(policy_options, dict):
            raise UnidiffError(f"policy_options takes a dict of the policy's options, e.g. {{'threshold': 0.9}}; "
                               f"got {type(policy_options).__name__}")
        seed = checks.whole("seed", seed, 0, checks.SEED_MAX)
        temperature, top_k, top_p = checks.proposal(temperature, top_k, top_p, default_temperature=True)
        check_schedule("schedule", schedule)
        block_length = checks.optional(checks.whole, "block_length", block_length, 1, checks.MAX_COUNT)
        remask = checks.optional(checks.real, "remask", remask, 0, 1)
        guidance = checks.optional(checks.real, "guidance", guidance, 0, MAX_GUIDANCE)
        checks.flag("symmetric", symmetric)
        if not isinstance(cache, bool):
            checks.one_of("cache", cache, (False, True, "dual", "delta"))
        max_batch = checks.optional(checks.whole, "max_batch", max_batch, 1, checks.MAX_COUNT)
        checks.flag("progress", progress)
        rec = self.sampling
        pol = self.registry.policy(policy or rec["policy"], **(policy_options or {}))
        temperature = rec["temperature"] if temperature is None else temperature
        remask = rec["remask"] if remask is None else remask
        asked_guidance, guidance = guidance, rec["guidance"] if guidance is None else guidance
        schedule = rec.get("schedule", "linear") if schedule is None else schedule
        objective = objective_of(self.model)  # what trained the model decides how it is decoded
        if objective.causal:  # left to right, one token per forward pass
            block_length, steps, remask = 1, None, 0.0
        rows = self.encode(samples, seed)
        if guidance != 1.0 and not any(bool(r.condition.any()) for r in rows):
            if asked_guidance is not None:  # the model's own recommendation just does not apply here
                raise UnidiffError(f"guidance {guidance:g} needs a condition to guide towards (a prompt, --condition "
                                   f"or other given content) and these samples give none: it would only double the "
                                   f"forward passes; drop --guidance or give a condition")
            guidance = 1.0
        extra_nfe = self._rescore(rows)
        specs, groups = self._groups(samples, rows)
        n_default = [int((r.targets & (g == 0)).sum()) for r, g in zip(rows, groups)]
        if steps is None and rec.get("steps_per_token") and objective.steps_per_token \
                and not getattr(pol, "adaptive", False):  # an adaptive policy is capped at one token a step only
            # The recommended steps per token, and at least one step per block.
            steps = [max(1, math.ceil(n * rec["steps_per_token"]), math.ceil(n / (block_length or max(n, 1))))
                     for n in n_default]
        model = Mirrored(self.model, mirror_perms(self.modalities)) if symmetric else self.model
        bar = tqdm(total=sum(int(r.targets.sum()) for r in rows), unit="tok", desc="generate", leave=False,
                   disable=None if progress else True, dynamic_ncols=True)
        if objective.causal and guidance == 1.0 and not specs and not symmetric:  # the exact key/value cache
            outs = []  # the key/value cache: one position per pass, in batches of at most max_batch rows
            for i in range(0, len(rows), max_batch or len(rows)):
                part = rows[i:i + (max_batch or len(rows))]
                done = bar.n
                outs.append(sample_causal(model, collate(part), seeds=seed + i, temperature=temperature, top_k=top_k,
                                          top_p=top_p, amp_dtype=self.amp_dtype,
                                          progress=(lambda n, done=done: bar.update(done + n - bar.n))
                                          if not bar.disable else None))
            out = _concat(outs)
        else:
            settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, schedule=schedule,
                            amp_dtype=self.amp_dtype, block_length=block_length, remask=remask, guidance=guidance,
                            groups=specs, cache=False if objective.causal else cache,
                            process=self.process)
            batch = collate(rows, groups if specs else None)
            # only for a bar that shows: counting the committed tokens costs a reduction per step
            settings["progress"] = (lambda n: bar.update(n - bar.n)) if not bar.disable else None
            if max_batch is not None and max_batch < len(rows):  # continuous batching in max_batch slots
                out = sample_stream(model, batch, pol, max_batch, steps=steps, seeds=seed, **settings)
            else:
                out = sample(model, batch, pol, steps=steps, seeds=seed, **settings)
        bar.close()
        ids = out.ids.cpu()
        decoded = [decode_row(ids[b, :len(r.ids)], r, self.layout, self.modalities) for b, r in enumerate(rows)]
        nfe = (out.nfe * (2 if symmetric else 1) + extra_nfe).tolist()
        return Generation(decoded, nfe, out.generated.tolist(), out.seconds,
                          [self._generated_tokens(ids[b], r) for b, r in enumerate(rows)], self.precision)

    def _generated_tokens(self, ids: torch.Tensor, row: Row) -> list[int]:
        return [t for name, start, stop, generated in row.spans if generated
                for t in local_ids(ids[start:stop], name, self.layout)]

    def _groups(self, samples, rows) -> tuple[list[GroupSpec], list[torch.Tensor]]:
        """The sampling groups of segments that carry their own steps, policy or schedule."""
        table: dict[tuple, int] = {}
        groups = []
        for segments, row in zip(samples, rows):
            g = torch.zeros(len(row.ids), dtype=torch.long)
            for i, seg in enumerate(segments):
                if seg.spec is not None:
                    g[row.segment == i] = table.setdefault(seg.spec, len(table) + 1)
            groups.append(g)
        specs = []
        for policy, steps, schedule in table:
            pol = self.registry.policy(policy) if isinstance(policy, str) else policy
            specs.append(GroupSpec(pol, steps, schedule))
        return specs, groups

    @torch.no_grad()
    def _rescore(self, rows: list[Row], folds: int = 8) -> torch.Tensor:
        """Pick the tokens of confidence-ordered edits: each token's probability in its context is scored with
        1/folds of the edited segment masked at a time (``folds`` forward passes, counted as NFE), and the
        ``strength`` fraction with the lowest probability become targets. Returns (B,) extra forward passes."""
        extra = torch.zeros(len(rows), dtype=torch.long)
        for r in rows:  # an edit that re-masks nothing needs no scores
            r.rescore = [e for e in (r.rescore or []) if math.floor(e[2] * e[1] + 0.5) > 0]
        todo = [b for b, r in enumerate(rows) if r.rescore]
        if not todo:
            return extra
        batch = collate([rows[b] for b in todo]).to(next(self.model.parameters()).device)
        scored = torch.zeros(batch.ids.shape, dtype=torch.bool, device=batch.ids.device)
        rank = torch.full(batch.ids.shape, -1, dtype=torch.long, device=batch.ids.device)
        for i, b in enumerate(todo):
            for start, n, _ in rows[b].rescore:
                scored[i, start:start + n] = True
                rank[i, start:start + n] = torch.arange(n)
        logp = torch.zeros(batch.ids.shape, dtype=torch.float64, device=batch.ids.device)
        for j in range(folds):
            hide = scored & (rank % folds == j)
            if not hide.any():
                continue
            # the scored tokens noised, one fold at a time (a fixed noise: the fold's uniforms are its index)
            x = self.process.start(batch.ids, hide | batch.targets, batch.modality, self.layout,
                                   noise_uniform(torch.tensor([[j]], device=batch.ids.device), -1, rank.clamp(min=0)))
            with autocast(batch.ids.device, self.amp_dtype):
                h = self.model.features(x, batch.modality, batch.positions, batch.pad_mask, **marks(batch))
                logits = self.model.logits(h[hide], batch.modality[hide]).float()
            logp[hide] = logits.double().log_softmax(-1).gather(1, batch.ids[hide].unsqueeze(1)).squeeze(1)
            extra[todo] += 1
        for i, b in enumerate(todo):
            for start, n, strength in rows[b].rescore:
                k = math.floor(strength * n + 0.5)
                order = torch.sort(logp[i, start:start + n].cpu(), stable=True).indices[:k]  # least likely first
                rows[b].targets[start + order] = True
        return extra

    def conditioned(self, condition: Any, segments: list[Segment]) -> list[Segment]:
        """``segments`` after a given condition segment, written in the model's condition modality (e.g. a DNA
        model's class name is text); no condition (None or "") leaves them as they are."""
        if condition is None or (isinstance(condition, str) and condition == ""):
            return segments
        name = self.config.get("condition_modality") or self.modality(None).name
        self.layout.block(name)
        known = self.known_conditions()
        if known is not None and condition not in known:
            raise UnidiffError(f"condition {condition!r} is not one this model was trained on; it knows: "
                               f"{', '.join(known)}")
        return [Segment(name, condition), *segments]

    def known_conditions(self) -> list[str] | None:
        """The closed set of conditions the model was trained on (e.g. the DNA model's classes), from the
        ``conditions`` its dataset declares; None where conditions are open (free captions, titles)."""
        dataset = self.config.get("training", {}).get("data", {}).get("dataset")
        if dataset is None or dataset not in self.registry.names("datasets"):
            return None
        known = self.registry.dataset(dataset)[1].get("conditions")
        return sorted(known) if known is not None else None

    def complete(self, prompt: Any = None, *, modality: str | None = None, num: int = 1,
                 length: int | None = None, condition: Any = None, **kwargs) -> Generation:
        """``num`` samples of one modality: the condition and the prompt (if any) followed by ``length`` generated
        tokens.

        Args:
            prompt: given content of the generated modality that the samples continue.
            condition: given content of the model's condition modality placed first (see `conditioned`).
        ``length`` defaults to the modality's default length, cut to what the context leaves after the prompt.
        Other keyword arguments go to `generate`.
        """
        checks.keywords("complete", kwargs, self.generate)
        m = self.modality(modality)
        num = checks.whole("num", num, 1)
        length = checks.optional(checks.whole, "length", length, 1)
        has_prompt = prompt is not None and not (isinstance(prompt, str) and prompt == "")
        if has_prompt and isinstance(prompt, str) and optional(m, "prompt_as_condition", False):
            # e.g. an image model: a text prompt is the caption to draw, in the condition modality
            if condition is not None and condition != "":
                raise UnidiffError(f"{m.name} prompts are conditions: give --prompt or --condition, not both")
            prompt, condition, has_prompt = None, prompt, False
        segments = self.conditioned(condition, [Segment(m.name, prompt)] if has_prompt else [])
        if length is None:
            probe = encode_row(segments + [Segment(m.name, role="generate", length=1)], self.layout, self.modalities)
            used = len(probe.ids) - 1
            length = min(m.default_length, self.max_len - used)
            if length < 1:
                raise UnidiffError(f"the prompt takes {used} tokens but the model's context is {self.max_len}, "
                                   f"leaving no room to generate: shorten the prompt")
        segments.append(Segment(m.name, role="generate", length=length))
        return self.generate([segments] * num, **kwargs)

    def window(self, condition: Any = None, modality: str | None = None) -> int:
        """The most tokens of ``modality`` (prompt and generated together) one row holds after the condition."""
        m = self.modality(modality)
        probe = encode_row(self.conditioned(condition, [Segment(m.name, role="generate", length=1)]), self.layout,
                           self.modalities)
        return self.max_len - (len(probe.ids) - 1)

    def complete_long(self, prompt: Any = None, *, length: int, modality: str | None = None, num: int = 1,
                      condition: Any = None, overlap: int | None = None, steps_per_token: float | None = None,
                      **kwargs) -> Generation:
        """``num`` samples of ``length`` generated tokens, more than the context holds, by a sliding window: the
        first window fills the context after the condition and prompt; each next one keeps the condition, gives the
        last ``overlap`` tokens (default: half the window) and generates up to window - overlap new ones.

        ``steps_per_token`` sets each window's steps in proportion to its new tokens (None: the model's default).
        Other keyword arguments go to `generate` for every window; window ``w`` uses seed ``seed + w * 10**6`` (so
        a window never reuses another request's seeds). The result counts every window's forward passes, tokens
        and seconds; its contents are the prompt and all new tokens, decoded once.
        """
        checks.keywords("complete_long", kwargs, self.generate)
        m = self.modality(modality)
        if optional(m, "prompt_as_condition", False) or optional(m, "grid") is not None:
            raise UnidiffError(f"{m.name} samples have a fixed size: generate them with complete(), not complete_long")
        if kwargs.pop("steps", None) is not None:
            raise UnidiffError("complete_long takes steps_per_token (its windows differ in length), not steps")
        num, length = checks.whole("num", num, 1), checks.whole("length", length, 1)
        steps_per_token = checks.optional(checks.real, "steps_per_token", steps_per_token, 0, 1, low_open=True)
        window = self.window(condition, m.name)
        overlap = window // 2 if overlap is None else checks.whole("overlap", overlap)
        if not 0 <= overlap < window:
            raise UnidiffError(f"overlap must be in [0, {window}) for this model's window of {window} tokens; "
                               f"got {overlap}")
        has_prompt = prompt is not None and not (isinstance(prompt, str) and prompt == "")
        given = encode_content(m, prompt) if has_prompt else []
        rows = [list(given) for _ in range(num)]
        seed = checks.whole("seed", kwargs.pop("seed", 0), 0, checks.SEED_MAX)
        made, w, nfe, generated, seconds = 0, 0, [0] * num, [0] * num, 0.0
        while made < length:
            keep = [list(r) if w == 0 else r[len(r) - min(overlap, len(r)):] for r in rows]
            n = min(length - made, window - max(len(k) for k in keep))
            if n < 1:
                raise UnidiffError(f"the prompt takes {len(keep[0])} of the model's {window}-token window, leaving "
                                   f"no room to generate: shorten the prompt")
            steps = {} if steps_per_token is None else {"steps": max(1, round(steps_per_token * n))}
            samples = [self.conditioned(condition, ([Segment(m.name, Tokens(k))] if k else [])
                                        + [Segment(m.name, role="generate", length=n)]) for k in keep]
            gen = self.generate(samples, seed=seed + w * WINDOW_SEED_STRIDE, **steps, **kwargs)
            for i, new in enumerate(gen.tokens):
                rows[i] = rows[i] + new  # ids, not decoded text: nothing is lost or re-tokenized between windows
                nfe[i] += gen.nfe[i]
                generated[i] += gen.generated[i]
            seconds += gen.seconds
            made, w = made + n, w + 1
        return Generation([[(m.name, checked_decode(m, r))] for r in rows], nfe, generated, seconds,
                          [r[len(given):] for r in rows], self.precision)

    def caption_modality(self, m) -> str:
        """The modality a caption of ``m``'s content is written in: the model's condition modality (an error if it
        has none apart from ``m``)."""
        cond = self.config.get("condition_modality")
        if cond is None or cond == m.name:
            raise UnidiffError(f"this model has no condition modality apart from {m.name}: it cannot caption; use a "
                               f"model trained on [condition][content] rows (e.g. --model image)")
        self.layout.block(cond)
        return cond

    def caption(self, content: Any, *, modality: str | None = None, num: int = 1, length: int | None = None,
                **kwargs) -> Generation:
        """Generate the condition for given content (an image -> its caption): ``num`` samples of up to ``length``
        tokens of the model's condition modality (default: the longest condition it was trained to generate),
        placed before the content as in training. Read them with ``.contents(condition modality)``."""
        checks.keywords("caption", kwargs, self.generate)
        m = self.modality(modality)
        cond = self.caption_modality(m)
        num = checks.whole("num", num, 1)
        length = checks.optional(checks.whole, "length", length, 1)
        trained = self.config.get("training", {}).get("data", {}).get("cond_hole", 0)
        length = length or trained or self.modalities[cond].default_length
        variable = self.layout.has_blank
        segments = [Segment(cond, role="generate", length=length, variable=variable), Segment(m.name, content)]
        # Captions decode left to right, one token per step, greedily and without guidance unless asked otherwise:
        # parallel decoding of a variable-length hole mixes words of different lengths ("a sheeephant"); on the
        # shipped image model left to right names the right class of 1,000 held-out images 0.248 of the time, in
        # parallel 0.198 (docs/results/image.md).
        for key, value in (("block_length", 1), ("steps", length), ("temperature", 0.0), ("guidance", 1.0),
                           ("schedule", "linear")):
            if kwargs.get(key) is None:
                kwargs[key] = value
        return self.generate([segments] * num, **kwargs)

    def infill(self, template: str, *, modality: str | None = None, num: int = 1, condition: Any = None,
               **kwargs) -> Generation:
        """Fill the holes of a template, anywhere and any number of times: ``<mask:N>`` marks exactly N tokens to
        generate, ``<blank:N>`` up to N (needs a model trained with blanks; the shipped text model is).

        E.g. ``"ROMEO\\nO, <mask:20> art thou Romeo?"``. Other keyword arguments go to `generate`.
        """
        checks.keywords("infill", kwargs, self.generate)
        checks.text("template", template, empty=True)
        m = self.modality(modality)
        num = checks.whole("num", num, 1)
        segments = self.conditioned(condition, parse_holes(template, m.name))
        return self.generate([segments] * num, **kwargs)

    def edit(self, content: Any, strength: float, *, modality: str | None = None, num: int = 1,
             order: str = "random", prompt: Any = None, **kwargs) -> Generation:
        """Re-generate a fraction ``strength`` of the tokens of ``content`` (0: unchanged, 1: all of them).

        Args:
            order: "random" re-masks tokens drawn at random (per sample seed); "confidence" re-masks the tokens
                the model finds least likely in their context first (costs 8 extra forward passes).
            prompt: a condition given before the content, in the model's condition modality (e.g. another play's
                title, for style transfer); the output then starts with it.
        Other keyword arguments go to `generate`; the rest of the content is the context.
        """
        checks.keywords("edit", kwargs, self.generate)
        m = self.modality(modality)
        num = checks.whole("num", num, 1)
        segments = self.conditioned(prompt, [Segment(m.name, content, role="edit", strength=strength, order=order)])
        return self.generate([segments] * num, **kwargs)
