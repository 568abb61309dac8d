"""ModelConfig and TransformerLM: validation, presets, the tied head, init, length limits,
parameter counts, and KV-cached decoding against full recomputation."""

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from mlxllm import KVCache, ModelConfig, TransformerLM, cross_entropy

# tiny sizes: this CPU does ~5 GFLOP/s
GPT2_TINY = dict(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4)
LLAMA_TINY = dict(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dims=64)


def make_model(kind: str, seed: int = 0, **overrides) -> TransformerLM:
    mx.random.seed(seed)
    preset = ModelConfig.gpt2 if kind == "gpt2" else ModelConfig.llama
    base = GPT2_TINY if kind == "gpt2" else LLAMA_TINY
    model = TransformerLM(preset(**{**base, **overrides}))
    mx.eval(model.parameters())
    return model


# --- ModelConfig ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(dims=30, n_heads=4), ["dims=30", "n_heads=4"]),
        (dict(n_heads=4, n_kv_heads=3), ["n_heads=4", "n_kv_heads=3"]),
        (dict(n_heads=4, n_kv_heads=0), ["n_kv_heads=0"]),
        (dict(vocab_size=0), ["vocab_size", "0"]),
        (dict(context_length=-5), ["context_length", "-5"]),
        (dict(n_layers=2.0), ["n_layers", "2.0"]),
        (dict(dims=True), ["dims", "True"]),
        (dict(norm="batchnorm"), ["norm", "batchnorm"]),
        (dict(position="alibi"), ["position", "alibi"]),
        (dict(activation="tanh"), ["activation", "tanh"]),
        (dict(dims=36, n_heads=4, position="rope"), ["head_dim", "9"]),
        (dict(dims=33, n_heads=3, position="sinusoidal"), ["even", "33"]),
        (dict(logit_softcap=0.0), ["logit_softcap"]),
        (dict(dropout=1.0), ["dropout"]),
        (dict(parallel_block=True, pre_norm=False), ["pre_norm"]),
    ],
)
def test_config_rejects_bad_values_with_a_reason(kwargs, words):
    base = dict(vocab_size=10, context_length=8, dims=32, n_layers=1, n_heads=4)
    with pytest.raises(ValueError) as error:
        ModelConfig(**{**base, **kwargs})
    for word in words:
        assert word in str(error.value)


def test_config_defaults_fill_kv_heads_and_head_dim():
    config = ModelConfig(vocab_size=10, context_length=8, dims=48, n_layers=1, n_heads=6)
    assert config.n_kv_heads == 6 and config.head_dim == 8


def test_gpt2_preset_has_gpt2_choices():
    config = ModelConfig.gpt2()
    assert (config.vocab_size, config.context_length, config.dims, config.n_layers, config.n_heads) == (50257, 1024, 768, 12, 12)
    assert config.position == "learned" and config.norm == "layernorm" and config.activation == "gelu_tanh"
    assert config.bias and config.tie_embeddings and config.n_kv_heads == config.n_heads


def test_llama_preset_has_llama_choices():
    config = ModelConfig.llama()
    assert config.position == "rope" and config.norm == "rmsnorm" and config.activation == "swiglu"
    assert not config.bias and not config.tie_embeddings
    assert config.n_kv_heads < config.n_heads  # grouped-query attention


def test_presets_take_overrides():
    config = ModelConfig.llama(dims=64, n_heads=8, n_kv_heads=8, tie_embeddings=True)
    assert (config.dims, config.n_heads, config.n_kv_heads, config.tie_embeddings) == (64, 8, 8, True)
    assert config.position == "rope"


def test_config_round_trips_through_a_dict_and_rejects_unknown_keys():
    config = ModelConfig.llama(**LLAMA_TINY)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_embd"):
        ModelConfig.from_dict({**config.to_dict(), "n_embd": 32})


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


def test_sinusoidal_table_is_not_a_parameter():
    model = make_model("gpt2", position="sinusoidal")
    names = [name for name, _ in tree_flatten(model.trainable_parameters())]
    assert not any("position" in name for name in names)
    V, C = 97, 32
    learned = make_model("gpt2")
    assert learned.num_parameters() - model.num_parameters() == 320 * C
    assert model.num_parameters(include_embeddings=False) == model.num_parameters() - V * C


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
    cached = mx.concatenate(pieces, axis=1)
    assert mx.allclose(cached, full, atol=1e-5, rtol=1e-5).item(), mx.abs(cached - full).max().item()


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_cached_decoding_in_uneven_chunks_equals_full_recompute(kind):
    model = make_model(kind)
    ids = mx.random.randint(0, 97, (1, 270), key=mx.random.key(3))
    full = model(ids)
    cache = model.make_cache()
    bounds = [0, 1, 8, 100, 255, 256, 257, 270]  # several tokens at a time, straddling 256
    cached = mx.concatenate([model(ids[:, a:b], cache=cache) for a, b in zip(bounds, bounds[1:])], axis=1)
    assert mx.allclose(cached, full, atol=1e-5, rtol=1e-5).item(), mx.abs(cached - full).max().item()


# --- against mlx-lm, an independent implementation ------------------------------------------------
# Our model is written in Hugging Face layout by mlxllm.weights.save_pretrained and opened by mlx-lm's
# own loader (mlx_lm.utils.load_model), which builds its llama.py / gpt2.py model from config.json.
# Agreement bar: max |ours − theirs| / max |theirs| < 1e-4 in float32.

PARITY = {
    "llama": ModelConfig.llama(vocab_size=300, context_length=320, dims=64, n_layers=2, n_heads=4, n_kv_heads=2,
                               ffn_dims=128),
    "gpt2": ModelConfig.gpt2(vocab_size=300, context_length=320, dims=64, n_layers=2, n_heads=4),
}


def randomize(model: TransformerLM, seed: int) -> TransformerLM:
    """Every parameter random and O(1) in size (GPT-2's init is too gentle to exercise norms and biases):
    matrices N(0, 1/fan_in), norm weights 1 + N(0, 0.1²), biases N(0, 0.1²)."""
    params = tree_flatten(model.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    new = []
    for (name, value), key in zip(params, keys):
        noise = mx.random.normal(value.shape, key=key)
        if value.ndim == 2:
            new.append((name, noise / math.sqrt(value.shape[1])))
        elif "norm" in name and name.endswith("weight"):
            new.append((name, 1.0 + 0.1 * noise))
        else:
            new.append((name, 0.1 * noise))
    model.load_weights(new)
    mx.eval(model.parameters())
    return model


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_pair(request, tmp_path_factory):
    """(ours, mlx-lm's) on the same random weights."""
    from mlx_lm.utils import load_model

    from mlxllm.tokenizer import Tokenizer
    from mlxllm.weights import save_pretrained

    ours = randomize(TransformerLM(PARITY[request.param]), seed=10)
    tokenizer = Tokenizer.train("the cat sat on the mat; a dog ran far away. " * 10, 280)  # save_pretrained writes one
    folder = save_pretrained(ours, tokenizer, tmp_path_factory.mktemp(request.param))
    theirs, _ = load_model(Path(folder))
    assert type(theirs).__module__ == f"mlx_lm.models.{request.param}"  # really mlx-lm's own architecture code
    return ours, theirs


def relative_difference(a: mx.array, b: mx.array) -> float:
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


def test_logits_match_mlx_lm(model_pair):
    ours, theirs = model_pair
    ids = mx.random.randint(0, 300, (2, 300), key=mx.random.key(4))
    expected = theirs(ids)
    assert mx.abs(expected).max().item() > 1.0  # the random weights give non-trivial logits
    assert relative_difference(ours(ids), expected) < 1e-4


def test_cached_decoding_matches_mlx_lm_cached_decoding(model_pair):
    from mlx_lm.models.cache import make_prompt_cache

    ours, theirs = model_pair
    ids = mx.random.randint(0, 300, (1, 280), key=mx.random.key(5))
    our_cache, their_cache = ours.make_cache(), make_prompt_cache(theirs)
    pieces = [(ours(ids[:, :250], cache=our_cache), theirs(ids[:, :250], cache=their_cache))]
    for t in range(250, 280):  # one token at a time, across the 256-position chunk of both caches
        pieces.append((ours(ids[:, t : t + 1], cache=our_cache), theirs(ids[:, t : t + 1], cache=their_cache)))
    ours_all = mx.concatenate([a for a, _ in pieces], axis=1)
    theirs_all = mx.concatenate([b for _, b in pieces], axis=1)
    assert relative_difference(ours_all, theirs_all) < 1e-4
    assert relative_difference(theirs_all, theirs(ids)) < 1e-4  # and both equal full recomputation


def test_greedy_generation_matches_mlx_lm_generate_step(model_pair):
    from mlx_lm.generate import generate_step

    from mlxllm import generate

    ours, theirs = model_pair
    prompt = mx.random.randint(0, 300, (20,), key=mx.random.key(6)).tolist()
    expected = [int(token) for token, _ in generate_step(mx.array(prompt), theirs, max_tokens=40)]
    assert list(generate(ours, prompt, 40, temperature=0)) == expected
