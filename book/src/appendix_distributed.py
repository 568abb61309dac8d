# %% [markdown]
# # Appendix: data-parallel training, the same step on more data
#
# ```
# rank 0: half 0 of the batch ─▶ forward, backward ─▶ gradients ─┐
#                                                                ├─ mean ─▶ one update
# rank 1: half 1 of the batch ─▶ forward, backward ─▶ gradients ─┘
# ```
#
# One Mac is enough to train our presets. When a reader outgrows it, the first tool is
# **data parallelism**: run the *same* training step on several machines at once, each
# on its own share of the batch, and combine their gradients before the optimizer moves.
# MLX ships everything needed for that: `mx.distributed` (collective operations over a
# *ring* of TCP connections, over MPI, or NCCL on CUDA) and the `mlx.launch` launcher
# that starts one process per machine. `mlxllm train` runs unchanged under it.
#
# This page derives why the averaged step is the same step, draws the all-reduce that
# averages, counts the bytes it moves for each preset, estimates when that pays, shows
# how to run it on one machine, on two GPUs and on two Macs, compares a 1-process and a
# 2-process run on the machine that builds this page, and reports a recorded run on two
# NVIDIA H200 GPUs.
#
# Vocabulary: each process is a **rank** (0, 1, ..., `N − 1`); together they form a
# **group** of size `N`. Shapes: `B` global batch, `T` tokens per row, `P` parameters.

# %%
import inspect
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

import mlxllm.distributed as distributed
from mlxllm import ModelConfig, TransformerLM, cross_entropy
from mlxllm.data import get_batch
from mlxllm.presets import PRESETS
from mlxllm.tolerances import assert_close, relative_difference
from mlxllm.training import make_train_step

mx.random.seed(0)

# %% [markdown]
# ## A.1 The same step on more data
#
# The training loss of a step is the mean over the `B` rows of the global batch. Split
# the rows into `N` equal shards of `B / N` rows, one per rank, and call `L_r` the mean
# loss over rank `r`'s rows. Then
#
# $$L = \frac{1}{B}\sum_{b=1}^{B} \ell_b = \frac{1}{N}\sum_{r=0}^{N-1} L_r
# \qquad\Longrightarrow\qquad \nabla L = \frac{1}{N}\sum_{r=0}^{N-1} \nabla L_r ,$$
#
# because the gradient of a sum is the sum of the gradients. So each rank computes the
# gradient of *its* rows, one collective operation (an **all-reduce**: sum over the
# ranks, result on every rank) followed by a division by `N` gives every rank the
# gradient of the whole batch, and every rank applies the identical AdamW update. The
# copies of the model never drift apart, and the run is the single-process run on the
# same global batches, computed `N` times faster (minus the time the all-reduce takes).
#
# ![Data-parallel training: each rank has the whole model and a shard of the batch; one
# all-reduce averages the gradients; every rank makes the same
# update](figures/data_parallel.svg)
#
# In the diagram a seeded global batch of 8 rows is cut into 4 shards of 2: each rank
# runs the forward and backward pass of its rows on its own whole copy of θ, the
# all-reduce turns the four local gradients g₀ … g₃ into their mean g on every rank, and
# the four identical AdamW updates keep the copies equal.
#
# We check the identity on the tiny preset, in this one process, by splitting a batch of
# 8 rows by hand. The two sides sum the rows in a different order, so they agree to
# float32 rounding, not bit for bit: `assert_close` applies the book's tolerance policy
# (`mlxllm.tolerances`).

# %%
preset = PRESETS["tiny"]
model = TransformerLM(preset.model_config(vocab_size=65))  # context 32
ids = mx.random.randint(0, 65, (5000,))  # stand-in tokens: the identity holds for any
inputs, targets = get_batch(ids, 8, 32, mx.random.key(1))  # (B, T) = (8, 32)
loss_and_grad = nn.value_and_grad(model, lambda m, x, y: cross_entropy(m(x), y))

_, whole = loss_and_grad(model, inputs, targets)  # the gradient of the global batch
halves = [loss_and_grad(model, inputs[rows], targets[rows])[1]
          for rows in (slice(0, 4), slice(4, 8))]
averaged = tree_map(lambda a, b: (a + b) / 2, *halves)  # the all-reduce's result, N = 2

flat_whole, flat_avg = dict(tree_flatten(whole)), dict(tree_flatten(averaged))
for name in flat_whole:
    assert_close(flat_avg[name], flat_whole[name], what=name)
print(f"{len(flat_whole)} gradient arrays: the mean of the two half-batch gradients "
      "== the full-batch gradient (to float32 rounding)")

# %% [markdown]
# In the package, `mlxllm/distributed.py` holds the few helpers; the group comes from
# `mx.distributed.init()`, which has size 1 when the program is started plainly (then
# every helper does nothing, and training is exactly what [Chapter 6](06_training.ipynb)
# built). Each rank takes a disjoint slice of the rows of the same seeded global batch:

# %%
print(inspect.getsource(distributed.shard_rows))
print(inspect.getsource(distributed.all_mean))

# %% [markdown]
# and the compiled training step averages loss and gradients right after computing them,
# *before* the gradient norm and clipping, so those see the global gradient too.
# `nn.average_gradients` packs the gradient arrays into a few large buffers and
# all-reduces each (all-reduce works inside `mx.compile` in MLX 0.32, so the averaging
# is part of the compiled graph):

# %%
source = inspect.getsource(make_train_step).splitlines()
print("\n".join(line for line in source
                if "average_gradients" in line or "data parallel" in line))

# %% [markdown]
# The rest of the trainer's changes are bookkeeping: only rank 0 shows the progress bar
# and writes checkpoints and metrics; evaluation splits its batches the same way and
# averages; dropout masks are drawn from the step's seed combined with the rank
# (different rows, different masks); the checkpoint records how many ranks wrote it, and
# resuming with another number says so (the global batches are the same, the rounding is
# not, so the continuation is close but not bit-identical).

# %% [markdown]
# ## A.2 The all-reduce, drawn
#
# The ring backend arranges the ranks in a circle; each sends only to its right
# neighbour. A ring all-reduce cuts every rank's buffer into `N` chunks and runs two
# phases of `N − 1` steps each:
#
# - **reduce-scatter**: at step `s`, rank `r` sends chunk `(r − s) mod N` to rank `r +
#   1`, which adds it to its own copy. After `N − 1` steps, rank `r` holds the complete
#   sum of chunk `(r + 1) mod N`.
# - **all-gather**: the completed chunks travel around the ring once more, overwriting
#   instead of adding.
#
# We simulate it with numpy for `N = 4` ranks and check that every rank ends with the
# sum:

# %%
def ring_all_reduce(buffers: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """buffers (N, N, K): rank r's N chunks of K numbers → every rank's result, and per
    step how many ranks' contributions each (rank, chunk) holds (for the picture)."""
    n = buffers.shape[0]
    data, count = buffers.copy(), np.ones((n, n), int)
    history = [count.copy()]
    for step in range(n - 1):  # reduce-scatter: receive a partial sum, add our own part
        sent = [(r, (r - step) % n) for r in range(n)]
        payload = [(data[r, c].copy(), count[r, c]) for r, c in sent]
        for (r, c), (values, contributions) in zip(sent, payload):
            data[(r + 1) % n, c] += values
            count[(r + 1) % n, c] += contributions
        history.append(count.copy())
    for step in range(n - 1):  # all-gather: pass the finished chunks on
        sent = [(r, (r + 1 - step) % n) for r in range(n)]
        payload = [(data[r, c].copy(), count[r, c]) for r, c in sent]
        for (r, c), (values, contributions) in zip(sent, payload):
            data[(r + 1) % n, c] = values
            count[(r + 1) % n, c] = contributions
        history.append(count.copy())
    return data, history


N = 4
buffers = np.random.default_rng(0).normal(size=(N, N, 3))  # 4 ranks × 4 chunks × 3
result, history = ring_all_reduce(buffers)
total = buffers.sum(axis=0, keepdims=True).repeat(N, axis=0)
assert np.allclose(result, total), "every rank must hold the sum"
print(f"{len(history) - 1} steps = 2 (N − 1); "
      f"every rank holds the sum of all {N} buffers")

# %%
fig = plt.figure(figsize=(8, 4.8))  # two rows: reduce-scatter above, all-gather below
ring = fig.add_axes([0.01, 0.03, 0.3, 0.4])
angles = np.pi / 2 - 2 * np.pi * np.arange(N) / N
xy = np.stack([np.cos(angles), np.sin(angles)], axis=1)
for r in range(N):
    ring.annotate("", xy=xy[(r + 1) % N] * 0.78, xytext=xy[r] * 0.78,
                  arrowprops=dict(arrowstyle="->", color="gray",
                                  connectionstyle="arc3,rad=-0.25"))
    ring.add_patch(plt.Circle(xy[r], 0.3, color="tab:blue"))
    ring.text(*xy[r], str(r), ha="center", va="center", color="white", fontsize=11)
ring.set_xlim(-1.45, 1.45), ring.set_ylim(-1.45, 1.45)
ring.set_aspect("equal"), ring.axis("off")
ring.set_title("ranks 0–3 in a ring: each sends right", fontsize=9)
for s, count in enumerate(history):
    column, row = (s, 0) if s < N else (s - N + 1, 1)  # all-gather under reduce-scatter
    ax = fig.add_axes([0.25 + column * 0.19, 0.5 - row * 0.45, 0.16, 0.32])
    ax.imshow(count, cmap="Blues", vmin=0, vmax=N + 1)
    for r in range(N):
        for c in range(N):
            done = count[r, c] == N  # this rank holds the complete sum of this chunk
            ax.text(c, r, count[r, c], ha="center", va="center", fontsize=9,
                    color="white" if done else "black")
    ax.set_xticks([]), ax.set_yticks([])
    phase = "start" if s == 0 else ("reduce-scatter" if s < N else "all-gather")
    ax.set_title(f"{phase}\nstep {s}" if s else phase, fontsize=9)
    if s == 0:
        ax.set_ylabel("rank", fontsize=9), ax.set_xlabel("chunk", fontsize=9)
fig.suptitle("ring all-reduce, N = 4: how many ranks' contributions each rank holds "
             "per chunk", fontsize=10)
plt.show()

# %% [markdown]
# Each rank sends `2 (N − 1)` chunks of `1 / N` of the buffer, so **each rank sends (and
# receives) 2 (N − 1) / N times the buffer**: once for 2 ranks, approaching twice for
# many. The traffic per rank barely grows with `N`, which is why the ring scales; the
# latency (`2 (N − 1)` message rounds) does grow.

# %% [markdown]
# ## A.3 Bytes per step for our presets
#
# The buffer is the gradient: one number per parameter, 4 bytes in float32 (2 in
# bfloat16). So every training step all-reduces the whole parameter count, however small
# the batch. For our presets (the character-level ones have a 65-symbol vocabulary) and
# GPT-2 small for scale:

# %%
def vocabulary(p) -> int:
    """65 characters for the char presets, the BPE size for "bpe:N" ones."""
    return 65 if p.tokenizer == "char" else int(p.tokenizer.split(":")[1])


sizes = {name: TransformerLM(p.model_config(vocabulary(p))).num_parameters()
         for name, p in PRESETS.items()}
gpt2_small = ModelConfig.gpt2(vocab_size=50257, context_length=1024, dims=768,
                              n_layers=12, n_heads=12)
sizes["GPT-2 small"] = TransformerLM(gpt2_small).num_parameters()
# global tokens per optimizer step (all ranks together); GPT-2's recipe: 512 × 1024
tokens = {name: p.tokens_per_step for name, p in PRESETS.items()}
tokens["GPT-2 small"] = 512 * 1024


def ring_bytes_per_rank(parameters: int, ranks: int, bytes_per_value: int = 4) -> float:
    """What each rank sends per step in a ring all-reduce of the gradient."""
    return 2 * (ranks - 1) / ranks * parameters * bytes_per_value


print(f"{'model':>17} {'parameters':>12} {'gradient':>9} "
      f"{'sent per rank, N=2':>19} {'N=8':>9}")
for name, p in sizes.items():
    print(f"{name:>17} {p:>12,} {p * 4 / 1e6:>7.2f}MB "
          f"{ring_bytes_per_rank(p, 2) / 1e6:>17.2f}MB "
          f"{ring_bytes_per_rank(p, 8) / 1e6:>7.2f}MB")
assert sizes["GPT-2 small"] == 124_439_808  # the parameter count Chapter 4 derives

# %% [markdown]
# ## A.4 When it pays
#
# A training step costs about `6 P` floating-point operations per token (2 for the
# forward pass, 4 for the backward; attention adds a little). With `N` ranks each
# processes `tokens / N` of the step's tokens, so
#
# $$t_\text{compute} \approx \frac{6\,P\,\text{tokens}/N}{F}, \qquad
#   t_\text{all-reduce} \approx \frac{2 \frac{N-1}{N}\, 4P}{W}$$
#
# for a machine doing `F` FLOP/s and a link moving `W` bytes/s. Their ratio does not
# depend on `P`:
#
# $$\frac{t_\text{compute}}{t_\text{all-reduce}}
#   = \frac{6\,\text{tokens}/N}{8\frac{N-1}{N}} \cdot \frac{W}{F}.$$
#
# Data parallelism pays when the all-reduce is short next to the compute it saves:
# **each rank needs enough tokens per step** to amortise one trip of the gradient over
# the link. (MLX also overlaps the two partly; we ignore that to stay conservative.)
# With assumed round numbers, a Mac GPU sustaining `F = 4 TFLOP/s` in float32 and three
# links:

# %%
F = 4e12  # FLOP/s a Mac GPU might sustain in float32 training (an assumption: measure)
# bytes/s, optimistic
links = {"1 GbE": 0.125e9, "10 GbE": 1.25e9, "Thunderbolt (IP)": 4e9}
print(f"{'model':>17} {'tokens/step':>11} {'compute, N=1':>13}   "
      "all-reduce time / compute saved by N = 2")
print(f"{'':>17} {'(global)':>11} {'':>13}   "
      + "  ".join(f"{link:>16}" for link in links))
for name, p in sizes.items():
    compute = 6 * p * tokens[name] / F
    saved = compute / 2
    ratios = [ring_bytes_per_rank(p, 2) / w / saved for w in links.values()]
    print(f"{name:>17} {tokens[name]:>11,} {compute * 1e3:>10.2f} ms   "
          + "  ".join(f"{r:>16.2f}" for r in ratios))
# global tokens per step at which t_compute saved == t_all-reduce, for N = 2
# (each of the two ranks processes half of them)
min_tokens = {link: 8 * F / (6 * w) for link, w in links.items()}
print("\nbreak-even tokens per step (global batch, N = 2; half of it per rank):",
      ", ".join(f"{link} {t:,.0f}" for link, t in min_tokens.items()))
assert min_tokens["1 GbE"] > min_tokens["10 GbE"] > min_tokens["Thunderbolt (IP)"]

# %% [markdown]
# A ratio below 1 means two Macs finish a step sooner than one. With these assumptions
# the small character-level presets are *communication-bound* on gigabit Ethernet: their
# step is so short that sending the gradient takes longer than the half-step saved.
# Bigger batches (more tokens per step) change that; faster links (10 GbE, Thunderbolt)
# move the break-even down by 10–30×. The formula is the useful part: measure `F`
# (tokens/s of a single-Mac run × 6 P) and `W` (e.g. with `iperf3`) and put your own
# numbers in.

# %% [markdown]
# ## A.5 Running it
#
# **On one machine** (to try it, or to use several processes of one big machine), `-n`
# starts that many ranks on `127.0.0.1`, connected over loopback:
#
# ```bash
# mlx.launch -n 2 --backend ring -- mlxllm train --preset tiny --out runs/dp
# ```
#
# On a machine with **one** GPU this still works, and is still correct: with the ring
# backend an `all_sum` of GPU arrays completes in both ranks, because the ring moves the
# data through host memory (over loopback sockets), whatever device the arrays live on
# (checked on an NVIDIA H200 and recorded as `one_gpu_two_ranks` in
# `book/results/data_parallel_2026-11-29_h200x2.json`). Both ranks share the one GPU,
# though, so expect no speed-up: it is a way to test a data-parallel setup, not to train
# faster.
#
# **On several GPUs of one host** (CUDA), use the NCCL backend, one GPU per rank; NCCL
# moves the gradient GPU to GPU (over NVLink where there is one):
#
# ```bash
# mlx.launch -n 2 --backend nccl -- mlxllm train --preset shakespeare-char --out runs/dp
# ```
#
# **On two Macs**, the same code runs with the ring backend over the network: both need
# the same checkout, the same virtual environment at the same path (or pass
# `--python /path/to/.venv/bin/python`), the data (`MLXLLM_DATA_DIR` or the cache), and
# password-less `ssh` from the Mac you launch on to each of them (System Settings →
# General → Sharing → Remote Login; then `ssh-copy-id mac2.local`). The ring backend
# connects by IP address, so either list IPs:
#
# ```bash
# mlx.launch --backend ring --hosts 192.168.1.10,192.168.1.11 -- \
#     /Users/me/mlxllm/.venv/bin/mlxllm train --preset shakespeare-char --out runs/dp
# ```
#
# or write a hostfile that maps ssh names to IPs, by hand or with
# `mlx.distributed_config --over ethernet --hosts mac1.local,mac2.local
# --output-hostfile hosts.json` (`--over thunderbolt` sets up a Thunderbolt bridge
# between Macs cabled together):
#
# ```json
# [{"ssh": "mac1.local", "ips": ["192.168.1.10"]},
#  {"ssh": "mac2.local", "ips": ["192.168.1.11"]}]
# ```
#
# ```bash
# mlx.launch --hostfile hosts.json --backend ring -- \
#     /Users/me/mlxllm/.venv/bin/mlxllm train --preset shakespeare-char --out runs/dp
# ```
#
# The first host is rank 0: it prints, shows the progress bar and writes `runs/dp`. To
# `--resume`, every rank reads the checkpoint, so copy the folder to the same path on
# the other Macs first (`rsync -a runs/dp mac2.local:mlxllm/runs/`). `--batch-size` is
# the *global* batch: it must divide by the number of ranks, and the same command on 1
# or 2 machines trains on the same batches.
#
# **Guard rails.** Before the first step the ranks all-gather sha256 digests of the
# model config, the training config, the tokenizer, the token data, the checkpoint step
# and batch key, the MLX version and the mlxllm source, and all stop with one message
# naming what differs (then rank 0's parameters and optimizer state are broadcast, so
# the copies start identical even if two machines initialised differently). When a rank
# dies, its sockets close and the others fail their next all-reduce with
# `[ring] connection to a peer was lost`; `mlx.launch` also terminates the remaining
# ranks as soon as one exits with an error. What this cannot catch: a rank that *hangs*
# while alive (a deadlock, a stuck disk, a debugger breakpoint), or a machine that
# vanishes without closing its connections (power loss, pulled cable): MLX's
# collectives have no timeout, so the others wait. Started by hand (without
# `mlx.launch`), a rank whose peer never starts waits in `mx.distributed.init()`
# indefinitely. And note that `mlx.launch` 0.32 itself exits with status 0 even when
# ranks fail: read its `Node with rank N exited with code C` lines.
#
# **Bounded launches on this page.** Because a collective can wait forever, this page
# never starts ranks without a deadline. `mlxllm.distributed.launch_local` runs
# `mlx.launch -n 2 --backend ring` on free loopback ports, reads every rank's exit code
# from the launcher's log, and after `timeout` seconds kills the launcher and all its
# ranks (they share one process group) and raises `TimeoutError`: a stuck launch fails
# this cell after at most two minutes instead of hanging the notebook. It finds
# `mlx.launch` next to the running Python (installed with `mlx` by `make install`) or on
# `PATH`. Its code is in `mlxllm/distributed.py`. A first launch: two ranks that exit
# with their rank number as status, so rank 1 fails (after rank 0 is done):

# %%
# rank 1 waits 2 s before failing: when a rank fails, mlx.launch stops the others, and
# rank 0 should have finished by then
exit_with_rank = ("import sys, time, mlx.core as mx; "
                  "rank = mx.distributed.init().rank(); "
                  "time.sleep(2 * rank); sys.exit(rank)")
launched = distributed.launch_local([sys.executable, "-c", exit_with_rank], timeout=60)
print("exit codes per rank:", launched.returncodes)
# what the launcher's log says, which launch_local read for us
assert "Node with rank 1 exited with code 1" in launched.stderr
assert launched.returncodes == [0, 1]

# %% [markdown]
# Here is the start-up check at work: two ranks on this machine, identical except for
# the learning rate.

# %%
MISMATCH = """
import numpy as np
from mlxllm.distributed import world
from mlxllm.presets import PRESETS
from mlxllm.training import TrainConfig, Trainer

ids = np.random.default_rng(0).integers(0, 65, 4000).astype(np.uint16)
lr = 1e-3 * (1 + world().rank())  # the mistake: rank 1 has twice the learning rate
config = TrainConfig(steps=2, batch_size=4, context=16, lr=lr, min_lr=1e-4, warmup=0)
Trainer.create(PRESETS["tiny"].model_config(65, 16), config, ids[:3000], ids[3000:])
"""
work = Path(tempfile.mkdtemp())
(work / "mismatch.py").write_text(MISMATCH)
command = [sys.executable, str(work / "mismatch.py")]
# at most 10 minutes: on a CUDA machine, a first run builds each fused kernel (~5 s)
mismatch = distributed.launch_local(command, n=2, timeout=600)
messages = sorted({line for line in mismatch.stderr.splitlines()
                   if "RanksDisagree:" in line})
print("\n".join(messages))
failed = all(code not in (0, None) for code in mismatch.returncodes)
print("every rank exited with an error:", failed)
assert messages and failed

# %% [markdown]
# ## A.6 Measured: one process vs two on this machine
#
# A small script trains the tiny preset (at its own batch size, printed below) for 2
# warm-up steps (tracing the compiled step) and then times 6 steps; we run it once as a
# single process and once as 2 ranks with `mlx.launch -n 2 --backend ring` over loopback
# (through `launch_local`, with the same two-minute deadline; the single process has one
# too), and compare the parameters both end with. Two ranks sum their gradients in
# another order than one process does, so the parameters agree to float32 rounding
# (`assert_close`), not bit for bit.

# %%
SCRIPT = '''
import sys, time
import mlx.core as mx
from mlx.utils import tree_flatten
from mlxllm.distributed import is_main
from mlxllm.presets import prepare_run

out, warmup, timed = sys.argv[1], 2, 6
trainer = prepare_run("tinyshakespeare", "tiny", "char")
for _ in range(warmup):
    trainer.train_step()
start = time.perf_counter()
for _ in range(timed):
    trainer.train_step()
ms = (time.perf_counter() - start) / timed * 1e3
if is_main(trainer.group):
    mx.save_safetensors(out, dict(tree_flatten(trainer.model.parameters())))
    rows = trainer.config.batch_size // trainer.group.size()
    print(f"{trainer.group.size()} rank(s), {rows} × {trainer.context} tokens each: "
          f"{ms:.1f} ms/step")
'''
(work / "time_steps.py").write_text(SCRIPT)
command = [sys.executable, str(work / "time_steps.py")]
one = subprocess.run([*command, str(work / "one.safetensors")], capture_output=True,
                     text=True, timeout=600)  # as long only on a fresh GPU
two = distributed.launch_local([*command, str(work / "two.safetensors")], n=2,
                               timeout=600)
assert one.returncode == 0 and two.returncodes == [0, 0], one.stderr + two.stderr
a, b = mx.load(str(work / "one.safetensors")), mx.load(str(work / "two.safetensors"))
for k in a:
    assert_close(b[k], a[k], what=k)  # relative, per array
difference = max(relative_difference(b[k], a[k]) for k in a)
print(f"{len(a)} parameter arrays: 2 ranks == 1 process after 8 steps "
      "(to float32 rounding)")

# %% tags=["nbval-ignore-output"]
print(one.stdout.strip())
print(two.stdout.strip())
print(f"largest relative parameter difference after 8 steps: {difference:.1e}")
step_ms = [float(out.split(": ")[1].split()[0]) for out in (one.stdout, two.stdout)]
assert all(ms > 0 for ms in step_ms)
print(f"speed-up: {step_ms[0] / step_ms[1]:.2f}×")

# %% [markdown]
# Do not read much into the speed-up, which changes from run to run: two ranks on one
# machine share its cores (or its one GPU) with each other and with anything else
# running, and the tiny preset's step is so small that fixed per-step costs, which
# halving the batch does not halve, weigh heavily in it; its all-reduce moves only the
# ~0.4 MB gradient of A.3, over loopback. Data parallelism is for separate GPUs or
# machines, and A.4 says when their link is fast enough. The equality is the point: two
# ranks took the same steps as one process, to float32 rounding (the tests in
# `tests/test_distributed.py` check the same through `mlxllm train`: parameters within
# the tolerance of the single process, rank 0 alone writing the checkpoint, a resume
# under 2 ranks that is bit-exact on the CPU backend, and mismatched ranks stopping
# together).
#
# ## A.7 Recorded: two NVIDIA H200 GPUs
#
# The page cannot measure GPUs it is not built on, so this section reads a committed
# record, `book/results/data_parallel_2026-11-29_h200x2.json`, made with
# `benchmarks/bench_distributed.py` (its docstring says how) on one host with two H200s,
# NCCL backend, once as a single process and once under
# `mlx.launch -n 2 --backend nccl`. It is *weak* scaling: each rank keeps the per-rank
# batch, so two GPUs process twice the tokens per step, and the ideal speed-up is 2.
# Besides shakespeare-char, the record has a GPT-2-small-sized model (124M parameters,
# context 1024, GPT-2's BPE) in float32 and in bfloat16.

# %%
RESULTS = next(folder / "data_parallel_2026-11-29_h200x2.json"
               for folder in (Path("results"), Path("book/results"))
               if (folder / "data_parallel_2026-11-29_h200x2.json").is_file())
record = json.loads(RESULTS.read_text())
machine = record["machine"].split(" (")[0]  # "2 x NVIDIA H200 in one host"
print(f"{record['date']}: {machine}, NCCL backend, MLX {record['mlx']}")
for line in record["commands"]:
    print(" ", line)
runs = {(r["preset"], r["dtype"], r["ranks"]): r for r in record["runs"]}
print(f"\n{'model':<16} {'dtype':<8} {'GPUs':>4} {'global batch':>12} "
      f"{'tokens/step':>11} {'step ms':>8} {'tokens/s':>9} {'speed-up':>8} "
      f"{'all-reduce':>10} {'ms':>5} {'share':>6}")
for (preset, dtype, ranks), r in runs.items():
    speedup = r["tokens_per_s"] / runs[preset, dtype, 1]["tokens_per_s"]
    reduce = f"{'-':>10} {'-':>5} {'-':>6}"  # one GPU: no all-reduce
    if ranks > 1:
        reduce = (f"{r['all_reduce_bytes'] / 1e6:>7.0f} MB {r['all_reduce_ms']:>5.1f} "
                  f"{r['all_reduce_share']:>6.1%}")
    print(f"{preset:<16} {dtype:<8} {ranks:>4} {r['global_batch']:>12} "
          f"{r['tokens_per_step']:>11,} {r['step_ms']:>8.1f} {r['tokens_per_s']:>9,} "
          f"{speedup:>7.2f}× {reduce}")
    if ranks > 1:
        assert abs(speedup - record["speedup"][f"{preset} {dtype}"]) < 1e-3
        assert r["tokens_per_step"] == 2 * runs[preset, dtype, 1]["tokens_per_step"]
        assert r["all_reduce_bytes"] == 4 * r["parameters"]  # a float32 gradient buffer

# %% [markdown]
# Two GPUs process 1.92× (shakespeare-char) to 2.05× (GPT-2 small, bfloat16) the tokens
# per second of one: the step takes as long with twice the data, because the all-reduce
# of the whole gradient over NVLink takes 0.4 ms (43 MB) to 2 ms (497 MB), 1–3% of a
# step. (The all-reduce is timed on its own, on a float32 buffer of the gradient's size;
# a speed-up a little above 2 is within the timing noise of the step.) This is A.4's
# arithmetic with a very fast link: hundreds of GB/s, against the ~0.1–4 GB/s of the
# links between two Macs.
#
# **Equality on CUDA.** The same record compares parameters after 20 steps from one seed
# (shakespeare-char shapes, dropout 0, the same global batch of 64), as
# max |a − b| / max |b|:

# %%
same = record["equality"]
resume = same["resume_on_two_gpus"]
print(same["setup"])
print(f"  1 GPU vs 1 GPU again:        {same['one_gpu_vs_one_gpu_again']:.1e}")
print(f"  2 GPUs vs 1 GPU:             {same['two_gpus_vs_one_gpu']:.1e}")
print(resume["setup"])
resume_gap = resume["max_relative_parameter_difference"]
print(f"  resumed vs straight, 2 GPUs: {resume_gap:.1e}"
      f" (bit-exact: {resume['bit_exact']})")
print("  last losses straight:", resume["last_losses_straight"])
print("  last losses resumed: ", resume["last_losses_resumed"])
tf32_bound = 5e-3  # mlxllm.tolerances.TF32: float32 inputs, TF32 products
assert same["one_gpu_vs_one_gpu_again"] < same["two_gpus_vs_one_gpu"] < tf32_bound
assert resume["max_relative_parameter_difference"] < tf32_bound
assert not resume["bit_exact"]

# %% [markdown]
# None of these is bit-exact, and none can be on this backend: two runs on **one** GPU
# already differ (1.5e-6) because the embedding gradient is a scatter-add that CUDA
# computes with atomic additions, whose order (and so whose float32 rounding) changes
# from run to run. Two GPUs add another order of summation, the all-reduce's (1.0e-5),
# and float32 products run in TF32. Over a resume, the small differences of the first
# half are amplified by the second half's training (3.8e-4 after 40 steps). All stay
# well inside the tolerance policy's TF32 bound, 5e-3. On MLX's CPU backend, where every
# kernel sums in a fixed order, a resume is bit-exact ([Chapter 6](06_training.ipynb),
# and `tests/test_distributed.py`).

# %% [markdown]
# ## Exercises
#
# Each solution is a hidden cell under its exercise (click to show it); it runs with the
# page and asserts its answer, so it cannot silently go stale.
#
# **A.1 Four ranks.** Change one line of Section A.1: split the batch of 8 rows into
# `N = 4` shards of 2 rows instead of 2 shards of 4. Does the mean of the four shard
# gradients still equal the full-batch gradient?

# %% tags=["hide-input"]
quarters = [loss_and_grad(model, inputs[row:row + 2], targets[row:row + 2])[1]
            for row in range(0, 8, 2)]
mean_of_four = dict(tree_flatten(tree_map(lambda *g: sum(g) / 4, *quarters)))
for name, g in flat_whole.items():
    assert_close(mean_of_four[name], g, what=name)
print("N = 4 shards of 2 rows: their mean == the full-batch gradient "
      "(to float32 rounding)")

# %% [markdown]
# **A.2 Unequal shards.** Suppose one rank got 2 rows and the other 6 (a faster
# machine, say). Show that the plain mean of the two gradients is then *not* the
# full-batch gradient, and find the weights that make it so again.

# %% tags=["hide-input"]
small, large = (loss_and_grad(model, inputs[rows], targets[rows])[1]
                for rows in (slice(0, 2), slice(2, 8)))
plain = dict(tree_flatten(tree_map(lambda a, b: (a + b) / 2, small, large)))
weighted = dict(tree_flatten(tree_map(lambda a, b: (2 * a + 6 * b) / 8, small, large)))
for name, g in flat_whole.items():
    assert_close(weighted[name], g, what=name)  # each shard weighted by its rows
off = max(relative_difference(plain[name], g) for name, g in flat_whole.items())
assert off > 1e-2
print("shards of 2 and 6 rows: the mean weighted by rows (2/8, 6/8) == the full "
      f"gradient; the plain mean is off by more than 1%: {off > 1e-2}")

# %% [markdown]
# **A.3 Count the ring's traffic.** Run the simulation of Section A.2 with `N = 8`
# ranks and count what each rank sends (one chunk per step); check it against
# `ring_bytes_per_rank`. Then: how many megabytes does each of 8 ranks send per step to
# train GPT-2 small with a bfloat16 gradient?

# %% tags=["hide-input"]
n, k = 8, 3  # ranks, numbers per chunk
buffers8 = np.random.default_rng(1).normal(size=(n, n, k))
result8, history8 = ring_all_reduce(buffers8)
assert np.allclose(result8, buffers8.sum(axis=0, keepdims=True).repeat(n, axis=0))
sent_per_rank = (len(history8) - 1) * k  # every step, every rank sends one chunk
assert sent_per_rank == ring_bytes_per_rank(n * k, n, bytes_per_value=1)
gpt2_bf16 = ring_bytes_per_rank(sizes["GPT-2 small"], 8, bytes_per_value=2)
assert gpt2_bf16 == 2 * 7 * 124_439_808 * 2 / 8
print(f"N = 8: each rank sends {sent_per_rank} numbers, {sent_per_rank / (n * k):g} × "
      f"its buffer of {n * k}; GPT-2 small in bfloat16: {gpt2_bf16 / 1e6:.1f} MB "
      "per step")

# %% [markdown]
# **A.4 Break-even, and the number of ranks.** For a 100 Gb/s link (12.5 GB/s) and
# `F = 4 TFLOP/s`, find numerically (by bisection, for a model of 10⁸ parameters) the
# global tokens per step at which the compute saved by `N` ranks equals the time of the
# all-reduce, for `N = 2, 4, 8`. Predict first: does the answer depend on `N`?

# %% tags=["hide-input"]
W, P = 12.5e9, 10**8  # bytes/s, parameters (F as in Section A.4)


def compute_saved(tokens: float, ranks: int) -> float:
    return 6 * P * tokens / F * (1 - 1 / ranks)  # seconds: one rank's step minus N's


for ranks in (2, 4, 8):
    low, high = 0.0, 1e9
    for _ in range(200):
        middle = (low + high) / 2
        if compute_saved(middle, ranks) < ring_bytes_per_rank(P, ranks) / W:
            low = middle
        else:
            high = middle
    assert math.isclose(low, 8 * F / (6 * W), rel_tol=1e-9), ranks
print(f"100 Gb/s: break-even at {8 * F / (6 * W):.0f} tokens per step for N = 2, 4 "
      "and 8 alike: the (N − 1) / N of the ring cancels that of the compute saved")

# %%
shutil.rmtree(work)  # this appendix's scratch scripts and parameters

# %% [markdown]
# ## What we built
#
# - Data parallelism as the same step on more data: equal shards of the global batch,
#   gradients averaged by one all-reduce, so every rank applies the single-process
#   update.
# - The ring all-reduce, simulated and drawn: `2 (N − 1)` steps, `2 (N − 1) / N` × the
#   gradient sent per rank.
# - The cost per step (the parameter bytes, every step) and when it pays: enough tokens
#   per step for the link, `6 · tokens / N` FLOPs against `8` bytes per parameter.
# - `mlx.launch` on one machine (bounded by a deadline on this page), on the GPUs of one
#   host with NCCL and on two Macs with the ring, guard rails that stop mismatched ranks
#   together, and the limits of what a collective without a timeout can detect.
# - A recorded two-GPU run: 1.92–2.05× the tokens per second, an all-reduce of 1–3% of
#   the step, and equality within the tolerance policy.
