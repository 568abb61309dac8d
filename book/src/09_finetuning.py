# %% [markdown]
# # 9. Fine-tuning: teaching the real model a new skill with LoRA
#
# ```
# chat data ─template─▶ ids + loss mask ─▶ frozen 4-bit model + small adapters ─▶ loss
#                                          (only the adapters learn)
# ```
#
# A pretrained chat model already knows language, the chat template and a great deal
# about the world. What it does not know is *our* task, in *our* format. Prompting can
# ask for it; fine-tuning teaches it: a few hundred optimizer steps on examples of the
# task change the model's weights so that the skill becomes its default behaviour.
#
# This chapter fine-tunes the real model of [Chapter 7](07_pretrained.ipynb),
# SmolLM2-135M-Instruct in 4 bits, on a skill it measurably lacks: writing a date given
# in words or numbers ("the 5th of March, 2021", "3/5/2021 (month first)") in ISO 8601
# ("2021-03-05"). It builds the pieces the package needs and reuses everything else:
#
# - **LoRA** (`mlxllm.lora`): instead of updating a weight matrix W, learn a low-rank
#   update beside it, y = Wx + (α/r)·B A x, with W frozen;
# - **QLoRA**: the same on the 4-bit model, whose weights stay packed;
# - **supervised fine-tuning on chat data** (`mlxllm.sft`): conversations rendered with
#   the model's chat template, the loss on the assistant's tokens only, trained by the
#   same compiled step, schedule and clipping as [Chapter 6](06_training.ipynb)'s
#   `Trainer`;
# - **a measurement**: exact match of greedy answers on a held-out test split, before
#   and after (`mlxllm.tasks` makes the data, `mlxllm finetune` runs it all).
#
# Numbers that two computations reach by different kernels are compared with
# `assert_close` (`mlxllm.tolerances`): a bound relative to the largest value, because
# kernels, and a GPU's TF32 products, round differently.

# %%
import inspect
import json
from pathlib import Path

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

import mlxllm
from mlxllm import ModelConfig, TransformerLM, sft, tasks
from mlxllm.lora import LoRALinear, apply_lora, lora_layers, merge_lora
from mlxllm.tolerances import assert_close
from mlxllm.training import IGNORE, masked_cross_entropy

# %% [markdown]
# ## 9.1 The task: dates in ISO 8601
#
# `mlxllm.tasks.date_splits` draws dates between 1900 and 2099 and writes each in one
# of eight styles; the answer is exact (`datetime.date.isoformat`). Everything comes
# from one seed, and no question appears in two splits, so the test split measures the
# skill, not memory. Each example is a conversation in mlx-lm's chat format: a user
# message and the assistant's answer.

# %%
splits = tasks.date_splits({"train": 2000, "valid": 100, "test": 150}, seed=0)
print({name: len(conversations) for name, conversations in splits.items()})
print(splits["train"][0])
for user, assistant in splits["train"][1:8]:
    question = user["content"].removeprefix(tasks.INSTRUCTION)
    print(f"{question:>32} → {assistant['content']}")

# %% [markdown]
# The base model does not do this. Asked greedily for the 150 test dates, it repeats
# the date, invents another year, or explains ISO 8601; the recorded run in §9.8 has
# its exact score and examples. (Generating 150 answers is a GPU job; this page runs
# on a 2-core CPU in CI, so it works with single forward passes of the real model and
# trains on a few examples only.)

# %%
model, tokenizer = mlxllm.load_pretrained("smollm2-135m-instruct")
print(type(model.blocks[0].attention.q_proj).__name__, "bits:",
      model.blocks[0].attention.q_proj.bits, "| end of turn:",
      [tokenizer.decode([i]) for i in tokenizer.eos_token_ids])

# %% [markdown]
# ## 9.2 What the loss should see: the prompt mask
#
# A conversation becomes one token sequence through the chat template. Which tokens
# should the loss count? The model will always be *given* the system message, the
# user's question and the assistant header; it must *produce* the answer and the
# end-of-turn token. So the loss covers the assistant's tokens only, and every other
# target is `IGNORE` (−1). `sft.render` encodes the template's text piece by piece at
# the boundaries of each assistant message, so the mask is exact:

# %%
conversation = splits["train"][0]
ids, learn = sft.render(tokenizer, conversation)
full_text = tokenizer.apply_chat_template(conversation, add_generation_prompt=False)
assert ids == tokenizer.encode(full_text, allowed_special="all")  # pieces == whole
print(f"{len(ids)} tokens, {sum(learn)} of them learned:")
print(repr(tokenizer.decode([i for i, keep in zip(ids, learn) if keep])))
prompt_text = tokenizer.apply_chat_template(conversation[:1])  # + assistant header
assert sum(not keep for keep in learn) == len(
    tokenizer.encode(prompt_text, allowed_special="all"))

# %% [markdown]
# `sft.make_rows` turns conversations into the trainer's rows: an (N, 2, T) array of
# inputs and targets, shifted by one as in [Chapter 5](05_next_token_prediction.ipynb),
# with `IGNORE` on the prompt.
#
# **Padding or packing?** The examples are short and of similar length, so each row
# holds one conversation, right-padded to the longest (pads: input 0, target
# `IGNORE`). Under a causal mask right padding is exact: a real token never attends to
# the pads after it. Packing several conversations into one row wastes no compute on
# pads but needs a block-diagonal attention mask (or lets examples see each other);
# with so little padding (in the four rows below, 290 of the 300 target slots are
# real), it would not pay here.

# %%
rows = sft.make_rows(tokenizer, splits["train"][:4])
unmasked = sft.make_rows(tokenizer, splits["train"][:4], mask_prompt=False)
print("rows:", rows.shape, rows.dtype)
print("targets with loss, masked:", int((rows[:, 1] != IGNORE).sum()),
      "| without the mask:", int((unmasked[:, 1] != IGNORE).sum()))

# %% [markdown]
# What changes without the mask? The loss becomes an average over *every* target, and
# 242 of these 290 are the system prompt and the question. Part of that is easy (the
# system prompt is the same in every example), part is impossible: the date in the
# question is random, so no model can predict it. One forward pass of the real model on
# the first row shows how the second part dominates: averaged over everything the loss
# is more than twice the answer's (the cell asserts it). Trained that way, most of the
# gradient would go into guessing the user's random dates, which the model never has to
# produce, and the answer, the only part we care about, would get a sixth of the weight.

# %% tags=["nbval-ignore-output"]
model.eval()
logits = model(mx.array(rows[:1, 0]))  # (1, T, V): one forward pass of the real model
on_answer = masked_cross_entropy(logits, mx.array(rows[:1, 1])).item()
on_everything = masked_cross_entropy(logits, mx.array(unmasked[:1, 1])).item()
print(f"base model loss: {on_answer:.2f} nats/token on the answer, "
      f"{on_everything:.2f} averaged over every token")
assert on_everything > 2 * on_answer  # the question's random dates dominate

# %% [markdown]
# ## 9.3 LoRA by hand, on one layer of the real model
#
# Full fine-tuning updates every weight: W ← W + ΔW, with ΔW as large as W. LoRA
# {cite:p}`hu2021lora` bets that the update a task needs has low rank, and learns it as
# a product ΔW = (α/r)·B A, with A of shape (r, in) and B of shape (out, r), r ≪ in,
# out:
#
# y = W x + (α/r) · B (A x)
#
# ![LoRA: a frozen W beside a trainable low-rank path B·A, scaled by α/r and
# added](figures/lora.svg)
#
# B starts at zero, so the model starts exactly as it was; A starts random, so the
# gradient of B is not zero. α/r keeps the update's scale independent of the rank
# (the usual choice α = 2r gives a factor 2). Here it is by hand on the first block's
# query projection, which is a 4-bit `QuantizedLinear`: its W is what dequantizing
# the packed words gives.

# %%
q_proj = model.blocks[0].attention.q_proj
W = mx.dequantize(q_proj.weight, q_proj.scales, q_proj.biases,
                  group_size=q_proj.group_size, bits=q_proj.bits)  # (out, in)
rank, alpha = 8, 16
mx.random.seed(0)
A = mx.random.normal((rank, W.shape[1])) / W.shape[1] ** 0.5  # (r, in)
B = mx.random.normal((W.shape[0], rank)) * 0.01  # (out, r): trained values, say
x = mx.random.normal((2, 5, W.shape[1]))  # (batch, tokens, in)
by_hand = x @ W.T + (x @ A.T) @ B.T * (alpha / rank)

layer = LoRALinear(q_proj, rank, alpha)
assert mx.array_equal(layer(x), q_proj(x))  # B = 0 at the start: the same layer
layer.lora_a, layer.lora_b = A, B
assert_close(layer(x), by_hand, what="package LoRA vs by hand")
print("W:", W.shape, "A:", layer.lora_a.shape, "B:", layer.lora_b.shape,
      "| package == by hand")

# %% [markdown]
# The package's layer is that formula around any linear layer, plain or quantized:

# %%
print(inspect.getsource(LoRALinear.__call__))

# %% [markdown]
# **QLoRA** {cite:p}`dettmers2023qlora` is this with a quantized W. The forward pass
# uses `mx.quantized_matmul` on the packed 4-bit words, never a dequantized copy, and
# the gradient that reaches A and B flows back through that same kernel (its gradient
# with respect to x). It equals the gradient computed with the dequantized W, within the
# float tolerance:

# %%
dense = nn.Linear(W.shape[1], W.shape[0], bias=False)
dense.weight = W
dense_lora = LoRALinear(dense, rank, alpha)
dense_lora.lora_a, dense_lora.lora_b = A, B
dense.freeze()


def loss_of(layer, x):
    return (layer(x) ** 2).mean()


_, quantized_grads = nn.value_and_grad(layer, loss_of)(layer, x)
_, dense_grads = nn.value_and_grad(dense_lora, loss_of)(dense_lora, x)
print("gradients for:", [k for k, _ in tree_flatten(quantized_grads)])
for name in ("lora_a", "lora_b"):
    assert_close(quantized_grads[name], dense_grads[name], what=name)

# %% [markdown]
# ## 9.4 Full fine-tuning or LoRA: parameters and memory
#
# LoRA on a layer of shape (out, in) trains r·(in + out) numbers instead of in·out.
# Counted for SmolLM2-135M and for a 7B model of the LLaMA-2 shape (32 blocks of width
# 4096, full multi-head attention, SwiGLU of 11008): the formulas are checked against
# the real model's own count.

# %%
def projections(c: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer of a block."""
    q, kv = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim
    return {"q_proj": (c.dims, q), "k_proj": (c.dims, kv), "v_proj": (c.dims, kv),
            "o_proj": (q, c.dims), "gate_proj": (c.dims, c.ffn_dims),
            "up_proj": (c.dims, c.ffn_dims), "down_proj": (c.ffn_dims, c.dims)}


def full_count(c: ModelConfig) -> int:
    block = sum(i * o for i, o in projections(c).values()) + 2 * c.dims  # + 2 norms
    heads = 1 if c.tie_embeddings else 2
    return heads * c.vocab_size * c.dims + c.n_layers * block + c.dims


def lora_count(c: ModelConfig, rank: int, targets) -> int:
    shapes = projections(c)
    return c.n_layers * sum(rank * sum(shapes[t]) for t in targets)


smol = model.config
llama7b = ModelConfig.llama(vocab_size=32000, context_length=4096, dims=4096,
                            n_layers=32, n_heads=32, n_kv_heads=32, ffn_dims=11008,
                            tie_embeddings=False)
assert full_count(smol) == model.num_parameters()
QV, ALL = ("q_proj", "v_proj"), tuple(projections(smol))
for name, c in (("SmolLM2-135M", smol), ("LLaMA-2-7B shape", llama7b)):
    full = full_count(c)
    print(f"{name:>16}: full {full:>13,} | LoRA r=8 q,v {lora_count(c, 8, QV):>9,}"
          f" ({lora_count(c, 8, QV) / full:.2%}) | all {lora_count(c, 8, ALL):>10,}"
          f" ({lora_count(c, 8, ALL) / full:.2%})")

# %% [markdown]
# Training memory, leaving out the activations (they depend on batch and length):
# full fine-tuning with AdamW keeps, per parameter, the weight, its gradient and two
# moments: 16 bytes in float32. LoRA keeps the frozen weights (2 bytes each in
# bfloat16) and pays the 16 bytes only for the adapters. QLoRA stores the frozen
# weights in 4 bits plus a scale and an offset per group of 32 (float32 in our GGUF
# model: 4 + 64/32 = 6 bits = 0.75 bytes per weight).

# %%
def training_gb(frozen: int, trainable: int, bytes_per_frozen: float) -> float:
    """Weights, gradients and AdamW moments: 16 bytes per trainable parameter."""
    return (frozen * bytes_per_frozen + trainable * 16) / 1e9


methods = {"full, float32 AdamW": lambda n, t: training_gb(0, n, 0),
           "LoRA, bfloat16 base": lambda n, t: training_gb(n, t, 2),
           "QLoRA, 4-bit base": lambda n, t: training_gb(n, t, 0.75)}
models = {"SmolLM2-135M": smol, "7B (LLaMA-2 shape)": llama7b}
table = {(m, name): f(full_count(c), lora_count(c, 8, ALL))
         for m, c in models.items() for name, f in methods.items()}
for (m, name), gb in table.items():
    print(f"{m:>18} | {name:<20} {gb:8.2f} GB")

fig, ax = plt.subplots(figsize=(7, 3.2))
width = 0.27
for k, name in enumerate(methods):
    values = [table[(m, name)] for m in models]
    bars = ax.bar(np.arange(len(models)) + (k - 1) * width, values, width, label=name)
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
ax.axhline(16, color="gray", ls="--", lw=1)
ax.text(1.45, 17, "16 GB laptop", ha="right", fontsize=8, color="gray")
ax.set_yscale("log")
ax.set_xticks(range(len(models)), list(models))
ax.set_ylabel("GB (weights + grads + AdamW)")
ax.set_title("Training memory without activations, LoRA rank 8 on all projections")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

# %% [markdown]
# A 7B model needs ~108 GB to fine-tune in full (more than most single GPUs hold), and
# under 6 GB with QLoRA: that is why LoRA made fine-tuning a laptop job.
#
# ## 9.5 `apply_lora` on the real model
#
# `apply_lora(model, rank, alpha, targets, layers)` freezes the whole model, wraps the
# chosen projections of the last `layers` blocks (default: all), unfreezes only the
# adapters and returns the number of trainable parameters. Its counts agree with the
# formula:

# %%
mx.random.seed(0)
trainable = apply_lora(model, rank=8, alpha=16, targets="all")
assert trainable == lora_count(smol, 8, ALL)
names = [k for k, _ in tree_flatten(model.trainable_parameters())]
assert all(k.endswith((".lora_a", ".lora_b")) for k in names)
print(f"{trainable:,} trainable parameters in {len(lora_layers(model))} LoRA layers,",
      f"e.g. {names[0]}")
assert all(isinstance(m.base, nn.QuantizedLinear) for _, m in lora_layers(model))

# %% [markdown]
# The memory of *this* model, measured from its arrays: the frozen 4-bit weights, what
# they would take in float32, and the adapters with their gradients and AdamW moments.

# %%
frozen = {k: v for k, v in tree_flatten(model.parameters())
          if not k.endswith((".lora_a", ".lora_b"))}
adapters = {k: v for k, v in tree_flatten(model.trainable_parameters())}
frozen_mb = sum(v.nbytes for v in frozen.values()) / 1e6
float32_mb = 4 * full_count(smol) / 1e6
adapter_mb = sum(v.nbytes for v in adapters.values()) / 1e6
print(f"frozen model: {frozen_mb:.0f} MB packed (float32 would be {float32_mb:.0f} MB)")
print(f"adapters: {adapter_mb:.1f} MB, + gradients and AdamW moments: "
      f"{4 * adapter_mb:.1f} MB in training")

# %% [markdown]
# ## 9.6 Training: the same trainer, on rows with a mask
#
# `mlxllm.sft.make_trainer` builds [Chapter 6](06_training.ipynb)'s `Trainer` over the
# rows of §9.2. Given (N, 2, T) rows instead of a token stream, the trainer draws whole
# rows and averages the loss over the targets that are not `IGNORE`
# (`masked_cross_entropy`); the step is the same compiled function, with the same warmup
# and cosine schedule, gradient clipping and accumulation. `nn.value_and_grad`
# differentiates the *trainable* parameters only, and the optimizer is built for those,
# so only the adapters move.
#
# One training step of the real model is too slow for the 2-core CPU that tests this
# book (§9.8's recorded run gives the training time on a GPU), so the demonstration here
# trains LoRA on a *tiny random* model with the real tokenizer and chat template: it
# cannot learn dates in five steps, but the machinery is the same, its loss on the
# training batch must fall, and only its adapters may change. The real run is §9.8's.

# %% tags=["nbval-ignore-output"]
mx.random.seed(0)
small = TransformerLM(ModelConfig.llama(vocab_size=tokenizer.vocab_size,
                                        context_length=128, dims=64, n_layers=2,
                                        n_heads=4, n_kv_heads=2, ffn_dims=128))
apply_lora(small, rank=8, alpha=16, targets="all")
config = sft.finetune_config(steps=5, batch_size=4, lr=3e-2, warmup=0, eval_batches=1)
trainer = sft.make_trainer(small, tokenizer, splits["train"][:4], splits["valid"][:1],
                           config)
inputs, targets = mx.array(trainer.train_ids[:, 0]), mx.array(trainer.train_ids[:, 1])
before_params = {k: np.array(v) for k, v in tree_flatten(small.parameters())}
loss_before = masked_cross_entropy(small(inputs), targets).item()
losses = [trainer.train_step() for _ in range(config.steps)]  # the compiled step
loss_after = masked_cross_entropy(small(inputs), targets).item()
print(f"rows {trainer.train_ids.shape}; loss on the training batch "
      f"{loss_before:.2f} → {loss_after:.2f}; step losses",
      [round(v, 2) for v in losses])
assert loss_after < loss_before
changed = [k for k, v in tree_flatten(small.parameters())
           if not np.array_equal(np.array(v), before_params[k])]
assert changed and all(k.endswith((".lora_a", ".lora_b")) for k in changed)

# %% [markdown]
# The adapters can be saved alone (`save_adapters`: §9.5's adapter arrays as
# safetensors, and a small JSON config, each written atomically) and applied to a fresh
# copy of the base model (`load_adapters`), or merged into it: `merge_lora` replaces
# each wrapped layer by one dense `nn.Linear` holding W + (α/r)·B A. For a 4-bit base,
# merging dequantizes W and keeps the merged layer in float: re-quantizing would round
# the small update away. Here on a tiny random 4-bit model of two blocks, so that it
# stays quick:

# %%
tiny = TransformerLM(ModelConfig.llama(vocab_size=64, context_length=32, dims=64,
                                       n_layers=2, n_heads=4, n_kv_heads=2,
                                       ffn_dims=128))
nn.quantize(tiny, group_size=32, bits=4)
apply_lora(tiny, rank=4, alpha=8, targets="all")
for _, wrapped in lora_layers(tiny):  # pretend the adapters were trained
    wrapped.lora_b = 0.05 * mx.random.normal(wrapped.lora_b.shape)
probe = mx.array([[1, 2, 3, 4, 5, 6]])
with_adapters = tiny(probe)
print("merged layers:", merge_lora(tiny))
assert_close(tiny(probe), with_adapters, what="merged vs adapters")

# %% [markdown]
# ## 9.7 The whole run: `mlxllm finetune`
#
# The command does it end to end: load the model, measure the base model's exact match
# on the test conversations (greedy decoding, stopped at the end-of-turn token, answer
# compared as a string), apply LoRA, train, save the adapters, measure again, ask one
# general question, and write everything to a JSON file:
#
# ```
# python -m mlxllm.tasks dates --out data/dates --train 2000 --valid 100 --test 150
# mlxllm finetune smollm2-135m-instruct --data data/dates/train.jsonl \
#     --valid data/dates/valid.jsonl --eval data/dates/test.jsonl --out runs/dates \
#     --lora-rank 8 --lora-alpha 16 --lora-targets all --steps 300 --batch-size 16
# mlxllm chat smollm2-135m-instruct --adapter runs/dates --temperature 0
# ```
#
# `scripts/finetune_run.sh` is the recorded run (`QUICK=1` makes it tiny, for a CPU).
# Exact match by greedy decoding is strict on purpose: "2021-03-05." or
# "The date is 2021-03-05" count as wrong, because a program that consumes the answer
# would fail on them.
#
# ## 9.8 Before and after: the recorded run
#
# The run below was made on a GPU by `scripts/finetune_run.sh` and saved in
# `book/results/`; this page reads the newest one.

# %%
recorded = sorted(Path("results").glob("finetune_*.json"))
if not recorded:
    print("not recorded yet: run scripts/finetune_run.sh on a GPU; it writes "
          "book/results/finetune_<date>.json")
else:
    run = json.loads(recorded[-1].read_text())
    sizes = run["split_sizes"]
    print(f"{recorded[-1].name}: {run['machine']}, MLX {run['mlx']}")
    print(f"splits: {sizes['train']} train / {sizes['valid']} valid / "
          f"{sizes['test']} test; {run['steps']} steps of {run['batch_size']}; "
          f"{run['trainable_parameters']:,} trainable parameters "
          f"({run['trainable_parameters'] / run['model_parameters']:.2%})")
    print(f"exact match on the test split: base {run['base_accuracy']:.1%} → "
          f"fine-tuned {run['finetuned_accuracy']:.1%}")
    print(f"time: training {run['train_seconds']} s, whole run "
          f"{run['wall_seconds']} s")
    print(f"{run['general_question']!r} → base: {run['general_answer_base']!r}; "
          f"fine-tuned: {run['general_answer']!r}")
    for example in run["examples"][:3]:
        print(f"  {example['prompt'].removeprefix(tasks.INSTRUCTION)!r}: base "
              f"{example['base']!r}, fine-tuned {example['finetuned']!r}")
    assert run["finetuned_accuracy"] >= run["base_accuracy"] + 0.40

# %% [markdown]
# The task was learned (from no correct answer to nearly all), and something was lost:
# in the recorded run, the fine-tuned model answers the general question with a date.
# 300 steps on 2,000 date conversations, with adapters on every projection of all 30
# layers, drove the training loss nearly to zero (the `losses` field of the results
# file): the adapters now turn every question into the one task they have seen. This is
# **catastrophic forgetting** in its plainest form, and LoRA does not prevent it; it
# only makes it reversible: the base weights are untouched, so the same model without
# `--adapter` answers as before. The usual remedies, which this run does not try: mix
# general conversations into the training data, stop early on a validation set that
# includes them, or adapt fewer layers with a smaller rank and learning rate, and
# measure a set of general questions before and after, as the run measures one.

# %% [markdown]
# ## What we built
#
# - **`mlxllm.lora`**: `LoRALinear` (y = base(x) + (α/r)·(x Aᵀ) Bᵀ, B zero at the start,
#   around `nn.Linear` or a 4-bit `nn.QuantizedLinear`); `apply_lora(model, rank,
#   alpha, targets=("q_proj", "v_proj") or "all", layers=None)` → trainable count, the
#   rest frozen; `merge_lora` (dense float layers; a quantized base is dequantized);
#   `save_adapters` / `load_adapters` (safetensors + `adapter_config.json`).
# - **QLoRA**: the same on the 4-bit model; gradients reach the adapters through
#   `mx.quantized_matmul` and equal those of the dequantized weights.
# - **`mlxllm.sft`**: chat JSONL in and out, `render` (ids + an exact assistant-token
#   mask from the chat template), `make_rows` (right-padded rows, `IGNORE` targets),
#   `make_trainer` ([Chapter 6](06_training.ipynb)'s `Trainer` on rows, masked loss,
#   trainable parameters only), `exact_match` (batched greedy decoding, stopped at end
#   of turn).
# - **`mlxllm.tasks`**: the date task, seeded, with disjoint splits.
# - **`mlxllm finetune MODEL --data ... --eval ... --out ...`** and
#   **`mlxllm chat MODEL --adapter DIR`**; `scripts/finetune_run.sh` records a run.
# - Measured on this page: LoRA by hand equals the package on a real 4-bit layer;
#   QLoRA gradients equal dense ones; a merged model equals base + adapters; 1.8% of
#   SmolLM2-135M's parameters train with all projections at rank 8 (0.34% with q and
#   v only); a few compiled steps lower the loss on the answer tokens while only the
#   adapters change.
#
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 9.1 (count).** How many parameters does LoRA of rank 16 on the MLP
# projections only (gate, up, down) of SmolLM2-135M train? Work it out from the
# shapes, then check with `apply_lora` on a fresh model.

# %% tags=["hide-input"]
# 30 blocks × 16 × ((576 + 1536) + (576 + 1536) + (1536 + 576)) = 30 × 16 × 6336
expected = 30 * 16 * 3 * (576 + 1536)
fresh, _ = mlxllm.load_pretrained("smollm2-135m-instruct")
assert apply_lora(fresh, rank=16, alpha=32,
                  targets=("gate_proj", "up_proj", "down_proj")) == expected
print(f"{expected:,} trainable parameters")

# %% [markdown]
# **Exercise 9.2 (predict, then run).** A conversation has two exchanges: the user
# asks two dates in turn and the assistant answers each. How many tokens carry loss,
# and what do they decode to?

# %% tags=["hide-input"]
two = splits["test"][0] + splits["test"][1]
ids, learn = sft.render(tokenizer, two)
learned = tokenizer.decode([i for i, keep in zip(ids, learn) if keep])
# both answers, each with its end-of-turn token and the newline after it
assert learned == "".join(m["content"] + "<|im_end|>\n" for m in two[1::2])
assert sum(learn) == 2 * 12  # 10 characters, one token each, + <|im_end|> + "\n"
print(sum(learn), repr(learned))

# %% [markdown]
# **Exercise 9.3 (why B starts at zero).** `fresh` from Exercise 9.1 carries MLP
# adapters with B = 0. Check that it predicts exactly what the base model predicts for
# the first token of the answer to "What is the capital of France?". Then give every B
# random values of the same kind as A's (uniform, bound 1/√r): how far does the
# next-token distribution move (total variation distance, ½ Σ|p − q|)?

# %% tags=["hide-input"]
question = tokenizer.apply_chat_template(
    [{"role": "user", "content": "What is the capital of France?"}])
question_ids = mx.array([tokenizer.encode(question, allowed_special="all")])
first_logits = fresh(question_ids)[0, -1]
base_model, _ = mlxllm.load_pretrained("smollm2-135m-instruct")
assert mx.array_equal(first_logits, base_model(question_ids)[0, -1])  # B = 0: exact
mx.random.seed(1)
for _, wrapped in lora_layers(fresh):
    wrapped.lora_b = mx.random.uniform(-1, 1, wrapped.lora_b.shape) / wrapped.rank**0.5
p, q = mx.softmax(first_logits), mx.softmax(fresh(question_ids)[0, -1])
distance = 0.5 * mx.abs(p - q).sum().item()
# far from 0: the adapters would overwrite what pretraining taught before the first
# step; with B = 0 the update starts at exactly nothing and grows only as it helps
assert distance > 0.1
print(f"total variation between the next-token distributions: {distance:.1f}")
