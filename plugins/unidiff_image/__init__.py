"""unidiff_image: VQ image tokens, a modality on a 2-D grid, and text-conditioned animal silhouettes.

An image segment is a 28x28 grayscale image: a PIL image, a path to an image file, a uint8 array (28, 28), or the
VQ codes themselves as `unidiff.data.Tokens`. The VQ tokenizer (`unidiff_image.vq`, a diffusers VQModel trained
here) maps it to a 7x7 grid of codes (49 tokens in raster order); the modality declares ``grid = (7, 7)``, so a
model adds row and column embeddings to those tokens. Generated codes decode to PIL images; ``write`` saves one
image as a PNG, or many as a PNG grid.

The ``animals-captioned`` dataset pairs every Animal-MNIST image (`unidiff_image.animals`) with each caption
phrasing of its class, the caption as a text condition; the shipped ``image`` model is trained jointly on
[caption][image] rows (text -> image, image -> caption, both at once).
"""

from __future__ import annotations

import math
import numbers
import warnings
from functools import lru_cache
from pathlib import Path, PurePath
from typing import Any, Sequence

import numpy as np

from unidiff.data import Document, Tokens
from unidiff.errors import CheckpointError, ModalityInputError, UnidiffError
from unidiff.hookspecs import hookimpl

__version__ = "0.1.0"
MODEL_DIR = Path(__file__).parent / "model"
SIDE = 28
SHADES = " .:-=+*#%@"  # the terminal preview, light to dark
MAX_GRID_SCALE = 16  # a 64-sample grid at 16x is 118 MB of pixels; more is a typo or a hostile config.json
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")  # decoded in-process: never EPS (Ghostscript)


class ImageModality:
    """28x28 grayscale images as a 7x7 grid of VQ codes.

    Args:
        vq: the path of a VQ tokenizer folder (default None: the shipped one, ``unidiff_image/vq``). A checkpoint's
            config.json may name any folder here, so it is read as data only (`unidiff_image.vq.VQTokenizer.load`:
            a capped config.json whose network must match the safetensors header before anything is allocated;
            never a pickle, never code).
        grid_scale: pixels per image pixel in a PNG grid of several samples, an int in 1..16 (default 4; a single
            image is written at its own 28x28 size, so it can be read back).
    """

    name = "image"
    file_suffix = ".png"
    prompt_as_condition = True  # a text prompt is a caption to draw, not image content to continue

    def __init__(self, vq: str | None = None, grid_scale: int = 4):
        from unidiff_image.vq import FOLDER, VQTokenizer

        # Both checked before the tokenizer is read: a checkpoint's options are untrusted input.
        if vq is not None and not (isinstance(vq, (str, PurePath)) and str(vq).strip()):  # "" would read "."
            raise UnidiffError(f"image option vq={vq!r} must be the path of a VQ tokenizer folder (a non-empty str), "
                               f"or null for the shipped one")
        if isinstance(grid_scale, bool) or not isinstance(grid_scale, numbers.Integral) \
                or not 1 <= grid_scale <= MAX_GRID_SCALE:
            raise UnidiffError(f"image option grid_scale={grid_scale!r} must be an int in 1..{MAX_GRID_SCALE} "
                               f"(pixels per image pixel in a PNG grid; default 4)")
        self.vq_folder = None if vq is None else str(vq)
        try:
            self.tokenizer = VQTokenizer.load(FOLDER if vq is None else Path(vq))
        except CheckpointError as err:
            if vq is None:
                raise
            raise CheckpointError(f"image option vq={self.vq_folder!r}: {err}") from None
        self.grid = self.tokenizer.grid_shape
        self.vocab_size = self.tokenizer.vocab_size
        self.default_length = self.grid[0] * self.grid[1]
        self.grid_scale = int(grid_scale)

    # --- content <-> codes ---------------------------------------------------------------------------------------

    def to_array(self, content: Any) -> np.ndarray:
        """uint8 (28, 28) of an image given as PIL, a path or an array; clear errors otherwise."""
        from PIL import Image

        if isinstance(content, (str, Path)):
            content = read_image(Path(content))
        if isinstance(content, Image.Image):
            if content.size != (SIDE, SIDE):
                raise ModalityInputError(f"the image is {content.size[0]}x{content.size[1]}; this modality takes "
                                         f"{SIDE}x{SIDE} (resize it: image.resize(({SIDE}, {SIDE})))")
            return np.asarray(content.convert("L"), dtype=np.uint8)
        array = np.asarray(content)
        if array.shape != (SIDE, SIDE) or array.dtype != np.uint8:
            raise ModalityInputError(f"expected a {SIDE}x{SIDE} image (PIL, a file path or a uint8 array), got "
                                     f"{type(content).__name__} {getattr(array, 'dtype', '')} {array.shape}")
        return array

    def encode(self, content: Any) -> list[int]:
        return self.encode_many([content])[0]

    def encode_many(self, contents: Sequence[Any]) -> list[list[int]]:
        """Codes of many images in one pass of the VQ encoder."""
        arrays = np.stack([self.to_array(c) for c in contents])
        return [row.flatten().tolist() for row in self.tokenizer.encode(arrays)]

    def decode(self, ids: Sequence[int]):
        """A PIL image (mode "L", 28x28) of 49 codes."""
        from PIL import Image

        n = self.default_length
        if len(ids) != n:
            raise ModalityInputError(f"an image is {n} codes ({self.grid[0]}x{self.grid[1]}); got {len(ids)}: "
                                     f"generate images with --length {n} (the default)")
        codes = np.asarray([int(i) for i in ids], dtype=np.int64).reshape(1, *self.grid)
        return Image.fromarray(self.tokenizer.decode(codes)[0], mode="L")

    # --- output --------------------------------------------------------------------------------------------------

    def show(self, image) -> str:
        """A terminal preview: one character per pixel pair (28 columns x 14 rows), dark = dense."""
        a = np.asarray(image, dtype=np.float64)
        pairs = (a[0::2] + a[1::2]) / 2
        idx = np.clip((pairs / 256 * len(SHADES)).astype(int), 0, len(SHADES) - 1)
        return "\n".join("".join(SHADES[i] for i in row) for row in idx)

    def write(self, contents: Sequence[Any], path: Path, columns: int | None = None) -> None:
        """One image: a 28x28 PNG. Several: a PNG grid (``columns`` wide, default about square), each image
        scaled up ``grid_scale`` times with a one-pixel-per-scale gap, in reading order."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise UnidiffError(f"images are written as PNG: give --out a .png path, not {path.name!r}")
        images = [self.to_array(c) for c in contents]
        if len(images) == 1:
            from PIL import Image

            Image.fromarray(images[0], mode="L").save(path)
            return
        png_grid(images, columns or math.ceil(math.sqrt(len(images))), self.grid_scale).save(path)

    def cells_of_box(self, box: str | Sequence[int]) -> list[int]:
        """The code positions (raster order) whose 4x4-pixel cells a pixel box x0,y0,x1,y1 touches."""
        return cells_of_box(box, self.grid)

    def options(self) -> dict:
        return {"vq": self.vq_folder, "grid_scale": self.grid_scale}


def read_image(path: Path):
    """The 28x28 image in the file ``path``, its size checked from the header before a pixel is decoded.

    PIL opens lazily, so a file that claims another size (a 20000x20000 decompression bomb included) is refused
    after reading only its header; a file PIL cannot identify, a truncated or corrupt one, all raise one
    `ModalityInputError` naming the file."""
    from PIL import Image

    if not path.is_file():
        raise ModalityInputError(f"no image file {path}")
    fix = f"give a {SIDE}x{SIDE} image in one of {', '.join(IMAGE_FORMATS)}"
    try:
        with warnings.catch_warnings():
            # PIL warns of a possible bomb at open; the size check below refuses it before decoding anyway
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                if im.size != (SIDE, SIDE):
                    raise ModalityInputError(f"the image {path} is {im.size[0]}x{im.size[1]}; this modality takes "
                                             f"{SIDE}x{SIDE} (resize it: image.resize(({SIDE}, {SIDE})))")
                return im.copy()  # decodes now, so a truncated or corrupt file fails inside this try
    except ModalityInputError:
        raise
    except Image.DecompressionBombError as e:  # the header claims more pixels than PIL will open at all
        raise ModalityInputError(f"the image {path} is far larger than {SIDE}x{SIDE} ({str(e).rstrip('.')}); "
                                 f"{fix}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # what PIL raises for unknown, broken or cut files
        raise ModalityInputError(f"cannot read {path} as an image ({e or type(e).__name__}): the file is not an "
                                 f"image, or is truncated or corrupt; {fix}") from None


def png_grid(images: Sequence[np.ndarray], columns: int, scale: int = 4, gap: int = 1):
    """A grid of uint8 (28, 28) images on a white background, scaled up by ``scale`` (nearest neighbour)."""
    from PIL import Image

    rows = math.ceil(len(images) / columns)
    step = (SIDE + gap) * scale
    canvas = np.full((rows * step - gap * scale, columns * step - gap * scale), 255, dtype=np.uint8)
    for k, image in enumerate(images):
        r, c = divmod(k, columns)
        big = np.kron(image, np.ones((scale, scale), dtype=np.uint8))
        canvas[r * step:r * step + SIDE * scale, c * step:c * step + SIDE * scale] = big
    return Image.fromarray(canvas, mode="L")


def cells_of_box(box: str | Sequence[int], grid: tuple[int, int] = (7, 7), side: int = SIDE) -> list[int]:
    """The grid cells (raster order) that a pixel box ``x0,y0,x1,y1`` (x1, y1 exclusive) touches."""
    try:
        x0, y0, x1, y1 = (int(v) for v in (box.split(",") if isinstance(box, str) else box))
    except ValueError:
        raise UnidiffError(f"--box takes x0,y0,x1,y1 in pixels, e.g. 0,0,14,14; got {box!r}") from None
    if not (0 <= x0 < x1 <= side and 0 <= y0 < y1 <= side):
        raise UnidiffError(f"box {x0},{y0},{x1},{y1} is not inside the {side}x{side} image with x0 < x1 and y0 < y1")
    ch, cw = side // grid[0], side // grid[1]
    return [r * grid[1] + c for r in range(y0 // ch, (y1 - 1) // ch + 1) for c in range(x0 // cw, (x1 - 1) // cw + 1)]


# --- the dataset -----------------------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _codes(part: str) -> tuple[list[list[int]], np.ndarray]:
    from unidiff_image.animals import animals

    images, labels = animals(part)
    modality = ImageModality()
    return [row.flatten().tolist() for row in modality.tokenizer.encode(images)], labels


def animals_captioned(split: str) -> list[Document]:
    """Every image of the split once per training caption phrasing ("a cat", "a drawing of a cat", ...), as its
    VQ codes with the caption as a text condition."""
    from unidiff_image.animals import CAPTION_TEMPLATES, caption

    codes, labels = _codes(split)
    return [Document(Tokens(c), caption(int(y), k), "text")
            for k in range(len(CAPTION_TEMPLATES)) for c, y in zip(codes, labels)]


@hookimpl
def register_modalities(register):
    register("image", ImageModality)


@hookimpl
def register_datasets(register):
    register("animals-captioned", animals_captioned, modality="image")


@hookimpl
def register_models(register):
    if MODEL_DIR.is_dir():
        register("image", MODEL_DIR)


@hookimpl
def register_commands(register):
    """Each tool of this plugin as ``unidiff image TOOL`` (also ``python -m unidiff_image.TOOL``)."""
    register("image animals", "unidiff_image.animals:main", help="rebuild the Animal-MNIST data from its wheel")
    register("image measure", "unidiff_image.measure:main", help="the image model's figures (docs/results/image.md)")
    register("image vq", "unidiff_image.vq:main", help="train the VQ image tokenizer")
