"""mlxllm.attention: the causal mask, reference vs fused attention, MHA/GQA/MQA, RoPE inside, the KV cache."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlxllm import KVCache, MultiHeadAttention, RoPE, attention_reference, causal_mask, kv_cache_bytes
from mlxllm import scaled_dot_product_attention

# |reference - fused| in float32 is exactly 0 on MLX's CPU backend (it has no fused kernel and runs the same
# ops); the bar leaves room for Metal's fused kernel without letting a wrong mask or scale through (> 1e-2).
FLOAT32_ATOL = 1e-5


def qkv(B=2, H=4, H_kv=None, T=9, D=16, T_k=None, seed=0):
    keys = mx.random.split(mx.random.key(seed), 3)
    H_kv = H if H_kv is None else H_kv
    T_k = T if T_k is None else T_k
    return (mx.random.normal((B, H, T, D), key=keys[0]), mx.random.normal((B, H_kv, T_k, D), key=keys[1]),
            mx.random.normal((B, H_kv, T_k, D), key=keys[2]))


def test_causal_mask_square_and_bottom_right():
    assert np.array(causal_mask(3)).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    # 2 new queries after 3 cached keys: they are positions 3 and 4
    assert np.array(causal_mask(2, 5)).tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    with pytest.raises(ValueError, match="more queries"):
        causal_mask(4, 2)


def test_reference_by_loops():
    """attention_reference == the definition, one query and one key at a time, in float64 numpy."""
    q, k, v = qkv(B=1, H=2, T=5, D=4)
    out = np.array(attention_reference(q, k, v, causal_mask(5)))
    qn, kn, vn = (np.array(a, dtype=np.float64) for a in (q, k, v))
    for h in range(2):
        for t in range(5):
            scores = np.array([qn[0, h, t] @ kn[0, h, s] / 2.0 for s in range(t + 1)])  # sqrt(4) = 2
            weights = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
            np.testing.assert_allclose(out[0, h, t], weights @ vn[0, h, : t + 1], atol=1e-6)


@pytest.mark.parametrize("H_kv", [4, 2, 1])
@pytest.mark.parametrize("T_q,T_k", [(9, 9), (64, 64), (3, 11), (1, 11)])
def test_reference_equals_fused(H_kv, T_q, T_k):
    q, k, v = qkv(H_kv=H_kv, T=T_q, T_k=T_k)
    reference = attention_reference(q, k, v, causal_mask(T_q, T_k))
    fused = scaled_dot_product_attention(q, k, v, mask="causal")
    assert mx.abs(reference - fused).max().item() < FLOAT32_ATOL
    unmasked = attention_reference(q, k, v, None)
    assert mx.abs(unmasked - scaled_dot_product_attention(q, k, v, mask=None)).max().item() < FLOAT32_ATOL
    if T_q > 1:
        assert mx.abs(unmasked - reference).max().item() > 1e-2  # the mask matters


def test_reference_accepts_the_fused_kernels_mask_forms():
    q, k, v = qkv(T=3, T_k=7)
    boolean = attention_reference(q, k, v, causal_mask(3, 7))
    assert mx.array_equal(attention_reference(q, k, v, "causal"), boolean)
    additive = mx.where(causal_mask(3, 7), 0.0, -mx.inf)
    assert mx.allclose(attention_reference(q, k, v, additive), boolean, atol=1e-6)
    assert mx.abs(attention_reference(q, k, v, additive) - scaled_dot_product_attention(q, k, v, additive)).max().item() < FLOAT32_ATOL
    with pytest.raises(ValueError, match="causal"):
        attention_reference(q, k, v, "sliding")


def test_reference_causality():
    q, k, v = qkv(T=8)
    out = attention_reference(q, k, v, causal_mask(8))
    q2, k2, v2 = qkv(T=8, seed=1)
    # replace positions 5.. of q, k and v with different numbers: outputs 0..4 must not move
    mixed = [mx.concatenate([a[:, :, :5], b[:, :, 5:]], axis=2) for a, b in zip((q, k, v), (q2, k2, v2))]
    out2 = attention_reference(*mixed, causal_mask(8))
    assert mx.array_equal(out[:, :, :5], out2[:, :, :5])
    assert not mx.allclose(out[:, :, 5:], out2[:, :, 5:])


@pytest.mark.parametrize("rope", [None, RoPE(8)])
def test_multi_head_attention_is_causal(rope):
    mx.random.seed(0)
    attention = MultiHeadAttention(32, 4, 2, rope=rope)
    x = mx.random.normal((2, 10, 32))
    for t in (0, 4, 9):
        changed = mx.concatenate([x[:, :t], mx.random.normal((2, 10 - t, 32))], axis=1)
        a, b = attention(x), attention(changed)
        assert mx.allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)  # the past does not see the future
        assert mx.abs(a[:, t:] - b[:, t:]).max().item() > 1e-3


def test_mha_shapes_and_parameter_names():
    attention = MultiHeadAttention(48, 6, 2, bias=True)
    assert (attention.n_heads, attention.n_kv_heads, attention.head_dim) == (6, 2, 8)
    assert attention.q_proj.weight.shape == (48, 48) and attention.k_proj.weight.shape == (16, 48)
    assert attention(mx.zeros((3, 5, 48))).shape == (3, 5, 48)


def test_gqa_with_as_many_kv_heads_as_heads_is_mha_exactly():
    mx.random.seed(0)
    mha = MultiHeadAttention(32, 4, bias=True)
    gqa = MultiHeadAttention(32, 4, n_kv_heads=4, bias=True)
    gqa.update(mha.parameters())
    x = mx.random.normal((2, 7, 32))
    assert mx.array_equal(mha(x), gqa(x))


def repeat_heads(weight: mx.array, n_kv_heads: int, n_repeat: int) -> mx.array:
    """(H_kv·D, C) projection → (H_kv·n_repeat·D, C): each kv head's rows copied for its group of query heads."""
    rows, cols = weight.shape
    per_head = weight.reshape(n_kv_heads, rows // n_kv_heads, cols)  # (H_kv, D, C)
    return mx.repeat(per_head, n_repeat, axis=0).reshape(n_kv_heads * n_repeat * (rows // n_kv_heads), cols)


@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_repeated_kv_weights(n_kv_heads):
    mx.random.seed(0)
    dims, n_heads = 32, 4
    gqa = MultiHeadAttention(dims, n_heads, n_kv_heads, rope=RoPE(8))
    mha = MultiHeadAttention(dims, n_heads, rope=RoPE(8))
    n_repeat = n_heads // n_kv_heads
    mha.q_proj.weight, mha.o_proj.weight = gqa.q_proj.weight, gqa.o_proj.weight
    mha.k_proj.weight = repeat_heads(gqa.k_proj.weight, n_kv_heads, n_repeat)
    mha.v_proj.weight = repeat_heads(gqa.v_proj.weight, n_kv_heads, n_repeat)
    x = mx.random.normal((2, 12, dims))
    assert mx.abs(gqa(x) - mha(x)).max().item() < FLOAT32_ATOL
    # and it has fewer parameters: k and v shrink by the group size
    assert gqa.k_proj.weight.size * n_repeat == mha.k_proj.weight.size


def test_head_errors_are_clear():
    with pytest.raises(ValueError, match="divisible by n_heads"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        MultiHeadAttention(32, 4, n_kv_heads=0)


def test_kv_cache_writes_in_place_and_grows_in_chunks():
    B, H_kv, D = 2, 3, 4
    cache = KVCache()
    assert cache.offset == 0 and cache.nbytes == 0
    k, v = mx.ones((B, H_kv, 5, D)), 2 * mx.ones((B, H_kv, 5, D))
    keys, values = cache.update_and_fetch(k, v)
    assert keys.shape == (B, H_kv, 5, D) and cache.offset == 5
    assert cache.keys.shape[2] == 256  # one chunk, allocated once
    assert cache.nbytes == 2 * B * H_kv * 256 * D * 4
    storage = cache.keys
    for step in range(5, 256):
        keys, values = cache.update_and_fetch(mx.full((B, H_kv, 1, D), step), mx.full((B, H_kv, 1, D), -step))
        assert cache.keys is storage  # written into the same buffer, no concatenate
    assert cache.offset == 256 and cache.keys.shape[2] == 256
    keys, values = cache.update_and_fetch(mx.full((B, H_kv, 1, D), 256), mx.full((B, H_kv, 1, D), -256))
    assert cache.keys is not storage and cache.keys.shape[2] == 512  # a second chunk, once
    assert cache.nbytes == 2 * B * H_kv * 512 * D * 4
    expected = np.concatenate([np.ones(5), np.arange(5, 257)])
    assert keys.shape == (B, H_kv, 257, D)
    assert np.array_equal(np.array(keys[0, 0, :, 0]), expected)
    assert np.array_equal(np.array(values[1, 2, :, 3]), np.concatenate([2 * np.ones(5), -np.arange(5, 257)]))


def test_kv_cache_prefill_longer_than_a_chunk():
    cache = KVCache()
    cache.update_and_fetch(mx.zeros((1, 1, 300, 2)), mx.zeros((1, 1, 300, 2)))
    assert cache.keys.shape[2] == 512 and cache.offset == 300


def test_kv_cache_bytes_by_hand():
    # LLaMA-2-7B: 32 layers, 32 kv heads of 128, 4096 tokens, float16: 2 (k and v) · 32 · 32 · 128 · 4096 · 2 B = 2 GiB
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 1024**3
    # LLaMA-3-8B: same layers and head size, GQA with 8 kv heads: a quarter of that
    assert kv_cache_bytes(32, 8, 128, 4096) == 512 * 1024**2
    assert kv_cache_bytes(1, 1, 64, 256, batch_size=3, bytes_per_value=4) == 2 * 64 * 256 * 3 * 4
    # agrees with a real cache filled to exactly one chunk
    cache = KVCache()
    cache.update_and_fetch(mx.zeros((3, 1, 256, 64)), mx.zeros((3, 1, 256, 64)))
    assert cache.nbytes == kv_cache_bytes(1, 1, 64, 256, batch_size=3, bytes_per_value=4)


@pytest.mark.parametrize("n_kv_heads,traditional", [(4, False), (2, True), (1, False)])
def test_cached_attention_equals_full_recompute(n_kv_heads, traditional):
    """Prefill, then one token at a time across the 256-position chunk boundary, then a multi-token chunk."""
    mx.random.seed(0)
    attention = MultiHeadAttention(16, 4, n_kv_heads, rope=RoPE(4, traditional=traditional))
    T = 270
    x = mx.random.normal((1, T, 16))
    full = attention(x)
    cache = KVCache()
    pieces = [attention(x[:, :250], cache=cache)]  # prefill
    for t in range(250, 262):  # crosses position 256: the cache grows a chunk
        pieces.append(attention(x[:, t : t + 1], cache=cache))
    pieces.append(attention(x[:, 262:], cache=cache))  # 8 queries after 262 cached keys: bottom-right mask
    assert cache.offset == T and cache.keys.shape[2] == 512
    cached = mx.concatenate(pieces, axis=1)
    assert mx.abs(cached - full).max().item() < FLOAT32_ATOL


@pytest.mark.parametrize("dtype,atol", [(mx.float16, 2e-3), (mx.bfloat16, 1.6e-2)])
def test_half_precision_attention_stays_close_to_float32(dtype, atol):
    # measured on CPU: max |Δ| 4e-4 (float16) and 4e-3 (bfloat16, 8 mantissa bits) for the module
    mx.random.seed(0)
    attention = MultiHeadAttention(32, 4, 2, rope=RoPE(8))
    x = mx.random.normal((2, 16, 32))
    expected = attention(x)
    attention.set_dtype(dtype)
    out = attention(x.astype(dtype))
    assert out.dtype == dtype
    assert mx.abs(out.astype(mx.float32) - expected).max().item() < atol
    q, k, v = qkv(T=16)
    reference = attention_reference(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal_mask(16))
    assert reference.dtype == dtype
    assert mx.abs(reference.astype(mx.float32) - attention_reference(q, k, v, causal_mask(16))).max().item() < 4 * atol


def test_scale_is_one_over_sqrt_head_dim():
    q, k, v = qkv(B=1, H=1, T=4, D=16)
    scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(16)
    by_hand = mx.softmax(mx.where(causal_mask(4), scores, -mx.inf), axis=-1) @ v
    assert mx.abs(scaled_dot_product_attention(q, k, v) - by_hand).max().item() < FLOAT32_ATOL
