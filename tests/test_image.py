"""The image modality: images in and out (PIL, files, arrays, codes), PNG files and grids, boxes to in-paint, and the
caption-paired dataset the shipped image model is trained on."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unidiff.data import Segment, Tokens, regenerate_positions
from unidiff.errors import ModalityInputError, UnidiffError
from unidiff_image import animals_captioned, cells_of_box, png_grid
from unidiff_image.animals import CAPTION_TEMPLATES


# --- boxes and segments ------------------------------------------------------------------------------------------


def test_a_pixel_box_covers_the_4x4_cells_it_touches():
    assert cells_of_box("0,0,14,28") == [r * 7 + c for r in range(7) for c in range(4)]  # the left half
    assert cells_of_box("4,4,8,8") == [8]  # exactly one cell
    assert cells_of_box("3,3,5,5") == [0, 1, 7, 8]  # a box across a corner touches four cells
    assert cells_of_box((24, 24, 28, 28)) == [48]
    for bad in ("0,0,0,5", "0,0,29,5", "1,2,3", "a,b,c,d"):
        with pytest.raises(UnidiffError, match="box"):
            cells_of_box(bad)


def test_regenerate_positions_gives_the_rest_in_order():
    segs = regenerate_positions("image", [10, 11, 12, 13, 14, 15], {1, 2, 5})
    assert [(s.role, list(s.content) if s.role == "given" else s.length) for s in segs] == [
        ("given", [10]), ("generate", 2), ("given", [13, 14]), ("generate", 1)]
    assert all(isinstance(s.content, Tokens) for s in segs if s.role == "given")
    with pytest.raises(UnidiffError, match="0..5"):
        regenerate_positions("image", [1] * 6, {6})


# --- PNG output --------------------------------------------------------------------------------------------------


def test_png_grid_places_each_image_scaled_in_reading_order():
    ims = [np.full((28, 28), v, dtype=np.uint8) for v in (0, 100, 200)]
    grid = np.asarray(png_grid(ims, columns=2, scale=2))
    assert grid.shape == (2 * 58 - 2, 2 * 58 - 2)  # 2 rows and columns of 56 pixels, a 2-pixel gap between
    assert grid[0, 0] == 0 and grid[55, 55] == 0 and grid[0, 58] == 100 and grid[58, 0] == 200
    assert grid[0, 56] == 255 and grid[58, 58] == 255  # the gap and the empty fourth place stay white


def test_write_one_png_or_a_grid(image, valid, tmp_path):
    one, many = tmp_path / "one.png", tmp_path / "many.png"
    image.write([Image.fromarray(valid[0][0])], one)
    assert np.array_equal(np.asarray(Image.open(one)), valid[0][0])  # a single image: its own 28x28 pixels
    image.write([Image.fromarray(x) for x in valid[0][:5]], many)
    assert Image.open(many).size == (3 * 29 * 4 - 4, 2 * 29 * 4 - 4)  # 5 images: 3 columns, 2 rows, scale 4
    with pytest.raises(UnidiffError, match=".png"):
        image.write([valid[0][0]], tmp_path / "x.jpg")


# --- content in and out ------------------------------------------------------------------------------------------


def test_images_round_trip_through_49_codes(image, valid, tmp_path):
    x = valid[0][:20]
    codes = image.encode_many(list(x))
    assert len(codes) == 20 and all(len(c) == 49 and 0 <= min(c) and max(c) < 256 for c in codes)
    back = np.stack([np.asarray(image.decode(c)) for c in codes])
    mse = np.mean(((back.astype(float) - x) / 255) ** 2)
    assert 10 * np.log10(1 / mse) > 15  # held-out PSNR of the shipped VQ: see docs/results/image.md
    # a file, a PIL image and an array are the same content
    path = tmp_path / "a.png"
    Image.fromarray(x[3]).save(path)
    assert image.encode(path) == image.encode(Image.fromarray(x[3])) == image.encode(x[3]) == codes[3]
    assert image.show(x[3]).count("\n") == 13 and len(image.show(x[3]).splitlines()[0]) == 28


def test_bad_images_are_refused_with_the_fix(image, tmp_path):
    with pytest.raises(ModalityInputError, match="resize"):
        image.encode(Image.new("L", (32, 32)))
    with pytest.raises(ModalityInputError, match="no image file"):
        image.encode(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ModalityInputError, match="cannot read"):
        image.encode(tmp_path / "bad.png")
    with pytest.raises(ModalityInputError, match="49 codes"):
        image.decode([1, 2, 3])


def test_the_dataset_pairs_every_image_with_every_training_phrasing(valid):
    docs = animals_captioned("valid")
    n = len(valid[0])
    assert len(docs) == n * len(CAPTION_TEMPLATES)
    assert docs[0].condition_modality == "text" and isinstance(docs[0].content, Tokens)
    assert docs[0].content == docs[n].content and len(docs[0].content) == 49  # image 0, phrasings 0 and 1
    label = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")[valid[1][0]]
    assert docs[0].condition.endswith(label) and docs[n].condition == label  # "a cat" / "an elephant", then "cat"
    assert isinstance(Segment("image", docs[0].content).content, Tokens)
