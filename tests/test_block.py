"""mlxllm.block: norms by hand == fused, feed-forward widths and activations, and the block's wiring and variants."""

import math

import mlx.core as mx
import numpy as np
import pytest
from conftest import n_params, randomize

from mlxllm import MLP, KVCache, ModelConfig, SwiGLU, TransformerBlock, make_ffn, make_norm
from mlxllm.config import swiglu_hidden_dims
from mlxllm.tolerances import assert_close, relative_difference


def config(**overrides) -> ModelConfig:
    return ModelConfig(**{"dims": 32, "n_heads": 4, **overrides})


# ---- norms -------------------------------------------------------------------------------------------------

def test_layernorm_from_the_config_equals_the_formula():
    norm = randomize(make_norm(config(dims=16, norm="layernorm", norm_eps=1e-5)))
    x = 3 * mx.random.normal((2, 5, 16), key=mx.random.key(1)) + 2
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # biased variance, as in the paper and PyTorch
    by_hand = (x - mean) / mx.sqrt(var + 1e-5) * norm.weight + norm.bias
    assert_close(norm(x), by_hand, what="fused LayerNorm vs formula")


def test_rmsnorm_from_the_config_equals_the_formula_and_does_not_centre():
    norm = randomize(make_norm(config(dims=16, norm="rmsnorm", norm_eps=1e-6)))
    assert "bias" not in norm
    x = 3 * mx.random.normal((2, 5, 16), key=mx.random.key(1)) + 2
    by_hand = x / mx.sqrt((x**2).mean(axis=-1, keepdims=True) + 1e-6) * norm.weight
    assert_close(norm(x), by_hand, what="fused RMSNorm vs formula")
    # an RMSNorm does not centre: a constant row keeps its sign, where LayerNorm would map it to its bias
    assert mx.all(make_norm(config(dims=4, n_heads=1, norm="rmsnorm"))(mx.full((1, 4), 5.0)) > 0.99).item()
    assert mx.abs(make_norm(config(dims=4, n_heads=1))(mx.full((1, 4), 5.0))).max().item() < 1e-3


def test_layernorm_follows_the_bias_flag_and_norm_none_is_the_identity():
    assert "bias" not in make_norm(config(dims=8, n_heads=2, bias=False))
    assert "bias" in make_norm(config(dims=8, n_heads=2, bias=True))
    x = mx.random.normal((2, 8), key=mx.random.key(0))
    assert mx.array_equal(make_norm(config(dims=8, n_heads=2, norm="none"))(x), x)


# ---- feed-forward ------------------------------------------------------------------------------------------

def test_mlp_and_swiglu_parameter_counts():
    C, H = 64, 256
    assert n_params(MLP(C, H, bias=True)) == 2 * C * H + H + C  # up (C·H + H) and down (H·C + C)
    assert n_params(MLP(C, H, bias=False)) == 2 * C * H
    assert n_params(SwiGLU(C, 160, bias=False)) == 3 * C * 160  # gate, up, down
    assert n_params(SwiGLU(C, 160, bias=True)) == 3 * C * 160 + 2 * 160 + C
    assert n_params(make_ffn(config(dims=C))) == 2 * C * 4 * C + 4 * C + C  # default 4× width
    assert n_params(make_ffn(config(dims=C, ffn_dims=100, bias=False))) == 2 * C * 100  # an explicit width


def test_swiglu_default_width_is_eight_thirds_rounded_up_and_costs_what_a_four_times_mlp_costs():
    assert swiglu_hidden_dims(768) == 2048  # 8/3 · 768 = 2048 exactly
    assert swiglu_hidden_dims(576) == 1536  # SmolLM2-135M
    assert swiglu_hidden_dims(4096, multiple_of=256) == 11008  # LLaMA-7B: 10922.67 → next multiple of 256
    assert swiglu_hidden_dims(100) == 288  # 266 → 288
    assert config(dims=96, activation="swiglu").ffn_dims == swiglu_hidden_dims(96) == 256
    assert config(dims=96, activation="relu").ffn_dims == 4 * 96
    # three 8/3·C matrices cost what two 4·C ones do
    gelu, glu = make_ffn(config(dims=768, bias=False)), make_ffn(config(dims=768, bias=False, activation="swiglu"))
    assert isinstance(glu, SwiGLU) and isinstance(gelu, MLP)
    assert n_params(glu) == n_params(gelu) == 2 * 768 * 4 * 768


def test_mlp_activations_match_their_formulas_and_the_two_gelus_differ():
    x = mx.linspace(-4, 4, 81)
    xs = np.array(x, dtype=np.float64)
    exact = xs * 0.5 * (1 + np.array([math.erf(v / math.sqrt(2)) for v in xs]))
    tanh = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs**3)))
    identity = mx.eye(81)

    def activation_of(name: str) -> np.ndarray:  # an MLP with identity matrices is its activation
        mlp = make_ffn(ModelConfig(dims=81, n_heads=1, ffn_dims=81, activation=name, bias=False))
        mlp.up_proj.weight, mlp.down_proj.weight = identity, identity
        return np.array(mlp(x))

    np.testing.assert_allclose(activation_of("gelu"), exact, atol=1e-6)
    np.testing.assert_allclose(activation_of("gelu_tanh"), tanh, atol=1e-6)
    np.testing.assert_allclose(activation_of("relu"), np.maximum(xs, 0), atol=0)
    gap = np.abs(activation_of("gelu") - activation_of("gelu_tanh")).max()
    assert 1e-4 < gap < 1e-3  # close, but GPT-2's weights were trained with the tanh one


def test_swiglu_is_silu_of_the_gate_times_up():
    ffn = randomize(SwiGLU(8, 24))
    x = mx.random.normal((2, 3, 8), key=mx.random.key(5))
    gate, up = x @ ffn.gate_proj.weight.T, x @ ffn.up_proj.weight.T
    by_hand = (gate * mx.sigmoid(gate) * up) @ ffn.down_proj.weight.T
    assert_close(ffn(x), by_hand, what="SwiGLU vs formula")


def test_mlp_rejects_an_activation_it_does_not_have():
    with pytest.raises(ValueError, match="MLP activation"):
        MLP(8, 32, activation="swiglu")


# ---- the block ---------------------------------------------------------------------------------------------

def make_block(seed: int = 0, **overrides) -> TransformerBlock:
    mx.random.seed(seed)
    return randomize(TransformerBlock(config(**overrides)), seed)


LLAMA_BLOCK = dict(norm="rmsnorm", activation="swiglu", position="rope", n_kv_heads=2, bias=False)


def test_pre_norm_block_is_the_two_residual_steps():
    block = make_block(**LLAMA_BLOCK)
    x = mx.random.normal((2, 6, 32), key=mx.random.key(9))
    h = x + block.attention(block.attention_norm(x))
    expected = h + block.ffn(block.ffn_norm(h))
    assert mx.array_equal(block(x), expected)  # the same operations in the same order


def test_the_block_builds_its_parts_from_the_config():
    block = TransformerBlock(config(**LLAMA_BLOCK, qk_norm=True, ffn_dims=48))
    assert block.attention.rope is not None and block.attention.n_kv_heads == 2 and "q_norm" in block.attention
    assert isinstance(block.ffn, SwiGLU) and block.ffn.gate_proj.weight.shape == (48, 32)
    assert type(block.attention_norm).__name__ == "RMSNorm" and block.attention_norm.eps == 1e-5
    assert "ffn_norm" not in TransformerBlock(config(parallel_block=True))  # both branches share one norm


def test_gpt2_and_llama_block_parameter_counts():
    C = 64  # attention 4·(C² + C), MLP 8C² + 5C, two LayerNorms 2·2C: 12C² + 13C
    assert n_params(TransformerBlock(config(dims=C))) == 12 * C * C + 13 * C == 49_984
    # LLaMA block: q, o: C²; k, v: C·C/2 (GQA, 2 of 4 heads); SwiGLU 3·C·H; two RMSNorms: C each
    H = swiglu_hidden_dims(C)
    block = TransformerBlock(config(dims=C, **LLAMA_BLOCK))
    assert n_params(block) == 2 * C * C + 2 * C * C // 2 + 3 * C * H + 2 * C


@pytest.mark.parametrize("overrides", [{}, {"pre_norm": False}, {"parallel_block": True}, {**LLAMA_BLOCK, "n_kv_heads": 1}])
def test_block_is_causal(overrides):
    block = make_block(**overrides)
    x = mx.random.normal((1, 9, 32), key=mx.random.key(3))
    changed = mx.concatenate([x[:, :6], mx.random.normal((1, 3, 32), key=mx.random.key(4))], axis=1)
    a, b = block(x), block(changed)
    assert_close(a[:, :6], b[:, :6], what="outputs before the changed positions")
    assert mx.abs(a[:, 6:] - b[:, 6:]).max().item() > 1e-2


def test_cached_block_equals_full_recompute():
    block = make_block(**LLAMA_BLOCK)
    x = mx.random.normal((1, 20, 32), key=mx.random.key(3))
    cache = KVCache()
    pieces = [block(x[:, :12], cache=cache)] + [block(x[:, t : t + 1], cache=cache) for t in range(12, 20)]
    assert_close(mx.concatenate(pieces, axis=1), block(x), what="cached vs full block")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_block_stays_close_to_float32(dtype):
    block = make_block(**LLAMA_BLOCK)
    x = mx.random.normal((2, 16, 32), key=mx.random.key(3))
    expected = block(x)
    block.set_dtype(dtype)
    out = block(x.astype(dtype))
    assert out.dtype == dtype and not mx.any(mx.isnan(out)).item()
    assert_close(out, expected, dtype=dtype, what=f"{dtype} block vs float32")
    assert relative_difference(out, expected) > 0  # it really ran in half precision
