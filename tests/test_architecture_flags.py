"""Each architectural flag of ModelConfig changes what it should and nothing else (Chapter 8).

Pattern: build a base model and a variant that differ in one flag, check that the parameter trees
differ only where the flag says, copy the shared weights across, and check the defining identity of
the flag against a formula written out here (numpy), not against the package's own output.
"""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from conftest import make_model, randomize

from mlxllm import KVCache, ModelConfig, MultiHeadAttention, TransformerBlock, TransformerLM, attention_reference
from mlxllm import cross_entropy, kv_cache_bytes
from mlxllm.tolerances import assert_close, relative_difference

TINY = dict(vocab_size=61, context_length=32, dims=32, n_layers=2, n_heads=4)


def build(seed: int = 0, **flags) -> TransformerLM:
    """A tiny GPT-2-style model (ModelConfig's defaults) with some flags changed."""
    return make_model("gpt2", seed, **{**TINY, **flags})


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in tree_flatten(model.parameters())}


def copy_shared(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` every weight of ``source`` that it has under the same name and shape."""
    target_shapes = shapes(target)
    pairs = [(n, p) for n, p in tree_flatten(source.parameters()) if target_shapes.get(n) == tuple(p.shape)]
    target.load_weights(pairs, strict=False)
    mx.eval(target.parameters())


def diff(a: nn.Module, b: nn.Module) -> tuple[set[str], set[str], set[str]]:
    """Names only in a, only in b, and in both with different shapes."""
    sa, sb = shapes(a), shapes(b)
    return set(sa) - set(sb), set(sb) - set(sa), {n for n in set(sa) & set(sb) if sa[n] != sb[n]}


def ids(batch: int = 2, length: int = 12, seed: int = 1) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(batch, length)), dtype=mx.int32)


def to_np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def rms_normalize(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps)


# ---------------------------------------------------------------- attention: MHA / GQA / MQA


def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    mha, gqa = build(), build(n_kv_heads=TINY["n_heads"])
    assert mha.config == gqa.config and mha.config.n_kv_heads == 4  # left out, n_kv_heads is n_heads
    assert diff(mha, gqa) == (set(), set(), set())
    x = ids()
    assert mx.array_equal(mha(x), gqa(x))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_heads_change_only_the_k_and_v_projections(n_kv_heads):
    mha, variant = build(), build(n_kv_heads=n_kv_heads)
    only_mha, only_variant, reshaped = diff(mha, variant)
    assert only_mha == only_variant == set()
    projections = {f"blocks.{i}.attention.{p}.{w}" for i in range(2) for p in ("k_proj", "v_proj") for w in ("weight", "bias")}
    assert reshaped == (projections if n_kv_heads < 4 else set())
    for name in projections:  # weight (H_kv * D, C), bias (H_kv * D,)
        assert shapes(variant)[name] == ((n_kv_heads * 8, 32) if name.endswith("weight") else (n_kv_heads * 8,))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_kv_cache_memory_matches_the_formula(n_kv_heads):
    """A full cache of exactly one allocation chunk holds what kv_cache_bytes says: 2·L·H_kv·D·T·B·bytes."""
    T = KVCache.step
    model = build(n_kv_heads=n_kv_heads, context_length=T)
    cache = model.make_cache()
    mx.eval(model(ids(batch=1, length=T), cache=cache))
    held = sum(c.nbytes for c in cache)
    assert held == 2 * 2 * n_kv_heads * 8 * T * 1 * 4  # layers=2, head_dim=8, float32
    assert held == kv_cache_bytes(2, n_kv_heads, 8, T, batch_size=1, bytes_per_value=4)
    assert kv_cache_bytes(2, 4, 8, T) == 4 // n_kv_heads * kv_cache_bytes(2, n_kv_heads, 8, T)


# ---------------------------------------------------------------- QK-norm


def test_qk_norm_adds_only_two_small_norms_per_layer():
    plain, normed = build(), build(qk_norm=True)
    only_plain, only_normed, reshaped = diff(plain, normed)
    assert only_plain == set() and reshaped == set()
    assert only_normed == {f"blocks.{i}.attention.{n}_norm.weight" for i in range(2) for n in "qk"}
    assert normed.num_parameters() - plain.num_parameters() == 2 * 2 * 8  # layers × (q, k) × head_dim


def test_qk_norm_is_rmsnorm_of_each_heads_q_and_k():
    mx.random.seed(0)
    attention = MultiHeadAttention(ModelConfig(dims=32, n_heads=4, n_kv_heads=2, qk_norm=True))
    attention.q_norm.weight = mx.random.uniform(0.5, 1.5, (8,))
    attention.k_norm.weight = mx.random.uniform(0.5, 1.5, (8,))
    x = mx.random.normal((2, 6, 32))
    B, T = 2, 6
    q = to_np(attention.q_proj(x)).reshape(B, T, 4, 8).transpose(0, 2, 1, 3)
    k = to_np(attention.k_proj(x)).reshape(B, T, 2, 8).transpose(0, 2, 1, 3)
    v = attention.v_proj(x).reshape(B, T, 2, 8).transpose(0, 2, 1, 3)
    q = rms_normalize(q) * to_np(attention.q_norm.weight)
    k = rms_normalize(k) * to_np(attention.k_norm.weight)
    mask = mx.tril(mx.ones((T, T), dtype=mx.bool_))
    out = attention_reference(mx.array(q), mx.array(k), v, mask).transpose(0, 2, 1, 3).reshape(B, T, 32)
    assert_close(attention(x), attention.o_proj(out), what="QK-normed attention vs RMSNorm of q and k by hand")


def test_qk_norm_bounds_attention_logits_whatever_the_input_scale():
    """With unit norm gains |q·k|/√D ≤ ‖q‖‖k‖/√D ≤ √D, even for huge inputs; without it logits grow ∝ scale²."""
    mx.random.seed(0)
    attention = MultiHeadAttention(ModelConfig(dims=32, n_heads=4, qk_norm=True))
    x = 1000.0 * mx.random.normal((1, 16, 32))

    def max_logit(q, k):
        return float(mx.abs(q @ k.swapaxes(-1, -2)).max()) / math.sqrt(8)

    q = attention.q_proj(x).reshape(1, 16, 4, 8).transpose(0, 2, 1, 3)
    k = attention.k_proj(x).reshape(1, 16, 4, 8).transpose(0, 2, 1, 3)
    assert max_logit(attention.q_norm(q), attention.k_norm(k)) <= math.sqrt(8) + 1e-3
    assert max_logit(q, k) > 1000  # the same projections without the norm


def test_qk_norm_makes_attention_blind_to_the_scale_of_q_and_k_weights():
    """Scaling W_q and W_k changes plain attention (sharper softmax) but not QK-normed attention."""
    mx.random.seed(0)
    x = mx.random.normal((2, 8, 32))
    for qk_norm in (True, False):
        # a negligible eps, so that RMSNorm(10·q) = RMSNorm(q) holds up to rounding
        attention = MultiHeadAttention(ModelConfig(dims=32, n_heads=4, qk_norm=qk_norm, norm_eps=1e-12))
        before = attention(x)
        attention.q_proj.update({k: 10.0 * v for k, v in attention.q_proj.parameters().items()})
        attention.k_proj.update({k: 10.0 * v for k, v in attention.k_proj.parameters().items()})
        if qk_norm:  # the same within float tolerance
            assert_close(attention(x), before, what="QK-normed attention after scaling W_q, W_k")
        else:  # a sharper softmax: far outside any float tolerance
            assert relative_difference(attention(x), before) > 0.05


# ---------------------------------------------------------------- logit soft-capping and z-loss


def test_logit_softcap_is_cap_tanh_of_the_plain_logits_and_adds_nothing():
    plain, capped = build(), build(seed=5, logit_softcap=0.05)
    assert diff(plain, capped) == (set(), set(), set())
    copy_shared(plain, capped)
    x = ids()
    raw = to_np(plain(x))
    assert np.abs(raw).max() > 0.05  # the cap is actually active somewhere
    np.testing.assert_allclose(to_np(capped(x)), 0.05 * np.tanh(raw / 0.05), atol=1e-6)


def test_logit_softcap_bounds_logits_and_is_nearly_identity_when_they_are_small():
    model = build(logit_softcap=30.0)
    model.token_embedding.weight = 50.0 * model.token_embedding.weight  # huge logits (tied head)
    assert float(mx.abs(model(ids())).max()) <= 30.0
    plain, capped = build(), build(logit_softcap=30.0)
    copy_shared(plain, capped)
    raw = to_np(plain(ids()))
    assert np.abs(raw).max() < 1.0  # GPT-2 init: small logits
    # cap·tanh(z/cap) = z − z³/(3 cap²) + …: the error is at most |z|³/(3·cap²) < 4e-4
    np.testing.assert_allclose(to_np(capped(ids())), raw, atol=np.abs(raw).max() ** 3 / (3 * 30.0**2) + 1e-6)


def test_z_loss_adds_exactly_z_times_mean_log_z_squared():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 11)).astype(np.float32) * 3 + 2
    targets = rng.integers(0, 11, size=(2, 5))
    log_z = np.log(np.exp(logits.astype(np.float64)).sum(-1))
    nll = (log_z - np.take_along_axis(logits, targets[..., None], -1)[..., 0]).mean()
    plain = float(cross_entropy(mx.array(logits), mx.array(targets)))
    with_z = float(cross_entropy(mx.array(logits), mx.array(targets), z_loss=1e-2))
    np.testing.assert_allclose(plain, nll, rtol=1e-5)
    np.testing.assert_allclose(with_z - plain, 1e-2 * (log_z**2).mean(), rtol=1e-4)


def test_z_loss_is_the_only_part_of_the_loss_that_sees_a_shift_of_all_logits():
    """Adding c to every logit leaves softmax and cross-entropy unchanged; only z-loss pulls log Z to 0."""
    rng = np.random.default_rng(1)
    logits = mx.array(rng.normal(size=(3, 7)).astype(np.float32))
    targets = mx.array(rng.integers(0, 7, size=(3,)))
    for shift in (-5.0, 5.0):
        assert abs(float(cross_entropy(logits + shift, targets)) - float(cross_entropy(logits, targets))) < 1e-5
    z_term = [float(cross_entropy(logits + s, targets, z_loss=1.0) - cross_entropy(logits + s, targets)) for s in (-5.0, 5.0)]
    log_z = np.log(np.exp(np.array(logits)).sum(-1))
    np.testing.assert_allclose(z_term, [((log_z - 5) ** 2).mean(), ((log_z + 5) ** 2).mean()], rtol=1e-4)


# ---------------------------------------------------------------- norms


def test_norm_kinds_change_only_the_norm_parameters():
    layer, rms, none = build(norm="layernorm"), build(norm="rmsnorm"), build(norm="none")
    n_norms, C = 2 * 2 + 1, 32  # two per block and the final one
    only_layer, only_rms, reshaped = diff(layer, rms)
    assert only_rms == set() and reshaped == set()
    assert only_layer == {n for n in shapes(layer) if "norm" in n and n.endswith(".bias")}
    assert layer.num_parameters() - rms.num_parameters() == n_norms * C  # LayerNorm has a bias, RMSNorm not
    assert not [n for n in shapes(none) if "norm" in n]
    assert rms.num_parameters() - none.num_parameters() == n_norms * C
    assert isinstance(layer.norm, nn.LayerNorm) and isinstance(rms.blocks[1].ffn_norm, nn.RMSNorm)
    assert all(isinstance(m, nn.Identity) for m in (none.norm, none.blocks[0].attention_norm, none.blocks[1].ffn_norm))


# ---------------------------------------------------------------- pre-norm, post-norm, parallel


def test_post_norm_moves_the_norm_after_the_residual_add():
    pre, post = build(), build(pre_norm=False)
    only_pre, only_post, reshaped = diff(pre, post)
    assert only_post == set() and reshaped == set()
    assert only_pre == {"norm.weight", "norm.bias"}  # a post-norm block already ends in a norm
    block, x = post.blocks[0], mx.random.normal((2, 6, 32))
    out = to_np(block(x))  # LayerNorm with unit gain, zero bias: every position has mean 0 and variance 1
    np.testing.assert_allclose(out.mean(-1), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(-1), 1, atol=1e-3)
    # with random gains and biases too: the formula, and undoing the last norm's affine part standardizes
    block = randomize(block)
    h = block.attention_norm(x + block.attention(x))
    assert mx.array_equal(block(x), block.ffn_norm(h + block.ffn(h)))  # the same operations in the same order
    standard = to_np((block(x) - block.ffn_norm.bias) / block.ffn_norm.weight)
    np.testing.assert_allclose(standard.mean(-1), 0, atol=1e-4)
    np.testing.assert_allclose(standard.var(-1), 1, atol=1e-3)


def test_pre_norm_keeps_an_identity_path_through_the_residual_stream():
    """With the branches' output projections zeroed, a pre-norm block is exactly the identity."""
    mx.random.seed(0)
    block = TransformerBlock(ModelConfig(dims=32, n_heads=4, norm="rmsnorm", activation="swiglu", bias=False))
    block.attention.o_proj.weight = mx.zeros_like(block.attention.o_proj.weight)
    block.ffn.down_proj.weight = mx.zeros_like(block.ffn.down_proj.weight)
    x = 5.0 * mx.random.normal((2, 6, 32)) + 3.0
    assert mx.array_equal(block(x), x)


def test_parallel_block_has_one_norm_less_per_layer_and_sums_both_branches():
    serial, parallel = build(), build(parallel_block=True)
    only_serial, only_parallel, reshaped = diff(serial, parallel)
    assert only_parallel == set() and reshaped == set()
    assert only_serial == {f"blocks.{i}.ffn_norm.{p}" for i in range(2) for p in ("weight", "bias")}
    assert serial.num_parameters() - parallel.num_parameters() == 2 * 2 * 32  # layers × (weight + bias) × C
    block, x = parallel.blocks[0], mx.random.normal((2, 6, 32))
    h = block.attention_norm(x)
    assert mx.array_equal(block(x), x + block.attention(h) + block.ffn(h))  # the same operations in the same order
    with pytest.raises(ValueError, match="pre_norm"):
        ModelConfig(**TINY, parallel_block=True, pre_norm=False)


def test_post_norm_and_parallel_blocks_compute_something_else_than_pre_norm_on_the_same_weights():
    pre = randomize(TransformerBlock(ModelConfig(dims=32, n_heads=4)))
    post = TransformerBlock(ModelConfig(dims=32, n_heads=4, pre_norm=False))
    parallel = TransformerBlock(ModelConfig(dims=32, n_heads=4, parallel_block=True))
    post.update(pre.parameters())
    parallel.update({k: v for k, v in pre.parameters().items() if k != "ffn_norm"})
    x = mx.random.normal((2, 6, 32), key=mx.random.key(9))
    assert relative_difference(post(x), pre(x)) > 0.1
    assert relative_difference(parallel(x), pre(x)) > 0.1


# ---------------------------------------------------------------- positions


def test_position_schemes_change_only_the_position_table():
    learned = build(position="learned")
    for position in ("sinusoidal", "rope", "none"):
        other = build(position=position)
        only_learned, only_other, reshaped = diff(learned, other)
        assert only_other == set() and reshaped == set()
        assert only_learned == {"position_embedding.weight"}  # sinusoidal's table is not a parameter
        assert learned.num_parameters() - other.num_parameters() == 32 * 32  # context_length × C
        assert not any("position" in name for name, _ in tree_flatten(other.trainable_parameters()))
        # without embeddings only the (tied) token table goes: the learned table was the only other one
        assert other.num_parameters(include_embeddings=False) == other.num_parameters() - 61 * 32
    assert learned.num_parameters(include_embeddings=False) == learned.num_parameters() - 61 * 32 - 32 * 32
    assert "position_embedding" not in build(position="none") and "position_embedding" not in build(position="rope")


def test_sinusoidal_positions_add_the_fixed_sin_cos_table():
    none, sinusoidal = build(position="none"), build(position="sinusoidal")
    copy_shared(none, sinusoidal)
    T, C = 12, 32
    t, i = np.arange(T)[:, None], np.arange(0, C, 2)[None, :]
    table = np.zeros((T, C))
    table[:, 0::2], table[:, 1::2] = np.sin(t / 10000 ** (i / C)), np.cos(t / 10000 ** (i / C))
    np.testing.assert_allclose(to_np(sinusoidal.position_embedding(T)), table, atol=1e-5)
    assert not np.allclose(to_np(none(ids())), to_np(sinusoidal(ids())), atol=1e-4)


def test_without_positions_attention_is_permutation_equivariant():
    """No mask, no positions: permuting the tokens permutes the outputs. RoPE breaks this."""
    mx.random.seed(0)
    x = mx.random.normal((1, 9, 32))
    perm = mx.array(np.random.default_rng(0).permutation(9))
    for position, equivariant in (("none", True), ("rope", False)):
        model = build(position=position)
        block = model.blocks[0]
        permuted_then_block, block_then_permuted = to_np(block(x[:, perm], mask=None)), to_np(block(x, mask=None)[:, perm])
        assert np.allclose(permuted_then_block, block_then_permuted, atol=1e-5) == equivariant


@pytest.mark.parametrize("position, blind", [("none", True), ("learned", False), ("sinusoidal", False), ("rope", False)])
def test_without_positions_the_last_token_cannot_see_the_order_of_the_earlier_ones(position, blind):
    """One causal layer: the last query attends to a *set* of earlier tokens unless positions tell them apart."""
    model, x = build(position=position, n_layers=1), ids(batch=1, length=10)
    attention = model.blocks[0].attention  # sharpen the softmax so that position effects are not washed out
    attention.q_proj.weight, attention.k_proj.weight = 20.0 * attention.q_proj.weight, 20.0 * attention.k_proj.weight
    shuffled = mx.concatenate([x[:, :9][:, mx.array(np.random.default_rng(2).permutation(9))], x[:, 9:]], axis=1)
    assert not mx.array_equal(shuffled, x)
    last, last_shuffled = to_np(model(x)[:, -1]), to_np(model(shuffled)[:, -1])
    assert (np.abs(last - last_shuffled).max() < 1e-5 * np.abs(last).max()) == blind


# ---------------------------------------------------------------- feed-forward activations


@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu"])
def test_mlp_activations_share_parameters_and_differ_only_in_the_nonlinearity(activation):
    base, variant = build(activation="gelu"), build(activation=activation)
    assert diff(base, variant) == (set(), set(), set())
    copy_shared(base, variant)
    ffn, x = variant.blocks[0].ffn, mx.random.normal((2, 5, 32))
    u = to_np(ffn.up_proj(x)).astype(np.float64)
    erf = np.vectorize(math.erf)
    by_hand = {
        "gelu": 0.5 * u * (1 + erf(u / math.sqrt(2))),
        "gelu_tanh": 0.5 * u * (1 + np.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3))),
        "relu": np.maximum(u, 0),
    }[activation]
    np.testing.assert_allclose(to_np(ffn(x)), to_np(ffn.down_proj(mx.array(by_hand.astype(np.float32)))), atol=1e-4)


def test_swiglu_at_eight_thirds_width_costs_what_a_four_times_mlp_costs():
    """Three C×(8/3·C) matrices = two C×4C matrices: the equal-parameter comparison of the lecture."""
    gelu, glu = build(dims=96, n_heads=4, bias=False), build(dims=96, n_heads=4, bias=False, activation="swiglu")
    assert gelu.num_parameters() == glu.num_parameters()
    only_gelu, only_glu, reshaped = diff(gelu, glu)
    assert only_gelu == set()
    assert only_glu == {f"blocks.{i}.ffn.gate_proj.weight" for i in range(2)}
    assert reshaped == {f"blocks.{i}.ffn.{p}.weight" for i in range(2) for p in ("up_proj", "down_proj")}
