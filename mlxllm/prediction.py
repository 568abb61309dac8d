"""Part 4 — Next-token prediction: logits → probabilities, the loss, bits per byte.

The logits at position t are the model's guess for token t+1: training compares them with the input
shifted by one (here); generation samples from the last position and feeds the choice back in
(``mlxllm.generation``).
"""

import math

import mlx.core as mx


def probabilities(logits: mx.array) -> mx.array:
    """Softmax over the vocabulary, in float32 (B, T, V) → (B, T, V). Built in Chapter 5."""
    return mx.softmax(logits.astype(mx.float32), axis=-1)


def cross_entropy(logits: mx.array, targets: mx.array, z_loss: float = 0.0) -> mx.array:
    """Mean over positions of logsumexp(logits) − logit[target], in nats per token. Built in Chapter 5.

    ``mx.fast.cross_entropy`` computes each position's term in one fused kernel on a GPU (the CPU runs
    the same two steps unfused). ``z_loss > 0`` adds z_loss · mean(logsumexp²), which keeps the softmax
    normaliser log Z near 0 (PaLM; Chapter 8). Unlike ``nn.losses.cross_entropy`` the default reduction
    is already the mean.
    """
    if logits.shape[:-1] != targets.shape:
        raise ValueError(f"logits {logits.shape} and targets {targets.shape} disagree: logits must be "
                         "targets.shape + (vocab_size,)")
    logits = logits.astype(mx.float32)
    loss = mx.fast.cross_entropy(logits, targets).mean()  # (B, T) → scalar
    if z_loss:
        loss = loss + z_loss * (mx.logsumexp(logits, axis=-1) ** 2).mean()
    return loss


def bits_per_byte(loss: float, n_tokens: int, n_bytes: int) -> float:
    """Nats per token → bits per byte of text, comparable across tokenizers. Built in Chapter 5."""
    return loss * n_tokens / n_bytes / math.log(2)
