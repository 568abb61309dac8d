"""Training: the settings (``TrainConfig``), the compiled step, evaluation, and the ``Trainer`` that runs them.

MLX's idiom is the skeleton: ``nn.value_and_grad`` → ``optimizer.update`` → ``mx.compile`` over the
model, optimizer and random state → one ``mx.eval`` per step. ``Trainer`` adds seeded batches,
diagnostics, NaN detection, the best model, early stopping and an exact resume. Built in Chapter 6, Training.
The same trainer fine-tunes (Chapter 9): given rows of (inputs, targets) with ``IGNORE`` targets it draws
whole rows and averages the loss over the kept targets only; only trainable parameters (LoRA) are updated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm import tqdm

from mlxllm import checkpoint
from mlxllm.data import get_batch, tokenizer_fingerprint
from mlxllm.distributed import all_mean, broadcast_from_main, check_divisible, check_same_everywhere, digest, is_main, \
    shard_rows, world
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.optimizer import make_optimizer, parameter_group, parameter_groups
from mlxllm.prediction import bits_per_byte, cross_entropy

# parameters and activations in float32 or bfloat16, or bfloat16 compute over float32 master weights (mixed)
DTYPES = ("float32", "bfloat16", "mixed-bfloat16")
SAVE_POLICIES = ("last", "best")
# one forward pass of the loss estimate joins whole batches (at least one) up to both sizes
EVAL_TOKENS, EVAL_LOGITS = 1 << 17, 1 << 24  # tokens; elements of the (tokens, V) logits (64 MB in float32)
IGNORE = -1  # a target that carries no loss (a prompt or padding position in fine-tuning rows)


def option(default, help: str, **metadata):
    """A TrainConfig field whose help text (and choices) the ``mlxllm train`` options are generated from."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    """Every training choice. Defaults are nanoGPT's shakespeare-char recipe at the CPU size. Built in Chapter 6."""

    steps: int = option(2000, "optimizer steps (the cosine schedule ends here)")
    batch_size: int = option(12, "sequences per micro-batch")
    context: int | None = option(None, "tokens per training window (default: the model's context_length)")
    lr: float = option(1e-3, "peak learning rate, reached after --warmup steps")
    min_lr: float = option(1e-4, "the cosine decay ends here at --steps")
    warmup: int = option(100, "linear warmup steps")
    weight_decay: float = option(0.1, "AdamW decay, on matrices only (not norms, biases, embeddings)")
    beta1: float = option(0.9, "AdamW's first-moment decay")
    beta2: float = option(0.99, "AdamW's second-moment decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    grad_accumulation: int = option(1, "micro-batches averaged per optimizer step")
    eval_interval: int = option(250, "evaluate every this many steps (and at the end)")
    eval_batches: int = option(20, "batches per loss estimate")
    seed: int = option(1337, "model init, batch order and dropout all derive from it (>= 0)")
    dtype: str = option("float32", "parameters and activations; mixed-bfloat16: bfloat16 compute, float32 weights "
                                   "and optimizer state", choices=DTYPES)
    checkpoint_every: int = option(0, "save a resumable checkpoint every this many steps (0: only at the end)")
    save: str = option("last", "the model kept in the checkpoint: the last, or the best by validation loss",
                       choices=SAVE_POLICIES)
    patience: int = option(0, "stop after this many evaluations without a better validation loss (0: never)")
    z_loss: float = option(0.0, "weight of the log Z² penalty (0: off)")
    val_fraction: float = option(0.1, "the last this fraction of the corpus is validation")

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accumulation", "eval_interval", "eval_batches"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.context is not None:
            _check_int("context", self.context, minimum=1)
        for name in ("warmup", "checkpoint_every", "seed", "patience"):
            _check_int(name, getattr(self, name), minimum=0)
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.z_loss < 0:
            raise ValueError("weight_decay, grad_clip and z_loss must be >= 0")
        for name, allowed in (("dtype", DTYPES), ("save", SAVE_POLICIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def parameter_dtype(self) -> mx.Dtype:
        """The dtype parameters and optimizer state are kept in."""
        return mx.bfloat16 if self.dtype == "bfloat16" else mx.float32

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped after its current step (and saved, given an ``out`` folder)."""


# ---------------------------------------------------------------------------------------------------------
# The compiled step and evaluation.


def masked_cross_entropy(logits: mx.array, targets: mx.array, z_loss: float = 0.0) -> mx.array:
    """Mean cross-entropy over the positions whose target is not ``IGNORE`` (B, T, V), (B, T) → scalar.

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


def get_rows(rows: mx.array, batch_size: int, key: mx.array) -> tuple[mx.array, mx.array]:
    """(B, T) inputs and targets of ``batch_size`` rows drawn (with replacement) from (N, 2, T) ``rows``."""
    picked = rows[mx.random.randint(0, rows.shape[0], (batch_size,), key=key)]  # (B, 2, T)
    return picked[:, 0], picked[:, 1]


def make_train_step(model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig,
                    compile: bool = True, masked: bool = False) -> Callable:
    """``step(inputs, targets)`` on (A, B, T) micro-batches → (loss, gradient norm, learning rate).

    Compiled with the model, optimizer and random state as implicit inputs and outputs, so the graph is
    traced once and parameters are updated in place; the caller evaluates the outputs and the state.
    ``compile=False`` is for comparison. The ids were range-checked once when the trainer was made, so
    the model skips that check here. ``masked=True``: targets equal to ``IGNORE`` carry no loss
    (fine-tuning rows, Chapter 9). Gradients are taken for the trainable parameters only, so a frozen
    model with LoRA adapters updates the adapters only.
    """
    loss_fn = token_loss(masked)
    if config.dtype == "mixed-bfloat16":
        loss_and_grad = mixed_precision(model, config, masked)
    else:
        loss_and_grad = nn.value_and_grad(model, lambda m, x, y: loss_fn(m(x, check_ids=False), y,
                                                                          z_loss=config.z_loss))
    group = world()
    state = [model.state, optimizer.state, mx.random.state]

    def step(inputs: mx.array, targets: mx.array):
        loss, grads = loss_and_grad(model, inputs[0], targets[0])
        for i in range(1, inputs.shape[0]):  # gradient accumulation: average over micro-batches
            more_loss, more_grads = loss_and_grad(model, inputs[i], targets[i])
            loss, grads = loss + more_loss, tree_map(mx.add, grads, more_grads)
        if inputs.shape[0] > 1:
            loss, grads = loss / inputs.shape[0], tree_map(lambda g: g / inputs.shape[0], grads)
        # data parallel (Appendix): one all-reduce makes every rank's gradient the global batch's mean
        loss, grads = all_mean(loss, group), nn.average_gradients(grads, group)
        return (loss, *apply_gradients(model, optimizer, config, grads))

    return mx.compile(step, inputs=state, outputs=state) if compile else step


def apply_gradients(model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig,
                    grads: dict) -> tuple[mx.array, mx.array]:
    """The end of a training step: clip ``grads`` by their global norm, update → (gradient norm, learning rate)."""
    grad_norm = mx.sqrt(sum_of_squares([g for _, g in tree_flatten(grads)]).sum())
    if config.grad_clip > 0:  # rescale all gradients together when their global norm is too large
        scale = mx.minimum(1.0, config.grad_clip / (grad_norm + 1e-6))
        grads = tree_map(lambda g: g * scale.astype(g.dtype), grads)
    optimizer.update(model, grads)
    return grad_norm, optimizer.learning_rate


def sum_of_squares(arrays: list[mx.array]) -> mx.array:
    """(N,) float32: each array's sum of squares, as N reductions and one stack (no chain of N adds,
    which ``mx.compile`` would fuse into one more kernel to build on a GPU's first run)."""
    return mx.stack([mx.square(a.astype(mx.float32)).sum() for a in arrays])


def make_update_ratios(model: nn.Module, compile: bool = True) -> tuple[Callable, Callable]:
    """``(sums, ratios)`` for the update:data ratio ‖Δθ‖ / ‖θ‖ per ``parameter_groups`` entry (Karpathy:
    around 1e-3 is healthy). Chapter 6.

    ``sums(before, after)`` → (2, P) on the device: ‖Δθ‖² and ‖θ‖² of each trainable parameter, from the
    parameters before and after a step (arrays the step leaves behind anyway, so the step itself stays
    the same); ``ratios(sums)`` → {group: ratio}, summed per group on the host.
    """
    groups = [parameter_group(path) for path, _ in tree_flatten(model.trainable_parameters())]  # (P,)
    names = parameter_groups(model)  # (G,)
    member = np.array([[group == name for group in groups] for name in names], dtype=np.float64)  # (G, P)

    def sums(before: dict, after: dict) -> mx.array:
        old = [p.astype(mx.float32) for _, p in tree_flatten(before)]
        new = [p.astype(mx.float32) for _, p in tree_flatten(after)]
        return mx.stack([sum_of_squares([n - o for o, n in zip(old, new)]), sum_of_squares(old)])  # (2, P)

    def ratios(sums: mx.array) -> dict[str, float]:
        update_sq, data_sq = np.array(sums, dtype=np.float64) @ member.T  # (2, P) @ (P, G) → two (G,)
        return dict(zip(names, np.sqrt(update_sq / (data_sq + 1e-12)).tolist()))

    return (mx.compile(sums) if compile else sums), ratios


def mixed_precision(model: nn.Module, config: TrainConfig, masked: bool = False) -> Callable:
    """``loss_and_grad(model, x, y)`` that computes in bfloat16 from the float32 master weights: the forward
    pass sees bfloat16 copies, and the gradients come back through the cast in float32. Chapter 6."""

    def loss(parameters, x, y):
        model.update(tree_map(lambda p: p.astype(mx.bfloat16), parameters))
        return token_loss(masked)(model(x, check_ids=False), y, z_loss=config.z_loss)

    value_and_grad = mx.value_and_grad(loss)

    def loss_and_grad(model, x, y):
        master = model.trainable_parameters()
        value, grads = value_and_grad(master, x, y)
        model.update(master)  # the optimizer updates the float32 weights
        return value.astype(mx.float32), grads

    return loss_and_grad


def estimate_loss(model: nn.Module, ids: mx.array, config: TrainConfig, key: mx.array,
                  context: int | None = None) -> float:
    """Mean loss over ``config.eval_batches`` batches drawn from ``key``, with dropout off. Chapter 6.

    ``ids`` is a token stream (windows of ``context``) or (N, 2, T) fine-tuning rows (masked loss, Chapter 9).
    Batches go through the model joined, up to ``EVAL_TOKENS`` tokens and ``EVAL_LOGITS`` logits per forward
    pass (fewer, larger launches on a GPU); each batch's mean loss is still its own, so the estimate is the same.
    """
    was_training, group = model.training, world()
    context = context or config.context or model.config.context_length
    rows = ids.ndim == 3
    loss_fn = token_loss(rows)
    batches = [get_rows(ids, config.batch_size, k) if rows else get_batch(ids, config.batch_size, context, k)
               for k in mx.random.split(key, config.eval_batches)]  # [((B, T), (B, T))] * eval_batches
    shards = [tuple(shard_rows(b, group) for b in batch) for batch in batches]  # this rank's (b, T) rows
    b, tokens = shards[0][0].shape[0], shards[0][0].size  # rows and tokens per batch, on this rank
    per_pass = max(1, min(EVAL_TOKENS // tokens, EVAL_LOGITS // (tokens * model.config.vocab_size)))
    model.eval()
    losses = []
    for first in range(0, len(shards), per_pass):
        joined = shards[first:first + per_pass]
        logits = model(mx.concatenate([x for x, _ in joined]), check_ids=False)  # (k * b, T, V)
        losses += [loss_fn(logits[i * b:(i + 1) * b], y) for i, (_, y) in enumerate(joined)]
        mx.async_eval(losses[-len(joined):])  # queued: the device runs this pass while Python builds the next
    model.train(was_training)
    return all_mean(mx.stack(losses).mean(), group).item()  # one host read per evaluation


# ---------------------------------------------------------------------------------------------------------
# The trainer.


def new_metrics() -> dict:
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "update_ratio": {},
            "eval": {"step": [], "train_loss": [], "val_loss": []}, "best": None}


@dataclass
class Trainer:
    """Trains ``model`` on ``train_ids`` with ``config``; ``run()`` goes to ``config.steps``. Built in Chapter 6.

    Made by ``Trainer.create`` (fresh) or ``Trainer.resume`` (from a checkpoint), which also build the
    optimizer and agree with the other ranks. The state that makes resuming exact is all here: parameters,
    optimizer moments and step, and the key the next batch and the next step's dropout come from.
    """

    DIAGNOSTICS_EVERY = 10  # steps between update:data ratio measurements (and metric reads)
    KEYS_AHEAD = 64  # steps whose random keys are split, and their dropout seeds read, at once

    model: TransformerLM
    config: TrainConfig
    train_ids: np.ndarray
    val_ids: np.ndarray
    optimizer: optim.Optimizer
    tokenizer: object = None
    source: dict = field(default_factory=dict)  # what the run trains on: corpus, its sha256, tokenizer, preset
    step: int = 0
    batch_key: mx.array | None = None
    metrics: dict = field(default_factory=new_metrics)

    def __post_init__(self):
        self.group = world()  # size 1 unless started by mlx.launch (Appendix, Data-parallel training)
        self.rows = np.asarray(self.train_ids).ndim == 3  # fine-tuning rows (N, 2, T) instead of a stream
        if self.rows:
            self._check_rows()
        else:
            self._check_stream()
        self._train = mx.array(np.asarray(self.train_ids, dtype=np.int32))
        self._val = mx.array(np.asarray(self.val_ids, dtype=np.int32))
        if self.batch_key is None:
            self.batch_key = mx.random.key(self.config.seed)
        self._step_fn = None  # (compiled?, step, update sums, update ratios), made at the first step
        self.kernel_builder = None  # a mlxllm.kernels.StepBuilder still building the compiled step's kernels
        self._pending = []  # (grad_norm, lr) arrays not yet read to the host
        self._keys = []  # (from batch_key, next batch_key, batch key, dropout seed) of the coming steps
        self._stop_signal = None
        self.best_parameters = None  # the parameters at the best evaluation (config.save == "best")

    def _check_rows(self) -> None:
        """Fine-tuning rows: (N, 2, T) inputs and targets, ids in the vocabulary, targets may be IGNORE."""
        shapes = {np.asarray(self.train_ids).shape[1:], np.asarray(self.val_ids).shape[1:]}
        vocab_size = self.model.config.vocab_size
        if len(shapes) != 1 or next(iter(shapes))[0] != 2:
            raise ValueError(f"fine-tuning rows must be (N, 2, T) arrays of the same T for both splits, got "
                             f"{np.asarray(self.train_ids).shape} and {np.asarray(self.val_ids).shape}")
        self.context = next(iter(shapes))[1]
        if self.context > self.model.config.context_length:
            raise ValueError(f"rows of {self.context} tokens are longer than the model's context_length "
                             f"{self.model.config.context_length}; drop or shorten the longest conversations")
        for name, rows in (("training", self.train_ids), ("validation", self.val_ids)):
            rows = np.asarray(rows)
            if len(rows) == 0 or not (rows[:, 1] != IGNORE).any():
                raise ValueError(f"the {name} rows have no target tokens; give conversations with answers")
            inputs, targets = rows[:, 0], rows[:, 1]
            if inputs.min() < 0 or max(inputs.max(), targets.max()) >= vocab_size or targets.min() < IGNORE:
                raise ValueError(f"the {name} rows hold ids outside the model's vocabulary of {vocab_size}; "
                                 "they were made by another tokenizer")

    def _check_stream(self) -> None:
        """A token stream: long enough for one window of context + 1, ids in the vocabulary."""
        self.context = self.config.context or self.model.config.context_length
        if self.context > self.model.config.context_length:
            raise ValueError(f"context {self.context} is longer than the model's context_length "
                             f"{self.model.config.context_length}; train on shorter windows or make a larger model")
        check_divisible(self.config.batch_size, self.group)
        for name, ids in (("training", self.train_ids), ("validation", self.val_ids)):
            ids = np.asarray(ids)
            if len(ids) < self.context + 1:
                raise ValueError(f"the {name} split has {len(ids):,} tokens, too few for windows of context "
                                 f"{self.context} (+1 target); use a smaller --context or a larger corpus")
            if ids.min() < 0 or ids.max() >= self.model.config.vocab_size:  # once here, so the step skips it
                raise ValueError(f"the {name} ids go up to {int(ids.max())} but the model's vocabulary has "
                                 f"{self.model.config.vocab_size} tokens; they were made by another tokenizer")

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, train_ids, val_ids, tokenizer=None,
               source: dict | None = None) -> "Trainer":
        """A freshly initialised model (seeded by ``config.seed``), its optimizer, and its trainer."""
        mx.random.seed(config.seed)
        model = TransformerLM(model_config)
        model.set_dtype(config.parameter_dtype)
        model.train()
        trainer = cls(model, config, train_ids, val_ids, make_optimizer(model, config), tokenizer, source or {})
        trainer.sync_ranks()
        return trainer

    @classmethod
    def resume(cls, folder: str | Path, train_ids, val_ids, config: TrainConfig | None = None,
               tokenizer=None) -> "Trainer":
        """Continue from a checkpoint exactly where it stopped: parameters, optimizer state, step, batch key,
        metrics (``config`` may change only ``steps``, ``checkpoint_every``, ``patience`` and ``save``).
        ``tokenizer``: the checkpoint's, when the caller has loaded it already."""
        manifest = checkpoint.read_manifest(folder)
        train_config = TrainConfig.from_dict(manifest["train"])
        if config is not None:
            keep = {name: getattr(train_config, name) for name in checkpoint.RESUMABLE_CHANGES}
            if problem := checkpoint.first_config_mismatch(manifest["train"], {**config.to_dict(), **keep}):
                raise checkpoint.CheckpointError(f"cannot resume {folder} with another training config: {problem}")
            train_config = config
        state = checkpoint.read_json(folder, manifest, "state.json")
        metrics = checkpoint.read_json(folder, manifest, "metrics.json")
        model = TransformerLM(ModelConfig.from_dict(manifest["model"]))
        model.set_dtype(train_config.parameter_dtype)
        checkpoint.load_model_weights(model, folder, state.get("resume_from", "model.safetensors"), manifest)
        model.train()
        optimizer = make_optimizer(model, train_config)
        saved = checkpoint.read_arrays(folder, manifest, "optimizer.safetensors")
        checkpoint.check_arrays(saved, dict(tree_flatten(optimizer.state)), f"optimizer state in {folder} does not match")
        optimizer.state = tree_unflatten(list(saved.items()))
        if tokenizer is None:
            tokenizer = checkpoint.load_checkpoint_tokenizer(folder, manifest)
        trainer = cls(model, train_config, train_ids, val_ids, optimizer, tokenizer, manifest.get("source") or {},
                      state["step"], mx.array(state["batch_key"], dtype=mx.uint32), metrics)
        # the best parameters are known only where the run kept them: model.safetensors beside a newer
        # latest.safetensors, or the current model when it was the best (a "last" run never kept them)
        if train_config.save == "best" and state.get("resume_from") == "latest.safetensors":
            best = checkpoint.read_arrays(folder, manifest, "model.safetensors")
            trainer.best_parameters = tree_unflatten(list(best.items()))
        elif train_config.save == "best" and manifest["train"].get("save") == "best" and manifest.get("best"):
            trainer.best_parameters = trainer.model.parameters()
        if (saved_size := state.get("world_size", 1)) != trainer.group.size():
            warnings.warn(f"{folder} was written by a run over {saved_size} rank(s) and resumes over "
                          f"{trainer.group.size()}: the global batches are the same, but rounding differs, so the "
                          "continuation is close to, not bit-identical with, an uninterrupted run")
        trainer.sync_ranks()
        return trainer

    @property
    def tokens_per_step(self) -> int:
        return self.config.grad_accumulation * self.config.batch_size * self.context

    def next_batch(self) -> tuple[mx.array, mx.array]:
        """(A, B, T) inputs and targets for one optimizer step, from the next split of ``batch_key``.

        The step's dropout randomness is derived from the same key (MLX's global random state is set
        from it), so ``batch_key`` alone determines every random draw of the rest of the run.
        """
        c = self.config
        self.batch_key, key, seed = self._next_keys()
        mx.random.seed(seed ^ self.group.rank())  # key(seed) == the step's dropout key (on rank 0)
        if self.rows:
            inputs, targets = get_rows(self._train, c.grad_accumulation * c.batch_size, key)
        else:
            inputs, targets = get_batch(self._train, c.grad_accumulation * c.batch_size, self.context, key)
        shape = (c.grad_accumulation, c.batch_size, self.context)
        return shard_rows(inputs.reshape(shape), self.group), shard_rows(targets.reshape(shape), self.group)

    def _next_keys(self) -> tuple[mx.array, mx.array, int]:
        """(next batch_key, batch key, dropout seed) of the coming step: split ``KEYS_AHEAD`` steps ahead.

        The splits run on the CPU stream and their dropout seeds are read in one transfer, so the host
        waits once per ``KEYS_AHEAD`` steps, never for queued device work. Exactly the keys that one
        split per step would give; a ``batch_key`` set from outside (a resume) starts a new chain.
        """
        if not self._keys or self._keys[0][0] is not self.batch_key:
            chain, parent = [], self.batch_key
            for _ in range(self.KEYS_AHEAD):
                following, key, dropout_key = mx.random.split(parent, 3, stream=mx.cpu)
                chain.append((parent, following, key, dropout_key))
                parent = following
            seeds = mx.stack([link[3] for link in chain]).tolist()  # (KEYS_AHEAD, 2) uint32 words
            self._keys = [(parent, following, key, high << 32 | low)
                          for (parent, following, key, _), (high, low) in zip(chain, seeds)]
        _, following, key, seed = self._keys.pop(0)
        return following, key, seed

    def train_step(self) -> float:
        """One optimizer step; returns the loss, its one host read per step (it also catches NaN).

        Gradient norm and learning rate stay on the device until ``flush_metrics`` reads them all at once;
        every ``DIAGNOSTICS_EVERY`` steps the update:data ratios are measured and the metrics flushed.
        """
        return self._finish(self._launch(self.step + 1))

    def steps(self, n: int) -> Iterator[float]:
        """Run ``n`` optimizer steps, yielding each loss; step k + 1 is queued before step k's loss is read,
        so the device never waits for Python. Closing the generator early finishes the queued step."""
        launched = self._launch(self.step + 1) if n > 0 else None
        try:
            for i in range(n):
                following = self._launch(launched[0] + 1) if i + 1 < n else None
                current, launched = launched, None  # a step that fails its check is not finished twice
                loss = self._finish(current)
                launched = following
                yield loss
        finally:
            if launched is not None:  # the model already holds the queued step's state: record it too
                self._finish(launched)

    def _launch(self, step: int) -> tuple:
        """Queue optimizer step number ``step`` on the device (``mx.async_eval``) and return its outputs.

        From here on the model and optimizer hold that step's (lazy) state; ``_finish`` reads its loss.
        """
        if self.kernel_builder is not None and self.kernel_builder.done():
            self.kernel_builder = None
        compiled = self.kernel_builder is None  # else the same step, uncompiled, while its kernels are built
        if self._step_fn is None or self._step_fn[0] != compiled:  # made lazily: after a resume, for the restored state
            self._step_fn = (compiled, make_train_step(self.model, self.optimizer, self.config, compiled, self.rows),
                             *make_update_ratios(self.model, compiled))
        _, step_fn, update_sums, self._update_ratios = self._step_fn
        # every few steps the update:data ratios, from the parameters before (kept) and after the step
        before = self.model.trainable_parameters() if step % self.DIAGNOSTICS_EVERY == 0 else None
        inputs, targets = self.next_batch()
        loss, grad_norm, lr = step_fn(inputs, targets)
        ratios = [] if before is None else [update_sums(before, self.model.trainable_parameters())]
        # the one evaluation per step: the outputs and every piece of state the next step reads
        mx.async_eval(loss, grad_norm, lr, ratios, self.model.state, self.optimizer.state, self.batch_key)
        return step, loss, grad_norm, lr, ratios

    def _finish(self, launched: tuple) -> float:
        """Wait for a launched step's loss, check it, and record the step's metrics; returns the loss."""
        step, loss, grad_norm, lr, ratios = launched
        loss = loss.item()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {step}; training stopped and the "
                                   "last good checkpoint was kept. Try a lower learning rate, a longer warmup, "
                                   "gradient clipping, or float32")
        self.step = step
        self.metrics["step"].append(self.step)
        self.metrics["loss"].append(round(loss, 6))
        self._pending.append((grad_norm, lr))
        if ratios:
            m = self.metrics["update_ratio"]
            m["step"] = m.get("step", []) + [self.step]
            for group, ratio in self._update_ratios(ratios[0]).items():
                m.setdefault(group, []).append(ratio)
            self.flush_metrics()
        return loss

    def flush_metrics(self) -> None:
        """Read the pending gradient norms and learning rates to the host.

        Each is read as it is, with no new device op: an op would queue behind the step in flight and
        the host would wait for that step (``mx.stack`` did).
        """
        if self._pending:
            self.metrics["grad_norm"] += [round(g.item(), 6) for g, _ in self._pending]
            self.metrics["lr"] += [lr.item() for _, lr in self._pending]
            self._pending = []

    def sync_ranks(self) -> None:
        """Data parallel: stop every rank if they disagree, then give all rank 0's parameters and optimizer state."""
        if self.group.size() > 1:
            check_same_everywhere(self.fingerprints(), self.group)
            self.model.update(broadcast_from_main(self.model.parameters(), self.group))
            self.optimizer.state = broadcast_from_main(self.optimizer.state, self.group)
            mx.eval(self.model.parameters(), self.optimizer.state)

    def fingerprints(self) -> dict[str, bytes]:
        """Digests of everything the ranks of one data-parallel run must share (Appendix, Data-parallel training)."""
        return {"model config": digest(json.dumps(self.model.config.to_dict(), sort_keys=True)),
                "training config": digest(json.dumps(self.config.to_dict(), sort_keys=True)),
                "tokenizer": digest(tokenizer_fingerprint(self.tokenizer) if self.tokenizer else ""),
                "training data": digest(np.asarray(self.train_ids), np.asarray(self.val_ids)),
                "checkpoint state (step, batch key)": digest(json.dumps([self.step, self.batch_key.tolist()])),
                "MLX version": digest(mx.__version__),
                "mlxllm source code": digest(*(p.read_bytes() for p in sorted(Path(__file__).parent.rglob("*.py"))))}

    def evaluate(self) -> dict[str, float]:
        """Train and validation loss on fixed batches (the same at every evaluation: comparable curves);
        a better validation loss than any before becomes ``metrics["best"]``."""
        train_key, val_key = mx.random.split(mx.random.key(self.config.seed + 1))
        losses = {"train_loss": estimate_loss(self.model, self._train, self.config, train_key, self.context),
                  "val_loss": estimate_loss(self.model, self._val, self.config, val_key, self.context)}
        if not all(map(math.isfinite, losses.values())):
            raise TrainingDiverged(f"the evaluation loss is {losses} at step {self.step}; the last good "
                                   "checkpoint was kept. Try a lower learning rate or float32")
        evals = self.metrics["eval"]
        if not evals["step"] or evals["step"][-1] != self.step:
            evals["step"].append(self.step)
            evals["train_loss"].append(round(losses["train_loss"], 6))
            evals["val_loss"].append(round(losses["val_loss"], 6))
        best = self.metrics.get("best")
        if best is None or losses["val_loss"] < best["val_loss"]:
            self.metrics["best"] = {"step": self.step, "val_loss": round(losses["val_loss"], 6)}
            if self.config.save == "best":  # references, not copies: the optimizer makes new arrays each step
                self.best_parameters = self.model.parameters()
        return losses

    def evaluations_without_improvement(self) -> int:
        evals, best = self.metrics["eval"], self.metrics.get("best")
        return 0 if best is None else sum(step > best["step"] for step in evals["step"])

    def val_bits_per_byte(self, val_loss: float) -> float | None:
        """Validation loss in bits per byte of text (needs the tokenizer to count the bytes)."""
        if self.tokenizer is None or self.rows:
            return None
        n_bytes = len(self.tokenizer.decode_bytes(np.asarray(self.val_ids).tolist()))
        return bits_per_byte(val_loss, len(self.val_ids), n_bytes)

    def run(self, until: int | None = None, out: str | Path | None = None, progress: bool = True) -> dict:
        """Train up to step ``until`` (default ``config.steps``), evaluating and checkpointing on schedule.

        Returns the last evaluation ({"train_loss", "val_loss"}); ``out`` receives the checkpoint.
        Stops early after ``config.patience`` evaluations without improvement; on SIGINT or SIGTERM it
        saves a resumable checkpoint after the current step and raises ``TrainingInterrupted``.
        """
        c, until = self.config, min(until or self.config.steps, self.config.steps)
        losses = None
        main = is_main(self.group)  # rank 0 alone shows progress and writes checkpoints
        # no explicit `disable` when progress is wanted, so that TQDM_DISABLE=1 still silences the bar
        bar = tqdm(total=until, initial=self.step, unit="step", dynamic_ncols=True,
                   **({} if progress and main else {"disable": True}))
        started, start_step = time.perf_counter(), self.step
        evaluated = self.metrics["eval"]["step"]
        if self.step % c.eval_interval == 0 and (not evaluated or evaluated[-1] != self.step):
            losses = self.evaluate()  # the starting point (step 0)
        self.stopped_early = False
        with self._stop_on_signals():
            while self.step < until and not self.stopped_early and self._stop_signal is None:
                # the next evaluation or checkpoint: the model must be exactly there, so the steps up to
                # it run back to back and nothing is queued past it
                end = min([until] + [(self.step // every + 1) * every
                                     for every in (c.eval_interval, c.checkpoint_every) if every])
                with contextlib.closing(self.steps(end - self.step)) as steps:  # closed: nothing left queued
                    for loss in steps:
                        rate = (self.step - start_step) / (time.perf_counter() - started)
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate * self.tokens_per_step:,.0f}",
                                        refresh=False)
                        if self._stop_signal is not None:
                            break  # closing the generator finishes the step already queued
                if self.step % c.eval_interval == 0 or self.step == until:  # before saving: checkpoints include it
                    losses = self.evaluate()
                    self.stopped_early = bool(c.patience) and self.evaluations_without_improvement() >= c.patience
                if main and out is not None and c.checkpoint_every and self.step % c.checkpoint_every == 0 \
                        and self._stop_signal is None and not self.stopped_early:
                    self.save(out)
        bar.close()
        if self._stop_signal is not None:
            if main and out is not None:
                self.save(out)
            name = signal.Signals(self._stop_signal).name
            raise TrainingInterrupted(f"{name} at step {self.step}" + (f"; the checkpoint in {out} is resumable"
                                                                       if out is not None else ""))
        if losses is None or self.metrics["eval"]["step"][-1] != self.step:
            losses = self.evaluate()
        if main and out is not None:
            self.save(out)
        self.flush_metrics()
        return losses

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """While training, SIGINT and SIGTERM only ask the loop to stop after the current step (a second one
        stops at once)."""

        def ask_to_stop(number, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = number

        self._stop_signal, saved = None, {}
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            saved = {number: signal.signal(number, ask_to_stop) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)

    def save(self, folder: str | Path) -> Path:
        """Write the checkpoint into ``folder`` as one unit (see ``mlxllm.checkpoint.save_checkpoint``)."""
        self.flush_metrics()
        return checkpoint.save_checkpoint(self, folder)

