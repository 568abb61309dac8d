"""Part 4 — Generation: turn next-token logits into text, one sampled token at a time.

A sampler is built once from its settings (validated once, as mlx-lm's ``make_sampler`` does) and
the decode loop just calls it: prefill the prompt into the KV cache, then feed each choice back in.
"""

import codecs
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import mlx.core as mx

from mlxllm.attention import KVCache, StaticKVCache
from mlxllm.model import TransformerLM

# Temperatures below this are greedy decoding (argmax): dividing by a tiny temperature would overflow
# the logits to ±inf, and the limit T → 0 of softmax(logits / T) is the argmax anyway.
GREEDY_TEMPERATURE = 1e-5

Sampler = Callable[[mx.array, mx.array | None], mx.array]  # (logits (..., V), key or None) → ids (...)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick the next token: temperature, then top-k, top-p and min-p filters. Built in Chapter 5.

    Checked once, when it is made; ``temperature < GREEDY_TEMPERATURE`` (0 included) is greedy decoding.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be >= 0 and finite (0 means greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")
        m = self.min_p
        if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Real) or not 0.0 <= m <= 1.0):
            raise ValueError(f"min_p must be in [0, 1], got {m!r}")

    @property
    def greedy(self) -> bool:
        """True when sampling is argmax: the temperature is (practically) zero."""
        return self.temperature < GREEDY_TEMPERATURE

    def __call__(self, logits: mx.array, key: mx.array | None = None) -> mx.array:
        """Pick one id per row of (..., V) logits: argmax when greedy, else a draw from ``filter(logits)``."""
        if self.greedy:
            return mx.argmax(logits, axis=-1)
        return mx.random.categorical(self.filter(logits), axis=-1, key=key)

    def filter(self, logits: mx.array) -> mx.array:
        """The logits the draw is made from: divided by the temperature, dropped tokens set to −inf.

        Order: temperature, then keep the top_k most likely, then the smallest set of most likely tokens
        whose probability reaches top_p, then drop tokens below min_p × the most likely one's probability.
        """
        if self.greedy:
            raise ValueError(f"temperature {self.temperature} (< {GREEDY_TEMPERATURE}) is greedy decoding "
                             "(argmax), which has no distribution to return")
        logits = logits.astype(mx.float32) / self.temperature  # (..., V)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth_largest = mx.partition(logits, -self.top_k, axis=-1)[..., -self.top_k, None]  # (..., 1)
            logits = mx.where(logits >= kth_largest, logits, -mx.inf)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_logits = mx.sort(logits, axis=-1)[..., ::-1]  # most likely first
            sorted_probs = mx.softmax(sorted_logits, axis=-1)
            # keep a token while the tokens before it have not yet reached top_p (the first is always kept)
            n_keep = ((mx.cumsum(sorted_probs, axis=-1) - sorted_probs) < self.top_p).sum(axis=-1, keepdims=True)
            threshold = mx.take_along_axis(sorted_logits, n_keep - 1, axis=-1)  # the least likely kept logit
            logits = mx.where(logits >= threshold, logits, -mx.inf)
        if self.min_p is not None and self.min_p > 0.0:
            log_threshold = logits.max(axis=-1, keepdims=True) + math.log(self.min_p)
            logits = mx.where(logits >= log_threshold, logits, -mx.inf)
        return logits


def sampling_logits(logits: mx.array, *, temperature: float = 1.0, top_k: int | None = None,
                    top_p: float | None = None, min_p: float | None = None) -> mx.array:
    """The filtered logits ``sample`` draws from (``softmax`` of them is the distribution). Built in Chapter 5."""
    return SamplingConfig(temperature, top_k, top_p, min_p).filter(logits)


def make_sampler(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> Sampler:
    """Build ``sampler(logits, key) → ids`` once, arguments checked here and not per token. Built in Chapter 5.

    Greedy (argmax) below ``GREEDY_TEMPERATURE``; otherwise a categorical draw from the filtered logits,
    with ``key`` (``mx.random.key(seed)``) or, when it is None, MLX's global random state. The sampler is
    the ``SamplingConfig`` itself: hashable, so ``generate`` keeps one compiled decode loop per sampler.
    """
    return SamplingConfig(temperature, top_k, top_p, min_p)


def sample(logits: mx.array, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, key: mx.array | None = None) -> mx.array:
    """Draw one token id per row of (B, V) logits (or (V,) → scalar): ``make_sampler(...)(logits, key)``.

    Pass ``key`` (``mx.random.key(seed)``) for reproducible draws. Built in Chapter 5.
    """
    return make_sampler(temperature, top_k, top_p, min_p)(logits, key)


_generation_streams: dict[str, mx.Stream] = {}


def _generation_stream() -> mx.Stream:
    """Decoding's own queue on the current default device (made on first use, so ``mx.set_default_device``
    after import is respected): other work on the default stream cannot delay it."""
    device = mx.default_device()
    if str(device) not in _generation_streams:
        _generation_streams[str(device)] = mx.new_thread_local_stream(device)
    return _generation_streams[str(device)]

# Tokens per compiled decode call: one call runs DECODE_BLOCK steps, sampling included, so the host's
# cost of building and launching a token's work is paid once per block. Chapter 5 and
# benchmarks/README.md say what it buys: nothing measurable on the CPU, and on an H100 not enough to
# offset the masked attention over the fixed-size cache.
DECODE_BLOCK = 8


# Decode with compiled blocks of steps over a StaticKVCache (True) or with the plain KVCache path of Chapter 3
# (False); both give the same tokens. The benchmarks time both (benchmarks/bench_generate.py).
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
    compiled: bool = True,
) -> Iterator[int]:
    """Yield new token ids one at a time: prefill the prompt once, then decode with the KV cache.

    Sampling comes from the keywords or from a prebuilt ``sampler=make_sampler(...)`` (any other sampler
    must be mx operations only: it runs inside ``mx.compile``). Stops after ``max_new_tokens`` or when a
    ``stop_ids`` token is drawn (it is not yielded). Generation may run past
    ``model.config.context_length``: the model then sees the last context_length tokens, as nanoGPT's
    sampler does. ``seed`` or ``key`` make sampling reproducible; without them the key is drawn from MLX's
    global random state (so ``mx.random.seed`` does too). Arguments are checked when ``generate`` is
    called, before the first token is asked for. ``compiled=False`` decodes through the plain ``KVCache``
    path (the compiled blocks give the same tokens). Built in Chapter 5.
    """
    if isinstance(prompt_ids, (str, bytes)):
        raise ValueError("prompt_ids must be token ids, not text: pass tokenizer.encode(text)")
    prompt = [int(i) for i in prompt_ids]
    vocab_size, context_length = model.config.vocab_size, model.config.context_length
    if sampler is None:
        sampler = make_sampler(temperature, top_k, top_p, min_p)
    elif SamplingConfig(temperature, top_k, top_p, min_p) != SamplingConfig():
        raise ValueError("pass either sampler= or the sampling keywords (temperature, top_k, top_p, min_p), not both")
    if not prompt:
        raise ValueError("the prompt is empty: give at least one token id (e.g. a start or newline token)")
    if bad := [i for i in prompt if not 0 <= i < vocab_size]:
        raise ValueError(f"prompt ids {bad[:5]} are outside the vocabulary [0, {vocab_size})")
    if len(prompt) > context_length:
        raise ValueError(f"the prompt has {len(prompt)} tokens but the model sees at most context_length="
                         f"{context_length}; shorten the prompt (keep its last {context_length} tokens)")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if key is None:  # one draw from the global state; every token's key is then split from this one
        key = mx.random.key(seed) if seed is not None else mx.random.randint(0, 2**31 - 1, (2,)).astype(mx.uint32)
    stop = set(int(i) for i in stop_ids)
    return _decode(model, prompt, max_new_tokens, sampler, stop, key, compiled)


def _decode(model: TransformerLM, prompt: list[int], max_new_tokens: int, sampler: Sampler, stop: set[int],
            key: mx.array, compiled: bool = True) -> Iterator[int]:
    """The generator behind ``generate``, for arguments already checked.

    The prompt goes through the plain path (``KVCache``). After it, tokens come in chunks: a compiled block
    of ``DECODE_BLOCK`` steps over a ``StaticKVCache`` (one step when fewer positions are left in the
    context; the storage grows by ``KVCache.step`` positions when full, one retrace per size). The next
    chunk is queued before the current one is read. Past the context the window slides: each new token is
    predicted by a fresh forward pass over the last context_length tokens (a re-prefill). For RoPE models a
    rotating KV cache would avoid the re-prefill, at the price of keeping keys computed from tokens that
    have left the window. A block may compute a few tokens past a stop token or ``max_new_tokens``;
    they are never handed out.
    """
    if max_new_tokens == 0:
        return
    context_length = model.config.context_length
    # the compiled blocks have no dropout: a model left in training mode with dropout takes the plain path
    compiled = compiled and not (model.training and model.config.dropout > 0)
    history = list(prompt)  # every token handed out so far (prompt included), to rebuild a slid window

    def choose(logits: mx.array) -> mx.array:
        nonlocal key
        key, step_key = mx.random.split(key)
        return sampler(logits, step_key)  # (1,)

    def forward(ids: mx.array, cache) -> mx.array:
        """The plain path: (1, T) ids → the next token; only the last position goes through the LM head."""
        return choose(model.logits(model.hidden_states(ids, cache, check_ids=False)[:, -1, :]))

    # prefill: all but the last prompt token only need to leave their keys and values in the cache. Their
    # outputs are dropped, and MLX being lazy never computes the parts that only fed those outputs (the
    # last block's feed-forward, the final norm); the last token then goes through the usual step.
    cache, stream = model.make_cache(), _generation_stream()
    with mx.stream(stream):
        if len(prompt) > 1:
            model.hidden_states(mx.array([prompt[:-1]]), cache, check_ids=False)
        chunk = forward(mx.array([prompt[-1:]]), cache)  # (1,): the first new token
    mx.async_eval(chunk)
    cached = len(prompt)  # positions held in the cache: every token so far but the chunk's last
    if compiled:
        caches = [StaticKVCache.from_cache(c) for c in cache]  # takes over the storage: drop the old holders
        keys, values, offset, cache = [c.keys for c in caches], [c.values for c in caches], caches[0].offset, None

    def following(chunk: mx.array) -> mx.array:
        """The tokens after ``chunk`` (n,), which follows ``history``: a compiled block while the context has room."""
        nonlocal cached, cache, keys, values, offset, key
        with mx.stream(stream):
            if cached >= context_length:  # the window is full: the last context_length tokens, without a cache
                cache = keys = values = None  # never read again: let the storage go
                window = mx.concatenate([mx.array(history, dtype=chunk.dtype), chunk])[-context_length:]
                return forward(window[None], None)
            if not compiled:
                cached += 1
                return forward(chunk[None, -1:], cache)
            n = DECODE_BLOCK if context_length - cached >= DECODE_BLOCK else 1
            if cached + n > keys[0].shape[2]:  # full: one more chunk of empty positions
                grown = [StaticKVCache(k, v, offset).grown(KVCache.step) for k, v in zip(keys, values)]
                keys, values = [c.keys for c in grown], [c.values for c in grown]
            tokens, keys, values, offset, key = _decode_block(model, sampler, n)(chunk[-1:], offset, keys, values, key)
            cached += n
            return tokens

    handed_out = 0
    while True:
        upcoming = following(chunk) if handed_out + chunk.size < max_new_tokens else None
        if upcoming is not None:
            mx.async_eval(upcoming)  # queued before this chunk is read: the device never waits for Python
        for value in chunk.tolist():
            if value in stop:  # the stop token ends the answer and is not part of it
                return
            history.append(value)
            yield value
            handed_out += 1
            if handed_out == max_new_tokens:
                return
        chunk = upcoming


def _decode_one(model: TransformerLM) -> Callable:
    """One token through the model with ``StaticKVCache`` storage (a plain function, for ``mx.compile``).

    ``step(token (1,), offset (), keys, values) → (logits (1, V), keys, values, offset + 1)``.
    """

    def decode_one(token: mx.array, offset: mx.array, keys: list[mx.array], values: list[mx.array]):
        caches = [StaticKVCache(k, v, offset) for k, v in zip(keys, values)]
        x = model.token_embedding(token[:, None])  # (1, 1, C)
        if "position_embedding" in model:  # learned or sinusoidal: the table's row at `offset`
            x = x + mx.take(model.position_embedding(model.config.context_length), offset[None], axis=0)
        for block, cache in zip(model.blocks, caches):
            x = block(x, "causal", cache)  # (1, 1, C); the cache supplies the real mask
        logits = model.logits(model.norm(x)[:, -1, :])  # (1, V)
        return logits, [c.keys for c in caches], [c.values for c in caches], caches[0].offset

    return decode_one


def _decode_block(model: TransformerLM, sampler: Sampler, n: int) -> Callable:
    """``n`` decode steps, sampling included, as one compiled function; kept with the model per sampler.

    ``block(token (1,), offset, keys, values, key) → (tokens (n,), keys, values, offset + n, key)``: token i
    is fed back as the input of step i + 1, and each step splits its sampling key off ``key`` as the plain
    path does. The weights are inputs of the compiled function (``inputs=model``), so a model trained or
    updated later is seen as it is. A ``SamplingConfig`` sampler is hashable: its blocks are kept.
    """
    blocks = model.__dict__.setdefault("_mlxllm_decode_blocks", {})
    cacheable = isinstance(sampler, SamplingConfig)
    if cacheable and (block := blocks.get((sampler, n))) is not None:
        return block
    decode_one = _decode_one(model)

    def decode_block(token, offset, keys, values, key):
        tokens = []
        for _ in range(n):
            logits, keys, values, offset = decode_one(token, offset, keys, values)
            key, step_key = mx.random.split(key)
            token = sampler(logits, step_key)  # (1,)
            tokens.append(token)
        return mx.concatenate(tokens), keys, values, offset, key

    block = mx.compile(decode_block, inputs=model)
    if cacheable:
        blocks[(sampler, n)] = block  # kept with the model: compiled traces are reused across calls
    return block


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
