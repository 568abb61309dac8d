"""mlxllm.embedding: learned and sinusoidal positions, the position table a config asks for, and RoPE against a
from-scratch version. (The token lookup is mlx.nn.Embedding itself; Chapter 2 shows it equals one-hot × matrix.)"""

import math

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxllm import LearnedPositions, ModelConfig, RoPE, SinusoidalPositions, sinusoidal_table
from mlxllm.embedding import make_positions


def rope_by_hand(x: np.ndarray, positions: np.ndarray, base: float, traditional: bool) -> np.ndarray:
    """RoPE written from the paper, independent of the package: rotate feature pairs by position × frequency.

    x: (..., T, D). Pair i turns at frequency base^(-2i/D). traditional: pairs are (x[2i], x[2i+1]);
    otherwise (rotate-half, Hugging Face): pairs are (x[i], x[i + D/2]).
    """
    D = x.shape[-1]
    freqs = base ** (-np.arange(0, D, 2, dtype=np.float64) / D)  # (D/2,)
    angles = positions[:, None].astype(np.float64) * freqs[None, :]  # (T, D/2)
    cos, sin = np.cos(angles), np.sin(angles)
    if traditional:
        a, b = x[..., 0::2], x[..., 1::2]
    else:
        a, b = x[..., : D // 2], x[..., D // 2 :]
    ra, rb = a * cos - b * sin, a * sin + b * cos  # the 2-D rotation of each pair
    out = np.empty_like(x, dtype=np.float64)
    if traditional:
        out[..., 0::2], out[..., 1::2] = ra, rb
    else:
        out[..., : D // 2], out[..., D // 2 :] = ra, rb
    return out


def test_sinusoidal_table_at_hand_computed_points():
    table = np.array(sinusoidal_table(8, 4))  # C = 4: frequencies 1 and 1/100
    assert table.shape == (8, 4)
    # t = 0: sin(0) = 0 in even columns, cos(0) = 1 in odd columns
    np.testing.assert_allclose(table[0], [0.0, 1.0, 0.0, 1.0], atol=1e-7)
    # t = 1: column pair 0 turns at 1 rad/step, pair 1 at 10000^(-2/4) = 0.01 rad/step
    np.testing.assert_allclose(table[1], [0.8414710, 0.5403023, 0.0099998, 0.9999500], atol=1e-6)
    # t = 2: sin(2) = 0.9092974, cos(2) = -0.4161468, sin(0.02) = 0.0199987, cos(0.02) = 0.9998000
    np.testing.assert_allclose(table[2], [0.9092974, -0.4161468, 0.0199987, 0.9998000], atol=1e-6)
    # another base: C = 2 has a single frequency 1 whatever the base; C = 4, base 100: 100^(-1/2) = 0.1
    np.testing.assert_allclose(np.array(sinusoidal_table(4, 4, base=100.0))[3, 2], math.sin(0.3), atol=1e-6)


def test_sinusoidal_needs_even_dims():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_table(4, 5)


def test_sinusoidal_positions_are_not_parameters_and_respect_offset():
    positions = SinusoidalPositions(16, 8)
    assert tree_flatten(positions.parameters()) == []
    assert mx.array_equal(positions(3, offset=5), sinusoidal_table(16, 8)[5:8])


def test_learned_positions_are_trainable_rows():
    mx.random.seed(0)
    positions = LearnedPositions(16, 8)
    assert [name for name, _ in tree_flatten(positions.trainable_parameters())] == ["weight"]
    assert positions(4).shape == (4, 8)
    assert mx.array_equal(positions(2, offset=7), positions.weight[7:9])


def test_make_positions_builds_the_table_the_config_names():
    config = dict(context_length=16, dims=8, n_heads=2)
    learned = make_positions(ModelConfig(**config, position="learned"))
    assert isinstance(learned, LearnedPositions) and learned.weight.shape == (16, 8)
    sinusoidal = make_positions(ModelConfig(**config, position="sinusoidal"))
    assert isinstance(sinusoidal, SinusoidalPositions) and mx.array_equal(sinusoidal(16), sinusoidal_table(16, 8))
    assert make_positions(ModelConfig(**config, position="rope")) is None  # RoPE acts inside attention
    assert make_positions(ModelConfig(**config, position="none")) is None


def test_positions_past_the_table_raise():
    with pytest.raises(ValueError, match="context_length"):
        LearnedPositions(16, 8)(4, offset=14)
    with pytest.raises(ValueError, match="context_length"):
        SinusoidalPositions(16, 8)(17)


@pytest.mark.parametrize("traditional", [True, False])
@pytest.mark.parametrize("offset", [0, 37])
def test_rope_equals_the_from_scratch_rotation(traditional, offset):
    mx.random.seed(1)
    B, H, T, D = 2, 3, 5, 8
    x = mx.random.normal((B, H, T, D))
    rope = RoPE(D, base=10000.0, traditional=traditional)
    expected = rope_by_hand(np.array(x), np.arange(offset, offset + T), 10000.0, traditional)
    np.testing.assert_allclose(np.array(rope(x, offset)), expected, atol=2e-5, rtol=0)


@pytest.mark.parametrize("traditional", [True, False])
def test_rope_with_another_base(traditional):
    mx.random.seed(2)
    x = mx.random.normal((1, 1, 6, 16))
    expected = rope_by_hand(np.array(x), np.arange(6), 500000.0, traditional)  # LLaMA 3's theta
    np.testing.assert_allclose(np.array(RoPE(16, 500000.0, traditional)(x)), expected, atol=2e-5, rtol=0)


def test_the_two_layouts_differ():
    mx.random.seed(3)
    x = mx.random.normal((1, 1, 4, 8))
    gap = mx.abs(RoPE(8, traditional=True)(x, 1) - RoPE(8, traditional=False)(x, 1)).max().item()
    assert gap > 0.1  # the wrong layout pairs the wrong features: a checkpoint would be garbage


@pytest.mark.parametrize("traditional", [True, False])
def test_rope_score_depends_only_on_the_offset(traditional):
    mx.random.seed(4)
    D = 16
    rope = RoPE(D, traditional=traditional)
    q, k = mx.random.normal((1, 1, 1, D)), mx.random.normal((1, 1, 1, D))

    def score(m: int, n: int) -> float:  # q at position m, k at position n
        return (rope(q, m) * rope(k, n)).sum().item()

    for distance in (0, 1, 5, 30):
        scores = [score(n + distance, n) for n in (0, 3, 100, 1000)]
        np.testing.assert_allclose(scores, scores[0], atol=2e-4)
    assert abs(score(5, 0) - score(0, 0)) > 1e-2  # ...and it does depend on the distance


def test_rope_needs_an_even_head_dim():
    with pytest.raises(ValueError, match="even"):
        RoPE(7)
