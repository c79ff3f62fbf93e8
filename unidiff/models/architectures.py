"""Backbones by name: the denoiser contract, the one place a denoiser is built, and ``register_architectures``.

A model's ``[model]`` config (and the ``"model"`` entry of its config.json) names its architecture,
``architecture = "transformer"`` by default, so checkpoints written before the key existed load as they were. An
architecture is registered as ``register(name, build, config=ConfigClass)``: ``ConfigClass`` is a dataclass whose
fields are the ``[model]`` keys, one to one (it must have ``architecture``, ``kind``, ``max_len`` and ``d_model``);
``build(cfg, layout, heads, grids)`` returns an ``nn.Module`` that keeps the `Denoiser` contract. The built-in
transformer (`unidiff.models.transformer.Denoiser`) is registered here as ``"transformer"``.

What the engine needs of a denoiser is `Denoiser`: training, evaluation, sampling (guidance, strand symmetry,
holes) and checkpoints use only these members. The approximate key/value caches and ``--quantize int8`` reach
inside the built-in transformer (its layers), and refuse another architecture by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import nn

from unidiff.errors import PluginError, UnidiffError
from unidiff.hookspecs import hookimpl
from unidiff.modality import Modality, grids_of, make_head
from unidiff.models.transformer import Denoiser as Transformer
from unidiff.models.transformer import KINDS, ModelConfig
from unidiff.vocab import VocabLayout

DEFAULT = "transformer"
CONFIG_FIELDS = ("architecture", "kind", "max_len", "d_model")  # what the engine reads of any model config


@runtime_checkable
class Denoiser(Protocol):
    """The contract of a denoiser: an ``nn.Module`` (parameters, ``state_dict`` = what model.safetensors holds,
    train/eval, ``to``) with these members."""

    cfg: Any  # its config dataclass; ``vars(cfg)`` is config.json's "model" entry
    layout: VocabLayout  # the joint vocabulary it reads and predicts

    def features(self, ids: torch.Tensor, modality: torch.Tensor, positions: torch.Tensor | None = None,
                 pad_mask: torch.Tensor | None = None, hole: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) global ids, modality indices, positions (sequence order) and bool padding -> (B, L, d) states;
        ``hole`` marks the positions of variable-length holes (a layout with BLANK). With ``cfg.kind ==
        "autoregressive"`` the state at j may depend only on positions before j (it predicts token j)."""

    def logits(self, h: torch.Tensor, modality: torch.Tensor, blank: torch.Tensor | bool | None = None
               ) -> torch.Tensor:
        """(..., d) states and their modality indices -> (..., layout.size) logits, -inf outside each position's
        modality range; the BLANK logit is finite only where ``blank`` allows it."""

    def num_params(self) -> int:
        """Number of parameters (reports, bench)."""

    # An autoregressive denoiser also has decode_step(ids, modality, positions, cache, key_valid=None) -> (B, n, d):
    # the states of n new positions after those in ``cache`` (a list it fills), for left-to-right decoding.


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., nn.Module]  # build(cfg, layout, heads, grids)
    config: type  # the [model] dataclass


def build_transformer(cfg: ModelConfig, layout: VocabLayout, heads: dict[str, nn.Module],
                      grids: dict[str, tuple[int, int]]) -> Transformer:
    return Transformer(cfg, layout, heads, grids)


TRANSFORMER = Architecture(DEFAULT, build_transformer, ModelConfig)


@hookimpl
def register_architectures(register):
    register(DEFAULT, build_transformer, config=ModelConfig)


def config_problem(config: Any) -> str | None:
    """Why ``config`` cannot be an architecture's [model] dataclass, or None if it can."""
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        return f"config= must be a dataclass (its fields are the [model] keys); got {config!r:.60}"
    missing = [f for f in CONFIG_FIELDS if f not in {x.name for x in dataclasses.fields(config)}]
    if missing:
        return f"its config {config.__name__} lacks the field(s) {', '.join(missing)} that the engine reads"
    return None


def architecture(name: str, registry=None) -> Architecture:
    """The architecture of that name: the built-in transformer, else one a plugin registers."""
    if name == DEFAULT:
        return TRANSFORMER
    if registry is None:
        from unidiff.plugins import Registry

        registry = Registry()
    build, meta = registry.architecture(name)  # an unknown name lists the registered ones
    return Architecture(name, build, meta["config"])


def model_config(entry: Mapping[str, Any], registry=None) -> Any:
    """The [model] config that config.json's "model" entry describes, of the class its ``architecture`` names
    (a checkpoint written before the key existed is a transformer), checked: an unknown key, a wrong type or a
    value out of range raises `UnidiffError` naming ``model.<key>``."""
    name = entry.get("architecture", DEFAULT)
    if not isinstance(name, str) or not name:
        raise UnidiffError(f"model.architecture = {name!r} is invalid: it must name an architecture (e.g. "
                           f"\"transformer\")")
    arch = architecture(name, registry)
    known = [f.name for f in dataclasses.fields(arch.config)]
    for key in entry:
        if key not in known:
            raise UnidiffError(f"unknown key model.{key} (keys are {', '.join(known)})")
    return validate_config(arch.config(**entry))


def validate_config(cfg: Any) -> Any:
    """Check a [model] config: the transformer's own `ModelConfig.validate`; for another architecture, its fields'
    types, ``kind``, ``max_len`` and ``d_model``, then its own ``validate()`` if it has one."""
    if isinstance(cfg, ModelConfig):
        return cfg.validate()
    from unidiff.training.config import check_types

    check_types("model", cfg)
    if cfg.kind not in KINDS:
        raise UnidiffError(f"model.kind = {cfg.kind!r} is invalid: it must be one of {', '.join(map(repr, KINDS))}")
    for key in ("max_len", "d_model"):
        v = getattr(cfg, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise UnidiffError(f"model.{key} = {v!r} is invalid: it must be a positive integer")
    if callable(getattr(cfg, "validate", None)):
        cfg.validate()
    return cfg


def build_denoiser(cfg: Any, layout: VocabLayout, modalities: Mapping[str, Modality], registry=None) -> nn.Module:
    """The one place a denoiser is built (training, loading, bench's rescaled networks): each modality's head at
    ``cfg.d_model``, the grids of 2-D modalities, and the architecture ``cfg.architecture`` names."""
    arch = architecture(getattr(cfg, "architecture", DEFAULT), registry)
    heads = {name: make_head(m, cfg.d_model) for name, m in modalities.items()}
    model = arch.build(cfg, layout, heads, grids_of(modalities.values()))
    if arch is not TRANSFORMER:
        missing = [m for m in ("features", "logits", "num_params") if not callable(getattr(model, m, None))]
        if cfg.kind == "autoregressive" and not callable(getattr(model, "decode_step", None)):
            missing.append("decode_step (an autoregressive denoiser)")
        if not isinstance(model, nn.Module) or missing or getattr(model, "layout", None) is not layout \
                or getattr(model, "cfg", None) is not cfg:
            raise PluginError(f"architecture {arch.name!r} built {type(model).__name__}, which does not keep the "
                              f"denoiser contract (unidiff.models.architectures.Denoiser: an nn.Module with cfg and layout "
                              f"as given, features, logits and num_params"
                              f"{'; it lacks ' + ', '.join(missing) if missing else ''}); report it to its authors")
    return model


def is_transformer(model: Any) -> bool:
    """Whether ``model`` is the built-in transformer, whose layers the caches and int8 quantization reach into."""
    return isinstance(model, Transformer)
