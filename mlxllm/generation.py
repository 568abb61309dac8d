"""Part 4 — Generation: turn next-token logits into text, one sampled token at a time.

A sampler is built once from its settings (validated once, as mlx-lm's ``make_sampler`` does) and
the decode loop just calls it: prefill the prompt into the KV cache, then feed each choice back in.
"""

import codecs
import copy
import itertools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.attention import KVCache, scaled_dot_product_attention
from mlxllm.block import SwiGLU, TransformerBlock
from mlxllm.embedding import RoPE
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

# Decode with compiled stages around each block's attention (True) or through the plain KVCache path of
# Chapter 3 (False); both give the same tokens. The benchmarks time both (benchmarks/bench_generate.py).
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
    path (the compiled step gives the same tokens). The compiled step keeps the model's weight arrays and
    sees new ones (``model.update``, ``load_weights``, an optimizer step); an array changed in place
    (``layer.weight[0] = 0``) is not seen: replace it instead. Built in Chapter 5.
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

    The prompt fills the ``KVCache`` in one pass; then each new token is one step (``_compiled_step``, over
    the keys and values moved into ``_JoinedCache`` buffers, or the plain model call when ``compiled`` is
    False), queued before the token before it is read, so the
    device never waits for Python. Past the context the window slides: each new token is predicted by a
    fresh forward pass over the last context_length tokens (a re-prefill). For RoPE models a rotating KV
    cache would avoid the re-prefill, at the price of keeping keys computed from tokens that have left
    the window.
    """
    if max_new_tokens == 0:
        return
    context_length = model.config.context_length
    # the compiled stages have no dropout: a model left in training mode with dropout takes the plain path
    step = _compiled_step(model, sampler) if compiled and not (model.training and model.config.dropout > 0) else None
    history = list(prompt)  # every token handed out so far (prompt included), to rebuild a slid window

    def forward(ids: mx.array, cache: list[KVCache] | None) -> mx.array:
        """The plain path: (1, T) ids → the next token (1,); only the last position goes through the LM head."""
        nonlocal key
        key, step_key = mx.random.split(key)
        return sampler(model.logits(model.hidden_states(ids, cache, check_ids=False)[:, -1, :]), step_key)

    # prefill: all but the last prompt token only need to leave their keys and values in the cache. Their
    # outputs are dropped, and MLX being lazy never computes the parts that only fed those outputs (the
    # last block's feed-forward, the final norm); the last token then goes through the usual step.
    cache, stream = model.make_cache(), _generation_stream()
    with mx.stream(stream):
        if len(prompt) > 1:
            model.hidden_states(mx.array([prompt[:-1]]), cache, check_ids=False)
        token = forward(mx.array([prompt[-1:]]), cache)  # (1,): the first new token

    def following(token: mx.array) -> mx.array:
        """The token after ``token`` (1,), which follows ``history``."""
        nonlocal cache, key
        with mx.stream(stream):
            if cache is not None and cache[0].offset >= context_length:
                cache = None  # the window is full from now on: let the KV storage go
            if cache is None:  # the last context_length tokens, without a cache
                window = mx.concatenate([mx.array(history, dtype=token.dtype), token])[-context_length:]
                return forward(window[None], None)
            if step is None:
                return forward(token[None], cache)
            if not isinstance(cache[0], _JoinedCache):  # the first step: keys and values into one buffer
                capacity = min(context_length, len(prompt) + max_new_tokens)  # the window slides after that
                cache = [_JoinedCache(layer_cache, capacity) for layer_cache in cache]
            token, key = step(token, cache, key)
            return token

    for n in range(1, max_new_tokens + 1):
        upcoming = following(token) if n < max_new_tokens else None
        mx.async_eval(token if upcoming is None else upcoming)  # queued before this token is read
        value = token.item()
        if value in stop:  # the stop token ends the answer and is not part of it
            return
        history.append(value)
        yield value
        token = upcoming


def _compiled_step(model: TransformerLM, sampler: Sampler) -> Callable:
    """One decode step through compiled stages: ``step(token (1,), cache, key) → (next token (1,), key)``.

    ``cache`` is one ``_JoinedCache`` per block. Attention over it changes shape every token, so it stays
    outside ``mx.compile`` (and on the fused one-query kernel), and so does the cache write (one static
    slice update of the token's keys and values together); the work between two
    attentions is one compiled function, traced once for its single shape: block i's output projection,
    residuals and feed-forward, then block i+1's norm, projections and RoPE (at a ``position`` array).
    The first stage starts at the embedding's output, the last ends with the head and the sampler. Each
    stage holds the weights as constants of its trace (``_WithWeights``) and is traced again when a
    ``generate`` call finds new weight arrays, so a model trained or changed later is seen as it is.
    A GPU runs these small steps as fast as the host can queue their operations, so each block has few:
    q, k, v are one matrix product, and so are SwiGLU's gate and up (``_JoinedLinear``); q and k are
    rotated in one elementwise kernel that passes v through (``_Rotation``), so k and v leave it side by
    side for one write; the token stays one (1, C) row; weights are transposed once (``_Transposed``).
    The stages are kept with the model, per module tree (LoRA, quantization); the last one per sampler.
    """
    modules = tuple(id(m) for _, m in model.named_modules())
    kept = model.__dict__.get("_mlxllm_decode")
    if kept is None or kept["modules"] != modules:  # first use, or LoRA / quantization changed the layers
        blocks = [_BlockDecode(block) for block in model.blocks]
        stages = [_WithWeights(blocks[0].enter, [blocks[0]])]
        for left, right in itertools.pairwise(blocks):  # leave one block, enter the next
            stages.append(_WithWeights(lambda x, h, out, position, left=left, right=right:
                                       right.enter(left.leave(x, h, out), position), [left, right]))
        kept = model.__dict__["_mlxllm_decode"] = {"modules": modules, "blocks": blocks, "stages": stages,
                                                   "heads": {}}
    for block in kept["blocks"]:
        block.refresh()  # the model's current weights, joined again where they changed
    for stage in kept["stages"]:
        stage.refresh()  # ... and listed once for this generate call
    head = kept["heads"].get(sampler) if isinstance(sampler, SamplingConfig) else None
    if head is None:
        last = kept["blocks"][-1]

        greedy = isinstance(sampler, SamplingConfig) and sampler.greedy  # argmax draws no key

        def choose(x: mx.array, h: mx.array, out: mx.array, key: mx.array) -> tuple[mx.array, mx.array]:
            x = model.norm(last.leave(x, h, out))  # (1, C)
            if greedy:
                return sampler(model.logits(x)), key
            key, step_key = mx.random.split(key)
            return sampler(model.logits(x), step_key), key  # (1,), the next key

        head = _WithWeights(choose, [last, model.norm, model.head if "head" in model else model.token_embedding])
        if isinstance(sampler, SamplingConfig):  # hashable: kept for the next generate call
            kept["heads"][sampler] = head
    else:
        head.refresh()
    stages = kept["stages"]

    def step(token: mx.array, cache: list["_JoinedCache"], key: mx.array) -> tuple[mx.array, mx.array]:
        offset = cache[0].offset
        position = mx.array(offset, dtype=mx.int32)  # one trace serves every position
        carried = (model.embed(token[None], offset).reshape(1, -1),)  # (1, C): one token, one row
        for stage, layer_cache in zip(stages, cache):
            x, h, q, kv = stage(*carried, position)
            k, v = layer_cache.update_and_fetch(kv)  # (1, H_kv, offset + 1, D) each
            carried = (x, h, scaled_dot_product_attention(q, k, v, mask=None))  # the newest query sees every key
        return head(*carried, key)

    return step


class _WithWeights:
    """``mx.compile(fun)`` over the current weights of ``modules``, which the trace holds as constants.

    ``mx.compile(fun, inputs=modules)`` would walk the module trees on every call, and weights passed as
    arguments are checked on every call; a decode step makes one call per block per token. So the
    arrays are listed once per ``generate`` call (``refresh``) and the function is traced again only
    when they changed (training, LoRA, a new dtype): the trace reads the arrays the modules hold.
    """

    def __init__(self, fun: Callable, parts: list["_BlockDecode | nn.Module"]):
        self.fun, self.parts, self.arrays, self.compiled = fun, parts, [], None
        self.refresh()

    def modules(self) -> list[nn.Module]:
        """The modules whose arrays ``fun`` reads: the models and blocks, and their joined layers."""
        found = []
        for part in self.parts:
            found += [part.block, *(j.layer for j in part.joined.values())] if isinstance(part, _BlockDecode) else [part]
        return found

    def refresh(self) -> None:
        """List the modules' current arrays (the blocks' joined layers are refreshed before, once each);
        new arrays mean a new trace."""
        arrays = [array for module in self.modules() for _, array in tree_flatten(module.parameters())]
        if len(arrays) != len(self.arrays) or any(a is not b for a, b in zip(arrays, self.arrays)):
            self.arrays = arrays
            # a new function each time: mx.compile keeps its traces per function object, so the old
            # trace and its constants (the old arrays) are not reused
            self.compiled = mx.compile(lambda *args: self.fun(*args))

    def __call__(self, *args):
        return self.compiled(*args)


class _BlockDecode:
    """One block's decode work before attention (``enter``) and after it (``leave``), for one new token."""

    def __init__(self, block: TransformerBlock):
        self.block = block
        attention, ffn = block.attention, block.ffn
        self.joined, self.transposed = {}, {}
        if _JoinedLinear.joinable([attention.q_proj, attention.k_proj, attention.v_proj]):
            self.joined["qkv"] = _JoinedLinear([attention.q_proj, attention.k_proj, attention.v_proj])
        if isinstance(ffn, SwiGLU) and _JoinedLinear.joinable([ffn.gate_proj, ffn.up_proj]):
            self.joined["gate_up"] = _JoinedLinear([ffn.gate_proj, ffn.up_proj])
        rope, n_qk = attention.rope, attention.n_heads + attention.n_kv_heads
        self.rotation = None if rope is None else _Rotation(rope, n_qk, n_qk + attention.n_kv_heads)

    def refresh(self) -> None:
        for layer in self.joined.values():
            layer.refresh()
        attention, ffn = self.block.attention, self.block.ffn
        self.transposed = {name: _Transposed.of(layer, self.transposed.get(name)) for name, layer in
                           (("o", attention.o_proj), ("down", getattr(ffn, "down_proj", None)))}

    # One token is one row: the stream stays (1, C) (a (1, 1, C) one costs a reshape around every matrix
    # product), and (1, C) ↔ (1, heads, 1, D) is a reshape with no transpose.

    def enter(self, x: mx.array, position: mx.array) -> tuple[mx.array, ...]:
        """x (1, C) → (x, h, q, kv): ``h`` what attention reads, q (1, H, 1, D), kv (1, 2 H_kv, 1, D)."""
        h = self.block.attention_input(x)  # (1, C)
        return (x, h, *self.heads(h, position))

    def heads(self, h: mx.array, position: mx.array) -> tuple[mx.array, mx.array]:
        """q (1, H, 1, D) of ``h``, and its keys then values as one array (1, 2 H_kv, 1, D), as
        ``_JoinedCache`` keeps them. With joined projections, q, k and v are one row of heads, rotated in
        one call (``_Rotation``): no copy is needed to put k and v side by side."""
        attention = self.block.attention
        if "qkv" in self.joined and not attention.qk_norm:
            qkv = self.joined["qkv"].transposed(h).reshape(1, -1, 1, attention.head_dim)  # (1, H + 2 H_kv, 1, D)
            if self.rotation is not None:
                qkv = self.rotation(qkv, position)
            q, kv = mx.split(qkv, [attention.n_heads], axis=1)
            return q, kv
        if "qkv" in self.joined:  # QK-norm between the projections and RoPE
            q, k, v = attention.heads(*(p[None] for p in self.joined["qkv"](h)), position)
        else:
            q, k, v = attention.project(h[None], position)
        return q, mx.concatenate([k, v], axis=1)

    def leave(self, x: mx.array, h: mx.array, out: mx.array) -> mx.array:
        """The rest of the block once attention returned ``out`` (1, H, 1, D): the next x (1, C)."""
        attention, ffn = self.block.attention, self.block.ffn
        down = self.transposed["down"]
        joined = (lambda n: down(ffn.gated(*self.joined["gate_up"](n)))) if "gate_up" in self.joined else None
        return self.block.residual(x, h, self.transposed["o"](out.reshape(1, -1)), joined)


class _Rotation:
    """RoPE of one token's q, k and v heads (1, H + 2 H_kv, 1, D) as one elementwise operation: the first
    ``n_rotated`` heads (q and k) turn by ``position`` × base^(-2i/D) as ``mx.fast.rope`` turns them, the
    rest (v) by angle 0. ``mx.compile`` makes it one kernel, and k and v leave it side by side, ready for
    one cache write. Built in Chapter 5.
    """

    def __init__(self, rope: RoPE, n_rotated: int, n_heads: int):
        self.half, self.traditional, self.n_heads = rope.head_dim // 2, rope.traditional, n_heads
        half, base = self.half, rope.base
        # base^(-2i/D) rounded to float32 as mx.fast.rope rounds it on each device (up to 16 ulps apart; an
        # angle, position × frequency, carries that error): the CPU's exp(-i · ln(base) / (D/2)) in float32
        # operations, the GPU kernels' exp2(-(i / (D/2)) · log2(base)), its float32 argument raised exactly
        on_cpu = mx.exp(mx.arange(0, -half, -1, dtype=mx.float32, stream=mx.cpu)
                        * mx.array(math.log(base) / half, mx.float32), stream=mx.cpu)
        exponent = -(mx.arange(half, dtype=mx.float32, stream=mx.cpu) / half) * mx.array(math.log2(base), mx.float32)
        on_gpu = mx.array([2.0 ** e for e in exponent.tolist()], mx.float32)
        rotated = (mx.arange(n_heads) < n_rotated)[:, None]  # (heads, 1): the q and k heads
        self.frequencies = {}
        for device, frequency in ((mx.DeviceType.cpu, on_cpu), (mx.DeviceType.gpu, on_gpu)):
            angles = mx.where(rotated, frequency, 0.0)  # (heads, D/2); v heads stay still
            self.frequencies[device] = angles[:, :, None] if self.traditional else angles[:, None, :]
        mx.eval(self.frequencies)

    def __call__(self, x: mx.array, position: mx.array) -> mx.array:
        half = self.half  # x (1, heads, 1, D)
        # each feature's partner in its pair (x1 for x0, x0 for x1): out = x cos θ + sign · partner sin θ
        if self.traditional:  # pairs (x0, x1), (x2, x3)…
            pairs, sign = x.reshape(self.n_heads, half, 2), mx.array([-1.0, 1.0])
            partner = pairs[..., ::-1]  # a view with a negative stride: no copy
        else:  # x[i] with x[i + D/2]
            pairs, sign = x.reshape(self.n_heads, 2, half), mx.array([[-1.0], [1.0]])
            partner = pairs[:, ::-1]
        theta = position.astype(mx.float32) * self.frequencies[mx.default_device().type]
        out = pairs * mx.cos(theta) + partner * (sign * mx.sin(theta))  # computed in float32
        return out.astype(x.dtype).reshape(x.shape)


class _JoinedCache:
    """One layer's keys and values in one buffer for the compiled step: (1, 2 H_kv, capacity, D), keys in the
    first H_kv heads and values after them. A step writes both with one copy and attention reads two views.

    Filled from the prefill's ``KVCache`` (one copy), with room for the whole generation, so it never grows.
    CUDA keeps attention over it on the one-query kernel (its cuDNN path, which a plain ``KVCache`` of 256
    or more positions takes in bfloat16, costs the host several times more per call).
    """

    def __init__(self, cache: KVCache, capacity: int):
        keys, values, filled = cache.keys, cache.values, cache.offset
        self.n_kv_heads, self.offset = keys.shape[1], filled
        joined = mx.concatenate([keys[:, :, :filled], values[:, :, :filled]], axis=1)  # (1, 2 H_kv, filled, D)
        self.kv = mx.pad(joined, [(0, 0), (0, 0), (0, capacity - filled), (0, 0)])

    def update_and_fetch(self, kv: mx.array) -> tuple[mx.array, mx.array]:
        """Append one position's kv (1, 2 H_kv, 1, D); return keys and values so far, (1, H_kv, offset, D) each."""
        start, capacity = self.offset, self.kv.shape[2]
        if start >= capacity:
            raise ValueError(f"the decode cache holds {capacity} positions and all are filled; make a new "
                             "one with a larger capacity")
        self.offset += 1
        self.kv[:, :, start : self.offset] = kv
        return self.kv[:, : self.n_kv_heads, : self.offset], self.kv[:, self.n_kv_heads :, : self.offset]


class _JoinedLinear:
    """Linear layers with the same input run as one layer: ``joined(x)`` → their outputs, one each.

    The joined layer's weights are the layers' weights stacked by rows (output features), for plain or
    quantized layers alike; each layer's own weights then become row slices of them (views: the memory is
    not doubled). ``refresh`` rebuilds the join when a layer's weights were replaced (training, a dtype).
    """

    def __init__(self, layers: list[nn.Module]):
        self.layers, self.views = layers, []
        self.rows = [layer["weight"].shape[0] for layer in layers]  # each layer's output features
        self.splits = list(itertools.accumulate(self.rows))[:-1]  # where the joined output is cut
        self.layer = copy.copy(layers[0])  # same kind and settings; its arrays are set by refresh
        self.refresh()

    @staticmethod
    def joinable(layers: list[nn.Module]) -> bool:
        """Plain or quantized linear layers of one kind with the same settings (no LoRA adapters)."""
        first = layers[0]
        return type(first) in (nn.Linear, nn.QuantizedLinear) and all(
            type(layer) is type(first) and vars(layer) == vars(first) and layer.keys() == first.keys()
            for layer in layers)

    def refresh(self) -> None:
        """Join the layers' current weights, unless they still hold the views of the last join."""
        if self.views and all(layer[name] is view for layer, name, view in self.views):
            return  # the layers still hold our views: nothing changed
        for name in self.layers[0]:  # weight, bias; a quantized layer's packed weight, scales and biases
            self.layer[name] = mx.concatenate([layer[name] for layer in self.layers])
        self.views, start = [], 0
        for layer, rows in zip(self.layers, self.rows):
            for name in self.layers[0]:
                layer[name] = self.layer[name][start : start + rows]
                self.views.append((layer, name, layer[name]))
            start += rows
        self.transposed = _Transposed.of(self.layer)
        mx.eval(self.layer.parameters(), [view for _, _, view in self.views])

    def __call__(self, x: mx.array) -> list[mx.array]:
        y = self.transposed(x)  # (..., sum of the layers' rows)
        if y.shape[:-1] == (1,) and len(set(self.rows)) == 1:  # one token, equal parts (SwiGLU's gate and up):
            # cut (parts, n) by rows, so each is a plain (1, n) row. A column slice keeps the whole row's
            # stride, which an elementwise kernel passes on to its output and a matrix product then copies away
            return mx.split(y.reshape(len(self.rows), -1), len(self.rows))
        return mx.split(y, self.splits, axis=-1)


class _Transposed:
    """``layer(x)``, where a plain linear layer's weight is transposed once (a view, no copy) and not in
    every decode step: in a compiled stage the view is a constant, so no transpose is left in the graph."""

    def __init__(self, layer: nn.Module | None):
        self.layer = layer
        self.weight = layer["weight"] if type(layer) is nn.Linear else None  # the array the view is made from
        self.weight_t = None if self.weight is None else self.weight.T  # (in, out)
        if self.weight_t is not None:
            mx.eval(self.weight_t)

    @classmethod
    def of(cls, layer: nn.Module | None, kept: "_Transposed | None" = None) -> "_Transposed":
        """The kept one while ``layer`` still holds the same weight, else a new one."""
        if kept is not None and kept.layer is layer and (kept.weight is None or layer["weight"] is kept.weight):
            return kept
        return cls(layer)

    def __call__(self, x: mx.array) -> mx.array:
        if self.weight_t is None:
            return self.layer(x)
        return mx.addmm(self.layer["bias"], x, self.weight_t) if "bias" in self.layer else x @ self.weight_t


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
