"""LoRA: train a small low-rank update beside each frozen linear layer, y = W x + (α/r)·B A x.

``apply_lora`` wraps the chosen projections (plain ``nn.Linear`` or 4-bit ``nn.QuantizedLinear``:
that is QLoRA, the base stays packed and gradients reach the adapters through
``mx.quantized_matmul``) and freezes everything else; ``merge_lora`` folds the adapters back into
dense weights; ``save_adapters`` / ``load_adapters`` keep only the adapters. Built in Chapter 9,
Fine-tuning.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlxllm.files import disk_trouble, replacing, save_arrays, write_atomic

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
FFN = ("gate_proj", "up_proj", "down_proj")
TARGETS = ATTENTION + FFN  # what targets="all" means
# one file holds the arrays and, in its metadata, the settings: a crash mid-save never pairs new
# arrays with old settings; adapter_config.json beside it is a copy for people, never read back
ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
FORMAT = "mlxllm-lora"
SETTINGS_KEY = "mlxllm-lora"  # the metadata entry of ADAPTER_WEIGHTS that holds the settings
# what identifies the base model in its fingerprint, beside its 1-D parameters
BASE_SIZES = ("family", "vocab_size", "dims", "n_layers", "n_heads", "n_kv_heads", "ffn_dims")


class LoRALinear(nn.Module):
    """``base(x) + (x Aᵀ) Bᵀ · α/r`` around a frozen linear layer; B starts at zero.
    Built in Chapter 9.

    A: (r, in) drawn like a linear layer's weights, B: (out, r) zeros, so at the start the layer is
    exactly its base. The base may be ``nn.Linear`` or ``nn.QuantizedLinear`` (QLoRA); it is never
    modified.
    """

    def __init__(self, base: nn.Module, rank: int = 8, alpha: float = 16.0):
        super().__init__()
        if not isinstance(base, (nn.Linear, nn.QuantizedLinear)):
            raise ValueError("LoRA wraps nn.Linear or nn.QuantizedLinear layers, "
                             f"got {type(base).__name__}")
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"the LoRA rank must be a positive integer, got {rank!r}")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"the LoRA alpha must be a positive number, got {alpha!r}")
        out_dims, in_dims = linear_shape(base)
        self.base = base
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        bound = 1 / math.sqrt(in_dims)
        self.lora_a = mx.random.uniform(-bound, bound, (rank, in_dims))  # (r, in)
        self.lora_b = mx.zeros((out_dims, rank))  # (out, r)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)  # (..., out)
        # (..., r) → (..., out): 2·r·(in + out) flops per row
        update = (x @ self.lora_a.T) @ self.lora_b.T
        return y + (self.scale * update).astype(y.dtype)

    def delta(self) -> mx.array:
        """The dense update the adapters stand for, (α/r)·B A: (out, in)."""
        return self.scale * (self.lora_b @ self.lora_a)


def linear_shape(layer: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear layer; a quantized one packs 32 / bits weights per uint32 word."""
    out_dims, width = layer.weight.shape
    return out_dims, width * 32 // layer.bits if isinstance(layer, nn.QuantizedLinear) else width


def dense_weight(layer: nn.Module) -> mx.array:
    """The (out, in) float weight of a linear layer, dequantized if it is quantized."""
    if isinstance(layer, nn.QuantizedLinear):
        return mx.dequantize(layer.weight, layer.scales, layer.get("biases"), layer.group_size,
                             layer.bits, mode=getattr(layer, "mode", "affine"))
    return layer.weight


def _targets(targets) -> tuple[str, ...]:
    names = (TARGETS if targets == "all"
             else (targets,) if isinstance(targets, str) else tuple(targets))
    if not names or any(n not in TARGETS for n in names):
        raise ValueError(f"LoRA targets must be 'all' or names among {list(TARGETS)}, "
                         f"got {targets!r}")
    return names


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets=("q_proj", "v_proj"),
               layers: int | None = None) -> int:
    """Freeze ``model`` and wrap the ``targets`` projections of its last ``layers`` blocks (all by
    default) in ``LoRALinear``; returns the number of trainable parameters. Built in Chapter 9,
    Fine-tuning."""
    names = _targets(targets)
    blocks = model.blocks
    if layers is not None and (isinstance(layers, bool) or not isinstance(layers, int) or
                               not 1 <= layers <= len(blocks)):
        raise ValueError(f"layers must be between 1 and the model's {len(blocks)} blocks, "
                         f"got {layers!r}")
    if any(isinstance(m, LoRALinear) for _, m in model.named_modules()):
        raise ValueError("this model already has LoRA adapters; merge_lora it or load a fresh "
                         "model")
    model.freeze()
    for block in blocks[len(blocks) - (layers or len(blocks)):]:
        for part in (block.attention, block.ffn):
            for name in names:
                if name in part and isinstance(part[name], (nn.Linear, nn.QuantizedLinear)):
                    setattr(part, name, LoRALinear(part[name], rank, alpha))
    wrapped = lora_layers(model)
    if not wrapped:
        raise ValueError(f"none of the targets {list(names)} exists in this model's blocks")
    for _, layer in wrapped:
        layer.unfreeze(keys=["lora_a", "lora_b"], recurse=False)
    return trainable_parameters(model)


def lora_layers(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """(path, layer) of every LoRA layer in ``model``."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, LoRALinear)]


def trainable_parameters(model: nn.Module) -> int:
    """How many numbers the optimizer updates."""
    return sum(p.size for _, p in tree_flatten(model.trainable_parameters()))


def merge_lora(model: nn.Module) -> int:
    """Replace every ``LoRALinear`` by one ``nn.Linear`` with W + (α/r)·B A; returns how many were
    merged.

    A quantized base is dequantized first and the merged layer stays in float (re-quantizing would
    round the small update away); the model is unfrozen. Built in Chapter 9, Fine-tuning.
    """
    merged, modules = 0, dict(model.named_modules())  # only leaves are replaced: the parents stay
    for path, layer in lora_layers(model):
        weight = dense_weight(layer.base)
        out_dims, in_dims = weight.shape
        dtype = weight.dtype if mx.issubdtype(weight.dtype, mx.floating) else mx.float32
        dense = nn.Linear(in_dims, out_dims, bias="bias" in layer.base)
        dense.weight = (weight.astype(mx.float32) + layer.delta()).astype(dtype)
        if "bias" in layer.base:
            dense.bias = layer.base.bias
        parent_path, _, name = path.rpartition(".")
        setattr(modules[parent_path], name, dense)
        merged += 1
    model.unfreeze()
    return merged


def adapter_arrays(model: nn.Module) -> dict[str, mx.array]:
    """{path: array} of the adapters only (``...q_proj.lora_a``, ``...q_proj.lora_b``)."""
    return {k: v for k, v in tree_flatten(model.parameters()) if k.endswith((".lora_a", ".lora_b"))}


def arrays_digest(arrays: dict[str, mx.array]) -> str:
    """sha256 of named arrays: names, shapes and float32 values, in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        values = np.asarray(arrays[name].astype(mx.float32))
        digest.update(f"{name}{values.shape}".encode() + values.tobytes())
    return digest.hexdigest()


def base_fingerprint(model: nn.Module) -> str:
    """sha256 of the base model under the adapters: its sizes and every 1-D parameter (norm gains,
    biases) rounded to bfloat16, so that a cast or quantized copy of the same weights matches and
    another model of the same shape does not. Built in Chapter 9, Fine-tuning."""
    sizes = {name: int(v) if isinstance(v := getattr(model.config, name), int) else v
             for name in BASE_SIZES}
    digest = hashlib.sha256(json.dumps(sizes, sort_keys=True).encode())
    vectors = sorted((name.replace(".base.", "."), value)  # a LoRA layer's base: the plain name
                     for name, value in tree_flatten(model.parameters())
                     if value.ndim == 1 and mx.issubdtype(value.dtype, mx.floating)
                     and not name.endswith((".lora_a", ".lora_b")))
    for name, value in vectors:
        rounded = np.asarray(value.astype(mx.bfloat16).view(mx.uint16))
        digest.update(name.encode() + b"\0" + rounded.tobytes())
    return digest.hexdigest()


def save_adapters(model: nn.Module, path: str | Path, **extra) -> Path:
    """Write the adapters into the folder ``path`` as one file, ``adapters.safetensors``, whose
    metadata holds their settings, the base model's fingerprint and the arrays' sha256; written
    atomically, after a readable copy of the settings (``adapter_config.json``). Built in Chapter
    9, Fine-tuning."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("this model has no LoRA adapters to save; call apply_lora first")
    folder = Path(path)
    first = layers[0][1]
    blocks = sorted({int(p.split(".")[1]) for p, _ in layers})
    arrays = adapter_arrays(model)
    config = {"format": FORMAT, "rank": first.rank, "alpha": first.alpha,
              "targets": sorted({p.rsplit(".", 1)[1] for p, _ in layers}, key=TARGETS.index),
              "layers": len(model.blocks) - blocks[0], "n_blocks": len(model.blocks), **extra,
              "base_fingerprint": base_fingerprint(model), "sha256": arrays_digest(arrays)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / ADAPTER_CONFIG, json.dumps(config, indent=2))
        with replacing(folder / ADAPTER_WEIGHTS) as temporary:  # the commit: one rename
            save_arrays(temporary, arrays, metadata={SETTINGS_KEY: json.dumps(config)})
    except OSError as error:
        raise ValueError(f"could not write the adapters in {folder} "
                         f"({disk_trouble(error)}, then save them again") from None
    return folder


def read_adapters(path: str | Path) -> tuple[dict, dict[str, mx.array]]:
    """(settings, arrays) of an adapter folder, both from ``adapters.safetensors``, its sha256
    checked; a missing, damaged or foreign file → one ValueError saying so. Chapter 9."""
    folder = Path(path)
    file = folder / ADAPTER_WEIGHTS
    again = "fine-tune again (`mlxllm finetune --out`) or restore the folder from a backup"
    if not file.is_file():
        raise ValueError(f"{path} holds no LoRA adapters (no {ADAPTER_WEIGHTS}); write them with "
                         "`mlxllm finetune --out` or save_adapters")
    try:
        arrays, metadata = mx.load(str(file), format="safetensors", return_metadata=True)
        digest = arrays_digest(arrays)  # reads every array: a short file fails here
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{file} cannot be read ({error}): it is damaged or incomplete; "
                         f"{again}") from None
    try:
        config = json.loads(metadata[SETTINGS_KEY])
        if config.get("format") != FORMAT:
            raise ValueError(f"format is {config.get('format')!r}, not {FORMAT!r}")
        (config["rank"], config["alpha"], config["targets"], config["layers"],  # noqa: B018
         config["n_blocks"], config["base_fingerprint"], config["sha256"])
    except KeyError as error:
        raise ValueError(f"{file} lacks the adapter setting {error.args[0]!r} (written by an "
                         f"older mlxllm or another tool); {again}") from None
    except (ValueError, AttributeError, TypeError) as error:
        raise ValueError(f"{file} holds no valid adapter settings ({error}); {again}") from None
    if digest != config["sha256"]:
        raise ValueError(f"{file} is damaged (its arrays' sha256 differs from the one recorded "
                         f"with them); {again}")
    return config, arrays


def read_adapter_config(path: str | Path) -> dict:
    """The settings of an adapter folder (``read_adapters`` without the arrays)."""
    return read_adapters(path)[0]


def load_adapters(model: nn.Module, path: str | Path) -> nn.Module:
    """Wrap ``model`` as the saved adapters say and load their weights, after checking that it is
    the base model they were trained on (its fingerprint); returns the model. Built in Chapter 9,
    Fine-tuning."""
    config, weights = read_adapters(path)
    if config["n_blocks"] != len(model.blocks):
        raise ValueError(f"the adapters in {path} were trained on a model of {config['n_blocks']} "
                         f"blocks, this one has {len(model.blocks)}; load them on the model they "
                         "were trained for")
    if config["base_fingerprint"] != base_fingerprint(model):
        trained_on = f" ({config['base_model']})" if config.get("base_model") else ""
        raise ValueError(f"the adapters in {path} were trained on another base model{trained_on}: "
                         "this model's sizes or weights differ from that one's; load them on the "
                         "model they were trained for")
    apply_lora(model, config["rank"], config["alpha"], config["targets"], config["layers"])
    expected = adapter_arrays(model)
    for name, array in expected.items():
        if name not in weights or weights[name].shape != array.shape:
            got = "missing" if name not in weights else f"of shape {tuple(weights[name].shape)}"
            raise ValueError(f"the adapters in {path} do not fit this model: {name} is {got}, "
                             f"expected {tuple(array.shape)}")
    if extra := sorted(set(weights) - set(expected)):
        raise ValueError(f"the adapters in {path} do not fit this model: it has no {extra[0]}")
    model.load_weights(list(weights.items()), strict=False)
    mx.eval(model.parameters())
    return model
