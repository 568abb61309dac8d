# %% [markdown]
# # 5. Next-token prediction: from vectors to probabilities, a loss, and generated text
#
# ```
# text ──tokenization──▶ token ids ──embedding──▶ T×C vectors ──N × transformer block──▶ T×C ──prediction──▶ T×V
#                                                                                                ^^^^^^^^^^
# ```
#
# Chapters 2–4 turned `T` token ids into `T` vectors of width `C`, each of which has seen its own token
# and the tokens before it. This chapter finishes the model. One matrix, the **LM head**, turns each
# vector into `V` scores (*logits*), one per vocabulary token; a softmax makes them a probability
# distribution over **the next token**. From there:
#
# - **training** compares the distribution at position `t` with the token that actually came at `t + 1`
#   (the *shifted targets*) using the **cross-entropy** loss;
# - **generation** draws a token from the distribution at the last position (greedily, or with a
#   temperature, top-k, top-p or min-p), appends it, and repeats, with a **KV cache** so that each step
#   costs one token's worth of work instead of the whole sequence's.
#
# Shapes: `B` batch, `T` tokens, `C` model width, `V` vocabulary size.
#
# Everything here runs on an **untrained** model (random weights, GPT-2's initialisation): its
# predictions are nearly uniform, which is exactly what we check. Chapter 6 trains it.

# %%
import inspect
import math
import time

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

import mlxllm
import mlxllm.data
from mlxllm import ModelConfig, TransformerLM, cross_entropy, generate, probabilities, sample, sampling_logits, stream_text
from mlxllm.tokenizer import Tokenizer

tokenizer = Tokenizer.from_gpt2_files(mlxllm.data.get_path("gpt2-vocab"), mlxllm.data.get_path("gpt2-merges"))
print("GPT-2 tokenizer, vocabulary size", tokenizer.vocab_size)

# %% [markdown]
# ## 5.1 The whole model, and the LM head: T×C → T×V
#
# `TransformerLM` strings the previous chapters together: token embedding (plus learned positions for
# GPT-2, or RoPE inside attention for LLaMA), `n_layers` transformer blocks, a final norm, and the head.
# We take a GPT-2-style model, shrunk to 2 layers of width 64 but with GPT-2's real vocabulary, so that
# it speaks the tokenizer's language.

# %%
mx.random.seed(0)
config = ModelConfig.gpt2(vocab_size=tokenizer.vocab_size, context_length=256, dims=64, n_layers=2, n_heads=4)
model = TransformerLM(config)
mx.eval(model.parameters())
print(config)
print(f"{model.num_parameters():,} parameters, {model.num_parameters(include_embeddings=False):,} without embeddings")

# %% [markdown]
# The forward pass, in two halves. `hidden_states` runs everything up to the final norm and returns one
# `C`-vector per position; `logits` is the head. Together they are `model(ids)`.

# %%
prompt = "The cat sat on the mat"
ids = mx.array([tokenizer.encode(prompt)])  # (B, T) = (1, 6)
hidden = model.hidden_states(ids)  # (B, T, C)
logits = model(ids)  # (B, T, V)
print("ids    ", ids.shape, [tokenizer.decode([i]) for i in ids[0].tolist()])
print("hidden ", hidden.shape)
print("logits ", logits.shape)

# %% [markdown]
# The head is a linear map `C → V`: a `(V, C)` matrix, just the shape of the token embedding. GPT-2
# **ties** the two: the head *is* the embedding matrix, so the score of token `v` is the dot product of
# the hidden vector with the very vector that represents `v` at the input. That saves `V × C` parameters
# (in this small model, most of them) and, for small models, usually helps. LLaMA-style models
# keep a separate head. With tying there is no second matrix at all, not a copy that could drift apart:

# %%
by_hand = hidden @ model.token_embedding.weight.T  # (B, T, C) @ (C, V) -> (B, T, V)
assert mx.allclose(by_hand, logits, atol=1e-5), "tied head = hidden states times the embedding matrix"
assert "head" not in model  # no separate head parameter
untied = TransformerLM(ModelConfig.gpt2(**{**config.to_dict(), "tie_embeddings": False}))
print("tied head == hidden @ embedding.T:", True)
print(f"untied: {untied.num_parameters():,} parameters (+{untied.num_parameters() - model.num_parameters():,} "
      f"= V × C = {config.vocab_size * config.dims:,}); the embedding is "
      f"{config.vocab_size * config.dims / model.num_parameters():.0%} of the tied model")
assert untied.num_parameters() - model.num_parameters() == config.vocab_size * config.dims
print(inspect.getsource(TransformerLM.logits))

# %% [markdown]
# ## 5.2 A distribution over the next token, at every position
#
# A softmax turns each row of logits into probabilities: `p = exp(z) / Σ exp(z)`, shape `(B, T, V)`.
# Because attention is causal, the row at position `t` has seen tokens `0..t` only: it is the model's
# guess for token `t + 1`. One forward pass over `T` tokens therefore gives `T` predictions at once.
#
# Below: the five most likely next tokens after each prefix of the prompt. The model is **untrained**, so
# every probability sits near the uniform `1 / V ≈ 2.0e-5` and the "top" tokens are arbitrary.

# %%
probs = probabilities(logits)[0]  # (T, V)
assert mx.allclose(probs.sum(axis=-1), mx.ones(probs.shape[0]), atol=1e-5)
tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]


def plot_top_next_tokens(probs: mx.array, title: str, k: int = 5) -> None:
    fig, axes = plt.subplots(1, len(tokens), figsize=(12, 2.2), sharex=True)
    for t, ax in enumerate(axes):
        top = np.argsort(-np.array(probs[t]))[:k]
        ax.barh(range(k)[::-1], np.array(probs[t])[top], color="tab:blue")
        ax.set_yticks(range(k)[::-1], [repr(tokenizer.decode([int(i)])) for i in top], fontsize=7)
        ax.set_title("…" + "".join(tokens[max(0, t - 1) : t + 1]), fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    plt.show()


plot_top_next_tokens(probs, "untrained model: top-5 next tokens after each prefix (probabilities)")
print(f"uniform 1/V = {1 / config.vocab_size:.3e};  largest probability anywhere = {probs.max().item():.3e}")
assert probs.max().item() < 3 / config.vocab_size  # nearly uniform
echoes = sum(int(i) == int(j) for i, j in zip(mx.argmax(probs, axis=-1).tolist(), ids[0].tolist()))
print(f"positions whose top guess is the token it just read: {echoes} of {ids.shape[1]}")
assert echoes >= ids.shape[1] - 2

# %% [markdown]
# One pattern is not arbitrary: at most positions the top guess is **the token just read**. At
# initialisation the blocks add only small changes to the residual stream, so the final hidden vector is
# mostly the token's own embedding `e`, and with a tied head its score against itself, `e·e = |e|²`, beats
# its score against any other token, `e·e'`, which is near 0 for random vectors. Training has to unlearn
# this echo.
#
# ## 5.3 Shifted targets: the output at t predicts token t + 1
#
# To train on a piece of text we need, for every position, the right answer: the token that follows.
# That is the same sequence shifted left by one. A sequence of `T + 1` tokens gives `T` inputs and `T`
# targets, and `T` training examples from one forward pass:

# %%
text_ids = tokenizer.encode(prompt + ".")
inputs, targets = mx.array([text_ids[:-1]]), mx.array([text_ids[1:]])  # (1, T) each
for t in range(inputs.shape[1]):
    seen = "".join(tokenizer.decode([i]) for i in text_ids[: t + 1])
    print(f"position {t}: sees {seen!r:26} → target {tokenizer.decode([text_ids[t + 1]])!r}")

# %% [markdown]
# ## 5.4 Cross-entropy, by hand and with the package
#
# The loss at one position is the negative log-probability the model gave the right token,
# $-\log p_t[y_t] = \log \sum_v e^{z_{t,v}} - z_{t, y_t}$ (the second form never computes a tiny
# probability, so it cannot underflow). The loss of a batch is the mean over all positions, in **nats
# per token**. First with a Python loop over positions, then vectorised:

# %%
logits = model(inputs)  # (1, T, V)
per_position = []
for t in range(inputs.shape[1]):
    z, y = logits[0, t], targets[0, t].item()
    per_position.append((mx.logsumexp(z) - z[y]).item())  # −log softmax(z)[y]
by_hand = sum(per_position) / len(per_position)
ours = cross_entropy(logits, targets).item()
print("per position:", [round(v, 4) for v in per_position])
print(f"by hand {by_hand:.4f}   mlxllm.cross_entropy {ours:.4f}")
assert abs(by_hand - ours) < 1e-4
print(inspect.getsource(cross_entropy))

# %% [markdown]
# MLX has its own `nn.losses.cross_entropy`, with one trap: its default is `reduction="none"`, one loss per
# position, not the mean. Passing that to `value_and_grad` fails (a gradient needs a scalar), and
# summing it by accident scales the loss, and so the learning rate, with `B × T`. Ask for the mean:

# %%
unreduced = nn.losses.cross_entropy(logits, targets)  # default reduction="none"
mean = nn.losses.cross_entropy(logits, targets, reduction="mean")
print("reduction='none':", unreduced.shape, "   reduction='mean':", mean.shape, round(mean.item(), 4))
assert unreduced.shape == targets.shape
assert abs(mean.item() - ours) < 1e-4 and mx.allclose(unreduced[0], mx.array(per_position), atol=1e-4)

# %% [markdown]
# ### The loss at initialisation is ln V
#
# A model that knows nothing should spread its bet evenly: `p = 1/V` for every token, a loss of
# $\ln V = \ln 50257 \approx 10.825$ nats. GPT-2's initialisation (weights ~ N(0, 0.02), residual
# projections scaled by $1/\sqrt{2 n_\text{layers}}$) keeps the logits small, so an untrained model is
# close to that. A loss far *above* ln V at step 0 means confident wrong guesses, a bad init, and wasted
# early training. We check on real text (the first 2,000 characters of Tiny Shakespeare):

# %%
shakespeare = mlxllm.data.get_path("tinyshakespeare").read_text(encoding="utf-8")[:2000]
data = tokenizer.encode(shakespeare)
T_window = 128
windows = mx.array([data[i : i + T_window + 1] for i in range(0, 4 * T_window, T_window)])  # (4, T+1)
loss = cross_entropy(model(windows[:, :-1]), windows[:, 1:]).item()
print(f"loss at init {loss:.4f} nats/token,  ln V = {math.log(config.vocab_size):.4f}")
assert abs(loss - math.log(config.vocab_size)) < 0.05

# %% [markdown]
# Nats per token depend on the tokenizer: a tokenizer with longer tokens has fewer, harder predictions.
# **Bits per byte** removes that: total nats over the text, divided by its UTF-8 bytes and by ln 2.
# Models with different tokenizers can be compared with it (Chapter 6 uses it).

# %%
n_tokens = 4 * T_window
n_bytes = len(tokenizer.decode(data[: n_tokens]).encode("utf-8"))
print(f"{n_tokens} tokens = {n_bytes} bytes ({n_bytes / n_tokens:.2f} bytes/token): "
      f"{mlxllm.bits_per_byte(loss, n_tokens, n_bytes):.3f} bits per byte at init")
assert abs(mlxllm.bits_per_byte(loss, n_tokens, n_bytes) - loss * n_tokens / n_bytes / math.log(2)) < 1e-12

# %% [markdown]
# ### A glimpse of learning
#
# Chapter 6 is about training; here, 40 steps of Adam on our one sentence, to see the loss fall from
# ln V and the next-token bars of 5.2 move to the right answers. (Memorising one sentence is not
# learning a language, but the mechanics are the same.) The losses depend on the hardware's floating
# point, so the printed numbers are not compared when the book is tested; the asserts are.

# %% tags=["nbval-ignore-output"]
mx.random.seed(0)
student = TransformerLM(config)
optimizer = optim.Adam(learning_rate=3e-3)
loss_and_grad = nn.value_and_grad(student, lambda m: cross_entropy(m(inputs), targets))
losses = []
for step in range(40):
    step_loss, grads = loss_and_grad(student)
    optimizer.update(student, grads)
    mx.eval(student.parameters(), optimizer.state)
    losses.append(step_loss.item())
print(f"loss: step 0 {losses[0]:.3f} (ln V = {math.log(config.vocab_size):.3f}), step 39 {losses[-1]:.3f}")
learned = probabilities(student(inputs))[0]  # (T, V)
plot_top_next_tokens(learned, "after 40 steps on this one sentence: top-5 next tokens")
assert abs(losses[0] - math.log(config.vocab_size)) < 0.1 and losses[-1] < 0.5
assert mx.argmax(learned, axis=-1).tolist() == targets[0].tolist()  # every position now predicts t + 1

# %% [markdown]
# ## 5.5 Choosing the next token: greedy, temperature, top-k, top-p, min-p
#
# Generation takes the logits at the **last** position and picks a token. The strategies, all in
# `mlxllm.sample` (the distribution it draws from is `softmax(sampling_logits(...))`):
#
# - **greedy** (`temperature=0`): always the argmax. Deterministic, and prone to loops.
# - **temperature** τ: sample from `softmax(z / τ)`. τ < 1 sharpens the distribution, τ > 1 flattens it.
# - **top-k**: keep only the `k` most likely tokens.
# - **top-p** (nucleus): keep the smallest set of most likely tokens whose total probability reaches `p`:
#   few tokens when the model is sure, many when it is not.
# - **min-p**: keep tokens at least `min_p` times as likely as the most likely one.
#
# An untrained model's near-uniform distribution would make every panel look the same, so we use a
# hand-made one: eight candidates for "The cat sat on the ___".

# %%
words = ["mat", "floor", "sofa", "bed", "roof", "table", "moon", "idea"]
z = mx.array([3.0, 2.2, 1.8, 1.5, 0.6, 0.4, -0.5, -1.5])
p = np.array(mx.softmax(z))
print("p =", [round(float(v), 3) for v in p])

settings = {
    "τ = 1": dict(),
    "τ = 0.5": dict(temperature=0.5),
    "τ = 2": dict(temperature=2.0),
    "top_k = 3": dict(top_k=3),
    "top_p = 0.9": dict(top_p=0.9),
    "min_p = 0.2": dict(min_p=0.2),
}
fig, axes = plt.subplots(1, len(settings), figsize=(12, 2.2), sharey=True)
for ax, (name, kwargs) in zip(axes, settings.items()):
    q = np.array(mx.softmax(sampling_logits(z, **kwargs)))
    ax.bar(range(len(words)), q, color=["tab:blue" if v > 0 else "lightgray" for v in q])
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=7)
    ax.set_title(name, fontsize=9)
axes[0].set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# Each filter is checked against the definition, computed here from the sorted probabilities:

# %%
order = np.argsort(-p)  # most likely first
expected = {
    "top_k = 3": set(order[:3]),
    # top-p: a token is kept while the mass *before* it is still below p
    "top_p = 0.9": {i for rank, i in enumerate(order) if p[order[:rank]].sum() < 0.9},
    "min_p = 0.2": {i for i in range(len(p)) if p[i] >= 0.2 * p.max()},
}
for name, kept in expected.items():
    q = np.array(mx.softmax(sampling_logits(z, **settings[name])))
    assert set(np.flatnonzero(q > 0)) == kept, name
    np.testing.assert_allclose(q[sorted(kept)], p[sorted(kept)] / p[sorted(kept)].sum(), rtol=1e-5)
    print(f"{name:12} keeps {[words[i] for i in sorted(kept)]}")
tempered = p ** (1 / 0.5) / (p ** (1 / 0.5)).sum()  # softmax(z / τ) ∝ p^(1/τ)
np.testing.assert_allclose(np.array(mx.softmax(sampling_logits(z, temperature=0.5))), tempered, rtol=1e-5)

# %% [markdown]
# And `sample` really draws from that distribution: 20,000 draws in one batched call, with an explicit
# PRNG key (same key, same draws), against the softmax. Each frequency has a standard deviation of at
# most $\sqrt{0.25 / 20000} \approx 0.0035$, so 0.015 is a > 4σ bound.

# %%
draws = np.array(sample(mx.broadcast_to(z, (20000, len(words))), key=mx.random.key(0)))  # (20000,)
frequencies = np.bincount(draws, minlength=len(words)) / len(draws)
for word, f_, p_ in zip(words, frequencies, p):
    print(f"{word:6} frequency {f_:.3f}   softmax {p_:.3f}")
assert np.abs(frequencies - p).max() < 0.015
assert (np.array(sample(mx.broadcast_to(z, (20000, 8)), key=mx.random.key(0))) == draws).all()  # reproducible
assert sample(z, temperature=0).item() == 0 and set(draws.tolist()) == set(range(8))
assert set(np.array(sample(mx.broadcast_to(z, (2000, 8)), top_k=3, key=mx.random.key(1))).tolist()) == expected["top_k = 3"]
print(inspect.getsource(sampling_logits))

# %% [markdown]
# ## 5.6 Generation
#
# `generate` is a Python generator: it yields token ids one at a time, so a caller can print them as
# they come. It feeds the prompt once (the *prefill*), then one token per step, with the KV cache of
# Chapter 3 in every layer. While the caller handles token `n`, token `n + 1` is already being computed
# (`mx.async_eval`). Our untrained model produces noise, of course, but noise in GPT-2's vocabulary. Greedy
# decoding shows its weakness at once: it falls into a loop.

# %%
prompt_ids = tokenizer.encode("Once upon a time")
greedy = list(generate(model, prompt_ids, 16, temperature=0))
print(repr(tokenizer.decode(greedy)))
assert len(greedy) == 16 and all(0 <= i < config.vocab_size for i in greedy)

# %% tags=["nbval-ignore-output"]
sampled = list(generate(model, prompt_ids, 16, temperature=1.0, top_p=0.95, seed=0))
print(repr(tokenizer.decode(sampled)))
assert sampled == list(generate(model, prompt_ids, 16, temperature=1.0, top_p=0.95, seed=0))  # a seed reproduces
assert sampled != greedy

# %% [markdown]
# Bad requests are refused when `generate` is called, before any work, with the reason:

# %%
for kwargs in (dict(prompt_ids=[], max_new_tokens=5), dict(prompt_ids=prompt_ids, max_new_tokens=300),
               dict(prompt_ids=[60000], max_new_tokens=5), dict(prompt_ids=prompt_ids, max_new_tokens=5, top_p=0.0),
               dict(prompt_ids="Once upon a time", max_new_tokens=5)):
    try:
        generate(model, **kwargs)
    except ValueError as error:
        print("ValueError:", error)
    else:
        raise AssertionError(f"{kwargs} should have been refused")

# %% [markdown]
# ### Streaming text without broken characters
#
# Byte-level BPE tokens are byte strings, and a character can be split across tokens: the llama emoji 🦙
# is four UTF-8 bytes, which GPT-2 (older than the emoji) spends three tokens on. Decoding each token on its own prints the
# replacement character `�` for the pieces. `stream_text` holds bytes back until they form whole characters:

# %%
emoji_ids = tokenizer.encode("MLX 🦙 猫")
print("tokens:", [tokenizer.decode_bytes([i]) for i in emoji_ids])
naive = [tokenizer.decode([i]) for i in emoji_ids]
streamed = list(stream_text(emoji_ids, tokenizer))
print("token by token:", naive)
print("stream_text:   ", streamed)
assert "".join(streamed) == "MLX 🦙 猫" and not any("\ufffd" in piece for piece in streamed)
assert any("\ufffd" in piece for piece in naive)

# %% [markdown]
# ## 5.7 The KV cache: why each decoding step is O(T)
#
# Without a cache, generating the token at position `t` means running the model over all `t` tokens again:
# every projection and MLP on `t` rows, O(t·C²), plus attention among all of them, O(t²·C), although the
# first `t − 1` rows give exactly what they gave last step. With the cache, a step runs the model on **one**
# row: O(C²) for the projections and MLP, plus O(t·C) to attend over `t` cached keys. Generating `N`
# tokens costs O(N²·C²) the first way and O(N·C² + N²·C) the second.
#
# First, the promise: greedy generation with the cache gives exactly the tokens of an argmax loop that
# recomputes everything every step (here past 256 tokens, where `KVCache` grows a second chunk). Both
# apply the head to the last position only: the other positions' logits would be thrown away.

# %%
start_ids = data[:200]
with_cache = list(generate(model, start_ids, 56, temperature=0))
ids_so_far = list(start_ids)
for _ in range(56):  # the plain loop: the whole sequence through the model, every step
    last = model.hidden_states(mx.array([ids_so_far]))[:, -1]  # (1, C): no cache, all tokens again
    ids_so_far.append(mx.argmax(model.logits(last)[0]).item())
assert with_cache == ids_so_far[200:]
print(f"cached generate == full-recompute argmax loop for {len(with_cache)} tokens, up to position {len(ids_so_far)}")

# %% [markdown]
# Then the cost of one step at sequence length `t`, both ways (the head is applied to the last position
# only in both, so that the difference is the cache alone). Timings depend on the machine, so they are not
# compared when the book is tested.

# %% tags=["nbval-ignore-output"]
def seconds(fn, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn())
        best = min(best, time.perf_counter() - start)
    return best


lengths = [16, 32, 64, 128, 192, 255]
full_ms, cached_ms = [], []
for t in lengths:
    sequence = mx.array([data[:t]])
    full_ms.append(1000 * seconds(lambda: model.logits(model.hidden_states(sequence)[:, -1])))
    cache = model.make_cache()
    mx.eval(model.hidden_states(sequence[:, :-1], cache=cache), [c.keys for c in cache])  # cache t − 1 tokens

    def one_cached_step():
        for c in cache:
            c.offset = t - 1  # rewind: measure the same step again
        return model.logits(model.hidden_states(sequence[:, -1:], cache=cache)[:, -1])

    cached_ms.append(1000 * seconds(one_cached_step))

fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(lengths, full_ms, "o-", label="recompute all t tokens")
ax.plot(lengths, cached_ms, "o-", label="KV cache: one new token")
ax.set_xlabel("sequence length t")
ax.set_ylabel("ms per generated token")
ax.legend(fontsize=8)
plt.show()
for t, f_ms, c_ms in zip(lengths, full_ms, cached_ms):
    print(f"t = {t:3}: recompute {f_ms:6.2f} ms   cached {c_ms:5.2f} ms")
assert full_ms[-1] > 2 * cached_ms[-1]  # at 255 tokens the cache saves most of the work

# %% [markdown]
# The package's `generate`, which puts it all together: it checks its arguments, then hands over to a
# generator that prefills and decodes.

# %%
print(inspect.getsource(generate))
print(inspect.getsource(mlxllm.prediction._decode))

# %% [markdown]
# How fast is it, against an independent implementation? `benchmarks/bench_generate.py` runs our
# `generate` and mlx-lm's `generate_step` on the same weights (a ~56M-parameter LLaMA-style model, greedy,
# asserting both produce the same tokens) and compares decode and prefill tokens per second, next to the
# memory-bandwidth bound: every decoded token reads every weight once, so tokens/s can never exceed
# bandwidth ÷ weight bytes. A run on the 2-core Linux CPU this book is tested on (MLX 0.32.4, float32,
# prompt 128 tokens, 64 new tokens, best of 6, the two implementations taking turns):
#
# | | mlxllm | mlx-lm | ratio of best | median paired ratio |
# | --- | ---: | ---: | ---: | ---: |
# | prefill tokens/s | 31.2 | 31.9 | 0.98 | 1.04 |
# | decode tokens/s | 14.4 | 13.9 | 1.04 | 1.01 |
# | prefill tokens per CPU-second | 46.3 | 45.5 | 1.02 | 1.03 |
# | decode tokens per CPU-second | 21.0 | 20.2 | 1.04 | 1.05 |
#
# Both run the same matrix products through the same MLX kernels, so they are level, within a few per
# cent (the CPU-time rows count only the benchmark's own work, which other jobs on a shared machine do
# not inflate). Two things keep ours level: the LM head is applied to the last position only, and the
# prompt's other tokens are run only for their keys and values (MLX never computes what nothing uses).
# Decoding reaches about a fifth of the bandwidth bound (14.4 GB/s ÷ 214 MiB = 64 tokens/s): with this
# CPU's slow matrix kernels decoding is compute-bound; on a Mac's GPU the bound is what decoding approaches.
#
# ## What we built
#
# - **`TransformerLM`** end to end: `hidden_states` (embedding → blocks → final norm, `(B, T, C)`) and the
#   **LM head** `logits` (`(B, T, V)`), tied to the embedding matrix itself for GPT-2-style models.
# - **`probabilities`**: a next-token distribution at every position; **shifted targets** make `T`
#   training examples out of `T + 1` tokens.
# - **`cross_entropy`** (mean nats per token), equal to the loop by hand and to
#   `nn.losses.cross_entropy(..., reduction="mean")`; loss at init ≈ ln V; **`bits_per_byte`**.
# - **`sampling_logits`** and **`sample`**: greedy, temperature, top-k, top-p, min-p, with explicit keys.
# - **`generate`**: prefill once, then one token per step with the KV cache, streamed; equal to the
#   full-recompute argmax loop. **`stream_text`**: never half a character.
#
# Chapter 6 trains this model on real text.
