"""The VQ image tokenizer (`unidiff_image.vq`): its grid, the index path against VQModel's own forward, training,
the diffusers folder round trip and its errors, and the PIL helpers. Tiny models; the shipped config only for shapes."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from diffusers import VQModel
from PIL import Image
from safetensors.torch import load_file, save_file

from unidiff.errors import CheckpointError, ModalityInputError, UnidiffError
from unidiff_image.animals import load_animals
import unidiff_image.vq as vq

TINY = vq.vq_config(codebook_size=32, embed_dim=4, channels=(8, 16, 16), norm_groups=4)


@pytest.fixture(scope="module")
def images():
    return load_animals()[0][::1000][:8]  # one animal of each of 8 classes, (8, 28, 28) uint8


@pytest.fixture(scope="module")
def trained(images):
    """A tiny VQ trained for 60 steps on the 8 images, and the MSE of the same model before training."""
    before = vq.reconstruction_report(vq.VQTokenizer(_tiny(seed=0)), images)["mse"]
    model = vq.train_vq(images, steps=60, batch_size=8, lr=3e-3, seed=0, log_every=0, config=TINY)
    return vq.VQTokenizer(model), before


def _tiny(seed: int) -> VQModel:
    torch.manual_seed(seed)
    return VQModel(**TINY).eval()


def test_shipped_config_gives_a_7x7_grid_of_256_codes_and_stays_small():
    model = VQModel(**vq.vq_config()).eval()
    with torch.no_grad():
        latents = model.encode(torch.zeros(2, 1, 28, 28)).latents
        out = model(torch.zeros(2, 1, 28, 28)).sample
    assert latents.shape == (2, 4, 7, 7) and out.shape == (2, 1, 28, 28)
    tok = vq.VQTokenizer(model)
    assert tok.grid_shape == (7, 7) and tok.vocab_size == 256
    assert sum(p.numel() for p in model.parameters()) * 4 < 4 * 2**20


def test_config_refuses_a_grid_that_does_not_divide_28_and_bad_groups():
    with pytest.raises(UnidiffError, match="does not divide"):
        vq.vq_config(channels=(8, 8, 8, 8))
    with pytest.raises(UnidiffError, match="norm_groups=8"):
        vq.vq_config(channels=(12, 16, 16))


def test_encode_decode_shapes_dtypes_and_range(images):
    tok = vq.VQTokenizer(_tiny(seed=1))
    codes = tok.encode(images)
    assert codes.shape == (8, 7, 7) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.vocab_size == 32
    out = tok.decode(codes)
    assert out.shape == (8, 28, 28) and out.dtype == np.uint8


def test_index_path_matches_vqmodel_forward(trained, images):
    tok, _ = trained
    x = vq.to_float(images)
    with torch.no_grad():
        h = tok.model.encode(x).latents
        z_q, _, _ = tok.model.quantize(h)
        forward = tok.model(x).sample
    codes = tok.encode(images)
    torch.testing.assert_close(tok.latents(codes), z_q, atol=1e-6, rtol=0)
    torch.testing.assert_close(tok.decode_float(codes), forward, atol=1e-5, rtol=0)
    # the codes are the nearest codebook vectors of the encoder's latents
    flat = h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])
    nearest = ((flat[:, None] - tok.model.quantize.embedding.weight[None]) ** 2).sum(-1).argmin(-1)
    assert torch.equal(codes.flatten(), nearest)


def test_training_reconstructs_better_than_initialisation_and_is_deterministic(trained, images):
    tok, before = trained
    report = vq.reconstruction_report(tok, images)
    assert report["mse"] < before / 4, (before, report)
    assert report["psnr_db"] == pytest.approx(10 * math.log10(1 / report["mse"]))
    assert report["images"] == 8 and report["codebook_size"] == 32
    assert 1 <= report["codes_used"] <= 32 and 1 <= report["perplexity"] <= report["codes_used"]
    a = vq.train_vq(images, steps=3, batch_size=4, seed=5, log_every=0, config=TINY).state_dict()
    b = vq.train_vq(images, steps=3, batch_size=4, seed=5, log_every=0, config=TINY).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_prints_progress(images):
    lines = []
    vq.train_vq(images, steps=2, batch_size=2, seed=0, log_every=1, config=TINY, log=lines.append)
    assert len(lines) == 2 and lines[-1].startswith("step 2/2  mse ")


def test_save_load_round_trip_gives_identical_codes_and_images(trained, images, tmp_path):
    tok, _ = trained
    tok.save(tmp_path / "vq")
    assert sorted(p.name for p in (tmp_path / "vq").iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    back = vq.VQTokenizer.load(tmp_path / "vq")
    codes = tok.encode(images)
    assert torch.equal(back.encode(images), codes)
    assert np.array_equal(back.decode(codes), tok.decode(codes))
    assert back.grid_shape == (7, 7) and back.vocab_size == 32


def test_missing_folder_names_it_and_the_train_command(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape("python -m unidiff_image.vq --out")) as err:
        vq.VQTokenizer.load(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(err.value)


@pytest.mark.parametrize("damage", ["config", "truncated", "missing weight", "other images"])
def test_corrupt_folder_names_it_and_the_train_command(trained, tmp_path, damage):
    tok, _ = trained
    folder = tmp_path / "vq"
    tok.save(folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    if damage == "config":
        (folder / "config.json").write_text("{ not json")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "missing weight":  # diffusers alone would fill it with random numbers and only warn
        state = load_file(weights)
        del state["decoder.conv_out.weight"]
        save_file(state, weights)
    else:
        VQModel(**dict(TINY, in_channels=3, out_channels=3)).save_pretrained(folder)
    with pytest.raises(CheckpointError, match=re.escape("python -m unidiff_image.vq --out")) as err:
        vq.VQTokenizer.load(folder)
    assert str(folder) in str(err.value)


def test_a_model_for_other_images_is_refused():
    config = dict(TINY, in_channels=3, out_channels=3)
    with pytest.raises(UnidiffError, match="1-channel 28px"):
        vq.VQTokenizer(VQModel(**config))


def test_pil_round_trip_and_pil_input(images):
    pil = vq.VQTokenizer.to_pil(images)
    assert all(p.mode == "L" and p.size == (28, 28) for p in pil)
    assert np.array_equal(vq.VQTokenizer.from_pil(pil), images)
    tok = vq.VQTokenizer(_tiny(seed=2))
    assert torch.equal(tok.encode(pil), tok.encode(images))


def test_bad_inputs_are_refused(images):
    tok = vq.VQTokenizer(_tiny(seed=3))
    with pytest.raises(ModalityInputError, match="uint8 array"):
        tok.encode(images.astype(np.float32))
    with pytest.raises(ModalityInputError, match="uint8 array"):
        tok.encode(images[0])
    with pytest.raises(ModalityInputError, match="mode 'RGB'"):
        vq.VQTokenizer.from_pil([Image.new("RGB", (28, 28))])
    with pytest.raises(ModalityInputError, match="0..31"):
        tok.decode(torch.full((1, 7, 7), 32))
    with pytest.raises(ModalityInputError, match=r"\(N, 7, 7\)"):
        tok.decode(torch.zeros(1, 6, 7, dtype=torch.long))
