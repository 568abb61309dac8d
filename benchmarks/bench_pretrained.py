"""Decode speed of a loaded LLaMA-style checkpoint: mlxllm vs mlx-lm on the same folder, one run.

By default a random LLaMA-shaped model (SmolLM2's layout, smaller) with GPT-2's tokenizer is written
with ``save_pretrained``; both libraries load that folder, decode greedily from the same prompt, and
must produce the same tokens (up to a near-tie within the dtype's tolerance). Runs are interleaved and the best of ``--trials`` is reported.
``--repo HuggingFaceTB/SmolLM2-135M`` times a real checkpoint instead (needs huggingface_hub and the
network; on a Mac this runs on the GPU).

    python benchmarks/bench_pretrained.py [--tokens 256] [--dtype float32|bfloat16] [--repo ID] [--device gpu|cpu]

The last line is the verdict: ``RATIO decode … prefill …`` (ours / mlx-lm, best-of and median paired).
"""

import argparse
import statistics
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model as mlx_lm_load_model

from bench_generate import time_run  # the same timing rule: prefill on a one-token run, decode the rest

from mlxllm import ModelConfig, TransformerLM, generate, load_pretrained, save_pretrained
from mlxllm.data import get_path
from mlxllm.tokenizer import Tokenizer
from mlxllm.pretrained.hf import checkpoint_folder
from mlxllm.tolerances import bound

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak."


def random_checkpoint(folder: str) -> Path:
    """A random LLaMA-style model (GQA, RoPE, SwiGLU, untied head) saved in Hugging Face layout."""
    mx.random.seed(0)
    tokenizer = Tokenizer.from_gpt2_files(get_path("gpt2-vocab"), get_path("gpt2-merges"))
    config = ModelConfig.llama(vocab_size=50257, context_length=1024, dims=384, n_layers=6, n_heads=6, n_kv_heads=2,
                               ffn_dims=1024, tie_embeddings=False)
    model = TransformerLM(config)
    # unit-variance weights (GPT-2's 0.02 init gives near-uniform logits and one repeated token): the greedy
    # output then depends on the context, so "same tokens" is a real check
    model.update(tree_map(lambda p: mx.random.normal(p.shape) / p.shape[-1] ** 0.5 if p.ndim == 2 else p, model.parameters()))
    model.token_embedding.weight = mx.random.normal(model.token_embedding.weight.shape)
    save_pretrained(model, tokenizer, folder)
    return Path(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens to generate per run")
    parser.add_argument("--trials", type=int, default=5, help="runs per library; the best is reported")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--repo", default=None, help="a Hub repo id or local folder instead of the random model")
    parser.add_argument("--device", choices=["gpu", "cpu"], default=None, help="default: MLX's default device")
    args = parser.parse_args()
    if args.device:
        mx.set_default_device(getattr(mx, args.device))

    with tempfile.TemporaryDirectory() as tmp:
        folder = checkpoint_folder(args.repo) if args.repo else random_checkpoint(tmp)
        ours, tokenizer = load_pretrained(folder, dtype=args.dtype)
        theirs, _ = mlx_lm_load_model(folder)
        theirs.set_dtype(getattr(mx, args.dtype))
        prompt = tokenizer.encode(PROMPT)
        print(f"model: {args.repo or 'random LLaMA-style'}  {ours.num_parameters() / 1e6:.1f}M parameters  "
              f"dtype={args.dtype}  device={mx.default_device()}  mlx {mx.__version__}  prompt={len(prompt)} tokens  new={args.tokens}")

        # warm-up as long as the timed runs: every kernel and cache size is met before timing
        list(generate(ours, prompt, args.tokens, temperature=0.0))
        list(generate_step(mx.array(prompt), theirs, max_tokens=args.tokens))
        runs = {"mlxllm": [], "mlx-lm": []}
        for _ in range(args.trials):  # interleaved, so both see the same machine state
            runs["mlxllm"].append(time_run(lambda n: generate(ours, prompt, n, temperature=0.0), len(prompt), args.tokens))
            runs["mlx-lm"].append(time_run(
                lambda n: (int(t) for t, _ in generate_step(mx.array(prompt), theirs, max_tokens=n)), len(prompt), args.tokens))

    # greedy tokens must agree until a near-tie of mlx-lm's logits (top-2 margin within the dtype's tolerance),
    # where different kernels (a compiled step, another reduction order) may rightly pick either token
    ours_tokens, their_tokens = runs["mlxllm"][0][0], runs["mlx-lm"][0][0]
    agree = next((i for i, (a, b) in enumerate(zip(ours_tokens, their_tokens)) if a != b), len(their_tokens))
    same = agree == len(their_tokens)
    if not same:  # mlx-lm's logprobs at the first disagreement (greedy decoding repeats itself)
        steps = generate_step(mx.array(prompt), theirs, max_tokens=agree + 1)
        their_logprobs = [lp for _, lp in steps]
        row = np.array(their_logprobs[agree].astype(mx.float32)).reshape(-1)
        second, first = np.sort(row)[-2:]
        near_tie = first - second <= 2 * bound(getattr(mx, args.dtype)) * float(np.abs(row).max())
    prefill = {name: min(len(prompt) / r[1]["prefill tokens/s"] for r in results) for name, results in runs.items()}
    decode = {name: max(r[1]["decode tokens/s"] for r in results) for name, results in runs.items()}
    paired = [a[1]["decode tokens/s"] / b[1]["decode tokens/s"] for a, b in zip(runs["mlxllm"], runs["mlx-lm"])]
    print(f"\n| {'best of ' + str(args.trials):18} | {'mlxllm':>8} | {'mlx-lm':>8} | {'ratio':>6} |")
    print(f"| {'-' * 18} | {'-' * 8}:| {'-' * 8}:| {'-' * 6}:|")
    print(f"| {'prefill seconds':18} | {prefill['mlxllm']:8.3f} | {prefill['mlx-lm']:8.3f} | {prefill['mlx-lm'] / prefill['mlxllm']:6.2f} |")
    print(f"| {'decode tokens/s':18} | {decode['mlxllm']:8.1f} | {decode['mlx-lm']:8.1f} | {decode['mlxllm'] / decode['mlx-lm']:6.2f} |")
    print(f"\nratio = how many times faster mlxllm is (> 1: faster); same output tokens: "
          f"{'all' if same else f'{agree}/{len(their_tokens)}, then a near-tie' if near_tie else f'NO, from token {agree}'}")
    print("text:", repr(tokenizer.decode(runs["mlxllm"][0][0][:24])))
    print(f"RATIO mlxllm/mlx-lm on {mx.default_device()} (mlx {mx.__version__}, {args.dtype}): decode "
          f"{decode['mlxllm'] / decode['mlx-lm']:.2f}x best-of-{args.trials}, {statistics.median(paired):.2f}x median paired; "
          f"prefill {prefill['mlx-lm'] / prefill['mlxllm']:.2f}x best")
    if not same and not near_tie:
        raise SystemExit("the two libraries generated different tokens from the same weights")


if __name__ == "__main__":
    main()
