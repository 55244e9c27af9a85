"""Tests of ada_utils.losses: known values, references written here, gradients, training steps, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ada_utils.losses import (
    InfoNCELoss,
    InfomaxLoss,
    cross_domain_nn_positives,
    gathered_info_nce_loss,
    info_nce_loss,
    infomax_ica_loss,
    infomax_loss,
    pair_contrastive_loss,
)

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ref_info_nce(q, k, tau, queue=None, symmetric=True):
    """Reference: explicit logits matrix + cross_entropy (MoCo v3 ``contrastive_loss`` without the 2τ)."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    u = None if queue is None else F.normalize(queue, dim=1)
    labels = torch.arange(len(q))

    def one(a, b):
        logits = a @ b.T if u is None else torch.cat([a @ b.T, a @ u.T], 1)
        return F.cross_entropy(logits / tau, labels)

    return 0.5 * (one(q, k) + one(k, q)) if symmetric else one(q, k)


def _isotropic_batch(d: int) -> torch.Tensor:
    """Rows ±c·e_i: unit rows after normalisation, zero mean, covariance 2/(2d-1) I."""
    eye = torch.eye(d, dtype=torch.float64)
    return torch.cat([3.0 * eye, -0.5 * eye])


def _offdiag_energy(y: torch.Tensor) -> float:
    c = torch.corrcoef(y.T)
    return float((c - torch.diag(torch.diag(c))).pow(2).sum())


# ---------------------------------------------------------------- InfoNCE
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("with_queue", [False, True])
def test_info_nce_matches_reference(symmetric, with_queue):
    g = _gen(1)
    q, k = torch.randn(10, 7, generator=g), torch.randn(10, 7, generator=g)
    queue = torch.randn(5, 7, generator=g) if with_queue else None
    got = info_nce_loss(q, k, temperature=0.2, symmetric=symmetric, queue=queue)
    want = _ref_info_nce(q, k, 0.2, queue, symmetric)
    torch.testing.assert_close(got, want)


def test_info_nce_known_values():
    g = _gen(2)
    q = torch.randn(8, 64, generator=g)
    assert info_nce_loss(q, q.clone(), temperature=1e-3) < 1e-6  # positives dominate
    same = torch.ones(6, 4)  # every logit equal: uniform softmax
    assert math.isclose(info_nce_loss(same, same).item(), math.log(6), rel_tol=1e-6)
    assert math.isclose(info_nce_loss(same, same, queue=torch.ones(3, 4)).item(), math.log(9), rel_tol=1e-6)
    # L2-normalised inside: row scaling changes nothing
    k = torch.randn(8, 64, generator=g)
    torch.testing.assert_close(info_nce_loss(3 * q, 0.1 * k), info_nce_loss(q, k))


def test_info_nce_symmetry_and_module():
    g = _gen(3)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.testing.assert_close(info_nce_loss(q, k), info_nce_loss(k, q))
    assert not torch.isclose(info_nce_loss(q, k, symmetric=False), info_nce_loss(k, q, symmetric=False))
    torch.testing.assert_close(InfoNCELoss(temperature=0.3)(q, k), info_nce_loss(q, k, temperature=0.3))


def test_info_nce_queue_gets_no_gradient_and_gradcheck():
    g = _gen(4)
    q = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    queue = torch.randn(2, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: info_nce_loss(a, b, temperature=0.5, queue=queue), (q, k))
    info_nce_loss(q, k, queue=queue).backward()
    assert queue.grad is None


def test_info_nce_training_aligns_views():
    g = _gen(5)
    x = torch.randn(64, 16, generator=g)
    v1, v2 = x + 0.8 * torch.randn(64, 16, generator=g), x + 0.8 * torch.randn(64, 16, generator=g)
    head = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss = info_nce_loss(head(v1), head(v2), temperature=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_info_nce_errors():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match=r"\(4, 3\).*\(5, 3\)"):
        info_nce_loss(q, torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(q, q, temperature=0.0)
    with pytest.raises(ValueError, match="NaN"):
        info_nce_loss(q, torch.full((4, 3), float("nan")))
    with pytest.raises(ValueError, match="queue"):
        info_nce_loss(q, q, queue=torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        info_nce_loss(q[0], q[0])


# ---------------------------------------------------------------- Gaussian Infomax
@pytest.mark.parametrize("d", [2, 5])
def test_infomax_isotropic_closed_form(d):
    z, eps, n = _isotropic_batch(d), 1e-3, 2 * d
    want = -0.5 * d * math.log(2 / (n - 1) + eps)
    assert math.isclose(infomax_loss(z, eps=eps).item(), want, rel_tol=1e-10)
    # correlation matrix of this batch is exactly I
    assert math.isclose(infomax_loss(z, eps=eps, mode="corr").item(), -0.5 * d * math.log(1 + eps), rel_tol=1e-8)
    # coding rate: centred ZᵀZ = 2I
    c = d / (n * eps**2)
    want_cr = -0.5 * d * math.log(1 + 2 * c)
    assert math.isclose(infomax_loss(z, eps=eps, form="coding_rate").item(), want_cr, rel_tol=1e-10)


def test_infomax_isotropic_beats_correlated_and_scale_invariance():
    g = _gen(6)
    d = 4
    white = torch.randn(400, d, generator=g, dtype=torch.float64)
    mixed = white @ torch.tensor([[1.0, 0.9, 0.0, 0.0], [0.0, 0.3, 0.0, 0.0], [0, 0, 1, 0.5], [0, 0, 0, 1]]).double()
    assert infomax_loss(white) < infomax_loss(mixed)
    scales = torch.rand(400, 1, generator=g, dtype=torch.float64) + 0.5
    torch.testing.assert_close(infomax_loss(white * scales), infomax_loss(white))


def test_infomax_coding_rate_small_batch_matches_direct_formula():
    g = _gen(7)
    n, d, eps = 5, 12, 0.5
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    zc = F.normalize(z, dim=1)
    zc = zc - zc.mean(0)
    want = -0.5 * torch.logdet(torch.eye(d, dtype=torch.float64) + d / (n * eps**2) * zc.T @ zc)
    torch.testing.assert_close(infomax_loss(z, eps=eps, form="coding_rate"), want)


def test_infomax_per_domain_is_mean_of_groups_and_module():
    g = _gen(8)
    z = torch.randn(40, 3, generator=g, dtype=torch.float64)
    domain = torch.arange(40) % 2
    got = infomax_loss(z, per_domain=True, domain=domain)
    want = 0.5 * (infomax_loss(z[domain == 0]) + infomax_loss(z[domain == 1]))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(InfomaxLoss(per_domain=True)(z, domain), got)
    assert not torch.isclose(got, infomax_loss(z, domain=domain))  # pooled ignores domain


@pytest.mark.parametrize(
    "kw", [{}, {"mode": "corr"}, {"form": "coding_rate", "eps": 0.7}, {"per_domain": True, "eps": 0.05}]
)
def test_infomax_gradcheck(kw):
    z = torch.randn(10, 3, dtype=torch.float64, generator=_gen(9), requires_grad=True)
    domain = torch.arange(10) % 2 if kw.get("per_domain") else None
    assert torch.autograd.gradcheck(lambda x: infomax_loss(x, domain=domain, **kw), (z,))


def test_infomax_training_decorrelates_linear_head():
    g = _gen(10)
    d = 6
    mix = torch.eye(d) + 0.8 * torch.randn(d, d, generator=g)
    x = torch.randn(256, d, generator=g) @ mix.T
    head = torch.nn.Linear(d, d)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
        head.bias.zero_()
    before = _offdiag_energy(head(x).detach())
    opt = torch.optim.SGD(head.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        loss = infomax_loss(head(x), eps=1e-4)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert _offdiag_energy(head(x).detach()) < 0.5 * before


@pytest.mark.parametrize("form", ["logdet", "coding_rate"])
def test_infomax_half_precision_is_finite(form):
    g = _gen(11)
    x = torch.randn(32, 8, generator=g)
    head = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(x)
        assert z.dtype == torch.bfloat16
        loss = infomax_loss(z, form=form)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(head.weight.grad).all()
    assert torch.isfinite(infomax_loss(x.half(), form=form))


def test_infomax_errors():
    with pytest.raises(ValueError, match="at least 2 rows"):
        infomax_loss(torch.randn(1, 4))
    with pytest.raises(ValueError, match="coding_rate"):
        infomax_loss(torch.randn(8, 8))
    with pytest.raises(ValueError, match="domain 1.*coding_rate"):
        infomax_loss(torch.randn(20, 4), per_domain=True, domain=(torch.arange(20) < 17).long() ^ 1)
    with pytest.raises(ValueError, match="domain 0.*n=1"):
        infomax_loss(torch.randn(20, 4), per_domain=True, domain=(torch.arange(20) > 0).long(), form="coding_rate")
    with pytest.raises(ValueError, match="per_domain=True needs `domain`"):
        infomax_loss(torch.randn(20, 4), per_domain=True)
    with pytest.raises(ValueError, match="NaN"):
        infomax_loss(torch.tensor([[0.0, float("nan")]] * 5))
    with pytest.raises(ValueError, match="not positive definite.*raise `eps`"):
        infomax_loss(F.pad(torch.randn(20, 3), (0, 1)), eps=1e-300)  # a zero column, eps underflows in fp32
    with pytest.raises(ValueError, match="mode"):
        infomax_loss(torch.randn(20, 4), mode="cor")
    with pytest.raises(ValueError, match="form"):
        infomax_loss(torch.randn(20, 4), form="rate")


# ---------------------------------------------------------------- Infomax ICA
@pytest.mark.parametrize(
    ("nonlinearity", "log_gprime"),
    [
        ("logistic", lambda y: torch.log(torch.sigmoid(y) * (1 - torch.sigmoid(y)))),
        ("tanh", lambda y: torch.log(1 - torch.tanh(y) ** 2)),
    ],
)
def test_infomax_ica_known_values(nonlinearity, log_gprime):
    y = torch.randn(20, 4, generator=_gen(12), dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    want = -log_gprime(y).sum(1).mean()
    torch.testing.assert_close(infomax_ica_loss(y, eye, nonlinearity=nonlinearity), want)
    # -log|det W| part: W = 2I adds -4 log 2 for the same outputs
    got2 = infomax_ica_loss(y, 2 * eye, nonlinearity=nonlinearity)
    torch.testing.assert_close(got2, want - 4 * math.log(2))
    # stable for large |y| where the naive form gives inf
    big = torch.tensor([[100.0, -100.0]])
    assert torch.isfinite(infomax_ica_loss(big, torch.eye(2), nonlinearity=nonlinearity))
    assert math.isclose(infomax_ica_loss(torch.zeros(3, 1), torch.eye(1)).item(), math.log(4), rel_tol=1e-6)


@pytest.mark.parametrize("nonlinearity", ["logistic", "tanh"])
def test_infomax_ica_gradcheck(nonlinearity):
    g = _gen(13)
    z = torch.randn(6, 3, dtype=torch.float64, generator=g)
    w = (torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(3, 3, dtype=torch.float64, generator=g))
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda W: infomax_ica_loss(z @ W.T, W, nonlinearity=nonlinearity), (w,))


def test_infomax_ica_training_unmixes_laplace_sources():
    g = _gen(14)
    u = torch.rand(1000, 2, generator=g) - 0.5
    s = -torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, 1) by inverse CDF
    x = s @ torch.tensor([[1.0, 0.6], [0.4, 1.0]]).T
    w = torch.eye(2, requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.1)
    losses = []
    for _ in range(200):
        loss = infomax_ica_loss(x @ w.T, w)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    corr = torch.corrcoef(torch.cat([(x @ w.T).T, s.T]).detach())[:2, 2:].abs()
    assert corr.max(1).values.min() > 0.97, corr  # mixtures start at 0.86


def test_infomax_ica_errors():
    with pytest.raises(ValueError, match="square"):
        infomax_ica_loss(torch.randn(5, 3), torch.randn(3, 4))
    with pytest.raises(ValueError, match="singular"):
        infomax_ica_loss(torch.randn(5, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="nonlinearity"):
        infomax_ica_loss(torch.randn(5, 2), torch.eye(2), nonlinearity="relu")


# ---------------------------------------------------------------- supervised pairs + NN positives
def test_pair_contrastive_matches_reference_and_masks_same_model():
    g = _gen(15)
    real, synth = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    torch.testing.assert_close(
        pair_contrastive_loss(real, synth, temperature=0.1), _ref_info_nce(synth, real, 0.1)
    )
    torch.testing.assert_close(  # all models distinct: mask is a no-op
        pair_contrastive_loss(real, synth, model=torch.arange(6)), pair_contrastive_loss(real, synth)
    )
    model = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = F.normalize(synth, dim=1) @ F.normalize(real, dim=1).T / 0.07
    same = (model[:, None] == model[None, :]) & ~torch.eye(6, dtype=torch.bool)
    logits = logits.masked_fill(same, float("-inf"))
    want = F.cross_entropy(logits, torch.arange(6), reduction="mean")
    got = pair_contrastive_loss(real, synth, model=model, symmetric=False)
    torch.testing.assert_close(got, want)
    # identical features within a model: only the mask lets the loss reach ~0
    dup = torch.eye(3).repeat_interleave(2, dim=0)
    assert pair_contrastive_loss(dup, dup, temperature=0.01) > 0.5
    assert pair_contrastive_loss(dup, dup, temperature=0.01, model=model) < 1e-6


def test_pair_contrastive_gradcheck_and_errors():
    g = _gen(16)
    r = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    s = torch.randn(4, 3, dtype=torch.float64, generator=g, requires_grad=True)
    model = torch.tensor([0, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b: pair_contrastive_loss(a, b, model=model), (r, s))
    with pytest.raises(ValueError, match="must have the same shape"):
        pair_contrastive_loss(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="model"):
        pair_contrastive_loss(torch.randn(4, 3), torch.randn(4, 3), model=torch.zeros(3, dtype=torch.long))


def test_cross_domain_nn_positives():
    g = _gen(17)
    real = torch.randn(50, 8, generator=g)
    perm = torch.randperm(50, generator=g)
    synth = 2.0 * real[perm] + 0.01 * torch.randn(50, 8, generator=g)
    idx = cross_domain_nn_positives(synth, real, chunk_size=7)
    assert idx.dtype == torch.int64 and torch.equal(idx, perm)
    back = cross_domain_nn_positives(real, synth)  # the symmetric direction
    assert torch.equal(perm[back], torch.arange(50))
    brute = (F.normalize(synth[:20], dim=1) @ F.normalize(real[:30], dim=1).T).argmax(1)
    assert torch.equal(cross_domain_nn_positives(synth[:20], real[:30], chunk_size=3), brute)
    with pytest.raises(ValueError, match="dims differ"):
        cross_domain_nn_positives(torch.randn(3, 4), torch.randn(3, 5))


# ---------------------------------------------------------------- InfoNCE with negatives gathered across processes
def test_gathered_info_nce_one_process_equals_plain_loss():
    q, k = torch.randn(6, 5, generator=_gen(3)), torch.randn(6, 5, generator=_gen(4))
    for symmetric in (True, False):
        plain = info_nce_loss(q, k, temperature=0.2, symmetric=symmetric)
        for gather in (None, lambda x: [x]):  # no gather at all, or a world of one process
            got = gathered_info_nce_loss(q, k, temperature=0.2, symmetric=symmetric, gather=gather)
            torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sizes", [[4, 4], [3, 5], [0, 4, 2]])
def test_gathered_info_nce_mean_over_processes_is_the_global_loss(sizes):
    """Simulated processes: each scores its rows against all keys, positives at offset + i; the mean of the
    per-process losses and its gradient equal the one-process loss of the whole batch."""
    q = torch.randn(sum(sizes), 5, generator=_gen(5), dtype=torch.float64, requires_grad=True)
    k = torch.randn(sum(sizes), 5, generator=_gen(6), dtype=torch.float64, requires_grad=True)
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    per_rank = []
    for rank in range(len(sizes)):
        q_local, k_local = q[bounds[rank]:bounds[rank + 1]], k[bounds[rank]:bounds[rank + 1]]

        def gather(x, rank=rank, q_local=q_local):  # every process's rows; entry ``rank`` is the local tensor
            whole = q if x is q_local else k
            return [x if r == rank else whole[bounds[r]:bounds[r + 1]] for r in range(len(sizes))]

        per_rank.append(gathered_info_nce_loss(q_local, k_local, temperature=0.1, rank=rank, gather=gather))
    mean = torch.stack(per_rank).mean()
    ref = _ref_info_nce(q, k, 0.1)
    torch.testing.assert_close(mean, ref)
    grads = torch.autograd.grad(mean, (q, k))
    for got, want in zip(grads, torch.autograd.grad(ref, (q, k))):
        torch.testing.assert_close(got, want)
    if sizes == [4, 4]:  # equal shards: a process's loss is the mean over its rows, positives at rank * B + i
        qn, kn, labels = F.normalize(q, dim=1), F.normalize(k, dim=1), 4 + torch.arange(4)
        own = 0.5 * (F.cross_entropy(qn[4:] @ kn.T / 0.1, labels) + F.cross_entropy(kn[4:] @ qn.T / 0.1, labels))
        torch.testing.assert_close(per_rank[1], own)
    with pytest.raises(ValueError, match="every process's rows in rank order"):
        gathered_info_nce_loss(q[:2], k[:2], rank=0, gather=lambda x: [x[:1]])


@pytest.mark.parametrize("sizes", [[4, 4], [3, 5]])
def test_supervised_pairs_under_processes_equal_one_process(sizes):
    """The supervised baseline under torchrun: with model ids gathered like the rows, the mean of the per-process
    losses equals pair_contrastive_loss of the whole batch (same-model pairs masked across processes too)."""
    n = sum(sizes)
    real = torch.randn(n, 5, generator=_gen(7), dtype=torch.float64, requires_grad=True)
    synth = torch.randn(n, 5, generator=_gen(8), dtype=torch.float64, requires_grad=True)
    model = torch.tensor([0, 1, 0, 2, 1, 3, 2, 0])[:n]
    bounds = [0, *torch.tensor(sizes).cumsum(0).tolist()]
    one = gathered_info_nce_loss(synth, real, temperature=0.1, model=model)
    torch.testing.assert_close(one, pair_contrastive_loss(real, synth, temperature=0.1, model=model))
    per_rank = []
    for rank in range(len(sizes)):
        part = slice(bounds[rank], bounds[rank + 1])
        local = (synth[part], real[part], model[part])

        def gather(x, rank=rank, local=local):
            source = next(w for loc, w in zip(local, (synth, real, model)) if x is loc)
            return [x if r == rank else source[bounds[r]:bounds[r + 1]] for r in range(len(sizes))]

        per_rank.append(gathered_info_nce_loss(*local[:2], temperature=0.1, rank=rank, gather=gather, model=local[2]))
    mean = torch.stack(per_rank).mean()
    ref = pair_contrastive_loss(real, synth, temperature=0.1, model=model)
    torch.testing.assert_close(mean, ref)
    for got, want in zip(torch.autograd.grad(mean, (real, synth)), torch.autograd.grad(ref, (real, synth))):
        torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="`model` must be"):
        gathered_info_nce_loss(synth, real, model=model[:3])
