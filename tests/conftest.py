"""Helpers shared by the test files: tiny models of both families and O(1) random weights.

Owners of other test files may append helpers at the end; float comparisons go through
``mlxllm.tolerances`` (``assert_close``, ``relative_difference``).
"""

import math
from pathlib import Path

import numpy as np
import pytest

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm.config import ModelConfig, TrainConfig
from mlxllm.model import TransformerLM
from mlxllm.tokenizer import CharTokenizer
from mlxllm.tolerances import bound
from mlxllm.training import Trainer

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


def assert_greedy_tokens_agree(actual: list[int], expected: list[int], expected_logits: list[mx.array],
                               dtype: mx.Dtype = mx.float32) -> int:
    """Greedy tokens of two computations through different kernels are equal while the reference's
    top-2 logits differ by more than the tolerance allows (2 · bound(dtype) · max|logits|).

    At such a near-tie either kernel may pick either token and the continuations part, so the
    comparison stops there; anywhere else a difference fails. Returns how many tokens were compared
    (all of them on the CPU in practice). ``expected_logits`` may be any scores the reference took
    the argmax of (a sampler's perturbed logits, say).
    """
    assert len(actual) == len(expected), f"{len(actual)} tokens against {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        if a != e:
            row = np.array(expected_logits[i].astype(mx.float32)).reshape(-1)
            second, first = np.sort(row)[-2:]
            allowed = 2 * bound(dtype) * float(np.abs(row).max())
            assert first - second <= allowed, (
                f"token {i}: {a} != {e} although the reference's top-2 margin {first - second:.3g} "
                f"exceeds the tolerance {allowed:.3g}")
            return i
    return len(actual)


def argmax_loop_full_recompute(model: TransformerLM, prompt: list[int],
                               n: int) -> tuple[list[int], list[mx.array]]:
    """The reference: a full forward pass per token over the last context_length ids (nanoGPT's
    sampler). Returns the tokens and the logits each was the argmax of."""
    ids, logits = list(prompt), []
    for _ in range(n):
        logits.append(model(mx.array([ids[-model.config.context_length :]]))[0, -1])
        ids.append(int(mx.argmax(logits[-1]).item()))
    return ids[len(prompt) :], logits


# --- tiny training runs (test_training.py, test_checkpoint.py, test_pretrained.py) ---
# 20 characters, 5,000 training and 1,000 validation ids, one block of 32 dims over 16 positions

RUN_TOKENIZER = CharTokenizer("abcdefghijklmnopqrst")
RUN_IDS = np.random.default_rng(0).integers(0, 20, 6000).astype(np.uint16)
TRAIN_IDS, VAL_IDS = RUN_IDS[:5000], RUN_IDS[5000:]
RUN_MODEL = ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2,
                             bias=False)


def small_config(**overrides) -> TrainConfig:
    """12 steps of 4 windows of 16 tokens, evaluated every 5 steps on 2 batches, with overrides."""
    base = dict(steps=12, batch_size=4, context=16, lr=1e-2, min_lr=1e-3, warmup=3,
                eval_interval=5, eval_batches=2)
    return TrainConfig(**{**base, **overrides})


def make_trainer(config: TrainConfig | None = None, model: ModelConfig = RUN_MODEL,
                 tokenizer=RUN_TOKENIZER, **overrides) -> Trainer:
    """A fresh trainer of ``model`` on TRAIN_IDS / VAL_IDS with ``config`` (default:
    ``small_config(**overrides)``)."""
    assert config is None or not overrides, "give a config or overrides of small_config, not both"
    return Trainer.create(model, config or small_config(**overrides), TRAIN_IDS, VAL_IDS, tokenizer)


def parameters(model_or_tree) -> dict[str, np.ndarray]:
    """{name: numpy copy} of a model's parameters, or of a parameter tree."""
    tree = model_or_tree.parameters() if hasattr(model_or_tree, "parameters") else model_or_tree
    return {name: np.array(value) for name, value in tree_flatten(tree)}


def parameters_equal(a, b) -> bool:
    """Whether two models (or parameter trees) hold the same parameters, bit for bit."""
    a, b = parameters(a), parameters(b)
    return a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)


def assert_same(a: dict, b: dict) -> None:
    """Two ``parameters(...)`` dicts are equal, name by name and bit for bit."""
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
