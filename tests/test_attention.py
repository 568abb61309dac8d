"""mlxllm.attention: the causal mask, reference vs fused attention, MHA/GQA/MQA, RoPE inside, attention dropout,
the KV cache."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxllm import KVCache, ModelConfig, MultiHeadAttention, attention_reference, causal_mask, kv_cache_bytes
from mlxllm import scaled_dot_product_attention
from mlxllm.tolerances import assert_close, bound, relative_difference


def attention(seed: int = 0, **config) -> MultiHeadAttention:
    """One attention layer built from a config (default: 32 dims, 4 heads, no positions, biases)."""
    mx.random.seed(seed)
    layer = MultiHeadAttention(ModelConfig(**{"dims": 32, "n_heads": 4, **config}))
    mx.eval(layer.parameters())
    return layer


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
    assert_close(fused, reference, what="fused vs reference attention")
    unmasked = attention_reference(q, k, v, None)
    assert_close(scaled_dot_product_attention(q, k, v, mask=None), unmasked, what="unmasked fused vs reference")
    if T_q > 1:
        assert mx.abs(unmasked - reference).max().item() > 1e-2  # the mask matters


def test_reference_accepts_the_fused_kernels_mask_forms():
    q, k, v = qkv(T=3, T_k=7)
    boolean = attention_reference(q, k, v, causal_mask(3, 7))
    assert mx.array_equal(attention_reference(q, k, v, "causal"), boolean)
    additive = mx.where(causal_mask(3, 7), 0.0, -mx.inf)
    assert mx.allclose(attention_reference(q, k, v, additive), boolean, atol=1e-6)
    assert_close(scaled_dot_product_attention(q, k, v, additive), attention_reference(q, k, v, additive),
                 what="additive-mask fused vs reference")
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


@pytest.mark.parametrize("position", ["none", "rope"])
def test_multi_head_attention_is_causal(position):
    layer = attention(n_kv_heads=2, position=position)
    assert (layer.rope is not None) == (position == "rope")
    x = mx.random.normal((2, 10, 32))
    for t in (0, 4, 9):
        changed = mx.concatenate([x[:, :t], mx.random.normal((2, 10 - t, 32))], axis=1)
        a, b = layer(x), layer(changed)
        assert mx.allclose(a[:, :t], b[:, :t], atol=1e-6, rtol=0)  # the past does not see the future
        assert mx.abs(a[:, t:] - b[:, t:]).max().item() > 1e-3


def test_attention_takes_its_shapes_and_biases_from_the_config():
    layer = attention(dims=48, n_heads=6, n_kv_heads=2, bias=True)
    assert (layer.n_heads, layer.n_kv_heads, layer.head_dim) == (6, 2, 8)
    assert layer.q_proj.weight.shape == (48, 48) and layer.k_proj.weight.shape == (16, 48)
    assert layer.k_proj.bias.shape == (16,) and layer.o_proj.bias.shape == (48,)
    assert layer(mx.zeros((3, 5, 48))).shape == (3, 5, 48)
    no_bias = attention(bias=False)
    assert all("bias" not in p for p in (no_bias.q_proj, no_bias.k_proj, no_bias.v_proj, no_bias.o_proj))
    qwen = attention(bias=False, qkv_bias=True)  # Qwen2: biases on q, k, v only
    assert all("bias" in p for p in (qwen.q_proj, qwen.k_proj, qwen.v_proj)) and "bias" not in qwen.o_proj


def repeat_heads(weight: mx.array, n_kv_heads: int, n_repeat: int) -> mx.array:
    """(H_kv·D, C) projection → (H_kv·n_repeat·D, C): each kv head's rows copied for its group of query heads."""
    rows, cols = weight.shape
    per_head = weight.reshape(n_kv_heads, rows // n_kv_heads, cols)  # (H_kv, D, C)
    return mx.repeat(per_head, n_repeat, axis=0).reshape(n_kv_heads * n_repeat * (rows // n_kv_heads), cols)


@pytest.mark.parametrize("position", ["none", "rope"])
@pytest.mark.parametrize("n_kv_heads", [2, 1])
def test_gqa_equals_mha_with_each_kv_head_repeated_for_its_group(n_kv_heads, position):
    """GQA is MHA whose query heads in a group share one k/v head: repeat the k/v weights (and biases) per group."""
    n_heads = 4
    gqa = attention(n_kv_heads=n_kv_heads, position=position)
    mha = attention(seed=1, position=position)
    n_repeat = n_heads // n_kv_heads
    mha.q_proj.update(gqa.q_proj.parameters())
    mha.o_proj.update(gqa.o_proj.parameters())
    for name in ("k_proj", "v_proj"):  # (H_kv*D, C) -> (H*D, C): query head h reads kv head h // group
        source, target = getattr(gqa, name), getattr(mha, name)
        target.weight = repeat_heads(source.weight, n_kv_heads, n_repeat)
        target.bias = repeat_heads(source.bias[:, None], n_kv_heads, n_repeat)[:, 0]
    x = mx.random.normal((2, 12, 32))
    assert_close(gqa(x), mha(x), what="GQA vs MHA with repeated k/v heads")
    # and it has fewer parameters: k and v shrink by the group size
    assert gqa.k_proj.weight.size * n_repeat == mha.k_proj.weight.size


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
    layer = attention(dims=16, n_kv_heads=n_kv_heads, position="rope", rope_traditional=traditional)
    T = 270
    x = mx.random.normal((1, T, 16))
    full = layer(x)
    cache = KVCache()
    pieces = [layer(x[:, :250], cache=cache)]  # prefill
    for t in range(250, 262):  # crosses position 256: the cache grows a chunk
        pieces.append(layer(x[:, t : t + 1], cache=cache))
    pieces.append(layer(x[:, 262:], cache=cache))  # 8 queries after 262 cached keys: bottom-right mask
    assert cache.offset == T and cache.keys.shape[2] == 512
    assert_close(mx.concatenate(pieces, axis=1), full, what="cached vs full attention")


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_attention_stays_close_to_float32(dtype):
    layer = attention(n_kv_heads=2, position="rope")
    x = mx.random.normal((2, 16, 32))
    expected = layer(x)
    layer.set_dtype(dtype)
    out = layer(x.astype(dtype))
    assert out.dtype == dtype
    assert_close(out, expected, dtype=dtype, what=f"{dtype} attention vs float32")
    q, k, v = qkv(T=16)
    reference = attention_reference(q.astype(dtype), k.astype(dtype), v.astype(dtype), causal_mask(16))
    assert reference.dtype == dtype
    assert_close(reference, attention_reference(q, k, v, causal_mask(16)), dtype=dtype, what=f"{dtype} reference")


def test_scale_is_one_over_sqrt_head_dim():
    q, k, v = qkv(B=1, H=1, T=4, D=16)
    scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(16)
    by_hand = mx.softmax(mx.where(causal_mask(4), scores, -mx.inf), axis=-1) @ v
    assert_close(scaled_dot_product_attention(q, k, v), by_hand, what="fused attention vs 1/√D by hand")
    unscaled = mx.softmax(mx.where(causal_mask(4), scores * 4, -mx.inf), axis=-1) @ v  # a scale of 1: wrong
    assert relative_difference(scaled_dot_product_attention(q, k, v), unscaled) > 1e-2


# ---- attention dropout (nanoGPT drops attention probabilities too) ------------------------------------------

def test_attention_dropout_zeroes_a_fraction_p_of_the_probabilities_and_keeps_their_expectation():
    """With v = identity the output *is* the probability matrix, so its entries can be counted."""
    p, N, T = 0.25, 2000, 16
    q, k, _ = qkv(B=1, H=1, T=T, D=T)
    q, k = mx.repeat(q, N, axis=0), mx.repeat(k, N, axis=0)  # N copies of one (T, T) attention pattern
    v = mx.broadcast_to(mx.eye(T), (N, 1, T, T))
    weights = attention_reference(q[:1], k[:1], v[:1], "causal")[0, 0]  # (T, T), no dropout
    mx.random.seed(3)
    dropped = attention_reference(q, k, v, "causal", dropout=p)[:, 0]  # (N, T, T)
    allowed = np.array(causal_mask(T))
    zeros = (np.array(dropped) == 0)[:, allowed]
    assert abs(zeros.mean() - p) < 0.01  # ≈ 272k draws: the standard error of the fraction is ≈ 0.001
    assert np.all(np.array(dropped)[:, ~allowed] == 0)  # the mask still holds
    kept = np.array(dropped)[:, allowed][~zeros]
    # survivors scaled by 1 / (1 - p) (the product with v = identity may run in TF32 on a GPU: the float bound)
    np.testing.assert_allclose(kept / np.broadcast_to(np.array(weights)[allowed], zeros.shape)[~zeros], 1 / (1 - p),
                               rtol=bound())
    # the expectation is preserved: the mean over N draws is within 5 standard errors of the undropped weights
    mean, w = np.array(dropped).mean(0), np.array(weights)
    assert np.all(np.abs(mean - w) <= 5 * w * math.sqrt(p / (1 - p) / N) + 1e-7)


def test_attention_dropout_only_in_training_mode_and_through_the_reference_path():
    layer = attention(n_kv_heads=2, position="rope", dropout=0.3)
    plain = attention(n_kv_heads=2, position="rope")
    plain.update(layer.parameters())
    x = mx.random.normal((2, 10, 32))
    B, T = 2, 10
    layer.eval()
    assert mx.array_equal(layer(x), plain(x))  # eval: the fused kernel, no dropout
    layer.train()
    # training: the module's output is the reference path with dropout, draw for draw
    q = layer.rope(layer.q_proj(x).reshape(B, T, 4, 8).transpose(0, 2, 1, 3))
    k = layer.rope(layer.k_proj(x).reshape(B, T, 2, 8).transpose(0, 2, 1, 3))
    v = layer.v_proj(x).reshape(B, T, 2, 8).transpose(0, 2, 1, 3)
    mx.random.seed(7)
    by_hand = layer.o_proj(attention_reference(q, k, v, "causal", dropout=0.3).transpose(0, 2, 1, 3).reshape(B, T, 32))
    mx.random.seed(7)
    trained = layer(x)
    assert mx.array_equal(trained, by_hand)
    assert relative_difference(trained, plain(x)) > 1e-2  # and it does differ from the undropped output
    assert not mx.array_equal(layer(x), trained)  # a fresh draw each call


def test_gradients_flow_through_attention_dropout():
    layer = attention(dropout=0.5)
    x = mx.random.normal((2, 6, 32))
    loss, grads = nn.value_and_grad(layer, lambda m: (m(x) ** 2).sum())(layer)
    flat = dict(nn.utils.tree_flatten(grads))
    assert math.isfinite(loss.item())
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"):
        assert mx.all(mx.isfinite(flat[name])).item() and mx.abs(flat[name]).max().item() > 0, name
