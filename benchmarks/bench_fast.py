"""The fast layer's results file for Chapter 10: where a decode token's time goes, and the speed
benchmarks, in one run on one machine, written as one dated JSON file.

For the 56M LLaMA-style model of ``bench_generate.py`` and SmolLM2-135M-Instruct (bfloat16), the core's
decode step and the engine's: the operations one step queues (``mlxllm.fast.measure.operations``),
the host time to build that step (median µs), the weight bytes a token reads and the memory
bandwidth (so the bound on tokens/s). Then ``bench_generate.py``, ``bench_pretrained.py`` (float32,
bfloat16, SmolLM2 bfloat16 and 4-bit) and ``bench_train.py`` (shakespeare-char shapes, --bf16) as
subprocesses, each one's output kept whole.

    python benchmarks/bench_fast.py --out book/results/fast_2026-12-07_h100.json [--quick]
"""

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
from bench_generate import SIZES, measure_bandwidth
from mlx.utils import tree_flatten

from mlxllm import ModelConfig, TransformerLM, load_pretrained
from mlxllm.fast.measure import decode_steps, host_microseconds, operations

HERE = Path(__file__).resolve().parent


def anatomy(model: TransformerLM, prompt: list[int], bandwidth: float) -> dict:
    """Operations, host µs per step and the bandwidth bound, for the core's step and the engine's."""
    steps = decode_steps(model, prompt)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    result = {"parameters": model.num_parameters(), "weight_bytes": weight_bytes,
              "bandwidth_bound_tokens_per_s": round(bandwidth / weight_bytes, 1)}
    for name, step in steps.items():
        out = step()
        ops = operations(out)
        mx.eval(out)
        start, n = time.perf_counter(), 50
        for _ in range(n):
            mx.eval(step())
        result[name] = {"operations": sum(ops.values()), "by_kind": dict(ops.most_common()),
                        "host_us_per_step": round(host_microseconds(step), 1),
                        "tokens_per_s_one_step_at_a_time": round(n / (time.perf_counter() - start), 1)}
    return result


def run(script: str, *args: str) -> dict:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                          cwd=HERE)
    lines = done.stdout.strip().splitlines()
    return {"command": " ".join([script, *args]), "returncode": done.returncode,
            "seconds": round(time.perf_counter() - started, 1), "output": lines,
            "stderr_tail": done.stderr.strip().splitlines()[-5:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--quick", action="store_true", help="the anatomy only (no benchmarks)")
    parser.add_argument("--no-train", action="store_true", help="leave bench_train.py out")
    parser.add_argument("--no-random-checkpoint", action="store_true",
                        help="leave bench_pretrained.py's random 48M checkpoint out (SmolLM2 stays)")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    info = mx.device_info() if hasattr(mx, "device_info") else {}
    report = {"date": datetime.date.today().isoformat(), "commit": commit or "unknown",
              "device": f"{mx.default_device()}: {info.get('device_name', 'unknown')}",
              "mlx": mx.__version__}
    bandwidth = measure_bandwidth()
    report["bandwidth_GB_per_s"] = round(bandwidth / 1e9, 1)
    mx.random.seed(0)
    model = TransformerLM(ModelConfig.llama(**SIZES["default"]))
    mx.eval(model.parameters())
    prompt = mx.random.randint(0, 32000, (128,), key=mx.random.key(1)).tolist()
    report["anatomy"] = {"56M float32": anatomy(model, prompt, bandwidth)}
    smollm2, tokenizer = load_pretrained("smollm2-135m-instruct", "bfloat16")
    prompt = tokenizer.encode("First Citizen:\nBefore we proceed any further, hear me speak.")
    report["anatomy"]["SmolLM2-135M bfloat16"] = anatomy(smollm2, prompt, bandwidth)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["anatomy"], indent=1)[:2000], flush=True)
    if args.quick:
        return
    report["benchmarks"] = []
    for command in (["bench_generate.py"], ["bench_pretrained.py", "--dtype", "float32"],
                    ["bench_pretrained.py", "--dtype", "bfloat16"],
                    ["bench_pretrained.py", "--smollm2", "--dtype", "bfloat16"],
                    ["bench_pretrained.py", "--smollm2", "--dtype", "4bit"],
                    ["bench_train.py", "--preset", "shakespeare-char", "--bf16"]):
        if args.no_train and command[0] == "bench_train.py":
            continue
        if args.no_random_checkpoint and command[0] == "bench_pretrained.py" \
                and "--smollm2" not in command:
            continue
        part = run(*command)
        report["benchmarks"].append(part)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # kept if a later one hangs
        print(part["command"], part["returncode"], part["seconds"], *part["output"][-3:],
              *part["stderr_tail"][-2:], sep="\n  ", flush=True)


if __name__ == "__main__":
    main()
