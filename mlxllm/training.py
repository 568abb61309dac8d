"""Training: AdamW with warmup + cosine decay, gradient clipping, a compiled step, evaluation, checkpoints.

MLX's idiom is the skeleton: ``nn.value_and_grad`` → ``optimizer.update`` → ``mx.compile`` over the
model, optimizer and random state → one ``mx.eval`` per step. ``Trainer`` adds seeded batches, the
schedule, diagnostics, NaN detection and an exact resume. Built in Chapter 6, Training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from tqdm import tqdm

from mlxllm.char_tokenizer import CharTokenizer
from mlxllm.data import get_batch, tokenizer_fingerprint
from mlxllm.distributed import (all_mean, broadcast_from_main, check_divisible, check_same_everywhere, digest, is_main,
                                shard_rows, world)
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.prediction import bits_per_byte, cross_entropy

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16}


@dataclass
class TrainConfig:
    """Every training choice. Defaults are nanoGPT's shakespeare-char recipe at the CPU size. Built in Chapter 6."""

    steps: int = 2000  # optimizer steps (the cosine schedule ends here)
    batch_size: int = 12  # sequences per micro-batch
    context: int = 64  # tokens per sequence
    lr: float = 1e-3  # peak learning rate, reached after `warmup` steps
    min_lr: float = 1e-4  # cosine decay ends here at `steps`
    warmup: int = 100  # linear warmup steps
    weight_decay: float = 0.1  # AdamW decay, on matrices only (not norms, biases, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the global gradient norm to this (0: no clipping)
    grad_accumulation: int = 1  # micro-batches averaged per optimizer step
    eval_interval: int = 250  # evaluate every this many steps (and at the end)
    eval_batches: int = 20  # batches per loss estimate
    seed: int = 1337  # model init, batch order and dropout all derive from it
    dtype: str = "float32"  # "float32" | "bfloat16" (parameters and activations)
    checkpoint_interval: int = 0  # save every this many steps (0: only at the end)
    z_loss: float = 0.0  # weight of the log Z² penalty (0: off)
    val_fraction: float = 0.1  # the last 10% of the corpus is validation

    def __post_init__(self):
        for name in ("steps", "batch_size", "context", "grad_accumulation", "eval_interval", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("warmup", "checkpoint_interval", "seed"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {getattr(self, name)!r}")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.z_loss < 0:
            raise ValueError("weight_decay, grad_clip and z_loss must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")

    @property
    def tokens_per_step(self) -> int:
        return self.grad_accumulation * self.batch_size * self.context

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}")
        return cls(**values)


@dataclass
class Preset:
    """A named model + training recipe; the model's vocabulary comes from the tokenizer at run time."""

    description: str
    family: str  # "gpt2" | "llama": which ModelConfig constructor the sizes go to
    model: dict
    train: TrainConfig
    tokenizer: str = "char"  # the tokenizer the recipe was made for

    def model_config(self, vocab_size: int, context: int | None = None) -> ModelConfig:
        make = ModelConfig.gpt2 if self.family == "gpt2" else ModelConfig.llama
        return make(vocab_size=vocab_size, context_length=context or self.train.context, **self.model)


_NANOGPT = dict(norm="layernorm", bias=False, tie_embeddings=True)  # nanoGPT: no biases, tied head
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "2 layers × 64 dims, batch 8 × context 32: about ten seconds per hundred steps on a 2-core CPU (Chapter 6, CI)",
        "gpt2", dict(dims=64, n_layers=2, n_heads=4, **_NANOGPT),
        TrainConfig(steps=200, batch_size=8, context=32, lr=3e-3, min_lr=3e-4, warmup=20, eval_interval=50,
                    eval_batches=8),
    ),
    "nanogpt-cpu": Preset(
        "nanoGPT's CPU shakespeare-char run: 4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 steps",
        "gpt2", dict(dims=128, n_layers=4, n_heads=4, dropout=0.0, **_NANOGPT),
        TrainConfig(steps=2000, batch_size=12, context=64, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                    eval_interval=250, eval_batches=20),
    ),
    "shakespeare-char": Preset(
        "nanoGPT's GPU shakespeare-char run: 6 layers, 6 heads, 384 dims, context 256, batch 64, dropout 0.2",
        "gpt2", dict(dims=384, n_layers=6, n_heads=6, dropout=0.2, **_NANOGPT),
        TrainConfig(steps=5000, batch_size=64, context=256, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                    eval_interval=250, eval_batches=200),
    ),
    "llama-bpe": Preset(
        "a small LLaMA (RoPE, RMSNorm, SwiGLU, 8 heads / 2 KV heads), 4 layers × 256 dims, BPE 2048, context 256",
        "llama", dict(dims=256, n_layers=4, n_heads=8, n_kv_heads=2, ffn_dims=None, rope_theta=10000.0,
                      tie_embeddings=True),
        TrainConfig(steps=3000, batch_size=16, context=256, lr=1e-3, min_lr=1e-4, warmup=200, beta2=0.95,
                    eval_interval=250, eval_batches=20),
        tokenizer="bpe:2048",
    ),
}


# ---------------------------------------------------------------------------------------------------------
# Optimizer: AdamW with decay on matrices only, warmup + cosine schedule.


def lr_schedule(config: TrainConfig) -> Callable:
    """step → learning rate: linear warmup to ``lr``, then a half cosine down to ``min_lr`` at ``steps``.

    Written with mx ops so the optimizer can evaluate it inside the compiled step (nanoGPT's formula).
    """

    def schedule(step) -> mx.array:
        step = step.astype(mx.float32) if isinstance(step, mx.array) else mx.array(step, mx.float32)
        warm = config.lr * (step + 1) / (config.warmup + 1)
        progress = mx.clip((step - config.warmup) / max(1, config.steps - config.warmup), 0.0, 1.0)
        cosine = config.min_lr + 0.5 * (1.0 + mx.cos(math.pi * progress)) * (config.lr - config.min_lr)
        return mx.where(step < config.warmup, warm, cosine)

    return schedule


def decays(path: str, parameter: mx.array) -> bool:
    """Weight decay for weight matrices only: a norm's scale, a bias or an embedding row pulled toward 0
    would change what the layer means (a norm's gain, a token's identity), not just its size."""
    return parameter.ndim >= 2 and not path.startswith(("token_embedding", "position_embedding"))


def make_optimizer(model: nn.Module, config: TrainConfig) -> optim.MultiOptimizer:
    """Two AdamW groups sharing one schedule: decayed matrices and everything else (decay 0)."""
    schedule = lr_schedule(config)
    betas = [config.beta1, config.beta2]
    with_decay = optim.AdamW(schedule, betas, weight_decay=config.weight_decay, bias_correction=True)
    without_decay = optim.AdamW(schedule, betas, weight_decay=0.0, bias_correction=True)
    optimizer = optim.MultiOptimizer([with_decay, without_decay], [decays])
    optimizer.init(model.trainable_parameters())
    return optimizer


def parameter_group(path: str) -> str:
    """The group a parameter's update:data ratio is reported under."""
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
    """Sorted group names of the model's trainable parameters (the order of the step's ratios)."""
    return sorted({parameter_group(path) for path, _ in tree_flatten(model.trainable_parameters())})


# ---------------------------------------------------------------------------------------------------------
# The compiled step.


def make_train_step(model: nn.Module, optimizer: optim.Optimizer, config: TrainConfig,
                    diagnostics: bool = False, compile: bool = True) -> Callable:
    """``step(inputs, targets)`` on (A, B, T) micro-batches → (loss, grad norm, lr[, update:data ratios]).

    Compiled with the model, optimizer and random state as implicit inputs and outputs, so the graph is
    traced once and parameters are updated in place; the caller evaluates the outputs and the state.
    ``diagnostics=True`` also returns ‖Δθ‖ / ‖θ‖ per ``parameter_groups`` entry (a separate trace,
    used every few steps: it reads every parameter twice more). ``compile=False`` is for comparison.
    """
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: cross_entropy(m(x), y, z_loss=config.z_loss))
    groups = parameter_groups(model)
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
        grad_norm = mx.sqrt(sum(mx.sum(g.astype(mx.float32) ** 2) for _, g in tree_flatten(grads)))
        if config.grad_clip > 0:  # rescale all gradients together when their global norm is too large
            scale = mx.minimum(1.0, config.grad_clip / (grad_norm + 1e-6))
            grads = tree_map(lambda g: g * scale.astype(g.dtype), grads)
        before = tree_flatten(model.trainable_parameters())
        optimizer.update(model, grads)
        if not diagnostics:
            return loss, grad_norm, optimizer.learning_rate
        # update:data ratio per group, ‖Δθ‖ / ‖θ‖ (Karpathy: around 1e-3 is healthy)
        update_sq, data_sq = dict.fromkeys(groups, 0.0), dict.fromkeys(groups, 0.0)
        for (path, old), (_, new) in zip(before, tree_flatten(model.trainable_parameters())):
            old, new = old.astype(mx.float32), new.astype(mx.float32)
            update_sq[parameter_group(path)] += mx.sum((new - old) ** 2)
            data_sq[parameter_group(path)] += mx.sum(old**2)
        ratios = mx.stack([mx.sqrt(update_sq[g] / (data_sq[g] + 1e-12)) for g in groups])
        return loss, grad_norm, optimizer.learning_rate, ratios

    return mx.compile(step, inputs=state, outputs=state) if compile else step


def estimate_loss(model: nn.Module, ids: mx.array, config: TrainConfig, key: mx.array) -> float:
    """Mean loss over ``config.eval_batches`` batches drawn from ``key``, with dropout off."""
    was_training, group = model.training, world()
    model.eval()
    total = 0.0
    for batch_key in mx.random.split(key, config.eval_batches):
        inputs, targets = (shard_rows(b, group) for b in get_batch(ids, config.batch_size, config.context, batch_key))
        total += all_mean(cross_entropy(model(inputs), targets), group).item()
    model.train(was_training)
    return total / config.eval_batches


# ---------------------------------------------------------------------------------------------------------
# Checkpoints.


def save_tokenizer(tokenizer, folder: Path) -> dict:
    """Write the tokenizer into ``folder``; returns the config.json entry that says how to load it."""
    if isinstance(tokenizer, CharTokenizer):
        tokenizer.save(folder / "tokenizer.json")
        return {"kind": "char", "file": "tokenizer.json"}
    tokenizer.save(folder / "tokenizer.txt")
    return {"kind": "bpe", "file": "tokenizer.txt"}


def load_tokenizer(folder: Path, entry: dict):
    if entry.get("kind") == "char":
        return CharTokenizer.load(folder / entry["file"])
    from mlxllm.tokenizer import Tokenizer

    return Tokenizer.load(folder / entry["file"])


def first_config_mismatch(saved: dict, current: dict) -> str | None:
    """'name: A in the checkpoint, B here' for the first differing field, or None."""
    for name in list(saved) + [k for k in current if k not in saved]:
        if saved.get(name) != current.get(name):
            return f"{name} is {saved.get(name)!r} in the checkpoint but {current.get(name)!r} here"
    return None


def check_arrays(saved: dict[str, mx.array], current: dict[str, mx.array], what: str) -> None:
    """ValueError naming the first array that is missing, unexpected or of another shape."""
    for name, array in current.items():
        if name not in saved:
            raise ValueError(f"{what}: {name} is missing from the checkpoint")
        if saved[name].shape != array.shape:
            raise ValueError(f"{what}: {name} has shape {tuple(saved[name].shape)} in the checkpoint but "
                             f"{tuple(array.shape)} here")
    if extra := [name for name in saved if name not in current]:
        raise ValueError(f"{what}: the checkpoint has {extra[0]}, which this model does not")


def read_checkpoint_config(folder: str | Path) -> dict:
    """config.json of a checkpoint folder, or a ValueError saying why the folder is not one."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ValueError(f"{folder} is not a checkpoint folder (no config.json); train into it first with "
                         "`mlxllm train --out ...`")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is corrupt ({error}); delete the folder and train again") from None


def load_model_weights(model: TransformerLM, folder: str | Path) -> None:
    """Load ``model.safetensors`` into ``model``; a different config or shape → ValueError naming it."""
    folder = Path(folder)
    saved_config = read_checkpoint_config(folder)["model"]
    if problem := first_config_mismatch(saved_config, model.config.to_dict()):
        raise ValueError(f"checkpoint {folder} does not match the model: {problem}")
    weights = mx.load(str(folder / "model.safetensors"))
    check_arrays(weights, dict(tree_flatten(model.parameters())), f"checkpoint {folder} does not match the model")
    model.load_weights(list(weights.items()))


def load_model(folder: str | Path) -> tuple[TransformerLM, object]:
    """A trained model (in eval mode) and its tokenizer, from a checkpoint folder written by ``Trainer``."""
    config = read_checkpoint_config(folder)
    model = TransformerLM(ModelConfig.from_dict(config["model"]))
    model.set_dtype(DTYPES[config["train"]["dtype"]])
    load_model_weights(model, folder)
    model.eval()
    return model, load_tokenizer(Path(folder), config["tokenizer"])


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


# ---------------------------------------------------------------------------------------------------------
# The trainer.


@dataclass
class Trainer:
    """Trains ``model`` on ``train_ids`` with ``config``; ``run()`` goes to ``config.steps``. Built in Chapter 6.

    The state that makes resuming exact is all here: parameters, optimizer moments and step, and the key
    the next batch and the next step's dropout are drawn from (``batch_key``).
    """

    DIAGNOSTICS_EVERY = 10  # steps between update:data ratio measurements

    model: TransformerLM
    config: TrainConfig
    train_ids: np.ndarray
    val_ids: np.ndarray
    tokenizer: object = None
    step: int = 0
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        self.model.set_dtype(DTYPES[self.config.dtype])
        self.model.train()
        self.optimizer = make_optimizer(self.model, self.config)
        self.batch_key = mx.random.key(self.config.seed)
        self._train = mx.array(np.asarray(self.train_ids, dtype=np.int32))
        self._val = mx.array(np.asarray(self.val_ids, dtype=np.int32))
        self._step_fns = None
        self.group = world()  # size 1 unless started by mlx.launch (Appendix, Data-parallel training)
        check_divisible(self.config.batch_size, self.group)
        self.sync_ranks()
        self.metrics = self.metrics or {"step": [], "loss": [], "lr": [], "grad_norm": [], "update_ratio": {},
                                        "eval": {"step": [], "train_loss": [], "val_loss": []}}

    @classmethod
    def create(cls, model_config: ModelConfig, config: TrainConfig, train_ids, val_ids, tokenizer=None) -> "Trainer":
        """A freshly initialised model (seeded by ``config.seed``) and its trainer."""
        mx.random.seed(config.seed)
        return cls(TransformerLM(model_config), config, train_ids, val_ids, tokenizer)

    def next_batch(self) -> tuple[mx.array, mx.array]:
        """(A, B, T) inputs and targets for one optimizer step, from the next split of ``batch_key``.

        The step's dropout randomness is derived from the same key (MLX's global random state is set
        from it), so ``batch_key`` alone determines every random draw of the rest of the run.
        """
        c = self.config
        self.batch_key, key, dropout_key = mx.random.split(self.batch_key, 3)
        high, low = dropout_key.tolist()
        mx.random.seed((high << 32 | low) ^ self.group.rank())  # key(high·2³² + low) == dropout_key (on rank 0)
        inputs, targets = get_batch(self._train, c.grad_accumulation * c.batch_size, c.context, key)
        shape = (c.grad_accumulation, c.batch_size, c.context)
        return shard_rows(inputs.reshape(shape), self.group), shard_rows(targets.reshape(shape), self.group)

    def train_step(self) -> float:
        """One optimizer step; records loss, lr and gradient norm (and, every ``DIAGNOSTICS_EVERY`` steps,
        the update:data ratios); returns the loss."""
        if self._step_fns is None:  # traced lazily: after a resume, against the restored state
            self._step_fns = [make_train_step(self.model, self.optimizer, self.config, diagnostics=d)
                              for d in (False, True)]
        with_diagnostics = (self.step + 1) % self.DIAGNOSTICS_EVERY == 0
        inputs, targets = self.next_batch()
        loss, grad_norm, lr, *ratios = self._step_fns[with_diagnostics](inputs, targets)
        # the one evaluation per step: the outputs and every piece of state the next step reads
        mx.eval(loss, grad_norm, lr, ratios, self.model.state, self.optimizer.state, self.batch_key)
        loss = loss.item()
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the loss became {loss} at step {self.step + 1}; training stopped and the "
                                   "last good checkpoint was kept. Try a lower learning rate, a longer warmup, "
                                   "gradient clipping, or float32")
        self.step += 1
        m = self.metrics
        m["step"].append(self.step)
        m["loss"].append(round(loss, 6))
        m["lr"].append(lr.item())
        m["grad_norm"].append(round(grad_norm.item(), 6))
        if with_diagnostics:
            m["update_ratio"]["step"] = m["update_ratio"].get("step", []) + [self.step]
            for group, ratio in zip(parameter_groups(self.model), ratios[0].tolist()):
                m["update_ratio"].setdefault(group, []).append(ratio)
        return loss

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
        """Train and validation loss on fixed batches (the same at every evaluation: comparable curves)."""
        key = mx.random.key(self.config.seed + 1)
        train_key, val_key = mx.random.split(key)
        losses = {"train_loss": estimate_loss(self.model, self._train, self.config, train_key),
                  "val_loss": estimate_loss(self.model, self._val, self.config, val_key)}
        if not all(map(math.isfinite, losses.values())):
            raise TrainingDiverged(f"the evaluation loss is {losses} at step {self.step}; the last good "
                                   "checkpoint was kept. Try a lower learning rate or float32")
        evals = self.metrics["eval"]
        if not evals["step"] or evals["step"][-1] != self.step:
            evals["step"].append(self.step)
            evals["train_loss"].append(round(losses["train_loss"], 6))
            evals["val_loss"].append(round(losses["val_loss"], 6))
        return losses

    def val_bits_per_byte(self, val_loss: float) -> float | None:
        """Validation loss in bits per byte of text (needs the tokenizer to count the bytes)."""
        if self.tokenizer is None:
            return None
        n_bytes = len(self.tokenizer.decode_bytes(np.asarray(self.val_ids).tolist()))
        return bits_per_byte(val_loss, len(self.val_ids), n_bytes)

    def run(self, until: int | None = None, out: str | Path | None = None, progress: bool = True) -> dict:
        """Train up to step ``until`` (default ``config.steps``), evaluating and checkpointing on schedule.

        Returns the last evaluation ({"train_loss", "val_loss"}); ``out`` receives the checkpoint.
        """
        c, until = self.config, min(until or self.config.steps, self.config.steps)
        losses = None
        # no explicit `disable` when progress is wanted, so that TQDM_DISABLE=1 still silences the bar
        main = is_main(self.group)  # rank 0 alone shows progress and writes checkpoints
        bar = tqdm(total=until, initial=self.step, unit="step", dynamic_ncols=True,
                   **({} if progress and main else {"disable": True}))
        started, start_step = time.perf_counter(), self.step
        evaluated = self.metrics["eval"]["step"]
        if self.step % c.eval_interval == 0 and (not evaluated or evaluated[-1] != self.step):
            losses = self.evaluate()  # the starting point (step 0)
        while self.step < until:
            loss = self.train_step()
            rate = (self.step - start_step) / (time.perf_counter() - started)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate * c.tokens_per_step:,.0f}", refresh=False)
            if self.step % c.eval_interval == 0 or self.step == until:  # before saving: checkpoints include it
                losses = self.evaluate()
            if main and out is not None and c.checkpoint_interval and self.step % c.checkpoint_interval == 0:
                self.save(out)
        bar.close()
        if losses is None or self.metrics["eval"]["step"][-1] != self.step:
            losses = self.evaluate()
        if main and out is not None:
            self.save(out)
        return losses

    def save(self, folder: str | Path) -> Path:
        """Write the checkpoint: model/optimizer safetensors, config.json, state.json, tokenizer, metrics.

        Files are written to a temporary sub-folder, then moved into place; state.json (the step) last.
        """
        folder = Path(folder)
        tmp = folder / ".saving"
        tmp.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(self.model.parameters())))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), dict(tree_flatten(self.optimizer.state)))
        tokenizer_entry = save_tokenizer(self.tokenizer, tmp) if self.tokenizer is not None else None
        config = {"model": self.model.config.to_dict(), "train": self.config.to_dict(), "tokenizer": tokenizer_entry}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(self.metrics))
        state = {"step": self.step, "batch_key": self.batch_key.tolist(), "world_size": self.group.size()}
        (tmp / "state.json").write_text(json.dumps(state))
        for path in sorted(tmp.iterdir(), key=lambda p: p.name == "state.json"):
            os.replace(path, folder / path.name)
        tmp.rmdir()
        return folder

    @classmethod
    def resume(cls, folder: str | Path, train_ids, val_ids, config: TrainConfig | None = None) -> "Trainer":
        """Continue from a checkpoint exactly where it stopped (``config`` may only change ``steps``)."""
        folder = Path(folder)
        saved = read_checkpoint_config(folder)
        if not (folder / "state.json").is_file():
            raise ValueError(f"{folder} has no state.json: the checkpoint is incomplete; train again")
        train_config = TrainConfig.from_dict(saved["train"])
        if config is not None:
            if problem := first_config_mismatch(saved["train"], {**config.to_dict(), "steps": train_config.steps}):
                raise ValueError(f"cannot resume {folder} with another training config: {problem}")
            train_config = config
        tokenizer = load_tokenizer(folder, saved["tokenizer"]) if saved.get("tokenizer") else None
        trainer = cls(TransformerLM(ModelConfig.from_dict(saved["model"])), train_config, train_ids, val_ids, tokenizer)
        trainer.load_state(folder)
        return trainer

    def load_state(self, folder: str | Path) -> None:
        """Restore parameters, optimizer state, step, batch key and metrics from ``folder``."""
        folder = Path(folder)
        load_model_weights(self.model, folder)
        saved = mx.load(str(folder / "optimizer.safetensors"))
        check_arrays(saved, dict(tree_flatten(self.optimizer.state)), f"optimizer state in {folder} does not match")
        self.optimizer.state = tree_unflatten(list(saved.items()))
        state = json.loads((folder / "state.json").read_text())
        self.step = state["step"]
        self.batch_key = mx.array(state["batch_key"], dtype=mx.uint32)
        if (saved_size := state.get("world_size", 1)) != self.group.size():
            warnings.warn(f"{folder} was written by a run over {saved_size} rank(s) and resumes over "
                          f"{self.group.size()}: the global batches are the same, but rounding differs, so the "
                          "continuation is close to, not bit-identical with, an uninterrupted run")
        self.metrics = json.loads((folder / "metrics.json").read_text())
        self._step_fns = None  # re-trace against the restored state objects
        self.sync_ranks()
