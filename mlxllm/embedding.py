"""Embedding (Chapter 2): token ids → T×C vectors, plus where each token sits.

Attention by itself is blind to order (permute the tokens and the outputs permute the same way),
so every model adds positional information in one of three ways:

- ``learned``: a trainable (context_length, C) table added to the token vectors (GPT-2);
- ``sinusoidal``: the fixed sin/cos table of "Attention Is All You Need";
- ``rope``: rotary embeddings, which rotate q and k inside attention (LLaMA and most models since).

The token embedding itself is a plain ``mlx.nn.Embedding``: a lookup that equals one-hot × matrix.
"""

import math

import mlx.core as mx
import mlx.nn as nn

from mlxllm.config import ModelConfig


def _check_span(length: int, offset: int, context_length: int) -> None:
    if offset + length > context_length:
        raise ValueError(f"positions {offset}..{offset + length - 1} are past the table's "
                         f"context_length={context_length}; use a shorter input or a larger "
                         "context_length")


def sinusoidal_table(context_length: int, dims: int, base: float = 10000.0) -> mx.array:
    """The (T, C) table PE[t, 2i] = sin(t / base^(2i/C)), PE[t, 2i+1] = cos(same).

    Built in Chapter 2."""
    if dims % 2:
        raise ValueError(f"sinusoidal positions need an even number of dims, got {dims}")
    positions = mx.arange(context_length, dtype=mx.float32)[:, None]  # (T, 1)
    inv_freq = mx.exp(-math.log(base) * mx.arange(0, dims, 2, dtype=mx.float32) / dims)  # (C/2,)
    angles = positions * inv_freq  # (T, C/2)
    # interleave so that even columns are sin and odd columns are cos, as in the paper
    return mx.stack([mx.sin(angles), mx.cos(angles)], axis=-1).reshape(context_length, dims)


class LearnedPositions(nn.Module):
    """A trainable vector per position, added to the token vectors (GPT-2's ``wpe``).

    Built in Chapter 2."""

    def __init__(self, context_length: int, dims: int):
        super().__init__()
        self.weight = mx.random.normal((context_length, dims)) * 0.02

    def __call__(self, length: int, offset: int = 0) -> mx.array:
        _check_span(length, offset, self.weight.shape[0])
        return self.weight[offset : offset + length]  # (T, C)


class SinusoidalPositions(nn.Module):
    """The fixed sin/cos encoding; nothing to train, so the table is not a parameter.

    Built in Chapter 2."""

    def __init__(self, context_length: int, dims: int, base: float = 10000.0):
        super().__init__()
        self._table = sinusoidal_table(context_length, dims, base)  # leading "_": not a parameter

    def __call__(self, length: int, offset: int = 0) -> mx.array:
        _check_span(length, offset, self._table.shape[0])
        return self._table[offset : offset + length]  # (T, C)


def make_positions(config: ModelConfig) -> nn.Module | None:
    """The table added to the token vectors: learned, sinusoidal, or None (RoPE acts inside
    attention).

    Built in Chapter 2.
    """
    if config.position == "learned":
        return LearnedPositions(config.context_length, config.dims)
    if config.position == "sinusoidal":
        return SinusoidalPositions(config.context_length, config.dims)
    return None


class RoPE(nn.Module):
    """Rotary position embedding of q or k, through ``mx.fast.rope``. Built in Chapter 2.

    Each pair of features is rotated by the angle ``position × base^(-2i/D)``, so the score q·k
    depends only on the distance between the two positions. Two layouts exist and a checkpoint
    fixes which one:
    ``traditional=True`` rotates adjacent pairs (x0, x1), (x2, x3)… (Meta's LLaMA, RoFormer);
    ``traditional=False`` rotates x[i] with x[i + D/2] ("rotate half", Hugging Face checkpoints).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, traditional: bool = False):
        super().__init__()
        if head_dim % 2:
            raise ValueError("RoPE rotates pairs of features, so head_dim must be even, "
                             f"got {head_dim}")
        self.head_dim = head_dim
        self.base = base
        self.traditional = traditional

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        # x: (B, H, T, D); offset = position of x's first token
        # (non-zero when decoding with a cache)
        return mx.fast.rope(x, self.head_dim, traditional=self.traditional, base=self.base,
                            scale=1.0, offset=offset)
