"""ModelConfig and TransformerLM: the config's rules and family, presets, the tied head, init, id and length
limits, parameter counts, quantized layers, and KV-cached decoding against full recomputation and mlx-lm."""

import dataclasses
import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import GPT2_TINY, LLAMA_TINY, make_model
from mlx.utils import tree_flatten

from mlxllm import KVCache, ModelConfig, TransformerLM, cross_entropy
from mlxllm.config import ACTIVATIONS, FAMILY_NAMES, NORMS, POSITIONS
from mlxllm.tolerances import assert_close, bound, relative_difference

# --- ModelConfig ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(dims=30, n_heads=4), ["dims=30", "divisible by n_heads=4"]),
        (dict(n_heads=4, n_kv_heads=3), ["n_heads=4", "multiple of n_kv_heads=3"]),
        (dict(n_heads=4, n_kv_heads=0), ["multiple of n_kv_heads=0"]),
        (dict(n_heads=4, n_kv_heads=2.0), ["n_kv_heads=2.0"]),
        (dict(vocab_size=0), ["vocab_size", "0"]),
        (dict(context_length=-5), ["context_length", "-5"]),
        (dict(n_layers=2.0), ["n_layers", "2.0"]),
        (dict(dims=True), ["dims", "True"]),
        (dict(ffn_dims=0), ["ffn_dims", "0"]),
        (dict(norm="batchnorm"), ["norm='batchnorm'", f"is not one of {NORMS}"]),
        (dict(norm="groupnorm"), ["norm='groupnorm'"]),
        (dict(position="alibi"), ["position='alibi'", f"is not one of {POSITIONS}"]),
        (dict(activation="tanh"), ["activation='tanh'", f"is not one of {ACTIVATIONS}"]),
        (dict(activation="gelu_new"), ["activation='gelu_new'"]),  # Hugging Face's name: the loader maps it
        (dict(family="gtp2"), ["family='gtp2'", f"is not one of {FAMILY_NAMES}"]),
        (dict(dims=36, n_heads=4, position="rope"), ["head_dim", "9", "even"]),
        (dict(dims=33, n_heads=3, position="sinusoidal"), ["even", "33"]),
        (dict(rope_theta=0.0), ["rope_theta"]),
        (dict(norm_eps=0.0), ["norm_eps"]),
        (dict(norm_eps=-1e-5), ["norm_eps"]),
        (dict(logit_softcap=0.0), ["logit_softcap"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(dropout=-0.1), ["dropout"]),
        (dict(parallel_block=True, pre_norm=False), ["pre_norm"]),
    ],
)
def test_config_rejects_bad_values_with_a_reason(kwargs, words):
    base = dict(vocab_size=10, context_length=8, dims=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError) as error:
        ModelConfig(**{**base, **kwargs})
    for word in words:
        assert word in str(error.value)


def test_config_fills_kv_heads_ffn_dims_and_head_dim():
    config = ModelConfig(vocab_size=10, context_length=8, dims=48, n_layers=1, n_heads=6)
    assert config.n_kv_heads == 6 and config.head_dim == 8 and config.ffn_dims == 4 * 48
    assert ModelConfig(dims=48, n_heads=6, activation="swiglu").ffn_dims == 128  # 8/3 · 48, a multiple of 32
    assert ModelConfig(dims=48, n_heads=6, n_kv_heads=2, ffn_dims=100).ffn_dims == 100  # given: kept


def test_replacing_a_size_recomputes_what_a_default_rule_filled_in_and_keeps_what_was_given():
    config = ModelConfig(dims=32, n_heads=4)
    assert dataclasses.replace(config, dims=64).ffn_dims == 256
    assert dataclasses.replace(config, activation="swiglu").ffn_dims == 96  # 8/3 · 32 = 85.3 → 96
    assert dataclasses.replace(config, n_heads=8).n_kv_heads == 8
    given = ModelConfig.llama(dims=64, n_heads=4, n_kv_heads=2, ffn_dims=100)
    assert dataclasses.replace(given, dims=128).ffn_dims == 100 and dataclasses.replace(given, n_heads=8).n_kv_heads == 2


def test_gpt2_preset_has_gpt2_choices():
    config = ModelConfig.gpt2()
    assert (config.vocab_size, config.context_length, config.dims, config.n_layers, config.n_heads) == (50257, 1024, 768, 12, 12)
    assert config.position == "learned" and config.norm == "layernorm" and config.activation == "gelu_tanh"
    assert config.bias and config.tie_embeddings and config.n_kv_heads == config.n_heads
    assert config.family == "gpt2" and config.ffn_dims == 3072


def test_llama_preset_has_llama_choices():
    config = ModelConfig.llama()
    assert config.position == "rope" and config.norm == "rmsnorm" and config.activation == "swiglu"
    assert not config.bias and not config.tie_embeddings
    assert config.n_kv_heads < config.n_heads  # grouped-query attention
    assert config.family == "llama"


def test_presets_take_overrides():
    config = ModelConfig.llama(dims=64, n_heads=8, n_kv_heads=8, tie_embeddings=True)
    assert (config.dims, config.n_heads, config.n_kv_heads, config.tie_embeddings) == (64, 8, 8, True)
    assert config.position == "rope" and config.family == "llama"


def test_family_is_explicit_and_independent_of_the_architecture_flags():
    assert ModelConfig().family == "gpt2"  # the defaults are GPT-2 small
    # an experiment may mix flags; the family still names the checkpoint layout
    assert ModelConfig.gpt2(position="rope").family == "gpt2" and ModelConfig.llama(position="learned").family == "llama"


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_config_round_trips_through_json_and_rejects_unknown_keys(family):
    config = ModelConfig.gpt2(**GPT2_TINY) if family == "gpt2" else ModelConfig.llama(**LLAMA_TINY)
    values = json.loads(json.dumps(config.to_dict()))  # as a checkpoint stores it
    assert values["family"] == family and type(values["ffn_dims"]) is int and type(values["n_kv_heads"]) is int
    assert ModelConfig.from_dict(values) == config
    with pytest.raises(ValueError, match="n_embd"):
        ModelConfig.from_dict({**config.to_dict(), "n_embd": 32})


@pytest.mark.parametrize("position, family", [("learned", "gpt2"), ("rope", "llama"), ("sinusoidal", "llama"), ("none", "llama")])
def test_a_dict_without_family_is_an_older_checkpoint_and_gets_it_from_its_positions(position, family):
    values = ModelConfig(dims=32, n_heads=4, position=position).to_dict()
    del values["family"]
    assert ModelConfig.from_dict(values).family == family
    legacy = {"vocab_size": 10, "dims": 32, "n_heads": 4}  # position left out: the default, learned
    assert ModelConfig.from_dict(legacy).family == "gpt2"


# --- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logits_have_shape_batch_tokens_vocab(kind):
    model = make_model(kind)
    logits = model(mx.array([[1, 2, 3], [4, 5, 6]]))
    assert logits.shape == (2, 3, 97) and logits.dtype == mx.float32


def test_tied_head_is_the_embedding_matrix_itself():
    model = make_model("gpt2")
    names = [name for name, _ in tree_flatten(model.parameters())]
    assert not any(name.startswith("head") for name in names)  # no second V×C matrix
    # logits are the final hidden states times the embedding matrix, written out by hand
    ids = mx.array([[5, 17, 3, 88]])
    x = model.token_embedding(ids) + model.position_embedding(4)
    for block in model.blocks:
        x = block(x)
    by_hand = model.norm(x) @ model.token_embedding.weight.T
    assert mx.allclose(model(ids), by_hand, atol=1e-5).item()
    # changing the embedding matrix changes the head with it
    model.token_embedding.weight = model.token_embedding.weight * 2.0
    x = model.token_embedding(ids) + model.position_embedding(4)
    for block in model.blocks:
        x = block(x)
    assert mx.allclose(model(ids), model.norm(x) @ model.token_embedding.weight.T, atol=1e-5).item()


@pytest.mark.parametrize("tied", [True, False])
def test_head_gradient_flows_into_the_embedding_only_when_tied(tied):
    # rows of the embedding whose tokens never appear in the input get a gradient only through the head
    model = make_model("gpt2", tie_embeddings=tied)
    ids = mx.array([[1, 2, 3, 4, 5, 6]])
    targets = mx.array([[2, 3, 4, 5, 6, 7]])

    def loss_fn(m):
        return cross_entropy(m(ids), targets)

    grads = dict(tree_flatten(nn.value_and_grad(model, loss_fn)(model)[1]))
    unused_rows = grads["token_embedding.weight"][50:]
    if tied:
        assert mx.abs(unused_rows).max().item() > 1e-6
        assert "head.weight" not in grads
    else:
        assert mx.abs(unused_rows).max().item() == 0.0
        assert grads["head.weight"].shape == (97, 32)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_loss_at_init_is_close_to_log_vocab(kind):
    # small logits at init ⇒ nearly uniform prediction ⇒ loss ≈ ln V; the excess is ≈ Var(logit)/2,
    # here ≈ (0.02² · dims)/2 ≈ 0.01, so 0.05 is a bound that still catches a wrong init
    model = make_model(kind, vocab_size=1000, context_length=64, dims=64)
    ids = mx.random.randint(0, 1000, (4, 65), key=mx.random.key(1))
    loss = cross_entropy(model(ids[:, :-1]), ids[:, 1:]).item()
    assert abs(loss - math.log(1000)) < 0.05, loss


def test_init_scales_residual_projections_by_depth():
    model = make_model("llama", dims=64, ffn_dims=256, n_layers=8, n_heads=4, n_kv_heads=4)
    std = lambda a: float(np.std(np.array(a)))  # noqa: E731
    block = model.blocks[3]
    assert abs(std(block.attention.q_proj.weight) - 0.02) < 0.002
    assert abs(std(block.ffn.gate_proj.weight) - 0.02) < 0.002
    residual = 0.02 / math.sqrt(2 * 8)
    assert abs(std(block.attention.o_proj.weight) - residual) < 0.1 * residual
    assert abs(std(block.ffn.down_proj.weight) - residual) < 0.1 * residual
    assert abs(std(model.token_embedding.weight) - 0.02) < 0.002


def test_more_tokens_than_the_context_is_an_error_with_the_numbers():
    model = make_model("gpt2", context_length=16)
    model(mx.zeros((1, 16), dtype=mx.int32))  # exactly the context is fine
    with pytest.raises(ValueError, match=r"17 tokens.*context_length=16"):
        model(mx.zeros((1, 17), dtype=mx.int32))
    cache = model.make_cache()
    model(mx.zeros((1, 10), dtype=mx.int32), cache=cache)
    with pytest.raises(ValueError, match=r"17 tokens \(10 cached \+ 7 new\).*context_length=16"):
        model(mx.zeros((1, 7), dtype=mx.int32), cache=cache)


@pytest.mark.parametrize("bad", [[[1, 2, 3]], mx.array([1, 2, 3]), mx.array([[1.0, 2.0]])])
def test_ids_must_be_a_2d_integer_array(bad):
    with pytest.raises(ValueError, match="integer mx.array of shape"):
        make_model("gpt2")(bad)


def test_num_parameters_gpt2_style_matches_the_formula():
    model = make_model("gpt2")
    V, T, C, L = 97, 320, 32, 2
    per_block = (2 * C) + (4 * C * C + 4 * C) + (2 * C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    #            ln_1       q,k,v,o + biases     ln_2       up + bias             down + bias
    embeddings = V * C + T * C  # token table (also the head) + learned positions
    assert model.num_parameters() == embeddings + L * per_block + 2 * C
    assert model.num_parameters(include_embeddings=False) == L * per_block + 2 * C


def test_num_parameters_llama_style_matches_the_formula():
    model = make_model("llama")
    V, C, L, H_kv, D, F = 97, 32, 2, 2, 8, 64
    per_block = C + (C * C + 2 * C * H_kv * D + C * C) + C + 3 * C * F
    #           rms  q, k and v (GQA: narrower), o       rms  gate, up, down
    assert model.num_parameters() == V * C + L * per_block + C + V * C  # untied head: its own V×C
    # without embeddings: the token table goes; the untied head is a matmul like any other and stays
    assert model.num_parameters(include_embeddings=False) == L * per_block + C + V * C


@pytest.mark.parametrize("position", ["learned", "sinusoidal", "rope"])
def test_whole_model_is_causal(position):
    model = make_model("gpt2", vocab_size=50, context_length=16, position=position)
    ids = mx.array([[1, 7, 3, 9, 4, 4, 2, 8]])
    changed = mx.array([[1, 7, 3, 9, 4, 0, 49, 13]])
    a, b = model(ids), model(changed)
    assert_close(a[:, :5], b[:, :5], what="logits before the changed positions")
    assert mx.abs(a[:, 5:] - b[:, 5:]).max().item() > 1e-4


# --- KV cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_decoding_equals_full_recompute_across_a_cache_chunk(kind):
    # prefill 250 tokens, then one token at a time to 300: crosses KVCache.step = 256
    assert KVCache.step == 256
    model = make_model(kind)
    ids = mx.random.randint(0, 97, (2, 300), key=mx.random.key(2))
    full = model(ids)  # (2, 300, V)
    cache = model.make_cache()
    pieces = [model(ids[:, :250], cache=cache)]
    for t in range(250, 300):
        pieces.append(model(ids[:, t : t + 1], cache=cache))
    assert cache[0].offset == 300 and cache[0].keys.shape[2] == 512  # grew by one chunk
    assert_close(mx.concatenate(pieces, axis=1), full, what="cached vs full logits")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_decoding_in_uneven_chunks_equals_full_recompute(kind):
    model = make_model(kind)
    ids = mx.random.randint(0, 97, (1, 270), key=mx.random.key(3))
    full = model(ids)
    cache = model.make_cache()
    bounds = [0, 1, 8, 100, 255, 256, 257, 270]  # several tokens at a time, straddling 256
    cached = mx.concatenate([model(ids[:, a:b], cache=cache) for a, b in zip(bounds, bounds[1:])], axis=1)
    assert_close(cached, full, what="cached vs full logits")


# --- ids out of the vocabulary ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", [-1, 97, 10**9])
def test_ids_outside_the_vocabulary_are_an_error_with_the_numbers(bad_id):
    model = make_model("gpt2")
    ids = mx.array([[1, 2, bad_id, 3]])
    with pytest.raises(ValueError, match=rf"token id {bad_id} is outside .*\[0, 97\)"):
        model(ids)
    with pytest.raises(ValueError, match="outside"):
        model.hidden_states(ids)
    with pytest.raises(ValueError, match="outside"):  # also on a cached call
        model(ids, cache=model.make_cache())
    assert model(mx.array([[0, 96]])).shape == (1, 2, 97)  # both ends of the vocabulary are fine


def test_check_ids_false_skips_the_check_and_compiled_calls_skip_it_too():
    model = make_model("gpt2")
    ids = mx.array([[1, 2, 3]])
    assert mx.array_equal(model(ids, check_ids=False), model(ids))
    compiled = mx.compile(lambda x: model(x))  # the ids cannot be read inside mx.compile: no check there
    assert_close(compiled(ids), model(ids), what="compiled vs eager logits")


# --- quantized layers (what the GGUF loader makes) ---------------------------------------------------------


def dequantized_copy(quantized: TransformerLM, float_model: TransformerLM) -> TransformerLM:
    """``float_model`` with every weight replaced by what the quantized layer stands for (dequantized)."""
    weights = []
    for name, module in quantized.named_modules():
        if isinstance(module, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            w = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
            weights.append((f"{name}.weight", w))
    float_model.load_weights(weights, strict=False)
    return float_model


@pytest.mark.parametrize("family, tied", [("gpt2", True), ("llama", False), ("llama", True)])
def test_a_quantized_model_computes_with_its_dequantized_weights_and_stays_near_the_float_model(family, tied):
    model, quantized = make_model(family, dims=64, tie_embeddings=tied), make_model(family, dims=64, tie_embeddings=tied)
    nn.quantize(quantized, group_size=32, bits=4)
    assert isinstance(quantized.token_embedding, nn.QuantizedEmbedding)
    assert isinstance(quantized.blocks[0].attention.q_proj, nn.QuantizedLinear)
    assert tied or isinstance(quantized.head, nn.QuantizedLinear)
    # the parameters it stands for, not its packed words and group scales
    assert quantized.num_parameters() == model.num_parameters()
    assert quantized.num_parameters(include_embeddings=False) == model.num_parameters(include_embeddings=False)
    ids = mx.random.randint(0, 97, (2, 40), key=mx.random.key(1))
    logits = quantized(ids)
    # exact in what it computes: the float model with the dequantized weights (other kernels: the float bound)
    assert_close(logits, dequantized_copy(quantized, make_model(family, dims=64, tie_embeddings=tied))(ids),
                 what="quantized vs dequantized-float logits")
    # and near the float model: 4 bits leave 15 steps per group of 32, each weight off by up to half a step
    # (1/30 of its group's range); through two blocks and the head the logits move by ≈ 5-13% here
    assert relative_difference(logits, model(ids)) < 0.25
    cache = quantized.make_cache()  # cached decoding works on quantized layers too
    pieces = [quantized(ids[:, :30], cache=cache)] + [quantized(ids[:, t : t + 1], cache=cache) for t in range(30, 40)]
    assert_close(mx.concatenate(pieces, axis=1), logits, what="cached vs full quantized logits")


# --- against mlx-lm, an independent implementation ------------------------------------------------
# Our model is written in Hugging Face layout by save_pretrained and opened by mlx-lm's own loader
# (mlx_lm.utils.load_model), which builds its llama.py / gpt2.py model from config.json. Both run the same
# MLX kernels, so the agreement bar is tighter than the cross-kernel float bound:
# max |ours − theirs| / max |theirs| < 1e-4 in float32 (the fixture model_pair is in conftest.py).


def test_logits_match_mlx_lm(model_pair):
    ours, theirs = model_pair
    ids = mx.random.randint(0, 300, (2, 300), key=mx.random.key(4))
    expected = theirs(ids)
    assert mx.abs(expected).max().item() > 1.0  # the random weights give non-trivial logits
    # same MLX kernels on both sides: 1e-4, or the cross-kernel bound where that is wider (TF32 on a GPU);
    # cached decoding against mlx-lm is checked in test_generation.py
    assert_close(ours(ids), expected, rtol=max(1e-4, bound()), what="logits, ours vs mlx-lm")
