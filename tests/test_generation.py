"""Generation: the sampler (built once, validated once) on hand-made distributions with exact numbers,
temperature faults and the greedy threshold, generate (greedy = argmax with full recompute, stop ids,
sliding past the context length, errors), parity with mlx-lm's cached decoding, UTF-8-safe streaming."""


import mlx.core as mx
import numpy as np
import pytest
from conftest import argmax_loop_full_recompute, assert_greedy_tokens_agree, make_model, randomize

from mlxllm import TransformerLM
from mlxllm.generation import (
    GREEDY_TEMPERATURE,
    SamplingConfig,
    generate,
    generate_batch,
    make_sampler,
    sample,
    sampling_logits,
    stream_text,
)
from mlxllm.tolerances import assert_close, bound

# --- sampling on hand-made distributions ---------------------------------------------------------

PROBS = [0.5, 0.25, 0.15, 0.1]  # token 0 most likely, token 3 least
LOGITS = mx.log(mx.array(PROBS))


def distribution(**kwargs) -> list[float]:
    return [round(p, 6) for p in mx.softmax(sampling_logits(LOGITS, **kwargs)).tolist()]


def draws(logits: mx.array, n: int, seed: int = 0, **kwargs) -> np.ndarray:
    """n independent draws: the same row repeated n times, sampled as one batch."""
    return np.array(sample(mx.broadcast_to(logits, (n, logits.shape[-1])), key=mx.random.key(seed), **kwargs))


@pytest.mark.parametrize(
    "kwargs, allowed, expected",
    [
        (dict(top_k=1), {0}, [1.0, 0.0, 0.0, 0.0]),
        (dict(top_k=2), {0, 1}, [2 / 3, 1 / 3, 0.0, 0.0]),
        (dict(top_k=3), {0, 1, 2}, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0]),
        (dict(top_k=4), {0, 1, 2, 3}, PROBS),
        # top-p: smallest prefix of the sorted tokens whose mass reaches p
        (dict(top_p=0.3), {0}, [1.0, 0.0, 0.0, 0.0]),  # 0.5 ≥ 0.3
        (dict(top_p=0.6), {0, 1}, [2 / 3, 1 / 3, 0.0, 0.0]),  # 0.5 < 0.6 ≤ 0.75
        (dict(top_p=0.8), {0, 1, 2}, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0]),  # 0.75 < 0.8 ≤ 0.9
        (dict(top_p=0.95), {0, 1, 2, 3}, PROBS),  # 0.9 < 0.95
        (dict(top_p=1.0), {0, 1, 2, 3}, PROBS),
        # min-p: keep p ≥ min_p · 0.5
        (dict(min_p=0.4), {0, 1}, [2 / 3, 1 / 3, 0.0, 0.0]),  # threshold 0.2
        (dict(min_p=0.25), {0, 1, 2}, [0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0.0]),  # threshold 0.125
        (dict(min_p=0.9), {0}, [1.0, 0.0, 0.0, 0.0]),  # threshold 0.45
        (dict(top_k=3, top_p=0.6), {0, 1}, [2 / 3, 1 / 3, 0.0, 0.0]),
    ],
)
def test_filters_keep_exactly_their_set(kwargs, allowed, expected):
    assert distribution(**kwargs) == pytest.approx(expected, abs=1e-6)
    drawn = set(draws(LOGITS, 2000, **kwargs).tolist())
    assert drawn == allowed  # never outside the set; with 2000 draws every member shows up


def test_filters_work_row_by_row_on_a_batch():
    batch = mx.stack([LOGITS, LOGITS[::-1]])  # row 1 is row 0 with the tokens in reverse order
    for kwargs in (dict(top_k=2), dict(top_p=0.6), dict(min_p=0.4)):
        probs = mx.softmax(sampling_logits(batch, **kwargs), axis=-1).tolist()
        assert probs[0] == pytest.approx([2 / 3, 1 / 3, 0, 0], abs=1e-6)
        assert probs[1] == pytest.approx([0, 0, 1 / 3, 2 / 3], abs=1e-6)
        drawn = np.array(sample(mx.broadcast_to(batch[:, None], (2, 500, 4)).reshape(1000, 4), key=mx.random.key(9),
                                **kwargs)).reshape(2, 500)
        assert set(drawn[0].tolist()) == {0, 1} and set(drawn[1].tolist()) == {2, 3}


def test_sampling_logits_has_no_distribution_at_temperature_zero():
    with pytest.raises(ValueError, match="greedy"):
        sampling_logits(LOGITS, temperature=0)


def test_temperature_sharpens_and_flattens_exactly():
    # softmax(log p / T) ∝ p^(1/T)
    for temperature in (0.5, 2.0):
        powered = np.array(PROBS) ** (1 / temperature)
        assert distribution(temperature=temperature) == pytest.approx(list(powered / powered.sum()), abs=1e-6)


def test_top_p_works_after_temperature():
    # top-p sees the tempered distribution: at T = 1, top_p = 0.65 keeps {0, 1} (0.5 + 0.25 ≥ 0.65);
    # at T = 2 it is [0.370, 0.262, 0.203, 0.166] and 0.370 + 0.262 < 0.65, so token 2 joins
    assert set(draws(LOGITS, 2000, top_p=0.65).tolist()) == {0, 1}
    assert set(draws(LOGITS, 2000, temperature=2.0, top_p=0.6).tolist()) == {0, 1}
    assert set(draws(LOGITS, 2000, temperature=2.0, top_p=0.65).tolist()) == {0, 1, 2}


def test_temperature_zero_and_top_k_one_are_argmax():
    logits = mx.random.normal((64, 50), key=mx.random.key(5))
    argmax = np.argmax(np.array(logits), axis=-1)
    assert (np.array(sample(logits, temperature=0)) == argmax).all()
    assert (np.array(sample(logits, top_k=1, key=mx.random.key(6))) == argmax).all()
    assert (np.array(sample(logits, temperature=5.0, top_k=1, key=mx.random.key(7))) == argmax).all()


def test_temperature_one_frequencies_follow_the_softmax():
    # chi-square goodness of fit, 3 degrees of freedom: 16.27 is the 0.999 quantile, so a correct
    # sampler fails with probability 0.001 (the key is fixed, so the outcome is deterministic)
    n = 20000
    counts = np.bincount(draws(LOGITS, n, seed=11), minlength=4)
    expected = n * np.array(PROBS)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 16.27, (counts, chi_square)


def test_same_key_same_draws_different_key_different_draws():
    uniform = mx.zeros((200, 10))
    first, again = sample(uniform, key=mx.random.key(3)), sample(uniform, key=mx.random.key(3))
    other = sample(uniform, key=mx.random.key(4))
    assert (np.array(first) == np.array(again)).all()
    assert (np.array(first) != np.array(other)).sum() > 100  # P(agree) = 0.1 per draw


def test_batched_sampling_draws_each_row_from_its_own_distribution():
    # row r allows only tokens {r, r+1}; a per-row top_k=1 on a row with a clear max gives that max
    rows = np.full((5, 8), -np.inf, dtype=np.float32)
    for r in range(5):
        rows[r, r], rows[r, r + 1] = 0.0, 0.0
    tokens = np.array([sample(mx.array(rows), key=mx.random.key(s)).tolist() for s in range(200)])  # (200, 5)
    for r in range(5):
        assert set(tokens[:, r].tolist()) == {r, r + 1}
    peaked = mx.array(rows) + mx.array(np.eye(5, 8, k=1, dtype=np.float32))  # token r+1 is the max of row r
    assert sample(peaked, top_k=1, key=mx.random.key(0)).tolist() == [1, 2, 3, 4, 5]
    assert sample(mx.array([0.0, 3.0, 1.0]), temperature=0).item() == 1  # one row (V,) → a scalar


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(temperature=-0.1), "temperature must be >= 0"),
        (dict(temperature=float("nan")), r"temperature must be >= 0 and finite .*got nan"),
        (dict(temperature=float("inf")), r"temperature must be >= 0 and finite .*got inf"),
        (dict(temperature=-float("inf")), "temperature must be >= 0 and finite"),
        (dict(temperature="0.7"), "temperature must be >= 0 and finite"),
        (dict(top_p=float("nan")), r"top_p must be in \(0, 1\]"),
        (dict(min_p=1.5), r"min_p must be in \[0, 1\]"),
        (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
        (dict(top_k=0), "top_k must be a positive integer"),
        (dict(top_k=2.5), "top_k must be a positive integer"),
        (dict(min_p=-0.5), r"min_p must be in \[0, 1\]"),
    ],
)
def test_sampling_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(LOGITS, **kwargs)
    with pytest.raises(ValueError, match=message):
        make_sampler(**kwargs)  # checked once, when the sampler is built
    with pytest.raises(ValueError, match=message):
        generate(make_model("gpt2"), [1, 2], 3, **kwargs)  # when called, before the first token is asked for


def test_temperatures_below_the_greedy_threshold_are_argmax():
    logits = mx.random.normal((64, 50), key=mx.random.key(5))
    argmax = np.argmax(np.array(logits), axis=-1)
    for tiny in (1e-45, 1e-8, GREEDY_TEMPERATURE / 2):  # 1e-45 used to overflow the logits to ±inf and draw at random
        assert (np.array(sample(logits, temperature=tiny, key=mx.random.key(1))) == argmax).all()
        assert SamplingConfig(temperature=tiny).greedy
    # just above the threshold it still samples: two tied tokens are both drawn
    tied = mx.zeros((400, 2))
    assert set(np.array(sample(tied, temperature=2 * GREEDY_TEMPERATURE, key=mx.random.key(2))).tolist()) == {0, 1}
    model = make_model("gpt2")
    assert list(generate(model, [1, 2, 3], 10, temperature=1e-45, seed=0)) == list(
        generate(model, [1, 2, 3], 10, temperature=0))


def test_a_built_sampler_equals_sample_with_the_same_settings():
    logits = mx.random.normal((300, 20), key=mx.random.key(8))
    sampler = make_sampler(temperature=0.7, top_k=8, top_p=0.9, min_p=0.05)
    expected = sample(logits, temperature=0.7, top_k=8, top_p=0.9, min_p=0.05, key=mx.random.key(9))
    assert sampler(logits, mx.random.key(9)).tolist() == expected.tolist()
    assert make_sampler(temperature=0)(logits, None).tolist() == np.argmax(np.array(logits), axis=-1).tolist()


def test_generate_takes_a_sampler_or_the_keywords_but_not_both():
    model = make_model("gpt2")
    with_keywords = list(generate(model, [1, 2, 3], 15, temperature=0.8, top_k=5, seed=3))
    assert list(generate(model, [1, 2, 3], 15, sampler=make_sampler(temperature=0.8, top_k=5), seed=3)) == with_keywords
    with pytest.raises(ValueError, match="either sampler= or the sampling keywords"):
        generate(model, [1, 2, 3], 15, sampler=make_sampler(), top_k=5)


# --- generate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generate_with_cache_equals_argmax_with_full_recompute(kind):
    model = randomize(make_model(kind), seed=3)
    prompt = np.random.default_rng(0).integers(0, 97, 250).tolist()  # 250 + 12 crosses the 256 cache chunk
    expected, logits = argmax_loop_full_recompute(model, prompt, 12)
    assert_greedy_tokens_agree(list(generate(model, prompt, 12, temperature=0)), expected, logits)


# learned positions (gpt2) and RoPE (llama): both slide the window by re-prefilling the last context_length ids
@pytest.mark.parametrize("kind, seed", [("gpt2", 11), ("llama", 0)])  # seeds whose greedy text does not loop at once
def test_generating_three_times_the_context_length_slides_the_window(kind, seed):
    model = randomize(make_model(kind, context_length=16), seed=seed)
    prompt = [3, 1, 4, 1, 5]
    new = list(generate(model, prompt, 48, temperature=0))  # the whole sequence is 53 > 3 × 16 tokens
    expected, logits = argmax_loop_full_recompute(model, prompt, 48)
    assert len(new) == 48 and len(set(expected[16:])) >= 4  # past the window the reference still varies
    assert_greedy_tokens_agree(new, expected, logits)


def test_generation_from_a_prompt_that_fills_the_context_slides_at_once():
    model = randomize(make_model("gpt2", context_length=16), seed=2)
    prompt = list(range(10, 26))  # exactly context_length ids: the second new token already needs a slide
    expected, logits = argmax_loop_full_recompute(model, prompt, 5)
    assert_greedy_tokens_agree(list(generate(model, prompt, 5, temperature=0)), expected, logits)
    assert list(generate(model, prompt, 5, temperature=0)) == list(generate(model, prompt, 5, temperature=0))


def test_seeded_sampling_past_the_context_is_reproducible():
    model = make_model("llama", context_length=8)
    a = list(generate(model, [1, 2], 30, temperature=1.5, seed=4))
    assert a == list(generate(model, [1, 2], 30, temperature=1.5, seed=4))
    assert len(a) == 30 and all(0 <= t < 97 for t in a) and len(set(a)) > 5


def test_generate_is_a_generator_yielding_ints_one_at_a_time():
    stream = generate(make_model("llama"), [1, 2, 3], 5, temperature=0)
    first = next(stream)
    assert isinstance(first, int) and 0 <= first < 97
    assert len([first, *stream]) == 5


def test_generate_with_a_seed_or_key_is_reproducible():
    model = make_model("gpt2")
    a = list(generate(model, [1, 2, 3], 20, seed=7))
    assert a == list(generate(model, [1, 2, 3], 20, seed=7))
    assert a == list(generate(model, [1, 2, 3], 20, key=mx.random.key(7)))
    assert a != list(generate(model, [1, 2, 3], 20, seed=8))
    # top_k = 1 at any temperature is greedy
    assert list(generate(model, [1, 2, 3], 20, temperature=3.0, top_k=1, seed=1)) == list(
        generate(model, [1, 2, 3], 20, temperature=0)
    )


def test_generate_stops_at_a_stop_id_without_yielding_it():
    model = randomize(make_model("gpt2"), seed=4)
    greedy = list(generate(model, [4, 5, 6], 10, temperature=0))
    first_stop = next(i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i])  # some tokens, then the stop
    stop = greedy[first_stop]
    assert list(generate(model, [4, 5, 6], 10, temperature=0, stop_ids=[stop])) == greedy[:first_stop]
    assert list(generate(model, [4, 5, 6], 10, temperature=0, stop_ids=(greedy[0], 96))) == []
    never_drawn = [s for s in range(97) if s not in greedy]
    assert list(generate(model, [4, 5, 6], 10, temperature=0, stop_ids=never_drawn)) == greedy
    assert list(generate(model, [4, 5, 6], 0)) == []


@pytest.mark.parametrize(
    "prompt, max_new_tokens, message",
    [
        ([], 5, "prompt is empty"),
        ([1, 97, 2], 5, r"\[97\] are outside the vocabulary \[0, 97\)"),
        ([-1], 5, r"\[-1\] are outside"),
        ([1] * 321, 5, r"the prompt has 321 tokens but the model sees at most context_length=320"),
        ([1], -1, "max_new_tokens must be a non-negative integer"),
    ],
)
def test_generate_rejects_bad_input_when_called(prompt, max_new_tokens, message):
    with pytest.raises(ValueError, match=message):
        generate(make_model("gpt2"), prompt, max_new_tokens)  # no need to ask for a first token


def test_generate_refuses_text_in_place_of_ids():
    with pytest.raises(ValueError, match=r"not text: pass tokenizer.encode\(text\)"):
        generate(make_model("gpt2"), "hello", 5)


def test_generate_batch_equals_generate_per_prompt():
    model = randomize(make_model("llama", seed=3), seed=3)
    prompts = [[5, 6, 7, 8], [9, 3, 1, 4], [2, 2, 2, 2]]
    stop = {int(mx.argmax(model(mx.array([prompts[0]]))[0, -1]))}  # the first prompt stops at once
    batch = generate_batch(model, prompts, 6, stop_ids=stop)
    for prompt, got in zip(prompts, batch):
        expected = list(generate(model, prompt, 6, temperature=0, stop_ids=stop))
        assert got == expected
    assert batch[0] == [] and len(batch[1]) == 6
    sampler = make_sampler(temperature=1.0)
    drawn = generate_batch(model, prompts, 6, sampler=sampler, key=mx.random.key(1))
    assert drawn == generate_batch(model, prompts, 6, sampler=sampler, key=mx.random.key(1))


@pytest.mark.parametrize("prompts, n, message", [([], 5, "one or more prompts of one length"),
                                                 ([[1, 2], [3]], 5, "one length"),
                                                 ([[1] * 300], 30, "exceed context_length=320")])
def test_generate_batch_refuses_what_it_cannot_do(prompts, n, message):
    with pytest.raises(ValueError, match=message):
        generate_batch(make_model("gpt2"), prompts, n)


# --- parity with mlx-lm's cached decoding, same weights --------------------------------------------
# Different kernels round differently (MLX's CUDA backend runs float32 products in TF32), so logits are
# compared within the shared tolerance and greedy tokens with assert_greedy_tokens_agree.

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
    assert mx.abs(theirs_all).max().item() > 1.0  # the random weights give non-trivial logits
    assert_close(ours_all, theirs_all, what="cached logits, ours vs mlx-lm")
    assert_close(theirs_all, theirs(ids), what="mlx-lm's cached vs full logits")  # both equal full recomputation


@pytest.mark.parametrize("prompt_length", [20, 240])  # 240 + 40 crosses the 256-position chunk of both caches
def test_greedy_generation_matches_mlx_lm_generate_step(model_pair, prompt_length):
    from mlx_lm.generate import generate_step

    ours, theirs = model_pair
    prompt = mx.random.randint(0, 300, (prompt_length,), key=mx.random.key(6)).tolist()
    steps = list(generate_step(mx.array(prompt), theirs, max_tokens=40))  # (token, log-probabilities) pairs
    expected, logprobs = [int(token) for token, _ in steps], [lp for _, lp in steps]  # log-probs = logits − constant
    assert_greedy_tokens_agree(list(generate(ours, prompt, 40, temperature=0)), expected, logprobs)


# --- streaming text ------------------------------------------------------------------------------


class ByteTokenizer:
    """A stand-in tokenizer: token i is the single byte i (enough for ``stream_text``, which only
    needs ``decode_bytes``). Real byte-level BPE tokens split characters the same way."""

    def decode_bytes(self, ids: list[int]) -> bytes:
        return bytes(ids)


def test_stream_text_never_yields_half_a_character():
    text = "héllo 🙂 世界!"
    ids = list(text.encode("utf-8"))  # 🙂 is 4 bytes, 世 and 界 3 each: many tokens end mid-character
    pieces = list(stream_text(ids, ByteTokenizer()))
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "🙂" in pieces and "世" in pieces  # each multi-byte character arrives whole
    # naive per-token decoding is what goes wrong
    assert "\ufffd" in "".join(bytes([i]).decode("utf-8", errors="replace") for i in ids)


def test_stream_text_flushes_an_unfinished_character_at_the_end():
    ids = list("ok".encode()) + list("🙂".encode())[:2]  # the stream stops mid-character
    assert list(stream_text(ids, ByteTokenizer())) == ["o", "k", "\ufffd"]


def test_stream_text_is_lazy():
    consumed = []

    def ids():
        for i in b"ab":
            consumed.append(i)
            yield i

    stream = stream_text(ids(), ByteTokenizer())
    assert next(stream) == "a" and consumed == [ord("a")]


def test_stream_text_with_the_gpt2_tokenizer_keeps_characters_whole():
    import mlxllm.data
    from mlxllm.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_gpt2_files(mlxllm.data.get_path("gpt2-vocab"), mlxllm.data.get_path("gpt2-merges"))
    text = "MLX 🦙 猫が座った"
    ids = tokenizer.encode(text)
    pieces_of_tokens = [tokenizer.decode_bytes([i]) for i in ids]
    assert b"\xf0\x9f" in pieces_of_tokens[2] and len(ids) > len(text)  # GPT-2 splits 🦙 and 猫 across tokens
    pieces = list(stream_text(ids, tokenizer))
    assert "".join(pieces) == text and not any("\ufffd" in piece for piece in pieces)
    assert "🦙" in pieces and "猫" in pieces
