"""Heads: identity at init, per-domain centring and separate real/synthetic maps."""

from __future__ import annotations

import pytest
import torch

from ada_utils.heads import DomainHeads, LinearHead, MLPHead, make_head


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_heads_start_as_identity(kind: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 12)
    assert torch.equal(make_head(kind, 12)(x), x)


def test_rectangular_linear_head_keeps_leading_coordinates() -> None:
    x = torch.randn(5, 8)
    assert torch.equal(LinearHead(8, out_dim=3)(x), x[:, :3])


def test_mlp_head_leaves_identity_after_a_step() -> None:
    torch.manual_seed(0)
    head, x = MLPHead(6, hidden=10), torch.randn(20, 6)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    (head(x) - 2 * x).pow(2).mean().backward()
    opt.step()
    assert not torch.allclose(head(x), x)
    assert head.weight.shape == (6, 6)


def test_domain_heads_shared_vs_separate_and_centring() -> None:
    torch.manual_seed(0)
    x, dom = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 1, 0])
    shared = DomainHeads("linear", 4, shared=True)
    assert shared.real is shared.synth
    shared.set_centers(torch.ones(4), 2 * torch.ones(4))
    expected = x - torch.where(dom[:, None] == 1, 2.0, 1.0)
    assert torch.allclose(shared(x, dom), expected)
    sep = DomainHeads("linear", 4, shared=False)
    assert sep.real is not sep.synth and len(list(sep.parameters())) == 4
    with torch.no_grad():
        sep.synth.linear.weight.mul_(3.0)
    out = sep(x, dom)
    assert torch.allclose(out[dom == 0], x[dom == 0]) and torch.allclose(out[dom == 1], 3 * x[dom == 1])
    assert torch.allclose(sep.forward_domain(x, 1), 3 * x)


def test_bad_head_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="head='conv'"):
        make_head("conv", 4)
    with pytest.raises(ValueError, match=r"expected x \(N, D\)"):
        DomainHeads("linear", 4)(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))
