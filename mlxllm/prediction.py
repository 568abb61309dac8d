"""Next-token prediction (Chapter 5): logits → probabilities, the losses, bits per byte.

The logits at position t are the model's guess for token t+1: training compares them with the input
shifted by one (here); generation samples from the last position and feeds the choice back in
(``mlxllm.generation``). Fine-tuning leaves some targets out of the loss (``masked_cross_entropy``).
"""

import math
from typing import Callable

import mlx.core as mx

IGNORE = -1  # a target that carries no loss (a prompt or padding position in fine-tuning rows)


def probabilities(logits: mx.array) -> mx.array:
    """Softmax over the vocabulary, in float32 (B, T, V) → (B, T, V). Built in Chapter 5."""
    return mx.softmax(logits.astype(mx.float32), axis=-1)


def cross_entropy(logits: mx.array, targets: mx.array, z_loss: float = 0.0) -> mx.array:
    """Mean over positions of logsumexp(logits) − logit[target], in nats per token.

    Built in Chapter 5. ``mx.fast.cross_entropy`` computes each position's term in one fused kernel
    on a GPU (the CPU runs the same two steps unfused). ``z_loss > 0`` adds
    z_loss · mean(logsumexp²), which keeps the softmax normaliser log Z near 0 (PaLM; Chapter 8).
    Unlike ``nn.losses.cross_entropy`` the default reduction is already the mean.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree: logits "
                         "must be targets.shape + (vocab_size,)")
    logits = logits.astype(mx.float32)
    loss = mx.fast.cross_entropy(logits, targets).mean()  # (B, T) → scalar
    if z_loss:
        loss = loss + z_loss * (mx.logsumexp(logits, axis=-1) ** 2).mean()
    return loss


def masked_cross_entropy(logits: mx.array, targets: mx.array, z_loss: float = 0.0) -> mx.array:
    """Mean cross-entropy over the targets that are not ``IGNORE``: (B, T, V), (B, T) → scalar.

    The prompt and padding positions of a fine-tuning row carry no loss; every kept token weighs the
    same, however many a row has. Built in Chapter 9, Fine-tuning.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree")
    keep = targets != IGNORE  # (B, T)
    logits = logits.astype(mx.float32)
    per_token = mx.fast.cross_entropy(logits, mx.maximum(targets, 0))  # (B, T), fused on a GPU
    count = mx.maximum(keep.sum(), 1).astype(mx.float32)
    loss = mx.where(keep, per_token, 0.0).sum() / count
    if z_loss:
        loss = loss + z_loss * mx.where(keep, mx.logsumexp(logits, axis=-1) ** 2, 0.0).sum() / count
    return loss


def token_loss(masked: bool) -> Callable:
    """``cross_entropy`` on token windows, ``masked_cross_entropy`` on fine-tuning rows."""
    return masked_cross_entropy if masked else cross_entropy


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Nats per token → bits per byte of text, comparable across tokenizers. Built in Chapter 5."""
    return loss * n_tokens / n_bytes / math.log(2)
