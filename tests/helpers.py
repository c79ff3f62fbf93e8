"""Pieces the tests share (no test module imports another): fake modalities (`Letters`, a str over an alphabet;
`Bytes`, UTF-8 bytes), a small sharp untrained denoiser and rows for it, a tiny training config with its documents
and log readers, checkpoint weight comparison, and `write_dist` (an installed plugin distribution on disk)."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from unidiff.training.config import Config, DataConfig, TrainConfig
import unidiff.fs
from unidiff.cli import main
from unidiff.data import Segment, encode_row
from unidiff.errors import ModalityInputError
from unidiff.modality import make_head
from unidiff.plugins import DISABLE_ENV
from unidiff.models.transformer import Denoiser, ModelConfig
from unidiff.training.train import STATE
from unidiff.vocab import VocabLayout


class Letters:
    """Content is a str over ``alphabet``; a letter outside it raises `ModalityInputError` naming it and its place."""

    file_suffix = ".txt"

    def __init__(self, name: str = "abc", alphabet: str = "abc", default_length: int = 4):
        self.name, self.alphabet, self.vocab_size = name, alphabet, len(alphabet)
        self.default_length = default_length

    def encode(self, content):
        out = []
        for i, ch in enumerate(content):
            if ch not in self.alphabet:
                raise ModalityInputError(f"{ch!r} at position {i} is not in {self.alphabet!r}")
            out.append(self.alphabet.index(ch))
        return out

    def decode(self, ids):
        return "".join(self.alphabet[i] for i in ids)

    def options(self):
        return {}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    """The model folders a and b hold bit-identical weights."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{a}/{k} differs"


def tiny_denoiser(seed=0, vocab=("text", 256), n_layers=2):
    torch.manual_seed(seed)
    layout = VocabLayout({vocab[0]: vocab[1]})

    class M:
        vocab_size = vocab[1]

    model = Denoiser(ModelConfig(d_model=32, n_layers=n_layers, n_heads=2, max_len=64), layout,
                     {vocab[0]: make_head(M, 32)}).eval()
    # Sharper than the std-0.02 init, like a trained model: an untrained one predicts the same flat distribution
    # at every masked position, and its exact ties would be broken by float rounding (padded vs unpadded rows).
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.3)
    return model


class Bytes:
    name, vocab_size, default_length = "text", 256, 16

    def encode(self, s):
        return list(s.encode())

    def decode(self, ids):
        return bytes(ids).decode(errors="replace")


def rows_of(prompts_and_lengths, layout):
    rows = []
    for prompt, n in prompts_and_lengths:
        segs = ([Segment("text", prompt)] if prompt else []) + [Segment("text", role="generate", length=n)]
        rows.append(encode_row(segs, layout, {"text": Bytes()}))
    return rows


def write_dist(root: Path, dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """Lay out an installed distribution under ``root``: its packages and a ``.dist-info`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / module).mkdir(exist_ok=True)
        (root / module / "__init__.py").write_text(textwrap.dedent(source))
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(
        "[unidiff]\n" + "".join(f"{name} = {target}\n" for name, target in entry_points.items()))
    return root


TRAIN_DOCS = [
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little and see the watery "
    "part of the world.",
    "Short doc.",  # shorter than a window: one padded window
]


EVAL_DOCS = ["All happy families are alike; each unhappy family is unhappy in its own way. Everything was in "
             "confusion in the Oblonskys' house. The wife had discovered that the husband was carrying on an "
             "intrigue with a French girl, who had been a governess in their family."]


N = 10  # steps of the reference run; checkpoints every N // 2


def tiny_cfg(out_dir: Path, dropout: float = 0.1, seq_len: int = 32, n_layers: int = 1, **train_kw) -> Config:
    # dropout > 0 makes the loop use the global torch RNG too, so resume must restore it as well
    kw = dict(steps=N, batch_size=8, lr=3e-3, warmup=3, min_lr_ratio=0.1, eval_every=N // 2, eval_windows=4,
              save_every=N // 2, seed=0, precision="fp32", device="cpu", progress=False, out_dir=str(out_dir))
    kw.update(train_kw)
    return Config(ModelConfig(d_model=32, n_layers=n_layers, n_heads=2, max_len=32, dropout=dropout),
                  DataConfig(seq_len=seq_len), TrainConfig(**kw))


def read_log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def saved_step(out: Path) -> int:
    return torch.load(out / "last" / STATE, weights_only=True)["step"]


def allowed(layout: VocabLayout, modality: torch.Tensor) -> torch.Tensor:
    """(...,) modality indices -> (..., V) bool: the global ids a position of each modality may predict (its own
    block's content ids), built from the layout's blocks independently of the model's masking."""
    table = torch.zeros(len(layout.blocks), layout.size, dtype=torch.bool)
    for b in layout.blocks.values():
        table[b.index, b.start:b.stop] = True
    return table[modality]


def unidiff_cli(*args: str, path: Path | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``python -m unidiff.cli ARGS`` in a subprocess on one thread, with every plugin enabled and ``path`` (a
    throwaway plugin's folder) first on its PYTHONPATH."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(DISABLE_ENV, None)
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "unidiff.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # a full disk, for monkeypatched writes


def leftovers(folder: Path) -> list[str]:
    """Temporary files and folders that a write left behind."""
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name or "probe" in p.name or ".discarded" in p.name)


def one_error_line(code: int, out: str, err: str) -> str:
    """The CLI's answer to a user error: exit 2, nothing on stdout, one `unidiff: error:` line on stderr."""
    assert code == 2, err
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("unidiff: error: "), err
    assert "Traceback" not in err
    return lines[0]


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def tiny_toml(tmp_path: Path, out_dir: Path, steps: int = 2) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(f'[model]\nd_model = 16\nn_layers = 1\nn_heads = 2\nmax_len = 16\n[data]\nseq_len = 16\n'
                    f'[train]\nsteps = {steps}\neval_every = 2\neval_windows = 2\nsave_every = 2\n'
                    f'out_dir = "{out_dir}"\n')
    return path


def refuse_writes(monkeypatch, under: Path, code: int = errno.EROFS) -> None:
    """Make every file creation under ``under`` fail as on a read-only mount (root ignores mode bits)."""
    real = os.open

    def fake(path, flags, *args, **kwargs):
        if str(path).startswith(str(under)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(code, os.strerror(code), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(unidiff.fs.os, "open", fake)
