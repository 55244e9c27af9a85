"""The encoder split before its last blocks (``encoders.split``): the cached-activation path computes what the image
path computes, with the same gradients, and ``train`` fine-tunes the encoder's last block from cached activations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ada_utils.encoders import load_encoder
from ada_utils.encoders.split import PrefixEncoder, Tail
from ada_utils.heads import DomainHeads, EncoderWithHeads
from ada_utils.losses import info_nce_loss
from ada_utils.train.loop import set_trainable


def _encoder(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return load_encoder(name, pretrained=False, image_size=32)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "dino_vits16"])
def test_tail_of_prefix_is_the_encoder_and_its_gradients_equal_the_image_paths(name: str) -> None:
    encoder = _encoder(name)
    set_trainable(encoder, "last_k", 1)
    prefix = PrefixEncoder(encoder, 1)
    tail = Tail(encoder, 1, prefix.shape)
    assert {n for n, p in tail.named_parameters()} and all(p.requires_grad for p in tail.parameters())
    trainable = {id(p) for p in encoder.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in tail.parameters()}  # the tail holds exactly what last_k trains
    x = torch.randn(6, 3, encoder.image_size, encoder.image_size)
    domain = torch.tensor([0, 0, 0, 1, 1, 1])
    grads = []
    for front, inputs in ((encoder, x), (tail, prefix(x).detach())):
        torch.manual_seed(1)
        model = EncoderWithHeads(DomainHeads("linear", encoder.dim, shared=False), front)
        z = model(inputs, domain)
        loss = info_nce_loss(z[:3], z[3:], temperature=0.1)
        encoder.zero_grad(set_to_none=True)
        loss.backward()
        grads.append({id(p): p.grad.clone() for p in tail.parameters()})
    with torch.no_grad():
        torch.testing.assert_close(tail(prefix(x)), encoder(x), atol=1e-5, rtol=1e-5)
    for key, g in grads[0].items():
        torch.testing.assert_close(grads[1][key], g, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="k_blocks"):
        PrefixEncoder(encoder, len(encoder.backbone.blocks))


def test_train_fine_tunes_the_last_block_from_cached_activations(tiny_root: Path, tmp_path: Path) -> None:
    from ada_utils.train import TrainConfig, prefix_training_data, train, training_data, validation_split

    encoder = _encoder("efficientnet_lite0")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    data = training_data(encoder, tiny_root, n_views=1, with_pairs=True, progress=False)
    acts = prefix_training_data(encoder, tiny_root, k=1, n_views=1, progress=False)
    assert acts.feats.shape[0] == len(data.feats) and acts.views.shape[:2] == (1, len(data.feats))
    assert acts.ids == data.ids  # the same pool, row for row
    val_bf, fit = validation_split(tiny_root, data)
    val_acts, fit_acts = validation_split(tiny_root, acts)
    cfg = TrainConfig(method="ada", solver="gradient", lam=1.0, alignment="views", finetune="last_k",
                      finetune_from="activations", epochs=3, batch_size=64, eval_every=2, patience=2)
    res = train(cfg, fit, tmp_path / "budget", encoder=encoder, activations=fit_acts, progress=False)
    assert res.steps > 0 and all(np.isfinite(r["loss"]) for r in res.log)
    moved = [k for k, v in encoder.state_dict().items() if not torch.equal(v, before[k])]
    tail = ("backbone.blocks.6.", "backbone.conv_head.", "backbone.bn2.")
    assert moved and all(k.startswith(tail) for k in moved), moved  # the frozen layers, statistics too, stay
    assert not any(k.endswith(("running_mean", "running_var")) for k in moved)  # BatchNorm stays frozen
    train(cfg, fit, tmp_path / "run", encoder=encoder, validation=val_acts, activations=fit_acts, progress=False)
    header = json.loads((tmp_path / "run" / "config.json").read_text())
    assert header["status"] == "finished" and header["trainable_encoder_params"] > 0
    assert header["stopping"]["best_step"] is not None  # stopped on the validation images' activations
    saved = load_file(str(tmp_path / "run" / "encoder.safetensors"))
    state = encoder.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved if k in state)  # the kept step's tail was saved
    with pytest.raises(ValueError, match="activations"):
        train(cfg, fit, tmp_path / "bad", encoder=encoder, validation=val_bf, progress=False)
    with pytest.raises(ValueError, match="prefix activations"):
        train(cfg, fit, tmp_path / "bad2", encoder=encoder, validation=val_bf, activations=fit_acts, progress=False)
