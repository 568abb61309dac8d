"""Data-parallel scaling: tokens/s of `mlxllm`'s training step on 1 vs N ranks, and the all-reduce's share.

Run it once alone and once under `mlx.launch` (NCCL on a CUDA host, one GPU per rank; ring on Macs):

    python benchmarks/bench_distributed.py --preset shakespeare-char --json 1gpu.json
    mlx.launch -n 2 --backend nccl -- python benchmarks/bench_distributed.py --preset shakespeare-char --json 2gpu.json

Every rank keeps the per-rank batch of the preset (weak scaling: N ranks process N times the tokens per step),
so the speed-up is tokens/s(N) / tokens/s(1) and its ideal is N. The all-reduce is timed on its own on a buffer
as large as the gradient (4 bytes per parameter in float32, 2 in bfloat16). `--params FILE` saves the parameters after the run
(rank 0) so that two runs on the same global batches can be compared (`--global-batch` fixes the global batch).
Appendix, Data-parallel training.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from mlxllm import ModelConfig, data
from mlxllm.distributed import world
from mlxllm.presets import PRESETS
from mlxllm.training import Trainer

# a GPT-2-small-sized model (124M) at context 1024: the "larger preset" of the scaling table
GPT2_124M = dict(bias=False)  # ModelConfig.gpt2's defaults are GPT-2 small; nanoGPT drops the biases


def setup(preset: str, per_rank_batch: int | None, global_batch: int | None, steps: int, size: int):
    """(model config, train config, train ids, val ids, tokenizer) for one of the two benchmark shapes."""
    corpus = data.prepare_corpus("tinyshakespeare", "gpt2" if preset == "gpt2-124m" else "char")
    if preset == "gpt2-124m":
        model_config = ModelConfig.gpt2(vocab_size=corpus.tokenizer.vocab_size, context_length=1024, **GPT2_124M)
        train, per_rank_batch = PRESETS["shakespeare-char"].train, per_rank_batch or 8
    else:
        model_config = PRESETS[preset].model_config(corpus.tokenizer.vocab_size)
        train = PRESETS[preset].train
        per_rank_batch = per_rank_batch or train.batch_size
    batch = global_batch or per_rank_batch * size
    config = dataclasses.replace(train, steps=steps, batch_size=batch, context=model_config.context_length,
                                 eval_interval=10**6, grad_accumulation=1, checkpoint_every=0)
    return model_config, config, corpus.train_ids, corpus.val_ids, corpus.tokenizer


def time_all_reduce(n_floats: int, group, dtype: mx.Dtype = mx.float32, repeats: int = 10) -> float:
    """Seconds per all_sum of a buffer as large as the gradient (n_floats of `dtype`), median of `repeats`."""
    buffer = mx.ones((n_floats,), dtype=dtype)
    mx.eval(mx.distributed.all_sum(buffer, group=group))  # warm-up (connects, compiles)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(mx.distributed.all_sum(buffer, group=group))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="shakespeare-char", choices=["shakespeare-char", "gpt2-124m", "tiny"])
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--per-rank-batch", type=int, default=None)
    parser.add_argument("--global-batch", type=int, default=None, help="fix the global batch (for equality runs)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "mixed-bfloat16"])
    parser.add_argument("--dropout", type=float, default=None, help="override the preset's dropout (0: equality runs)")
    parser.add_argument("--params", default=None, help="save the final parameters here (rank 0, .npz)")
    parser.add_argument("--json", default=None, help="write the results here (rank 0)")
    args = parser.parse_args()

    group = world()
    size, rank = group.size(), group.rank()
    model_config, config, train_ids, val_ids, tokenizer = setup(
        args.preset, args.per_rank_batch, args.global_batch, args.warmup + args.steps, size)
    config = dataclasses.replace(config, dtype=args.dtype)
    if args.dropout is not None:
        model_config = dataclasses.replace(model_config, dropout=args.dropout)
    trainer = Trainer.create(model_config, config, train_ids, val_ids, tokenizer)
    n_params = trainer.model.num_parameters()
    for _ in range(args.warmup):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(args.steps):
        trainer.train_step()
    seconds = (time.perf_counter() - start) / args.steps
    grad_dtype = trainer.config.parameter_dtype  # gradients come in the parameters' dtype
    reduce_s = time_all_reduce(n_params, group, grad_dtype) if size > 1 else 0.0
    result = {
        "preset": args.preset, "ranks": size, "device": str(mx.default_device()), "mlx": mx.__version__,
        "dtype": args.dtype, "parameters": n_params, "global_batch": config.batch_size, "context": config.context,
        "tokens_per_step": config.batch_size * config.context, "step_ms": round(seconds * 1e3, 2),
        "tokens_per_s": round(config.batch_size * config.context / seconds),
        "all_reduce_bytes": grad_dtype.size * n_params if size > 1 else 0, "all_reduce_ms": round(reduce_s * 1e3, 3),
        "all_reduce_share": round(reduce_s / seconds, 4) if size > 1 else 0.0,
        "final_loss": trainer.metrics["loss"][-1],
    }
    if rank == 0:
        print(json.dumps(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
        if args.params:
            np.savez(args.params, **{k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(trainer.model.parameters())})


if __name__ == "__main__":
    main()
