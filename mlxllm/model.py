"""The whole model: ids → embedding → N transformer blocks → final norm → LM head → logits.

``ModelConfig`` names every architectural choice; ``ModelConfig.gpt2()`` and ``ModelConfig.llama()``
are the two families the book follows (and whose pretrained weights Chapter 7 loads).
"""

import dataclasses
import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.attention import KVCache
from mlxllm.block import ACTIVATIONS, NORMS, TransformerBlock, make_norm
from mlxllm.embedding import LearnedPositions, RoPE, SinusoidalPositions

POSITIONS = ("learned", "sinusoidal", "rope", "none")


@dataclass
class ModelConfig:
    """Every size and architectural choice of a ``TransformerLM``. Built in Chapter 5.

    Defaults are GPT-2 small (124M). ``n_kv_heads=None`` means n_heads (plain multi-head attention);
    ``ffn_dims=None`` means 4·dims for an MLP and ≈ 8/3·dims for SwiGLU.
    """

    vocab_size: int = 50257
    context_length: int = 1024
    dims: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None
    ffn_dims: int | None = None
    norm: str = "layernorm"  # "layernorm" | "rmsnorm" | "none"
    position: str = "learned"  # "learned" | "sinusoidal" | "rope" | "none"
    activation: str = "gelu_tanh"  # "gelu" | "gelu_tanh" | "relu" | "swiglu"
    bias: bool = True
    qkv_bias: bool = False  # biases on q, k, v even when bias=False (Qwen2)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    rope_traditional: bool = False  # False: rotate-half (Hugging Face); True: adjacent pairs (Meta)
    norm_eps: float = 1e-5
    pre_norm: bool = True
    parallel_block: bool = False
    qk_norm: bool = False
    logit_softcap: float | None = None  # logits → cap·tanh(logits / cap) (Gemma 2)
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "dims", "n_layers", "n_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if self.dims % self.n_heads:
            raise ValueError(f"dims={self.dims} must be divisible by n_heads={self.n_heads}")
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
        for name, allowed in (("norm", NORMS), ("position", POSITIONS), ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got dims / n_heads = {self.head_dim}")
        if self.position == "sinusoidal" and self.dims % 2:
            raise ValueError(f"sinusoidal positions need even dims, got {self.dims}")
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"logit_softcap must be positive or None, got {self.logit_softcap}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.parallel_block and not self.pre_norm:
            raise ValueError("parallel_block=True needs pre_norm=True")

    @property
    def head_dim(self) -> int:
        return self.dims // self.n_heads

    @classmethod
    def gpt2(cls, **overrides) -> "ModelConfig":
        """GPT-2: learned positions, LayerNorm, tanh-GELU MLP, biases, head tied to the embedding."""
        base = dict(norm="layernorm", position="learned", activation="gelu_tanh", bias=True, tie_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama(cls, **overrides) -> "ModelConfig":
        """LLaMA: RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention, untied head.

        Default sizes are those of SmolLM2-135M (a LLaMA-shaped model), with an untied head.
        """
        base = dict(
            vocab_size=49152, context_length=2048, dims=576, n_layers=30, n_heads=9, n_kv_heads=3, ffn_dims=1536,
            norm="rmsnorm", position="rope", activation="swiglu", bias=False, tie_embeddings=False,
            rope_theta=100000.0, norm_eps=1e-5,
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """The inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


class TransformerLM(nn.Module):
    """A decoder-only language model: ``model(ids)`` → next-token logits (B, T, V). Built in Chapter 5."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.dims)
        if c.position == "learned":
            self.position_embedding = LearnedPositions(c.context_length, c.dims)
        elif c.position == "sinusoidal":
            self.position_embedding = SinusoidalPositions(c.context_length, c.dims)
        rope = RoPE(c.head_dim, c.rope_theta, c.rope_traditional) if c.position == "rope" else None
        self.dropout = nn.Dropout(c.dropout)
        self.blocks = [
            TransformerBlock(
                c.dims, c.n_heads, c.n_kv_heads, c.ffn_dims, norm=c.norm, activation=c.activation, bias=c.bias,
                rope=rope, norm_eps=c.norm_eps, pre_norm=c.pre_norm, parallel=c.parallel_block,
                qk_norm=c.qk_norm, dropout=c.dropout, qkv_bias=c.qkv_bias,
            )
            for _ in range(c.n_layers)
        ]
        # a post-norm block already ends in a norm; a pre-norm stack needs one before the head
        self.norm = make_norm(c.norm, c.dims, c.norm_eps, c.bias) if c.pre_norm else nn.Identity()
        if not c.tie_embeddings:
            self.head = nn.Linear(c.dims, c.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual output projections N(0, 0.02/√(2·n_layers)).

        Each block adds two branches to the residual stream; shrinking their last projection keeps the
        stream's variance from growing with depth, and small logits at init give a loss of ≈ ln V.
        """
        std, residual_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = residual_std if name.endswith(("o_proj", "down_proj")) else std
                module.weight = mx.random.normal(module.weight.shape) * scale
                if "bias" in module:
                    module.bias = mx.zeros_like(module.bias)

    def make_cache(self) -> list[KVCache]:
        """One empty KV cache per block, for incremental decoding with ``model(ids, cache=cache)``."""
        return [KVCache() for _ in self.blocks]

    def __call__(self, ids: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        """Next-token logits for every position: (B, T) ids → (B, T, V)."""
        return self.logits(self.hidden_states(ids, cache))

    def hidden_states(self, ids: mx.array, cache: list[KVCache] | None = None) -> mx.array:
        """The last T×C vectors (after the final norm), one per position: (B, T) ids → (B, T, C)."""
        if not isinstance(ids, mx.array) or ids.ndim != 2 or not mx.issubdtype(ids.dtype, mx.integer):
            got = f"{type(ids).__name__} {getattr(ids, 'shape', '')} {getattr(ids, 'dtype', '')}".strip()
            raise ValueError(f"ids must be an integer mx.array of shape (batch, tokens), got {got}; "
                             "for one sequence pass mx.array([ids])")
        B, T = ids.shape
        offset = 0 if cache is None else cache[0].offset
        if offset + T > self.config.context_length:
            raise ValueError(f"{offset + T} tokens ({offset} cached + {T} new) exceed context_length="
                             f"{self.config.context_length}; truncate the input or use a larger model")
        x = self.token_embedding(ids)  # (B, T, C)
        if "position_embedding" in self:
            x = x + self.position_embedding(T, offset)  # (T, C) broadcast over the batch
        x = self.dropout(x)
        caches = cache if cache is not None else [None] * len(self.blocks)
        for block, layer_cache in zip(self.blocks, caches):
            x = block(x, "causal", layer_cache)  # (B, T, C)
        return self.norm(x)

    def logits(self, x: mx.array) -> mx.array:
        """The LM head: (…, C) hidden states → (…, V) scores, one per vocabulary token.

        Generation applies it to the last position only: a V×C matmul per prompt token saved.
        """
        if self.config.tie_embeddings:
            logits = self.token_embedding.as_linear(x)  # x @ Wᵀ with the embedding matrix itself
        else:
            logits = self.head(x)  # (…, V)
        if self.config.logit_softcap is not None:
            cap = self.config.logit_softcap
            logits = cap * mx.tanh(logits / cap)
        return logits

    def num_parameters(self, include_embeddings: bool = True) -> int:
        """Parameter count; without embeddings it leaves out the token and learned position tables
        (a tied head shares the token table, so it is counted once or not at all)."""
        total = sum(p.size for _, p in tree_flatten(self.parameters()))
        if not include_embeddings:
            total -= self.token_embedding.weight.size
            if isinstance(getattr(self, "position_embedding", None), LearnedPositions):
                total -= self.position_embedding.weight.size
        return total

