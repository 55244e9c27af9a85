"""Official weight formats round-trip through ``load_encoder`` with exact key checks.

The key names and shapes below are literal facts about the released files, read from the official code
(facebookresearch/dino ``vision_transformer.py`` + ``main_dino.py`` save_dict; facebookresearch/moco-v3
``vits.py`` + ``moco/builder.py`` + ``main_moco.py``), not produced by our converter. The test
checkpoints are random weights written under these names; the full key set comes from a timm state dict
only where the official layout is identical (ViT backbones: timm's ``VisionTransformer`` with
``num_classes=0`` has exactly DINO's key names), and the literal keys are asserted to be present.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from ada_utils.encoders.checkpoints import CheckpointError, save_encoder_checkpoint, unwrap_state_dict
from ada_utils.encoders import load_encoder

# dino_deitsmall16_pretrain.pth (backbone only, loaded strict=True by DINO's hubconf): 150 tensors.
DINO_VITS16 = {
    "cls_token": [1, 1, 384], "pos_embed": [1, 197, 384],
    "patch_embed.proj.weight": [384, 3, 16, 16], "patch_embed.proj.bias": [384],
    "blocks.0.norm1.weight": [384], "blocks.0.attn.qkv.weight": [1152, 384], "blocks.0.attn.qkv.bias": [1152],
    "blocks.0.attn.proj.weight": [384, 384], "blocks.0.mlp.fc1.weight": [1536, 384],
    "blocks.0.mlp.fc2.weight": [384, 1536], "blocks.11.norm2.bias": [384],
    "norm.weight": [384], "norm.bias": [384],
}
DINO_VITS16_COUNT = 150
# Full checkpoint: teacher = MultiCropWrapper(backbone, DINOHead) (no DDP), student wrapped in DDP.
DINO_HEAD = ["head.mlp.0.weight", "head.mlp.0.bias", "head.mlp.2.weight", "head.mlp.2.bias",
             "head.mlp.4.weight", "head.mlp.4.bias", "head.last_layer.weight_g", "head.last_layer.weight_v"]
# vit-s-300ep.pth.tar: {"epoch", "arch", "state_dict", "optimizer", "scaler"}; DDP(MoCo_ViT) keys.
MOCO_VITS16 = {
    "module.base_encoder.cls_token": [1, 1, 384], "module.base_encoder.pos_embed": [1, 197, 384],
    "module.base_encoder.patch_embed.proj.weight": [384, 3, 16, 16],
    "module.base_encoder.blocks.0.attn.qkv.weight": [1152, 384],
    "module.base_encoder.blocks.11.mlp.fc2.bias": [384], "module.base_encoder.norm.weight": [384],
}
# projector (3-layer MLP, BN) on both encoders, predictor (2-layer); hidden 4096 reduced to 8 here.
MOCO_HEADS = ["head.0.weight", "head.1.weight", "head.1.bias", "head.1.running_mean", "head.1.running_var",
              "head.1.num_batches_tracked", "head.3.weight", "head.6.weight", "head.7.running_mean"]
MOCO_PREDICTOR = ["module.predictor.0.weight", "module.predictor.1.weight", "module.predictor.3.weight",
                  "module.predictor.4.running_var"]


def _vit_small(num_heads: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, num_heads=num_heads).eval()


def _official_vits16(num_heads: int, seed: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A random ViT-S/16 whose state dict has the official key names and shapes (asserted)."""
    model = _vit_small(num_heads, seed)
    with torch.no_grad():  # random, non-trivial LayerNorm and bias values (timm initialises them to 1 / 0)
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.1 * torch.randn_like(p))
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for key, shape in DINO_VITS16.items():
        assert list(sd[key].shape) == shape, key
    assert len(sd) == DINO_VITS16_COUNT
    return model, sd


@pytest.fixture(scope="module")
def vits6() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return _official_vits16(6, seed=1)


@pytest.fixture(scope="module")
def vits12() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    return _official_vits16(12, seed=4)


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _same_weights(enc: torch.nn.Module, sd: dict[str, torch.Tensor]) -> bool:
    own = enc.backbone.state_dict()
    return own.keys() == sd.keys() and all(torch.equal(own[k], sd[k]) for k in sd)


def test_dino_backbone_only_roundtrip(tmp_path: Path, vits6, batch: torch.Tensor) -> None:
    model, sd = vits6
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(sd, path)
    enc = load_encoder("dino", weights=path)
    assert enc.spec["weights_format"] == "state_dict" and len(enc.spec["weights"]) == 64
    assert torch.equal(_features(enc, batch), _features(model, batch))


def test_dino_full_checkpoint_needs_trust_and_uses_teacher(tmp_path: Path, vits6) -> None:
    _, t_sd = vits6
    s_sd = {k: v + 1 for k, v in t_sd.items()}
    head = {k: torch.randn(4, 4) for k in DINO_HEAD}  # DINOHead (out_dim 65536 in the release; small here)
    ckpt = {"teacher": {**{f"backbone.{k}": v for k, v in t_sd.items()}, **head},
            "student": {**{f"module.backbone.{k}": v for k, v in s_sd.items()},
                        **{f"module.{k}": v for k, v in head.items()}},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 100,
            "args": argparse.Namespace(arch="vit_small", patch_size=16), "dino_loss": {"center": torch.zeros(1, 8)}}
    path = tmp_path / "dino_deitsmall16_pretrain_full_checkpoint.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="trust_pickle=True") as err:
        load_encoder("dino_vits16", weights=path)
    assert str(path) in str(err.value) and "argparse.Namespace" in str(err.value)
    enc = load_encoder("dino_vits16", weights=path, trust_pickle=True)
    assert enc.spec["weights_format"] == "dino_full" and _same_weights(enc, t_sd)
    enc_s = load_encoder("dino_vits16", weights=path, trust_pickle=True, checkpoint_key="student")
    assert _same_weights(enc_s, s_sd)


def _moco_file(tmp_path: Path, sd: dict[str, torch.Tensor]) -> Path:
    state = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    state |= {f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()}
    for enc in ("base_encoder", "momentum_encoder"):
        state |= {f"module.{enc}.{k}": torch.randn(8) for k in MOCO_HEADS}
    state |= {k: torch.randn(8) for k in MOCO_PREDICTOR}
    for key, shape in MOCO_VITS16.items():
        assert list(state[key].shape) == shape, key
    path = tmp_path / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state,
                "optimizer": {"state": {}, "param_groups": [{"lr": 1.5e-4, "betas": (0.9, 0.95)}]},
                "scaler": {"scale": 65536.0}}, path)
    return path


def test_mocov3_roundtrip_with_12_heads(tmp_path: Path, vits12, batch: torch.Tensor) -> None:
    base, sd = vits12
    enc = load_encoder("mocov3", weights=_moco_file(tmp_path, sd))
    assert enc.spec["weights_format"] == "mocov3" and _same_weights(enc, sd)
    assert all(block.attn.num_heads == 12 for block in enc.backbone.blocks)
    feats = _features(enc, batch)
    assert torch.equal(feats, _features(base, batch))
    six = _vit_small(6, seed=0)  # same tensors, 6 heads: loads without complaint, computes other features
    six.load_state_dict(sd)
    assert (_features(six, batch) - feats).abs().max() > 1e-2


def test_moco_file_refused_for_dino_alias(tmp_path: Path, vits12) -> None:
    with pytest.raises(CheckpointError, match="mocov3_vits16"):
        load_encoder("dino_vits16", weights=_moco_file(tmp_path, vits12[1]))


def test_dino_full_refused_for_mocov3_alias(tmp_path: Path, vits6) -> None:
    path = tmp_path / "checkpoint.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in vits6[1].items()}, "student": {}}, path)
    with pytest.raises(CheckpointError, match="DINO training checkpoint"):
        load_encoder("mocov3", weights=path)


def test_mocov3_resnet_checkpoint(tmp_path: Path) -> None:
    """MoCo v3 ResNet files (r-50-*.pth.tar): base_encoder in torchvision layout, projector MLP as ``fc``.

    ResNet-18 stands in for ResNet-50 (same torchvision/timm key layout, smaller file).
    """
    torch.manual_seed(11)
    sd = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    state = {f"module.base_encoder.{k}": v for k, v in sd.items()}
    state |= {f"module.momentum_encoder.{k}": v + 1 for k, v in sd.items()}
    state |= {"module.base_encoder.fc.0.weight": torch.randn(8, 512), "module.base_encoder.fc.1.running_mean":
              torch.randn(8), "module.base_encoder.fc.3.weight": torch.randn(4, 8), "module.predictor.0.weight":
              torch.randn(8, 4)}
    assert list(state["module.base_encoder.conv1.weight"].shape) == [64, 3, 7, 7]
    path = tmp_path / "r-50-1000ep.pth.tar"
    torch.save({"epoch": 1000, "arch": "resnet50", "state_dict": state}, path)
    enc = load_encoder("resnet18", weights=path)
    assert enc.spec["weights_format"] == "mocov3" and _same_weights(enc, sd)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_state_dict_with_classifier(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(6)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()  # with its 1000-class head
    sd = model.state_dict()
    assert list(sd["head.weight"].shape) == [1000, 192]
    path = tmp_path / f"model{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    enc = load_encoder("vit_tiny_patch16_224", weights=path)
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(_features(enc, x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_own_checkpoint_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    enc = load_encoder("vit_tiny_patch16_224", pretrained=False, image_size=128)
    path = save_encoder_checkpoint(enc, tmp_path / "tuned.safetensors")
    assert (tmp_path / "tuned.json").is_file()
    back = load_encoder("vit_tiny_patch16_224", weights=path)
    assert back.image_size == 128 and back.spec["weights_format"] == "backbone_wrapper"
    x = torch.randn(2, 3, 128, 128)
    assert torch.equal(_features(back, x), _features(enc, x))
    with pytest.raises(CheckpointError, match="holds an encoder 'vit_tiny_patch16_224'"):
        load_encoder("resnet18", weights=path)


def test_wrong_architecture_lists_keys(tmp_path: Path, vits6) -> None:
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(vits6[1], path)
    with pytest.raises(CheckpointError) as err:  # ViT-S file into ViT-Ti: same keys, other shapes
        load_encoder("vit_tiny_patch16_224", weights=path)
    msg = str(err.value)
    assert str(path) in msg and "0 missing, 0 unexpected, 150 with other shapes" in msg
    assert "cls_token: file [1, 1, 384] vs model [1, 1, 192]" in msg and "(+130 more)" in msg
    with pytest.raises(CheckpointError) as err:  # into a ResNet: every key differs
        load_encoder("resnet18", weights=path)
    msg = str(err.value)
    assert "missing (" in msg and "unexpected (150): cls_token, pos_embed" in msg and "Nothing was loaded" in msg


def test_missing_key_is_an_error(tmp_path: Path, vits6) -> None:
    sd = dict(vits6[1])
    del sd["blocks.3.attn.qkv.bias"]
    sd["blocks.3.attn.qkv.extra"] = torch.zeros(1)
    path = tmp_path / "w.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing \(1\): blocks.3.attn.qkv.bias[\s\S]*unexpected \(1\)"):
        load_encoder("dino", weights=path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(10)
    sd = timm.create_model("resnet18", pretrained=False, num_classes=0).state_dict()
    path = tmp_path / f"resnet18{suffix}"
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_encoder("resnet18", weights=path)
    assert str(path) in str(err.value)


def test_prefixes_stripped_by_prefix_not_substring() -> None:
    t = torch.zeros(1)
    sd, fmt = unwrap_state_dict({"module.blocks.0.module.w": t, "module.backbone.x": t, "head.backbone.y": t},
                                path="f.pth")
    assert fmt == "backbone_wrapper" and set(sd) == {"x"}
    sd, _ = unwrap_state_dict({"module.a.module.b": t, "c.module.d": t}, path="f.pth")
    assert set(sd) == {"a.module.b", "c.module.d"}


def test_missing_file_and_conflicting_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_encoder("dino", weights=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="pretrained=False"):
        load_encoder("dino", weights=tmp_path / "nope.pth", pretrained=False)
