"""The VQ image tokenizer: a small diffusers `VQModel` that turns a 28x28 grayscale image into a 7x7 grid of codebook
ids (49 tokens over a 256-code vocabulary) and back, trained here from scratch on Animal-MNIST.

Choices:
- Shape: three ``DownEncoderBlock2D`` (channels 32, 64, 64), so two stride-2 downsamplings take 28 -> 14 -> 7 (the
  encoder's downsampling pads right and bottom by one and convolves 3x3 with stride 2: n -> floor(n / 2)); the decoder
  upsamples 7 -> 14 -> 28 by nearest neighbour. No padding to 32 is needed. 4-dimensional codes, 256 of them.
- Pixels: uint8 0..255 <-> float in [-1, 1] (``x / 127.5 - 1``); decoded floats are rounded and clipped back.
- The index path is diffusers' own: `VQModel.encode` gives the latents (B, D, 7, 7) before quantization, and
  ``model.quantize(h)`` returns ``(z_q, vq_loss, (perplexity, min_encodings, indices))`` whose ``indices`` are the
  argmin of the codebook distances (``torch.cdist``), flat (B * 7 * 7,) in row-major (b, i, j) order (perplexity and
  min_encodings are always None in diffusers 0.42). Decoding looks the codes up with
  ``quantize.get_codebook_entry`` and runs ``VQModel.decode(z_q, force_not_quantize=True)``, which is what
  ``VQModel.forward`` does after its own quantization; ``decode(encode(x))`` therefore equals ``model(x).sample``
  (to float rounding: forward's straight-through ``z + (z_q - z)`` is not bit for bit ``z_q``).
- Training (`train_vq`): MSE reconstruction plus the loss VQModel's quantizer returns, which is also what
  ``VQModel.forward(x).commit_loss`` holds: in diffusers' "legacy" form, ``|sg(z_q) - z|^2 + 0.25 |z_q - sg(z)|^2``
  (commitment weighted 1, codebook 0.25). diffusers' codebook starts uniform in +-1/K, far inside the cloud of
  latents, which then all pick a handful of codes; so here it starts as K encoder outputs drawn from the first batch
  (a data-dependent, k-means-like init) and, every `RESTART_EVERY` steps until 80% of training, a code that no latent
  chose since the last check is moved onto a random latent of the current batch (dead-code restart). AdamW (no
  weight decay on the codebook), linear warm-up then cosine decay to a tenth of the peak rate.
  Deterministic: the same images, steps and seed give the same weights (on one thread of one CPU build).
- Storage: diffusers' own folder, ``config.json`` + ``diffusion_pytorch_model.safetensors`` (about 3.6 MB), written
  by ``save_pretrained`` and read by ``from_pretrained`` with ``local_files_only``: nothing is ever downloaded.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from unidiff.errors import CheckpointError, ModalityInputError, UnidiffError
from unidiff_image.animals import SIDE, animals

FOLDER = Path(__file__).parent / "vq"
DEFAULT_STEPS = 3000
TRAIN_COMMAND = f"python -m unidiff_image.vq --out {{folder}} --steps {DEFAULT_STEPS}"
RESTART_EVERY = 25
_CHUNK = 512  # images per forward pass when encoding or decoding many
WEIGHTS = "diffusion_pytorch_model.safetensors"
# Caps on what a VQ folder (which a checkpoint's options may name) can make the loader read or build; the shipped
# one is 673 bytes, 3.6 MiB, 3 blocks of 1 layer.
MAX_CONFIG_BYTES = 64 * 2**10
MAX_WEIGHTS_BYTES = 64 * 2**20
MAX_BLOCKS, MAX_LAYERS_PER_BLOCK = 4, 8
FLOAT_DTYPES = ("F32", "F16", "BF16")


def vq_config(codebook_size: int = 256, embed_dim: int = 4, channels: Sequence[int] = (32, 64, 64),
              layers_per_block: int = 1, norm_groups: int = 8) -> dict:
    """The keyword arguments of a `VQModel` for 1-channel 28x28 images.

    Args:
        codebook_size: number of codes (the tokenizer's vocabulary size).
        embed_dim: dimension of a code, and of the encoder's output.
        channels: output channels of each encoder block (reversed for the decoder); ``len(channels) - 1``
            downsamplings, so 3 blocks give a 7x7 grid.
        layers_per_block: resnet layers per encoder block (the decoder has one more).
        norm_groups: GroupNorm groups; must divide every entry of ``channels``.
    """
    scale = 2 ** (len(channels) - 1)
    if SIDE % scale:
        raise UnidiffError(f"{len(channels)} blocks downsample {SIDE} by {scale}, which does not divide it; "
                           f"use at most 3 blocks")
    if any(c % norm_groups for c in channels):
        raise UnidiffError(f"norm_groups={norm_groups} does not divide the channels {tuple(channels)}")
    return dict(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * len(channels),
                up_block_types=("UpDecoderBlock2D",) * len(channels), block_out_channels=tuple(channels),
                layers_per_block=layers_per_block, latent_channels=embed_dim, vq_embed_dim=embed_dim,
                num_vq_embeddings=codebook_size, norm_num_groups=norm_groups, sample_size=SIDE)


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float (N, 1, 28, 28) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 1, 28, 28) in [-1, 1] -> uint8 (N, 28, 28), rounded and clipped."""
    return ((x.squeeze(1).detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()


def code_usage(codes: torch.Tensor, codebook_size: int) -> tuple[int, float]:
    """(distinct codes used, perplexity = exp(entropy) of the code histogram) of any tensor of codes."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    return int((counts > 0).sum()), float(torch.exp(-(p * p.log()).sum()))


# --- training ------------------------------------------------------------------------------------------------------


def _lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over 5% of the steps (at most 100), then cosine decay to lr / 10."""
    warm = max(1, min(100, steps // 20))
    if step < warm:
        return lr * (step + 1) / warm
    progress = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))


def train_vq(images: np.ndarray, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
             log_every: int = 100, config: dict | None = None, log=print):
    """Train a `VQModel` to reconstruct ``images``.

    Args:
        images: uint8 (N, 28, 28), white on black.
        steps: optimizer steps.
        batch_size: images per step, drawn at random with replacement from a seeded generator.
        lr: peak AdamW learning rate.
        seed: seeds the initial weights, the batches and the restarts.
        log_every: print a progress line every this many steps (0: never).
        config: `VQModel` keyword arguments (default: `vq_config()`).
        log: where progress lines go.

    Returns:
        The trained `VQModel`, in eval mode.
    """
    from diffusers import VQModel

    images = _check_images(images)
    if steps < 1 or batch_size < 1:
        raise UnidiffError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    torch.manual_seed(seed)
    model = VQModel(**(config or vq_config()))
    data = to_float(images)  # (N, 1, 28, 28)
    gen = torch.Generator().manual_seed(seed)
    codebook = model.quantize.embedding.weight  # (K, D)
    others = [p for p in model.parameters() if p is not codebook]
    opt = torch.optim.AdamW([{"params": others}, {"params": [codebook], "weight_decay": 0.0}], lr=lr)
    hits = torch.zeros(len(codebook), dtype=torch.long)
    restarted, start = 0, time.perf_counter()
    model.train()
    for step in range(steps):
        x = data[torch.randint(len(data), (batch_size,), generator=gen)]
        h = model.encode(x).latents  # (B, D, 7, 7)
        flat = h.detach().permute(0, 2, 3, 1).reshape(-1, h.shape[1])  # (B * 49, D)
        if step == 0:
            with torch.no_grad():
                codebook.copy_(flat[torch.randint(len(flat), (len(codebook),), generator=gen)])
        z_q, vq_loss, (_, _, idx) = model.quantize(h)
        x_hat = model.decode(z_q, force_not_quantize=True).sample
        mse = F.mse_loss(x_hat, x)
        loss = mse + vq_loss
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        hits += torch.bincount(idx.flatten(), minlength=len(codebook))
        if (step + 1) % RESTART_EVERY == 0 and step < 0.8 * steps:
            dead = (hits == 0).nonzero().flatten()
            with torch.no_grad():
                codebook[dead] = flat[torch.randint(len(flat), (len(dead),), generator=gen)]
            restarted += len(dead)
            hits.zero_()
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            used, ppl = code_usage(idx, len(codebook))
            log(f"step {step + 1}/{steps}  mse {mse.item():.4f}  vq {vq_loss.item():.4f}  codes in batch {used}  "
                f"perplexity {ppl:.1f}  restarted {restarted}  {(time.perf_counter() - start) / (step + 1):.3f} s/step")
    return model.eval()


# --- the tokenizer -------------------------------------------------------------------------------------------------


def _check_images(images) -> np.ndarray:
    """``images`` as uint8 (N, 28, 28), or a `ModalityInputError` saying what is wrong."""
    if isinstance(images, (list, tuple)) and images and isinstance(images[0], Image.Image):
        return VQTokenizer.from_pil(images)
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[1:] != (SIDE, SIDE) or len(array) == 0:
        raise ModalityInputError(f"expected a non-empty uint8 array (N, {SIDE}, {SIDE}) or a list of PIL images, "
                                 f"got {array.dtype} {array.shape}")
    return array


class VQTokenizer:
    """A trained `VQModel` as a tokenizer: uint8 images (N, 28, 28) <-> codes (N, 7, 7) in 0 .. vocab_size - 1."""

    def __init__(self, model):
        cfg = model.config
        if cfg.in_channels != 1 or cfg.out_channels != 1 or cfg.sample_size != SIDE:
            raise UnidiffError(f"the VQ model takes {cfg.in_channels}-channel {cfg.sample_size}px images; this "
                               f"tokenizer needs 1-channel {SIDE}px ones (build it with vq_config())")
        self.model = model.eval()
        side = SIDE // 2 ** (len(cfg.block_out_channels) - 1)
        self.grid_shape = (side, side)
        self.vocab_size = int(cfg.num_vq_embeddings)
        self.embed_dim = int(cfg.vq_embed_dim or cfg.latent_channels)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Codes (N, 7, 7) int64 of uint8 images (N, 28, 28) or a list of mode "L" 28x28 PIL images."""
        images = _check_images(images)
        out = []
        for i in range(0, len(images), _CHUNK):
            x = to_float(images[i:i + _CHUNK]).to(self.model.device)
            _, _, (_, _, idx) = self.model.quantize(self.model.encode(x).latents)
            out.append(idx.view(len(x), *self.grid_shape).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def latents(self, codes: torch.Tensor) -> torch.Tensor:
        """The quantized latents (N, D, 7, 7) of codes (N, 7, 7): the codebook vectors they index."""
        codes = self._check_codes(codes).to(self.model.device)
        shape = (len(codes), *self.grid_shape, self.embed_dim)  # (N, 7, 7, D), as get_codebook_entry wants it
        return self.model.quantize.get_codebook_entry(codes.flatten(), shape)

    @torch.no_grad()
    def decode_float(self, codes: torch.Tensor) -> torch.Tensor:
        """The decoder's output (N, 1, 28, 28), float in about [-1, 1], for codes (N, 7, 7)."""
        z_q = self.latents(codes)
        return torch.cat([self.model.decode(z, force_not_quantize=True).sample for z in z_q.split(_CHUNK)])

    def decode(self, codes: torch.Tensor) -> np.ndarray:
        """uint8 images (N, 28, 28) of codes (N, 7, 7)."""
        return to_uint8(self.decode_float(codes))

    def _check_codes(self, codes) -> torch.Tensor:
        codes = torch.as_tensor(codes)
        if codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.ndim != 3 \
                or tuple(codes.shape[1:]) != self.grid_shape:
            raise ModalityInputError(f"expected integer codes (N, {self.grid_shape[0]}, {self.grid_shape[1]}), got "
                                     f"{codes.dtype} {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.vocab_size):
            raise ModalityInputError(f"codes must lie in 0..{self.vocab_size - 1}, found {int(codes.min())}.."
                                     f"{int(codes.max())}")
        return codes.long()

    @staticmethod
    def to_pil(images: np.ndarray) -> list[Image.Image]:
        """uint8 (N, 28, 28) -> N PIL images of mode "L"."""
        return [Image.fromarray(image, mode="L") for image in _check_images(images)]

    @staticmethod
    def from_pil(images: Sequence[Image.Image]) -> np.ndarray:
        """N PIL images of mode "L" and size 28x28 -> uint8 (N, 28, 28)."""
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image) or image.mode != "L" or image.size != (SIDE, SIDE):
                what = f"mode {image.mode!r} size {image.size}" if isinstance(image, Image.Image) else type(image)
                raise ModalityInputError(f"image {i} is {what}; expected a grayscale (mode 'L') {SIDE}x{SIDE} "
                                         f"PIL image (convert with image.convert('L').resize(({SIDE}, {SIDE})))")
        if not images:
            raise ModalityInputError("expected at least one PIL image")
        return np.stack([np.asarray(image, dtype=np.uint8) for image in images])

    def save(self, folder: str | Path) -> None:
        """Write diffusers' folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``."""
        self.model.save_pretrained(str(folder))

    @classmethod
    def load(cls, folder: str | Path = FOLDER) -> "VQTokenizer":
        """The tokenizer saved in ``folder``; a missing, unreadable or oversized folder raises `CheckpointError`.

        The folder is data, never code: ``config.json`` (at most `MAX_CONFIG_BYTES`) is read as JSON and the
        network it describes is built on the meta device, whose every parameter must be in the header of
        ``diffusion_pytorch_model.safetensors`` (at most `MAX_WEIGHTS_BYTES`) with the same shape and a float
        dtype; only then is anything allocated, and the weights are read by safetensors (no pickle fallback)."""
        from diffusers import VQModel

        folder = Path(folder)
        rebuild = f"rebuild it with `{TRAIN_COMMAND.format(folder=folder)}`"
        config = _read_config(folder, rebuild)
        _check_weights_header(config, folder, rebuild)
        try:  # low_cpu_mem_usage=False: the path that needs no `accelerate` (and does not warn about it)
            model = VQModel.from_pretrained(str(folder), local_files_only=True, low_cpu_mem_usage=False,
                                            use_safetensors=True)
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, json.JSONDecodeError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise CheckpointError(f"cannot read the VQ tokenizer in {folder} ({why}); {rebuild}") from None
        try:
            return cls(model)
        except UnidiffError as err:
            raise CheckpointError(f"{folder}: {err}; {rebuild}") from None


def _read_config(folder: Path, rebuild: str) -> dict:
    """The VQ folder's config.json as a dict, read with a size cap, with the sizes that shape the network bounded
    (a hostile one could otherwise ask for millions of layers before a weight is read)."""
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"no VQ tokenizer in {folder} (config.json is missing); {rebuild}")
    with open(path, "rb") as fh:
        data = fh.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path} is over {MAX_CONFIG_BYTES // 1024} KiB, too large for a VQ config; {rebuild}")
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a 5000-digit int, nesting 30000 deep
        raise CheckpointError(f"cannot read the VQ tokenizer in {folder} ({path.name}: {err}); {rebuild}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object of VQModel settings; {rebuild}")
    blocks = config.get("block_out_channels")
    if not isinstance(blocks, list) or not 1 <= len(blocks) <= MAX_BLOCKS or any(
            not isinstance(config.get(k, blocks), list) or len(config.get(k, blocks)) != len(blocks)
            for k in ("down_block_types", "up_block_types")):
        raise CheckpointError(f"{path}: block_out_channels must be a list of 1..{MAX_BLOCKS} channel counts, as long "
                              f"as down_block_types and up_block_types; got {blocks!r}; {rebuild}")
    layers = config.get("layers_per_block", 1)
    if isinstance(layers, bool) or not isinstance(layers, int) or not 1 <= layers <= MAX_LAYERS_PER_BLOCK:
        raise CheckpointError(f"{path}: layers_per_block must be an int in 1..{MAX_LAYERS_PER_BLOCK}; got "
                              f"{layers!r}; {rebuild}")
    return config


def _check_weights_header(config: dict, folder: Path, rebuild: str) -> None:
    """Refuse a weights file that does not hold exactly the parameters ``config`` describes (names, shapes, float
    dtypes), reading only the safetensors header: so the network is never allocated at a size the file lacks."""
    from diffusers import VQModel
    from safetensors import SafetensorError, safe_open

    path = folder / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"no VQ tokenizer weights in {folder} ({WEIGHTS} is missing); {rebuild}")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise CheckpointError(f"{path} is {path.stat().st_size / 2**20:.0f} MiB, over the {MAX_WEIGHTS_BYTES >> 20} "
                              f"MiB a VQ tokenizer of 28x28 images may be; {rebuild}")
    try:
        with torch.device("meta"):  # parameters without storage: shapes only
            skeleton = VQModel.from_config(config)
    except Exception as err:  # diffusers and torch raise a dozen kinds for nonsense sizes; all mean a bad config
        raise CheckpointError(f"{folder}/config.json does not describe a VQModel ({type(err).__name__}: {err}); "
                              f"{rebuild}") from None
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    try:
        with safe_open(str(path), framework="pt") as fh:
            have = {k: (tuple(fh.get_slice(k).get_shape()), fh.get_slice(k).get_dtype()) for k in fh.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"cannot read the VQ tokenizer in {folder} ({WEIGHTS}: {err}); {rebuild}") from None
    problems = {
        "missing": [k for k in want if k not in have],
        "unexpected": [k for k in have if k not in want],
        "wrong shape": [f"{k} {have[k][0]} (config: {want[k]})" for k in want if k in have and have[k][0] != want[k]],
        "not float": [f"{k} {have[k][1]}" for k in want if k in have and have[k][1] not in FLOAT_DTYPES],
    }
    wrong = {k: v for k, v in problems.items() if v}
    if wrong:
        listing = "; ".join(f"{k}: {', '.join(v[:3])}" + (f" (+{len(v) - 3})" if len(v) > 3 else "")
                            for k, v in wrong.items())
        raise CheckpointError(f"the VQ tokenizer in {folder} does not match its config ({listing}); {rebuild}")


def reconstruction_report(tokenizer: VQTokenizer, images) -> dict:
    """How well ``images`` survive encode -> decode: MSE in [0, 1] pixel units, PSNR in dB, codebook usage.

    Returns:
        ``{"images", "mse", "psnr_db", "codes_used", "codebook_size", "perplexity"}``; the MSE is that of the uint8
        images a user gets back.
    """
    images = _check_images(images)
    codes = tokenizer.encode(images)
    recon = tokenizer.decode(codes)
    mse = float(np.mean(((recon.astype(np.float64) - images) / 255.0) ** 2))
    used, ppl = code_usage(codes, tokenizer.vocab_size)
    return {"images": len(images), "mse": mse, "psnr_db": 10 * math.log10(1 / mse) if mse > 0 else math.inf,
            "codes_used": used, "codebook_size": tokenizer.vocab_size, "perplexity": ppl}


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_image.vq") -> None:
    """Train the VQ tokenizer on Animal-MNIST train, report reconstruction on valid, save it."""
    from unidiff.cli import Parser

    parser = Parser(prog=prog, description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help=f"output folder, e.g. {FOLDER}")
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"optimizer steps (default {DEFAULT_STEPS})")
    parser.add_argument("--batch-size", type=int, default=64, help="images per step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, batches and restarts (default 0)")
    parser.add_argument("--log-every", type=int, default=100, help="progress line every N steps (default 100)")
    args = parser.parse_args(argv)
    train_images, _ = animals("train")
    start = time.perf_counter()
    model = train_vq(train_images, args.steps, args.batch_size, args.lr, args.seed, args.log_every)
    per_step = (time.perf_counter() - start) / args.steps
    tok = VQTokenizer(model)
    tok.save(args.out)
    r = reconstruction_report(tok, animals("valid")[0])
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**20
    print(f"wrote {args.out} ({size:.2f} MB, {sum(p.numel() for p in model.parameters())} parameters)\n")
    print("| steps | batch | lr | seed | s/step | valid MSE | valid PSNR (dB) | codes used | perplexity |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {args.steps} | {args.batch_size} | {args.lr:g} | {args.seed} | {per_step:.3f} | {r['mse']:.5f} | "
          f"{r['psnr_db']:.2f} | {r['codes_used']}/{r['codebook_size']} | {r['perplexity']:.1f} |")


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
