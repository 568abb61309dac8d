"""The whole recipe as a user runs it: `mlxllm train` in a fresh process, first with an empty kernel cache, then warm.

    python benchmarks/bench_recipe.py                                   # shakespeare-char, float32: first run, then warm
    python benchmarks/bench_recipe.py --dtype mixed-bfloat16 --runs first
    python benchmarks/bench_recipe.py --preset tiny --steps 200         # a quick look on a CPU

MLX's CUDA backend compiles each fused kernel with NVRTC the first time it runs and keeps it in
``MLX_PTX_CACHE_DIR`` (default ``$TMPDIR/mlx/<version>/ptx``): the first run on a machine pays for those builds,
later runs load them. For the first run this script points ``MLX_PTX_CACHE_DIR`` at a new, empty folder, and the
warm run reuses it, so both are measured on any machine. Elsewhere (the CPU, Metal) no kernels are counted.
Reported per run: the wall time of the whole command, the kernels built, the best and the final validation loss
(read from the checkpoint's metrics.json) and the steps run; ``--sample N`` adds N tokens from the kept model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx


def run_recipe(args: argparse.Namespace, cache: Path, out: Path) -> dict:
    """Time one ``mlxllm train`` command with ``cache`` as MLX's kernel cache; its results from ``out``."""
    command = [sys.executable, "-m", "mlxllm.cli", "train", "--corpus", args.corpus, "--preset", args.preset,
               "--out", str(out), "--quiet"]
    for flag in ("dtype", "steps"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "MLX_PTX_CACHE_DIR": str(cache)}
    before = len(list(cache.glob("*.ptx")))
    start = time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{finished.stderr[-2000:]}")
    metrics = json.loads(next(out.glob("step-*/metrics.json")).read_text())  # the one kept checkpoint
    evaluations = metrics["eval"]
    return {"wall": wall, "kernels": len(list(cache.glob("*.ptx"))) - before, "best": metrics["best"],
            "final": (evaluations["step"][-1], evaluations["val_loss"][-1]), "summary": finished.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--corpus", default="tinyshakespeare")
    parser.add_argument("--dtype", default=None, help="passed to `mlxllm train --dtype` (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="passed to `mlxllm train --steps`")
    parser.add_argument("--runs", choices=("first", "both"), default="both",
                        help="first: only the run with an empty kernel cache; both: then a warm run")
    parser.add_argument("--sample", type=int, default=0, help="generate this many tokens from the kept model")
    args = parser.parse_args()

    print(f"mlx {mx.__version__} on {mx.default_device()}; `mlxllm train --corpus {args.corpus} --preset "
          f"{args.preset}`" + (f" --dtype {args.dtype}" if args.dtype else "") +
          (f" --steps {args.steps}" if args.steps else ""))
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(scratch) / "kernels"
        cache.mkdir()
        rows = []
        for name in ("first run (empty kernel cache)", "warm (kernels cached)")[: 1 if args.runs == "first" else 2]:
            out = Path(scratch) / f"run{len(rows)}"
            result = run_recipe(args, cache, out)
            rows.append((name, result))
            print(result["summary"].splitlines()[-1], flush=True)
        print("\n| run | wall s | kernels built | best val (step) | final val (step) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, r in rows:
            best, (step, val) = r["best"], r["final"]
            print(f"| {name} | {r['wall']:.0f} | {r['kernels']} | {best['val_loss']:.4f} ({best['step']}) "
                  f"| {val:.4f} ({step}) |")
        if args.sample:
            sample = subprocess.run([sys.executable, "-m", "mlxllm.cli", "generate", str(out), "--max-new-tokens",
                                     str(args.sample)], env={**os.environ, "MLX_PTX_CACHE_DIR": str(cache)},
                                    capture_output=True, text=True, check=True)
            print(f"\n{args.sample} tokens from the kept model:\n{sample.stdout}")


if __name__ == "__main__":
    main()
