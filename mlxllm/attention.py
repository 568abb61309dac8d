"""Causal attention (Chapter 3): each position looks at itself and the positions before it.

Shapes: B batch, T tokens, C = dims, H query heads, H_kv key/value heads, D = C / H per head.
"""

import math

import mlx.core as mx
import mlx.nn as nn

from mlxllm.config import ModelConfig
from mlxllm.embedding import RoPE


def causal_mask(n_queries: int, n_keys: int | None = None) -> mx.array:
    """Boolean (T_q, T_k) mask, True where query i may attend to key j. Built in Chapter 3.

    Aligned bottom-right: with a cache the T_q new queries are the *last* T_q positions, so query i
    sits at position ``n_keys - n_queries + i`` and sees every key up to and including it.
    """
    n_keys = n_queries if n_keys is None else n_keys
    if n_queries > n_keys:
        raise ValueError(f"more queries ({n_queries}) than keys ({n_keys}): a causal query needs "
                         "its own key")
    query_pos = mx.arange(n_keys - n_queries, n_keys)[:, None]  # (T_q, 1)
    key_pos = mx.arange(n_keys)[None, :]  # (1, T_k)
    return key_pos <= query_pos


def attention_reference(q: mx.array, k: mx.array, v: mx.array, mask: str | mx.array | None = None,
                        dropout: float = 0.0) -> mx.array:
    """Plain scaled dot-product attention, written out step by step. Built in Chapter 3.

    q: (B, H, T_q, D); k, v: (B, H_kv, T_k, D) with H a multiple of H_kv (grouped-query attention
    shares each key/value head among H / H_kv query heads). mask: as for the fused kernel, "causal",
    a boolean array (True = may attend) or an additive float array. ``dropout``: the probability of
    zeroing each attention weight (nanoGPT's attention dropout), survivors scaled by 1 / (1 - p).
    """
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"the only mask name is 'causal', got {mask!r}")
        mask = causal_mask(q.shape[2], k.shape[2])
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads != n_kv_heads:  # give every query head its own copy of its group's k and v
        k = mx.repeat(k, n_heads // n_kv_heads, axis=1)
        v = mx.repeat(v, n_heads // n_kv_heads, axis=1)
    scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(q.shape[-1])  # (B, H, T_q, T_k)
    if mask is not None and mask.dtype == mx.bool_:
        scores = mx.where(mask, scores, -mx.inf)
    elif mask is not None:
        scores = scores + mask  # additive: 0 = attend, -inf (or very negative) = blocked
    weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(v.dtype)  # each row sums to 1
    if dropout > 0:  # each row now sums to 1 only in expectation
        keep = mx.random.bernoulli(1.0 - dropout, weights.shape)
        weights = mx.where(keep, weights / (1.0 - dropout), 0.0)
    return weights @ v  # (B, H, T_q, D)


def scaled_dot_product_attention(q: mx.array, k: mx.array, v: mx.array,
                                 mask: str | mx.array | None = "causal") -> mx.array:
    """The production path: MLX's fused kernel, same numbers as ``attention_reference``.

    Built in Chapter 3. ``mask="causal"`` is the bottom-right aligned causal mask without
    materialising it.
    """
    return mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(q.shape[-1]),
                                                mask=mask)


class KVCache:
    """Keys and values of the tokens seen so far, for one layer. Built in Chapter 3.

    Storage is preallocated in chunks of ``step`` positions and written in place, so decoding a
    token costs one slice assignment instead of copying the whole cache with a concatenate.
    """

    step = 256

    def __init__(self):
        self.keys: mx.array | None = None  # (B, H_kv, capacity, D)
        self.values: mx.array | None = None
        self.offset = 0  # number of positions filled = position of the next token

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append (B, H_kv, T, D) keys/values; return everything cached so far,
        (B, H_kv, offset, D)."""
        start, length = self.offset, keys.shape[2]
        if self.keys is None or start + length > self.keys.shape[2]:
            B, n_kv_heads, _, head_dim = keys.shape
            n_new = (length + self.step - 1) // self.step * self.step
            shape = (B, n_kv_heads, n_new, head_dim)
            new_k, new_v = mx.zeros(shape, keys.dtype), mx.zeros(shape, values.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:  # grow by whole chunks; only happens every `step` tokens
                self.keys = mx.concatenate([self.keys[:, :, :start], new_k], axis=2)
                self.values = mx.concatenate([self.values[:, :, :start], new_v], axis=2)
        self.offset += length
        # [:, :, a:b] rather than [..., a:b, :]: the same static slices, parsed faster (a decode
        # step makes four of these per block per token)
        self.keys[:, :, start : self.offset] = keys
        self.values[:, :, start : self.offset] = values
        return self.keys[:, :, : self.offset], self.values[:, :, : self.offset]

    @property
    def nbytes(self) -> int:
        """Bytes held by the allocated storage (keys + values)."""
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, context_length: int,
                   batch_size: int = 1, bytes_per_value: int = 2) -> int:
    """Memory of a full KV cache: keys and values for every layer, kv head and position.

    Built in Chapter 3.
    """
    return 2 * n_layers * n_kv_heads * head_dim * context_length * batch_size * bytes_per_value


class MultiHeadAttention(nn.Module):
    """Causal self-attention with H query heads and H_kv key/value heads, as the config says.

    Built in Chapter 3. ``n_kv_heads == n_heads`` is multi-head attention,
    ``1 < n_kv_heads < n_heads`` grouped-query (GQA), ``n_kv_heads == 1`` multi-query (MQA). RoPE on
    q and k when ``position="rope"``, and QK-norm (an RMSNorm of each head's q and k, which bounds
    the attention logits; Chapter 8). One layer on its own:
    ``MultiHeadAttention(ModelConfig(dims=64, n_heads=4))``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        c = config  # the config has already checked that the heads divide evenly
        self.n_heads, self.n_kv_heads, self.head_dim = c.n_heads, c.n_kv_heads, c.head_dim
        qkv_bias = c.bias or c.qkv_bias  # Qwen2 has biases on q, k, v only
        self.q_proj = nn.Linear(c.dims, c.n_heads * c.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(c.dims, c.n_kv_heads * c.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(c.dims, c.n_kv_heads * c.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(c.n_heads * c.head_dim, c.dims, bias=c.bias)
        self.rope = RoPE(c.head_dim, c.rope_theta, c.rope_traditional) \
            if c.position == "rope" else None
        if c.qk_norm:
            self.q_norm = nn.RMSNorm(c.head_dim, eps=c.norm_eps)
            self.k_norm = nn.RMSNorm(c.head_dim, eps=c.norm_eps)
        self.qk_norm = c.qk_norm
        self.dropout = c.dropout  # on the attention probabilities, in training mode only

    def __call__(self, x: mx.array, mask: str | mx.array | None = "causal",
                 cache: KVCache | None = None) -> mx.array:
        B, T, _ = x.shape  # x: (B, T, C)
        # project, then split C into heads and move heads before time: (B, T, H*D) → (B, H, T, D)
        q = self.q_proj(x).reshape(B, T, self.n_heads, self.head_dim).transpose(0, 2, 1, 3)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, self.head_dim).transpose(0, 2, 1, 3)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:  # rotate by absolute position: with a cache, x starts at its fill
            offset = 0 if cache is None else cache.offset
            q, k = self.rope(q, offset), self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, H_kv, offset + T, D)
        if T == 1 and isinstance(mask, str):
            mask = None  # a single newest query may see every cached key
        if self.training and self.dropout > 0:  # the fused kernel has no dropout: go the long way
            out = attention_reference(q, k, v, mask, dropout=self.dropout)  # (B, H, T, D)
        else:
            out = scaled_dot_product_attention(q, k, v, mask=mask)  # (B, H, T, D)
        # heads back beside each other, (B, H, T, D) → (B, T, H*D), then mixed by the output
        # projection
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))  # (B, T, C)
