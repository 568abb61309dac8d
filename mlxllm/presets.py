"""Named recipes: a model's sizes plus the training settings that go with them (nanoGPT's where it
has one).

The vocabulary comes from the tokenizer at run time; the context length is written once, in the
model's sizes (``TrainConfig.context`` defaults to it). Built in Chapter 6, Training.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlxllm.checkpoint import load_checkpoint_tokenizer, read_manifest
from mlxllm.config import ModelConfig, TrainConfig
from mlxllm.data import corpus_path, describe_corpus, prepare_corpus, split_ids, tokenize_corpus
from mlxllm.training import Trainer


@dataclass
class Preset:
    """A named model + training recipe; the model's vocabulary comes from the tokenizer.

    Built in Chapter 6."""

    description: str
    family: str  # "gpt2" | "llama": which ModelConfig constructor the sizes go to
    # ModelConfig fields, context_length included (the one place the context is written)
    model: dict
    train: TrainConfig
    tokenizer: str = "char"  # the tokenizer the recipe was made for: char | gpt2 | bpe:VOCAB

    @property
    def context_length(self) -> int:
        return self.model["context_length"]

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step: accumulation × batch × context."""
        return (self.train.grad_accumulation * self.train.batch_size
                * (self.train.context or self.context_length))

    def model_config(self, vocab_size: int, context_length: int | None = None) -> ModelConfig:
        """The model for a tokenizer of ``vocab_size`` (and, optionally, another context length)."""
        make = ModelConfig.gpt2 if self.family == "gpt2" else ModelConfig.llama
        return make(vocab_size=vocab_size,
                    **{**self.model, "context_length": context_length or self.context_length})


_NANOGPT = dict(norm="layernorm", bias=False, tie_embeddings=True)  # nanoGPT: no biases, tied head
PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "2 layers × 64 dims, batch 8 × context 32: about ten seconds per hundred steps on a 2-core "
        "CPU (Chapter 6, CI)",
        "gpt2", dict(context_length=32, dims=64, n_layers=2, n_heads=4, **_NANOGPT),
        TrainConfig(steps=200, batch_size=8, lr=3e-3, min_lr=3e-4, warmup=20, eval_interval=50,
                    eval_batches=8, checkpoint_every=100),
    ),
    "nanogpt-cpu": Preset(
        "nanoGPT's CPU shakespeare-char run: 4 layers, 4 heads, 128 dims, context 64, batch 12, "
        "2000 steps",
        "gpt2", dict(context_length=64, dims=128, n_layers=4, n_heads=4, dropout=0.0, **_NANOGPT),
        TrainConfig(steps=2000, batch_size=12, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                    eval_interval=250, eval_batches=20, checkpoint_every=500),
    ),
    "shakespeare-char": Preset(
        "nanoGPT's GPU shakespeare-char run: 6 layers, 6 heads, 384 dims, context 256, batch 64, "
        "dropout 0.2",
        "gpt2", dict(context_length=256, dims=384, n_layers=6, n_heads=6, dropout=0.2, **_NANOGPT),
        TrainConfig(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=100, beta2=0.99,
                    eval_interval=250, eval_batches=200, checkpoint_every=250, save="best",
                    patience=5),
        # nanoGPT keeps the best checkpoint; past it the model only overfits,
        # so stop 5 evaluations later
    ),
    "llama-bpe": Preset(
        "a small LLaMA (RoPE, RMSNorm, SwiGLU, 8 heads / 2 KV heads), 4 layers × 256 dims, "
        "BPE 2048, context 256",
        "llama", dict(context_length=256, dims=256, n_layers=4, n_heads=8, n_kv_heads=2,
                      ffn_dims=None, rope_theta=10000.0, tie_embeddings=True),
        TrainConfig(steps=3000, batch_size=16, lr=1e-3, min_lr=1e-4, warmup=200, beta2=0.95,
                    eval_interval=250, eval_batches=20, checkpoint_every=500),
        tokenizer="bpe:2048",
    ),
}


# --------------------------------------------------------------------------------------------------
# Will it fit? Checked before a run starts,
# so a too-large step is one sentence, not a crash mid-step.


def available_memory() -> int:
    """Bytes the device can hold: the GPU's memory where MLX reports it, else the machine's
    RAM. Chapter 6."""
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    for key in ("memory_size", "total_memory"):
        if isinstance(info.get(key), int) and info[key] > 0:
            return info[key]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def step_memory(model_config: ModelConfig, config: TrainConfig,
                parameter_bytes: int | None = None) -> int:
    """A rough lower bound on the bytes one training step needs: parameters, gradients and AdamW's
    two moments (or ``parameter_bytes`` of them, for a model of frozen and trainable parts), plus
    the activations kept for the backward pass (attention scores B·H·T² and logits B·T·V
    dominate). Chapter 6."""
    c, m = config, model_config
    T, B, size = c.context or m.context_length, c.batch_size, 4 if c.dtype == "float32" else 2
    parameters = (m.vocab_size * m.dims
                  + m.n_layers * (4 * m.dims * m.dims + 3 * m.dims * m.ffn_dims))
    per_layer = B * T * (8 * m.dims + 2 * m.ffn_dims) + 2 * B * m.n_heads * T * T
    parameter_bytes = 4 * parameters * 4 if parameter_bytes is None else parameter_bytes
    return parameter_bytes + size * (m.n_layers * per_layer + 3 * B * T * m.vocab_size)


def check_memory(model_config: ModelConfig, config: TrainConfig, what: str | None = None,
                 advice: str = "use a smaller --context or --batch-size",
                 parameter_bytes: int | None = None) -> None:
    """Refuse up front a step that cannot fit, saying how much it needs (``what``: the step's
    shape in words) and ``advice``. Built in Chapter 6, Training."""
    needed = step_memory(model_config, config, parameter_bytes)
    have = available_memory()
    if needed > 0.9 * have:
        what = what or (f"batch_size {config.batch_size} × context "
                        f"{config.context or model_config.context_length}")
        raise ValueError(f"{what} needs about {needed / 2**30:,.1f} GiB for one training step, "
                         f"more than the {have / 2**30:,.1f} GiB this machine has; {advice}")


# --------------------------------------------------------------------------------------------------
# A run: a preset applied to a corpus
# (the CLI, Chapter 6, the Appendix and the benchmarks all start here).


def prepare_run(corpus: str | Path = "tinyshakespeare", preset: str = "tiny", tokenizer=None,
                **overrides) -> Trainer:
    """corpus → tokenizer → split → a fresh ``Trainer`` with ``preset``'s model and settings
    (``overrides`` replace TrainConfig fields). ``tokenizer``: a spec (``"char"``, ``"gpt2"``,
    ``"bpe:2048"``), a tokenizer, or None for the preset's. Built in Chapter 6, Training."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    recipe = PRESETS[preset]
    config = dataclasses.replace(recipe.train, **overrides)
    # the sizes, before the vocabulary is known
    model_config = recipe.model_config(1, config.context)
    check_memory(model_config, config)
    prepared = prepare_corpus(corpus, tokenizer or recipe.tokenizer, config.val_fraction)
    model_config = recipe.model_config(prepared.tokenizer.vocab_size, config.context)
    check_memory(model_config, config)
    return Trainer.create(model_config, config, prepared.train_ids, prepared.val_ids,
                          prepared.tokenizer, source={**prepared.source, "preset": preset})


def resume_run(folder: str | Path, corpus: str | Path | None = None, tokenizer: str | None = None,
               preset: str | None = None, **overrides) -> Trainer:
    """The ``Trainer`` of the checkpoint in ``folder``, on the corpus it recorded; a different
    corpus, tokenizer or preset given here is refused in one sentence. ``overrides``: only
    ``steps``, ``checkpoint_every``, ``save`` and ``patience`` may change. Built in Chapter 6,
    Training."""
    manifest = read_manifest(folder)
    source = manifest.get("source") or {}
    for name, given in (("tokenizer", tokenizer), ("preset", preset)):
        if given is not None and source.get(name) is not None and given != source[name]:
            raise ValueError(f"{folder} was trained with --{name} {source[name]}, not {given}; "
                             f"resume without --{name}, or train into another --out")
    if corpus is None:
        if "corpus" not in source:
            raise ValueError(f"{folder} does not record its corpus; pass --corpus")
        corpus = source["corpus"]
    path = corpus_path(corpus)  # found (and, for a named corpus, verified) once
    described = describe_corpus(corpus, path)
    if source.get("corpus_sha256") not in (None, described["corpus_sha256"]):
        changed = ("has changed since" if described["corpus"] == source.get("corpus")
                   else "is not the corpus of")
        raise ValueError(f"{described['corpus']} (sha256 {described['corpus_sha256'][:12]}…) "
                         f"{changed} the run in {folder} (sha256 {source['corpus_sha256'][:12]}…); "
                         "resume on the same text, or train into another --out")
    config = dataclasses.replace(TrainConfig.from_dict(manifest["train"]), **overrides)
    tokenizer = load_checkpoint_tokenizer(folder, manifest)
    ids = tokenize_corpus(path, tokenizer, corpus_sha256=described["corpus_sha256"])
    train_ids, val_ids = split_ids(ids, config.val_fraction)
    return Trainer.resume(folder, train_ids, val_ids, config, tokenizer)
