"""Checkpoint folders in the Hugging Face style, written atomically.

A model folder holds ``config.json`` (model sizes, vocabulary layout, the modalities with the plugin and version
that provide each and the options that rebuild it, the training config and measured figures) and
``model.safetensors``. A training checkpoint adds ``training_state.pt`` (optimizer, EMA, RNG states, step).

Every folder is written under a temporary name and renamed into place, so a crash leaves the previous
checkpoint intact, never a half-written one; `recover` finishes an interrupted swap (training calls it on its own
folder; loading never renames anything).

Loading trusts nothing in a folder: config.json is checked key by key and against the weights file's header (names,
shapes and dtypes, read without loading a tensor) before the network is built, on the meta device, from sizes the
file holds; a tensor holding NaN or infinity is refused.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from unidiff.models import architectures
from unidiff.training.config import SampleConfig
from unidiff.errors import CheckpointError, PluginError, UnidiffError, UnknownNameError
from unidiff.fs import fsync_path
from unidiff.modality import Modality, make_head
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.plugins import DISABLE_ENV, Registry
from unidiff.vocab import VocabLayout

FORMAT = "unidiff-denoiser"
FORMAT_VERSION = 1
CONFIG, WEIGHTS = "config.json", "model.safetensors"
RESTORE = "restore it or re-train the model"
MAX_HEADER = 4 << 20  # bytes of a safetensors header: a model of a thousand layers needs about one
# safetensors dtype -> (bytes per element, floating point)
DTYPES = {"F64": (8, True), "F32": (4, True), "F16": (2, True), "BF16": (2, True), "I64": (8, False),
          "I32": (4, False), "I16": (2, False), "I8": (1, False), "U8": (1, False), "BOOL": (1, False)}
ST_NAMES = {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL"}


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
    fsync_path(path.parent)  # make the renames themselves durable
    shutil.rmtree(old, ignore_errors=True)


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
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({type(e).__name__}: {e}); {RESTORE}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a unidiff model config (no \"format\": \"{FORMAT}\")")
    version = config.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: format_version = {version!r} is invalid: it must be a positive integer "
                              f"({FORMAT_VERSION} for this unidiff); {RESTORE}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{folder} was written by a newer unidiff (format {version}); upgrade unidiff to "
                              f"load it")
    return config


def weights_path(folder: Path) -> Path:
    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{folder} has no {WEIGHTS}; the checkpoint is incomplete: re-train or re-copy it")
    return path


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name -> (safetensors dtype, shape) from the header of a weights file, read without loading a tensor;
    refuses a header that is malformed or names bytes the file does not hold."""
    corrupt = f"{path} is corrupt or truncated"
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            n = int.from_bytes(fh.read(8), "little") if size >= 8 else 0
            if not 0 < n <= min(MAX_HEADER, size - 8):
                raise CheckpointError(f"{corrupt} (its header claims {n} bytes of {size}, at most {MAX_HEADER} "
                                      f"allowed); {RESTORE}")
            header = json.loads(fh.read(n))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{corrupt} (its header is not JSON: {type(e).__name__}: {e}); {RESTORE}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{corrupt} (its header is not a JSON object); {RESTORE}")
    data, out = size - 8 - n, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, span = (entry.get(k) for k in ("dtype", "shape", "data_offsets")) \
            if isinstance(entry, dict) else (None, None, None)
        if dtype not in DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {dtype!r}, which unidiff does not read "
                                  f"({', '.join(DTYPES)}); {RESTORE}")
        if not (isinstance(shape, list) and isinstance(span, list) and len(span) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape + span)):
            raise CheckpointError(f"{corrupt} (tensor {name} has shape {shape!r} and offsets {span!r}); {RESTORE}")
        want = math.prod(shape) * DTYPES[dtype][0]
        if not (span[0] <= span[1] <= data and span[1] - span[0] == want):
            raise CheckpointError(f"{corrupt}: tensor {name} {dtype}{shape} needs {want} bytes at {span}, but the "
                                  f"file holds {data} bytes of tensors; {RESTORE}")
        out[name] = (dtype, tuple(shape))
    return out


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
        except PluginError:  # the registry already names the plugin and what it built
            raise
        except Exception as e:  # the plugin's own factory refused the options or failed: name it, not config.json
            info = registry.plugin_of("modalities", name)
            who = f"plugin {info.name!r} ({info.package} {info.version})" if info else "its plugin"
            why = str(e) if isinstance(e, UnidiffError) else f"{type(e).__name__}: {e}"  # its own message is enough
            raise CheckpointError(f"{who} could not build modality {name!r} from the options this checkpoint "
                                  f"records ({options}): {why}") from None
    return out


def model_config(config: dict, path: Path, registry: Registry | None = None) -> Any:
    """The checkpoint's ``model`` entry as its architecture's config, checked key by key
    (`unidiff.models.architectures.model_config`)."""
    bad = f"{path} is missing or has a malformed entry"
    entry = config.get("model")
    if not isinstance(entry, dict):
        raise CheckpointError(f"{bad} 'model' (a JSON object of the model's sizes; got {entry!r}); {RESTORE}")
    try:
        return architectures.model_config(entry, registry)
    except UnknownNameError as e:
        raise CheckpointError(f"{path}: the model is of architecture {entry.get('architecture')!r}, which no "
                              f"installed plugin provides: {e}") from None
    except UnidiffError as e:
        raise CheckpointError(f"{bad}: {e}; {RESTORE}") from None


def check_sizes(folder: Path, header: dict, cfg: ModelConfig, layout: VocabLayout) -> None:
    """Refuse a config.json whose sizes the weights file does not hold, before anything is built from them: the
    embedding (vocabulary size x d_model) and the number of blocks."""
    misfit = f"{folder / WEIGHTS} does not fit the model its config.json describes"
    want, got = (layout.size, cfg.d_model), header.get("tok_emb.weight", (None, None))[1]
    if got != want:
        raise CheckpointError(f"{misfit}: model.d_model = {cfg.d_model} and layout.size = {layout.size} need "
                              f"tok_emb.weight of shape {want}, and the file holds {got or 'none'}; {RESTORE}")
    blocks = {int(m.group(1)) for k in header if (m := re.match(r"blocks\.(\d+)\.", k))}
    if len(blocks) != cfg.n_layers or blocks != set(range(len(blocks))):
        raise CheckpointError(f"{misfit}: model.n_layers = {cfg.n_layers}, and the file holds {len(blocks)} "
                              f"block(s); {RESTORE}")


def build_model(cfg: Any, layout: VocabLayout, modalities: dict[str, Modality], registry: Registry | None = None
                ) -> torch.nn.Module:
    """The network a checkpoint describes, built on the meta device (no memory): `load_weights` gives it the
    file's tensors."""
    for name, m in modalities.items():
        if layout.block(name).size != m.vocab_size:
            raise CheckpointError(f"modality {name!r} now has {m.vocab_size} tokens but the checkpoint was trained "
                                  f"with {layout.block(name).size}: install the plugin version it names")
    with torch.device("meta"):
        return architectures.build_denoiser(cfg, layout, modalities, registry)


def check_fits(path: Path, header: dict, model: torch.nn.Module) -> None:
    """Refuse a weights file whose tensors are not the ones ``model`` has: names, shapes and kind of dtype (any
    floating point for a floating-point tensor, so that fp16 files load)."""
    own, problems = model.state_dict(), []
    for key, t in own.items():
        if key not in header:
            problems.append(f"missing tensor {key}")
            continue
        dtype, shape = header[key]
        if shape != tuple(t.shape):
            problems.append(f"{key} has shape {shape}, the model's {tuple(t.shape)}")
        elif DTYPES[dtype][1] != t.is_floating_point() or not t.is_floating_point() and ST_NAMES[t.dtype] != dtype:
            problems.append(f"{key} is stored as {dtype}, the model's is {t.dtype}")
    problems += [f"unexpected tensor {key}" for key in header if key not in own]
    if problems:
        more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
        raise CheckpointError(f"{path} does not fit the model its config.json describes: {'; '.join(problems[:4])}"
                              f"{more}; {RESTORE}")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file, refusing one that holds NaN or infinity (a run that diverged)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated ({e}); {RESTORE}") from None
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {key} holds non-finite values (NaN or infinity), so every output "
                                  f"would be NaN; restore the folder from a good copy or re-train the model")
    return state


def load_weights(folder: Path, model: Denoiser, header: dict | None = None) -> None:
    """Load ``folder``'s weights into ``model``, checked against it first. A model on the meta device (from
    `build_model`) takes the file's tensors as its own, cast to its dtypes; a real one (a run being resumed, whose
    optimizer holds its parameters) copies them in."""
    path = weights_path(folder)
    check_fits(path, read_header(path) if header is None else header, model)
    state, own = read_tensors(path), model.state_dict()
    if own and next(iter(own.values())).is_meta:
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, assign=True)
    else:
        model.load_state_dict(state)


def materialize_heads(model: Denoiser, modalities: dict[str, Modality]) -> None:
    """Build for real any plugin head of the built-in transformer that kept a meta tensor after loading: a
    non-persistent buffer, which no weights file holds (its parameters' sizes were checked against the file
    already). Another architecture that keeps buffers out of its weights file builds them itself."""
    if not architectures.is_transformer(model):
        return
    for name, head in model.heads.items():
        if any(t.is_meta for t in head.buffers()):
            real = make_head(modalities[name], model.cfg.d_model)
            real.load_state_dict(head.state_dict(), assign=True)
            model.heads[name] = real


def init_weights(name_or_path: str | Path, model: Denoiser, registry: Registry) -> Path:
    """Start ``model`` from another checkpoint's weights (fine-tuning). The architectures must match; the new
    vocabulary may add ids at the end of the old one (e.g. BLANK), and new parameters (the BLANK head) keep
    their fresh initialisation. Returns the folder used."""
    try:
        folder = resolve(name_or_path, registry)
        old = VocabLayout.from_dict(read_config(folder).get("layout"), str(folder / CONFIG))
    except UnknownNameError:
        raise CheckpointError(f"train.init = {str(name_or_path)!r} is neither a model folder nor a registered model "
                              f"({', '.join(registry.names('models')) or 'none'}): train the model it names first "
                              f"(e.g. configs/text-base.toml for configs/text.toml) or fix the path") from None
    except UnidiffError as e:
        raise CheckpointError(f"train.init = {str(name_or_path)!r}: {e}") from None
    if old.to_dict()["sizes"] != model.layout.to_dict()["sizes"]:
        raise CheckpointError(f"train.init: {folder} has modalities {old} but this run has {model.layout}; "
                              f"initialise from a model with the same modalities")
    path = weights_path(folder)
    own, header = model.state_dict(), read_header(path)
    for key, (dtype, shape) in header.items():  # every size checked before a tensor is read
        mine = own.get(key)
        grows = key == "tok_emb.weight" and mine is not None and shape[:1] <= mine.shape[:1] \
            and shape[1:] == mine.shape[1:]  # ids added at the end keep their fresh rows
        if mine is None or tuple(mine.shape) != shape and not grows:
            raise CheckpointError(f"train.init: {folder}'s parameter {key} {shape} does not fit this run's model "
                                  f"{tuple(mine.shape) if mine is not None else '(absent)'}: use the same [model] "
                                  f"config as the model you start from")
        if not DTYPES[dtype][1]:
            raise CheckpointError(f"train.init: {folder}'s parameter {key} is stored as {dtype}, not floating "
                                  f"point: its {WEIGHTS} is damaged; {RESTORE}")
    for key, value in read_tensors(path).items():
        own[key][:value.shape[0]] = value
    model.load_state_dict(own)
    return folder


def is_path(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is written as a path: a `Path`, or a string with a separator or a leading "."."""
    s = str(name_or_path)
    return isinstance(name_or_path, Path) or s.startswith(".") or any(c and c in s for c in (os.sep, os.altsep, "/"))


def resolve(name_or_path: str | Path, registry: Registry) -> Path:
    """A registered model name (e.g. "text") or a folder path -> the folder. A name comes first: the path form is
    explicit (``./text``), or a folder that is no registered name. Never renames anything (only training, see
    `recover`, finishes an interrupted swap of its own folders)."""
    name, names = str(name_or_path), registry.names("models")
    if not name:
        raise CheckpointError(f"the model is an empty name; give a registered model ({', '.join(names) or 'none'}) "
                              f"or the path of a model folder")
    if not is_path(name_or_path) and name in names:
        path = registry.model_path(name)
        if not (path / CONFIG).is_file():
            raise CheckpointError(f"model {name!r} is registered at {path}, but no checkpoint is there: "
                                  f"reinstall its plugin or train it (see README)")
        return path
    path = Path(name_or_path)
    if path.is_dir():
        return path
    hint, old = "Give a registered name or the path of a model folder", path.parent / f".{path.name}.old"
    if path.name and old.is_dir():
        hint = (f"A save into {path} was interrupted and left the previous model in {old}: resume the training run "
                f"(it restores it) or rename that folder to {path.name}")
    raise UnknownNameError("model", name, names, hint)


def load_model(name_or_path: str | Path, registry: Registry | None = None,
               device: str | torch.device = "cpu") -> tuple[Denoiser, dict[str, Modality], dict]:
    """Load a model folder or registered model: returns (model in eval mode, modalities by name, config dict).

    Nothing is built from config.json before its sizes are checked against the weights file's header: the network
    is built on the meta device and takes the file's tensors, so a hostile config.json cannot make it allocate
    more than the file holds."""
    registry = registry or Registry()
    folder = resolve(name_or_path, registry)
    config = read_config(folder)
    path = weights_path(folder)
    cfg = model_config(config, folder / CONFIG, registry)
    layout = VocabLayout.from_dict(config.get("layout"), str(folder / CONFIG))
    if "sampling" in config:
        try:
            SampleConfig.from_dict(config["sampling"])
        except UnidiffError as e:
            raise CheckpointError(f"{folder / CONFIG}: its \"sampling\" entry is invalid: {e}; {RESTORE}") from None
    header = read_header(path)
    if isinstance(cfg, ModelConfig):  # the transformer's sizes against its tensors' names (another: check_fits)
        check_sizes(folder, header, cfg, layout)
    if not isinstance(config.get("modalities"), dict):
        raise CheckpointError(f"{folder / CONFIG}: \"modalities\" must be a JSON object of name -> record; "
                              f"{RESTORE}")
    try:
        modalities = build_modalities(config, registry)
        model = build_model(cfg, layout, modalities, registry)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG} is missing or has a malformed entry ({e}); {RESTORE}") from None
    load_weights(folder, model, header)
    materialize_heads(model, modalities)
    return model.to(device).eval(), modalities, config

