"""Training throughput, side by side in one run: tokens/s of one optimizer step (forward, backward, AdamW).

    python benchmarks/bench_train.py                    # nanogpt-cpu shapes (4 layers × 128, batch 12 × 64)
    python benchmarks/bench_train.py --preset tiny --rounds 5
    python benchmarks/bench_train.py --preset shakespeare-char --bf16     # on a GPU: nanoGPT's GPU shapes

Peers, all on the same shapes with AdamW, clipping at 1.0 and a fresh random batch per step:
  mlxllm      Trainer.steps(n), the loop `mlxllm train` runs: compiled step + batches + schedule + diagnostics
              + NaN check, step k + 1 queued before step k's loss is read
  uncompiled  the same step function without mx.compile
  minimal     the idiom written directly with mlx.nn: value_and_grad → clip → AdamW → mx.compile → mx.eval
  mixed-bf16  mlxllm's step with dtype="mixed-bfloat16" (bf16 compute, float32 weights and AdamW state), with --bf16
  pytorch     the same GPT in PyTorch (torch.optim.AdamW), if torch is installed (it is not a dependency), on CUDA
              when there is one, with TF32 on (MLX's CUDA backend runs float32 products in TF32 by default)
  pytorch-bf16  the same with bfloat16 autocast (PyTorch's mixed precision), with --bf16
Variants run in interleaved rounds (so load changes hit all of them alike). On a shared machine wall time
is mostly other people's load, so two numbers are reported per variant: the fastest round's wall time
(tokens/s) and the median round's CPU time of this process (all its threads), which load barely moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import platform
import statistics
import time
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

from mlxllm import ModelConfig, TransformerLM
from mlxllm.data import get_batch
from mlxllm.presets import PRESETS
from mlxllm.training import Trainer, make_train_step


def machine() -> str:
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{name}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def repeat(step):
    """``run(n)``: ``n`` calls of a one-step function; returns the last loss."""
    return lambda n: [step() for _ in range(n)][-1]


def mlxllm_runner(config: ModelConfig, train_config, ids):
    trainer = Trainer.create(config, train_config, ids, ids)
    return lambda n: list(trainer.steps(n))[-1]


def uncompiled_runner(config: ModelConfig, train_config, ids):
    trainer = Trainer.create(config, train_config, ids, ids)
    step = make_train_step(trainer.model, trainer.optimizer, train_config, compile=False)

    def run():
        inputs, targets = trainer.next_batch()
        loss, *rest = step(inputs, targets)
        mx.eval(loss, rest, trainer.model.state, trainer.optimizer.state)
        return loss.item()

    return repeat(run)


def minimal_runner(config: ModelConfig, train_config, ids):
    """What a user would write from the MLX examples: no trainer, no diagnostics, one AdamW group."""
    mx.random.seed(0)
    model = TransformerLM(config)
    c = train_config
    warmup = optim.linear_schedule(0.0, c.lr, c.warmup)
    cosine = optim.cosine_decay(c.lr, c.steps - c.warmup, c.min_lr)
    optimizer = optim.AdamW(optim.join_schedules([warmup, cosine], [c.warmup]), [c.beta1, c.beta2],
                            weight_decay=c.weight_decay, bias_correction=True)
    loss_and_grad = nn.value_and_grad(model, lambda m, x, y: nn.losses.cross_entropy(m(x), y, reduction="mean"))
    state = [model.state, optimizer.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(x, y):
        loss, grads = loss_and_grad(model, x, y)
        grads, _ = optim.clip_grad_norm(grads, c.grad_clip)
        optimizer.update(model, grads)
        return loss

    key = mx.random.key(c.seed)

    def run():
        nonlocal key
        key, batch_key = mx.random.split(key)
        x, y = get_batch(ids, c.batch_size, c.context, batch_key)
        loss = step(x, y)
        mx.eval(loss, state)
        return loss.item()

    return repeat(run)


def pytorch_runner(config: ModelConfig, train_config, ids, autocast: bool = False):
    """The same GPT in PyTorch; ``autocast``: bfloat16 autocast over float32 weights (PyTorch's mixed
    precision, the peer of mlxllm's mixed-bfloat16)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    c, t = config, train_config
    device = torch_device()

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = torch.nn.LayerNorm(c.dims, bias=False)
            self.qkv = torch.nn.Linear(c.dims, 3 * c.dims, bias=False)
            self.proj = torch.nn.Linear(c.dims, c.dims, bias=False)
            self.ln2 = torch.nn.LayerNorm(c.dims, bias=False)
            self.up = torch.nn.Linear(c.dims, 4 * c.dims, bias=False)
            self.down = torch.nn.Linear(4 * c.dims, c.dims, bias=False)

        def forward(self, x):
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (z.view(B, T, c.n_heads, C // c.n_heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.down(F.gelu(self.up(self.ln2(x)), approximate="tanh"))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(c.vocab_size, c.dims)
            self.wpe = torch.nn.Embedding(c.context_length, c.dims)
            self.blocks = torch.nn.ModuleList(Block() for _ in range(c.n_layers))
            self.ln = torch.nn.LayerNorm(c.dims, bias=False)

        def forward(self, idx):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
            for block in self.blocks:
                x = block(x)
            return self.ln(x) @ self.wte.weight.T  # tied head

    model = GPT().to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.wte.weight and p is not model.wpe.weight]
    rest = [p for p in model.parameters() if not any(p is d for d in decay)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": rest, "weight_decay": 0.0}],
                                  lr=t.lr, betas=(t.beta1, t.beta2))
    data = torch.from_numpy(np.asarray(ids, dtype=np.int64)).to(device)
    generator = torch.Generator().manual_seed(t.seed)

    def run():
        starts = torch.randint(len(data) - t.context, (t.batch_size,), generator=generator)
        windows = data[starts.to(device)[:, None] + torch.arange(t.context + 1, device=device)]
        mixed = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with mixed:
            logits = model(windows[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, c.vocab_size).float(), windows[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        optimizer.step()
        return loss.item()

    return repeat(run)


def torch_device():
    """CUDA with TF32 matrix products when available (as MLX's CUDA backend does), else the CPU."""
    import torch

    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device("cuda")
    return torch.device("cpu")


def mixed_runner(config: ModelConfig, train_config, ids):
    return mlxllm_runner(config, dataclasses.replace(train_config, dtype="mixed-bfloat16"), ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="nanogpt-cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per variant")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--bf16", action="store_true", help="also time mlxllm's mixed-bfloat16 step")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    config = preset.model_config(vocab_size=65)
    train_config = dataclasses.replace(preset.train, steps=10_000, context=config.context_length)
    ids = mx.array(np.random.default_rng(0).integers(0, 65, 200_000, dtype=np.int32))
    runners = {"mlxllm": mlxllm_runner, "uncompiled": uncompiled_runner, "minimal": minimal_runner}
    if args.bf16:
        runners["mixed-bf16"] = mixed_runner
    try:
        import torch

        runners["pytorch"] = pytorch_runner
        if args.bf16:
            runners["pytorch-bf16"] = partial(pytorch_runner, autocast=True)
        torch_note = f"torch {torch.__version__} on {torch_device()}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_note = "torch not installed: PyTorch peer skipped (pip install torch to include it)"

    steps = {name: make(config, train_config, np.array(ids) if name.startswith("pytorch") else ids) for name, make in runners.items()}
    for name, run in steps.items():  # warm up: compile, allocate, first-touch memory
        assert math.isfinite(run(2)), name
    wall = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, run in steps.items():
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            run(args.steps)
            wall[name].append((time.perf_counter() - start_wall) / args.steps)
            cpu[name].append((time.process_time() - start_cpu) / args.steps)

    tokens = train_config.batch_size * train_config.context
    rate = {name: tokens / min(s) for name, s in wall.items()}  # fastest round: least disturbed by load
    cpu_ms = {name: 1000 * statistics.median(s) for name, s in cpu.items()}
    print(f"machine: {machine()}; mlx {mx.__version__} ({mx.default_device()}); {torch_note}")
    print(f"shapes: preset {args.preset}: {config.n_layers} layers × {config.dims} dims, {config.n_heads} heads, "
          f"vocab 65, batch {train_config.batch_size} × context {train_config.context} = {tokens} tokens/step; "
          f"{args.rounds} interleaved rounds × {args.steps} steps")
    print(f"{'variant':<12}{'wall ms/step':>14}{'tokens/s':>11}{'vs mlxllm':>11}{'CPU ms/step':>14}{'vs mlxllm':>11}")
    for name in steps:
        print(f"{name:<12}{1000 * tokens / rate[name]:>14.1f}{rate[name]:>11,.0f}{rate[name] / rate['mlxllm']:>10.2f}×"
              f"{cpu_ms[name]:>14.1f}{cpu_ms['mlxllm'] / cpu_ms[name]:>10.2f}×")
    print(f"mlxllm vs minimal MLX step (target ≥ 1.0): {rate['mlxllm'] / rate['minimal']:.3f} by wall time, "
          f"{cpu_ms['minimal'] / cpu_ms['mlxllm']:.3f} by CPU time; compiled vs uncompiled: "
          f"{rate['mlxllm'] / rate['uncompiled']:.2f}× wall, {cpu_ms['uncompiled'] / cpu_ms['mlxllm']:.2f}× CPU"
          + (f"; mlxllm vs pytorch: {rate['mlxllm'] / rate['pytorch']:.3f} wall, "
             f"{cpu_ms['pytorch'] / cpu_ms['mlxllm']:.3f} CPU" if "pytorch" in rate else "")
          + (f"; mixed-bf16 vs pytorch TF32 {rate['mixed-bf16'] / rate['pytorch']:.3f}, vs pytorch bf16 "
             f"autocast {rate['mixed-bf16'] / rate['pytorch-bf16']:.3f} (wall)" if "pytorch-bf16" in rate else ""))


if __name__ == "__main__":
    main()
