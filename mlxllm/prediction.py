"""Part 4 — Next-token prediction: logits → probabilities, the loss, sampling and generation.

The logits at position t are the model's guess for token t+1: training compares them with the input
shifted by one, generation samples from the last position and feeds the choice back in.
"""

import codecs
import math
from collections.abc import Iterable, Iterator

import mlx.core as mx

from mlxllm.model import TransformerLM


def probabilities(logits: mx.array) -> mx.array:
    """Softmax over the vocabulary, in float32 (B, T, V) → (B, T, V). Built in Chapter 5."""
    return mx.softmax(logits.astype(mx.float32), axis=-1)


def cross_entropy(logits: mx.array, targets: mx.array, z_loss: float = 0.0) -> mx.array:
    """Mean over positions of logsumexp(logits) − logit[target], in nats per token. Built in Chapter 5.

    ``z_loss > 0`` adds z_loss · mean(logsumexp²), which keeps the softmax normaliser log Z near 0
    (PaLM; Chapter 8). Unlike ``nn.losses.cross_entropy`` the default reduction is already the mean.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree: logits must be "
                         "targets.shape + (vocab_size,)")
    logits = logits.astype(mx.float32)
    log_z = mx.logsumexp(logits, axis=-1)  # (B, T)
    target_logits = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)  # (B, T)
    loss = (log_z - target_logits).mean()
    if z_loss:
        loss = loss + z_loss * (log_z**2).mean()
    return loss


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Nats per token → bits per byte of text, comparable across tokenizers. Built in Chapter 5."""
    return loss * n_tokens / n_bytes / math.log(2)


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, min_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")


def sampling_logits(
    logits: mx.array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
) -> mx.array:
    """The logits ``sample`` draws from: divided by the temperature, dropped tokens set to −inf.

    Order: temperature, then keep the top_k most likely, then the smallest set of most likely tokens
    whose probability reaches top_p, then drop tokens below min_p × the most likely one's probability.
    ``softmax`` of the result is the distribution plotted in Chapter 5. Needs temperature > 0.
    """
    _check_sampling(temperature, top_k, top_p, min_p)
    if temperature == 0:
        raise ValueError("temperature 0 is greedy decoding (argmax), which has no distribution to return")
    logits = logits.astype(mx.float32) / temperature  # (..., V)
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = mx.sort(logits, axis=-1)[..., -top_k, None]  # (..., 1)
        logits = mx.where(logits >= kth_largest, logits, -mx.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits = mx.sort(logits, axis=-1)[..., ::-1]  # most likely first
        sorted_probs = mx.softmax(sorted_logits, axis=-1)
        # keep a token while the tokens before it have not yet reached top_p (the first is always kept)
        n_keep = ((mx.cumsum(sorted_probs, axis=-1) - sorted_probs) < top_p).sum(axis=-1, keepdims=True)
        threshold = mx.take_along_axis(sorted_logits, n_keep - 1, axis=-1)  # the least likely kept logit
        logits = mx.where(logits >= threshold, logits, -mx.inf)
    if min_p is not None and min_p > 0.0:
        log_threshold = logits.max(axis=-1, keepdims=True) + math.log(min_p)
        logits = mx.where(logits >= log_threshold, logits, -mx.inf)
    return logits


def sample(
    logits: mx.array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    key: mx.array | None = None,
) -> mx.array:
    """Draw one token id per row of (B, V) logits (or (V,) → scalar). Built in Chapter 5.

    Temperature 0 is greedy (argmax); otherwise the draw is from ``softmax(sampling_logits(...))``.
    Pass ``key`` (``mx.random.key(seed)``) for reproducible draws.
    """
    _check_sampling(temperature, top_k, top_p, min_p)
    if temperature == 0:
        return mx.argmax(logits, axis=-1)
    logits = sampling_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    return mx.random.categorical(logits, axis=-1, key=key)


_generation_stream = mx.new_thread_local_stream(mx.default_device())


def generate(
    model: TransformerLM,
    prompt_ids: Iterable[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    seed: int | None = None,
    key: mx.array | None = None,
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield new token ids one at a time: prefill the prompt once, then decode with the KV cache.

    The next step is queued (``mx.async_eval``) before the current token is handed to the caller, so
    the model computes while the caller prints. Stops after ``max_new_tokens`` or at a ``stop_ids``
    token (which is yielded). Prompt + new tokens must fit in the context. ``seed`` or ``key`` make
    sampling reproducible (without them MLX's global random state is used). Arguments are checked
    when ``generate`` is called, before the first token is asked for. Built in Chapter 5.
    """
    if isinstance(prompt_ids, (str, bytes)):
        raise ValueError("prompt_ids must be token ids, not text: pass tokenizer.encode(text)")
    prompt = [int(i) for i in prompt_ids]
    vocab_size, context_length = model.config.vocab_size, model.config.context_length
    _check_sampling(temperature, top_k, top_p, min_p)
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token id (e.g. a start or newline token)")
    if bad := [i for i in prompt if not 0 <= i < vocab_size]:
        raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if len(prompt) + max_new_tokens > context_length:
        raise ValueError(f"prompt ({len(prompt)}) + max_new_tokens ({max_new_tokens}) exceeds context_length="
                         f"{context_length}; shorten the prompt or ask for fewer tokens")
    if key is None and seed is not None:
        key = mx.random.key(seed)
    stop = set(int(i) for i in stop_ids)
    return _decode(model, prompt, max_new_tokens, stop, key, dict(temperature=temperature, top_k=top_k, top_p=top_p,
                                                                  min_p=min_p))


def _decode(model: TransformerLM, prompt: list[int], max_new_tokens: int, stop: set[int], key: mx.array | None,
            sampling: dict) -> Iterator[int]:
    """The generator behind ``generate``, for arguments already checked."""
    if max_new_tokens == 0:
        return
    cache = model.make_cache()

    def step(ids: mx.array) -> mx.array:
        nonlocal key
        with mx.stream(_generation_stream):  # its own queue: other work on the default stream cannot delay it
            # only the last position predicts the next token: apply the LM head there alone
            logits = model.logits(model.hidden_states(ids, cache)[:, -1, :])  # (1, V)
            step_key = None
            if key is not None:
                key, step_key = mx.random.split(key)
            return sample(logits, **sampling, key=step_key)

    # prefill: all but the last prompt token only need to leave their keys and values in the cache. Their
    # outputs are dropped, and MLX being lazy never computes the parts that only fed those outputs (the
    # last block's feed-forward, the final norm); the last token then goes through the usual step.
    if len(prompt) > 1:
        with mx.stream(_generation_stream):
            model.hidden_states(mx.array([prompt[:-1]]), cache)
    token = step(mx.array([prompt[-1:]]))  # (1,)
    mx.async_eval(token)
    for n in range(max_new_tokens):
        if n + 1 < max_new_tokens:
            next_token = step(token[:, None])  # queue the next step before handing this token out
            mx.async_eval(next_token)
        value = token.item()
        yield value
        if value in stop:
            return
        if n + 1 < max_new_tokens:
            token = next_token


def stream_text(token_ids: Iterable[int], tokenizer) -> Iterator[str]:
    """Turn a stream of ids into text pieces, holding back bytes until they form whole UTF-8 characters.

    A byte-level token can end in the middle of a character (emoji, CJK); printing each token's own
    decode would show U+FFFD. ``tokenizer`` needs ``decode_bytes(ids)``. Built in Chapter 5.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        text = decoder.decode(tokenizer.decode_bytes([token_id]))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
