"""Fixtures shared by several test files."""

import pytest


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
