"""The configurations: the model's (``ModelConfig``) and training's (``TrainConfig``).

The layers read their settings from one ``ModelConfig`` (``MultiHeadAttention(config)``,
``TransformerBlock(config)``), so each rule below is written once, here, and a bad combination is a
clear error when the configuration is made, before any layer is built. ``TrainConfig`` does the
same for a training run (Chapter 6).
"""

import dataclasses
import math
from dataclasses import dataclass, field

import mlx.core as mx

# the checkpoint families whose names and layouts we read and write (mlxllm.pretrained.FAMILIES)
FAMILY_NAMES = ("gpt2", "llama")
NORMS = ("layernorm", "rmsnorm", "none")
POSITIONS = ("learned", "sinusoidal", "rope", "none")
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "swiglu")
# the longest context a config may ask for: 2**24 positions, past the longest published model's
# (10M); a larger number comes from a damaged file, and would be allocated by a full KV cache
MAX_CONTEXT = 1 << 24
# seeds are at most 2**63 - 1: a training run derives seed + 1, and MLX keys are 64-bit
MAX_SEED = (1 << 63) - 1


def swiglu_hidden_dims(dims: int, multiple_of: int = 32) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·C (three matrices cost what two 4·C ones do), rounded up.

    Built in Chapter 4.
    """
    hidden = int(8 * dims / 3)
    return (hidden + multiple_of - 1) // multiple_of * multiple_of


def default_ffn_dims(dims: int, activation: str) -> int:
    """The feed-forward width when none is given: 4·C for an MLP, ≈ 8/3·C for SwiGLU.

    Built in Chapter 4.
    """
    return swiglu_hidden_dims(dims) if activation == "swiglu" else 4 * dims


class Derived(int):
    """A size filled in by a default rule rather than given (``n_kv_heads``, ``ffn_dims``).

    It is an ordinary int everywhere, but it remembers where it came from, so that
    ``dataclasses.replace(config, dims=128)`` recomputes it for the new sizes instead of silently
    keeping the old model's width.
    """


@dataclass
class ModelConfig:
    """Every size and architectural choice of a ``TransformerLM``. Built in Chapter 5.

    Defaults are GPT-2 small (124M). Left out, ``n_kv_heads`` becomes n_heads (plain multi-head
    attention) and ``ffn_dims`` 4·dims for an MLP or ≈ 8/3·dims for SwiGLU; neither is None
    afterwards. ``family`` names the checkpoint family whose weight names and layout the model
    follows when it is saved or loaded; the architectural flags themselves can still be mixed freely
    (Chapter 8).
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
    # on embeddings, branch outputs and attention probabilities, in training mode
    dropout: float = 0.0
    family: str = "gpt2"  # "gpt2" | "llama"

    def __post_init__(self):
        for name in ("vocab_size", "context_length", "dims", "n_layers", "n_heads"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.context_length > MAX_CONTEXT:
            raise ValueError(f"context_length={self.context_length:,} is more than the "
                             f"{MAX_CONTEXT:,} positions (2**24) a model may have; the file it "
                             "came from is damaged, or give a smaller context_length")
        for name, allowed in (("family", FAMILY_NAMES), ("norm", NORMS), ("position", POSITIONS),
                              ("activation", ACTIVATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        # sizes left out (or filled in by a rule before a dataclasses.replace) follow the rule for
        # the new sizes
        if self.n_kv_heads is None or isinstance(self.n_kv_heads, Derived):
            self.n_kv_heads = Derived(self.n_heads)
        if self.ffn_dims is None or isinstance(self.ffn_dims, Derived):
            self.ffn_dims = Derived(default_ffn_dims(self.dims, self.activation))
        _check_int("ffn_dims", self.ffn_dims, minimum=1)
        if self.dims % self.n_heads:
            raise ValueError(f"dims={self.dims} must be divisible by n_heads={self.n_heads} "
                             "(each head gets dims / n_heads features)")
        kv = self.n_kv_heads
        if not isinstance(kv, int) or isinstance(kv, bool) or kv < 1 or self.n_heads % kv:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={kv} "
                             "(each key/value head serves a whole group of query heads)")
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(f"rope rotates pairs of features, so it needs an even head_dim; "
                             f"got dims / n_heads = {self.head_dim}")
        if self.position == "sinusoidal" and self.dims % 2:
            raise ValueError(f"sinusoidal positions need even dims, got {self.dims}")
        _check_positive("rope_theta", self.rope_theta)
        _check_positive("norm_eps", self.norm_eps)  # it keeps a norm from dividing by zero
        if self.logit_softcap is not None:
            _check_positive("logit_softcap", self.logit_softcap, " or None")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.parallel_block and not self.pre_norm:
            raise ValueError("parallel_block=True needs pre_norm=True (both branches read the same "
                             "normed input)")

    @property
    def head_dim(self) -> int:
        return self.dims // self.n_heads

    @classmethod
    def gpt2(cls, **overrides) -> "ModelConfig":
        """GPT-2: learned positions, LayerNorm, tanh-GELU MLP, biases, head tied to the
        embedding."""
        base = dict(family="gpt2", norm="layernorm", position="learned", activation="gelu_tanh",
                    bias=True, tie_embeddings=True)
        return cls(**{**base, **overrides})

    @classmethod
    def llama(cls, **overrides) -> "ModelConfig":
        """LLaMA: RoPE, RMSNorm, SwiGLU, no biases, grouped-query attention, untied head.

        Default sizes are those of SmolLM2-135M (a LLaMA-shaped model), with an untied head.
        """
        base = dict(
            family="llama", vocab_size=49152, context_length=2048, dims=576, n_layers=30,
            n_heads=9, n_kv_heads=3, ffn_dims=1536, norm="rmsnorm", position="rope",
            activation="swiglu", bias=False, tie_embeddings=False, rope_theta=100000.0,
            norm_eps=1e-5,
        )
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        """Every field, sizes as plain ints (what a checkpoint stores)."""
        values = dataclasses.asdict(self)
        values["n_kv_heads"], values["ffn_dims"] = int(self.n_kv_heads), int(self.ffn_dims)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """The inverse of ``to_dict``; unknown keys are an error, not silently dropped.

        Legacy reading: a dict without ``family`` (written before the field existed) gets it from
        its positions, "learned" → "gpt2", anything else → "llama". This is the only place it is
        inferred.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig field(s) {unknown}; known fields are "
                             f"{sorted(known)}")
        if "family" not in values:
            values = {**values, "family": "gpt2" if values.get("position", "learned") == "learned"
                      else "llama"}
        return cls(**values)


# --------------------------------------------------------------------------------------------------
# Training. Built in Chapter 6, Training.

# parameters and activations in float32 or bfloat16, or bfloat16 compute over float32 master weights
PRECISIONS = ("float32", "bfloat16", "mixed-bfloat16")
SAVE_POLICIES = ("last", "best")


def option(default, help: str, **metadata):
    """A TrainConfig field with the help text (and choices) of its ``mlxllm train`` option."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass
class TrainConfig:
    """Every training choice; defaults are nanoGPT's shakespeare-char recipe at the CPU size.
    Built in Chapter 6, Training."""

    steps: int = option(2000, "optimizer steps (the cosine schedule ends here)")
    batch_size: int = option(12, "sequences per micro-batch")
    context: int | None = option(None, "tokens per training window (default: the model's "
                                       "context_length)")
    lr: float = option(1e-3, "peak learning rate, reached after --warmup steps")
    min_lr: float = option(1e-4, "the cosine decay ends here at --steps")
    warmup: int = option(100, "linear warmup steps")
    weight_decay: float = option(0.1, "AdamW decay, on matrices only (not norms, biases, "
                                      "embeddings)")
    beta1: float = option(0.9, "AdamW's first-moment decay")
    beta2: float = option(0.99, "AdamW's second-moment decay")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0: no clipping)")
    grad_accumulation: int = option(1, "micro-batches averaged per optimizer step")
    eval_interval: int = option(250, "evaluate every this many steps (and at the end)")
    eval_batches: int = option(20, "batches per loss estimate")
    seed: int = option(1337, "model init, batch order and dropout all derive from it (>= 0)")
    dtype: str = option("float32", "parameters and activations; mixed-bfloat16: bfloat16 compute, "
                                   "float32 weights and optimizer state", choices=PRECISIONS)
    checkpoint_every: int = option(0, "save a resumable checkpoint every this many steps "
                                      "(0: only at the end)")
    save: str = option("last", "the model kept in the checkpoint: the last, or the best by "
                               "validation loss", choices=SAVE_POLICIES)
    patience: int = option(0, "stop after this many evaluations without a better validation loss "
                              "(0: never)")
    z_loss: float = option(0.0, "weight of the log Z² penalty (0: off)")
    val_fraction: float = option(0.1, "the last this fraction of the corpus is validation")

    def __post_init__(self):
        for name in ("steps", "batch_size", "grad_accumulation", "eval_interval", "eval_batches"):
            _check_int(name, getattr(self, name), minimum=1)
        if self.context is not None:
            _check_int("context", self.context, minimum=1)
        for name in ("warmup", "checkpoint_every", "seed", "patience"):
            _check_int(name, getattr(self, name), minimum=0)
        check_seed(self.seed)
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ValueError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, "
                             f"min_lr={self.min_lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.z_loss < 0:
            raise ValueError("weight_decay, grad_clip and z_loss must be >= 0")
        for name, allowed in (("dtype", PRECISIONS), ("save", SAVE_POLICIES)):
            if (value := getattr(self, name)) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
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
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields are "
                             f"{sorted(known)}")
        return cls(**values)


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` if it is an integer in [0, MAX_SEED], else a ValueError saying so. Chapter 5."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{name} must be an integer from 0 to 2**63 - 1, got {seed!r}")
    return seed


def _check_positive(name: str, value, allowed: str = "") -> None:
    """A finite positive number (not NaN, not infinite, not a bool or a string)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not (math.isfinite(value) and value > 0)):
        raise ValueError(f"{name} must be a finite positive number{allowed}, got {value!r}")


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
