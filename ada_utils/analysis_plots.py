"""Figures and feature sets of the analysis chapters (01 cross-covariance, 02 CCA decomposition).

Figure functions take plain arrays / DataFrames and return a matplotlib ``Figure`` with a title, labelled axes
and the book's colour-blind-safe colours (``ada_utils.plotting``); statistics live in ``ada_utils.cca``.
The second half gathers each encoder's features (embedded once per backbone, trained heads as maps) and the
matched real/synthetic test pairs the statistics are computed on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ada_utils import cca
from ada_utils.plotting import METHOD_COLORS, PALETTE


def color(name: str) -> str:
    """The book's colour of an encoder / method name (falls back to the palette order)."""
    return METHOD_COLORS.get(name, PALETTE[sum(map(ord, name)) % len(PALETTE)])  # stable across runs


def heatmap_grid(mats: Mapping[str, Mapping[str, np.ndarray]], *, title: str, label: str) -> plt.Figure:
    """Rows = encoders, columns = conditions (e.g. matched / shuffled pairs); one shared symmetric colour scale.

    Args:
        mats: ``{encoder: {condition: (k, k) matrix}}``.
        title: figure title. label: colour-bar label (quantity and unit).
    """
    rows, cols = list(mats), list(next(iter(mats.values())))
    vmax = max(float(np.abs(m).max()) for r in mats.values() for m in r.values()) or 1.0
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.6 * len(cols) + 1, 2.4 * len(rows)), squeeze=False,
                             layout="constrained")
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            im = ax.imshow(mats[r][c], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
            ax.set_title(f"{r}: {c}", fontsize=10)
            ax.set_xlabel("real coordinate" if i == len(rows) - 1 else "")
            ax.set_ylabel("synthetic coordinate" if j == 0 else "")
    fig.colorbar(im, ax=axes, shrink=0.8, label=label)
    fig.suptitle(title)
    return fig


def spectra_figure(canon: Mapping[str, Mapping[str, np.ndarray]], eig: Mapping[str, Mapping[str, np.ndarray]], *,
                   title: str) -> plt.Figure:
    """Left: canonical correlations per component (solid matched, dashed shuffled). Right: covariance spectra.

    Args:
        canon: ``{encoder: {"matched": (k,), "shuffled": (k,)}}``.
        eig: ``{encoder: {"real": (d,), "synthetic": (d,)}}`` eigenvalues divided by their mean.
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for name, c in canon.items():
        a.plot(np.arange(1, len(c["matched"]) + 1), c["matched"], color=color(name), label=f"{name} matched")
        a.plot(np.arange(1, len(c["shuffled"]) + 1), c["shuffled"], color=color(name), ls="--", alpha=0.7)
    a.set(xlabel="component (sorted)", ylabel="canonical correlation ρ", ylim=(0, 1),
          title="canonical correlations (dashed: shuffled pairs)")
    a.legend(fontsize=8)
    for name, e in eig.items():
        for dom, ls in (("real", "-"), ("synthetic", ":")):
            b.semilogy(np.arange(1, len(e[dom]) + 1), e[dom], color=color(name), ls=ls,
                       label=f"{name} {dom}")
    b.set(xlabel="eigenvalue index", ylabel="eigenvalue / mean eigenvalue (log)",
          title="within-domain covariance spectra (1 = isotropic)")
    b.legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    return fig


def map_2d(points: Mapping[str, np.ndarray], domain: np.ndarray, concept: np.ndarray, *, method: str,
           title: str) -> plt.Figure:
    """2-D maps of real and synthetic test features: row = encoder, left coloured by domain, right by concept.

    Args:
        points: ``{encoder: (n, 2)}`` coordinates. domain: ``(n,)`` 0 real / 1 synthetic.
        concept: ``(n,)`` int model index (colours cycle through the palette; marker = domain).
        method: "umap" or "pca" (axis labels).
    """
    fig, axes = plt.subplots(len(points), 2, figsize=(10, 4 * len(points)), squeeze=False, layout="constrained")
    for i, (name, p) in enumerate(points.items()):
        for dom, marker, lab in ((0, "o", "real exemplar"), (1, "^", "synthetic")):
            m = domain == dom
            axes[i, 0].scatter(p[m, 0], p[m, 1], s=12, marker=marker, color=PALETTE[dom * 3], label=lab, alpha=0.7)
            cols = [PALETTE[int(c) % 7] for c in concept[m]]
            axes[i, 1].scatter(p[m, 0], p[m, 1], s=12 if dom else 40, marker=marker, c=cols, alpha=0.8,
                               edgecolors="k" if dom == 0 else "none", linewidths=0.5)
        axes[i, 0].legend(fontsize=8)
        axes[i, 0].set_title(f"{name}: by domain")
        axes[i, 1].set_title(f"{name}: by concept (colour = model, ○ real, △ synthetic)")
        for ax in axes[i]:
            ax.set(xlabel=f"{method} 1 (a.u.)", ylabel=f"{method} 2 (a.u.)")
    fig.suptitle(title)
    return fig


def ci_figure(table: pd.DataFrame, stats: Sequence[str], *, title: str) -> plt.Figure:
    """One panel per statistic: estimate with its bootstrap interval per encoder.

    Args:
        table: rows = encoders; columns ``stat``, ``stat_lo``, ``stat_hi`` for each name in ``stats``.
    """
    fig, axes = plt.subplots(1, len(stats), figsize=(3.2 * len(stats), 3.6), squeeze=False, layout="constrained")
    x = np.arange(len(table))
    axes[0, 0].set_ylabel("value (unitless)")
    for ax, s in zip(axes[0], stats):
        est = table[s].to_numpy(float)
        err = np.vstack([est - table[f"{s}_lo"].to_numpy(float), table[f"{s}_hi"].to_numpy(float) - est])
        ax.errorbar(x, est, yerr=np.clip(err, 0, None), fmt="none", ecolor="k", capsize=3)
        ax.scatter(x, est, color=[color(n) for n in table.index], zorder=3)
        ax.set_xticks(x, table.index, rotation=30, ha="right")
        ax.set_title(s)
    fig.suptitle(title)
    return fig


def flatten_ci(ci: Mapping[str, tuple[float, float, float]], *, extra: Mapping[str, float] | None = None
               ) -> dict[str, float]:
    """``{name: (est, lo, hi)}`` -> ``{name: est, name_lo: lo, name_hi: hi}`` plus ``extra`` (one table row)."""
    row = {k: v[0] for k, v in ci.items()}
    row.update({f"{k}_lo": v[1] for k, v in ci.items()})
    row.update({f"{k}_hi": v[2] for k, v in ci.items()})
    return {**row, **(extra or {})}


def stat_vs_recall(table: pd.DataFrame, stats: Sequence[str], *, recall: str = "R@5",
                   title: str) -> tuple[plt.Figure, dict[str, float]]:
    """Scatter of each statistic against retrieval recall across encoders, with Spearman's ρ in the panel title.

    Returns:
        The figure and ``{stat: Spearman ρ}`` (NaN when a column is constant or has < 3 encoders).
    """
    fig, axes = plt.subplots(1, len(stats), figsize=(3.4 * len(stats), 3.6), squeeze=False, layout="constrained")
    rhos: dict[str, float] = {}
    for ax, s in zip(axes[0], stats):
        x, y = table[s].to_numpy(float), table[recall].to_numpy(float)
        ok = len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        rhos[s] = float(spearmanr(x, y).statistic) if ok else float("nan")
        for name, xi, yi in zip(table.index, x, y):
            ax.scatter(xi, yi, color=color(name), s=40, zorder=3)
            ax.annotate(name, (xi, yi), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel=f"{s} (unitless)", ylabel=f"mean {recall} (fraction)", title=f"{s}: Spearman {rhos[s]:.2f}")
    fig.suptitle(title)
    return fig, rhos


def decomposition_figure(table: pd.DataFrame, *, title: str) -> plt.Figure:
    """Grouped bars: per encoder, the whitened alignment term, the CCA optimum and the pair-free Infomax terms.

    Args:
        table: rows = encoders; columns ``coord_corr_mean``, ``cca_mean``, ``isotropy_x``, ``isotropy_y`` and
            optionally ``heldout_cca_mean`` (CCA fitted on training pairs, measured on test pairs).
    """
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    cols = [c for c in ("coord_corr_mean", "heldout_cca_mean", "cca_mean") if c in table]
    labels = {"coord_corr_mean": "own coordinates after whitening (alignment term / d)",
              "heldout_cca_mean": "CCA fitted on training pairs, test pairs",
              "cca_mean": "in-sample CCA on test pairs (optimum)"}
    x, w = np.arange(len(table)), 0.8 / len(cols)
    for i, c in enumerate(cols):
        a.bar(x + i * w, table[c], w, color=PALETTE[i], label=labels[c])
    a.set_xticks(x + w * (len(cols) - 1) / 2, table.index, rotation=30, ha="right")
    a.set(ylabel="mean correlation per dimension", title="alignment vs the CCA objective")
    a.legend(fontsize=8)
    for i, (c, lab) in enumerate((("isotropy_x", "synthetic"), ("isotropy_y", "real"))):
        b.bar(x + i * 0.4, table[c], 0.4, color=PALETTE[i + 3], label=lab)
    b.set_xticks(x + 0.2, table.index, rotation=30, ha="right")
    b.set(ylabel="(1/d) log det(Σ / mean eigenvalue) (nats)", title="disentanglement terms (0 = isotropic)")
    b.legend(fontsize=8)
    fig.suptitle(title)
    return fig


# ---- feature sets of the analysis chapters ------------------------------------------------------------------

@dataclass
class FeatureSet:
    """One encoder of the analysis chapters: raw backbone features plus the (optional) trained maps.

    Attributes:
        name: encoder label (``random``, ``pretrained``, ``whiten``, ``align``, ``ada``, ...).
        bench: ``ada_utils.evaluate.BenchmarkFeatures`` of the test cells (raw backbone features).
        pool: ``(N, D)`` float32 raw features of the unlabelled training pool; pool_domain ``(N,)`` 0 real / 1 synth.
        pool_paths: the pool's image paths (row order of ``pool``).
        real_map, synth_map: numpy ``(n, D) -> (n, D')`` maps of real / synthetic features (None = identity).
        source: where the maps come from (a run folder, "closed form" or "none").
    """

    name: str
    bench: Any
    pool: np.ndarray
    pool_domain: np.ndarray
    pool_paths: list[Path]
    real_map: Callable[[np.ndarray], np.ndarray] | None = None
    synth_map: Callable[[np.ndarray], np.ndarray] | None = None
    source: str = "none"

    def real(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X if self.real_map is None else self.real_map(np.asarray(X, np.float32)), np.float64)

    def synth(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(X if self.synth_map is None else self.synth_map(np.asarray(X, np.float32)), np.float64)

    def mapped_pool(self) -> np.ndarray:
        """``(N, D')`` pool features through the map of each row's domain."""
        out = np.empty((len(self.pool), self.real(self.pool[:1]).shape[1]))
        for dom, fn in ((0, self.real), (1, self.synth)):
            rows = self.pool_domain == dom
            if rows.any():
                out[rows] = fn(self.pool[rows])
        return out


def _find_run(name: str, *, seed: int, train_params: dict, root: Path, runs: Path) -> tuple[Path | None, str]:
    """The finished 03_train run ``runs/<name>-seed<seed>`` made on this benchmark, or None and why not.

    Raises:
        ValueError: the run exists for this benchmark but was trained with other backbone settings.
    """
    from ada_utils.io import read_json

    run = runs / f"{name}-seed{seed}"
    if not ((run / "head.safetensors").is_file() and (run / "metrics.json").is_file()):
        return None, "03_train run missing"
    if read_json(run / "metrics.json").get("data_root") != root.name:
        return None, "03_train run is for another benchmark"
    saved = read_json(run / "config.json").get("config", {})
    wrong = {k: (saved.get(k), v) for k, v in train_params.items() if k in saved and saved[k] != v}
    if wrong:
        raise ValueError(f"{run} was trained with other settings {wrong} (saved, here): rerun 03_train with "
                         "these parameters or change this notebook's parameters")
    return run, str(run.relative_to(runs.parent))


def _fallback_maps(name: str, feats: np.ndarray, domain: np.ndarray, ids: list[str], *, seed: int, train_params: dict,
                   out: Path, epochs: int | None) -> tuple[Callable, Callable]:
    """Train the head of ``name`` here (TrainConfig defaults) when 03_train has no usable run."""
    from ada_utils.train import TrainConfig, TrainData, feature_maps, train

    extra = {"epochs": epochs} if epochs else {}
    cfg = TrainConfig.from_dict({**train_params, "method": name, "seed": seed, **extra})
    result = train(cfg, TrainData(feats, domain, ids=ids), out / f"{name}-seed{seed}", overwrite=True, progress=False)
    return feature_maps(result.model)


def load_feature_sets(names: Sequence[str], *, root: Path, backbone: str, weights: str, image_size: int, seed: int,
                      device: str, distractors: int | None, fallback: Path, fallback_epochs: int | None = None,
                      random_image_size: int | None = None) -> dict[str, FeatureSet]:
    """Embed the test cells and the unlabelled training pool once per backbone and attach each encoder's maps.

    ``random``: random-init backbone (at ``random_image_size`` px if given: smoke runs use a small size, the
    CPU forward pass being the cost); ``pretrained``: the backbone as is; any other name is a ``03_train``
    method whose head is read from ``runs/03_train/<name>-seed<seed>/`` (or trained into ``fallback``).
    """
    from ada_utils.config import runs_dir, set_seed
    from ada_utils.data import unlabelled_pool
    from ada_utils.embed import embed_images
    from ada_utils.encoders import load_encoder
    from ada_utils.evaluate import embed_benchmark
    from ada_utils.train import feature_maps

    params = {"backbone": backbone, "weights": weights, "image_size": image_size}
    runs = {n: _find_run(n, seed=seed, train_params=params, root=root, runs=runs_dir() / "03_train")
            for n in names if n not in ("random", "pretrained")}  # checked before any embedding
    pool = unlabelled_pool(root)
    raw: dict[bool, tuple[Any, np.ndarray]] = {}
    out = {}
    for name in names:
        pretrained = name != "random"
        if pretrained not in raw:
            set_seed(seed)
            size = image_size if pretrained else (random_image_size or image_size)
            enc = load_encoder(backbone, (weights or None) if pretrained else None, device, image_size=size,
                               pretrained=pretrained)
            raw[pretrained] = (embed_benchmark(enc, root, distractors=distractors),
                               np.asarray(embed_images(enc, pool.paths).feats, np.float32))
        bench, feats = raw[pretrained]
        maps, source = (None, None), "none"
        if name in runs:
            run, source = runs[name]
            if run is not None:
                maps = feature_maps(run)
            else:
                maps = _fallback_maps(name, feats, pool.domain, pool.ids, seed=seed, train_params=params,
                                      out=fallback, epochs=fallback_epochs)
                source = f"trained here with default settings ({source})"
        out[name] = FeatureSet(name, bench, feats, pool.domain, list(pool.paths), *maps, source=source)
    return out


@dataclass
class Pairs:
    """Matched (synthetic query, real exemplar of its model) test pairs in an encoder's output coordinates.

    Attributes:
        synth: ``(n, D)`` float64; real: ``(n, D)`` float64 (row i matches row i).
        model: ``(n,)`` int64 concept id, unique across test cases; case: ``(n,)`` test-case name.
        exemplar: ``(n,)`` int64 id of the real exemplar, unique across test cases.
    """

    synth: np.ndarray
    real: np.ndarray
    model: np.ndarray
    case: np.ndarray
    exemplar: np.ndarray

    def shuffled(self, seed: int) -> Pairs:
        """The same rows with each real exemplar swapped for one of a *different* model (the null)."""
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(self.model))
        for _ in range(1000):
            bad = np.flatnonzero(self.model[perm] == self.model)
            if not len(bad):
                break
            for i, j in zip(bad, rng.integers(0, len(perm), len(bad))):  # random swaps keep a permutation
                perm[i], perm[j] = perm[j], perm[i]
        else:
            raise ValueError("cannot shuffle: one model holds more than half of the pairs")
        return Pairs(self.synth, self.real[perm], self.model, self.case, self.exemplar[perm])


def matched_pairs(fs: FeatureSet) -> Pairs:
    """All test pairs: query j of model m (prompt types concatenated) with exemplar ``j mod E_m`` (as
    ``data.training_pairs``), mapped by the encoder's real/synthetic maps."""
    synth, real, model, case, exemplar, offset, ex_offset = [], [], [], [], [], 0, 0
    for name, cf in fs.bench.cases.items():
        q = np.concatenate([np.asarray(cf.queries[p]) for p in cf.queries])
        qm = np.concatenate([np.asarray(cf.query_model[p]) for p in cf.queries])
        qi, ei = cca.pair_indices(qm, np.asarray(cf.exemplar_model))
        synth.append(fs.synth(q[qi]))
        real.append(fs.real(np.asarray(cf.exemplars)[ei]))
        model.append(offset + qm[qi])
        case.append(np.full(len(qi), name))
        exemplar.append(ex_offset + ei)
        offset += int(max(qm.max(), np.asarray(cf.exemplar_model).max())) + 1
        ex_offset += len(cf.exemplar_model)
    return Pairs(np.vstack(synth), np.vstack(real), np.concatenate(model), np.concatenate(case),
                 np.concatenate(exemplar))


def top_variance_dims(X: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` columns of ``X`` ``(n, D)`` with the largest variance (all columns if ``k`` is 0)."""
    order = np.argsort(-np.var(X, axis=0), kind="stable")
    return np.sort(order[:k]) if 0 < k < X.shape[1] else np.arange(X.shape[1])


def training_pair_features(fs: FeatureSet, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matched *training* pairs (``data.training_pairs``; training split only) from the pool features.

    Returns:
        ``synth (P, D')``, ``real (P, D')`` float64 (mapped) and ``model (P,)`` int64.
    """
    from ada_utils.data import training_pairs

    row = {Path(p).resolve(): i for i, p in enumerate(fs.pool_paths)}
    trip = training_pairs(root)
    ri = np.asarray([row[Path(e).resolve()] for e, _, _ in trip])
    si = np.asarray([row[Path(s).resolve()] for _, s, _ in trip])
    return fs.synth(fs.pool[si]), fs.real(fs.pool[ri]), np.asarray([m for _, _, m in trip], np.int64)


def cca_maps(fs: FeatureSet, model: cca.CCAModel, dims: np.ndarray) -> tuple[Callable, Callable]:
    """``(real_map, synth_map)`` for ``evaluate``: the encoder's maps, its ``dims``, then the canonical
    projection (``synth ↦ (x − mean_x) A``, ``real ↦ (y − mean_y) B``), each component scaled by its ρ."""
    w = model.rho if len(model.rho) else np.ones(model.A.shape[1])

    def real_map(x: np.ndarray) -> np.ndarray:
        return ((fs.real(x)[:, dims] - model.mean_y) @ model.B * w).astype(np.float32)

    def synth_map(x: np.ndarray) -> np.ndarray:
        return ((fs.synth(x)[:, dims] - model.mean_x) @ model.A * w).astype(np.float32)

    return real_map, synth_map


def project_2d(X: np.ndarray, *, method: str, seed: int) -> np.ndarray:
    """``(n, 2)`` coordinates of ``X`` ``(n, D)`` for a picture only: UMAP (cosine) or the top-2 PCA scores."""
    if method == "umap":
        import umap

        return umap.UMAP(n_neighbors=15, metric="cosine", random_state=seed).fit_transform(X)
    if method != "pca":
        raise ValueError(f"projection={method!r}: choose 'umap' or 'pca'")
    Xc = X - X.mean(0)
    return Xc @ np.linalg.svd(Xc, full_matrices=False)[2][:2].T
