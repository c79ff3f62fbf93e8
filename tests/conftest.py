"""Fixtures shared by several test files."""

import os

import pytest
from hypothesis import settings

# The same examples on every run, so that CI's verdict on a commit is reproducible; HYPOTHESIS_PROFILE=explore
# draws fresh examples on each run, to look for new failures before a change lands.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="module")
def image():
    """The image modality with the shipped VQ tokenizer."""
    from unidiff_image import ImageModality

    return ImageModality()


@pytest.fixture(scope="module")
def valid():
    """The held-out Animal-MNIST images and labels."""
    from unidiff_image.animals import animals

    return animals("valid")
