"""Next-token prediction: probabilities, cross-entropy (with z-loss) and bits per byte, against hand
formulas and ``nn.losses``. Sampling and generation are tested in test_generation.py."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxllm.prediction import bits_per_byte, cross_entropy, probabilities


# --- probabilities and the loss ------------------------------------------------------------------


def test_probabilities_are_the_softmax_over_the_vocabulary():
    logits = mx.array([[[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]]])
    probs = probabilities(logits)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.array(probs[0, 0]), e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(np.array(probs[0, 1]), [0.25, 0.25, 0.5], rtol=1e-6)


def test_cross_entropy_equals_the_hand_formula_and_nn_losses_with_mean_reduction():
    logits = mx.random.normal((2, 5, 11), key=mx.random.key(0)) * 3
    targets = mx.random.randint(0, 11, (2, 5), key=mx.random.key(1))
    lg, tg = np.array(logits, dtype=np.float64), np.array(targets)
    by_hand = np.mean([
        math.log(sum(math.exp(v) for v in lg[b, t])) - lg[b, t, tg[b, t]] for b in range(2) for t in range(5)
    ])
    ours = cross_entropy(logits, targets).item()
    assert abs(ours - by_hand) < 1e-5
    assert abs(nn.losses.cross_entropy(logits, targets, reduction="mean").item() - by_hand) < 1e-5
    # the trap: nn.losses' default reduction is "none", one loss per position
    assert nn.losses.cross_entropy(logits, targets).shape == (2, 5)


def test_cross_entropy_of_a_uniform_prediction_is_log_vocab():
    assert abs(cross_entropy(mx.zeros((3, 4, 50)), mx.zeros((3, 4), dtype=mx.int32)).item() - math.log(50)) < 1e-6


def test_cross_entropy_z_loss_adds_the_squared_log_normaliser():
    logits = mx.array([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # log Z = log 4 and 1 + log 2
    targets = mx.array([[1, 0]])
    plain = (math.log(4) - math.log(3) + (1 + math.log(2)) - 1) / 2
    z_term = 0.1 * (math.log(4) ** 2 + (1 + math.log(2)) ** 2) / 2
    assert abs(cross_entropy(logits, targets).item() - plain) < 1e-6
    assert abs(cross_entropy(logits, targets, z_loss=0.1).item() - (plain + z_term)) < 1e-6


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits .* and targets .* disagree"):
        cross_entropy(mx.zeros((2, 5, 11)), mx.zeros((2, 4), dtype=mx.int32))


def test_bits_per_byte_converts_nats_per_token():
    assert abs(bits_per_byte(math.log(2), n_tokens=10, n_bytes=10) - 1.0) < 1e-12  # 1 bit per 1-byte token
    # 2 nats/token, 4 bytes per token on average: 2 · 100 / 400 / ln 2
    assert abs(bits_per_byte(2.0, n_tokens=100, n_bytes=400) - 0.7213475204444817) < 1e-12
