"""The transformer block (Chapter 4): normalization, feed-forward and the residual stream.

block(x) = x + attention(norm(x)), then x + ffn(norm(x))   (pre-norm: GPT-2, LLaMA, nearly all LLMs)
block(x) = norm(x + attention(x)), then norm(x + ffn(x))   (post-norm: the 2017 Transformer)
"""

import mlx.core as mx
import mlx.nn as nn

from mlxllm.attention import KVCache, MultiHeadAttention
from mlxllm.config import ACTIVATIONS, NORMS, ModelConfig


def make_norm(config: ModelConfig) -> nn.Module:
    """The config's norm over its dims: LayerNorm (centre and scale), RMSNorm (scale only) or
    nothing. Built in Chapter 4.

    ``nn.LayerNorm`` and ``nn.RMSNorm`` call the fused ``mx.fast.layer_norm`` /
    ``mx.fast.rms_norm``.
    """
    if config.norm == "layernorm":
        return nn.LayerNorm(config.dims, eps=config.norm_eps, bias=config.bias)
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.dims, eps=config.norm_eps)
    if config.norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {config.norm!r}; choose one of {NORMS}")


class MLP(nn.Module):
    """Position-wise feed-forward: C → hidden → C with a GELU or ReLU between. Built in Chapter 4.

    ``activation="gelu_tanh"`` is the tanh approximation GPT-2 was trained with; ``"gelu"`` the
    exact erf form.
    """

    def __init__(self, dims: int, hidden_dims: int, activation: str = "gelu", bias: bool = True):
        super().__init__()
        activations = {"gelu": nn.gelu, "gelu_tanh": nn.gelu_approx, "relu": nn.relu}
        if activation not in activations:
            raise ValueError(f"MLP activation must be one of {tuple(activations)}, "
                             f"got {activation!r}")
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


def make_ffn(config: ModelConfig) -> nn.Module:
    """The config's feed-forward: SwiGLU or an MLP, ``config.ffn_dims`` wide. Built in Chapter 4."""
    if config.activation == "swiglu":
        return SwiGLU(config.dims, config.ffn_dims, bias=config.bias)
    if config.activation in ACTIVATIONS:
        return MLP(config.dims, config.ffn_dims, activation=config.activation, bias=config.bias)
    raise ValueError(f"unknown activation {config.activation!r}; choose one of {ACTIVATIONS}")


class TransformerBlock(nn.Module):
    """Attention then feed-forward, each wrapped in a norm and a residual connection.

    Built in Chapter 4. ``pre_norm=False`` gives the original post-norm block;
    ``parallel_block=True`` runs attention and feed-forward side by side on the same normed input
    (GPT-J, PaLM): x + attn(n(x)) + ffn(n(x)).
    One block on its own: ``TransformerBlock(ModelConfig(dims=64, n_heads=4))``.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention_norm = make_norm(config)
        self.attention = MultiHeadAttention(config)
        if not config.parallel_block:  # a parallel block's two branches share one norm
            self.ffn_norm = make_norm(config)
        self.ffn = make_ffn(config)
        self.dropout = nn.Dropout(config.dropout)
        self.pre_norm, self.parallel = config.pre_norm, config.parallel_block

    def __call__(self, x: mx.array, mask: str | mx.array | None = "causal",
                 cache: KVCache | None = None) -> mx.array:
        # x: (B, T, C) — the residual stream; each branch reads it and adds its result back
        if self.parallel:  # both branches read the same normed input
            h = self.attention_norm(x)
            return x + self.dropout(self.attention(h, mask, cache)) + self.dropout(self.ffn(h))
        if self.pre_norm:
            x = x + self.dropout(self.attention(self.attention_norm(x), mask, cache))
            return x + self.dropout(self.ffn(self.ffn_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, mask, cache)))  # post-norm
        return self.ffn_norm(x + self.dropout(self.ffn(x)))
