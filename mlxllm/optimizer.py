"""The optimizer: AdamW with weight decay on matrices only, and a warmup + cosine learning-rate
schedule.

AdamW on the matrices and Adam (no decay) on the rest share one schedule; ``parameter_groups``
names the parts of the model whose update:data ratios the trainer reports. Built in Chapter 6,
Training.
"""

from __future__ import annotations

import math
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from mlxllm.config import TrainConfig


def lr_schedule(config: TrainConfig) -> Callable:
    """step → learning rate: linear warmup to ``lr``, then a half cosine down to ``min_lr`` at
    ``steps``.

    Written with mx ops so the optimizer can evaluate it inside the compiled step (nanoGPT's
    formula). Built in Chapter 6, Training.
    """

    def schedule(step) -> mx.array:
        step = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        warm = config.lr * (step + 1) / (config.warmup + 1)
        progress = mx.clip((step - config.warmup) / max(1, config.steps - config.warmup), 0.0, 1.0)
        cosine = config.min_lr \
            + 0.5 * (1.0 + mx.cos(math.pi * progress)) * (config.lr - config.min_lr)
        return mx.where(step < config.warmup, warm, cosine)

    return schedule


def decays(path: str, parameter: mx.array) -> bool:
    """Weight decay for weight matrices only: a norm's scale, a bias or an embedding row pulled
    toward 0 would change what the layer means (a norm's gain, a token's identity), not just its
    size. Chapter 6."""
    return parameter.ndim >= 2 and not path.startswith(("token_embedding", "position_embedding"))


def make_optimizer(model: nn.Module, config: TrainConfig) -> optim.MultiOptimizer:
    """Two groups sharing one schedule: AdamW on the decayed matrices, Adam on everything else.

    Chapter 6. Adam is AdamW with decay 0, bit for bit, without the multiplication by 1 (one kernel
    less per step).
    """
    schedule = lr_schedule(config)
    betas = [config.beta1, config.beta2]
    with_decay = optim.AdamW(schedule, betas, weight_decay=config.weight_decay,
                             bias_correction=True)
    without_decay = optim.Adam(schedule, betas, bias_correction=True)
    optimizer = optim.MultiOptimizer([with_decay, without_decay], [decays])
    optimizer.init(model.trainable_parameters())
    return optimizer


def parameter_group(path: str) -> str:
    """The group a parameter's update:data ratio is reported under. Built in Chapter 6, Training."""
    parts = path.split(".")
    if parts[0] in ("token_embedding", "position_embedding"):
        return "embedding"
    if any("norm" in part for part in parts):
        return "norm"
    if "attention" in parts:
        return "attention"
    if "ffn" in parts:
        return "ffn"
    return parts[0]  # "head"


def parameter_groups(model: nn.Module) -> list[str]:
    """Sorted group names of the model's trainable parameters (the order of the step's ratios).

    Chapter 6.
    """
    return sorted({parameter_group(path) for path, _ in tree_flatten(model.trainable_parameters())})
