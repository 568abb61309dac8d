"""Decode and prefill speed of mlxllm's two layers against mlx-lm's ``generate_step``, same weights.

"fast" is the decode engine (``mlxllm.fast.DecodeEngine``, what the CLI uses), "core" the plain
KV-cached loop (``mlxllm.generate``, what Python runs by default).

A LLaMA-style model with random weights (float32) is written once in Hugging Face layout by
``mlxllm.save_pretrained`` and loaded by mlx-lm's own loader, so both sides run exactly the
same numbers. Greedy decoding; the two token streams must be identical. Each side runs ``--repeats``
times, interleaved (ours, theirs, ours, …) so that drift in the machine's speed hits both; the best
run of each is reported, and ratios are ours / mlx-lm (> 1 means we are faster).

Also reported: the memory-bandwidth bound on decoding. Every decoded token reads every weight once,
so tokens/s ≤ bandwidth / weight bytes; the bandwidth is measured here with a large array copy.

    python benchmarks/bench_generate.py              # ~56M parameters (the issue asks for 50-100M)
    python benchmarks/bench_generate.py --small      # ~15M, a quick run
    python benchmarks/bench_generate.py --device gpu # on the GPU (CUDA or Metal); default: MLX's default device

The last line is the verdict: ``RATIO decode … prefill …`` (ours / mlx-lm, best-of and median paired).
"""

import argparse
import itertools
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
from mlxllm.fast import DecodeEngine
from mlxllm.generation import generate, make_sampler

SIZES = {
    # LLaMA-style: RoPE, RMSNorm, SwiGLU, GQA, untied head, 32k vocabulary
    "default": dict(vocab_size=32000, context_length=2048, dims=512, n_layers=8, n_heads=8, n_kv_heads=4, ffn_dims=1376),
    "small": dict(vocab_size=8000, context_length=2048, dims=384, n_layers=6, n_heads=6, n_kv_heads=2, ffn_dims=1024),
}


def measure_bandwidth(n_bytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s: the best of a few large copies (read n, write n), on the GPU through MLX,
    on the CPU through NumPy (whose memcpy uses every core; MLX's CPU copy is single-threaded)."""
    if mx.default_device() == mx.cpu:
        source = np.ones(n_bytes // 4, dtype=np.float32)
        target = np.empty_like(source)
        copy = lambda: np.copyto(target, source)  # noqa: E731
    else:
        array = mx.ones((n_bytes // 4,), dtype=mx.float32)
        mx.eval(array)
        copy = lambda: mx.eval(array + 1)  # noqa: E731
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy()
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def time_run(make_stream, n_prompt: int, n: int) -> tuple[list[int], dict[str, float]]:
    """Tokens of an ``n``-token run and tokens/s of prefill and decode, by the wall clock and by this process's
    CPU time (which other jobs on a shared machine do not inflate).

    Prefill is a run of one token (nothing else queued: the time to the first token). Decode is the rest of
    the ``n``-token run, its total time minus that prefill: a decoder that queues its next tokens before
    handing out the first then cannot hide their time in the prefill.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    list(make_stream(1))
    prefill_wall, prefill_cpu = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    tokens = list(make_stream(n))
    total_wall, total_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return tokens, {
        "prefill tokens/s": n_prompt / prefill_wall,
        "decode tokens/s": (n - 1) / (total_wall - prefill_wall),
        "prefill tokens/CPU-s": n_prompt / prefill_cpu,
        "decode tokens/CPU-s": (n - 1) / max(total_cpu - prefill_cpu, 1e-9),
    }


def ours(model: TransformerLM, prompt: list[int], n: int, engine: DecodeEngine | None = None):
    """mlxllm's decode engine (given one), or the core's generate: the plain KVCache loop."""
    if engine is None:
        return time_run(lambda k: generate(model, prompt, k, temperature=0), len(prompt), n)
    greedy = make_sampler(temperature=0)
    return time_run(lambda k: engine.generate(prompt, k, sampler=greedy), len(prompt), n)


def theirs(model, prompt: list[int], n: int):
    return time_run(lambda k: (int(token) for token, _ in generate_step(mx.array(prompt), model, max_tokens=k)),
                    len(prompt), n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a ~15M-parameter model instead of ~56M")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["gpu", "cpu"], default=None, help="default: MLX's default device")
    args = parser.parse_args()
    if args.device:
        mx.set_default_device(getattr(mx, args.device))

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
    # warm up all three (the engine's stages are traced here; every cache size the timed runs use is met)
    n = args.new_tokens  # the warm-up runs as long as the timed runs: every cache size is traced before timing
    engine = DecodeEngine(model)
    ours(model, prompt, n, engine), ours(model, prompt, n), theirs(reference, prompt, n)
    runs = {"mlxllm": [], "mlxllm plain": [], "mlx-lm": []}
    for repeat in range(args.repeats):  # rotate who goes first, so that none always runs warmer
        trio = [("mlxllm", lambda: ours(model, prompt, args.new_tokens, engine)),
                ("mlxllm plain", lambda: ours(model, prompt, args.new_tokens)),
                ("mlx-lm", lambda: theirs(reference, prompt, args.new_tokens))]
        for name, run in trio[repeat % 3:] + trio[:repeat % 3]:
            runs[name].append(run())
    tokens = {name: results[0][0] for name, results in runs.items()}
    same = {name: sum(1 for _ in itertools.takewhile(lambda ab: ab[0] == ab[1], zip(t, tokens["mlx-lm"])))
            for name, t in tokens.items()}
    assert all(r[0] == tokens[name] for name, results in runs.items() for r in results), "a rerun changed its tokens"
    if mx.default_device() == mx.cpu:  # one backend, same kernels: every greedy token must agree
        assert same["mlxllm"] == same["mlxllm plain"] == len(tokens["mlx-lm"]), f"greedy tokens differ: {same}"
    # best run of each side, and the median over repeats of the ratio within a round (robust to drift)
    metrics = list(runs["mlxllm"][0][1])
    best = {m: {name: max(r[1][m] for r in results) for name, results in runs.items()} for m in metrics}
    paired = {m: {name: statistics.median(a[1][m] / b[1][m] for a, b in zip(runs[name], runs["mlx-lm"]))
                  for name in ("mlxllm", "mlxllm plain")} for m in metrics}
    decode = best["decode tokens/s"]

    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    bandwidth = measure_bandwidth()
    bound = bandwidth / weight_bytes

    print(f"machine: {platform.machine()} {platform.system()}, mlx {mx.__version__}, device {mx.default_device()}")
    print(f"model: LLaMA-style, {model.num_parameters() / 1e6:.1f}M parameters ({weight_bytes / 2**20:.0f} MiB float32), "
          f"{json.dumps(SIZES['small' if args.small else 'default'])}")
    print(f"prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, greedy, best of {args.repeats}; "
          f"greedy tokens equal to mlx-lm's: {same['mlxllm']}/{len(tokens['mlx-lm'])} fast, "
          f"{same['mlxllm plain']}/{len(tokens['mlx-lm'])} core (on a GPU a near-tie may part them)")
    print()
    print(f"| {'':20} | {'fast':>8} | {'core':>8} | {'mlx-lm':>8} | {'fast: best':>13} | {'fast: median':>13} "
          f"| {'core: best':>11} | {'core: median':>13} |")
    print(f"| {'-' * 20} |{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 14}:|{'-' * 14}:|{'-' * 12}:|{'-' * 14}:|")
    for m in metrics:
        b = best[m]
        print(f"| {m:20} | {b['mlxllm']:8.1f} | {b['mlxllm plain']:8.1f} | {b['mlx-lm']:8.1f} | "
              f"{b['mlxllm'] / b['mlx-lm']:13.2f} | {paired[m]['mlxllm']:13.2f} | "
              f"{b['mlxllm plain'] / b['mlx-lm']:11.2f} | {paired[m]['mlxllm plain']:13.2f} |")
    print()
    print(f"memory bandwidth (copy on {mx.default_device()}): {bandwidth / 1e9:.1f} GB/s → decode bound {bound:.1f} "
          f"tokens/s; fast reaches {decode['mlxllm'] / bound:.0%} of it, core {decode['mlxllm plain'] / bound:.0%}, "
          f"mlx-lm {decode['mlx-lm'] / bound:.0%}")
    p = paired
    print(f"RATIO mlxllm/mlx-lm on {mx.default_device()} (mlx {mx.__version__}, float32): decode fast "
          f"{decode['mlxllm'] / decode['mlx-lm']:.2f}x best-of-{args.repeats}, {p['decode tokens/s']['mlxllm']:.2f}x "
          f"median paired; core {decode['mlxllm plain'] / decode['mlx-lm']:.2f}x, "
          f"{p['decode tokens/s']['mlxllm plain']:.2f}x; prefill fast "
          f"{best['prefill tokens/s']['mlxllm'] / best['prefill tokens/s']['mlx-lm']:.2f}x best, "
          f"{p['prefill tokens/s']['mlxllm']:.2f}x median paired, core "
          f"{p['prefill tokens/s']['mlxllm plain']:.2f}x median; greedy tokens equal to mlx-lm's "
          f"{same['mlxllm']}/{len(tokens['mlx-lm'])}")


if __name__ == "__main__":
    main()
