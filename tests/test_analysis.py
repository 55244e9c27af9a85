"""Tests for ada_utils.analysis.features: pairing rule, shuffled-pair null, dimension choice, pool maps and training pairs."""

from __future__ import annotations

import numpy as np

from ada_utils.analysis.features import FeatureSet, Pairs, pair_indices, top_variance_dims, training_pair_features
from ada_utils.train import TrainData


def test_pair_indices_cycle_through_each_models_exemplars() -> None:
    qi, ei = pair_indices(np.array([0, 0, 1, 1, 1, 2]), np.array([1, 0, 1]))
    np.testing.assert_array_equal(qi, [0, 1, 2, 3, 4])  # model 2 has no exemplar: query 5 dropped
    np.testing.assert_array_equal(ei, [1, 1, 0, 2, 0])


def test_shuffled_pairs_never_keep_their_model_and_top_variance_dims() -> None:
    model = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 6])
    real = np.arange(len(model), dtype=float)[:, None]
    p = Pairs(np.zeros((len(model), 1)), real, model, np.full(len(model), "c"), np.arange(len(model)))
    s = p.shuffled(0)
    assert np.all(model[s.real[:, 0].astype(int)] != model)  # every real row now belongs to another model
    np.testing.assert_array_equal(np.sort(s.real[:, 0]), real[:, 0])
    X = np.random.default_rng(0).standard_normal((50, 4)) * [1, 5, 0.1, 3]
    np.testing.assert_array_equal(top_variance_dims(X, 2), [1, 3])
    np.testing.assert_array_equal(top_variance_dims(X, 0), np.arange(4))


def test_pool_goes_through_each_domains_map() -> None:
    feats = np.arange(12, dtype=np.float32).reshape(6, 2)
    pool = TrainData(feats, np.array([0, 1, 1, 0, 1, 0]), pairs=np.array([[0, 2], [5, 4]]),
                     pair_model=np.array([3, 7]))
    fs = FeatureSet("toy", None, pool, real_map=lambda x: 2 * x, synth_map=lambda x: -x)
    np.testing.assert_array_equal(fs.mapped_pool(), [[0, 2], [-2, -3], [-4, -5], [12, 14], [-8, -9], [20, 22]])
    synth, real, model = training_pair_features(fs)
    np.testing.assert_array_equal(synth, [[-4, -5], [-8, -9]])  # rows 2 and 4, synthetic map
    np.testing.assert_array_equal(real, [[0, 2], [20, 22]])  # rows 0 and 5, real map
    np.testing.assert_array_equal(model, [3, 7])
