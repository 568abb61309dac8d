# %% [markdown]
# # 10. Making it fast: a second layer, proven equal to the first
#
# ```
# the core (Chapters 1–9)            the fast layer (this chapter, mlxllm/fast)
# generate: model(token, cache)  ══▶  DecodeEngine: compiled stages, joined weights,
#   one call per token                  one rotation kernel, one key/value buffer
#          ▲                                        │
#          └────── same tokens, asserted ───────────┘  (reads weights, changes nothing)
# ```
#
# Everything so far is written to be read: `generate` is the loop of
# [Chapter 5](05_next_token_prediction.ipynb), `TransformerBlock` and
# `MultiHeadAttention` read top-down as [Chapters 3](03_attention.ipynb) and
# [4](04_transformer_block.ipynb) built them. That code is also what runs when you call
# `mlxllm.generate`. On a GPU, a small model decoded that way leaves most of the
# hardware idle, and this chapter finds out why and what to do about it, with one rule:
# **speed lives in a separate layer**, built *from* the core, tested equal to it, and it
# never changes the model it is given. Where it was not written for a model, it hands
# the work back to the core. The `mlxllm` command (`generate`, `chat`) uses the fast
# layer; Python's `mlxllm.generate` stays the core. mlx-lm, litgpt and *LLMs from
# Scratch* draw the same line: a readable default, and an optimised path beside it.
#
# Numbers that depend on the machine come from two places. Some are measured here, and
# their cells are not compared when the book is tested. The others come from a dated
# results file written by `benchmarks/bench_fast.py`, whose first line below names the
# machine it was recorded on. The file committed now was recorded on the book's 2-core
# Linux CPU: no GPU could be lent when it was made. The GPU runs of this engine (an H100
# and an H200, MLX's CUDA backend standing in for a Mac's Metal) are in
# `benchmarks/README.md`; on a GPU the gap between the two layers is far larger than on
# a CPU, for the reason §10.1 measures.

# %%
import dataclasses
import inspect
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxllm import ModelConfig, TransformerLM, generate, make_sampler
from mlxllm.attention import KVCache
from mlxllm.embedding import RoPE
from mlxllm.fast import DecodeEngine, unsupported
from mlxllm.fast.layers import JoinedCache, JoinedLinear, Rotation
from mlxllm.fast.measure import decode_steps, host_microseconds, operations
from mlxllm.tolerances import assert_close, bound

results = json.loads(sorted(Path("results").glob("fast_*.json"))[-1].read_text())
print(f"results file: {results['date']}, {results['device']}, "
      f"MLX {results['mlx']}, "
      f"commit {results['commit']}")

# %% [markdown]
# ## 10.1 Where a decode token's time goes
#
# Decoding one token reads every weight once and does about two floating-point
# operations per weight. For the 56M-parameter LLaMA-style model of
# `benchmarks/bench_generate.py` in float32 that is 224 MB and 0.1 GFLOP per token. An
# H100 moves over 2 TB/s and computes tens of TFLOP/s, so memory alone would allow
# thousands of tokens per second, and arithmetic ten times more. The results file has
# the measured bandwidth, the bound it gives, and what decoding reached:

# %%
def bound_table(results: dict) -> None:
    """Tokens/s: the bandwidth bound, the core and the engine, one step at a time."""
    print(f"bandwidth {results['bandwidth_GB_per_s']} GB/s on {results['device']}")
    print(f"{'model':24}{'weights':>9}{'bound':>9}{'core':>8}{'fast':>8}")
    for name, a in results["anatomy"].items():
        core = a["core"]["tokens_per_s_one_step_at_a_time"]
        fast = a["fast"]["tokens_per_s_one_step_at_a_time"]
        bound_ = a["bandwidth_bound_tokens_per_s"]
        print(f"{name:24}{a['weight_bytes'] / 2**20:7.0f}MB{bound_:9,.0f}{core:8,.0f}"
              f"{fast:8,.0f}   core {core / bound_:.0%} of the bound")


bound_table(results)

# %% [markdown]
# On this CPU the bound is far away because arithmetic is the limit: its reference BLAS
# multiplies at about 5 GFLOP/s, some 50 tokens/s for 0.1 GFLOP per token, and both
# layers reach about the same. A GPU is different. The H100 runs in
# `benchmarks/README.md` (2026-12-05) measured a 2,286 GB/s copy, a bound of 10,208
# tokens/s for the 56M model, and decoding at 5–7% of it, mlx-lm's loop included; the
# GPU had plenty of both bandwidth and arithmetic to spare. There the **host** is the
# limit. Each step, Python walks the model and builds a graph of
# operations, and the runtime launches about one GPU kernel per operation; a kernel
# that multiplies a (1, 576) row by a small matrix finishes in a few microseconds,
# about what it costs to launch it. So the time per token is roughly *operations × a
# few µs*. `mlxllm.fast.measure.operations` counts the operations one step's lazy graph
# still has to run (`mx.export_to_dot` lists them):

# %%
print(inspect.getsource(operations))

# %% [markdown]
# The results file counted, for one greedy step of each model:

# %%
def operation_table(results: dict) -> None:
    print(f"{'model':24}{'core ops':>9}{'fast ops':>9}{'core µs':>9}{'fast µs':>9}"
          "   (µs: host time to build one step)")
    for name, a in results["anatomy"].items():
        print(f"{name:24}{a['core']['operations']:9}{a['fast']['operations']:9}"
              f"{a['core']['host_us_per_step']:9.0f}"
              f"{a['fast']['host_us_per_step']:9.0f}")


operation_table(results)
for a in results["anatomy"].values():
    assert a["fast"]["operations"] < a["core"]["operations"]

# %% [markdown]
# Here is the same count on this machine, for a small model built here. On a CPU
# MLX writes some fused operations (`mx.fast.rms_norm`, `rope`, attention) out as
# several simpler ones, so the counts are larger than a GPU's and are not compared
# when the book is tested; what holds everywhere is asserted.

# %%
config = ModelConfig.llama(vocab_size=512, context_length=256, dims=128, n_layers=4,
                           n_heads=4, n_kv_heads=2, ffn_dims=352)
mx.random.seed(0)
model = TransformerLM(config)
model.update(nn.utils.tree_map(lambda p: mx.random.normal(p.shape) * p.shape[-1] ** -0.5
                               if p.ndim == 2 else p, model.parameters()))
model.eval()
mx.eval(model.parameters())
prompt = [1, 17, 42, 99, 7, 300, 12, 5]
steps = decode_steps(model, prompt)
counts = {}
for name, step in steps.items():
    out = step()
    counts[name] = operations(out)
    mx.eval(out)

# %% tags=["nbval-ignore-output"]
for name, ops in counts.items():
    print(f"{name}: {sum(ops.values())} operations, the most common:",
          ", ".join(f"{k} {v}" for k, v in ops.most_common(5)))
    print(f"      host µs to build one step: {host_microseconds(steps[name]):.0f}")

# %%
assert sum(counts["fast"].values()) < 0.6 * sum(counts["core"].values())

# %% [markdown]
# ## 10.2 The engine, one idea at a time
#
# `mlxllm.fast.DecodeEngine` gives each token fewer operations. Each of its pieces
# stands in for a piece of the core and is checked against it here (exactly on the
# CPU, within the tolerance policy of [Chapter 2](02_embedding.ipynb) on a GPU).
#
# **Joined projections.** q, k and v are three matrix products of the same input, and
# so are SwiGLU's gate and up. Stacking the weights by rows makes each group one
# product, whose output is cut back into the three. The engine keeps its own stacked
# copy (the model's layers are left alone; the price is that memory twice):

# %%
attention = model.blocks[0].attention
qkv = [attention.q_proj, attention.k_proj, attention.v_proj]
joined = JoinedLinear(qkv)
x = mx.random.normal((1, config.dims), key=mx.random.key(1))  # one token, (1, C)
for piece, layer in zip(joined(x), qkv):
    assert_close(piece, layer(x), what="joined vs separate projection")
print("q, k, v:", [tuple(p.shape) for p in joined(x)], "from one product with",
      tuple(joined.layer.weight.shape), "weights; the model's q_proj is untouched:",
      attention.q_proj.weight is qkv[0].weight)

# %% [markdown]
# **One rotation kernel.** RoPE (Chapter 2) turns q and k; the core calls
# `mx.fast.rope` twice and puts k beside v with a concatenation. The engine writes the
# rotation out as elementwise arithmetic over the whole q/k/v row of one token,
# `x·cos θ + sign·partner·sin θ`, with angle 0 for the v heads, so that `mx.compile`
# fuses it into one kernel and k and v leave it side by side. Its frequencies are
# rounded as `mx.fast.rope` rounds them on each device, so on the CPU it is equal bit
# for bit in float32; on a GPU the angle's float32 rounding grows with the position
# (the tests bound it):

# %%
rope = attention.rope
n_q, n_kv, D = attention.n_heads, attention.n_kv_heads, attention.head_dim
rotation = mx.compile(Rotation(rope, n_q + n_kv, n_q + 2 * n_kv))
heads = mx.random.normal((1, n_q + 2 * n_kv, 1, D), key=mx.random.key(2))
at = mx.array(37, dtype=mx.int32)
mx.eval(heads)
q, k, v = mx.split(heads, [n_q, n_q + n_kv], axis=1)
# what the core computes: two rotations and a concatenation
core_way = mx.concatenate([rope(q, at), rope(k, at), v], axis=1)
turned = rotation(heads, at)
ops = {"core": operations(core_way), "rotation": operations(turned)}
assert_close(turned, core_way, rtol=bound() + 37 * 2**-20, what="rotation vs RoPE")
assert mx.array_equal(turned[:, n_q + n_kv :], heads[:, n_q + n_kv :])  # v unturned
assert sum(ops["rotation"].values()) < sum(ops["core"].values())
print("rotation: q and k turned as RoPE turns them, v left as it was")

# %% tags=["nbval-ignore-output"]
for name, counted in ops.items():
    print(f"{name}: {sum(counted.values())} operations:", dict(counted))

# %% [markdown]
# **One buffer for keys and values.** The core's `KVCache` writes keys and values with
# two slice updates per block; the engine keeps a layer's keys in the first heads of one
# buffer and its values after them, filled once from the prefill's cache, with room for
# the whole answer. One write per block, and attention reads two views of it:

# %%
cache = KVCache()
k, v = mx.random.normal((2, 1, n_kv, 5, D), key=mx.random.key(3))
cache.update_and_fetch(k, v)
buffer = JoinedCache(cache, capacity=8)
k1, v1 = mx.random.normal((2, 1, n_kv, 1, D), key=mx.random.key(4))
keys, values = buffer.update_and_fetch(mx.concatenate([k1, v1], axis=1))
expected_keys, expected_values = cache.update_and_fetch(k1, v1)
assert mx.array_equal(keys, expected_keys) and mx.array_equal(values, expected_values)
print("one buffer", tuple(buffer.kv.shape), "reads as the KVCache's keys",
      tuple(keys.shape),
      "and values", tuple(values.shape))

# %% [markdown]
# **Compiled stages.** Attention over the cache changes shape with every token (one more
# key), so it stays outside `mx.compile`, on MLX's fused one-query kernel, and so does
# the cache write. Everything between two attentions is one compiled *stage*, traced
# once for its single shape: block i's output projection, residuals and feed-forward,
# then block i + 1's norm, joined projections and rotation (the position is an array
# input, so one trace serves every position). Compiling fuses the elementwise work (norm
# scales, residual adds, SwiGLU's gate) into a few kernels, and the block's Python work
# becomes one call. The stage is the core block's arithmetic in the same order, on the
# joined weights; here it is, `leave` then `enter`:

# %%
from mlxllm.fast.decode import BlockDecode

print(inspect.getsource(BlockDecode.leave))

# %% [markdown]
# ## 10.3 The engine, whole: the core's tokens, the model untouched
#
# `DecodeEngine(model).generate(...)` is used like `generate(model, ...)`, with a
# sampler built once. Greedy tokens are the core's; seeded samples too (it splits the
# same keys):

# %%
engine = DecodeEngine(model)
greedy = make_sampler(temperature=0)
snapshot = [(name, id(array)) for name, array in tree_flatten(model.parameters())]
fast = list(engine.generate(prompt, 40, sampler=greedy))
core = list(generate(model, prompt, 40, temperature=0))
# the logits each step saw, from one full pass
logits = model(mx.array([prompt + core[:-1]]))[0, len(prompt) - 1 :]
top2 = mx.sort(logits, axis=-1)[:, -2:]
margin = (top2[:, 1] - top2[:, 0]).min().item()
assert margin > 10 * bound() * mx.abs(logits).max().item()  # no near-tie
assert fast == core
sampler = make_sampler(temperature=0.8, top_p=0.9)
drawn = list(engine.generate(prompt, 40, sampler=sampler, seed=3))
# on a GPU a draw may part at a near-tie of other kernels' logits (tests/test_fast.py
# checks the GPU's draws with a sampler whose margins can be measured)
if mx.default_device() == mx.cpu:
    assert drawn == list(generate(model, prompt, 40, sampler=sampler, seed=3))
after = [(name, id(array)) for name, array in tree_flatten(model.parameters())]
assert after == snapshot
print("engine == core: 40 greedy tokens; the model holds the same arrays as before:",
      fast[:10], "...")

# %% [markdown]
# And where the engine was not written for a model, it says why in one line and decodes
# through the core. A model in training mode with dropout is one case (the stages leave
# dropout out); a block feature added to the core later is another: a `ModelConfig`
# field that the engine does not know, set away from its default, sends the model to the
# core. So adding a feature touches the core and its test, and the engine either learns
# it (with a test that it decodes equal) or steps aside; it never decodes differently.

# %%
@dataclasses.dataclass
class WindowedConfig(ModelConfig):  # as if the core had grown sliding-window attention
    sliding_window: int | None = None


windowed = TransformerLM(WindowedConfig(**{**config.to_dict(), "sliding_window": 64}))
windowed.update(model.parameters())
windowed.eval()
print("fallback:", unsupported(windowed))
other = DecodeEngine(windowed)
assert list(other.generate(prompt, 12, sampler=greedy)) == \
    list(generate(windowed, prompt, 12, temperature=0))
assert other.fallback == unsupported(windowed)

# %% [markdown]
# ## 10.4 Measured against mlx-lm
#
# `benchmarks/bench_generate.py` and `bench_pretrained.py` time the engine ("fast"), the
# core and mlx-lm's `generate_step` on the same weights in one process, in interleaved
# rounds, and report ratios (> 1: ours faster), best-of and the median of paired rounds.
# The last line of each run, from the results file:

# %%
def ratio_lines(results: dict, prefix: str = "RATIO") -> list[str]:
    lines = []
    for run in results.get("benchmarks", []):
        lines += [line for line in run["output"] if line.startswith(prefix)]
    return lines


for line in ratio_lines(results):
    print(line.replace("RATIO mlxllm/mlx-lm on ", "").replace("Device(gpu, 0) ", ""))

# %% [markdown]
# ## 10.5 The training step: compile, a fused loss, bfloat16
#
# Training has no decode loop to join, but the same idea applies to its step:
# [Chapter 6](06_training.ipynb)'s `make_train_step` is one `mx.compile` over the
# forward pass, the backward pass, clipping and the AdamW update, with the model,
# optimizer and random state as its implicit inputs and outputs. The compiled step
# computes what the plain one computes:

# %%
import mlx.optimizers as optim

from mlxllm.config import TrainConfig
from mlxllm.optimizer import make_optimizer
from mlxllm.prediction import cross_entropy
from mlxllm.training import make_train_step

train_config = TrainConfig(steps=10, batch_size=4, warmup=2)
inputs = mx.random.randint(0, 512, (1, 4, 32), key=mx.random.key(5))
targets = mx.random.randint(0, 512, (1, 4, 32), key=mx.random.key(6))
losses = {}
for compiled in (True, False):
    mx.random.seed(0)
    twin = TransformerLM(config)
    twin.update(model.parameters())
    optimizer = make_optimizer(twin, train_config)
    step = make_train_step(twin, optimizer, train_config, compile=compiled)
    losses[compiled] = [step(inputs, targets)[0].item() for _ in range(3)]
assert_close(mx.array(losses[True]), mx.array(losses[False]),
             what="compiled vs plain step")
print("three steps, compiled:", [round(x, 4) for x in losses[True]])

# %% [markdown]
# The loss is `mx.fast.cross_entropy`, one fused kernel on a GPU instead of a
# log-softmax and a gather; it equals the loss written out (Chapter 5):

# %%
logits = model(inputs[0])
by_hand = (mx.logsumexp(logits, axis=-1)
           - mx.take_along_axis(logits, targets[0][..., None], axis=-1)[..., 0]).mean()
assert_close(cross_entropy(logits, targets[0]), by_hand,
             what="fused vs written-out loss")
print(f"cross-entropy {by_hand.item():.3f} nats, fused and by hand")

# %% [markdown]
# And `dtype="mixed-bfloat16"` runs the forward and backward passes in bfloat16 over
# float32 master weights (half the bytes per activation, the GPU's bfloat16 units),
# within bfloat16's tolerance of the float32 loss. `benchmarks/bench_train.py` times the
# step against a minimal MLX step and the same GPT in PyTorch, on the GPU:

# %%
mixed_config = dataclasses.replace(train_config, dtype="mixed-bfloat16")
mx.random.seed(0)
twin = TransformerLM(config)
twin.update(model.parameters())
step = make_train_step(twin, make_optimizer(twin, mixed_config), mixed_config)
mixed = [step(inputs, targets)[0].item() for _ in range(3)]
assert_close(mx.array(mixed), mx.array(losses[True]), dtype=mx.bfloat16,
             what="mixed-bfloat16 vs float32 losses")
print("three steps, mixed-bfloat16:", [round(x, 2) for x in mixed])

# %% [markdown]
# From the results file, when it holds a training run:

# %%
for run in results.get("benchmarks", []):
    if run["command"].startswith("bench_train"):
        print("\n".join(run["output"][-7:]))

# %% [markdown]
# ## Exercises
#
# **Exercise 10.1 (the bound).** SmolLM2-135M in bfloat16 reads 2 bytes per weight.
# What is its decode bound on a GPU that moves 3.35 TB/s (an H100's datasheet figure),
# and how many microseconds per token is that?

# %% tags=["hide-input"]
n_weights = results["anatomy"]["SmolLM2-135M bfloat16"]["parameters"]
bound_per_s = 3.35e12 / (2 * n_weights)
print(f"{n_weights / 1e6:.1f}M weights × 2 bytes: ≤ {bound_per_s:,.0f} tokens/s, "
      f"≥ {1e6 / bound_per_s:.0f} µs per token")
assert 12_000 < bound_per_s < 13_000

# %% [markdown]
# **Exercise 10.2 (one more join).** Join SwiGLU's gate and up of the first block by
# hand, with `mx.concatenate` and one matrix product, and check the result against the
# two layers and against `JoinedLinear`.

# %% tags=["hide-input"]
ffn = model.blocks[0].ffn
stacked = mx.concatenate([ffn.gate_proj.weight, ffn.up_proj.weight])  # (2·hidden, C)
gate, up = mx.split(x @ stacked.T, 2, axis=-1)
assert_close(gate, ffn.gate_proj(x), what="gate") and None
assert_close(up, ffn.up_proj(x), what="up")
for mine, package in zip((gate, up), JoinedLinear([ffn.gate_proj, ffn.up_proj])(x)):
    assert_close(mine, package, what="by hand vs JoinedLinear")
print("gate and up from one product:", gate.shape, up.shape)

# %% [markdown]
# **Exercise 10.3 (who falls back).** Put the model in training mode: with
# `dropout=0` the engine still runs it; with dropout it falls back. Check both.

# %% tags=["hide-input"]
model.train()
assert unsupported(model) is None  # no dropout: training mode changes no decoding
dropping = TransformerLM(dataclasses.replace(config, dropout=0.1))
dropping.train()
print("with dropout in training mode:", unsupported(dropping))
assert "dropout" in unsupported(dropping)
model.eval()

# %% [markdown]
# ## What we built
#
# - **Two layers.** The core (`mlxllm.generate`, the blocks of Chapters 3–4) is what
#   Python runs and what the book teaches; **`mlxllm.fast`** is a second implementation
#   of one decode step, built from the core's modules and weights.
# - **Where the time goes**: a small model's decode step on a GPU is bound by the host
#   (operations built and launched), far below the memory-bandwidth bound;
#   `mlxllm.fast.measure` counts a step's operations and the host time to build it.
# - **The engine's pieces**, each checked against the core piece it replaces:
#   `JoinedLinear` (q/k/v and gate/up as one product), `Rotation` (RoPE as one kernel),
#   `JoinedCache` (one key/value buffer), compiled stages between attentions.
# - **Its guarantees**: the core's tokens (exact on the CPU, equal but for measured
#   near-ties on a GPU), the model's arrays and attributes unchanged, and a one-line
#   fallback to the core for what it does not know.
# - **The training step**: one `mx.compile`, a fused loss, bfloat16 compute over float32
#   weights; each equal to the plain computation within the tolerance policy.
