"""Part 3b — The transformer block: normalization, feed-forward and the residual stream.

block(x) = x + attention(norm(x)), then x + ffn(norm(x))      (pre-norm: GPT-2, LLaMA, nearly all LLMs)
block(x) = norm(x + attention(x)), then norm(x + ffn(x))      (post-norm: the 2017 Transformer)
"""

import mlx.core as mx
import mlx.nn as nn

from mlxllm.attention import KVCache, MultiHeadAttention
from mlxllm.embedding import RoPE

NORMS = ("layernorm", "rmsnorm", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")


def make_norm(kind: str, dims: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """LayerNorm (centre and scale), RMSNorm (scale only) or nothing. Built in Chapter 4.

    ``nn.LayerNorm`` and ``nn.RMSNorm`` call the fused ``mx.fast.layer_norm`` / ``mx.fast.rms_norm``.
    """
    if kind == "layernorm":
        return nn.LayerNorm(dims, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return nn.RMSNorm(dims, eps=eps)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


def swiglu_hidden_dims(dims: int, multiple_of: int = 32) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·C (three matrices cost what two 4·C ones do), rounded up."""
    hidden = int(8 * dims / 3)
    return (hidden + multiple_of - 1) // multiple_of * multiple_of


class MLP(nn.Module):
    """Position-wise feed-forward: C → hidden → C with a GELU or ReLU between. Built in Chapter 4.

    ``activation="gelu_tanh"`` is the tanh approximation GPT-2 was trained with; ``"gelu"`` the exact erf form.
    """

    def __init__(self, dims: int, hidden_dims: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        activations = {"gelu": nn.gelu, "gelu_tanh": nn.gelu_approx, "relu": nn.relu}
        if activation not in activations:
            raise ValueError(f"MLP activation must be one of {tuple(activations)}, got {activation!r}")
        self.activation = activations[activation]
        self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(self.activation(self.up_proj(x)))  # (B, T, C)


class SwiGLU(nn.Module):
    """Gated feed-forward: down(silu(gate(x)) * up(x)), as in LLaMA. Built in Chapter 4."""

    def __init__(self, dims: int, hidden_dims: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.up_proj = nn.Linear(dims, hidden_dims, bias=bias)
        self.down_proj = nn.Linear(hidden_dims, dims, bias=bias)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, C)


def make_ffn(activation: str, dims: int, hidden_dims: int | None = None, bias: bool = True) -> nn.Module:
    """The feed-forward for an activation name; default widths 4·C (MLP) and ≈ 8/3·C (SwiGLU)."""
    if activation == "swiglu":
        return SwiGLU(dims, hidden_dims or swiglu_hidden_dims(dims), bias=bias)
    if activation in ACTIVATIONS:
        return MLP(dims, hidden_dims or 4 * dims, activation=activation, bias=bias)
    raise ValueError(f"unknown activation {activation!r}; choose one of {ACTIVATIONS}")


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a norm and a residual connection. Built in Chapter 4.

    ``pre_norm=False`` gives the original post-norm block; ``parallel=True`` runs attention and
    feed-forward side by side on the same normed input (GPT-J, PaLM): x + attn(n(x)) + ffn(n(x)).
    """

    def __init__(
        self,
        dims: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        ffn_dims: int | None = None,
        norm: str = "layernorm",
        activation: str = "gelu",
        bias: bool = True,
        rope: RoPE | None = None,
        norm_eps: float = 1e-5,
        pre_norm: bool = True,
        parallel: bool = False,
        qk_norm: bool = False,
        dropout: float = 0.0,
        qkv_bias: bool = False,
    ):
        super().__init__()
        if parallel and not pre_norm:
            raise ValueError("a parallel block needs pre_norm=True (both branches read the same normed input)")
        self.attention_norm = make_norm(norm, dims, norm_eps, bias)
        self.attention = MultiHeadAttention(dims, n_heads, n_kv_heads, bias=bias, rope=rope, qk_norm=qk_norm, norm_eps=norm_eps,
                                            qkv_bias=qkv_bias)
        if not parallel:
            self.ffn_norm = make_norm(norm, dims, norm_eps, bias)
        self.ffn = make_ffn(activation, dims, ffn_dims, bias)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm, self.parallel = pre_norm, parallel

    def __call__(self, x: mx.array, mask: str | mx.array | None = "causal", cache: KVCache | None = None) -> mx.array:
        # x: (B, T, C) — the residual stream; each branch reads it and adds its result back
        if self.parallel:
            h = self.attention_norm(x)
            return x + self.dropout(self.attention(h, mask, cache)) + self.dropout(self.ffn(h))
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), mask, cache))
            x = x + self.dropout(self.ffn(self.ffn_norm(x)))
            return x
        x = self.attention_norm(x + self.dropout(self.attention(x, mask, cache)))
        x = self.ffn_norm(x + self.dropout(self.ffn(x)))
        return x
