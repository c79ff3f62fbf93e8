"""Training configuration: dataclasses that TOML files in ``configs/`` map onto one to one.

A file has the sections ``[model]``, ``[data]``, ``[train]`` and ``[sample]`` (the sampling settings recommended
for the trained model, stored in its config.json); every key is a field of the matching dataclass.
``--set section.key=value`` overrides one key from the command line; its value is parsed as TOML (``3e-4``,
``true``, ``"text"``) and falls back to a plain string. Unknown sections or keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unidiff.models.architectures import DEFAULT, architecture, validate_config
from unidiff.checks import MAX_GUIDANCE, MAX_TEMPERATURE
from unidiff.errors import UnidiffError
from unidiff.models.transformer import KINDS, ModelConfig
from unidiff.training.objectives import objective_of


@dataclass
class DataConfig:
    dataset: str = "shakespeare"  # a registered dataset name
    seq_len: int = 256  # training window length
    train_split: str = "train"
    eval_split: str = "valid"
    cond_dropout: float = 1.0  # probability that a row hides its document's condition (1: never conditioned)
    holes: int = 0  # up to this many variable-length holes made per row (0: none, no BLANK id in the vocabulary)
    hole_max: int = 16  # longest hole, in tokens
    # Joint training (e.g. caption + image): a kept condition is a target too with this probability, noised at its
    # own time; such a row then gives its content whole with probability content_given (condition from content)
    cond_target: float = 0.0
    content_given: float = 0.0
    cond_hole: int = 0  # a target condition is a variable-length hole of this many positions (0: its own length)


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    ema: float = 0.999  # 0 disables EMA
    schedule: str = "linear"  # masking schedule (see unidiff.process.schedules)
    process: str = "absorbing"  # noise process (see unidiff.process; plugins add more: register_processes)
    eval_every: int = 250
    eval_windows: int = 256  # held-out windows per periodic evaluation
    save_every: int = 250
    seed: int = 0
    precision: str = "auto"  # fp32 | bf16 | auto (bf16 where the hardware has fast bf16)
    device: str = "auto"  # auto | cpu | cuda
    init: str = ""  # start from the weights of this model (a registered name or a folder); "" = random
    out_dir: str = "runs/default"
    progress: bool = True
    save_dtype: str = "fp32"  # fp32 | fp16: the weights of model/ (last/ stays fp32 for exact resume)


@dataclass
class SampleConfig:
    """The sampling settings recommended for the trained model; written into its config.json as "sampling"."""

    policy: str = "confidence"
    temperature: float = 1.0
    steps_per_token: float = 1.0  # steps = ceil(generated tokens * steps_per_token)
    remask: float = 0.0  # ReMDM remasking strength (0: off)
    guidance: float = 1.0  # classifier-free guidance scale (1: off)
    schedule: str = "linear"  # time grid of the reverse steps (cosine: MaskGIT's, few tokens first)
    chosen_by: str = ""  # the measurement that chose them

    def validate(self, section: str = "sample") -> "SampleConfig":
        """Check types and ranges (a config.json may hold anything); raises `UnidiffError` naming
        ``<section>.<key>`` (e.g. "sampling.temperature" for a checkpoint's recommendation)."""
        check_types(section, self)
        if not self.policy:
            raise UnidiffError(f"config key {section}.policy must name an unmasking policy (e.g. \"confidence\")")
        for key, lo, hi, low_open in (("temperature", 0, MAX_TEMPERATURE, False), ("steps_per_token", 0, 1, True),
                                      ("remask", 0, 1, False), ("guidance", 0, MAX_GUIDANCE, False)):
            _in_range(f"{section}.{key}", getattr(self, key), lo, hi, low_open=low_open, high_open=False)
        return self

    @classmethod
    def from_dict(cls, d: dict, section: str = "sampling") -> "SampleConfig":
        """The settings a config.json records under ``section``, checked: unknown keys, wrong types and values out
        of range raise `UnidiffError` naming the key."""
        if not isinstance(d, dict):
            raise UnidiffError(f"{section} must be a table of key = value pairs; got {d!r}")
        sc = cls()
        for key, value in d.items():
            assign(sc, section, key, value)
        return sc.validate(section)


@dataclass
class Config:
    model: Any = field(default_factory=ModelConfig)  # the [model] dataclass of model.architecture
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "Config":
        """Check values that types alone do not; raises `UnidiffError` naming the key and the valid range."""
        m, d, t = self.model, self.data, self.train
        for section in ("model", "data", "train"):
            check_types(section, getattr(self, section))
        positive = {"model.d_model": m.d_model, "model.max_len": m.max_len, "data.seq_len": d.seq_len,
                    "train.steps": t.steps, "train.batch_size": t.batch_size, "train.eval_every": t.eval_every,
                    "train.eval_windows": t.eval_windows, "train.save_every": t.save_every,
                    "train.grad_clip": t.grad_clip}  # grad_clip 0 would zero every update
        if isinstance(m, ModelConfig):  # the built-in transformer's own sizes
            positive.update({"model.n_layers": m.n_layers, "model.n_heads": m.n_heads,
                             "model.mlp_ratio": m.mlp_ratio, "model.rope_base": m.rope_base})
        for key, value in positive.items():
            if not value > 0:
                raise UnidiffError(f"config key {key} must be positive; got {value}")
        if m.kind not in KINDS:
            raise UnidiffError(f"config key model.kind must be one of {', '.join(KINDS)}; got {m.kind!r}")
        _in_range("train.lr", t.lr, 0, MAX_LR, low_open=True, high_open=False)
        ranges = {"train.ema": (t.ema, 0, 1, False),
                  "train.min_lr_ratio": (t.min_lr_ratio, 0, 1, True), "train.beta1": (t.beta1, 0, 1, False),
                  "train.beta2": (t.beta2, 0, 1, False), "data.cond_dropout": (d.cond_dropout, 0, 1, True),
                  "data.cond_target": (d.cond_target, 0, 1, True), "data.content_given": (d.content_given, 0, 1, True)}
        if isinstance(m, ModelConfig):
            ranges["model.dropout"] = (m.dropout, 0, 1, False)
        for key, (value, lo, hi, closed) in ranges.items():
            _in_range(key, value, lo, hi, low_open=False, high_open=not closed)
        if not 0 <= t.seed < 2 ** 62:
            raise UnidiffError(f"config key train.seed must lie in [0, 2**62); got {t.seed}")
        self.sample.validate()
        if t.save_dtype not in SAVE_DTYPES:
            raise UnidiffError(f"config key train.save_dtype must be one of {', '.join(SAVE_DTYPES)}; got "
                               f"{t.save_dtype!r}")
        if not t.out_dir.strip():
            raise UnidiffError("config key train.out_dir is empty: name the folder the run writes, e.g. runs/mine")
        if (d.cond_target or d.cond_hole) and not objective_of(m).fills_holes:
            raise UnidiffError("data.cond_target and data.cond_hole need model.kind = \"diffusion\"")
        if d.holes and not objective_of(m).fills_holes:
            raise UnidiffError("data.holes needs model.kind = \"diffusion\": an autoregressive model fills no holes")
        if d.hole_max < 1:
            raise UnidiffError(f"config key data.hole_max must be at least 1; got {d.hole_max}")
        for key, value in {"train.warmup": t.warmup, "train.weight_decay": t.weight_decay,
                           "data.holes": d.holes, "data.cond_hole": d.cond_hole}.items():
            if value < 0:
                raise UnidiffError(f"config key {key} must not be negative; got {value}")
        if d.seq_len > m.max_len:
            raise UnidiffError(f"data.seq_len {d.seq_len} exceeds model.max_len {m.max_len}: raise max_len or "
                               f"shorten the windows")
        validate_config(m)  # the model's own checks (those a checkpoint's config.json also passes)
        return self

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        cfg = cls()
        for section, values in d.items():
            sub = _section(cfg, section)
            if not isinstance(values, dict):
                raise UnidiffError(f"config section [{section}] must be a table of key = value lines; got {values!r}")
            if section == "model" and values.get("architecture", DEFAULT) != DEFAULT:
                name = values["architecture"]
                if not isinstance(name, str):
                    raise UnidiffError(f"config key model.architecture takes a string; got {name!r}")
                sub = cfg.model = architecture(name).config()  # its own [model] keys
            for key, value in values.items():
                assign(sub, section, key, value)
        return cfg


SAVE_DTYPES = ("fp32", "fp16")
MAX_LR = 1  # AdamW moves each weight by about lr per step: beyond 1 a run only diverges


def _kind(default) -> tuple[type | tuple[type, ...], str] | None:
    """(accepted types, their name in an error) of a field whose default is ``default``; None: not checked."""
    for typ, name in ((bool, "a bool (true or false)"), (float, "a float"), (int, "an int"), (str, "a string")):
        if isinstance(default, typ):
            return ((int, float) if typ is float else typ), name
    return None


def check_types(section: str, sub: Any) -> None:
    """Every field of the dataclass ``sub`` holds its default's type (a bool is no int, an int is a float) and every
    float is finite; raises `UnidiffError` naming ``<section>.<key>``."""
    for f in dataclasses.fields(sub):
        kind = _kind(f.default)
        if kind is None:
            continue
        value, (types, name) = getattr(sub, f.name), kind
        if not isinstance(value, types) or (isinstance(value, bool) and types is not bool):
            raise UnidiffError(f"config key {section}.{f.name} takes {name}; got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise UnidiffError(f"config key {section}.{f.name} must be a finite number; got {value}")


def _in_range(key: str, value, lo, hi, low_open: bool, high_open: bool) -> None:
    if not ((lo < value if low_open else lo <= value) and (value < hi if high_open else value <= hi)):
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise UnidiffError(f"config key {key} must lie in {interval}; got {value}")


# Keys that an older unidiff knew, with what replaced them.
RENAMED = {"data.blank_runs": "use data.holes (variable-length holes are now trained as whole holes, see "
                              "unidiff.data.make_holes)",
           "data.blank_max": "use data.hole_max"}


def _section(cfg: Config, name: str):
    names = [f.name for f in dataclasses.fields(cfg)]
    if name not in names:
        raise UnidiffError(f"unknown config section {name!r}; sections are: {', '.join(names)}")
    return getattr(cfg, name)


def assign(sub: Any, section: str, key: str, value: Any) -> None:
    """Set ``sub.key = value`` (``sub`` the dataclass of ``[section]``), refusing an unknown key, a renamed one or
    a value of another type than the field's default, by name."""
    fields = {f.name: f for f in dataclasses.fields(sub)}
    if f"{section}.{key}" in RENAMED:
        raise UnidiffError(f"config key {section}.{key} is gone: {RENAMED[f'{section}.{key}']}")
    if key not in fields:
        raise UnidiffError(f"unknown config key {section}.{key}; keys of [{section}] are: {', '.join(fields)}")
    current = getattr(sub, key)
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, type(current)) and not isinstance(value, bool)
    if not ok:
        kind = type(current).__name__
        raise UnidiffError(f"config key {section}.{key} takes {'an' if kind == 'int' else 'a'} {kind}; got {value!r}")
    setattr(sub, key, value)


def parse_override(text: str) -> tuple[str, str, Any]:
    """'section.key=value' -> (section, key, value)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UnidiffError(f"--set takes section.key=value (e.g. train.steps=100); got {text!r}")
    dotted, raw = text.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return section, key, value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML config (or start from defaults) and apply ``section.key=value`` overrides."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UnidiffError(f"config file {path} does not exist; the shipped configs are in configs/")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise UnidiffError(f"config file {path} is not valid TOML: {e}") from None
    for text in overrides:  # the architecture first: it decides which keys [model] has
        section, key, value = parse_override(text)
        if (section, key) == ("model", "architecture"):
            data.setdefault("model", {})["architecture"] = text.split("=", 1)[1].strip()
    cfg = Config.from_dict(data)
    for text in overrides:
        section, key, value = parse_override(text)
        if (section, key) == ("model", "architecture"):
            continue
        sub = _section(cfg, section)
        if isinstance(getattr(sub, key, None), str) and not isinstance(value, str):
            value = text.split("=", 1)[1].strip()  # a string field takes the text as written: out_dir=2024
        assign(sub, section, key, value)
    return cfg.validate()
