"""The shipped image model (plugins/unidiff_image/model): prompts steer its images, it captions held-out images, and
the generate, caption and inpaint commands work end to end."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unidiff.errors import UnidiffError
from unidiff_image import ImageModality


# --- the shipped image model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    from unidiff import Pipeline

    return Pipeline.load("image")


def class_means(valid):
    x, y = valid
    return np.stack([x[y == c].astype(float).mean(0) for c in range(10)])


def test_prompts_steer_the_images_toward_their_class(pipe, valid):
    """Images drawn for "a bird" look more like the average real bird than the average real elephant, and the other
    way round (the per-class accuracy of a trained judge is in docs/results/image.md)."""
    means = class_means(valid)
    for prompt, own, other in (("a bird", 1, 5), ("an elephant", 5, 1)):
        gen = pipe.complete(prompt, num=6, seed=0)
        mean = np.stack([np.asarray(im, dtype=float) for im in gen.texts]).mean(0)
        assert np.abs(mean - means[own]).mean() < np.abs(mean - means[other]).mean(), prompt
    with pytest.raises(UnidiffError, match="not both"):
        pipe.complete("a cat", condition="a dog")


def test_captions_of_held_out_images_name_their_class(pipe, valid):
    """Held-out images captioned as `unidiff caption` does (greedy, left to right): far more captions name the right
    animal than the 1 in 10 of chance (0.248 of 1,000 held-out images, docs/results/image.md)."""
    from unidiff_image.animals import class_of

    x, y = valid
    pick = [int(np.flatnonzero(y == c)[k]) for c in range(10) for k in range(2)]
    caps = [pipe.caption(x[i]).contents("text")[0] for i in pick]
    assert all(isinstance(c, str) and len(c.encode()) <= 32 for c in caps)
    assert sum(class_of(c) == y[i] for c, i in zip(caps, pick)) >= 5, caps


def test_image_commands_end_to_end(valid, tmp_path, capsys):
    from unidiff.cli import main

    assert main(["generate", "--model", "image", "--prompt", "a cat", "--num", "4", "--out",
                 str(tmp_path / "grid.png")]) == 0
    assert Image.open(tmp_path / "grid.png").size == (2 * 29 * 4 - 4, 2 * 29 * 4 - 4)
    assert "NFE" in capsys.readouterr().err
    assert main(["generate", "--model", "image", "--prompt", "a horse", "--num", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("===== sample") == 2 and len(out.splitlines()) == 2 * 15  # a header and 14 preview lines each
    x, y = valid
    Image.fromarray(x[0]).save(tmp_path / "real.png")
    assert main(["caption", "--model", "image", str(tmp_path / "real.png")]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["inpaint", "--model", "image", str(tmp_path / "real.png"), "--box", "0,0,14,28", "--prompt",
                 "a sheep", "--out", str(tmp_path / "fixed.png")]) == 0
    fixed = np.asarray(Image.open(tmp_path / "fixed.png"), dtype=float)
    recon = np.asarray(ImageModality().decode(ImageModality().encode(x[0])), dtype=float)
    diff = np.abs(fixed - recon)
    assert diff[:, 18:].mean() < diff[:, :12].mean()  # the right half is kept (up to the decoder's reach)
    assert main(["inpaint", "--model", "image", str(tmp_path / "real.png"), "--box", "0,0,40,2"]) == 2
    assert "box" in capsys.readouterr().err
