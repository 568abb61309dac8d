# %% [markdown]
# # 5. Next-token prediction: from vectors to probabilities, a loss, and generated text
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
#                                                            ^^^^^^^^^^
# ```
#
# Chapters [2](02_embedding.ipynb)–[4](04_transformer_block.ipynb) turned `T` token ids
# into `T` vectors of width `C`, each of which has seen its own token and the tokens
# before it. This chapter finishes the model. One matrix, the **LM head**, turns each
# vector into `V` scores (*logits*), one per vocabulary token; a softmax makes them a
# probability distribution over **the next token**. From there:
#
# - **training** compares the distribution at position `t` with the token that actually
#   came at `t + 1` (the *shifted targets*) using the **cross-entropy** loss;
# - **generation** draws a token from the distribution at the last position (greedily,
#   or with a temperature, top-k, top-p or min-p), appends it, and repeats, with a **KV
#   cache** so that each step costs one token's worth of work instead of the whole
#   sequence's.
#
# Shapes: `B` batch, `T` tokens, `C` model width, `V` vocabulary size.
#
# Most of this runs on an **untrained** model (random weights, GPT-2's initialisation):
# its predictions are nearly uniform, which is exactly what we check.
# [Chapter 6](06_training.ipynb) trains it; in 5.2 a real pretrained model shows what a
# trained distribution looks like.
#
# The package splits this stage in two rooms: `mlxllm.prediction` (probabilities, the
# loss) and `mlxllm.generation` (sampling and the decoding loop). Many checks below
# compare two computations of the same floats through different kernels (a cached step
# against a full pass, a loop against a vectorised op); those use `assert_close` from
# `mlxllm.tolerances`, a bound relative to the largest value, because different kernels
# (and a GPU's TF32 matrix products) round differently, while ids stay exact.

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
from mlxllm import ModelConfig, TransformerLM
from mlxllm.generation import (generate, make_sampler, sample, sampling_logits,
                                stream_text)
from mlxllm.prediction import bits_per_byte, cross_entropy, probabilities
from mlxllm.tokenizer import Tokenizer
from mlxllm.tolerances import assert_close, bound

tokenizer = Tokenizer.from_gpt2_files(
    mlxllm.data.get_path("gpt2-vocab"), mlxllm.data.get_path("gpt2-merges")
)
print("GPT-2 tokenizer, vocabulary size", tokenizer.vocab_size)

# %% [markdown]
# ## 5.1 The whole model, and the LM head: T×C → T×V
#
# `TransformerLM` strings the previous chapters together: token embedding (plus learned
# positions for GPT-2, or RoPE inside attention for LLaMA), `n_layers` transformer
# blocks, a final norm, and the head. We take a GPT-2-style model, shrunk to 2 layers of
# width 64 but with GPT-2's real vocabulary, so that it speaks the tokenizer's language.

# %%
mx.random.seed(0)
config = ModelConfig.gpt2(
    vocab_size=tokenizer.vocab_size, context_length=256, dims=64, n_layers=2, n_heads=4
)
model = TransformerLM(config)
mx.eval(model.parameters())
print(config)
print(f"{model.num_parameters():,} parameters, "
      f"{model.num_parameters(include_embeddings=False):,} without embeddings")

# %% [markdown]
# The forward pass, in two halves. `hidden_states` runs everything up to the final norm
# and returns one `C`-vector per position; `logits` is the head. Together they are
# `model(ids)`.

# %%
prompt = "The cat sat on the mat"
ids = mx.array([tokenizer.encode(prompt)])  # (B, T) = (1, 6)
hidden = model.hidden_states(ids)  # (B, T, C)
logits = model(ids)  # (B, T, V)
print("ids    ", ids.shape, [tokenizer.decode([i]) for i in ids[0].tolist()])
print("hidden ", hidden.shape)
print("logits ", logits.shape)

# %% [markdown]
# The head is a linear map `C → V`: a `(V, C)` matrix, just the shape of the token
# embedding. GPT-2 **ties** the two: the head *is* the embedding matrix, so the score of
# token `v` is the dot product of the hidden vector with the very vector that represents
# `v` at the input. That saves `V × C` parameters (in this small model, most of them)
# and, for small models, usually helps. LLaMA-style models keep a separate head. With
# tying there is no second matrix at all, not a copy that could drift apart:

# %%
by_hand = hidden @ model.token_embedding.weight.T  # (B, T, C) @ (C, V) -> (B, T, V)
assert_close(by_hand, logits, what="hidden @ embedding.T and the tied head")
assert "head" not in model  # no separate head parameter
untied_config = ModelConfig.gpt2(**{**config.to_dict(), "tie_embeddings": False})
untied = TransformerLM(untied_config)
extra = untied.num_parameters() - model.num_parameters()
print("tied head == hidden @ embedding.T:", True)
print(f"untied: {untied.num_parameters():,} parameters (+{extra:,} "
      f"= V × C = {config.vocab_size * config.dims:,}); the embedding is "
      f"{extra / model.num_parameters():.0%} of the tied model")
assert extra == config.vocab_size * config.dims
# the head alone, TransformerLM.logits (mlxllm/model.py): (…, C) -> (…, V), on any
# positions; generation (§5.6) gives it the last position only
assert mx.array_equal(model.logits(hidden), logits)
last = model.logits(hidden[:, -1])  # (B, C) -> (B, V)
print("model.logits(hidden[:, -1])", last.shape)
assert_close(last, logits[:, -1], what="the head on the last position alone")

# %% [markdown]
# ## 5.2 A distribution over the next token, at every position
#
# A softmax turns each row of logits into probabilities: `p = exp(z) / Σ exp(z)`, shape
# `(B, T, V)`. Because attention is causal, the row at position `t` has seen tokens
# `0..t` only: it is the model's guess for token `t + 1`. One forward pass over `T`
# tokens therefore gives `T` predictions at once.
#
# Below: the five most likely next tokens after each prefix of the prompt. The model is
# **untrained**, so every probability sits near the uniform `1 / V ≈ 2.0e-5` and the
# "top" tokens are arbitrary.

# %%
probs = probabilities(logits)[0]  # (T, V)
assert_close(probs.sum(axis=-1), mx.ones(probs.shape[0]), what="row sums and 1")
tokens = [tokenizer.decode([i]) for i in ids[0].tolist()]


def plot_top_next_tokens(probs: mx.array, title: str, k: int = 5) -> None:
    rows = (len(tokens) + 2) // 3  # three panels a row: readable at the page's width
    fig, axes = plt.subplots(rows, 3, figsize=(8, 2 * rows), sharex=True)
    for ax in axes.flat[len(tokens):]:
        ax.set_visible(False)
    for t, ax in enumerate(axes.flat[: len(tokens)]):
        top = np.argsort(-np.array(probs[t]))[:k]
        ax.barh(range(k)[::-1], np.array(probs[t])[top], color="tab:blue")
        labels = [repr(tokenizer.decode([int(i)])) for i in top]
        ax.set_yticks(range(k)[::-1], labels, fontsize=9)
        ax.set_title("…" + "".join(tokens[max(0, t - 1) : t + 1]), fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    plt.show()


plot_top_next_tokens(probs, "untrained model: top-5 next tokens after each prefix")
print(f"uniform 1/V = {1 / config.vocab_size:.1e};  "
      f"largest probability anywhere = {probs.max().item():.1e}")
assert probs.max().item() < 3 / config.vocab_size  # nearly uniform
top_ids = mx.argmax(probs, axis=-1).tolist()
echoes = sum(int(i) == int(j) for i, j in zip(top_ids, ids[0].tolist()))
n_positions = ids.shape[1]
print(f"positions whose top guess is the token it just read: {echoes} of {n_positions}")
assert echoes >= ids.shape[1] - 2

# %% [markdown]
# One pattern is not arbitrary: at most positions the top guess is **the token just
# read**. At initialisation the blocks add only small changes to the residual stream, so
# the final hidden vector is mostly the token's own embedding `e`, and with a tied head
# its score against itself, `e·e = |e|²`, beats its score against any other token,
# `e·e'`, which is near 0 for random vectors. Training has to unlearn this echo.
#
# ### What a trained model predicts
#
# For contrast, the same question put to a real model: SmolLM2-135M-Instruct, a 135M-
# parameter LLaMA-style model trained by Hugging Face on about 2 trillion tokens
# {cite:p}`allal2025smollm2`, which
# the package loads offline from an installed 4-bit file
# ([Chapter 7](07_pretrained.ipynb) takes it apart). After "The capital of France is", a
# trained model does not spread its bet: one token takes most of the probability. Its
# probabilities are printed to 2 decimals, the digits that every backend computes alike.

# %%
real_model, real_tokenizer = mlxllm.load_pretrained("smollm2-135m-instruct")
question = "The capital of France is"
real_ids = mx.array([real_tokenizer.encode(question)])  # (1, T)
real_probs = probabilities(real_model(real_ids))[0, -1]  # (V,): the next token
random_probs = probabilities(model(mx.array([tokenizer.encode(question)])))[0, -1]
for name, p_next, tok in (("SmolLM2-135M (trained)", real_probs, real_tokenizer),
                          ("our model (untrained)", random_probs, tokenizer)):
    top5 = mx.argsort(-p_next)[:5].tolist()
    print(f"{name:23} after {question!r}:")
    for i in top5:
        print(f"    {tok.decode([i])!r:12} {p_next[i].item():.2f}")
assert real_tokenizer.decode([mx.argmax(real_probs).item()]) == " Paris"
assert real_probs.max().item() > 0.5 and random_probs.max().item() < 0.001

# %% [markdown]
# The untrained model's five best guesses each get 0.00 (about 2e-5: uniform); the
# trained one puts three quarters of its bet on " Paris", and its runners-up (" the", "
# London") are at least plausible continuations.
#
# ## 5.3 Shifted targets: the output at t predicts token t + 1
#
# To train on a piece of text we need, for every position, the right answer: the token
# that follows. That is the same sequence shifted left by one. A sequence of `T + 1`
# tokens gives `T` inputs and `T` targets, and `T` training examples from one forward
# pass:

# %%
text_ids = tokenizer.encode(prompt + ".")
inputs, targets = mx.array([text_ids[:-1]]), mx.array([text_ids[1:]])  # (1, T) each
for t in range(inputs.shape[1]):
    seen = "".join(tokenizer.decode([i]) for i in text_ids[: t + 1])
    target = tokenizer.decode([text_ids[t + 1]])
    print(f"position {t}: sees {seen!r:26} → target {target!r}")

# %% [markdown]
# ## 5.4 Cross-entropy, by hand and with the package
#
# The loss at one position is the negative log-probability the model gave the right
# token, $-\log p_t[y_t] = \log \sum_v e^{z_{t,v}} - z_{t, y_t}$ (the second form never
# computes a tiny probability, so it cannot underflow). The loss of a batch is the mean
# over all positions, in **nats per token**. First with a Python loop over positions,
# then vectorised (losses computed through matrix products are printed to 2-3
# significant digits: the digits every backend agrees on):

# %%
logits = model(inputs)  # (1, T, V)
per_position = []
for t in range(inputs.shape[1]):
    z, y = logits[0, t], targets[0, t].item()
    per_position.append((mx.logsumexp(z) - z[y]).item())  # −log softmax(z)[y]
by_hand = sum(per_position) / len(per_position)
ours = cross_entropy(logits, targets).item()
print("per position:", [round(v, 1) for v in per_position])
print(f"by hand {by_hand:.2f}   mlxllm.prediction.cross_entropy {ours:.2f}")
assert_close(ours, by_hand, what="the loop and cross_entropy")
print(inspect.getsource(cross_entropy))

# %% [markdown]
# MLX has its own `nn.losses.cross_entropy`, with one trap: its default is
# `reduction="none"`, one loss per position, not the mean. Passing that to
# `value_and_grad` fails (a gradient needs a scalar), and summing it by accident scales
# the loss, and so the learning rate, with `B × T`. Ask for the mean:

# %%
unreduced = nn.losses.cross_entropy(logits, targets)  # default reduction="none"
mean = nn.losses.cross_entropy(logits, targets, reduction="mean")
print("reduction='none':", unreduced.shape, "   reduction='mean':", mean.shape,
      round(mean.item(), 2))
assert unreduced.shape == targets.shape
assert_close(mean.item(), ours, what="nn.losses (mean) and ours")
assert_close(unreduced[0], mx.array(per_position), what="nn.losses (none) and the loop")

# %% [markdown]
# ### The loss at initialisation is ln V
#
# A model that knows nothing should spread its bet evenly: `p = 1/V` for every token, a
# loss of $\ln V = \ln 50257 \approx 10.825$ nats. GPT-2's initialisation (weights ~
# N(0, 0.02), residual projections scaled by $1/\sqrt{2 n_\text{layers}}$) keeps the
# logits small, so an untrained model is close to that. A loss far *above* ln V at step
# 0 means confident wrong guesses, a bad init, and wasted early training. We check on
# real text (the first 2,000 characters of Tiny Shakespeare):

# %%
shakespeare = mlxllm.data.get_path("tinyshakespeare").read_text(encoding="utf-8")[:2000]
data = tokenizer.encode(shakespeare)
T_window = 128
starts = range(0, 4 * T_window, T_window)
windows = mx.array([data[i : i + T_window + 1] for i in starts])  # (4, T + 1)
loss = cross_entropy(model(windows[:, :-1]), windows[:, 1:]).item()
print(f"loss at init {loss:.2f} nats/token,  ln V = {math.log(config.vocab_size):.4f}")
assert abs(loss - math.log(config.vocab_size)) < 0.05

# %% [markdown]
# A loss is easier to read turned back into a count: the **perplexity** `exp(loss)`. A
# model whose loss is `L` nats per token is, on average, as uncertain as a uniform
# choice among `exp(L)` tokens. The uniform model, with its loss of ln V, has a
# perplexity of exactly V; our untrained model's is a little below V; a loss of 3 nats
# would mean hesitating, on average, between about 20 tokens (e³ ≈ 20.1).

# %%
perplexity = math.exp(loss)
print(f"perplexity exp({loss:.2f}) is within 2% of V = {config.vocab_size:,}:",
      abs(perplexity / config.vocab_size - 1) < 0.02)
assert 0.98 * config.vocab_size < perplexity < config.vocab_size

# %% [markdown]
# Nats per token depend on the tokenizer: a tokenizer with longer tokens has fewer,
# harder predictions. **Bits per byte** removes that: total nats over the text, divided
# by its UTF-8 bytes and by ln 2. Models with different tokenizers can be compared with
# it ([Chapter 6](06_training.ipynb) uses it).

# %%
n_tokens = 4 * T_window
n_bytes = len(tokenizer.decode(data[: n_tokens]).encode("utf-8"))
bpb = bits_per_byte(loss, n_tokens, n_bytes)
print(f"{n_tokens} tokens = {n_bytes} bytes ({n_bytes / n_tokens:.2f} bytes/token): "
      f"{bpb:.2f} bits per byte at init")
assert bpb == loss * n_tokens / n_bytes / math.log(2)  # the same float64 formula

# %% [markdown]
# ### A glimpse of learning
#
# [Chapter 6](06_training.ipynb) is about training; here, 40 steps of Adam on our one
# sentence, to see the loss fall from ln V and the next-token bars of 5.2 move to the
# right answers. (Memorising one sentence is not learning a language, but the mechanics
# are the same.) The losses depend on the hardware's floating point, so the printed
# numbers are not compared when the book is tested; the asserts are.

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
print(f"loss: step 0 {losses[0]:.3f} (ln V = {math.log(config.vocab_size):.3f}), "
      f"step 39 {losses[-1]:.3f}")
learned = probabilities(student(inputs))[0]  # (T, V)
plot_top_next_tokens(learned, "after 40 steps on this one sentence: top-5 next tokens")
assert abs(losses[0] - math.log(config.vocab_size)) < 0.1 and losses[-1] < 0.5
# every position now predicts t + 1
assert mx.argmax(learned, axis=-1).tolist() == targets[0].tolist()

# %% [markdown]
# ## 5.5 Choosing the next token: greedy, temperature, top-k, top-p, min-p
#
# Generation takes the logits at the **last** position and picks a token. The
# strategies, all in `mlxllm.generation.sample` (the distribution it draws from is
# `softmax(sampling_logits(...))`; `make_sampler(...)` builds the same choice once, as a
# function, for the decoding loop):
#
# - **greedy** (`temperature=0`): always the argmax. Deterministic, and prone to loops.
# - **temperature** τ: sample from `softmax(z / τ)`. τ < 1 sharpens the distribution,
#   τ > 1 flattens it.
# - **top-k**: keep only the `k` most likely tokens.
# - **top-p** (nucleus): keep the smallest set of most likely tokens whose total
#   probability reaches `p`: few tokens when the model is sure, many when it is not.
# - **min-p**: keep tokens at least `min_p` times as likely as the most likely one.
#
# An untrained model's near-uniform distribution would make every panel look the same,
# so we use a hand-made one: eight candidates for "The cat sat on the ___".

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
rows = (len(settings) + 2) // 3  # three panels a row: readable at the page's width
fig, axes = plt.subplots(rows, 3, figsize=(8, 2.6 * rows), sharey=True)
for ax in axes.flat[len(settings):]:
    ax.set_visible(False)
for ax, (name, kwargs) in zip(axes.flat, settings.items()):
    q = np.array(mx.softmax(sampling_logits(z, **kwargs)))
    colors = ["tab:blue" if v > 0 else "lightgray" for v in q]
    ax.bar(range(len(words)), q, color=colors)
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=9)
    ax.set_title(name, fontsize=10)
for ax in axes[:, 0]:
    ax.set_ylabel("probability")
fig.tight_layout()
plt.show()

# %% [markdown]
# Each filter is checked against the definition, computed here from the sorted
# probabilities:

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
    kept = sorted(kept)
    assert_close(q[kept], p[kept] / p[kept].sum(), what=f"{name} and renormalised p")
    print(f"{name:12} keeps {[words[i] for i in kept]}")
tempered = p ** (1 / 0.5) / (p ** (1 / 0.5)).sum()  # softmax(z / τ) ∝ p^(1/τ)
at_half = np.array(mx.softmax(sampling_logits(z, temperature=0.5)))
assert_close(at_half, tempered, what="τ = 0.5 and p²/Σp²")

# %% [markdown]
# And `sample` really draws from that distribution: 20,000 draws in one batched call,
# with an explicit PRNG key (same key, same draws), against the softmax. Each frequency
# has a standard deviation of at most $\sqrt{0.25 / 20000} \approx 0.0035$, so 0.015 is
# a > 4σ bound.

# %%
many = mx.broadcast_to(z, (20000, len(words)))  # (20000, 8): z, 20,000 times
draws = np.array(sample(many, key=mx.random.key(0)))  # (20000,)
frequencies = np.bincount(draws, minlength=len(words)) / len(draws)
for word, f_, p_ in zip(words, frequencies, p):
    print(f"{word:6} frequency {f_:.3f}   softmax {p_:.3f}")
assert np.abs(frequencies - p).max() < 0.015
assert (np.array(sample(many, key=mx.random.key(0))) == draws).all()  # reproducible
assert sample(z, temperature=0).item() == 0 and set(draws.tolist()) == set(range(8))
top3_draws = np.array(sample(many[:2000], top_k=3, key=mx.random.key(1)))
assert set(top3_draws.tolist()) == expected["top_k = 3"]

# %% [markdown]
# ## 5.6 Generation
#
# `mlxllm.generation.generate` is a Python generator: it yields token ids one at a time,
# so a caller can print them as they come. It feeds the prompt once (the *prefill*),
# then one token per step, with the KV cache of [Chapter 3](03_attention.ipynb) in every
# layer. While the caller handles token `n`, token `n + 1` is already being computed
# (`mx.async_eval`). Our untrained model produces noise, of course, but noise in GPT-2's
# vocabulary. Greedy decoding shows its weakness at once: it falls into a loop.
#
# Greedy ids are exact integers, but an argmax is only as stable as the gap between the
# two best logits: a near-tie could go the other way under another backend's rounding.
# So the cell also checks that every step's top-2 gap is far above the kernels'
# rounding.

# %%
prompt_ids = tokenizer.encode("Hello, world")
greedy = list(generate(model, prompt_ids, 16, temperature=0))
print(repr(tokenizer.decode(greedy)))
assert len(greedy) == 16 and all(0 <= i < config.vocab_size for i in greedy)
# the logits each step saw, all at once: position t of the full sequence predicts t + 1
step_logits = model(mx.array([prompt_ids + greedy[:-1]]))[0, len(prompt_ids) - 1 :]
top2 = mx.sort(step_logits, axis=-1)[:, -2:]  # (16, 2)
gaps = top2[:, 1] - top2[:, 0]
assert mx.argmax(step_logits, axis=-1).tolist() == greedy
assert gaps.min().item() > 10 * bound() * mx.abs(step_logits).max().item()

# %% tags=["nbval-ignore-output"]
sampled = list(generate(model, prompt_ids, 16, temperature=1.0, top_p=0.95, seed=0))
print(repr(tokenizer.decode(sampled)))
again = list(generate(model, prompt_ids, 16, temperature=1.0, top_p=0.95, seed=0))
assert sampled == again  # a seed reproduces
assert sampled != greedy

# %% [markdown]
# Bad requests are refused when `generate` is called, before any work, with the reason:

# %%
for kwargs in (dict(prompt_ids=[], max_new_tokens=5),
               dict(prompt_ids=[0] * 300, max_new_tokens=5),
               dict(prompt_ids=[60000], max_new_tokens=5),
               dict(prompt_ids=prompt_ids, max_new_tokens=5, top_p=0.0),
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
# Byte-level BPE tokens are byte strings, and a character can be split across tokens:
# the llama emoji 🦙 is four UTF-8 bytes, which GPT-2 (older than the emoji) spends three
# tokens on. Decoding each token on its own prints the replacement character `�` for the
# pieces. `stream_text` holds bytes back until they form whole characters:

# %%
emoji_ids = tokenizer.encode("MLX 🦙 猫")
print("tokens:", [tokenizer.decode_bytes([i]) for i in emoji_ids])
naive = [tokenizer.decode([i]) for i in emoji_ids]
streamed = list(stream_text(emoji_ids, tokenizer))
print("token by token:", naive)
print("stream_text:   ", streamed)
assert "".join(streamed) == "MLX 🦙 猫"
assert not any("\ufffd" in piece for piece in streamed)
assert any("\ufffd" in piece for piece in naive)

# %% [markdown]
# ## 5.7 The KV cache: why each decoding step is O(T)
#
# Without a cache, generating the token at position `t` means running the model over all
# `t` tokens again: every projection and MLP on `t` rows, O(t·C²), plus attention among
# all of them, O(t²·C), although the first `t − 1` rows give exactly what they gave last
# step. With the cache, a step runs the model on **one** row: O(C²) for the projections
# and MLP, plus O(t·C) to attend over `t` cached keys. Generating `N` tokens costs
# O(N²·C²) the first way and O(N·C² + N²·C) the second.
#
# First, the promise: cached decoding computes the same logits as full recomputation.
# Greedy `generate` continues 200 tokens of Shakespeare to the model's whole context of
# 256 positions; we then replay those steps through the cache one token at a time, and
# compare each step's logits with those of one full pass over the final sequence (by
# causality, position `t` of the full pass is what recomputing everything at step `t`
# gives). The two go through different kernels (one row against a cache, all rows at
# once), so they agree to rounding, checked with `assert_close`; the tokens are the
# argmax of either, except where two logits tie within that rounding.

# %%
start_ids = data[:200]
with_cache = list(generate(model, start_ids, 56, temperature=0))
sequence = start_ids + with_cache  # 256 tokens: the full context

cache = model.make_cache()
cached_steps = [model(mx.array([start_ids]), cache=cache)[0, -1]]  # prefill: (V,)
for token in with_cache[:-1]:  # then one token per step, through the cache
    cached_steps.append(model(mx.array([[token]]), cache=cache)[0, -1])
cached_logits = mx.stack(cached_steps)  # (56, V)
full_logits = model(mx.array([sequence[:-1]]))[0, 199:]  # one pass, no cache: (56, V)

assert_close(cached_logits, full_logits, what="cached and full logits")
full_argmax = mx.argmax(full_logits, axis=-1).tolist()
top2 = mx.sort(full_logits, axis=-1)[:, -2:]
near_tie = (top2[:, 1] - top2[:, 0] < 10 * bound() * mx.abs(full_logits).max()).tolist()
assert all(a == b or tie for a, b, tie in zip(with_cache, full_argmax, near_tie))
print(f"cached decoding == full recomputation for {len(with_cache)} steps, "
      f"up to position {len(sequence)}: logits within the float32 bound, "
      f"greedy tokens equal to the full pass's argmax")

# %% [markdown]
# Then the cost of one step at sequence length `t`, both ways. The model above is a poor
# stopwatch: its layers are only 64 wide, so Python's per-call overhead and its
# 50,257-row head (which both ways apply to the last position only) would hide much of
# the difference. So we time a model whose layers do the work: 2 blocks of width 128, a
# 512-token vocabulary, a context of 512. Each timing is the median of 3 repeats, after
# a warm-up. The plot and the printed times are those of the machine that runs the cell;
# they change from machine to machine and from run to run, so they are not compared when
# the book is tested. The cell asserts about them only on a CPU, where arithmetic
# dominates: at 512 tokens, recomputing everything takes more than five times as long as
# one cached step, and more than three times as long as recomputing 64 tokens. On a GPU
# a model this small can be limited by the fixed cost of launching kernels rather than
# by arithmetic: the two curves may then lie close together, or even cross, and nothing
# is asserted; the cache's advantage shows with larger models and longer contexts.

# %% tags=["nbval-ignore-output"]
def milliseconds(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn`` (evaluated), after one warm-up call."""
    mx.eval(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(1000 * (time.perf_counter() - start))
    return float(np.median(times))


mx.random.seed(0)
timing_config = ModelConfig.gpt2(
    vocab_size=512, context_length=512, dims=128, n_layers=2, n_heads=4
)
timed = TransformerLM(timing_config)
mx.eval(timed.parameters())
tokens_512 = mx.array([[i % 512 for i in data[:512]]])  # (1, 512)

lengths = [64, 128, 256, 512]
full_ms, cached_ms = [], []
for t in lengths:
    sequence = tokens_512[:, :t]
    full = lambda: timed.logits(timed.hidden_states(sequence)[:, -1])  # noqa: E731
    full_ms.append(milliseconds(full))
    cache = timed.make_cache()
    mx.eval(timed.hidden_states(sequence[:, :-1], cache=cache), [c.keys for c in cache])

    def one_cached_step():
        for c in cache:
            c.offset = t - 1  # rewind: measure the same step again
        return timed.logits(timed.hidden_states(sequence[:, -1:], cache=cache)[:, -1])

    cached_ms.append(milliseconds(one_cached_step))

fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(lengths, full_ms, "o-", label="recompute all t tokens")
ax.plot(lengths, cached_ms, "o-", label="KV cache: one new token")
ax.set_xlabel("sequence length t")
ax.set_ylabel("ms per generated token")
ax.legend(fontsize=8)
plt.show()
for t, f_ms, c_ms in zip(lengths, full_ms, cached_ms):
    print(f"t = {t:3}: recompute {f_ms:7.2f} ms   cached {c_ms:5.2f} ms")
assert all(ms > 0 for ms in full_ms + cached_ms)
if mx.default_device() == mx.cpu:  # arithmetic-bound: the cache saves most of the work
    assert full_ms[-1] > 5 * cached_ms[-1] and full_ms[-1] > 3 * full_ms[0]

# %% [markdown]
# The package's `generate`, which puts it all together: it checks its arguments, builds
# a sampler once (`make_sampler`), then hands over to a generator that prefills and
# decodes. `stop_ids` ends the answer at an end-of-turn token, which is not yielded
# ([Chapter 7](07_pretrained.ipynb) uses it to chat). Its code is in
# `mlxllm/generation.py`, and it is the loop of §5.7 and of [Chapter
# 3](03_attention.ipynb)'s `KVCache`, nothing more: the prompt through the model once,
# then one model call on one token per step. Two details keep it quick without changing
# what it computes: the LM head sees only the last position, and each step is queued
# (`mx.async_eval`) before the token before it is read, so the device never waits for
# Python. Here is the decode loop itself:

# %%
from mlxllm import generation

print(inspect.getsource(generation.decode))

# %% [markdown]
# And here are those pieces at work on §5.6's two runs:

# %%
# stop_ids: the sampled run again, now ending at its sixth token, which is not yielded
stop = sampled[5]
stopped = list(generate(model, prompt_ids, 16, temperature=1.0, top_p=0.95, seed=0,
                        stop_ids=[stop]))
ends_before = stopped == sampled[: sampled.index(stop)]
print("stop_ids: the same tokens, up to just before the stop token:", ends_before)
assert ends_before and stop not in stopped and len(stopped) <= 5
# a sampler built once with make_sampler draws what the same keywords draw
sampler = make_sampler(temperature=1.0, top_p=0.95)
assert list(generate(model, prompt_ids, 16, sampler=sampler, seed=0)) == sampled

# %% [markdown]
# On a GPU a small model's step is short enough that most of its time is overhead:
# Python building the graph and the runtime launching one kernel per small operation.
# [Chapter 10](10_making_it_fast.ipynb) measures that and builds a second, compiled
# decode engine that gives these same tokens faster; the `mlxllm` command uses it. It
# lives apart, in `mlxllm.fast`, so that the code this chapter teaches stays the code
# that runs.

# %% [markdown]
# How fast is it, against an independent implementation? `benchmarks/bench_generate.py`
# runs this `generate` (and Chapter 10's engine) and mlx-lm's `generate_step` on the
# same weights (a ~56M-parameter LLaMA-style model, greedy, asserting both produce the
# same tokens) and compares decode and prefill tokens per second, next to the
# memory-bandwidth bound: every decoded token reads every weight once, so tokens/s can
# never exceed bandwidth ÷ weight bytes. This page does not run it (its timings vary
# between machines and runs, so they could not be checked like the rest of the page);
# the dated results, with the machine, the MLX version and the ratios of each run, are
# in `benchmarks/README.md` ("Latest results").
#
# On the 2-core Linux CPU this book is tested on, this `generate` is level with mlx-lm
# at prefill and at decoding. That is what one should expect: both run the same matrix
# products through the same MLX kernels, and mlx-lm's `generate_step` is this same loop
# (it too calls its plain model once per token). Two things keep ours level: the LM head
# is applied to the last position only, and the prompt's other tokens are run only for
# their keys and values (MLX never computes what nothing uses). The GPU runs, and the
# compiled engine's, are in [Chapter 10](10_making_it_fast.ipynb).
#
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 5.1 (perplexity).** The untrained model's loss on the Shakespeare windows
# of §5.4 was 10.81 nats per token. What is its perplexity, roughly? Which model has a
# perplexity of exactly V, and what is its loss? Check with `cross_entropy` on logits
# that are all equal.

# %% tags=["hide-input"]
V = config.vocab_size
flat = mx.zeros((*windows[:, 1:].shape, V))  # (4, 128, V): every token equally likely
uniform_loss = cross_entropy(flat, windows[:, 1:]).item()
# the uniform model: loss ln V, perplexity V (as uncertain as a uniform choice among V)
assert_close(uniform_loss, math.log(V), what="the uniform model's loss and ln V")
assert abs(math.exp(uniform_loss) / V - 1) < 1e-3
# the untrained model: e^10.81 ≈ 49,500, a little better than uniform, not much
assert 0.95 * V < math.exp(loss) < V
print(f"uniform logits: loss = ln V = {math.log(V):.3f}, perplexity V = {V:,}; "
      "the untrained model's perplexity is within 5% below V")

# %% [markdown]
# **Exercise 5.2 (change one line: temperature → 0).** In §5.5's check, change
# `temperature=0.5` to `0.2`, then `0.05`. Predict the probability of "mat" (the largest
# logit, 0.8 above "floor") and what 1,000 draws give at τ = 0.05. What does
# `make_sampler(temperature=0)` do instead of dividing by zero?

# %% tags=["hide-input"]
for tau in (1.0, 0.5, 0.2, 0.05):
    q_tau = mx.softmax(sampling_logits(z, temperature=tau))
    print(f"τ = {tau:4}: p({words[0]}) = {q_tau[0].item():.3f}")
# at τ = 0.05 the runner-up has e^(−0.8 / 0.05) = e^−16 ≈ 1e-7 of mat's weight
cold = np.array(mx.softmax(sampling_logits(z, temperature=0.05)))
assert cold[0] > 1 - 1e-6
cold_draws = make_sampler(temperature=0.05)(many[:1000], mx.random.key(2))
assert (np.array(cold_draws) == 0).all()  # all 1,000 draws are "mat"
# τ = 0 is the limit itself: the argmax (below GREEDY_TEMPERATURE, nothing is divided)
row_logits = model(inputs)[0]  # (T, V): the untrained model's logits
greedy_ids = make_sampler(temperature=0)(row_logits)
assert mx.array_equal(greedy_ids, mx.argmax(row_logits, axis=-1))
print("τ = 0.05: 1,000 of 1,000 draws are 'mat'; τ = 0: the argmax of every row")

# %% [markdown]
# **Exercise 5.3 (implement top-k).** Write `top_k_by_hand(logits, k)` in NumPy: keep
# the `k` largest logits of each row, set the others to −∞. Compare it with
# `sampling_logits(..., top_k=50)` on the untrained model's logits for the six
# positions of "The cat sat on the mat", and check that 1,000 draws of
# `make_sampler(top_k=50)` pick only kept tokens.

# %% tags=["hide-input"]
def top_k_by_hand(logits: np.ndarray, k: int) -> np.ndarray:
    kept = np.argsort(-logits, axis=-1)[..., :k]  # the k largest of each row: (..., k)
    filtered = np.full_like(logits, -np.inf)
    np.put_along_axis(filtered, kept, np.take_along_axis(logits, kept, -1), -1)
    return filtered


top50 = top_k_by_hand(np.array(row_logits), 50)  # (T, V)
# temperature 1 divides by 1.0, which is exact: the same floats, −∞ in the same places
assert np.array_equal(top50, np.array(sampling_logits(row_logits, top_k=50)))
assert (np.isfinite(top50).sum(axis=-1) == 50).all()
row_draws = make_sampler(top_k=50)(mx.broadcast_to(row_logits[0], (1000, V)),
                                   mx.random.key(3))
assert np.isfinite(top50[0][np.array(row_draws)]).all()
print("top_k_by_hand == sampling_logits(top_k=50) at all 6 positions; "
      "1,000 draws, all among the 50 kept tokens")

# %% [markdown]
# **Exercise 5.4 (predict, then run: the loss at init).** A character-level model of
# Tiny Shakespeare has a vocabulary of 65 characters. Predict its loss and perplexity at
# initialisation, then build `ModelConfig.gpt2(vocab_size=65, ...)` (2 layers, width
# 64, as above) and measure its loss on random targets.

# %% tags=["hide-input"]
mx.random.seed(1)
char_config = ModelConfig.gpt2(vocab_size=65, context_length=128, dims=64,
                               n_layers=2, n_heads=4)
char_model = TransformerLM(char_config)
char_ids = mx.random.randint(0, 65, (4, 129), key=mx.random.key(4))  # (B, T + 1)
char_loss = cross_entropy(char_model(char_ids[:, :-1]), char_ids[:, 1:]).item()
# small logits, so nearly uniform: ln 65 ≈ 4.17 nats, a perplexity of about 65
assert abs(char_loss - math.log(65)) < 0.05
print(f"V = 65: ln V = {math.log(65):.2f}; the loss at init is within 0.05 of it")

# %% [markdown]
# **Exercise 5.5 (bits per byte by hand).** §5.4's 512 GPT-2 tokens of Shakespeare were
# 1847 bytes. Suppose training brings the loss to 3.0 nats per token: how many bits per
# byte is that? And how many bits per byte does a byte-level model (V = 256, one token
# per byte) score when it knows nothing?

# %% tags=["hide-input"]
bpb_by_hand = 3.0 * n_tokens / n_bytes / math.log(2)  # nats per byte, then bits
assert math.isclose(bits_per_byte(3.0, n_tokens, n_bytes), bpb_by_hand)
# knowing nothing about bytes: ln 256 nats per byte = log2 256 = 8 bits per byte
assert math.isclose(bits_per_byte(math.log(256), 1000, 1000), 8.0)
print(f"3.0 nats/token at {n_bytes / n_tokens:.2f} bytes/token = {bpb_by_hand:.2f} "
      "bits per byte; a uniform byte-level model: 8 bits per byte")

# %% [markdown]
# ## What we built
#
# - **`TransformerLM`** end to end: `hidden_states` (embedding → blocks → final norm,
#   `(B, T, C)`) and the **LM head** `logits` (`(B, T, V)`), tied to the embedding
#   matrix itself for GPT-2-style models.
# - **`mlxllm.prediction.probabilities`**: a next-token distribution at every position
#   (nearly uniform untrained; " Paris" at 0.77 for a real model); **shifted targets**
#   make `T` training examples out of `T + 1` tokens.
# - **`cross_entropy`** (mean nats per token), equal to the loop by hand and to
#   `nn.losses.cross_entropy(..., reduction="mean")`; loss at init ≈ ln V
#   (perplexity `exp(loss)` ≈ V: as unsure as a uniform choice);
#   **`bits_per_byte`**.
# - **`mlxllm.generation`**: **`sampling_logits`**, **`sample`** and **`make_sampler`**:
#   greedy, temperature, top-k, top-p, min-p, with explicit keys.
# - **`generate`**: prefill once, then one token per step with the KV cache, streamed,
#   stopping at `stop_ids`; its logits equal full recomputation's to float32 rounding.
#   **`stream_text`**: never half a character.
#
# [Chapter 6](06_training.ipynb) trains this model on real text.
