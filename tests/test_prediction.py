"""Next-token prediction: probabilities, cross-entropy, bits per byte, sampling on hand-made
distributions with exact numbers, generate (greedy = argmax with full recompute, errors, stop ids)
and UTF-8-safe streaming."""

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlxllm import (
    ModelConfig,
    TransformerLM,
    bits_per_byte,
    cross_entropy,
    generate,
    probabilities,
    sample,
    sampling_logits,
    stream_text,
)


def make_model(kind: str, seed: int = 0, **overrides) -> TransformerLM:
    mx.random.seed(seed)
    if kind == "gpt2":
        config = ModelConfig.gpt2(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4, **overrides)
    else:
        config = ModelConfig.llama(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4, n_kv_heads=2,
                                   ffn_dims=64, **overrides)
    model = TransformerLM(config)
    mx.eval(model.parameters())
    return model


# --- probabilities and the loss ------------------------------------------------------------------


def test_probabilities_are_the_softmax_over_the_vocabulary():
    logits = mx.array([[[1.0, 2.0, 3.0], [0.0, 0.0, math.log(2.0)]]])
    probs = probabilities(logits)
    e = np.exp([1.0, 2.0, 3.0])
    np.testing.assert_allclose(np.array(probs[0, 0]), e / e.sum(), rtol=1e-6)
    np.testing.assert_allclose(np.array(probs[0, 1]), [0.25, 0.25, 0.5], rtol=1e-6)


def test_cross_entropy_equals_the_hand_formula_and_nn_losses_with_mean_reduction():
    logits = mx.random.normal((2, 5, 11), key=mx.random.key(0)) * 3
    targets = mx.random.randint(0, 11, (2, 5), key=mx.random.key(1))
    lg, tg = np.array(logits, dtype=np.float64), np.array(targets)
    by_hand = np.mean([
        math.log(sum(math.exp(v) for v in lg[b, t])) - lg[b, t, tg[b, t]] for b in range(2) for t in range(5)
    ])
    ours = cross_entropy(logits, targets).item()
    assert abs(ours - by_hand) < 1e-5
    assert abs(nn.losses.cross_entropy(logits, targets, reduction="mean").item() - by_hand) < 1e-5
    # the trap: nn.losses' default reduction is "none", one loss per position
    assert nn.losses.cross_entropy(logits, targets).shape == (2, 5)


def test_cross_entropy_of_a_uniform_prediction_is_log_vocab():
    assert abs(cross_entropy(mx.zeros((3, 4, 50)), mx.zeros((3, 4), dtype=mx.int32)).item() - math.log(50)) < 1e-6


def test_cross_entropy_z_loss_adds_the_squared_log_normaliser():
    logits = mx.array([[[0.0, math.log(3.0)], [1.0, 1.0]]])  # log Z = log 4 and 1 + log 2
    targets = mx.array([[1, 0]])
    plain = (math.log(4) - math.log(3) + (1 + math.log(2)) - 1) / 2
    z_term = 0.1 * (math.log(4) ** 2 + (1 + math.log(2)) ** 2) / 2
    assert abs(cross_entropy(logits, targets).item() - plain) < 1e-6
    assert abs(cross_entropy(logits, targets, z_loss=0.1).item() - (plain + z_term)) < 1e-6


def test_cross_entropy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"logits .* and targets .* disagree"):
        cross_entropy(mx.zeros((2, 5, 11)), mx.zeros((2, 4), dtype=mx.int32))


def test_bits_per_byte_converts_nats_per_token():
    assert abs(bits_per_byte(math.log(2), n_tokens=10, n_bytes=10) - 1.0) < 1e-12  # 1 bit per 1-byte token
    # 2 nats/token, 4 bytes per token on average: 2 · 100 / 400 / ln 2
    assert abs(bits_per_byte(2.0, n_tokens=100, n_bytes=400) - 0.7213475204444817) < 1e-12


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
        next(generate(make_model("gpt2"), [1, 2], 3, **kwargs))


# --- generate ------------------------------------------------------------------------------------


def argmax_loop_full_recompute(model: TransformerLM, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(mx.argmax(model(mx.array([ids]))[0, -1]).item()))
    return ids[len(prompt) :]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_generate_with_cache_equals_argmax_with_full_recompute(kind):
    model = make_model(kind)
    prompt = np.random.default_rng(0).integers(0, 97, 250).tolist()  # 250 + 12 crosses the 256 cache chunk
    assert list(generate(model, prompt, 12, temperature=0)) == argmax_loop_full_recompute(model, prompt, 12)


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


def test_generate_stops_after_yielding_a_stop_id():
    model = make_model("gpt2")
    greedy = list(generate(model, [4, 5, 6], 10, temperature=0))
    stop = greedy[3]
    first_stop = greedy.index(stop)
    assert list(generate(model, [4, 5, 6], 10, temperature=0, stop_ids=[stop])) == greedy[: first_stop + 1]
    assert list(generate(model, [4, 5, 6], 0)) == []


@pytest.mark.parametrize(
    "prompt, max_new_tokens, message",
    [
        ([], 5, "prompt is empty"),
        ([1, 97, 2], 5, r"\[97\] are outside the vocabulary \[0, 97\)"),
        ([-1], 5, r"\[-1\] are outside"),
        ([1] * 300, 21, r"prompt \(300\) \+ max_new_tokens \(21\) exceeds context_length=320"),
        ([1], -1, "max_new_tokens must be a non-negative integer"),
    ],
)
def test_generate_rejects_bad_input_when_called(prompt, max_new_tokens, message):
    with pytest.raises(ValueError, match=message):
        generate(make_model("gpt2"), prompt, max_new_tokens)  # no need to ask for a first token


def test_generate_refuses_text_in_place_of_ids():
    with pytest.raises(ValueError, match=r"not text: pass tokenizer.encode\(text\)"):
        generate(make_model("gpt2"), "hello", 5)


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
