"""The whole recipe as a user runs it: `mlxllm train`, once with an empty kernel cache, then warm.

Each run is a fresh process:

    python benchmarks/bench_recipe.py             # shakespeare-char, float32: first run, then warm
    python benchmarks/bench_recipe.py --dtype mixed-bfloat16 --runs first
    python benchmarks/bench_recipe.py --preset tiny --steps 200   # a quick look on a CPU

MLX's CUDA backend compiles each fused kernel with NVRTC the first time it runs and keeps it in
``MLX_PTX_CACHE_DIR`` (default ``$TMPDIR/mlx/<version>/ptx``): the first run on a machine pays for
those builds, later runs load them. For the first run this script points ``MLX_PTX_CACHE_DIR`` at a
new, empty folder (or ``--cache``), and the warm run reuses it, so both are measured on any machine.
Elsewhere (the CPU, Metal) no kernels are counted. Reported per run: the wall time of the whole
command, the kernels built, the best and the final validation loss (read from the checkpoint's
metrics.json) and the steps run; ``--sample N`` adds N tokens from the kept model.
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


def kernel_files(cache: Path) -> list[Path]:
    """The kernels in MLX's kernel cache ``cache``: their ``.ptx`` files, relative to it."""
    return sorted(ptx.relative_to(cache) for ptx in cache.rglob("*.ptx"))


def kernel_name(ptx: Path) -> str:
    """A cached kernel's name from its ``.ptx`` path in the cache: MLX cuts a name longer than 245 characters
    into folders."""
    return "".join(ptx.with_suffix("").parts)


def run_recipe(args: argparse.Namespace, cache: Path, out: Path) -> dict:
    """Time one ``mlxllm train`` command with ``cache`` as MLX's kernel cache; its results from ``out``."""
    command = [sys.executable, "-m", "mlxllm.cli", "train", "--corpus", args.corpus, "--preset", args.preset,
               "--out", str(out), "--quiet"]
    for flag in ("dtype", "steps"):
        if getattr(args, flag) is not None:
            command += [f"--{flag}", str(getattr(args, flag))]
    env = {**os.environ, "MLX_PTX_CACHE_DIR": str(cache)}
    before = set(kernel_files(cache))
    started, start = time.time(), time.perf_counter()
    finished = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if finished.returncode != 0:
        sys.exit(f"`{' '.join(command)}` failed:\n{finished.stderr[-2000:]}")
    metrics = json.loads(next(out.glob("step-*/metrics.json")).read_text())  # the one kept checkpoint
    evaluations = metrics["eval"]
    built = sorted(set(kernel_files(cache)) - before, key=lambda f: (cache / f).stat().st_mtime)
    done = [started] + [(cache / f).stat().st_mtime for f in built]  # a build ends when its file is written
    kernels = [(b - a, kernel_name(f)) for a, b, f in zip(done, done[1:], built)]  # (seconds since the last, name)
    return {"wall": wall, "kernels": kernels, "best": metrics["best"],
            "final": (evaluations["step"][-1], evaluations["val_loss"][-1]), "summary": finished.stdout.strip()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char")
    parser.add_argument("--corpus", default="tinyshakespeare")
    parser.add_argument("--dtype", default=None, help="passed to `mlxllm train --dtype` (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="passed to `mlxllm train --steps`")
    parser.add_argument("--runs", choices=("first", "both"), default="both",
                        help="first: only the run with an empty kernel cache; both: then a warm run")
    parser.add_argument("--cache", default=None,
                        help="the kernel cache folder to use and keep (default: a new temporary one)")
    parser.add_argument("--out", default=None, help="keep each run's checkpoint as DIR/run0, DIR/run1 "
                        "(default: temporary)")
    parser.add_argument("--kernels", action="store_true",
                        help="list the kernels each run built: seconds since the previous one ended, and the name")
    parser.add_argument("--sample", type=int, default=0, help="generate this many tokens from the kept model")
    args = parser.parse_args()

    print(f"mlx {mx.__version__} on {mx.default_device()}; `mlxllm train --corpus {args.corpus} --preset "
          f"{args.preset}`" + (f" --dtype {args.dtype}" if args.dtype else "") +
          (f" --steps {args.steps}" if args.steps else ""))
    with tempfile.TemporaryDirectory() as scratch:
        cache = Path(args.cache or Path(scratch) / "kernels")
        cache.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in ("first run (empty kernel cache)", "warm (kernels cached)")[: 1 if args.runs == "first" else 2]:
            out = Path(args.out or scratch) / f"run{len(rows)}"
            result = run_recipe(args, cache, out)
            rows.append((name, result))
            print(result["summary"].splitlines()[-1], flush=True)
            if args.kernels:
                for seconds, kernel in result["kernels"]:
                    print(f"  {seconds:6.1f} s  {kernel[:150]}")
        print("\n| run | wall s | kernels built | best val (step) | final val (step) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, r in rows:
            best, (step, val) = r["best"], r["final"]
            print(f"| {name} | {r['wall']:.0f} | {len(r['kernels'])} | {best['val_loss']:.4f} ({best['step']}) "
                  f"| {val:.4f} ({step}) |")
        if args.sample:
            sample = subprocess.run([sys.executable, "-m", "mlxllm.cli", "generate", str(out), "--max-new-tokens",
                                     str(args.sample)], env={**os.environ, "MLX_PTX_CACHE_DIR": str(cache)},
                                    capture_output=True, text=True, check=True)
            print(f"\n{args.sample} tokens from the kept model:\n{sample.stdout}")


if __name__ == "__main__":
    main()
