# %% [markdown]
# # 6. Training: from a corpus to a model that writes
#
# ```
# text ─▶ token ids ─▶ T×C vectors ─▶ N × transformer block ─▶ T×C ─▶ T×V logits
#                                                                        ▲
#          the loss at the end flows back through every stage ───────────┘
# ```
#
# [Chapter 5](05_next_token_prediction.ipynb) ended with a model whose predictions are
# nearly uniform: its loss is ≈ ln V. Training lowers that loss by nudging every
# parameter a little against its gradient, millions of times. MLX's own idiom is the
# skeleton of this chapter:
#
# 1. `nn.value_and_grad(model, loss_fn)` gives the loss *and* its gradient with respect
#    to every parameter;
# 2. an optimizer (AdamW) turns gradients into parameter updates, with a learning-rate
#    **schedule** (warmup, then cosine decay) and **gradient clipping**;
# 3. `mx.compile` fuses the whole step into one graph over the model, optimizer and
#    random state;
# 4. one `mx.eval` per step makes MLX's lazy arrays real, exactly once.
#
# Around it: **batches** cut from a tokenized corpus, **dropout**, **evaluation** on
# held-out text, **checkpoints** from which training resumes, and the `mlxllm` command.
# We train the `tiny` preset on tinyshakespeare (character level, as nanoGPT's
# `shakespeare-char`) and sample from it. Shapes: `B` batch, `T` tokens (context), `V`
# vocabulary (65 characters).
#
# The package pieces of this chapter: `mlxllm.data` (corpus, split, batches),
# `mlxllm.optimizer` (AdamW groups, schedule), `mlxllm.training` (`TrainConfig`, the
# compiled step, `Trainer`), `mlxllm.presets` (named recipes and `prepare_run`) and
# `mlxllm.checkpoint` (saving, loading, resuming).

# %%
import inspect
import json
import math
import shutil
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map

import mlxllm.data as data
import mlxllm.training as training
from mlxllm import ModelConfig, TransformerLM, cross_entropy
from mlxllm.checkpoint import load_model, load_model_weights, read_manifest
from mlxllm.generation import generate
from mlxllm.optimizer import decays, lr_schedule, make_optimizer
from mlxllm.presets import PRESETS, prepare_run, resume_run
from mlxllm.tokenizer import CharTokenizer
from mlxllm.tolerances import assert_close
from mlxllm.training import TrainConfig, Trainer, TrainingDiverged

# %% [markdown]
# ## 6.1 The corpus as one long array of ids
#
# tinyshakespeare is 1.1 MB of plays. A **character-level** tokenizer (one id per
# distinct character, sorted) keeps the model small and the samples readable; it has the
# same `encode` / `decode` / `save` / `load` surface as the BPE `Tokenizer` of
# [Chapter 1](01_tokenization.ipynb), so everything below works with either.
# `data.tokenize_corpus` encodes the corpus once and caches the ids as a `.npy` file
# keyed by the corpus *and* the tokenizer (a retrained tokenizer never reuses stale
# ids).

# %%
text = data.get_path("tinyshakespeare").read_text(encoding="utf-8")
tokenizer = CharTokenizer.train(text)
ids = data.tokenize_corpus("tinyshakespeare", tokenizer)
print(f"{len(text):,} characters, vocabulary of {tokenizer.vocab_size}:")
print(repr("".join(tokenizer.chars)))
print("ids:", ids.shape, ids.dtype, ids[:12].tolist(), "→",
      repr(tokenizer.decode(ids[:12])))
assert tokenizer.decode(ids.tolist()) == text

# %% [markdown]
# **The split rule.** The first 90% of the ids train, the last 10% validate (nanoGPT's
# rule). A contiguous tail keeps validation text truly unseen: random windows from an
# interleaved split would overlap training windows and flatter the model.

# %%
train_ids, val_ids = data.split_ids(ids, val_fraction=0.1)
print(f"train {len(train_ids):,} ids, validation {len(val_ids):,} ids")
# split_ids (mlxllm/data.py) on ten ids: the first nine train, the last one validates
small_train, small_val = data.split_ids(np.arange(10), val_fraction=0.1)
print("split_ids(0, 1, ..., 9):", small_train.tolist(), small_val.tolist())
assert small_train.tolist() == list(range(9)) and small_val.tolist() == [9]
assert np.array_equal(np.concatenate([train_ids, val_ids]), ids)  # nothing lost

# %% [markdown]
# **A baseline to beat.** A model that ignores context and always predicts the training
# set's character frequencies (a *unigram* model) scores this cross-entropy on the
# validation text. Any model that has learned something about context must end well
# below it.

# %%
counts = np.bincount(train_ids, minlength=tokenizer.vocab_size) + 1  # +1: no zero p
unigram_logprob = np.log(counts / counts.sum())
unigram_loss = float(-unigram_logprob[val_ids].mean())
uniform = math.log(tokenizer.vocab_size)
print(f"uniform guess: ln {tokenizer.vocab_size} = {uniform:.4f} nats/char")
print(f"unigram baseline on validation: {unigram_loss:.4f} nats/char")

# %% [markdown]
# ## 6.2 Batches: random windows and their shift by one
#
# A training example is a window of `T + 1` consecutive ids: the first `T` are the
# input, the last `T` the targets: position `t` must predict the id at `t + 1`
# ([Chapter 5](05_next_token_prediction.ipynb)'s shifted targets). A batch is `B`
# windows starting at random offsets drawn from an explicit **key**: the same key gives
# the same batch, which is what makes a run, and a resumed run, reproducible.

# %%
train = mx.array(train_ids.astype(np.int32))
inputs, targets = data.get_batch(train, batch_size=4, context=16, key=mx.random.key(0))
print("inputs ", inputs.shape, inputs.dtype, " targets", targets.shape)
for row in range(2):
    print(repr(tokenizer.decode(inputs[row].tolist())), "→",
          repr(tokenizer.decode(targets[row].tolist())))
assert mx.array_equal(inputs[:, 1:], targets[:, :-1])  # the same text, one step later
same_key = data.get_batch(train, 4, 16, mx.random.key(0))[0]
assert mx.array_equal(same_key, inputs)  # same key, same batch
print(inspect.getsource(data.get_batch))

# %% [markdown]
# ## 6.3 The loss and its gradient
#
# The loss is [Chapter 5](05_next_token_prediction.ipynb)'s `cross_entropy`: the mean
# over the `B × T` positions of −log p(target). At initialisation it is ≈ ln 65 ≈ 4.17.
# `nn.value_and_grad(model, f)` wraps `f(model, ...)` into a function that returns `f`'s
# value and the gradient with respect to every trainable parameter, as a tree shaped
# like `model.parameters()`.
#
# From here on the printed losses and norms are rounded to two or three digits: they go
# through matrix products, which a GPU may compute in TF32 (a relative difference up to
# ~10⁻³ from the CPU), and the page must read the same on every backend.

# %%
mx.random.seed(0)
model = TransformerLM(PRESETS["tiny"].model_config(tokenizer.vocab_size))


def loss_fn(model, inputs, targets):
    return cross_entropy(model(inputs), targets)


loss_and_grad = nn.value_and_grad(model, loss_fn)
loss, grads = loss_and_grad(model, inputs, targets)
print(f"loss at init {loss.item():.2f} (ln 65 = {math.log(65):.2f})")
for name, g in tree_flatten(grads)[:4]:
    print(f"  d loss / d {name:<32} {g.shape}")
assert abs(loss.item() - math.log(65)) < 0.1

# %% [markdown]
# A gradient is a promise: nudging a parameter by ε changes the loss by ≈ ε × gradient.
# We check it for one weight with a central finite difference (in float32, so ε cannot
# be tiny, and the two agree to a few percent, not to every digit).

# %%
w = model.blocks[0].ffn.up_proj.weight
i, j, eps = 3, 5, 1e-2
analytic = grads["blocks"][0]["ffn"]["up_proj"]["weight"][i, j].item()
losses_at = []
for delta in (+eps, -eps):
    nudged = w.tolist()
    nudged[i][j] += delta
    model.blocks[0].ffn.up_proj.weight = mx.array(nudged)
    losses_at.append(loss_fn(model, inputs, targets).item())
model.blocks[0].ffn.up_proj.weight = w
numeric = (losses_at[0] - losses_at[1]) / (2 * eps)
agree = abs(analytic - numeric) < 1e-3 + 0.05 * abs(analytic)
print(f"analytic {analytic:.2g}, finite difference {numeric:.2g}: "
      f"agree within 5%: {agree}")
assert agree

# %% [markdown]
# ## 6.4 AdamW, and why weight decay skips norms, biases and embeddings
#
# Plain gradient descent moves each parameter by `lr × gradient`. **Adam** keeps, per
# parameter, running averages of the gradient (`m`, momentum) and of its square (`v`),
# and moves by `lr × m̂ / (√v̂ + ε)`: every parameter takes steps of similar size
# whatever the scale of its gradient. **AdamW** adds *decoupled* weight decay: each step
# also shrinks the weight by a factor `(1 − lr × λ)`, a gentle pull toward zero that
# regularises.
#
# That pull only makes sense for **matrices** (the linear layers). A norm's scale `γ`
# starts at 1 and *is* the gain of a layer: decaying it toward 0 fights the
# normalisation. A bias is an offset, not a strength. An embedding row is a token's
# identity, and rare tokens (seldom updated) would simply fade away. So the optimizer
# (`mlxllm.optimizer`) has two groups sharing one schedule; `decays` picks the matrices:

# %%
print(inspect.getsource(decays))
groups = {True: [], False: []}
for name, p in tree_flatten(model.trainable_parameters()):
    groups[decays(name, p)].append(name)
print("decayed:    ", groups[True][:6], "...", len(groups[True]), "tensors")
print("not decayed:", groups[False])
assert all("norm" in n or "embedding" in n for n in groups[False])

# %% [markdown]
# One AdamW step by hand equals the package's optimizer. With bias correction (as
# PyTorch and nanoGPT), the first step of Adam moves every parameter by
# ≈ lr × sign(gradient). The two compute the same formula in a different order of
# operations, so they agree to float32 rounding, not bit for bit: we compare with
# `assert_close`, the book's one tolerance policy (`mlxllm.tolerances`,
# [Chapter 2](02_embedding.ipynb)).

# %%
config = TrainConfig(lr=1e-2, min_lr=1e-2, warmup=0, weight_decay=0.1, beta1=0.9,
                     beta2=0.99)
optimizer = make_optimizer(model, config)
before = dict(tree_flatten(model.parameters()))
flat_grads = dict(tree_flatten(grads))


def adamw_first_step(p, g, lr, beta1, beta2, decay, eps=1e-8):
    m, v = (1 - beta1) * g, (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1), v / (1 - beta2)  # bias correction at step 1
    return p * (1 - lr * decay) - lr * m_hat / (mx.sqrt(v_hat) + eps)


optimizer.update(model, grads)
after = dict(tree_flatten(model.parameters()))
for name in ("blocks.0.attention.q_proj.weight", "blocks.0.attention_norm.weight",
             "token_embedding.weight"):
    decay = config.weight_decay if decays(name, before[name]) else 0.0
    by_hand = adamw_first_step(before[name], flat_grads[name], config.lr, config.beta1,
                               config.beta2, decay)
    assert_close(by_hand, after[name], what=name)
    print(f"{name:<34} decay {decay}: by hand == package (to float32 rounding)")
print(inspect.getsource(make_optimizer))

# %% [markdown]
# ## 6.5 The learning-rate schedule: warmup, then cosine
#
# Early on, Adam's running averages hold almost nothing and the gradients of a random
# model point in unreliable directions: big steps there can wreck the initialisation.
# **Warmup** raises the learning rate linearly over the first steps. After the peak, a
# **cosine** curve lowers it smoothly to `min_lr` at the last step, so the model settles
# into a minimum instead of bouncing around it. The schedule is written with `mx`
# operations so that the optimizer can evaluate it *inside* the compiled step.

# %%
print(inspect.getsource(lr_schedule))
fig, axes = plt.subplots(1, 2, figsize=(9, 2.4))
for ax, name in zip(axes, ("tiny", "nanogpt-cpu")):
    c = PRESETS[name].train
    schedule = lr_schedule(c)
    steps = np.arange(c.steps + 1)
    ax.plot(steps, [schedule(int(s)).item() for s in steps])
    ax.axvline(c.warmup, color="gray", lw=0.8, ls=":")
    ax.set(title=f"{name}: warmup {c.warmup}, {c.steps} steps", xlabel="step",
           ylabel="learning rate")
plt.tight_layout()
plt.show()
c = PRESETS["nanogpt-cpu"].train
schedule = lr_schedule(c)
middle = (c.warmup + c.steps) // 2
assert math.isclose(schedule(c.warmup).item(), c.lr, rel_tol=1e-6)
assert math.isclose(schedule(c.steps).item(), c.min_lr, rel_tol=1e-5)
assert math.isclose(schedule(middle).item(), (c.lr + c.min_lr) / 2, rel_tol=1e-5)

# %% [markdown]
# ## 6.6 Gradient clipping by global norm
#
# Now and then a batch produces a huge gradient (a rare character, an unlucky window)
# and one step undoes many. Clipping measures the **global norm**, √(Σ over all
# parameters of Σ g²), and if it exceeds a threshold (1.0 here, as nanoGPT) scales *all*
# gradients down by the same factor: the direction is kept, only the step length is
# bounded.

# %%
global_norm = math.sqrt(sum((g**2).sum().item() for g in flat_grads.values()))
clipped, norm = optim.clip_grad_norm(grads, max_norm=0.5)
clipped_norm = math.sqrt(sum((g**2).sum().item() for _, g in tree_flatten(clipped)))
print(f"global norm {global_norm:.2f} (mlx: {norm.item():.2f}); "
      f"after clipping to 0.5: {clipped_norm:.2f}")
assert math.isclose(global_norm, norm.item(), rel_tol=1e-4)
assert math.isclose(clipped_norm, 0.5, rel_tol=1e-3)

# %% [markdown]
# ## 6.7 The compiled step, and where `mx.eval` goes
#
# ![One training step: batch, forward, cross-entropy, backward, clip, AdamW with its
# schedule, mx.eval; the compiled part marked](figures/training_loop.svg)
#
# The diagram is the whole step of this chapter on one page: a batch and its targets
# shifted by one, the forward pass to `(B, T, V)` logits, the cross-entropy, the
# backward pass, clipping, and the AdamW update that reads the schedule's learning rate
# and writes the parameters and its moments, all inside the dashed box that `mx.compile`
# traces once; then one `mx.eval` closes the step before the next batch (with an
# evaluation and a checkpoint every few steps).
#
# MLX is **lazy**: `loss_and_grad(...)` and `optimizer.update(...)` only *record* a
# graph; the work happens when something is evaluated. That makes the placement of
# `mx.eval` part of correctness. The rule: once per step, evaluate everything the next
# step will read (the parameters and the optimizer state) *together with* everything you
# keep (the loss). Here is what happens when the loss is kept in a list but left out of
# the `mx.eval` (a very common slip): each unevaluated loss holds on to the graph that
# produces it, including the `B × T × V` logits, so memory grows every step. (The
# megabytes depend on the backend's allocator, so the cell's output is not compared
# when the book is tested, and its asserts hold on the CPU backend, where active memory
# counts exactly the arrays alive.)

# %% tags=["nbval-ignore-output"]
def run_steps(model, optimizer, n, evaluate_loss):
    losses, memory = [], []
    for step in range(n):
        x, y = data.get_batch(train, 8, 32, mx.random.key(step))
        loss, grads = loss_and_grad(model, x, y)
        optimizer.update(model, grads)
        if evaluate_loss:  # the fix: the loss is evaluated with the state
            mx.eval(loss, model.state, optimizer.state)
        else:
            mx.eval(model.state, optimizer.state)  # the loss stays a lazy graph...
        losses.append(loss)  # ...and the list keeps every one of them alive
        memory.append(mx.get_active_memory() / 1e6)
    return memory


mx.random.seed(0)
demo = TransformerLM(PRESETS["tiny"].model_config(tokenizer.vocab_size))
loss_and_grad = nn.value_and_grad(demo, loss_fn)
misplaced = run_steps(demo, optim.AdamW(1e-3), 30, evaluate_loss=False)
fixed = run_steps(demo, optim.AdamW(1e-3), 30, evaluate_loss=True)
fig, ax = plt.subplots(figsize=(5, 2.4))
ax.plot(misplaced, label="loss left out of mx.eval")
ax.plot(fixed, label="mx.eval(loss, state)")
ax.set(xlabel="step", ylabel="active memory (MB)")
ax.legend()
plt.show()
growth_misplaced, growth_fixed = misplaced[-1] - misplaced[5], fixed[-1] - fixed[5]
print("over 25 steps, memory grows by more than 1 MB with the loss left out:",
      growth_misplaced > 1.0)
print("and stays flat (within 0.05 MB) with mx.eval(loss, state):",
      abs(growth_fixed) < 0.05)
if mx.default_device() == mx.cpu:
    assert growth_misplaced > 1.0 and abs(growth_fixed) < 0.05

# %% [markdown]
# **Dropout.** The step below also carries MLX's random state, for dropout. Dropout
# {cite:p}`srivastava2014dropout` is a regulariser used *only in training*: each number
# of an activation is zeroed with probability `p`, and the survivors are scaled by
# `1/(1−p)` so that the expected value is unchanged. No unit can rely on any single
# other unit being there, which discourages memorising the training text. Our model
# drops where nanoGPT does: the sum of token and position embeddings, each residual
# branch's output before it joins the stream, and the attention probabilities (with
# `dropout > 0` in training, attention takes the reference path of [Chapter
# 3](03_attention.ipynb), because the fused kernel has no dropout). `model.eval()`
# switches it off for evaluation and sampling. The `tiny` and `nanogpt-cpu` presets use
# `p = 0`; nanoGPT's GPU recipe `shakespeare-char` uses 0.2.

# %%
mx.random.seed(0)
drop = nn.Dropout(0.25)
x = mx.ones((4, 1000))
dropped = drop(x)  # training mode: a fresh random mask on every call
kept = (dropped != 0).astype(mx.float32).mean().item()
print(f"kept {kept:.0%} of the numbers (expected 75%), each scaled to "
      f"{dropped.max().item():.4g} = 1 / 0.75; the mean stays 1: "
      f"{abs(dropped.mean().item() - 1) < 0.05}")
drop.eval()
assert mx.array_equal(drop(x), x)  # evaluation: the identity
assert abs(kept - 0.75) < 0.02

# %% [markdown]
# `mx.compile` turns the step into one traced graph: the first call records it, later
# calls replay it with fused kernels and no Python overhead. The model, the optimizer
# state and MLX's random state (dropout) are not arguments of the step, so they are
# declared as implicit `inputs` and `outputs`: the compiled step reads them and writes
# their new values back. The package's step, with gradient accumulation, and its end,
# `apply_gradients` (clipping and the optimizer update). Every few steps the trainer
# also measures the update:data ratios, from the parameters it kept from before the
# step and those after it (`make_update_ratios`), so the step itself is the same every
# time; the loss is `mx.fast.cross_entropy`'s fused kernel:

# %%
print(inspect.getsource(training.make_train_step))
print(inspect.getsource(training.apply_gradients))

# %% [markdown]
# `Trainer.train_step` draws the batch, calls the step and evaluates once: the loss, the
# gradient norm, the learning rate, the parameters and the optimizer state in a single
# evaluation. The training loop (`Trainer.steps`, which `run` and `mlxllm train` use)
# goes one step further: it queues step k + 1 with `mx.async_eval` *before* it reads
# step k's loss, so the GPU starts the next step while Python is still reading the last
# one; it stops queueing ahead where an evaluation or a checkpoint needs the model
# exactly as it is. A loss that becomes NaN or infinite stops training with a clear
# error, *before* anything is saved, so the last good checkpoint survives. The trainer
# is in `mlxllm/training.py`; here is one step of a fresh `tiny` model, then a step
# after we poison one parameter with NaN:

# %%
tiny = PRESETS["tiny"]
demo_trainer = Trainer.create(tiny.model_config(tokenizer.vocab_size), tiny.train,
                              train_ids, val_ids, tokenizer)
first_loss = demo_trainer.train_step()  # one optimizer step; the loss, read once
print(f"step {demo_trainer.step}: loss {first_loss:.2f} (ln 65 = {math.log(65):.2f})")
assert demo_trainer.step == 1 and abs(first_loss - math.log(65)) < 0.1
demo_trainer.model.norm.weight = demo_trainer.model.norm.weight * mx.nan
try:
    demo_trainer.train_step()
    raise AssertionError("a NaN loss must stop training")
except TrainingDiverged as error:
    print("TrainingDiverged:", error)
assert demo_trainer.step == 1  # the failed step was not recorded

# %% [markdown]
# ## 6.8 Training the `tiny` preset
#
# A preset (`mlxllm.presets.PRESETS`) is a named model + training recipe. `tiny` is two
# layers of width 64 (about 100k parameters), batches of 8 windows of 32 characters, 200
# steps: seconds per hundred steps on a small CPU. `nanogpt-cpu` and `shakespeare-char`
# are nanoGPT's published recipes; `llama-bpe` is a small LLaMA (RoPE, RMSNorm, SwiGLU,
# grouped-query attention) on a 2048-token BPE.

# %%
for name, preset in PRESETS.items():
    print(f"{name}: {preset.description}")
preset = PRESETS["tiny"]
print(preset.train)
print(f"context {preset.context_length}, {preset.tokens_per_step} tokens per step")

# %% [markdown]
# `prepare_run(corpus, preset, tokenizer)` is the one entry point the command line, this
# chapter and the benchmarks share: it tokenizes and splits the corpus exactly as above,
# builds the preset's model for the tokenizer's vocabulary and returns a `Trainer`,
# which also records *what* it trains on (the corpus, its sha256, the tokenizer, the
# preset). `Trainer.run()` evaluates on fixed validation batches every `eval_interval`
# steps (the same batches each time, so the curve is not noise) and records, per step,
# the loss, the learning rate and the gradient norm, and every 10 steps the
# **update:data ratio** ‖Δθ‖ / ‖θ‖ of each parameter group: Karpathy's rule of thumb is
# that around 10⁻³ the learning rate is about right; much larger means the weights are
# being thrown around, much smaller that they barely move. An evaluation sends several
# of its batches through the model in one pass (fewer, larger launches for a GPU) and
# still averages each batch's own mean loss.

# %% tags=["nbval-ignore-output"]
trainer = prepare_run("tinyshakespeare", "tiny", "char")
assert trainer.tokenizer.chars == tokenizer.chars
assert np.array_equal(trainer.train_ids, train_ids)  # the same split as above
print(f"{trainer.model.num_parameters():,} parameters, "
      f"trained on {trainer.source['corpus']}")
final = trainer.run(progress=False)
evals = trainer.metrics["eval"]
for step, tl, vl in zip(evals["step"], evals["train_loss"], evals["val_loss"]):
    print(f"step {step:4}: train {tl:.4f}  val {vl:.4f}")
val_bpb = trainer.val_bits_per_byte(final["val_loss"])
print(f"final val {final['val_loss']:.4f} nats/char = {val_bpb:.4f} bits/byte; "
      f"unigram baseline {unigram_loss:.4f}")
assert final["val_loss"] < unigram_loss - 0.5  # well below a model that ignores context
assert final["val_loss"] < evals["val_loss"][0] - 1.0

# %%
m = trainer.metrics
fig = plt.figure(figsize=(8, 5.4))  # the loss across the top, the diagnostics below it
axes = [fig.add_subplot(2, 1, 1), fig.add_subplot(2, 2, 3), fig.add_subplot(2, 2, 4)]
axes[0].plot(m["step"], m["loss"], lw=0.6, alpha=0.6, label="train (batch)")
axes[0].plot(evals["step"], evals["train_loss"], "o-", label="train (eval)")
axes[0].plot(evals["step"], evals["val_loss"], "o-", label="validation")
axes[0].axhline(unigram_loss, color="gray", ls=":", label="unigram")
axes[0].set(xlabel="step", ylabel="loss (nats/char)", title="loss")
axes[0].legend(fontsize=9)
axes[1].plot(m["step"], m["grad_norm"])
axes[1].axhline(preset.train.grad_clip, color="gray", ls=":")
axes[1].set(xlabel="step", title="gradient global norm (clip at 1.0)")
for group in ("attention", "ffn", "embedding", "norm"):
    ratios = np.log10(m["update_ratio"][group])
    axes[2].plot(m["update_ratio"]["step"], ratios, label=group)
axes[2].axhline(-3, color="gray", ls=":")
axes[2].set(xlabel="step", title="log10 update:data ratio")
axes[2].legend(fontsize=8)
plt.tight_layout()
plt.show()
assert all(np.isfinite(m["grad_norm"])) and len(m["loss"]) == preset.train.steps

# %% [markdown]
# ## 6.9 Sampling from the trained model
#
# Two hundred steps on a CPU will not write Shakespeare, but the text already has the
# shape of a play: words of plausible length, spaces, capitals after line breaks,
# speaker names with colons.

# %% tags=["nbval-ignore-output"]
trainer.model.eval()  # no dropout while sampling
prompt = "ROMEO:\n"
new_ids = list(generate(trainer.model, tokenizer.encode(prompt), 24, temperature=0.8,
                        seed=0))
sample_text = tokenizer.decode(new_ids)
print(prompt + sample_text)
letters = sum(ch.isalpha() or ch in " \n" for ch in sample_text) / len(sample_text)
assert len(new_ids) == 24 and letters > 0.7

# %% [markdown]
# ## 6.10 Checkpoints: one manifest, one step folder, saved atomically
#
# `Trainer.save(out)` (`mlxllm.checkpoint`) writes a folder with two entries:
#
# - `checkpoint.json`, the **manifest**: the model and training configs, the step, what
#   the run trained on (its `source`), the best evaluation so far, the name of the step
#   folder and the sha256 of every file in it;
# - `step-NNNNNN/`, the files: `model.safetensors` (the kept model),
#   `optimizer.safetensors` (Adam's moments and its step counter), `state.json` (the
#   step and the key the next batch and dropout are drawn from), `metrics.json` (every
#   curve above) and the tokenizer.
#
# **Atomic save.** A save writes a hidden `.saving-…` folder first, flushes every file
# to disk, renames the folder to `step-NNNNNN`, and only then replaces `checkpoint.json`
# with one `os.replace`: that rename is the commit. A crash (or a full disk) anywhere
# before it leaves the previous manifest pointing at the previous, complete step folder;
# after it, the new one is whole. Older step folders and leftovers of interrupted saves
# are removed after the commit. Every load checks the sha256 of what it reads.
#
# **Which model is kept.** `TrainConfig.save = "last"` keeps the newest parameters;
# `save = "best"` (nanoGPT's habit, and the `shakespeare-char` preset's) keeps the
# parameters of the best validation loss as `model.safetensors`, and writes the newest
# beside them as `latest.safetensors` when they differ, so a resume still continues from
# where training stopped.
#
# `load_model` rebuilds the model from the manifest and loads the kept weights; a
# checkpoint whose config or shapes don't match a model is refused with a `ValueError`
# naming the first difference.

# %%
folder = Path(tempfile.mkdtemp()) / "tiny"
trainer.save(folder)
manifest = read_manifest(folder)
print(sorted(p.name for p in folder.iterdir()))
print(manifest["folder"], "→", sorted(manifest["files"]))
print("step", manifest["step"], "| source:",
      {k: manifest["source"][k] for k in ("corpus", "tokenizer", "preset")})
loaded, loaded_tokenizer = load_model(folder)
probe = mx.array([tokenizer.encode("To be, or not to be")])
assert mx.array_equal(loaded(probe), trainer.model(probe))  # same weights, same kernels
assert loaded_tokenizer.chars == tokenizer.chars
print("identical logits:", loaded(probe).shape)
wrong = TransformerLM(ModelConfig.gpt2(vocab_size=65, context_length=32, dims=64,
                                       n_layers=3, n_heads=4, bias=False))
try:
    load_model_weights(wrong, folder)
except ValueError as error:
    print("ValueError:", str(error).replace(str(folder), "<folder>"))

# %% [markdown]
# A save interrupted half-way leaves only a hidden folder behind; the checkpoint still
# loads, and the next save clears the debris:

# %%
debris = folder / ".saving-interrupted"
debris.mkdir()
(debris / "model.safetensors").write_bytes(b"half a file")
assert mx.array_equal(load_model(folder)[0](probe), loaded(probe))
trainer.save(folder)
print(sorted(p.name for p in folder.iterdir()))
assert not debris.exists() and read_manifest(folder)["folder"] == "step-000200.1"

# %% [markdown]
# **Resume by record.** Because the manifest records the corpus (and its sha256) and
# the tokenizer is saved with the model, `resume_run(out)` needs nothing else: it reads
# the corpus back, refuses one whose bytes changed, re-tokenizes it with the saved
# tokenizer and restores the trainer at its step. `mlxllm train --out runs/x --resume`
# is this call.

# %%
again = resume_run(folder, steps=300)  # continue the recipe for 100 more steps
print(f"resumed at step {again.step} of {again.config.steps}, "
      f"on {again.source['corpus']} ({again.source['corpus_sha256'][:12]}…)")
assert again.step == 200 and np.array_equal(again.train_ids, trainer.train_ids)
assert mx.array_equal(again.batch_key, trainer.batch_key)

# %% [markdown]
# ## 6.11 Resume, exactly
#
# A resumed run must be indistinguishable from one that never stopped. That needs the
# parameters, both Adam moments, the optimizer's step (it drives the schedule *and*
# Adam's bias correction), and the random key the next batch and the next step's dropout
# come from. We train a short run straight through, and the same run stopped halfway,
# saved, reloaded into a fresh process state and continued.
#
# On MLX's CPU backend the two are **bit for bit** equal: every step repeats the same
# computation in the same order. On a GPU backend they agree within the tolerance
# policy, not bit for bit: CUDA training is not bit-reproducible even without a stop
# (two identical runs differ by ~10⁻⁶ after a few steps, because the embedding
# gradient's scatter-add accumulates with atomics, in whatever order the threads
# arrive), so the check there is `assert_close`. The losses themselves depend on the
# hardware, so this cell's printout is not compared when the page is re-run.

# %% tags=["nbval-ignore-output"]
short = TrainConfig(steps=16, batch_size=8, context=32, lr=3e-3, min_lr=3e-4, warmup=4,
                    eval_interval=8, eval_batches=2)
dropout_config = preset.model_config(tokenizer.vocab_size)
dropout_config.dropout = 0.1  # dropout too: its randomness must resume as well
straight = Trainer.create(dropout_config, short, train_ids, val_ids, tokenizer)
straight.run(progress=False)
half = Trainer.create(dropout_config, short, train_ids, val_ids, tokenizer)
half.run(until=8, out=folder / "resume", progress=False)
mx.random.seed(1234)  # whatever happened to the global random state in between
resumed = Trainer.resume(folder / "resume", train_ids, val_ids)
resumed.run(progress=False)
print("straight:", [round(x, 4) for x in straight.metrics["loss"][-4:]])
print("resumed: ", [round(x, 4) for x in resumed.metrics["loss"][-4:]])
if mx.default_device() == mx.cpu:
    assert resumed.metrics["loss"] == straight.metrics["loss"]  # all 16, bit for bit
    print("CPU backend: all 16 losses are bit for bit the same")
else:
    assert_close(resumed.metrics["loss"], straight.metrics["loss"], what="losses")
    pairs = zip(tree_flatten(resumed.model.parameters()),
                tree_flatten(straight.model.parameters()))
    for (name, a), (_, b) in pairs:
        assert_close(a, b, what=name)
    print("GPU backend: the losses agree within the tolerance policy")

# %% [markdown]
# ## 6.12 The `mlxllm` command
#
# The same pieces behind a command line (`mlxllm/cli.py`):
#
# ```
# mlxllm train --corpus tinyshakespeare --tokenizer char --preset nanogpt-cpu \
#     --out runs/cpu
# mlxllm train --out runs/cpu --resume   # continue after a stop (corpus: the record)
# mlxllm generate runs/cpu --prompt "ROMEO:" --max-new-tokens 50 --temperature 0.8
# mlxllm tokenize --tokenizer gpt2 notes.txt --count
# ```
#
# `train` prints progress (steps/s, tokens/s, loss) and ends with the validation loss in
# nats/token and bits/byte; mistakes (an unknown preset, corpus or tokenizer, an
# unwritable `--out`, resuming a missing or incompatible folder) print one line and exit
# with status 2.

# %%
from mlxllm import cli

status = cli.main(["tokenize", "--tokenizer", "char", "tinyshakespeare", "--count"])
assert status == 0
# a mistake: one line on stderr, exit status 2, nothing written
status = cli.main(["train", "--preset", "huge", "--out", str(folder / "cli")])
assert status == 2 and not (folder / "cli").exists()

# %% [markdown]
# ## 6.13 Speed, and nanoGPT's numbers
#
# `benchmarks/bench_train.py` times one optimizer step, side by side in one run, for our
# `Trainer` step, the same step without `mx.compile`, a minimal step written directly
# with `mlx.nn` (the MLX examples' idiom: `value_and_grad` → clip → AdamW →
# `mx.compile` → `mx.eval`; our abstractions should cost nothing) and, where PyTorch is
# installed, the same GPT in PyTorch (same shapes, AdamW, clipping). Run it on your own
# machine: timings belong to the hardware, not to this page. Two things to expect: on a
# CPU the step is dominated by matrix multiplications, which compilation cannot speed up
# (it fuses the element-wise work around them, which matters far more on a GPU); and the
# Linux `mlx[cpu]` wheel is not built for speed, so there PyTorch's CPU kernels win by a
# wide margin. MLX is built for Apple GPUs (Metal), and its CUDA backend is the same
# code: that is where a comparison with PyTorch means something.
#
# **Reproducing nanoGPT.** nanoGPT's README reports, for its CPU recipe (`nanogpt-cpu`:
# 4 layers, 4 heads, 128 dims, context 64, batch 12, 2000 iterations, no dropout), a
# validation loss of ≈ 1.88, and for its GPU recipe `shakespeare-char` (6 × 384, context
# 256, batch 64, dropout 0.2, 5000 steps) 1.4697. A `shakespeare-char` step is a few
# hundred times the work of a `nanogpt-cpu` step, too much for the CPU this page is
# built on. On a Mac (or a CUDA GPU), run it with the variable below switched on, or
# from the command line:
#
# ```
# mlxllm train --preset shakespeare-char --out runs/shakespeare-char
# ```

# %%
FULL_RUN = False  # True: nanoGPT's shakespeare-char recipe (6 × 384; a GPU)
if FULL_RUN:
    big_trainer = prepare_run("tinyshakespeare", "shakespeare-char", "char")
    big_final = big_trainer.run(out="runs/shakespeare-char")
    print(big_final, big_trainer.metrics["best"])
    assert big_trainer.metrics["best"]["val_loss"] < 1.50  # nanoGPT's best: 1.4697
print("FULL_RUN =", FULL_RUN)

# %% [markdown]
# ### The recorded run
#
# We ran that command on a GPU (an NVIDIA H200 through MLX's CUDA backend) and committed
# what it printed and saved to `book/results/`, with the date, the machine and the
# command; the cell below loads that file, so every number here comes from it. The
# preset keeps the model with the best validation loss (as nanoGPT does) and stops after
# five evaluations without a better one: past its best, this small model only overfits
# (the training loss keeps falling, the validation loss rises). The same recipe ran in
# float32 and in mixed bfloat16 (`--dtype mixed-bfloat16`: bfloat16 arithmetic, float32
# weights and AdamW state). A first run on a fresh machine also pays for MLX's CUDA
# backend compiling its kernels, which it then caches; the file records that too.
#
# That first run waits before its first step: the compiled step fuses into some 30
# kernels, and NVRTC builds each in seconds, one after another. MLX keeps them on disk,
# so this happens once per machine (Metal and the CPU build theirs in milliseconds). On
# an H100 (2026-12-06, `benchmarks/bench_recipe.py`) the whole command took 217 s on a
# fresh machine and 126 s once the kernels were cached.

# %%
recorded = json.loads(Path("results/shakespeare_char_2026-11-29_h200.json").read_text())
print(recorded["date"], "·", recorded["machine"])
print("command:", recorded["command"])
print(f"{'run':<40}{'wall':>7}{'best val':>10}{'at step':>9}{'stopped':>9}")
for name, r in recorded["runs"].items():
    print(f"{name:<40}{r['wall_seconds']:>6}s{r['best']['val_loss']:>10.4f}"
          f"{r['best']['step']:>9}{r['stopped_at']:>9}")
for name, value in recorded["reference"].items():
    print(f"{name}: {value}")

fig, ax = plt.subplots(figsize=(8, 4.2))
for (name, r), color in zip(list(recorded["runs"].items())[:2], ["C0", "C1"]):
    ax.plot(r["eval_step"], r["train_loss"], "--", color=color, label=f"{name}, train")
    ax.plot(r["eval_step"], r["val_loss"], "-", color=color,
            label=f"{name}, validation")
    ax.plot(r["best"]["step"], r["best"]["val_loss"], "o", color=color)
ax.axhline(1.4697, color="gray", lw=0.8, ls=":",
           label="nanoGPT's best validation loss")
ax.set(xlabel="step", ylabel="loss (nats/token)", ylim=(0.7, 2.6),
       title="shakespeare-char on an H200: the best model (dots) is the one kept")
ax.legend(fontsize=9)
plt.show()
print("sample (float32 model, 300 new tokens, seed 0):")
print(recorded["sample_float32"])

# %% [markdown]
# The two precisions trace the same curves to within the noise of one run: bfloat16
# arithmetic with float32 master weights costs nothing here in loss, and
# `benchmarks/bench_train.py --bf16` measures what it buys in speed (the table in
# `benchmarks/README.md`). The sample has the shape of the play (speaker names in
# capitals, verse lines) and real words, with the invented ones a character model makes.

# %% [markdown]
# ## Exercises
#
# Each solution is a hidden cell under its exercise (click to show it); it runs with the
# page and asserts its answer, so it cannot silently go stale.
#
# **6.1 Predict the loss at initialisation.** Change one line of Section 6.3: build the
# `tiny` model for a vocabulary of `V = 1000` tokens instead of 65. Before running it,
# predict the loss on random targets, and the **perplexity** `exp(loss)` (the number of
# equally likely tokens the model is as unsure as).

# %% tags=["hide-input"]
mx.random.seed(0)
V = 1000
wide_vocab = TransformerLM(PRESETS["tiny"].model_config(V))
random_inputs = mx.random.randint(0, V, (8, 32), key=mx.random.key(1))
random_targets = mx.random.randint(0, V, (8, 32), key=mx.random.key(2))
init_loss = loss_fn(wide_vocab, random_inputs, random_targets).item()
as_predicted = (abs(init_loss - math.log(V)) < 0.1
                and abs(math.exp(init_loss) / V - 1) < 0.1)
print(f"V = {V}: loss ≈ ln V = {math.log(V):.2f}, perplexity ≈ V (within 10%): "
      f"{as_predicted}")
assert as_predicted

# %% [markdown]
# **6.2 The schedule by hand.** Write the learning-rate schedule of Section 6.5 in plain
# Python (`math`, no `mx`): during warmup `lr · (step + 1) / (warmup + 1)` (nanoGPT's
# formula: it never starts at exactly 0), then a half cosine from `lr` down to `min_lr`
# at `steps`. Compare it with `mlxllm.optimizer.lr_schedule` at every step of a 5-step
# run with 2 warmup steps.

# %% tags=["hide-input"]
def schedule_by_hand(step: int, c: TrainConfig) -> float:
    if step < c.warmup:
        return c.lr * (step + 1) / (c.warmup + 1)
    progress = min(1.0, (step - c.warmup) / max(1, c.steps - c.warmup))
    return c.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (c.lr - c.min_lr)


five = TrainConfig(steps=5, warmup=2, lr=1e-3, min_lr=1e-4)
by_hand = [schedule_by_hand(step, five) for step in range(6)]
package = [lr_schedule(five)(step).item() for step in range(6)]
assert_close(package, by_hand, what="learning rates")  # float32 vs Python's float64
print("steps 0–5:", ", ".join(f"{lr:.3g}" for lr in by_hand),
      "== lr_schedule (to float32 rounding)")

# %% [markdown]
# **6.3 Weight decay leaves the gains alone.** Give the optimizer of Section 6.4 a
# gradient of zeros. Adam's part of the step is then exactly 0, so only the decay acts:
# predict what one step does to each kind of parameter, with `lr = 0.1` and
# `weight_decay = 0.1`, and check it.

# %% tags=["hide-input"]
mx.random.seed(0)
resting = TransformerLM(PRESETS["tiny"].model_config(tokenizer.vocab_size))
decay_config = TrainConfig(lr=0.1, min_lr=0.1, warmup=0, weight_decay=0.1)
decay_optimizer = make_optimizer(resting, decay_config)
start = dict(tree_flatten(resting.trainable_parameters()))
decay_optimizer.update(resting, tree_map(mx.zeros_like, resting.trainable_parameters()))
end = dict(tree_flatten(resting.trainable_parameters()))
factor = 1 - decay_config.lr * decay_config.weight_decay  # 0.99
for name, p in start.items():
    if decays(name, p):
        assert_close(end[name], p * factor, what=name)  # a matrix shrinks by 1%
    else:
        assert mx.array_equal(end[name], p), name  # p · 1 − 0: exactly unchanged
shrunk = sum(decays(name, p) for name, p in start.items())
print(f"{shrunk} matrices × {factor:g}; {len(start) - shrunk} norm gains and "
      "embeddings exactly unchanged")

# %% [markdown]
# **6.4 Gradient accumulation by hand.** When a batch does not fit in memory, split it
# into micro-batches, add up their gradients and divide by their number
# (`TrainConfig.grad_accumulation` does this inside the compiled step). Implement it
# with `nn.value_and_grad` for 4 micro-batches of 2 rows and show that it gives the
# gradient of the whole batch of 8 rows.

# %% tags=["hide-input"]
mx.random.seed(0)
accumulating = TransformerLM(PRESETS["tiny"].model_config(tokenizer.vocab_size))
accumulating_grad = nn.value_and_grad(accumulating, loss_fn)
batch_x, batch_y = data.get_batch(train, 8, 32, mx.random.key(3))  # (8, 32) each
_, full_batch = accumulating_grad(accumulating, batch_x, batch_y)
n_micro, total = 4, None
for row in range(0, 8, 2):  # micro-batches of 2 rows
    _, g = accumulating_grad(accumulating, batch_x[row:row + 2], batch_y[row:row + 2])
    total = g if total is None else tree_map(mx.add, total, g)
accumulated = tree_map(lambda g: g / n_micro, total)
for (name, a), (_, b) in zip(tree_flatten(accumulated), tree_flatten(full_batch)):
    assert_close(a, b, what=name)  # another order of summation: float32 rounding
print(f"{n_micro} micro-batches of 2 rows, averaged == one batch of 8 rows "
      "(to float32 rounding)")

# %%
shutil.rmtree(folder.parent)  # this chapter's scratch checkpoints

# %% [markdown]
# ## What we built
#
# - **Data** (`mlxllm.data`): `tokenize_corpus` (ids cached as `.npy`, keyed by corpus
#   and tokenizer), `split_ids` (last 10% validates), `get_batch` (seeded windows,
#   targets shifted by one), and a `CharTokenizer` (`mlxllm.tokenizer`) for
#   character-level models.
# - **The step**: `cross_entropy` → `nn.value_and_grad` → global-norm clipping → AdamW
#   with decay on matrices only (`mlxllm.optimizer`) → one compiled graph with the
#   model, optimizer and random state (dropout) as implicit inputs and outputs → one
#   `mx.eval` per step (and the memory leak when the loss is left out of it).
# - **The schedule**: linear warmup and cosine decay to `min_lr`, evaluated inside the
#   compiled step.
# - **`Trainer`** (`mlxllm.training`) and **presets** (`mlxllm.presets`, `prepare_run`):
#   evaluation on fixed batches, diagnostics (gradient norm, update:data ratio per
#   group), NaN detection.
# - **Checkpoints** (`mlxllm.checkpoint`): a manifest and a step folder, saved
#   atomically, the last or the best model kept, resumed from the record; exact on the
#   CPU, within the tolerance policy on a GPU.
# - **`mlxllm train | generate | tokenize`** on the command line.
