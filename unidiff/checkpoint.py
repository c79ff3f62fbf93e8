"""Checkpoint folders in the Hugging Face style, written atomically.

A model folder holds ``config.json`` (model sizes, vocabulary layout, the modalities with the plugin and version
that provide each and the options that rebuild it, the training config and measured figures) and
``model.safetensors``. A training checkpoint adds ``training_state.pt`` (optimizer, EMA, RNG states, step).

Every folder is written under a temporary name and renamed into place, so a crash leaves the previous
checkpoint intact, never a half-written one; `recover` finishes an interrupted swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unidiff.errors import CheckpointError, UnidiffError, UnknownNameError
from unidiff.modality import Modality, grids_of, make_head
from unidiff.model import Denoiser, ModelConfig
from unidiff.plugins import DISABLE_ENV, Registry
from unidiff.vocab import VocabLayout

FORMAT = "unidiff-denoiser"
FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``path`` in one rename (the old one goes last)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):  # make the bytes durable before the rename makes them visible
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # make the renames themselves durable
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens folders
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(path: str | Path) -> None:
    """Finish a swap that a crash interrupted between its two renames (the old folder is still complete)."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if not path.exists() and old.exists():
        os.replace(old, path)


def modality_record(registry: Registry, modality: Modality) -> dict:
    info = registry.plugin_of("modalities", modality.name)
    return {"plugin": info.name if info else "?", "package": info.package if info else "?",
            "version": info.version if info else "?", "options": modality.options()}


def write_model(folder: Path, model: Denoiser, modalities: dict[str, Modality], registry: Registry,
                state_dict: dict[str, torch.Tensor] | None = None, extra: dict[str, Any] | None = None,
                dtype: torch.dtype | None = None) -> None:
    """Write config.json and model.safetensors into ``folder`` (use inside `atomic_dir`); ``dtype`` (e.g.
    torch.float16, to halve a shipped file) converts the floating-point weights. Loading casts them back to the
    model's parameters' dtype."""
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "model": vars(model.cfg).copy(),
        "layout": model.layout.to_dict(),
        "modalities": {name: modality_record(registry, m) for name, m in sorted(modalities.items())},
        **(extra or {}),
    }
    (folder / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tensors = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(tensors, str(folder / WEIGHTS))


def read_config(folder: Path) -> dict:
    path = folder / CONFIG
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a unidiff model folder: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); restore it or re-train the model") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a unidiff model config (no \"format\": \"{FORMAT}\")")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer unidiff (format {config['format_version']}); "
                              f"upgrade unidiff to load it")
    return config


def build_modalities(config: dict, registry: Registry) -> dict[str, Modality]:
    """Rebuild a checkpoint's modalities; a missing plugin is named with its package and version, and a plugin
    whose factory fails on the recorded options is named with its error."""
    out = {}
    for name, rec in config["modalities"].items():
        if name not in registry.names("modalities"):
            plugin, package = rec.get("plugin"), rec.get("package")
            needs = f"this model needs modality {name!r} from plugin {plugin!r} (package {package} " \
                    f"{rec.get('version')})"
            if plugin in registry.broken:
                raise CheckpointError(f"{needs}, which is installed but failed to load ({registry.broken[plugin]}): "
                                      f"fix or reinstall {package}")
            broken = f"; these plugins failed to load: {', '.join(registry.broken)}" if registry.broken else ""
            raise CheckpointError(f"{needs}, which is not installed or is disabled: install it (pip install "
                                  f"{package}) or remove it from {DISABLE_ENV}{broken}")
        options = rec.get("options", {})
        if not isinstance(options, dict):
            raise CheckpointError(f"config.json: the options of modality {name!r} must be a JSON object; got "
                                  f"{options!r}: restore it or re-train the model")
        try:
            out[name] = registry.modality(name, **options)
        except Exception as e:  # the plugin's own factory refused the options or failed: name it, not config.json
            info = registry.plugin_of("modalities", name)
            who = f"plugin {info.name!r} ({info.package} {info.version})" if info else "its plugin"
            raise CheckpointError(f"{who} could not build modality {name!r} from the options this checkpoint "
                                  f"records ({options}): {type(e).__name__}: {e}") from None
    return out


def build_model(config: dict, modalities: dict[str, Modality]) -> Denoiser:
    cfg = ModelConfig(**config["model"])
    layout = VocabLayout.from_dict(config["layout"])
    for name, m in modalities.items():
        if layout.block(name).size != m.vocab_size:
            raise CheckpointError(f"modality {name!r} now has {m.vocab_size} tokens but the checkpoint was trained "
                                  f"with {layout.block(name).size}: install the plugin version it names")
    return Denoiser(cfg, layout, {n: make_head(m, cfg.d_model) for n, m in modalities.items()},
                    grids_of(modalities.values()))


def load_weights(folder: Path, model: Denoiser) -> None:
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS}; the checkpoint is incomplete: re-train or re-copy it")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); restore it or re-train the model") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines()[1:] if line.strip())
        raise CheckpointError(f"{path} does not fit the model its config.json describes: {detail}") from None


def init_weights(name_or_path: str | Path, model: Denoiser, registry: Registry) -> Path:
    """Start ``model`` from another checkpoint's weights (fine-tuning). The architectures must match; the new
    vocabulary may add ids at the end of the old one (e.g. BLANK), and new parameters (the BLANK head) keep
    their fresh initialisation. Returns the folder used."""
    try:
        folder = resolve(name_or_path, registry)
    except UnknownNameError:
        raise CheckpointError(f"train.init = {str(name_or_path)!r} is neither a model folder nor a registered model "
                              f"({', '.join(registry.names('models')) or 'none'}): train the model it names first "
                              f"(e.g. configs/text-base.toml for configs/text.toml) or fix the path") from None
    old = VocabLayout.from_dict(read_config(folder)["layout"])
    if old.to_dict()["sizes"] != model.layout.to_dict()["sizes"]:
        raise CheckpointError(f"train.init: {folder} has modalities {old} but this run has {model.layout}; "
                              f"initialise from a model with the same modalities")
    path = folder / WEIGHTS
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); restore it or re-train the model") from None
    own = model.state_dict()
    for key, value in state.items():
        mine = own.get(key)
        if mine is not None and key == "tok_emb.weight" and value.shape[0] <= mine.shape[0] \
                and value.shape[1:] == mine.shape[1:]:
            mine[:value.shape[0]] = value  # ids added at the end keep their fresh rows
        elif mine is None or mine.shape != value.shape:
            raise CheckpointError(f"train.init: {folder}'s parameter {key} "
                                  f"{tuple(value.shape)} does not fit this run's model "
                                  f"{tuple(mine.shape) if mine is not None else '(absent)'}: use the same [model] "
                                  f"config as the model you start from")
        else:
            mine.copy_(value)
    model.load_state_dict(own)
    return folder


def resolve(name_or_path: str | Path, registry: Registry) -> Path:
    """A registered model name (e.g. "text") or a folder path -> the folder."""
    path = Path(name_or_path)
    recover(path)  # a save interrupted between its two renames left the previous folder complete
    if path.is_dir():
        return path
    if str(name_or_path) in registry.names("models"):
        path = registry.model_path(str(name_or_path))
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"model {name_or_path!r} is registered at {path}, but no checkpoint is there: "
                                  f"reinstall its plugin or train it (see README)")
        return path
    raise UnknownNameError("model", str(name_or_path), registry.names("models"),
                           "Give a registered name or the path of a model folder")


def load_model(name_or_path: str | Path, registry: Registry | None = None,
               device: str | torch.device = "cpu") -> tuple[Denoiser, dict[str, Modality], dict]:
    """Load a model folder or registered model: returns (model in eval mode, modalities by name, config dict)."""
    registry = registry or Registry()
    folder = resolve(name_or_path, registry)
    config = read_config(folder)
    try:
        modalities = build_modalities(config, registry)
        model = build_model(config, modalities)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG} is missing or has a malformed entry ({e}); "
                              f"restore it or re-train the model") from None
    load_weights(folder, model)
    return model.to(device).eval(), modalities, config


def ensure_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UnidiffError(f"cannot create output folder {path}: {e.strerror}") from None
