"""Bad options of the built-in modality factories, and hostile image files (issue 20, groups 1 and 8).

A checkpoint's config.json hands its modality options to the plugin's factory, so each option is untrusted input:
every bad value must be one `UnidiffError` naming the option, refused before the factory reads or allocates
anything, and a file an option names is read as data only. Image files are checked from their header, so a
decompression bomb is refused without being decoded."""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from diffusers import VQModel
from PIL import Image, ImageFile
from safetensors.torch import load_file, save_file

import unidiff_code.tokenizer as code_tokenizer
import unidiff_image.vq as vq
from unidiff.cli import main
from unidiff.errors import CheckpointError, ModalityInputError, UnidiffError
from unidiff.plugins import Registry
from unidiff_code import CodeModality
from unidiff_dna import DnaModality
from unidiff_image import MODEL_DIR as IMAGE_MODEL, ImageModality, read_image

NUMBERS = [math.nan, math.inf, -math.inf, -1, 0, 10**6, 10**30, 2.5, 4.0, "4", True, None, [4]]
TEXTS = [5, 2.5, math.nan, None, True, [], {}, b"python", "", "py\nthon", "x" * 5000]
TINY = vq.vq_config(codebook_size=32, embed_dim=4, channels=(8, 16, 16), norm_groups=4)


@pytest.fixture
def loads(monkeypatch):
    """Records every file the code and image factories would read, so a test can assert that none was."""
    calls = []
    real_code, real_vq = code_tokenizer.load, vq.VQTokenizer.load.__func__
    monkeypatch.setattr(code_tokenizer, "load", lambda *a: calls.append(a) or real_code(*a))
    monkeypatch.setattr(vq.VQTokenizer, "load", classmethod(lambda cls, *a: calls.append(a) or real_vq(cls, *a)))
    return calls


@pytest.fixture(scope="module")
def tiny_vq(tmp_path_factory) -> Path:
    """A valid VQ tokenizer folder (a tiny untrained model); tests copy it and damage the copy."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vq") / "tiny"
    VQModel(**TINY).save_pretrained(str(folder))
    return folder


def vq_copy(tiny_vq: Path, tmp_path: Path, edit=None) -> Path:
    folder = tmp_path / "vq"
    shutil.copytree(tiny_vq, folder)
    if edit is not None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def refused(factory, option: str, **options) -> str:
    """The message of the `UnidiffError` that ``factory(**options)`` raises; it must name ``option``."""
    with pytest.raises(UnidiffError) as e:
        factory(**options)
    msg = str(e.value)
    assert f"option {option}" in msg, msg
    return msg


# --- image: grid_scale and vq ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", NUMBERS)
def test_image_grid_scale_must_be_a_small_int(value, loads):
    """grid_scale=10**6 once asked numpy for 1.42 PiB; now every bad value is refused before the VQ is read (a
    float, even 4.0, is refused rather than truncated)."""
    msg = refused(ImageModality, "grid_scale", grid_scale=value)
    assert repr(value)[:20] in msg and "1..16" in msg
    assert loads == []


def test_image_grid_scale_bounds_are_accepted():
    assert ImageModality(grid_scale=1).grid_scale == 1 and ImageModality(grid_scale=16).grid_scale == 16


@pytest.mark.parametrize("value", [5, 2.5, True, [], {}, "", "   ", b"vq"])
def test_image_vq_must_be_a_folder_path(value, loads):
    msg = refused(ImageModality, "vq", vq=value)
    assert "VQ tokenizer folder" in msg and loads == []


def test_image_vq_names_the_option_and_the_folder_for_a_missing_folder(tmp_path):
    msg = refused(ImageModality, "vq", vq=str(tmp_path / "nothing"))
    assert str(tmp_path / "nothing") in msg and "python -m unidiff_image.vq" in msg


def test_a_valid_vq_folder_is_accepted_and_rebuilt_from_its_options(tiny_vq):
    m = ImageModality(vq=str(tiny_vq), grid_scale=2)
    assert m.vocab_size == 32 and m.options() == {"vq": str(tiny_vq), "grid_scale": 2}
    assert ImageModality(**m.options()).options() == m.options()


HOSTILE_CONFIGS = {
    "a million layers": lambda c: c.update(layers_per_block=10**6),
    "layers as a string": lambda c: c.update(layers_per_block="1"),
    "a hundred blocks": lambda c: c.update(block_out_channels=[8] * 100, down_block_types=["DownEncoderBlock2D"] * 100,
                                           up_block_types=["UpDecoderBlock2D"] * 100),
    "blocks not a list": lambda c: c.update(block_out_channels=8),
    "block types of another length": lambda c: c.update(down_block_types=["DownEncoderBlock2D"]),
    "16384 channels": lambda c: c.update(block_out_channels=[16384] * 3, norm_num_groups=4),
    "a 10**9 codebook": lambda c: c.update(num_vq_embeddings=10**9),
    "zero groups": lambda c: c.update(norm_num_groups=0),
    "an unknown block": lambda c: c.update(down_block_types=["os.system"] * 3),
}


@pytest.mark.parametrize("edit", HOSTILE_CONFIGS.values(), ids=HOSTILE_CONFIGS.keys())
def test_a_hostile_vq_config_is_refused_before_anything_is_allocated(edit, tiny_vq, tmp_path):
    """The network a config describes is built on the meta device and checked against the weights' header."""
    folder = vq_copy(tiny_vq, tmp_path, edit)
    start = time.perf_counter()
    msg = refused(ImageModality, "vq", vq=str(folder))
    assert time.perf_counter() - start < 5
    assert str(folder) in msg and "python -m unidiff_image.vq" in msg


@pytest.mark.parametrize("damage", ["not json", "a list", "deeply nested", "a 5000-digit int", "over 64 KiB",
                                    "int64 weights", "no safetensors, a pickle instead", "weights over 64 MiB",
                                    "a file, not a folder"])
def test_a_damaged_vq_folder_names_the_option(damage, tiny_vq, tmp_path):
    folder = vq_copy(tiny_vq, tmp_path)
    config, weights = folder / "config.json", folder / vq.WEIGHTS
    marker = tmp_path / "pickle-ran"
    if damage == "not json":
        config.write_text("{ not json")
    elif damage == "a list":
        config.write_text("[1, 2]")
    elif damage == "deeply nested":
        config.write_text("[" * 30000 + "]" * 30000)
    elif damage == "a 5000-digit int":
        config.write_text('{"layers_per_block": ' + "9" * 5000 + "}")
    elif damage == "over 64 KiB":
        config.write_text(json.dumps(dict(json.loads(config.read_text()), padding="x" * 70000)))
    elif damage == "int64 weights":
        save_file({k: v.to(torch.int64) for k, v in load_file(weights).items()}, weights)
    elif damage == "no safetensors, a pickle instead":  # diffusers alone would fall back to the .bin file
        weights.unlink()

        class Payload:
            def __reduce__(self):
                return (Path.touch, (marker,))

        (folder / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    elif damage == "weights over 64 MiB":
        with open(weights, "r+b") as fh:  # sparse: costs no disk
            fh.truncate(vq.MAX_WEIGHTS_BYTES + 1)
    else:
        folder = weights
    msg = refused(ImageModality, "vq", vq=str(folder))
    assert str(folder) in msg
    assert not marker.exists()  # no pickle was ever loaded


# --- code: language, tokenizer, tag, suffix ---------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["language", "tokenizer", "tag"])
@pytest.mark.parametrize("value", TEXTS, ids=[repr(v)[:12] for v in TEXTS])
def test_code_text_options_must_be_printable_strings(option, value, loads):
    if value is None and option != "language":
        pytest.skip("None means the language's default")
    options = {"language": "rust", "tokenizer": "python-bpe-8k", "tag": "<|python|>", "suffix": ".rs", option: value}
    refused(CodeModality, option, **options)
    assert loads == []


@pytest.mark.parametrize("value", ["py", ".", "." + "a" * 17, "../../etc/passwd", ".p/y", ".py\n", "", 5, [".py"]])
def test_code_suffix_must_be_a_plain_file_suffix(value, loads):
    """The suffix names output files, so it can hold no path."""
    msg = refused(CodeModality, "suffix", language="rust", tokenizer="python-bpe-8k", tag="<|python|>", suffix=value)
    assert "e.g. '.py'" in msg and loads == []


@pytest.mark.parametrize("value", ["/etc/passwd", "../../etc/passwd", "tokenizers/python-bpe-8k", "a b", "..",
                                   ".hidden", "x" * 65])
def test_code_tokenizer_is_a_shipped_name_or_a_json_path(value):
    msg = refused(CodeModality, "tokenizer", tokenizer=value)
    assert "bare name" in msg or "letters, digits" in msg


def test_code_tokenizer_file_of_the_wrong_format_is_refused(tmp_path):
    cases = {"list.json": "[1, 2, 3]", "empty.json": "", "png.json": None, "config.json": '{"format": "x"}'}
    for name, content in cases.items():
        path = tmp_path / name
        if content is None:
            Image.new("L", (28, 28)).save(path, format="PNG")
        else:
            path.write_text(content)
        msg = refused(CodeModality, "tokenizer", tokenizer=str(path))
        assert str(path) in msg and "not a Hugging Face tokenizer JSON" in msg


def test_code_tokenizer_file_that_is_too_large_is_refused_unparsed(tmp_path, monkeypatch):
    shipped = code_tokenizer.ASSETS / "python-bpe-8k.json"
    path = tmp_path / "big.json"
    shutil.copy(shipped, path)
    monkeypatch.setattr(code_tokenizer, "MAX_BYTES", shipped.stat().st_size - 1)
    msg = refused(CodeModality, "tokenizer", tokenizer=str(path))
    assert "MiB" in msg and str(path) in msg


def test_code_tokenizer_that_is_a_pipe_or_missing_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert "no tokenizer file" in refused(CodeModality, "tokenizer", tokenizer=str(fifo))
    assert "no tokenizer file" in refused(CodeModality, "tokenizer", tokenizer=str(tmp_path / "missing.json"))


def test_code_tag_the_tokenizer_lacks_names_the_tag():
    msg = refused(CodeModality, "tag", language="rust", tokenizer="python-bpe-8k", tag="<|rust|>", suffix=".rs")
    assert "no tag token '<|rust|>'" in msg


# --- dna: iupac -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, math.nan, None, True, ["n"], {"n": 1}, "N", "", "n " * 3])
def test_dna_iupac_is_error_or_n(value):
    msg = refused(DnaModality, "iupac", iupac=value)
    assert "one of error, n" in msg and repr(value) in msg


# --- through the checkpoint loader and the command line ---------------------------------------------------------------


@pytest.fixture
def image_model(tmp_path) -> Path:
    folder = tmp_path / "image-model"
    shutil.copytree(IMAGE_MODEL, folder)
    return folder


def set_image_options(folder: Path, **options) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config["modalities"]["image"]["options"].update(options)
    path.write_text(json.dumps(config))


@pytest.mark.parametrize("options", [{"grid_scale": 10**6}, {"grid_scale": 2.5}, {"vq": "/"},
                                     {"vq": "/etc/passwd"}])
def test_a_checkpoint_with_hostile_image_options_is_refused_naming_plugin_and_option(options, image_model, capsys):
    from unidiff.training.checkpoint import load_model

    set_image_options(image_model, **options)
    with pytest.raises(CheckpointError) as e:
        load_model(image_model, Registry())
    (option,) = options
    assert "plugin 'image'" in str(e.value) and f"option {option}=" in str(e.value)
    code = main(["caption", "--model", str(image_model), str(image_model / "config.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unidiff: error: ") and err.count("\n") == 1 and f"option {option}=" in err


# --- image files: bombs, truncated and corrupt files -------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A valid 1-bit black PNG of width x height, compressed row by row in little memory (a 20000x20000 one is
    48 KB); ``rows`` writes only that many rows (a file cut short)."""
    z = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    data = b"".join(z.compress(row) for _ in range(height if rows is None else rows)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [20000, 10000, 100000])
def test_an_image_bomb_is_refused_from_its_header(side, tmp_path, monkeypatch, image):
    path = bomb_png(tmp_path / f"bomb{side}.png", side, side, rows=None if side <= 20000 else 10)
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or pytest.fail("decoded"))
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught, pytest.raises(ModalityInputError) as e:
        warnings.simplefilter("always")
        image.encode(path)
    assert not caught, [str(w.message) for w in caught]  # PIL's DecompressionBombWarning would print a source line
    assert time.perf_counter() - start < 1 and decoded == []
    msg = str(e.value)
    assert str(path) in msg and "28x28" in msg


def test_refusing_image_bombs_takes_little_memory(tmp_path):
    """Peak resident memory of refusing both bombs, measured in a fresh process (decoding the 10000x10000 one
    would take 100 MB for its pixels and 100 MB more to convert them)."""
    bombs = [bomb_png(tmp_path / "b20k.png", 20000, 20000), bomb_png(tmp_path / "b10k.png", 10000, 10000)]
    script = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from unidiff.errors import ModalityInputError
        from unidiff_image import read_image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for p in {[str(b) for b in bombs]!r}:
            try:
                read_image(Path(p))
            except ModalityInputError:
                pass
            else:
                sys.exit("not refused: " + p)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 20  # MB beyond the process's peak after imports


def test_a_bomb_through_the_command_line_is_one_error_line(tmp_path, capsys):
    path = bomb_png(tmp_path / "bomb.png", 20000, 20000)
    code = main(["caption", "--model", "image", str(path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("unidiff: error: ") and err.count("\n") == 1
    assert str(path) in err and "28x28" in err


@pytest.fixture(scope="module")
def good_png(tmp_path_factory) -> bytes:
    import numpy as np

    path = tmp_path_factory.mktemp("png") / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("damage", ["cut in the pixels", "cut in the header", "only the signature", "empty",
                                    "flipped pixel bytes", "a bad IHDR CRC", "text named .png", "an EPS file"])
def test_a_truncated_or_corrupt_image_is_one_error_naming_the_file(damage, good_png, tmp_path, image):
    path = tmp_path / "damaged.png"
    data = good_png
    if damage == "cut in the pixels":
        data = data[:len(data) // 2]
    elif damage == "cut in the header":
        data = data[:20]
    elif damage == "only the signature":
        data = data[:8]
    elif damage == "empty":
        data = b""
    elif damage == "flipped pixel bytes":
        start = data.index(b"IDAT") + 4
        data = data[:start] + bytes(b ^ 0xFF for b in data[start:start + 64]) + data[start + 64:]
    elif damage == "a bad IHDR CRC":
        data = data[:29] + bytes([data[29] ^ 0xFF]) + data[30:]
    elif damage == "text named .png":
        data = b"def f():\n    return 1\n"
    elif damage == "an EPS file":  # a format PIL would render by running Ghostscript: not read at all
        data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 28 28\nshowpage\n"
    path.write_bytes(data)
    with pytest.raises(ModalityInputError) as e:
        image.encode(path)
    msg = str(e.value)
    assert str(path) in msg and ("truncated or corrupt" in msg or "28x28" in msg), msg


def test_a_good_png_still_reads(good_png, tmp_path):
    path = tmp_path / "good.png"
    path.write_bytes(good_png)
    assert read_image(path).size == (28, 28)
