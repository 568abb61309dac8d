"""mlxllm.block: norms by hand == fused, feed-forward widths and GELUs, and the block's wiring and variants."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxllm import MLP, KVCache, ModelConfig, RoPE, SwiGLU, TransformerBlock, TransformerLM, make_ffn, make_norm
from mlxllm.block import swiglu_hidden_dims


def n_params(module: nn.Module) -> int:
    return sum(p.size for _, p in tree_flatten(module.parameters()))


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter (norm weights and biases too) random values, so no wiring hides behind 1s and 0s."""
    keys = iter(mx.random.split(mx.random.key(seed), 1000))
    module.update(nn.utils.tree_map(lambda p: 0.3 * mx.random.normal(p.shape, key=next(keys)), module.parameters()))
    return module


# ---- norms -------------------------------------------------------------------------------------------------

def test_layernorm_by_hand_equals_fused():
    norm = randomize(make_norm("layernorm", 16, eps=1e-5))
    assert isinstance(norm, nn.LayerNorm)
    x = 3 * mx.random.normal((2, 5, 16), key=mx.random.key(1)) + 2
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as in the paper and PyTorch
    by_hand = (x - mean) / mx.sqrt(var + 1e-5) * norm.weight + norm.bias
    assert mx.abs(norm(x) - by_hand).max().item() < 2e-5


def test_rmsnorm_by_hand_equals_fused():
    norm = randomize(make_norm("rmsnorm", 16, eps=1e-6))
    assert isinstance(norm, nn.RMSNorm)
    x = 3 * mx.random.normal((2, 5, 16), key=mx.random.key(1)) + 2
    by_hand = x / mx.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-6) * norm.weight
    assert mx.abs(norm(x) - by_hand).max().item() < 2e-5
    # an RMSNorm does not centre: a constant row keeps its sign, where LayerNorm would map it to its bias
    assert mx.all(make_norm("rmsnorm", 4)(mx.full((1, 4), 5.0)) > 0.99).item()


def test_layernorm_without_bias_and_no_norm():
    assert "bias" not in make_norm("layernorm", 8, bias=False)
    x = mx.random.normal((2, 8), key=mx.random.key(0))
    assert mx.array_equal(make_norm("none", 8)(x), x)


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="unknown norm 'batchnorm'"):
        make_norm("batchnorm", 8)


# ---- feed-forward ------------------------------------------------------------------------------------------

def test_mlp_and_swiglu_parameter_counts():
    C, H = 64, 256
    assert n_params(MLP(C, H, bias=True)) == 2 * C * H + H + C  # up (C·H + H) and down (H·C + C)
    assert n_params(MLP(C, H, bias=False)) == 2 * C * H
    assert n_params(SwiGLU(C, 160, bias=False)) == 3 * C * 160  # gate, up, down
    assert n_params(SwiGLU(C, 160, bias=True)) == 3 * C * 160 + 2 * 160 + C
    assert n_params(make_ffn("gelu", C)) == 2 * C * 4 * C + 4 * C + C  # default 4× width


def test_swiglu_width_rounding():
    assert swiglu_hidden_dims(768) == 2048  # 8/3 · 768 = 2048 exactly
    assert swiglu_hidden_dims(576) == 1536  # SmolLM2-135M
    assert swiglu_hidden_dims(4096, multiple_of=256) == 11008  # LLaMA-7B: 10922.67 → next multiple of 256
    assert swiglu_hidden_dims(100) == 288  # 266 → 288
    # three 8/3·C matrices cost about what two 4·C ones do
    assert n_params(make_ffn("swiglu", 768, bias=False)) == n_params(make_ffn("gelu", 768, bias=False))


def test_exact_and_tanh_gelu_match_their_formulas_and_differ():
    x = mx.linspace(-4, 4, 81)
    xs = np.array(x, dtype=np.float64)
    exact = xs * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in xs]))
    tanh = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs**3)))
    identity = mx.eye(81)

    def activation_of(name: str) -> np.ndarray:  # an MLP with identity matrices is its activation
        mlp = MLP(81, 81, activation=name, bias=False)
        mlp.up_proj.weight, mlp.down_proj.weight = identity, identity
        return np.array(mlp(x))

    np.testing.assert_allclose(activation_of("gelu"), exact, atol=1e-6)
    np.testing.assert_allclose(activation_of("gelu_tanh"), tanh, atol=1e-6)
    np.testing.assert_allclose(activation_of("relu"), np.maximum(xs, 0), atol=0)
    gap = np.abs(activation_of("gelu") - activation_of("gelu_tanh")).max()
    assert 1e-4 < gap < 1e-3  # close, but GPT-2's weights were trained with the tanh one


def test_swiglu_by_hand():
    ffn = randomize(SwiGLU(8, 24))
    x = mx.random.normal((2, 3, 8), key=mx.random.key(5))
    gate, up = x @ ffn.gate_proj.weight.T, x @ ffn.up_proj.weight.T
    by_hand = (gate * mx.sigmoid(gate) * up) @ ffn.down_proj.weight.T
    assert mx.abs(ffn(x) - by_hand).max().item() < 1e-5


def test_unknown_activation_raises():
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        make_ffn("tanh", 8)
    with pytest.raises(ValueError, match="MLP activation"):
        MLP(8, 32, activation="swiglu")


# ---- the block ---------------------------------------------------------------------------------------------

def make_block(seed: int = 0, **kwargs) -> TransformerBlock:
    mx.random.seed(seed)
    return randomize(TransformerBlock(32, 4, **kwargs), seed)


def test_pre_norm_block_is_the_two_residual_steps():
    block = make_block(norm="rmsnorm", activation="swiglu", n_kv_heads=2, rope=RoPE(8), bias=False)
    x = mx.random.normal((2, 6, 32), key=mx.random.key(9))
    h = x + block.attention(block.attention_norm(x))
    expected = h + block.ffn(block.ffn_norm(h))
    assert mx.allclose(block(x), expected, atol=1e-6, rtol=0)


def test_post_norm_block_normalizes_after_each_residual_add():
    block = make_block(pre_norm=False)
    x = mx.random.normal((2, 6, 32), key=mx.random.key(9))
    h = block.attention_norm(x + block.attention(x))
    expected = block.ffn_norm(h + block.ffn(h))
    assert mx.allclose(block(x), expected, atol=1e-6, rtol=0)
    # it ends in a norm: undo the norm's affine part and every row has mean 0 and variance 1
    standard = (block(x) - block.ffn_norm.bias) / block.ffn_norm.weight
    assert mx.abs(standard.mean(axis=-1)).max().item() < 1e-4
    assert mx.abs(standard.var(axis=-1) - 1).max().item() < 1e-3


def test_post_norm_and_parallel_change_the_output():
    pre = make_block()
    post, parallel = make_block(pre_norm=False), make_block(parallel=True)
    post.update(pre.parameters())
    parallel.update({k: v for k, v in pre.parameters().items() if k != "ffn_norm"})
    x = mx.random.normal((2, 6, 32), key=mx.random.key(9))
    assert "ffn_norm" not in parallel
    assert mx.abs(pre(x) - post(x)).max().item() > 0.1
    assert mx.abs(pre(x) - parallel(x)).max().item() > 0.1
    h = pre.attention_norm(x)
    assert mx.allclose(parallel(x), x + pre.attention(h) + pre.ffn(h), atol=1e-6, rtol=0)


def test_parallel_needs_pre_norm():
    with pytest.raises(ValueError, match="pre_norm=True"):
        TransformerBlock(32, 4, pre_norm=False, parallel=True)


def test_block_errors_come_from_its_parts():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        TransformerBlock(30, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        TransformerBlock(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="unknown norm"):
        TransformerBlock(32, 4, norm="groupnorm")
    with pytest.raises(ValueError, match="unknown activation"):
        TransformerBlock(32, 4, activation="gelu_new")
    with pytest.raises(ValueError, match="even"):
        TransformerBlock(36, 4, rope=RoPE(9))


def test_gpt2_block_parameter_count():
    C = 64  # attention 4·(C² + C), MLP 8C² + 5C, two LayerNorms 2·2C: 12C² + 13C
    assert n_params(TransformerBlock(C, 4)) == 12 * C * C + 13 * C == 49_984
    # LLaMA block: q, o: C²; k, v: C·C/2 (GQA, 2 of 4 heads); SwiGLU 3·C·H; two RMSNorms: C each
    H = swiglu_hidden_dims(C)
    block = TransformerBlock(C, 4, n_kv_heads=2, norm="rmsnorm", activation="swiglu", bias=False)
    assert n_params(block) == 2 * C * C + 2 * C * C // 2 + 3 * C * H + 2 * C


@pytest.mark.parametrize("kwargs", [{}, {"pre_norm": False}, {"parallel": True},
                                    {"norm": "rmsnorm", "activation": "swiglu", "rope": RoPE(8), "n_kv_heads": 1}])
def test_block_is_causal(kwargs):
    block = make_block(**kwargs)
    x = mx.random.normal((1, 9, 32), key=mx.random.key(3))
    changed = mx.concatenate([x[:, :6], mx.random.normal((1, 3, 32), key=mx.random.key(4))], axis=1)
    a, b = block(x), block(changed)
    assert mx.allclose(a[:, :6], b[:, :6], atol=1e-5, rtol=0)
    assert mx.abs(a[:, 6:] - b[:, 6:]).max().item() > 1e-2


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_whole_model_is_causal(position):
    mx.random.seed(0)
    model = TransformerLM(ModelConfig(vocab_size=50, context_length=16, dims=32, n_layers=2, n_heads=4,
                                      position=position))
    ids = mx.array([[1, 7, 3, 9, 4, 4, 2, 8]])
    changed = mx.array([[1, 7, 3, 9, 4, 0, 49, 13]])
    a, b = model(ids), model(changed)
    assert mx.allclose(a[:, :5], b[:, :5], atol=1e-5, rtol=0)
    assert mx.abs(a[:, 5:] - b[:, 5:]).max().item() > 1e-4


def test_cached_block_equals_full_recompute():
    block = make_block(norm="rmsnorm", activation="swiglu", rope=RoPE(8), n_kv_heads=2)
    x = mx.random.normal((1, 20, 32), key=mx.random.key(3))
    cache = KVCache()
    pieces = [block(x[:, :12], cache=cache)] + [block(x[:, t : t + 1], cache=cache) for t in range(12, 20)]
    assert mx.abs(mx.concatenate(pieces, axis=1) - block(x)).max().item() < 1e-5


@pytest.mark.parametrize("dtype,atol", [(mx.float16, 1e-2), (mx.bfloat16, 6e-2)])
def test_half_precision_block_stays_close_to_float32(dtype, atol):
    # measured on CPU: max |Δ| 3.1e-3 (float16) and 2.9e-2 (bfloat16) on outputs up to |5.4|
    block = TransformerBlock(32, 4, n_kv_heads=2, norm="rmsnorm", activation="swiglu", rope=RoPE(8))
    block = randomize(block)
    x = mx.random.normal((2, 16, 32), key=mx.random.key(3))
    expected = block(x)
    block.set_dtype(dtype)
    out = block(x.astype(dtype))
    assert out.dtype == dtype and not mx.any(mx.isnan(out)).item()
    assert mx.abs(out.astype(mx.float32) - expected).max().item() < atol
