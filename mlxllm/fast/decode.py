"""The decode engine: ``mlxllm.generate``'s tokens from compiled stages, for a GPU's sake.
Chapter 10.

A small model's decode step on a GPU is bound by the host: Python building the graph and the
runtime launching one kernel per small operation, not by FLOPs or memory. The engine gives each
token fewer, fused operations: the work between two attentions is one compiled stage, q/k/v and
SwiGLU's gate/up are one matrix product each, RoPE is one kernel, a layer's keys and values one
buffer. It reads the core model's weights and never changes the model: its joined weights are its
own, and it keeps its traces itself. A model it was not written for decodes through the core.
"""

import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.attention import MultiHeadAttention, scaled_dot_product_attention
from mlxllm.block import MLP, SwiGLU, TransformerBlock
from mlxllm.config import ModelConfig
from mlxllm.embedding import RoPE
from mlxllm.fast.layers import JoinedCache, JoinedLinear, Rotation, Transposed
from mlxllm.generation import (Request, Sampler, SamplingConfig, decode, generation_stream,
                               make_request, make_sampler, next_token, pipelined, prefill, window)
from mlxllm.model import TransformerLM

# The ModelConfig fields the engine was written for (all that exist today). A field added later
# is unknown here: a model that sets it away from its default decodes through the core instead.
KNOWN_FIELDS = frozenset({
    "vocab_size", "context_length", "dims", "n_layers", "n_heads", "n_kv_heads", "ffn_dims",
    "norm", "position", "activation", "bias", "qkv_bias", "tie_embeddings", "rope_theta",
    "rope_traditional", "norm_eps", "pre_norm", "parallel_block", "qk_norm", "logit_softcap",
    "dropout", "family"})
NORM_TYPES = (nn.LayerNorm, nn.RMSNorm, nn.Identity)


def unsupported(model: nn.Module) -> str | None:
    """Why the engine cannot decode ``model`` as the core does (one line), or None if it can."""
    if type(model) is not TransformerLM:
        return f"{type(model).__name__} is not a TransformerLM"
    for field in dataclasses.fields(model.config):
        value = getattr(model.config, field.name)
        if field.name not in KNOWN_FIELDS and value != field.default:
            return f"the engine does not know {type(model.config).__name__}.{field.name}={value!r}"
    if model.training and model.config.dropout > 0:
        return "the model is in training mode with dropout, which the compiled stages leave out"
    for i, block in enumerate(model.blocks):
        attention, ffn = block.attention, block.ffn
        parts = {"block": (block, (TransformerBlock,)),
                 "attention": (attention, (MultiHeadAttention,)),
                 "ffn": (ffn, (MLP, SwiGLU)), "attention_norm": (block.attention_norm, NORM_TYPES),
                 "ffn_norm": (block.get("ffn_norm", nn.Identity()), NORM_TYPES),
                 "rope": (attention.rope, (RoPE, type(None)))}
        for name, (module, kinds) in parts.items():
            if type(module) not in kinds:
                return (f"blocks.{i}.{name} is a {type(module).__name__}, which the engine does "
                        "not know")
    return None


class DecodeEngine:
    """``engine.generate(prompt_ids, n, sampler=...)``: ``mlxllm.generate(model, ...)``'s tokens.

    Made once per model and kept (the CLI keeps one): it traces its stages on first use and again
    only when the model's weights or layers change. Where ``unsupported(model)`` names a reason,
    it decodes through the core and ``fallback`` holds the reason. Built in Chapter 10.
    """

    def __init__(self, model: TransformerLM):
        self.model = model
        self.fallback: str | None = unsupported(model)
        self.modules: tuple[int, ...] = ()  # the module tree the stages were built for
        self.blocks: list[BlockDecode] = []
        self.stages: list[Stage] = []
        self.heads: dict[Sampler, Stage] = {}

    def generate(self, prompt_ids: Iterable[int], max_new_tokens: int, *,
                 sampler: Sampler | None = None, seed: int | None = None,
                 key: mx.array | None = None, stop_ids: Iterable[int] = ()) -> Iterator[int]:
        """Yield new token ids as ``mlxllm.generate`` does; ``sampler`` from ``make_sampler``
        (default: temperature 1), or any function of mx operations (it runs inside
        ``mx.compile``)."""
        sampler = make_sampler() if sampler is None else sampler
        request = make_request(self.model, prompt_ids, max_new_tokens, sampler, seed, key, stop_ids)
        self.fallback = unsupported(self.model)
        if self.fallback is not None:
            return decode(self.model, request)
        return self._decode(request)

    def _decode(self, request: Request) -> Iterator[int]:
        """``decode`` with one compiled step per token (``self.step``) while the window has room."""
        if request.max_new_tokens == 0:
            return
        model, key, stream = self.model, request.key, generation_stream()
        context_length, cache = model.config.context_length, model.make_cache()
        with mx.stream(stream):  # the prompt and the first token as the core makes them
            token, key = next_token(model, prefill(model, request.prompt, cache), cache, request,
                                    key)
        history, step, joined = list(request.prompt), None, None

        def following(token: mx.array) -> mx.array:
            nonlocal key, step, joined
            with mx.stream(stream):
                if joined is None:  # the second token: the stages, and the buffers filled once
                    step = self.step(request)
                    # room for the answer, up to the context; a long one grows by chunks
                    wanted = len(request.prompt) + min(request.max_new_tokens, 4096)
                    capacity = min(context_length, wanted)
                    joined = [JoinedCache(layer_cache, capacity) for layer_cache in cache]
                if joined[0].offset < context_length:
                    token, key = step(token, joined, key)
                else:  # the window is full: slide it, as the core does
                    ids = window(history, token, context_length)
                    token, key = next_token(model, ids, None, request, key)
            return token

        yield from pipelined(token, following, request, history)

    def step(self, request: Request) -> Callable:
        """``step(token (1,), caches, key) → (next token (1,), next key)`` through the stages.

        Attention over a cache changes shape every token, so it stays outside ``mx.compile`` (on
        the fused one-query kernel), and so does the cache write; the work between two attentions
        is one compiled stage, traced once: block i's output projection, residuals and
        feed-forward, then block i+1's norm, projections and RoPE at a ``position`` array.
        """
        model = self.model
        modules = tuple(id(m) for _, m in model.named_modules())
        if modules != self.modules:  # first use, or LoRA / quantization changed the layers
            self.modules, self.heads = modules, {}
            self.blocks = [BlockDecode(block) for block in model.blocks]
            self.stages = [Stage(self.blocks[0].enter, [self.blocks[0]])]
            for left, right in itertools.pairwise(self.blocks):  # leave one block, enter the next
                self.stages.append(Stage(lambda x, h, out, position, left=left, right=right:
                                         right.enter(left.leave(x, h, out), position),
                                         [left, right]))
        for block in self.blocks:
            block.refresh()  # the model's current weights, joined again where they changed
        for stage in self.stages:
            stage.refresh()
        head = self.head(request)
        stages = self.stages

        def step(token: mx.array, caches: list[JoinedCache], key: mx.array):
            offset = caches[0].offset
            position = mx.array(offset, dtype=mx.int32)  # one trace serves every position
            carried = (model.embed(token[None], offset).reshape(1, -1),)  # (1, C): one row
            for stage, cache in zip(stages, caches):
                x, h, q, kv = stage(*carried, position)
                k, v = cache.update_and_fetch(kv)  # (1, H_kv, offset + 1, D) each
                carried = (x, h, scaled_dot_product_attention(q, k, v, mask=None))
            return head(*carried, key)

        return step

    def head(self, request: Request) -> "Stage":
        """The last stage: the last block's end, the final norm, the LM head and the sampler."""
        model, sampler, greedy = self.model, request.sampler, request.greedy
        head = self.heads.get(sampler) if isinstance(sampler, SamplingConfig) else None
        if head is not None:
            head.refresh()
            return head
        last = self.blocks[-1]

        def choose(x: mx.array, h: mx.array, out: mx.array, key: mx.array):
            logits = model.logits(model.norm(last.leave(x, h, out)))  # (1, V)
            if greedy:  # argmax draws no key
                return sampler(logits, None), key
            key, step_key = mx.random.split(key)
            return sampler(logits, step_key), key  # (1,), the next key

        output = model.head if "head" in model else model.token_embedding
        head = Stage(choose, [last, model.norm, output])
        if isinstance(sampler, SamplingConfig):  # hashable: kept for the next generate call
            self.heads[sampler] = head
        return head


class Stage:
    """``mx.compile(fun)`` over the current weights of ``parts``, held as constants of its trace.

    ``mx.compile(fun, inputs=modules)`` would walk the module trees on every call, once per block
    per token. So the arrays are listed once per ``generate`` call (``refresh``) and the function
    is traced again only when they changed (training, LoRA, a new dtype).
    """

    def __init__(self, fun: Callable, parts: list["BlockDecode | nn.Module"]):
        self.fun, self.parts, self.arrays, self.compiled = fun, parts, [], None
        self.refresh()

    def refresh(self) -> None:
        modules = []
        for part in self.parts:
            modules += part.modules() if isinstance(part, BlockDecode) else [part]
        arrays = [a for module in modules for _, a in tree_flatten(module.parameters())]
        if len(arrays) != len(self.arrays) or any(a is not b for a, b in zip(arrays, self.arrays)):
            self.arrays = arrays
            # a new function each time: mx.compile keeps its traces per function object, so the
            # old trace and its constants (the old arrays) are not reused
            self.compiled = mx.compile(lambda *args: self.fun(*args))

    def __call__(self, *args):
        return self.compiled(*args)


class BlockDecode:
    """One block's decode work for one token (1, C), before attention (``enter``) and after it
    (``leave``): the core block's arithmetic, in the same order, on joined weights."""

    def __init__(self, block: TransformerBlock):
        self.block = block
        attention, ffn = block.attention, block.ffn
        qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
        self.qkv = JoinedLinear(qkv) if JoinedLinear.joinable(qkv) else None
        gate_up = [ffn.gate_proj, ffn.up_proj] if isinstance(ffn, SwiGLU) else None
        self.gate_up = JoinedLinear(gate_up) if gate_up and JoinedLinear.joinable(gate_up) else None
        n_qk = attention.n_heads + attention.n_kv_heads
        rotate = attention.rope is not None and self.qkv is not None and not attention.qk_norm
        self.rotation = Rotation(attention.rope, n_qk, n_qk + attention.n_kv_heads) \
            if rotate else None
        self.o = self.down = None

    def modules(self) -> list[nn.Module]:
        """The modules whose arrays the stages read: the block and its joined layers."""
        return [self.block, *(j.layer for j in (self.qkv, self.gate_up) if j is not None)]

    def refresh(self) -> None:
        for joined in (self.qkv, self.gate_up):
            if joined is not None:
                joined.refresh()
        self.o = Transposed.of(self.block.attention.o_proj, self.o)
        self.down = Transposed.of(self.block.ffn.down_proj, self.down)

    def enter(self, x: mx.array, position: mx.array) -> tuple[mx.array, ...]:
        """x (1, C) → (x, h, q, kv): ``h`` what attention reads, q (1, H, 1, D),
        kv (1, 2 H_kv, 1, D)."""
        block = self.block
        h = block.attention_norm(x) if block.pre_norm or block.parallel else x  # (1, C)
        return (x, h, *self.heads(h, position))

    def heads(self, h: mx.array, position: mx.array) -> tuple[mx.array, mx.array]:
        """q (1, H, 1, D), and keys then values as one array (1, 2 H_kv, 1, D): one token's row of
        features is its heads, so (1, H·D) → (1, H, 1, D) is a reshape, no transpose."""
        attention = self.block.attention
        n_heads, n_kv_heads, head_dim = attention.n_heads, attention.n_kv_heads, attention.head_dim
        if self.rotation is not None:  # q, k, v as one row of heads, rotated in one kernel
            qkv = self.qkv.transposed(h).reshape(1, -1, 1, head_dim)  # (1, H + 2 H_kv, 1, D)
            q, kv = mx.split(self.rotation(qkv, position), [n_heads], axis=1)
            return q, kv
        if self.qkv is not None:
            q, k, v = self.qkv(h)
        else:  # LoRA or mixed layers: each projection on its own
            q, k, v = attention.q_proj(h), attention.k_proj(h), attention.v_proj(h)
        q = q.reshape(1, n_heads, 1, head_dim)
        k, v = (t.reshape(1, n_kv_heads, 1, head_dim) for t in (k, v))
        if attention.qk_norm:
            q, k = attention.q_norm(q), attention.k_norm(k)
        if attention.rope is not None:
            q, k = attention.rope(q, position), attention.rope(k, position)
        return q, mx.concatenate([k, v], axis=1)

    def leave(self, x: mx.array, h: mx.array, out: mx.array) -> mx.array:
        """The rest of the block once attention returned ``out`` (1, H, 1, D): the next x (1, C)."""
        block = self.block
        attended = self.o(out.reshape(1, -1))  # (1, C)
        if block.parallel:
            return x + attended + self.feed_forward(h)
        if block.pre_norm:
            x = x + attended
            return x + self.feed_forward(block.ffn_norm(x))
        x = block.attention_norm(x + attended)
        return block.ffn_norm(x + self.feed_forward(x))

    def feed_forward(self, n: mx.array) -> mx.array:
        """The block's feed-forward of (1, C), with joined gate and up where they join."""
        ffn = self.block.ffn
        if self.gate_up is not None:
            gate, up = self.gate_up(n)
            return self.down(nn.silu(gate) * up)
        if isinstance(ffn, SwiGLU):
            return self.down(nn.silu(ffn.gate_proj(n)) * ffn.up_proj(n))
        return self.down(ffn.activation(ffn.up_proj(n)))  # MLP
