"""Generation (Chapter 5): turn next-token logits into text, one sampled token at a time.

A sampler is built once from its settings (validated once, as mlx-lm's ``make_sampler`` does) and
the decode loop just calls it: prefill the prompt into the KV cache, then feed each choice back in.
This is the plain loop of Chapters 3 and 5, and what ``generate`` runs; a compiled engine that
gives the same tokens faster lives apart, in ``mlxllm.fast`` (Chapter 10).
"""

import codecs
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import mlx.core as mx

from mlxllm.attention import KVCache
from mlxllm.config import check_seed
from mlxllm.model import TransformerLM

# Temperatures below this are greedy decoding (argmax): dividing by a tiny temperature would
# overflow the logits to ±inf, and the limit T → 0 of softmax(logits / T) is the argmax anyway.
GREEDY_TEMPERATURE = 1e-5

Sampler = Callable[[mx.array, mx.array | None], mx.array]  # (logits (..., V), key) → ids (...)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token: temperature, then top-k, top-p and min-p filters. Chapter 5.

    Checked once, when it is made; ``temperature < GREEDY_TEMPERATURE`` (0 included) is greedy.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        t, k, p, m = self.temperature, self.top_k, self.top_p, self.min_p
        if not _is_real(t) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be >= 0 and finite (0 means greedy), got {t!r}")
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {k!r}")
        if p is not None and (not _is_real(p) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        if m is not None and (not _is_real(m) or not 0.0 <= m <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {m!r}")

    @property
    def greedy(self) -> bool:
        """True when sampling is argmax: the temperature is (practically) zero."""
        return self.temperature < GREEDY_TEMPERATURE

    def __call__(self, logits: mx.array, key: mx.array | None = None) -> mx.array:
        """One id per row of (..., V) logits: argmax when greedy, else a draw from ``filter``."""
        if self.greedy:
            return mx.argmax(logits, axis=-1)
        return mx.random.categorical(self.filter(logits), axis=-1, key=key)

    def filter(self, logits: mx.array) -> mx.array:
        """The logits the draw is made from: divided by the temperature, dropped tokens at −inf.

        Order: temperature, then keep the top_k most likely, then the smallest set of most likely
        tokens whose probability reaches top_p, then drop tokens below min_p × the top probability.
        """
        if self.greedy:
            raise ValueError(f"temperature {self.temperature} (< {GREEDY_TEMPERATURE}) is greedy "
                             "decoding (argmax), which has no distribution to return")
        logits = logits.astype(mx.float32) / self.temperature  # (..., V)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = mx.partition(logits, -self.top_k, axis=-1)[..., -self.top_k, None]  # (..., 1)
            logits = mx.where(logits >= kth, logits, -mx.inf)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits = mx.sort(logits, axis=-1)[..., ::-1]  # most likely first
            sorted_probs = mx.softmax(sorted_logits, axis=-1)
            # keep a token while those before it have not yet reached top_p (the first is kept)
            before = mx.cumsum(sorted_probs, axis=-1) - sorted_probs
            n_keep = (before < self.top_p).sum(axis=-1, keepdims=True)
            threshold = mx.take_along_axis(sorted_logits, n_keep - 1, axis=-1)  # least likely kept
            logits = mx.where(logits >= threshold, logits, -mx.inf)
        if self.min_p is not None and self.min_p > 0.0:
            log_threshold = logits.max(axis=-1, keepdims=True) + math.log(self.min_p)
            logits = mx.where(logits >= log_threshold, logits, -mx.inf)
        return logits


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def sampling_logits(logits: mx.array, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, min_p: float | None = None) -> mx.array:
    """The filtered logits ``sample`` draws from (their softmax is the distribution). Chapter 5."""
    return SamplingConfig(temperature, top_k, top_p, min_p).filter(logits)


def make_sampler(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> Sampler:
    """Build ``sampler(logits, key) → ids`` once, its settings checked here. Chapter 5.

    Greedy (argmax) below ``GREEDY_TEMPERATURE``; otherwise a categorical draw from the filtered
    logits with ``key`` (``mx.random.key(seed)``), or MLX's global random state when it is None.
    """
    return SamplingConfig(temperature, top_k, top_p, min_p)


def sample(logits: mx.array, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, min_p: float | None = None,
           key: mx.array | None = None) -> mx.array:
    """Draw one id per row of (B, V) logits (or (V,) → a scalar). Chapter 5.

    ``make_sampler(...)(logits, key)``; pass ``key`` (``mx.random.key(seed)``) to reproduce draws.
    """
    return make_sampler(temperature, top_k, top_p, min_p)(logits, key)


# ---------------------------------------------------------------------------------------------
# The requests generate accepts, checked once.


@dataclass
class Request:
    """A ``generate`` call's arguments, checked: what every decode loop starts from. Chapter 5."""

    prompt: list[int]
    max_new_tokens: int
    sampler: Sampler
    key: mx.array  # every token's key is split from this one (unused when greedy)
    stop: set[int]

    @property
    def greedy(self) -> bool:
        """The sampler is argmax: no random key is split per token."""
        return isinstance(self.sampler, SamplingConfig) and self.sampler.greedy


def make_request(model: TransformerLM, prompt_ids: Iterable[int], max_new_tokens: int,
                 sampler: Sampler, seed: int | None = None, key: mx.array | None = None,
                 stop_ids: Iterable[int] = ()) -> Request:
    """Check a generation's arguments against ``model`` before any work; a ValueError says what
    is wrong. ``seed`` or ``key`` fix the draws; without either one key is drawn from MLX's global
    random state (so ``mx.random.seed`` fixes them too). Chapter 5."""
    if isinstance(prompt_ids, (str, bytes)):
        raise ValueError("prompt_ids must be token ids, not text: pass tokenizer.encode(text)")
    prompt = [int(i) for i in prompt_ids]
    vocab_size, context_length = model.config.vocab_size, model.config.context_length
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token id (e.g. a start or "
                         "newline token)")
    if bad := [i for i in prompt if not 0 <= i < vocab_size]:
        raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    if len(prompt) > context_length:
        raise ValueError(f"the prompt has {len(prompt)} tokens but the model sees at most "
                         f"context_length={context_length}; shorten the prompt (keep its last "
                         f"{context_length} tokens)")
    if (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int)
            or max_new_tokens < 0):
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if key is None:
        key = mx.random.key(check_seed(seed)) if seed is not None else \
            mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
    return Request(prompt, max_new_tokens, sampler, key, {int(i) for i in stop_ids})


def sampler_from(sampler: Sampler | None, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None) -> Sampler:
    """``sampler``, or one made from the keywords; both given → a ValueError."""
    if sampler is None:
        return make_sampler(temperature, top_k, top_p, min_p)
    if SamplingConfig(temperature, top_k, top_p, min_p) != SamplingConfig():
        raise ValueError("pass either sampler= or the sampling keywords (temperature, top_k, "
                         "top_p, min_p), not both")
    return sampler


# ---------------------------------------------------------------------------------------------
# The decode loop.


_generation_streams: dict[str, mx.Stream] = {}


def generation_stream() -> mx.Stream:
    """Decoding's own queue on the current default device (made on first use, so
    ``mx.set_default_device`` after import is respected): other work cannot delay it."""
    device = mx.default_device()
    if str(device) not in _generation_streams:
        _generation_streams[str(device)] = mx.new_thread_local_stream(device)
    return _generation_streams[str(device)]


def generate(
    model: TransformerLM,
    prompt_ids: Iterable[int],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    sampler: Sampler | None = None,
    seed: int | None = None,
    key: mx.array | None = None,
    stop_ids: Iterable[int] = (),
) -> Iterator[int]:
    """Yield new token ids one at a time: prefill the prompt once, then decode with the KV cache.

    Sampling comes from the keywords or from a prebuilt ``sampler=make_sampler(...)``. Stops after
    ``max_new_tokens`` or when a ``stop_ids`` token is drawn (it is not yielded). Past
    ``model.config.context_length`` the model sees the last context_length tokens, as nanoGPT's
    sampler does. ``seed`` or ``key`` make sampling reproducible. Arguments are checked when
    ``generate`` is called, before the first token is asked for. Built in Chapter 5.
    """
    sampler = sampler_from(sampler, temperature, top_k, top_p, min_p)
    request = make_request(model, prompt_ids, max_new_tokens, sampler, seed, key, stop_ids)
    return decode(model, request)


def decode(model: TransformerLM, request: Request) -> Iterator[int]:
    """The generator behind ``generate``: the prompt fills the ``KVCache`` in one pass, then each
    new token is one model call on one token. Past the context the window slides: each token is
    predicted by a fresh pass over the last context_length tokens (a re-prefill). Chapter 5."""
    if request.max_new_tokens == 0:
        return
    key, stream, cache = request.key, generation_stream(), model.make_cache()
    context_length = model.config.context_length
    with mx.stream(stream):
        token, key = next_token(model, prefill(model, request.prompt, cache), cache, request, key)
    history = list(request.prompt)  # every token so far, to rebuild a slid window

    def following(token: mx.array) -> mx.array:
        nonlocal key
        with mx.stream(stream):
            if cache[0].offset < context_length:  # (1, 1): one token through the cache
                token, key = next_token(model, token[None], cache, request, key)
            else:  # the window is full: slide it
                ids = window(history, token, context_length)
                token, key = next_token(model, ids, None, request, key)
        return token

    yield from pipelined(token, following, request, history)


def next_token(model: TransformerLM, ids: mx.array, cache: list[KVCache] | None,
               request: Request, key: mx.array) -> tuple[mx.array, mx.array]:
    """(1, T) ids → (the token after them (1,), the next key); only the last position reaches the
    LM head, and a greedy sampler takes no key."""
    logits = model.logits(model.hidden_states(ids, cache, check_ids=False)[:, -1, :])  # (1, V)
    if request.greedy:
        return request.sampler(logits, None), key
    key, step_key = mx.random.split(key)
    return request.sampler(logits, step_key), key


def prefill(model: TransformerLM, prompt: list[int], cache: list[KVCache]) -> mx.array:
    """Run all but the prompt's last token into ``cache``; return that last token as (1, 1) ids.

    The other tokens only leave their keys and values: their outputs are dropped, and MLX, being
    lazy, never computes what only fed them (the last block's feed-forward, the final norm).
    """
    if len(prompt) > 1:
        model.hidden_states(mx.array([prompt[:-1]]), cache, check_ids=False)
    return mx.array([prompt[-1:]])


def window(history: list[int], token: mx.array, context_length: int) -> mx.array:
    """(1, ≤ context_length) ids: the last tokens of ``history`` followed by ``token`` (1,)."""
    ids = mx.concatenate([mx.array(history, dtype=token.dtype), token])
    return ids[-context_length:][None]


def pipelined(first: mx.array, following: Callable[[mx.array], mx.array], request: Request,
              history: list[int]) -> Iterator[int]:
    """Yield the tokens ``first``, ``following(first)``, ... (each (1,)), appended to ``history``.

    Each token is queued (``mx.async_eval``) before the one before it is read, so the device never
    waits for Python; a stop token ends the stream and is not yielded. Chapter 5.
    """
    token = first
    for n in range(1, request.max_new_tokens + 1):
        upcoming = following(token) if n < request.max_new_tokens else None
        mx.async_eval(token if upcoming is None else upcoming)  # queued before this one is read
        value = token.item()
        if value in request.stop:  # the stop token ends the answer and is not part of it
            return
        history.append(value)
        yield value
        token = upcoming


def generate_batch(model: TransformerLM, prompts: list[list[int]], max_new_tokens: int, *,
                   sampler: Sampler | None = None, key: mx.array | None = None,
                   stop_ids: Iterable[int] = ()) -> list[list[int]]:
    """Continuations of prompts of one length, decoded together through one KV cache. Chapter 9.

    Each row stops at its first stop id (not included) or after ``max_new_tokens``; ``sampler``
    defaults to greedy. Row i's tokens equal ``generate(model, prompts[i], ...)``'s when greedy.
    """
    sampler = make_sampler(temperature=0) if sampler is None else sampler
    if not prompts or len({len(p) for p in prompts}) != 1:
        raise ValueError("generate_batch needs one or more prompts of one length; group them by "
                         "length first")
    requests = [make_request(model, p, max_new_tokens, sampler, key=key) for p in prompts]
    length, context_length = len(prompts[0]), model.config.context_length
    if length + max_new_tokens - 1 > context_length:
        raise ValueError(f"{length} prompt tokens + {max_new_tokens} new ones exceed "
                         f"context_length={context_length}; ask for at most "
                         f"{context_length - length + 1} tokens")
    key, greedy = requests[0].key, requests[0].greedy
    stop = mx.array(sorted({int(i) for i in stop_ids}) or [-1])
    cache, rows = model.make_cache(), mx.array(prompts)  # (B, T)
    logits = model.logits(model.hidden_states(rows, cache, check_ids=False)[:, -1, :])  # (B, V)
    tokens, finished = [], mx.zeros((len(prompts),), dtype=mx.bool_)
    for _ in range(max_new_tokens):
        if not greedy:
            key, step_key = mx.random.split(key)
        token = sampler(logits, None if greedy else step_key).astype(mx.int32)  # (B,)
        finished = finished | (token[:, None] == stop[None]).any(axis=-1)
        tokens.append(mx.where(finished, -1, token))
        if finished.all().item():
            break
        hidden = model.hidden_states(token[:, None], cache, check_ids=False)  # (B, 1, C)
        logits = model.logits(hidden[:, -1, :])
    columns = mx.stack(tokens, axis=1).tolist() if tokens else [[] for _ in prompts]
    return [row[: (row + [-1]).index(-1)] for row in columns]


def stream_text(token_ids: Iterable[int], tokenizer) -> Iterator[str]:
    """Turn a stream of ids into text pieces, holding bytes back until they form whole characters.

    A byte-level token can end in the middle of a character (emoji, CJK); printing each token's
    own decode would show U+FFFD. ``tokenizer`` needs ``decode_bytes(ids)``. Built in Chapter 5.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in token_ids:
        text = decoder.decode(tokenizer.decode_bytes([token_id]))
        if text:
            yield text
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
