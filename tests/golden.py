"""Golden values of the shipped models, to hold behaviour fixed while the engine's code moves.

`compute()` loads every shipped model and records what a user can observe of it: a digest of its weights and
config, its held-out loss on a few windows, and the token ids of a fixed-seed matrix of sampling paths (each
sampler feature, each model kind). ``python tests/golden.py`` writes them to tests/golden.json; test_golden.py
recomputes and compares them. Record them again only for a change that is meant to alter behaviour, and say why in
its commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("golden.json")
MODELS = ("text", "text-ar", "dna", "dna-ar", "code", "code-ar", "image")
TEXT = "KING\nNow is the winter of our discontent made glorious summer by this sun of York.\n"


def machine() -> dict:
    """What exact float results depend on: torch's version and the CPU kernels it picked."""
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability()}


def weights_digest(model) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def config_digest(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def sampling_cases():
    """(name, model, call): each call takes the loaded Pipeline and returns a Generation."""
    from unidiff import Segment

    title = "<hamlet>\n"
    return [
        ("text default", "text", lambda p: p.complete("KING\n", num=2, length=24, seed=3)),
        ("text blocks cache", "text", lambda p: p.complete("KING\n", num=2, length=32, steps=16, block_length=8,
                                                           cache=True, seed=4)),
        ("text delta cache", "text", lambda p: p.complete("KING\n", num=2, length=32, steps=8, block_length=8,
                                                          cache="delta", seed=5)),
        ("text remask", "text", lambda p: p.complete("KING\n", num=2, length=24, steps=12, remask=0.1, seed=6)),
        ("text guidance", "text", lambda p: p.complete(title, num=2, length=24, steps=12, guidance=2.0, seed=7)),
        ("text threshold", "text", lambda p: p.complete("KING\n", num=2, length=24, policy="threshold",
                                                        policy_options={"threshold": 0.8}, seed=8)),
        ("text ancestral T0.9 top-p", "text", lambda p: p.complete("KING\n", num=2, length=24, steps=12,
                                                                   policy="ancestral", temperature=0.9, top_p=0.95,
                                                                   seed=9)),
        ("text cosine schedule", "text", lambda p: p.complete("KING\n", num=2, length=24, steps=8,
                                                              schedule="cosine", seed=10)),
        ("text groups", "text", lambda p: p.generate([[Segment("text", title),
                                                        Segment("text", role="generate", length=8, steps=4),
                                                        Segment("text", "\n"),
                                                        Segment("text", role="generate", length=16, steps=8,
                                                                schedule="cosine")]] * 2, seed=11)),
        ("text blank infill", "text", lambda p: p.infill("ROMEO\nO Romeo, <blank:16> art thou Romeo?", num=2,
                                                         seed=12)),
        ("text edit confidence", "text", lambda p: p.edit(TEXT, 0.3, order="confidence", num=2, seed=13)),
        ("text complete_long", "text", lambda p: p.complete_long("KING\n", length=300, steps_per_token=0.25,
                                                                 seed=14)),
        ("text stream", "text", lambda p: p.generate([[Segment("text", "KING\n"),
                                                       Segment("text", role="generate", length=n)]
                                                      for n in (8, 24, 16)], steps=8, max_batch=2, seed=15)),
        ("text bf16", "text", lambda p: _bf16(p).complete("KING\n", num=2, length=24, steps=12, seed=16)),
        ("text-ar", "text-ar", lambda p: p.complete("KING\n", num=2, length=24, seed=17)),
        ("text-ar unprompted", "text-ar", lambda p: p.complete("", num=2, length=16, seed=18)),
        ("dna symmetric", "dna", lambda p: p.complete(num=2, length=32, steps=16, symmetric=True, seed=19)),
        ("dna condition guidance", "dna", lambda p: p.complete(num=2, length=32, steps=16, condition="plant",
                                                               guidance=2.0, seed=20)),
        ("dna-ar", "dna-ar", lambda p: p.complete(num=2, length=32, condition="animal", seed=21)),
        ("code", "code", lambda p: p.complete("def fibonacci(n):", num=2, length=24, seed=22)),
        ("code-ar", "code-ar", lambda p: p.complete("def fibonacci(n):", num=2, length=24, seed=23)),
        ("image prompt guidance", "image", lambda p: p.complete("a cat", num=2, guidance=3.0, seed=24)),
        ("image caption", "image", lambda p: p.caption(_image(p), num=2, seed=25)),
    ]


def _bf16(pipe):
    from unidiff import Pipeline

    return Pipeline(pipe.model, pipe.modalities, pipe.config, torch.bfloat16, pipe.registry)


def _image(pipe):
    """A fixed image: the first sample of the image model at seed 0 (greedy), as the modality decodes it."""
    return pipe.complete("a horse", num=1, temperature=0.0, seed=0).texts[0]


def compute(only: set[str] | None = None) -> dict:
    from unidiff import Pipeline
    from unidiff.training.evaluate import evaluate_model

    out = {"machine": machine(), "models": {}, "sampling": {}}
    pipes = {}
    for name in MODELS:
        if only is not None and name not in only:
            continue
        pipe = pipes[name] = Pipeline.load(name, device="cpu", precision="fp32")
        result, info = evaluate_model(name, device="cpu", max_windows=3, seed=1234)
        out["models"][name] = {"weights": weights_digest(pipe.model), "config": config_digest(pipe.config),
                               "eval": {k: repr(v) for k, v in result.nats_per_token.items()},
                               "windows": info["windows"]}
    for case, name, call in sampling_cases():
        if name in pipes:
            gen = call(pipes[name])
            out["sampling"][case] = {"tokens": gen.tokens, "nfe": gen.nfe}
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    GOLDEN.write_text(json.dumps(compute(), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
