"""The whole model: ids → embedding → N transformer blocks → final norm → LM head → logits.

``ModelConfig`` (in ``mlxllm.config``, re-exported here) names every architectural choice;
``ModelConfig.gpt2()`` and ``ModelConfig.llama()`` are the two families the book follows (and whose
pretrained weights Chapter 7 loads).
"""

import math
import re
from typing import Iterable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.attention import KVCache
from mlxllm.block import TransformerBlock, make_norm
from mlxllm.config import ModelConfig
from mlxllm.embedding import LearnedPositions, make_positions

__all__ = ["ModelConfig", "TransformerLM"]

# what nn.quantize turns Linear and Embedding into
QUANTIZED = (nn.QuantizedLinear, nn.QuantizedEmbedding)


class TransformerLM(nn.Module):
    """A decoder-only language model: ``model(ids)`` → next-token logits (B, T, V).

    Built in Chapter 5."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dims)
        positions = make_positions(config)  # None for RoPE (inside attention) and for no positions
        if positions is not None:
            self.position_embedding = positions
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = [TransformerBlock(config) for _ in range(config.n_layers)]
        # a post-norm block already ends in a norm; a pre-norm stack needs one before the head
        self.norm = make_norm(config) if config.pre_norm else nn.Identity()
        if not config.tie_embeddings:
            self.head = nn.Linear(config.dims, config.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """GPT-2 initialisation: N(0, 0.02) everywhere, residual output projections
        N(0, 0.02/√(2·n_layers)).

        Each block adds two branches to the residual stream; shrinking their last projection keeps
        the stream's variance from growing with depth, and small logits at init give a loss of
        ≈ ln V.
        """
        std, residual_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layers)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                scale = residual_std if name.endswith(("o_proj", "down_proj")) else std
                module.weight = mx.random.normal(module.weight.shape) * scale
                if "bias" in module:
                    module.bias = mx.zeros_like(module.bias)

    def make_cache(self) -> list[KVCache]:
        """One empty KV cache per block, for incremental decoding with
        ``model(ids, cache=cache)``."""
        return [KVCache() for _ in self.blocks]

    def __call__(self, ids: mx.array, cache: list[KVCache] | None = None, *,
                 check_ids: bool = True) -> mx.array:
        """Next-token logits for every position: (B, T) ids → (B, T, V). ``check_ids``: see
        ``hidden_states``."""
        return self.logits(self.hidden_states(ids, cache, check_ids=check_ids))

    def hidden_states(self, ids: mx.array, cache: list[KVCache] | None = None, *,
                      check_ids: bool = True) -> mx.array:
        """The last T×C vectors (after the final norm), one per position: (B, T) ids → (B, T, C).

        ``check_ids=True`` rejects ids outside [0, vocab_size), which the embedding lookup would
        silently turn into garbage; it reads the ids' min and max (one small sync per call).
        ``check_ids=False`` is the fast path for callers whose ids are already known to be in range
        (the trainer checks its data once).
        Inside ``mx.compile`` the ids cannot be read, so there the check is skipped.
        """
        if (not isinstance(ids, mx.array) or ids.ndim != 2
                or not mx.issubdtype(ids.dtype, mx.integer)):
            got = (f"{type(ids).__name__} {getattr(ids, 'shape', '')} "
                   f"{getattr(ids, 'dtype', '')}").strip()
            raise ValueError("ids must be an integer mx.array of shape (batch, tokens), "
                             f"got {got}; for one sequence pass mx.array([ids])")
        B, T = ids.shape
        offset = 0 if cache is None else cache[0].offset
        if offset + T > self.config.context_length:
            raise ValueError(f"{offset + T} tokens ({offset} cached + {T} new) exceed "
                             f"context_length={self.config.context_length}; truncate the input or "
                             "use a larger model")
        if check_ids:
            self.check_id_range(ids)
        x = self.dropout(self.embed(ids, offset))  # (B, T, C)
        caches = cache if cache is not None else [None] * len(self.blocks)
        for block, layer_cache in zip(self.blocks, caches):
            x = block(x, "causal", layer_cache)  # (B, T, C)
        return self.norm(x)

    def embed(self, ids: mx.array, offset: int = 0) -> mx.array:
        """(B, T) ids → (B, T, C) token vectors, plus the position table's rows from ``offset`` on
        if any."""
        x = self.token_embedding(ids)  # (B, T, C)
        if "position_embedding" in self:
            x = x + self.position_embedding(ids.shape[1], offset)  # (T, C) broadcast over the batch
        return x

    def check_id_range(self, ids: mx.array) -> None:
        """Raise a ValueError unless every id is in [0, vocab_size)."""
        if ids.size == 0:
            return
        try:
            low, high = mx.stack([ids.min(), ids.max()]).tolist()
        except ValueError:  # inside mx.compile: the ids are placeholders and cannot be read
            return
        vocab_size = self.config.vocab_size
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside this model's vocabulary [0, {vocab_size}) "
                             f"(the ids range from {low} to {high}); encode with the tokenizer "
                             "the model was trained with, or make the model's vocab_size cover "
                             "every id")

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
        (a tied head shares the token table, so it is counted once or not at all).

        A quantized layer (``nn.quantize``) counts the weights it stands for, not its packed words,
        and not its per-group scales and offsets.
        """
        total = sum(p.size for _, p in tree_flatten(self.parameters()))
        # packed words and group scales → the weights they stand for
        for _, module in self.named_modules():
            if isinstance(module, QUANTIZED):
                total += (_logical_size(module)
                          - sum(p.size for _, p in tree_flatten(module.parameters())))
        if not include_embeddings:
            total -= _logical_size(self.token_embedding)
            if isinstance(getattr(self, "position_embedding", None), LearnedPositions):
                total -= self.position_embedding.weight.size
        return total


def _logical_size(module: nn.Module) -> int:
    """Number of parameters a layer stands for; a quantized one packs 32 / bits weights
    per uint32 word."""
    if isinstance(module, QUANTIZED):
        return (module.weight.size * 32 // module.bits
                + (module.bias.size if "bias" in module else 0))
    return sum(p.size for _, p in tree_flatten(module.parameters()))


def check_block_names(config: ModelConfig, names: Iterable[str], what: str) -> None:
    """ValueError unless the ``blocks.N.`` parameter names number exactly the config's
    ``n_layers``: a cheap check before a model of that depth is built. Chapter 7."""
    layers = {int(match[1]) for name in names if (match := re.match(r"blocks\.(\d+)\.", name))}
    if layers != set(range(config.n_layers)):
        held = (f"{len(layers):,} (numbered {min(layers)} to {max(layers)})" if layers
                else "none")
        raise ValueError(f"the config has n_layers={config.n_layers:,} blocks, but {what} holds "
                         f"the tensors of {held}; the config and the weights belong to different "
                         "models (or one of them is damaged)")
