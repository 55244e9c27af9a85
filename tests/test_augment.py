"""Augmented views: deterministic per image/view/seed, sized for the encoder, different between views."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ada_utils.augment import RECIPES, SeededAugment, build_recipe


def _image(seed: int = 0, size: int = 160) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, size, dtype=np.float64)[None, :, None] * np.ones((size, 1, 3))
    return Image.fromarray(np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("size", [64, 128])
def test_views_are_deterministic_sized_and_distinct(recipe: str, size: int) -> None:
    img = _image()
    a, b = SeededAugment(recipe, size, view=0), SeededAugment(recipe, size, view=1)
    out = np.asarray(a(img))
    assert out.shape == (size, size, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(a(img.copy())))  # same pixels -> same view, whatever the order
    assert not np.array_equal(out, np.asarray(b(img)))
    assert not np.array_equal(out, np.asarray(a(img, salt=1)))
    assert not np.array_equal(out, np.asarray(SeededAugment(recipe, size, view=0, seed=1)(img)))


def test_seeded_view_does_not_touch_global_rng() -> None:
    import torch

    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    SeededAugment("gap", 64)(_image())
    assert torch.equal(torch.rand(2), expected)


def test_keys_identify_views() -> None:
    keys = {SeededAugment(r, s, view=v).key for r in RECIPES for s in (96, 128) for v in (0, 1)}
    assert len(keys) == 8


def test_bad_recipe_and_size() -> None:
    with pytest.raises(ValueError, match="recipe='sketch'"):
        build_recipe("sketch", 128)
    with pytest.raises(ValueError, match="image_size=8"):
        build_recipe("gap", 8)


def test_view_transform_feeds_the_encoder_format() -> None:
    import pickle

    import torch

    from ada_utils.augment import ViewTransform

    tf = ViewTransform(SeededAugment("gap", 32), lambda im: torch.from_numpy(np.asarray(im).copy()))
    out = tf(_image(size=48))
    assert out.shape == (32, 32, 3)
    assert isinstance(pickle.loads(pickle.dumps(ViewTransform(SeededAugment("generic", 32), str))), ViewTransform)
