"""Helpers shared by the test files: tiny models of both families and O(1) random weights.

Owners of other test files may append helpers at the end; float comparisons go through
``mlxllm.tolerances`` (``assert_close``, ``relative_difference``).
"""

import math
from pathlib import Path

import pytest

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.config import ModelConfig
from mlxllm.model import TransformerLM

# tiny sizes (this CPU does ~5 GFLOP/s); context 320 leaves room to decode across a 256-position cache chunk
GPT2_TINY = dict(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4)
LLAMA_TINY = dict(vocab_size=97, context_length=320, dims=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dims=64)


def tiny_config(family: str = "gpt2", **overrides) -> ModelConfig:
    """A tiny ModelConfig of the family's preset (GPT2_TINY or LLAMA_TINY sizes), with overrides."""
    if family == "gpt2":
        return ModelConfig.gpt2(**{**GPT2_TINY, **overrides})
    if family == "llama":
        return ModelConfig.llama(**{**LLAMA_TINY, **overrides})
    raise ValueError(f"family must be 'gpt2' or 'llama', got {family!r}")


def make_model(family: str = "gpt2", seed: int = 0, **overrides) -> TransformerLM:
    """A tiny TransformerLM with the package's own (GPT-2) initialisation, seeded and evaluated."""
    mx.random.seed(seed)
    model = TransformerLM(tiny_config(family, **overrides))
    mx.eval(model.parameters())
    return model


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random and O(1), so no wiring hides behind 1s, 0s or GPT-2's gentle init.

    Matrices N(0, 1/fan_in) (activations stay O(1) at any width), 1-D weights (norm gains) 1 + N(0, 0.3²),
    biases N(0, 0.3²). Returns the module, updated in place and evaluated.
    """
    params = tree_flatten(module.parameters())
    keys = mx.random.split(mx.random.key(seed), max(len(params), 1))
    new = []
    for (name, value), key in zip(params, keys):
        noise = mx.random.normal(value.shape, key=key)
        if value.ndim >= 2:
            new.append((name, noise / math.sqrt(value.shape[-1])))
        elif name.endswith("weight"):
            new.append((name, 1.0 + 0.3 * noise))
        else:
            new.append((name, 0.3 * noise))
    module.load_weights(new)
    mx.eval(module.parameters())
    return module


def n_params(module: nn.Module) -> int:
    """Number of values in a module's parameters (for a float module; quantized ones pack several per word)."""
    return sum(p.size for _, p in tree_flatten(module.parameters()))


# --- Hugging Face tokenizers trained by `tokenizers` itself (test_tokenizer_hf.py, test_pretrained.py) ---

TEXT = (
    "First Citizen: Before we proceed any further, hear me speak. It's 1984, and 3.14159 apples cost $12,000!\n"
    "  Indented line\twith tabs\r\nnaïve café — résumé ²³ 0x7f  42  7\n\n"
    "We're told they'll say: you'd better go; I'm here, 2024-11-26 at 10:30.   End.   \n"
) * 3
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def hf_pre_tokenizer(style: str):
    from tokenizers import Regex, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=style != "qwen2")
    if style == "gpt2":
        return byte_level
    if style == "smollm":  # StarCoder's: every digit on its own, then GPT-2's regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"), byte_level])


def write_hf_tokenizer(folder, style: str, vocab_size: int = 320):
    """A byte-level BPE trained by Hugging Face `tokenizers` itself and saved as tokenizer.json."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = hf_pre_tokenizer(style)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator([TEXT], trainer)
    folder.mkdir(parents=True, exist_ok=True)
    hf.save(str(folder / "tokenizer.json"))
    return hf


# --- our model and mlx-lm's on the same weights (test_model.py, test_generation.py) ---
# Written in Hugging Face layout by save_pretrained and opened by mlx-lm's own loader, which builds its
# llama.py / gpt2.py model from config.json.

PARITY = {
    "llama": dict(vocab_size=300, context_length=320, dims=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dims=128),
    "gpt2": dict(vocab_size=300, context_length=320, dims=64, n_layers=2, n_heads=4),
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model_pair(request, tmp_path_factory):
    """(ours, mlx-lm's) on the same random weights."""
    from mlx_lm.utils import load_model

    from mlxllm import Tokenizer, save_pretrained

    ours = randomize(make_model(request.param, **PARITY[request.param]), seed=10)
    tokenizer = Tokenizer.train("the cat sat on the mat; a dog ran far away. " * 10, 280)  # save_pretrained writes one
    folder = save_pretrained(ours, tokenizer, tmp_path_factory.mktemp(request.param))
    theirs, _ = load_model(Path(folder))
    assert type(theirs).__module__ == f"mlx_lm.models.{request.param}"  # really mlx-lm's own architecture code
    return ours, theirs
