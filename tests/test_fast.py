"""The fast layer's decode engine against the core: the same tokens as ``mlxllm.generate`` (exact on
the CPU; on a GPU equal except at near-ties of the reference's logits, within the tolerance policy),
its pieces against the core pieces they stand in for, its fallback, and a model left untouched."""

import dataclasses
import itertools

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from conftest import argmax_loop_full_recompute, assert_greedy_tokens_agree, make_model, randomize
from mlx.utils import tree_flatten

from mlxllm import TransformerLM
from mlxllm.config import ModelConfig
from mlxllm.fast import DecodeEngine, unsupported
from mlxllm.fast.layers import JoinedCache, JoinedLinear, Rotation
from mlxllm.generation import generate, make_request, make_sampler
from mlxllm.tolerances import FLOAT32, assert_close, bound

GREEDY = make_sampler(temperature=0)
ON_CPU = mx.default_device().type == mx.DeviceType.cpu


def engine_tokens(model: TransformerLM, prompt: list[int], n: int, **kwargs) -> list[int]:
    return list(DecodeEngine(model).generate(prompt, n, **kwargs))


def assert_engine_equals_core(model: TransformerLM, prompt: list[int], n: int) -> list[int]:
    """Greedy: the engine's tokens and the core's, each against full recomputation's logits."""
    expected, logits = argmax_loop_full_recompute(model, prompt, n)
    fast = engine_tokens(model, prompt, n, sampler=GREEDY)
    core = list(generate(model, prompt, n, temperature=0))
    assert_greedy_tokens_agree(core, expected, logits)
    assert_greedy_tokens_agree(fast, expected, logits)
    assert len(fast) == n
    return fast


def snapshot(model: nn.Module) -> list[tuple]:
    """Every module's attributes and every array it holds, by identity."""
    return [(name, sorted(vars(module)), [(k, id(v)) for k, v in module.items()])
            for name, module in model.named_modules()] + \
        [(name, id(array)) for name, array in tree_flatten(model.parameters())]


# --- the engine's tokens are the core's ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("prompt_length", [1, 200, 255, 256])  # empty; mid-chunk; one left; full
def test_the_engine_gives_the_cores_greedy_tokens_across_chunk_boundaries(kind, prompt_length):
    model = randomize(make_model(kind), seed=3)
    prompt = np.random.default_rng(prompt_length).integers(0, 97, prompt_length).tolist()
    n = 64 if prompt_length < 256 else 30  # crosses position 256 (the context is 320)
    tokens = assert_engine_equals_core(model, prompt, n)
    assert len(set(tokens)) > 3 or kind == "gpt2"  # tiny random GPT-2s repeat a token


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_engines_step_logits_equal_full_recompute_past_the_first_chunk(kind):
    model = randomize(make_model(kind), seed=3)
    ids = mx.random.randint(0, 97, (1, 270), key=mx.random.key(4))
    cache = model.make_cache()
    model(ids[:, :250], cache=cache)  # prefill through the core, as the engine does
    caches = [JoinedCache(layer_cache, 260) for layer_cache in cache]  # grows at 260
    request = make_request(model, [1], 1, lambda logits, key: logits)  # a "sampler": the logits
    step, key, logits = DecodeEngine(model).step(request), mx.random.key(0), []
    for t in range(250, 270):  # past position 256, where the prefill's KVCache chunk ends
        out, key = step(ids[:, t], caches, key)
        logits.append(out)
    assert caches[0].offset == 270 and caches[0].kv.shape == (1, 2 * model.config.n_kv_heads,
                                                               260 + JoinedCache.step,
                                                               model.config.head_dim)
    assert_close(mx.stack(logits, axis=1), model(ids)[:, 250:], what="engine step vs full recompute")


@pytest.mark.parametrize("overrides", [dict(parallel_block=True), dict(pre_norm=False),
                                       dict(qk_norm=True), dict(position="sinusoidal"),
                                       dict(tie_embeddings=False), dict(logit_softcap=5.0),
                                       dict(activation="relu", bias=False)])
def test_the_engine_follows_every_block_layout(overrides):
    model = randomize(make_model("gpt2", **overrides), seed=7)
    assert unsupported(model) is None
    assert_engine_equals_core(model, [5, 6, 7, 8], 24)


@pytest.mark.parametrize("overrides", [dict(qk_norm=True), dict(rope_traditional=True),
                                       dict(qkv_bias=True), dict(n_kv_heads=1)])
def test_the_engine_follows_every_llama_variant(overrides):
    model = randomize(make_model("llama", **overrides), seed=7)
    assert_engine_equals_core(model, [5, 6, 7, 8], 24)


@pytest.mark.parametrize("kind, seed", [("gpt2", 11), ("llama", 0)])
def test_the_engine_slides_the_window_past_the_context_as_the_core_does(kind, seed):
    model = randomize(make_model(kind, context_length=16), seed=seed)
    assert_engine_equals_core(model, [3, 1, 4, 1, 5], 48)  # 53 > 3 × 16 tokens


def test_seeded_samples_are_the_cores_draws():
    # a sampler whose draw is the argmax of logits + noise from the step's key: the engine must split
    # the same keys; the core's perturbed logits give the margins (the same check works on a GPU)
    model = randomize(make_model("llama", context_length=40), seed=5)
    scores = []

    def noisy_argmax(logits, key):
        return mx.argmax(logits + 4.0 * mx.random.uniform(shape=logits.shape, key=key), axis=-1)

    def recorded(logits, key):
        scores.append(logits + 4.0 * mx.random.uniform(shape=logits.shape, key=key))
        return mx.argmax(scores[-1], axis=-1)

    fast = engine_tokens(model, [5, 6, 7], 80, sampler=noisy_argmax, seed=8)
    core = list(generate(model, [5, 6, 7], 80, sampler=recorded, seed=8))
    assert len(set(core)) > 10  # the noise really picks other tokens; 83 > 40: the window slides
    assert_greedy_tokens_agree(fast, core, scores)


@pytest.mark.skipif(not ON_CPU, reason="a categorical draw has no margin to check on another "
                    "backend's logits; test_seeded_samples_are_the_cores_draws covers the GPU")
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_top_p_and_top_k_samples_equal_the_cores_on_the_cpu(kind):
    model = randomize(make_model(kind, context_length=40), seed=5)
    sampler = make_sampler(temperature=0.9, top_k=20, top_p=0.95)
    fast = engine_tokens(model, [5, 6, 7], 80, sampler=sampler, seed=8)
    assert fast == list(generate(model, [5, 6, 7], 80, sampler=sampler, seed=8))
    assert len(set(fast)) > 10


def test_without_a_seed_the_draws_follow_mlx_global_random_state():
    model = randomize(make_model("llama"), seed=4)
    engine, runs = DecodeEngine(model), []
    for _ in range(2):
        mx.random.seed(11)
        runs.append(list(engine.generate([3, 1, 4], 24, sampler=make_sampler())))
    mx.random.seed(12)
    assert runs[0] == runs[1] and runs[0] != list(engine.generate([3, 1, 4], 24))
    if ON_CPU:
        mx.random.seed(11)
        assert runs[0] == list(generate(model, [3, 1, 4], 24))


def test_the_engine_of_a_quantized_model_gives_the_cores_tokens():
    model = randomize(make_model("llama"), seed=6)
    nn.quantize(model, group_size=32, bits=4)
    assert isinstance(model.blocks[0].attention.q_proj, nn.QuantizedLinear)
    assert len(set(assert_engine_equals_core(model, list(range(1, 30)), 40))) > 3


def test_lora_and_mixed_layers_are_not_joined_but_decode_alike():
    from mlxllm.lora import apply_lora

    model = randomize(make_model("llama"), seed=8)
    apply_lora(model, rank=4)  # q_proj and v_proj get adapters; k_proj stays a plain Linear
    randomize(model, seed=9)  # non-zero adapters, so they change the tokens
    attention = model.blocks[0].attention
    assert not JoinedLinear.joinable([attention.q_proj, attention.k_proj, attention.v_proj])
    assert not JoinedLinear.joinable([nn.Linear(8, 8), nn.QuantizedLinear(64, 8, group_size=32, bits=4)])
    assert_engine_equals_core(model, [3, 1, 4], 20)


@pytest.mark.parametrize("n", [0, 1, 2, 17])
def test_the_engine_hands_out_exactly_the_tokens_asked_for(n):
    model = randomize(make_model("llama"), seed=4)
    assert len(engine_tokens(model, [3, 1, 4], n, sampler=GREEDY)) == n


def test_the_engine_stops_at_a_stop_id_as_the_core_does():
    model = randomize(make_model("gpt2"), seed=4)
    greedy = list(generate(model, [4, 5, 6], 10, temperature=0))
    stop = next(t for i, t in enumerate(greedy) if i and t not in greedy[:i])
    expected = list(generate(model, [4, 5, 6], 10, temperature=0, stop_ids=[stop]))
    assert engine_tokens(model, [4, 5, 6], 10, sampler=GREEDY, stop_ids=[stop]) == expected


def test_a_long_answer_does_not_take_the_whole_context_up_front():
    # a model declaring a huge context: the engine's buffers start small and grow by chunks
    model = randomize(make_model("llama", context_length=2**24), seed=3)
    engine = DecodeEngine(model)
    assert_engine_equals_core(model, [1, 2, 3], 20)
    stream = engine.generate([1, 2, 3], 2**24 - 3, sampler=GREEDY)  # 2^24 positions: 4 GB
    assert list(itertools.islice(stream, 5)) == list(generate(model, [1, 2, 3], 5, temperature=0))


def test_the_engine_refuses_what_generate_refuses():
    engine = DecodeEngine(make_model("gpt2"))
    with pytest.raises(ValueError, match="prompt is empty"):
        engine.generate([], 5)
    with pytest.raises(ValueError, match="not text"):
        engine.generate("hello", 5)


# --- the model is the caller's: read, never changed ----------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_the_engine_leaves_the_model_as_it_was(kind):
    model = randomize(make_model(kind), seed=2)
    before = snapshot(model)
    engine = DecodeEngine(model)
    list(engine.generate([1, 2, 3], 12, sampler=GREEDY))
    list(engine.generate([1, 2, 3], 12, sampler=make_sampler(temperature=0.8), seed=1))
    assert snapshot(model) == before  # the same attributes and the same array objects


def test_the_engine_sees_weights_updated_after_an_earlier_call():
    model = randomize(make_model("llama"), seed=1)
    engine = DecodeEngine(model)
    before = list(engine.generate([1, 2, 3], 20, sampler=GREEDY))  # traces and keeps its stages
    randomize(model, seed=2)  # new weights (as after training) in the same model object
    expected, logits = argmax_loop_full_recompute(model, [1, 2, 3], 20)
    after = list(engine.generate([1, 2, 3], 20, sampler=GREEDY))
    assert_greedy_tokens_agree(after, expected, logits)
    assert after != before  # not the old weights baked into a trace


@pytest.mark.parametrize("part", ["blocks.0.attention.o_proj", "blocks.1.ffn.down_proj",
                                  "blocks.0.attention.q_proj", "blocks.1.ffn_norm", "norm"])
def test_the_engine_sees_one_replaced_layer(part):
    # the stages hold the weights as constants of their traces: replacing any one layer must retrace
    model = randomize(make_model("llama"), seed=1)
    engine = DecodeEngine(model)
    before = list(engine.generate([1, 2, 3], 20, sampler=GREEDY))
    module = model
    for name in part.split("."):
        module = module[int(name)] if name.isdigit() else getattr(module, name)
    randomize(module, seed=5)
    expected, logits = argmax_loop_full_recompute(model, [1, 2, 3], 20)
    assert expected != before  # the new weights change the answer ...
    assert_greedy_tokens_agree(list(engine.generate([1, 2, 3], 20, sampler=GREEDY)), expected, logits)


# --- where the engine is not written for the model: the core decodes ----------------------------


def test_a_model_in_training_mode_with_dropout_decodes_through_the_core():
    model = randomize(make_model("gpt2", dropout=0.5), seed=1)
    model.train()
    engine = DecodeEngine(model)
    mx.random.seed(3)
    tokens = list(engine.generate([1, 2, 3], 30, seed=1))
    assert "training mode with dropout" in engine.fallback
    mx.random.seed(3)
    assert tokens == list(generate(model, [1, 2, 3], 30, seed=1))  # the core's draws, dropout included
    model.eval()
    list(engine.generate([1, 2, 3], 2, sampler=GREEDY))
    assert engine.fallback is None


def test_a_config_field_the_engine_does_not_know_makes_it_fall_back_in_one_line():
    @dataclasses.dataclass
    class WindowedConfig(ModelConfig):  # as if the core had grown a new block feature
        sliding_window: int | None = None

    config = WindowedConfig(**{**make_model("llama").config.to_dict(), "sliding_window": 64})
    model = randomize(TransformerLM(config), seed=3)
    engine = DecodeEngine(model)
    assert engine.fallback == "the engine does not know WindowedConfig.sliding_window=64"
    assert list(engine.generate([1, 2, 3], 12, sampler=GREEDY)) == \
        list(generate(model, [1, 2, 3], 12, temperature=0))  # the core's own tokens: same kernels
    model.config.sliding_window = None  # at its default the field changes nothing
    assert unsupported(model) is None


def test_a_block_or_layer_the_engine_does_not_know_makes_it_fall_back():
    class LoudBlock(type(make_model("llama").blocks[0])):
        pass

    model = randomize(make_model("llama"), seed=3)
    block = model.blocks[1]
    block.__class__ = LoudBlock
    assert unsupported(model) == "blocks.1.block is a LoudBlock, which the engine does not know"
    model.blocks[1].__class__ = type(model.blocks[0])
    model.blocks[0].attention.rope = nn.RoPE(8)  # mlx.nn's RoPE is not the core's RoPE class
    assert unsupported(model) == "blocks.0.rope is a RoPE, which the engine does not know"
    assert unsupported(nn.Linear(2, 2)) == "Linear is not a TransformerLM"


def test_every_config_field_of_the_core_is_known_to_the_engine():
    # a new ModelConfig field must be decided on: supported by the engine (added to KNOWN_FIELDS
    # with a test here that it decodes equal) or left unknown, so that the engine falls back
    from mlxllm.fast.decode import KNOWN_FIELDS

    assert {f.name for f in dataclasses.fields(ModelConfig)} == KNOWN_FIELDS


# --- the engine's pieces against the core pieces -------------------------------------------------


@pytest.mark.parametrize("traditional", [False, True])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16])
def test_the_rotation_turns_q_and_k_as_the_cores_rope_does_and_leaves_v(traditional, dtype):
    from mlxllm.embedding import RoPE

    rope, n_q, n_kv = RoPE(64, 100000.0, traditional), 6, 2  # GQA: 6 query heads, 2 kv heads
    rotation = mx.compile(Rotation(rope, n_q + n_kv, n_q + 2 * n_kv))
    x = mx.random.normal((1, n_q + 2 * n_kv, 1, 64), key=mx.random.key(2)).astype(dtype)
    for position in (0, 1, 255, 8191):
        at = mx.array(position, dtype=mx.int32)
        got, expected = rotation(x, at), rope(x[:, : n_q + n_kv], at)
        assert got.dtype == dtype and mx.array_equal(got[:, n_q + n_kv :], x[:, n_q + n_kv :])
        if dtype == mx.float32 and ON_CPU:  # the frequencies and float32 steps of MLX's CPU rope
            assert mx.array_equal(got[:, : n_q + n_kv], expected), position
        else:  # a GPU kernel may order its float32 steps differently; CPU bfloat16 rounds cos, sin
            # an angle position × frequency carries the frequency's rounding (up to 16 ulps
            # between the two, see Rotation) and the product's: up to position × 2^-20 radians
            rtol = (FLOAT32 if dtype == mx.float32 else bound(dtype)) + position * 2.0**-20
            assert_close(got[:, : n_q + n_kv], expected, dtype=dtype, rtol=rtol,
                         what=f"rotation at {position}")


@pytest.mark.parametrize("quantized", [False, True])
def test_joined_linear_layers_compute_each_layers_output_and_leave_the_layers_alone(quantized):
    layers = [nn.Linear(64, n, bias=not quantized) for n in (64, 32, 32)]  # q, k, v of a GQA layer
    if quantized:
        layers = [nn.QuantizedLinear.from_linear(layer, group_size=32, bits=4) for layer in layers]
    x = mx.random.normal((1, 3, 64), key=mx.random.key(0))
    separate = [layer(x) for layer in layers]
    held = [dict(layer.items()) for layer in layers]
    joined = JoinedLinear(layers)
    for got, expected in zip(joined(x), separate):  # one matrix product, the numbers of three
        assert got.shape == expected.shape
        assert_close(got, expected, what="joined vs separate linear layers")
    assert [dict(layer.items()) for layer in layers] == held  # the very same arrays, not views
    pair = layers[1:]  # equal widths (as SwiGLU's gate and up): one token's row is cut by rows
    for got, layer in zip(JoinedLinear(pair)(x[0, :1]), pair):
        assert got.shape == (1, 32)
        assert_close(got, layer(x[0, :1]), what="joined vs separate, one row")
    # a layer whose weight was replaced (as by an optimizer step) is joined again on refresh
    layers[1].update({"weight": layers[0].weight[:32]} if quantized else {"weight": mx.zeros((32, 64))})
    joined.refresh()
    assert_close(joined(x)[1], layers[1](x), what="the join after a weight changed")
