"""Training: the compiled step, evaluation, and the ``Trainer`` that runs them. Chapter 6.

MLX's idiom is the skeleton: ``nn.value_and_grad`` → ``optimizer.update`` → ``mx.compile`` over
the model, optimizer and random state → one ``mx.eval`` per step. ``Trainer`` adds seeded
batches, diagnostics, NaN detection, the best model, early stopping and an exact resume; its
settings are ``mlxllm.config.TrainConfig``, its files ``mlxllm.checkpoint``. The same trainer
fine-tunes (Chapter 9): given rows of (inputs, targets) with ``IGNORE`` targets it draws whole
rows and averages the loss over the kept targets only; only trainable parameters (LoRA) are
updated.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map
from tqdm import tqdm

from mlxllm import checkpoint
from mlxllm.config import ModelConfig, TrainConfig
from mlxllm.data import get_batch, tokenizer_fingerprint
from mlxllm.distributed import (all_mean, broadcast_from_main, check_divisible,
                                check_same_everywhere, digest, is_main, shard_rows, world)
from mlxllm.model import TransformerLM
from mlxllm.optimizer import make_optimizer, parameter_group, parameter_groups
# IGNORE and masked_cross_entropy are also this module's names (fine-tuning imports them from here)
from mlxllm.prediction import IGNORE, bits_per_byte, masked_cross_entropy, token_loss  # noqa: F401

# one forward pass of the loss estimate joins whole batches (at least one) up to both sizes:
# tokens, and elements of the (tokens, V) logits (64 MB in float32)
EVAL_TOKENS, EVAL_LOGITS = 1 << 17, 1 << 24


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the run stopped after its step (and saved, given an ``out``)."""


# --------------------------------------------------------------------------------------------------
# The compiled step and evaluation.


def get_rows(rows: mx.array, batch_size: int, key: mx.array) -> tuple[mx.array, mx.array]:
    """(B, T) inputs and targets of ``batch_size`` rows drawn, with replacement, from (N, 2, T)."""
    picked = rows[mx.random.randint(0, rows.shape[0], (batch_size,), key=key)]  # (B, 2, T)
    return picked[:, 0], picked[:, 1]


def row_lengths(rows) -> np.ndarray:
    """(N,) the tokens of each (inputs, targets) row up to its last kept target (at least 1).
    Chapter 9."""
    kept = np.asarray(rows)[:, 1] != IGNORE  # (N, T)
    return np.where(kept.any(axis=1), kept.shape[1] - np.argmax(kept[:, ::-1], axis=1), 1)


def bucket(length: int, context: int) -> int:
    """The width a batch whose longest row is ``length`` is cut to: a power of two from 32, at
    most ``context``, so that the compiled step is traced for a few widths only. Chapter 9."""
    return min(context, max(32, 1 << (int(length) - 1).bit_length()))


def make_train_step(model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig,
                    compile: bool = True, masked: bool = False) -> Callable:
    """``step(inputs, targets)`` on (A, B, T) micro-batches → (loss, gradient norm, learning rate).

    Compiled with the model, optimizer and random state as implicit inputs and outputs, so the graph
    is traced once and parameters are updated in place; the caller evaluates the outputs and the
    state. ``compile=False`` is for comparison. The ids were range-checked once when the trainer was
    made, so the model skips that check here. ``masked=True``: targets equal to ``IGNORE`` carry no
    loss (fine-tuning rows, Chapter 9). Gradients are taken for the trainable parameters only, so a
    frozen model with LoRA adapters updates the adapters only.
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
        # data parallel (Appendix): one all-reduce makes every rank's gradient the global batch's
        # mean
        loss, grads = all_mean(loss, group), nn.average_gradients(grads, group)
        return (loss, *apply_gradients(model, optimizer, config, grads))

    return mx.compile(step, inputs=state, outputs=state) if compile else step


def apply_gradients(model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig,
                    grads: dict) -> tuple[mx.array, mx.array]:
    """The end of a training step: clip ``grads`` by their global norm and update the model
    → (gradient norm, learning rate)."""
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


def make_update_ratios(model: nn.Module) -> tuple[Callable, Callable]:
    """``(sums, ratios)`` for the update:data ratio ‖Δθ‖ / ‖θ‖ per ``parameter_groups`` entry
    (Karpathy: around 1e-3 is healthy). Chapter 6.

    ``sums(before, after)`` → (2, P) on the device, compiled: ‖Δθ‖² and ‖θ‖² of each trainable
    parameter, from the parameters before and after a step (arrays the step leaves behind anyway,
    so the step itself stays the same); ``ratios(sums)`` → {group: ratio}, summed on the host.
    """
    groups = [parameter_group(path) for path, _ in tree_flatten(model.trainable_parameters())]  # P
    names = parameter_groups(model)  # (G,)
    member = np.array([[g == name for g in groups] for name in names], dtype=np.float64)  # (G, P)

    def sums(before: dict, after: dict) -> mx.array:
        old = [p.astype(mx.float32) for _, p in tree_flatten(before)]
        new = [p.astype(mx.float32) for _, p in tree_flatten(after)]
        return mx.stack([sum_of_squares([n - o for o, n in zip(old, new)]), sum_of_squares(old)])

    def ratios(sums: mx.array) -> dict[str, float]:
        update_sq, data_sq = np.array(sums, dtype=np.float64) @ member.T  # (2, P) @ (P, G)
        return dict(zip(names, np.sqrt(update_sq / (data_sq + 1e-12)).tolist()))

    return mx.compile(sums), ratios


def mixed_precision(model: nn.Module, config: TrainConfig, masked: bool = False) -> Callable:
    """``loss_and_grad(model, x, y)`` that computes in bfloat16 from the float32 master weights: the
    forward pass sees bfloat16 copies, and the gradients come back through the cast in float32.
    Chapter 6."""

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
    """Mean loss over ``config.eval_batches`` batches drawn from ``key``, dropout off. Chapter 6.

    ``ids`` is a token stream (windows of ``context``) or (N, 2, T) fine-tuning rows (masked loss,
    Chapter 9). Batches go through the model joined, up to ``EVAL_TOKENS`` tokens and
    ``EVAL_LOGITS`` logits per forward pass (fewer, larger launches on a GPU); each batch's mean
    loss is still its own, so the estimate is the same.
    """
    was_training, group = model.training, world()
    context = context or config.context or model.config.context_length
    rows = ids.ndim == 3
    loss_fn = token_loss(rows)
    batches = [get_rows(ids, config.batch_size, k) if rows else
               get_batch(ids, config.batch_size, context, k)
               for k in mx.random.split(key, config.eval_batches)]  # [((B, T), (B, T))] per batch
    shards = [tuple(shard_rows(b, group) for b in batch) for batch in batches]  # this rank's rows
    b, tokens = shards[0][0].shape[0], shards[0][0].size  # rows and tokens per batch, on this rank
    per_pass = max(1, min(EVAL_TOKENS // tokens, EVAL_LOGITS // (tokens * model.config.vocab_size)))
    model.eval()
    losses = []
    for first in range(0, len(shards), per_pass):
        joined = shards[first:first + per_pass]
        logits = model(mx.concatenate([x for x, _ in joined]), check_ids=False)  # (k * b, T, V)
        losses += [loss_fn(logits[i * b:(i + 1) * b], y) for i, (_, y) in enumerate(joined)]
        mx.async_eval(losses[-len(joined):])  # queued: the device runs it while Python goes on
    model.train(was_training)
    return all_mean(mx.stack(losses).mean(), group).item()  # one host read per evaluation


# --------------------------------------------------------------------------------------------------
# What a trainer trains on: checked once, so the step can skip the checks.


def check_rows(train_rows, val_rows, model_config: ModelConfig) -> int:
    """Fine-tuning rows: (N, 2, T) inputs and targets, ids in the vocabulary, targets may be
    ``IGNORE`` → the context T; else a ValueError saying what to fix."""
    shapes = {np.asarray(train_rows).shape[1:], np.asarray(val_rows).shape[1:]}
    limit, vocab_size = model_config.context_length, model_config.vocab_size
    if len(shapes) != 1 or next(iter(shapes))[0] != 2:
        raise ValueError(f"fine-tuning rows must be (N, 2, T) arrays of the same T for both "
                         f"splits, got {np.asarray(train_rows).shape} and "
                         f"{np.asarray(val_rows).shape}")
    context = next(iter(shapes))[1]
    if context > limit:
        raise ValueError(f"rows of {context} tokens are longer than the model's context_length "
                         f"{limit}; drop or shorten the longest conversations")
    for name, rows in (("training", train_rows), ("validation", val_rows)):
        rows = np.asarray(rows)
        if len(rows) == 0 or not (rows[:, 1] != IGNORE).any():
            raise ValueError(f"the {name} rows have no target tokens; give conversations with "
                             "answers")
        inputs, targets = rows[:, 0], rows[:, 1]
        if (inputs.min() < 0 or max(inputs.max(), targets.max()) >= vocab_size
                or targets.min() < IGNORE):
            raise ValueError(f"the {name} rows hold ids outside the model's vocabulary of "
                             f"{vocab_size}; they were made by another tokenizer")
    return context


def check_stream(train_ids, val_ids, model_config: ModelConfig, config: TrainConfig, group) -> int:
    """A token stream: long enough for one window of context + 1, ids in the vocabulary, batches
    that split evenly over the ranks → the context; else a ValueError saying what to fix."""
    context = config.context or model_config.context_length
    limit, vocab_size = model_config.context_length, model_config.vocab_size
    if context > limit:
        raise ValueError(f"context {context} is longer than the model's context_length {limit}; "
                         "train on shorter windows or make a larger model")
    check_divisible(config.batch_size, group)
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        ids = np.asarray(ids)
        if len(ids) < context + 1:
            raise ValueError(f"the {name} split has {len(ids):,} tokens, too few for windows of "
                             f"context {context} (+1 target); use a smaller --context or a larger "
                             "corpus")
        if ids.min() < 0 or ids.max() >= vocab_size:
            raise ValueError(f"the {name} ids go up to {int(ids.max())} but the model's vocabulary "
                             f"has {vocab_size} tokens; they were made by another tokenizer")
    return context


# --------------------------------------------------------------------------------------------------
# The trainer.


@contextlib.contextmanager
def stop_requests() -> Iterator[list[signal.Signals]]:
    """While the block runs, SIGINT and SIGTERM are only noted in the list it is given, so that a
    training loop can stop after its current step; a second one stops at once (KeyboardInterrupt).
    """
    requests = []

    def ask_to_stop(number, frame):
        if requests:
            raise KeyboardInterrupt
        requests.append(signal.Signals(number))

    saved = {}
    if threading.current_thread() is threading.main_thread():  # where signal handlers live
        saved = {number: signal.signal(number, ask_to_stop)
                 for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requests
    finally:
        for number, handler in saved.items():
            signal.signal(number, handler)


def new_metrics() -> dict:
    return {"step": [], "loss": [], "lr": [], "grad_norm": [], "update_ratio": {},
            "eval": {"step": [], "train_loss": [], "val_loss": []}, "best": None}


class StepKeys(NamedTuple):
    """The random keys of one optimizer step, split from ``parent`` (the batch key before it)."""

    parent: mx.array
    following: mx.array  # the batch key after the step
    batch: mx.array  # the step's batch is drawn with it
    dropout_seed: int  # MLX's global random state is seeded with it: dropout


def split_ahead(key: mx.array, steps: int) -> list[StepKeys]:
    """The keys of the next ``steps`` steps from batch key ``key``, exactly those that one split per
    step gives. The splits run on the CPU stream and the dropout seeds are read in one transfer, so
    the host never waits for queued device work."""
    chain = []
    for _ in range(steps):
        following, batch, dropout = mx.random.split(key, 3, stream=mx.cpu)
        chain.append((key, following, batch, dropout))
        key = following
    words = mx.stack([dropout for *_, dropout in chain])  # (steps, 2) uint32 words
    # one transfer for the batch keys too: fine-tuning rows are picked on the host (next_batch)
    mx.eval(words, [batch for _, _, batch, _ in chain])
    words = words.tolist()
    return [StepKeys(*link[:3], high << 32 | low) for link, (high, low) in zip(chain, words)]


@dataclass
class LaunchedStep:
    """An optimizer step queued on the device: its outputs, lazy until the trainer records them."""

    step: int
    loss: mx.array
    grad_norm: mx.array
    lr: mx.array
    update_sums: mx.array | None  # (2, P) for the update:data ratios, every DIAGNOSTICS_EVERY steps


@dataclass
class Trainer:
    """Trains ``model`` on ``train_ids`` with ``config``; ``run()`` goes to ``config.steps``.
    Built in Chapter 6, Training.

    Made by ``Trainer.create`` (fresh) or ``Trainer.resume`` (from a checkpoint), which also build
    the optimizer and agree with the other ranks. The state that makes resuming exact is all here:
    parameters, optimizer moments and step, and the key the next batch and the next step's dropout
    come from.
    """

    DIAGNOSTICS_EVERY = 10  # steps between update:data ratio measurements (and metric reads)
    KEYS_AHEAD = 64  # steps whose random keys are split, and their dropout seeds read, at once

    model: TransformerLM
    config: TrainConfig
    train_ids: np.ndarray
    val_ids: np.ndarray
    optimizer: optim.Optimizer
    tokenizer: object = None
    source: dict = field(default_factory=dict)  # the corpus, its sha256, tokenizer and preset
    step: int = 0
    batch_key: mx.array | None = None
    metrics: dict = field(default_factory=new_metrics)

    def __post_init__(self):
        self.group = world()  # size 1 unless started by mlx.launch (Appendix, Data parallel)
        self.rows = np.asarray(self.train_ids).ndim == 3  # fine-tuning rows (N, 2, T), not a stream
        splits, model_config = (self.train_ids, self.val_ids), self.model.config
        self.context = (check_rows(*splits, model_config) if self.rows else
                        check_stream(*splits, model_config, self.config, self.group))
        self._train = mx.array(np.asarray(self.train_ids, dtype=np.int32))
        self._val = mx.array(np.asarray(self.val_ids, dtype=np.int32))
        # fine-tuning rows: how long each one is, so that a batch is cut to its own longest row
        self._row_lengths = row_lengths(self.train_ids) if self.rows else None
        if self.batch_key is None:
            self.batch_key = mx.random.key(self.config.seed)
        # the compiled step and the update:data ratios, made at the first step (for the state
        # a resume restored: the compiled step holds on to the state it was made with)
        self._step_fn = self._update_sums = self._update_ratios = None
        self._keys = []  # StepKeys of the coming steps
        self._pending = []  # LaunchedSteps whose gradient norm and learning rate are not yet read
        self.best_parameters = None  # the parameters at the best evaluation (config.save == "best")

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, train_ids, val_ids,
               tokenizer=None, source: dict | None = None) -> Trainer:
        """A freshly initialised model (seeded by ``config.seed``), its optimizer and trainer."""
        mx.random.seed(config.seed)
        model = TransformerLM(model_config)
        model.set_dtype(config.parameter_dtype)
        model.train()
        trainer = cls(model, config, train_ids, val_ids, make_optimizer(model, config), tokenizer,
                      source or {})
        trainer.sync_ranks()
        return trainer

    @classmethod
    def resume(cls, folder: str | Path, train_ids, val_ids, config: TrainConfig | None = None,
               tokenizer=None) -> Trainer:
        """Continue from a checkpoint exactly where it stopped: parameters, optimizer state, step,
        batch key, metrics (``config`` may change only ``steps``, ``checkpoint_every``,
        ``patience`` and ``save``). ``tokenizer``: the checkpoint's, if the caller has loaded it."""
        run = checkpoint.load_run(folder, config)
        if tokenizer is None:
            tokenizer = checkpoint.load_checkpoint_tokenizer(folder, run.manifest)
        trainer = cls(run.model, run.config, train_ids, val_ids, run.optimizer, tokenizer,
                      run.manifest.get("source") or {}, run.step, run.batch_key, run.metrics)
        trainer.best_parameters = run.best_parameters
        if run.world_size != trainer.group.size():
            warnings.warn(f"{folder} was written by a run over {run.world_size} rank(s) and "
                          f"resumes over {trainer.group.size()}: the global batches are the same, "
                          "but rounding differs, so the continuation is close to, not "
                          "bit-identical with, an uninterrupted run")
        trainer.sync_ranks()
        return trainer

    @property
    def tokens_per_step(self) -> int:
        return self.config.grad_accumulation * self.config.batch_size * self.context

    # ----------------------------------------------------------------------------------------------
    # The loop, top-down: run → steps → launch step k + 1, record step k.

    def run(self, until: int | None = None, out: str | Path | None = None,
            progress: bool = True) -> dict:
        """Train up to step ``until`` (default ``config.steps``), evaluating and checkpointing on
        schedule. Returns the last evaluation ({"train_loss", "val_loss"}); ``out`` receives the
        checkpoint. Stops early after ``config.patience`` evaluations without improvement; on SIGINT
        or SIGTERM it saves a resumable checkpoint after the current step and raises
        ``TrainingInterrupted``.
        """
        c, until = self.config, min(until or self.config.steps, self.config.steps)
        main = is_main(self.group)  # rank 0 alone shows progress and writes checkpoints
        save = main and out is not None
        losses = None
        if self.step % c.eval_interval == 0 and not self._evaluated():
            losses = self.evaluate()  # the starting point (step 0)
        self.stopped_early, started, start_step = False, time.perf_counter(), self.step
        # no explicit `disable` when progress is wanted, so that TQDM_DISABLE=1 still silences it
        bar = tqdm(total=until, initial=self.step, unit="step", dynamic_ncols=True,
                   **({} if progress and main else {"disable": True}))
        with bar, stop_requests() as stop:
            while self.step < until and not self.stopped_early and not stop:
                # the steps up to the next evaluation or checkpoint run back to back, none past it
                end = min([until] + [(self.step // every + 1) * every
                                     for every in (c.eval_interval, c.checkpoint_every) if every])
                with contextlib.closing(self.steps(end - self.step)) as steps:
                    for loss in steps:
                        rate = (self.step - start_step) / (time.perf_counter() - started)
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}",
                                        tok_s=f"{rate * self.tokens_per_step:,.0f}", refresh=False)
                        if stop:
                            break  # closing the generator records the step already queued
                if self.step % c.eval_interval == 0 or self.step == until:  # the save records it
                    losses = self.evaluate()
                    self.stopped_early = 0 < c.patience <= self.evaluations_without_improvement()
                if (save and c.checkpoint_every and self.step % c.checkpoint_every == 0
                        and not stop and not self.stopped_early):
                    self.save(out)
        if stop:
            if save:
                self.save(out)
            resumable = f"; the checkpoint in {out} is resumable" if out is not None else ""
            raise TrainingInterrupted(f"{stop[0].name} at step {self.step}{resumable}")
        if losses is None or not self._evaluated():
            losses = self.evaluate()
        if save:
            self.save(out)
        self.flush_metrics()
        return losses

    def steps(self, n: int) -> Iterator[float]:
        """Run ``n`` optimizer steps, yielding each loss. Step k + 1 is queued before step k's loss
        is read, so the device never waits for Python; closing the generator early records the
        step still queued (the model already holds its state)."""
        queued = self._launch(self.step + 1) if n > 0 else None
        for i in range(n):
            current = queued
            queued = self._launch(current.step + 1) if i + 1 < n else None
            try:
                yield self._record(current)
            except GeneratorExit:
                if queued is not None:
                    self._record(queued)
                raise

    def train_step(self) -> float:
        """One optimizer step; returns the loss, its one host read per step (which catches NaN)."""
        return self._record(self._launch(self.step + 1))

    def _launch(self, step: int) -> LaunchedStep:
        """Queue optimizer step number ``step`` on the device (``mx.async_eval``); from here on the
        model and optimizer hold that step's (lazy) state."""
        model = self.model
        if self._step_fn is None:
            self._step_fn = make_train_step(model, self.optimizer, self.config, masked=self.rows)
            self._update_sums, self._update_ratios = make_update_ratios(model)
        # every few steps the update:data ratios, from the parameters before (kept) and after it
        before = model.trainable_parameters() if step % self.DIAGNOSTICS_EVERY == 0 else None
        loss, grad_norm, lr = self._step_fn(*self.next_batch())
        sums = None if before is None else self._update_sums(before, model.trainable_parameters())
        # the one evaluation per step: the outputs and every piece of state the next step reads
        mx.async_eval(loss, grad_norm, lr, sums, model.state, self.optimizer.state, self.batch_key)
        return LaunchedStep(step, loss, grad_norm, lr, sums)

    def next_batch(self) -> tuple[mx.array, mx.array]:
        """(A, B, T) inputs and targets of one optimizer step, from the next split of ``batch_key``.

        The step's dropout randomness is derived from the same key (MLX's global random state is
        seeded from it), so ``batch_key`` alone determines every random draw of the rest of the run.
        The keys are split ``KEYS_AHEAD`` steps at a time (``split_ahead``); a ``batch_key`` set
        from outside (a resume) starts a new chain. Fine-tuning rows are drawn on the host and the
        batch is cut to the ``bucket`` of its longest row: the right padding past it carries no
        loss and is never attended to.
        """
        if not self._keys or self._keys[0].parent is not self.batch_key:
            self._keys = split_ahead(self.batch_key, self.KEYS_AHEAD)
        keys = self._keys.pop(0)
        self.batch_key = keys.following
        mx.random.seed(keys.dropout_seed ^ self.group.rank())  # on rank 0: the step's dropout key
        c = self.config
        n = c.grad_accumulation * c.batch_size
        if self.rows:  # picked by numpy from the key's words (read in split_ahead): no device wait
            picked = np.random.default_rng(keys.batch.tolist()).integers(0, len(self._train), n)
            width = bucket(self._row_lengths[picked].max(), self.context)
            rows = self._train[mx.array(picked)][:, :, :width]  # (n, 2, width)
            inputs, targets = rows[:, 0], rows[:, 1]
        else:
            inputs, targets = get_batch(self._train, n, self.context, keys.batch)
        shape = (c.grad_accumulation, c.batch_size, inputs.shape[-1])
        return tuple(shard_rows(ids.reshape(shape), self.group) for ids in (inputs, targets))

    def _record(self, launched: LaunchedStep) -> float:
        """Wait for a launched step's loss, check it, and record the step; returns the loss."""
        loss = launched.loss.item()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {launched.step}; training "
                                   "stopped and the last good checkpoint was kept. Try a lower "
                                   "learning rate, a longer warmup, gradient clipping, or float32")
        self.step = launched.step
        self.metrics["step"].append(self.step)
        self.metrics["loss"].append(round(loss, 6))
        self._pending.append(launched)
        if launched.update_sums is not None:
            ratios = self.metrics["update_ratio"]
            ratios.setdefault("step", []).append(self.step)
            for group, ratio in self._update_ratios(launched.update_sums).items():
                ratios.setdefault(group, []).append(ratio)
            self.flush_metrics()
        return loss

    def flush_metrics(self) -> None:
        """Read the pending gradient norms and learning rates to the host.

        Each is read as it is, with no new device op: an op would queue behind the step in flight
        and the host would wait for that step (``mx.stack`` did).
        """
        self.metrics["grad_norm"] += [round(s.grad_norm.item(), 6) for s in self._pending]
        self.metrics["lr"] += [s.lr.item() for s in self._pending]
        self._pending = []

    # ----------------------------------------------------------------------------------------------
    # Evaluation, the ranks of a data-parallel run, saving.

    def evaluate(self) -> dict[str, float]:
        """Train and validation loss on fixed batches (the same at every evaluation: comparable
        curves); a better validation loss than any before becomes ``metrics["best"]``."""
        train_key, val_key = mx.random.split(mx.random.key(self.config.seed + 1))
        losses = {name: estimate_loss(self.model, ids, self.config, key, self.context)
                  for name, ids, key in (("train_loss", self._train, train_key),
                                         ("val_loss", self._val, val_key))}
        if not all(map(math.isfinite, losses.values())):
            raise TrainingDiverged(f"the evaluation loss is {losses} at step {self.step}; the last "
                                   "good checkpoint was kept. Try a lower learning rate or float32")
        if not self._evaluated():
            evals = self.metrics["eval"]
            evals["step"].append(self.step)
            evals["train_loss"].append(round(losses["train_loss"], 6))
            evals["val_loss"].append(round(losses["val_loss"], 6))
        best = self.metrics.get("best")
        if best is None or losses["val_loss"] < best["val_loss"]:
            self.metrics["best"] = {"step": self.step, "val_loss": round(losses["val_loss"], 6)}
            if self.config.save == "best":  # references, not copies: each step makes new arrays
                self.best_parameters = self.model.parameters()
        return losses

    def _evaluated(self) -> bool:
        """Whether the last evaluation recorded is of the current step."""
        return self.metrics["eval"]["step"][-1:] == [self.step]

    def evaluations_without_improvement(self) -> int:
        evals, best = self.metrics["eval"], self.metrics.get("best")
        return 0 if best is None else sum(step > best["step"] for step in evals["step"])

    def val_bits_per_byte(self, val_loss: float) -> float | None:
        """Validation loss in bits per byte of text (needs the tokenizer to count the bytes)."""
        if self.tokenizer is None or self.rows:
            return None
        n_bytes = len(self.tokenizer.decode_bytes(np.asarray(self.val_ids).tolist()))
        return bits_per_byte(val_loss, len(self.val_ids), n_bytes)

    def sync_ranks(self) -> None:
        """Data parallel: stop every rank if they disagree, then give all rank 0's parameters and
        optimizer state."""
        if self.group.size() > 1:
            check_same_everywhere(self.fingerprints(), self.group)
            self.model.update(broadcast_from_main(self.model.parameters(), self.group))
            self.optimizer.state = broadcast_from_main(self.optimizer.state, self.group)
            mx.eval(self.model.parameters(), self.optimizer.state)

    def fingerprints(self) -> dict[str, bytes]:
        """Digests of everything the ranks of one data-parallel run must share (Appendix,
        Data-parallel training)."""
        source = sorted(Path(__file__).parent.rglob("*.py"))
        return {"model config": digest(json.dumps(self.model.config.to_dict(), sort_keys=True)),
                "training config": digest(json.dumps(self.config.to_dict(), sort_keys=True)),
                "tokenizer": digest(tokenizer_fingerprint(self.tokenizer) if self.tokenizer
                                    else ""),
                "training data": digest(np.asarray(self.train_ids), np.asarray(self.val_ids)),
                "checkpoint state (step, batch key)":
                    digest(json.dumps([self.step, self.batch_key.tolist()])),
                "MLX version": digest(mx.__version__),
                "mlxllm source code": digest(*(p.read_bytes() for p in source))}

    def save(self, folder: str | Path) -> Path:
        """Write the checkpoint into ``folder`` as one unit (``checkpoint.save_checkpoint``)."""
        self.flush_metrics()
        return checkpoint.save_checkpoint(self, folder)
