"""Decode and prefill speed of ``mlxllm.generate`` against mlx-lm's ``generate_step``, same weights.

A LLaMA-style model with random weights (float32) is written once in Hugging Face layout by
``mlxllm.save_pretrained`` and loaded by mlx-lm's own loader, so both sides run exactly the
same numbers. Greedy decoding; the two token streams must be identical. Each side runs ``--repeats``
times, interleaved (ours, theirs, ours, …) so that drift in the machine's speed hits both; the best
run of each is reported, and ratios are ours / mlx-lm (> 1 means we are faster).

Also reported: the memory-bandwidth bound on decoding. Every decoded token reads every weight once,
so tokens/s ≤ bandwidth / weight bytes; the bandwidth is measured here with a large array copy.

    python benchmarks/bench_generate.py              # ~56M parameters (the issue asks for 50-100M)
    python benchmarks/bench_generate.py --small      # ~15M, a quick run
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model

from mlxllm import ModelConfig, TransformerLM, Tokenizer, save_pretrained
from mlxllm.generation import generate

SIZES = {
    # LLaMA-style: RoPE, RMSNorm, SwiGLU, GQA, untied head, 32k vocabulary
    "default": dict(vocab_size=32000, context_length=2048, dims=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dims=1376),
    "small": dict(vocab_size=8000, context_length=2048, dims=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dims=1024),
}


def measure_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: the best of a few large copies (a memcpy reads n and writes n bytes)."""
    source = np.ones(n_bytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def time_stream(stream, n_prompt: int) -> tuple[list[int], dict[str, float]]:
    """Run a token stream to the end; return its tokens and tokens/s of prefill and decode, both by the
    wall clock and by this process's CPU time (which other jobs on a shared machine do not inflate)."""
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = [next(stream)]  # the first token needs the whole prompt: time to first token = prefill
    wall_first, cpu_first = time.perf_counter(), time.process_time()
    tokens.extend(stream)
    wall_end, cpu_end = time.perf_counter(), time.process_time()
    n_decoded = len(tokens) - 1
    return tokens, {
        "prefill tokens/s": n_prompt / (wall_first - wall),
        "decode tokens/s": n_decoded / (wall_end - wall_first),
        "prefill tokens/CPU-s": n_prompt / (cpu_first - cpu),
        "decode tokens/CPU-s": n_decoded / (cpu_end - cpu_first),
    }


def ours(model: TransformerLM, prompt: list[int], n: int):
    return time_stream(generate(model, prompt, n, temperature=0), len(prompt))


def theirs(model, prompt: list[int], n: int):
    stream = (int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=n))
    return time_stream(stream, len(prompt))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a ~15M-parameter model instead of ~56M")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    mx.random.seed(0)
    config = ModelConfig.llama(**SIZES["small" if args.small else "default"])
    model = TransformerLM(config)
    mx.eval(model.parameters())
    tokenizer = Tokenizer.train("a tokenizer only because a checkpoint folder has one", 260)  # ids are random anyway
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, tokenizer, folder)
        reference, _ = load_model(Path(folder))
    mx.eval(reference.parameters())

    prompt = mx.random.randint(0, config.vocab_size, (args.prompt_tokens,), key=mx.random.key(1)).tolist()
    ours(model, prompt[:8], 4), theirs(reference, prompt[:8], 4)  # warm up both
    runs = {"mlxllm": [], "mlx-lm": []}
    for repeat in range(args.repeats):  # alternate who goes first, so that neither always runs warmer
        pair = [("mlxllm", lambda: ours(model, prompt, args.new_tokens)),
                ("mlx-lm", lambda: theirs(reference, prompt, args.new_tokens))]
        for name, run in pair if repeat % 2 == 0 else pair[::-1]:
            runs[name].append(run())
    tokens = {name: results[0][0] for name, results in runs.items()}
    assert tokens["mlxllm"] == tokens["mlx-lm"], "greedy decoding differs between mlxllm and mlx-lm"
    assert all(r[0] == tokens["mlxllm"] for results in runs.values() for r in results)
    # best run of each side, and the median over repeats of the ratio within a pair (robust to drift)
    metrics = list(runs["mlxllm"][0][1])
    best = {m: {name: max(r[1][m] for r in results) for name, results in runs.items()} for m in metrics}
    paired = {m: statistics.median(a[1][m] / b[1][m] for a, b in zip(runs["mlxllm"], runs["mlx-lm"])) for m in metrics}
    decode = best["decode tokens/s"]

    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    bandwidth = measure_bandwidth()
    bound = bandwidth / weight_bytes

    print(f"machine: {platform.machine()} {platform.system()}, mlx {mx.__version__}, device {mx.default_device()}")
    print(f"model: LLaMA-style, {model.num_parameters() / 1e6:.1f}M parameters ({weight_bytes / 2**20:.0f} MiB float32), "
          f"{json.dumps(SIZES['small' if args.small else 'default'])}")
    print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, best of {args.repeats}; "
          f"same {len(tokens['mlxllm'])} tokens from both: yes")
    print()
    print(f"| {'':20} | {'mlxllm':>8} | {'mlx-lm':>8} | {'ratio of best':>13} | {'median paired ratio':>19} |")
    print(f"| {'-' * 20} | {'-' * 7}:| {'-' * 7}:| {'-' * 12}:| {'-' * 18}:|")
    for m in metrics:
        print(f"| {m:20} | {best[m]['mlxllm']:8.1f} | {best[m]['mlx-lm']:8.1f} | "
              f"{best[m]['mlxllm'] / best[m]['mlx-lm']:13.2f} | {paired[m]:19.2f} |")
    print()
    print(f"memory bandwidth (copy): {bandwidth / 1e9:.1f} GB/s → decode bound {bound:.1f} tokens/s; "
          f"mlxllm reaches {decode['mlxllm'] / bound:.0%} of it, mlx-lm {decode['mlx-lm'] / bound:.0%}")


if __name__ == "__main__":
    main()
