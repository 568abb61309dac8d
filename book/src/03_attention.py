# %% [markdown]
# # 3. Causal attention: how tokens read each other
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
#                                            ^^^^^^^^^ attention
# ```
#
# After [Chapter 2](02_embedding.ipynb) every token is a vector that knows its position,
# but each vector only knows about its own token. Attention is the one layer where
# information moves *between* positions: every position builds a **query** ("what am I
# looking for?"), every position offers a **key** ("what do I contain?") and a **value**
# ("what do I pass on if chosen"), and each output is a weighted average of the values,
# weighted by how well the query matches each key. A language model predicts the next
# token, so position `t` may only read positions `≤ t`: that is the **causal** part.
#
# We build it three times, each faster than the last and checked against the previous
# one: with loops, with matrices, and with several heads at once. Then the variants that
# make real models cheaper to run: grouped-query and multi-query attention, and the KV
# cache. Last, we load a trained model and find two heads that do recognisable jobs.
#
# | symbol | meaning | GPT-2 small | LLaMA-2-7B |
# | --- | --- | --- | --- |
# | `B` | sequences in a batch | | |
# | `T` | tokens per sequence | ≤ 1024 | ≤ 4096 |
# | `C` | model width (`dims`) | 768 | 4096 |
# | `H` | query heads | 12 | 32 |
# | `H_kv` | key/value heads | 12 | 32 (70B: 8) |
# | `D` | width of one head, `C / H` | 64 | 128 |

# %%
import inspect
import math

import matplotlib.pyplot as plt
import mlx.core as mx
import numpy as np

import mlxllm
from mlxllm import KVCache, ModelConfig, MultiHeadAttention, attention_reference
from mlxllm import causal_mask, kv_cache_bytes, scaled_dot_product_attention
from mlxllm.tolerances import assert_close

mx.random.seed(0)

# %% [markdown]
# ## 3.1 With loops: one head, one sequence
#
# Start with a single sequence of `T` token vectors `x` of shape `(T, C)` and one
# attention head of width `D`. Three weight matrices `(C, D)` turn each token vector
# into its query, key and value. For each position `t`, score every allowed key `s ≤ t`
# by the dot product $q_t \cdot k_s / \sqrt{D}$ (the $\sqrt{D}$ is explained in 3.4),
# turn the scores into weights that are positive and sum to 1 with a softmax, and
# average the values with those weights.

# %%
T, C, D = 6, 16, 8
x = mx.random.normal((T, C))  # (T, C): six token vectors
W_q, W_k, W_v = (mx.random.normal((C, D)) / math.sqrt(C) for _ in range(3))  # (C, D)

q, k, v = x @ W_q, x @ W_k, x @ W_v  # (T, D) each
print("x", x.shape, "  W_q, W_k, W_v", W_q.shape, "  q, k, v", q.shape)

out_loops = []
for t in range(T):  # each query position...
    # ...against keys 0..t only
    scores = [(q[t] * k[s]).sum() / math.sqrt(D) for s in range(t + 1)]
    weights = mx.softmax(mx.stack(scores))  # (t + 1,), positive, sums to 1
    out_loops.append(sum(weights[s] * v[s] for s in range(t + 1)))  # (D,)
out_loops = mx.stack(out_loops)  # (T, D)
print("output", out_loops.shape)
# position 0 can only see itself, so it returns its own value (weight exactly 1)
assert mx.array_equal(out_loops[0], v[0])

# %% [markdown]
# ## 3.2 With matrices
#
# All `T × T` dot products at once are one matrix product `Q Kᵀ`, shape
# `(T, D) @ (D, T) → (T, T)`: row `t` holds query `t`'s scores against every key. The
# causal rule becomes a **mask**: entries above the diagonal (keys in the future) are
# set to $-\infty$ before the softmax, so they get weight exactly 0. Then `weights @ V`
# is `(T, T) @ (T, D) → (T, D)`.

# %%
mask = causal_mask(T)  # (T, T) boolean, True = may attend
scores = (q @ k.T) / math.sqrt(D)  # (T, T)
scores = mx.where(mask, scores, -mx.inf)  # future keys -> -inf
weights = mx.softmax(scores, axis=-1)  # (T, T), each row sums to 1
out_matrices = weights @ v  # (T, D)
print("scores", scores.shape, " weights", weights.shape, " output", out_matrices.shape)
# a matrix product sums in another order than our loops (and may run in TF32 on a
# GPU), so "equal" means within the float32 tolerance of mlxllm.tolerances (Chapter 2)
assert_close(out_matrices, out_loops, what="matrix form must equal the loops:")
assert_close(weights.sum(axis=-1), mx.ones(T), what="each row must sum to 1:")
assert mx.all(mx.triu(weights, 1) == 0).item()  # exp(-inf) is exactly 0: no future
print("matrices == loops:", True)

# %% [markdown]
# ### The causal mask as a picture
#
# Left: the mask for 8 tokens, row = query, column = key. Right: the same rule when 3
# *new* queries arrive after 5 tokens are already cached (Section 3.6): the queries are
# positions 5, 6 and 7, so the mask is the bottom three rows of the square one, "aligned
# bottom-right". `causal_mask` builds both:

# %%
print(inspect.getsource(causal_mask))

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [8, 8]})
for ax, (n_queries, n_keys) in zip(axes, ((8, 8), (3, 8))):
    ax.imshow(np.array(causal_mask(n_queries, n_keys)), cmap="Blues", vmin=0, vmax=1.4)
    ax.set_xlabel("key position")
    ax.set_ylabel("query")
    query_positions = range(n_keys - n_queries, n_keys)
    ax.set_yticks(range(n_queries), [str(p) for p in query_positions])
    ax.set_title(f"causal_mask({n_queries}, {n_keys})")
fig.tight_layout()
plt.show()
assert mx.array_equal(causal_mask(8), mx.tril(mx.ones((8, 8))).astype(mx.bool_))
# bottom-right = the last rows of the square
assert mx.array_equal(causal_mask(3, 8), causal_mask(8)[5:])

# %% [markdown]
# ## 3.3 Many heads at once
#
# One head computes one weighting of the past. Real models run `H` heads in parallel,
# each with its own queries, keys and values of width `D = C / H`, so each can track a
# different relation (the previous token, the subject of the sentence, a matching
# bracket…; Section 3.7 finds such heads in a trained model), and then mix their outputs
# with one more matrix, the **output projection**. The total cost stays that of one head
# of width `C`. The whole computation, with the shape at every step:
#
# ![Multi-head attention's shapes: projections, reshape, transpose, masked scores,
# softmax, and back; grouped-query attention shares k/v
# heads](figures/multihead_reshape.svg)
#
# Written with loops over heads, head `h` uses columns `h·D … (h+1)·D − 1` of `C × C`
# projection matrices:

# %%
B, T, C, H = 2, 6, 16, 4
D = C // H
x = mx.random.normal((B, T, C))  # (B, T, C)
W_q, W_k, W_v, W_o = (mx.random.normal((C, C)) / math.sqrt(C) for _ in range(4))
mask = causal_mask(T)


def one_head(x: mx.array, W_q: mx.array, W_k: mx.array, W_v: mx.array) -> mx.array:
    q, k, v = x @ W_q, x @ W_k, x @ W_v  # (B, T, D)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])  # (B, T, T)
    scores = mx.where(mask, scores, -mx.inf)
    return mx.softmax(scores, axis=-1) @ v  # (B, T, D)


heads = []
for h in range(H):
    columns = slice(h * D, (h + 1) * D)  # head h's columns of each projection
    heads.append(one_head(x, W_q[:, columns], W_k[:, columns], W_v[:, columns]))
concatenated = mx.concatenate(heads, axis=-1)  # (B, T, H·D)
out_head_loop = concatenated @ W_o  # (B, T, H·D) @ (C, C) -> (B, T, C)
print(f"{H} heads of {heads[0].shape} -> concatenated {concatenated.shape} -> W_o -> "
      f"{out_head_loop.shape}")

# %% [markdown]
# The fast way does all heads in one batched matrix product. Project once to
# `(B, T, C)`, **reshape** the last axis into `(H, D)` (head `h` gets exactly columns
# `h·D … (h+1)·D − 1`, as above), and **transpose** heads in front of time, so that the
# last two axes are `(T, D)` and `@` multiplies every (batch, head) pair at once:
#
# | step | shape |
# | --- | --- |
# | `x` | `(B, T, C)` |
# | `x @ W_q` | `(B, T, C)` |
# | `.reshape(B, T, H, D)` | `(B, T, H, D)` |
# | `.transpose(0, 2, 1, 3)` | `(B, H, T, D)` |
# | `q @ kᵀ` | `(B, H, T, T)` |
# | `softmax(...) @ v` | `(B, H, T, D)` |
# | `.transpose(0, 2, 1, 3).reshape(B, T, C)` | `(B, T, C)` |
# | `@ W_o` | `(B, T, C)` |

# %%
def split_heads(t: mx.array) -> mx.array:
    return t.reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, T, C) -> (B, H, T, D)


q, k, v = split_heads(x @ W_q), split_heads(x @ W_k), split_heads(x @ W_v)  # (B,H,T,D)
scores = mx.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(D), -mx.inf)  # (B, H, T, T)
per_head = mx.softmax(scores, axis=-1) @ v  # (B, H, T, D)
merged = per_head.transpose(0, 2, 1, 3).reshape(B, T, C)  # heads side by side again
out_batched = merged @ W_o  # (B, T, C)
steps = {"q": q, "scores": scores, "per_head": per_head, "merged": merged,
         "out": out_batched}
for name, value in steps.items():
    print(f"{name:9} {value.shape}")
assert_close(out_batched, out_head_loop, what="batched heads must equal the loop:")
print("batched == loop over heads:", True)

# %% [markdown]
# ### The package: `attention_reference`, the fused kernel, and `MultiHeadAttention`
#
# The package keeps the step-by-step version as `attention_reference` (used by the tests
# and this book) and runs the production path through MLX's fused kernel
# `mx.fast.scaled_dot_product_attention`, which never materialises the `(T, T)` score
# matrix on the GPU. `MultiHeadAttention` holds the four projections as `nn.Linear`
# layers named like Hugging Face's LLaMA (`q_proj`, `k_proj`, `v_proj`, `o_proj`), so
# pretrained weights map one to one ([Chapter 7](07_pretrained.ipynb)). An `nn.Linear`
# stores its weight as `(out, in)` and computes `x @ weight.T`. Like every layer of the
# package, it reads its sizes and options from a `ModelConfig`
# ([Chapter 5](05_next_token_prediction.ipynb)), so a new option is one field there
# rather than a new argument threaded through every constructor. All three live in
# `mlxllm/attention.py`. We give the layer our batched code's sizes, look at its four
# weights, and check all three against the batched code above:

# %%
# MHA (n_kv_heads defaults to n_heads); no biases: x @ weight.T is the whole projection
attention = MultiHeadAttention(ModelConfig(dims=C, n_heads=H, bias=False))
projections = ("q_proj", "k_proj", "v_proj", "o_proj")
print({name: getattr(attention, name).weight.shape for name in projections})
assert all(getattr(attention, name).weight.shape == (C, C) for name in projections)
# the batched code from above, with the package layer's weights
q = split_heads(x @ attention.q_proj.weight.T)
k = split_heads(x @ attention.k_proj.weight.T)
v = split_heads(x @ attention.v_proj.weight.T)
scores = mx.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(D), -mx.inf)
merged = (mx.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
ours = merged @ attention.o_proj.weight.T  # (B, T, C)

package = attention(x)  # (B, T, C), through mx.fast.scaled_dot_product_attention
assert_close(package, ours, what="MultiHeadAttention must equal attention by hand:")
fused = scaled_dot_product_attention(q, k, v, mask="causal")
reference = attention_reference(q, k, v, causal_mask(T))
assert_close(fused, reference, what="fused kernel must equal the reference:")
print("package == by hand:", True, "  fused == reference:", True)
print("output", package.shape)

# %% [markdown]
# ## 3.4 Why divide by √D
#
# If the entries of `q` and `k` have mean 0 and variance 1, their dot product sums `D`
# such products and has variance `D`. The scores of a 1024-wide head would have a
# standard deviation of $\sqrt{1024} = 32$, and the softmax of scores that far apart is
# nearly one-hot: one key gets almost all the weight, a key scoring 50 below it gets
# $e^{-50}$ times as much, and their gradients vanish, so the model cannot learn to move
# weight around. Dividing by $\sqrt{D}$ brings the variance back to 1 whatever the head
# width. Below: the average largest weight in a row of 32 keys, with and without the
# scaling, as `D` grows.

# %%
head_dims = [4, 16, 64, 256, 1024]
rows, n_keys = 256, 32
key = mx.random.key(1)
largest = {"q·k": [], "q·k / √D": []}
variances = {}
for d in head_dims:
    kq, kk, key = mx.random.split(key, 3)
    q_rand = mx.random.normal((rows, 1, d), key=kq)
    k_rand = mx.random.normal((rows, n_keys, d), key=kk)
    raw = (q_rand * k_rand).sum(axis=-1)  # (rows, n_keys) unscaled scores
    variances[d] = (raw.var().item(), (raw / math.sqrt(d)).var().item())
    largest["q·k"].append(mx.softmax(raw, axis=-1).max(axis=-1).mean().item())
    scaled = mx.softmax(raw / math.sqrt(d), axis=-1)
    largest["q·k / √D"].append(scaled.max(axis=-1).mean().item())

fig, ax = plt.subplots(figsize=(5.5, 3))
for name, values in largest.items():
    ax.plot(head_dims, values, "o-", label=name)
ax.axhline(1 / n_keys, color="gray", linestyle=":", label="uniform (1/32)")
ax.set_xscale("log", base=2)
ax.set_xlabel("head width D")
ax.set_ylabel("mean largest weight")
ax.set_title("Unscaled scores saturate the softmax")
ax.legend(fontsize=8)
plt.show()
for d in head_dims:
    print(f"D = {d:4}: variance of q·k = {variances[d][0]:5.0f}, "
          f"of q·k/√D = {variances[d][1]:.2f}")
assert all(abs(raw / d - 1) < 0.15 and abs(scaled - 1) < 0.15
           for d, (raw, scaled) in variances.items())
assert largest["q·k"][-1] > 0.8 and largest["q·k / √D"][-1] < 0.4

# %% [markdown]
# ## 3.5 Grouped-query and multi-query attention
#
# At generation time a model keeps the keys and values of every past token (next
# section), and for long contexts that memory, not the weights, is what runs out.
# **Multi-query attention** (MQA, {cite:alp}`shazeer2019fast`) gives all `H` query heads
# one shared key head and one value head; **grouped-query attention** (GQA,
# {cite:alp}`ainslie2023gqa`; LLaMA-2-70B, LLaMA-3, Mistral, SmolLM2) is the middle
# ground: `H_kv` key/value heads, each shared by a group of `H / H_kv` query heads. The
# key and value projections shrink from `(C, C)` to `(C, H_kv·D)`.
#
# GQA is exactly MHA whose key/value weights are repeated across each group. We check
# that with the package: a GQA layer with 2 kv heads for 4 query heads, and an MHA layer
# with the GQA layer's k/v weights copied for each query head of the group.

# %%
gqa = MultiHeadAttention(ModelConfig(dims=C, n_heads=H, n_kv_heads=2, bias=False))
print("GQA k_proj", gqa.k_proj.weight.shape, "  q_proj", gqa.q_proj.weight.shape)
mha = MultiHeadAttention(ModelConfig(dims=C, n_heads=H, bias=False))
group = H // 2  # query heads per kv head


def repeat_kv_heads(weight: mx.array) -> mx.array:  # (H_kv·D, C) -> (H·D, C)
    return mx.repeat(weight.reshape(2, D, C), group, axis=0).reshape(H * D, C)


mha.update({"q_proj": gqa.q_proj.parameters(), "o_proj": gqa.o_proj.parameters(),
            "k_proj": {"weight": repeat_kv_heads(gqa.k_proj.weight)},
            "v_proj": {"weight": repeat_kv_heads(gqa.v_proj.weight)}})
assert_close(gqa(x), mha(x), what="GQA must equal MHA with repeated kv weights:")
print("GQA(x) == MHA with repeated k/v weights:", True)

# %% [markdown]
# The cache keeps keys and values for every layer, kv head and position:
#
# $$\text{bytes} = 2 \times n_\text{layers} \times H_{kv} \times D \times T \times B
#   \times \text{bytes per value}.$$
#
# For a LLaMA-2-7B-sized model (32 layers, 32 heads of 128, float16) that is half a
# megabyte *per token*; at 4,096 tokens, 2 GiB, on top of 12.6 GiB of weights (6.74
# billion × 2 bytes); at 32k tokens the cache outgrows the weights. With 8 kv heads
# (GQA, as in LLaMA-3-8B) it is four times less, with one (MQA) 32 times less:

# %%
print(inspect.getsource(kv_cache_bytes))

# %%
layers, n_heads, head_dim = 32, 32, 128
variants = {"MHA (32 kv heads)": 32, "GQA (8 kv heads)": 8, "MQA (1 kv head)": 1}
contexts = np.array([512, 1024, 2048, 4096, 8192, 16384, 32768])
fig, ax = plt.subplots(figsize=(5.5, 3.2))
for name, n_kv in variants.items():
    gib = [kv_cache_bytes(layers, n_kv, head_dim, int(t)) / 2**30 for t in contexts]
    ax.plot(contexts, gib, "o-", label=name)
weights_gib = 6.74e9 * 2 / 2**30
ax.axhline(weights_gib, color="gray", linestyle=":", label="the 7B weights (float16)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("context length T")
ax.set_ylabel("KV cache, GiB (batch 1, float16)")
ax.set_title("KV-cache memory, 32 layers × 128-wide heads")
ax.legend(fontsize=8)
plt.show()
for name, n_kv in variants.items():
    per_token = kv_cache_bytes(layers, n_kv, head_dim, 1) / 2**10
    at_4096 = kv_cache_bytes(layers, n_kv, head_dim, 4096) / 2**30
    print(f"{name:18} {per_token:6.0f} KiB per token, {at_4096:6.3f} GiB at T = 4096")
assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * 2**30
assert kv_cache_bytes(32, 8, 128, 4096) * 4 == kv_cache_bytes(32, 32, 128, 4096)

# %% [markdown]
# ## 3.6 The KV cache
#
# Generating text calls the model once per new token. Without a cache, step `t`
# recomputes the keys and values of all `t` previous tokens, although they have not
# changed (causality: a token's k and v depend only on tokens before it). The **KV
# cache** stores them: the first call (the *prefill*) processes the prompt and saves its
# k and v, and every later call feeds only the new token, `(B, 1, C)`, computes its q,
# k, v, appends k and v to the cache, and attends over everything cached. With RoPE, the
# new token is rotated by its true position, `cache.offset`.
#
# ![The causal mask coloured by decoding call, and the KV cache filling up: prefill,
# then one key and value per step](figures/kv_cache.svg)
#
# `KVCache` preallocates storage in chunks of 256 positions and writes each step into it
# in place, instead of concatenating a new, one-longer array every step (which would
# copy the whole cache each time). Its code is in `mlxllm/attention.py`; here it is on a
# small example, a prompt of 3 tokens and then one more:

# %%
cache = KVCache()
prompt_keys = mx.random.normal((1, 2, 3, 4), key=mx.random.key(0))  # (B, H_kv, T, D)
keys, values = cache.update_and_fetch(prompt_keys, -prompt_keys)  # a prompt of 3
print("3 tokens:   offset", cache.offset, " storage", cache.keys.shape,
      " returned", keys.shape)
new_key = mx.random.normal((1, 2, 1, 4), key=mx.random.key(1))  # one more token
keys, values = cache.update_and_fetch(new_key, -new_key)
print("+1 token:   offset", cache.offset, " storage", cache.keys.shape,
      " returned", keys.shape, " bytes held", cache.nbytes)
# what concatenating every step would give, without copying the cache each step
assert mx.array_equal(keys, mx.concatenate([prompt_keys, new_key], axis=2))
assert mx.array_equal(values, -keys)
# 256 positions of keys and of values, 2 heads of 4 float32 numbers (4 bytes) each
assert cache.keys.shape == (1, 2, 256, 4) and cache.nbytes == 2 * 256 * 2 * 4 * 4

# %% [markdown]
# We check the promise that matters: prefill 5 tokens, then decode one token at a time
# up to 300 (past the first 256-position chunk), and compare with recomputing all 300
# positions at once. We also record how much memory the cache holds as it fills.

# %%
mx.random.seed(0)
C_small, T_long = 16, 300
config = ModelConfig(dims=C_small, n_heads=4, n_kv_heads=2, position="rope")
layer = MultiHeadAttention(config)  # RoPE on q and k, since position="rope"
x_long = mx.random.normal((1, T_long, C_small))  # (B, T, C)
full = layer(x_long)  # (1, 300, 16): all positions at once

cache = KVCache()
pieces = [layer(x_long[:, :5], cache=cache)]  # prefill: (1, 5, 16)
held = [cache.nbytes]
for t in range(5, T_long):
    pieces.append(layer(x_long[:, t : t + 1], cache=cache))  # one new token: (1, 1, 16)
    held.append(cache.nbytes)
incremental = mx.concatenate(pieces, axis=1)  # (1, 300, 16)
print("cache offset:", cache.offset, "  keys storage:", cache.keys.shape,
      "  output:", incremental.shape)
assert cache.offset == T_long and cache.keys.shape == (1, 2, 512, 4)  # 2 chunks of 256
# one query at a time runs through other kernel shapes than 300 at once: tolerance
assert_close(incremental, full, what="cached decoding must equal full recomputation:")
print("cached == full recompute:", True)

fig, ax = plt.subplots(figsize=(5.5, 2.6))
ax.step(range(5, T_long + 1), held, where="post")
ax.set_xlabel("tokens in the cache")
ax.set_ylabel("bytes allocated")
ax.set_ylim(0, 1.1 * max(held))
ax.set_title("KVCache grows in chunks of 256 positions")
plt.show()
# k and v · 2 kv heads · 256 positions · D = 4 · 4 bytes (float32)
assert held[0] == held[250] == 2 * 2 * 256 * 4 * 4

# %% [markdown]
# ## 3.7 What trained heads do: previous-token and induction heads
#
# Everything so far used random weights, whose attention says nothing about language. To
# see what training makes of the same machinery, we load a real model,
# SmolLM2-135M-Instruct (30 layers of 9 query heads and 3 key/value heads, RoPE;
# [Chapter 7](07_pretrained.ipynb) explains the loading; here it reads a 4-bit file
# installed with the package, offline), and look for two kinds of head that
# interpretability research found in every transformer language model it studied
# {cite:p}`elhage2021mathematical,olsson2022incontext`:
#
# - a **previous-token head** puts its weight on position `t − 1`: it copies "which
#   token came just before me" into each position;
# - an **induction head** completes patterns: at a token `A` that already occurred
#   earlier, followed by `B`, it attends to that `B`, so that the model can predict `B`
#   again. It needs a previous-token head in an earlier layer (to know what preceded
#   each token).
#
# The cleanest test input is nonsense that repeats: 20 random token ids, then the same
# 20 again. In the first copy nothing can be predicted; in the second, an induction head
# at position `t` should look at position `t − 20 + 1`, the token after the previous
# occurrence of the current one. The package's attention layer uses the fused kernel,
# which never materialises the probabilities, so we compute them ourselves from each
# layer's own modules: its `q_proj` and `k_proj` (4-bit `nn.QuantizedLinear` layers,
# called like any linear layer), its RoPE, and Section 3.5's repeat of the key heads.

# %%
def attention_probabilities(attention: MultiHeadAttention, x: mx.array) -> mx.array:
    """Every head's attention weights for the normed input x: (B,T,C) -> (B,H,T,T)."""
    B, T, _ = x.shape
    H, H_kv, D = attention.n_heads, attention.n_kv_heads, attention.head_dim
    q = attention.q_proj(x).reshape(B, T, H, D).transpose(0, 2, 1, 3)  # (B, H, T, D)
    k = attention.k_proj(x).reshape(B, T, H_kv, D).transpose(0, 2, 1, 3)  # (B,H_kv,T,D)
    q, k = attention.rope(q), attention.rope(k)  # rotate by positions 0 … T−1
    k = mx.repeat(k, H // H_kv, axis=1)  # GQA: a key head serves H / H_kv query heads
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    return mx.softmax(mx.where(causal_mask(T), scores, -mx.inf), axis=-1)


model, _ = mlxllm.load_pretrained("smollm2-135m-instruct")  # 4-bit weights, offline
n_layers, n_heads = model.config.n_layers, model.config.n_heads
n = 20  # length of the random block; the input is the block twice (short: a fast cell)
rng = np.random.default_rng(0)  # numpy draws the same ids on every machine
block_ids = rng.choice(np.arange(1000, 40000), size=n, replace=False)  # all different
ids = mx.array([np.concatenate([block_ids, block_ids]).tolist()])  # (1, 2n)
print("input ids", ids.shape, "  first copy starts", block_ids[:6].tolist(), "…")

# the model's own forward pass (as in TransformerLM.hidden_states), keeping the weights
x = model.token_embedding(ids)  # (1, T, C)
maps = []
for layer, block in enumerate(model.blocks):
    h = block.attention_norm(x)  # what the attention layer reads
    probabilities = attention_probabilities(block.attention, h)  # (1, H, T, T)
    if layer == 0:  # check: weights @ values -> o_proj must be the layer's own output
        attention = block.attention
        v = attention.v_proj(h).reshape(1, 2 * n, -1, attention.head_dim)  # (1,T,Hkv,D)
        v = mx.repeat(v.transpose(0, 2, 1, 3), n_heads // attention.n_kv_heads, axis=1)
        heads_out = (probabilities @ v).transpose(0, 2, 1, 3).reshape(1, 2 * n, -1)
        assert_close(attention.o_proj(heads_out), attention(h),
                     what="our attention weights must reproduce the layer's output:")
    maps.append(probabilities[0])
    x = block(x)  # (1, T, C)
maps = mx.stack(maps)  # (layers, heads, T, T)
print("attention weights of every head:", maps.shape)

# %% [markdown]
# Now score all 30 × 9 heads. The previous-token score of a head is its average weight
# on position `t − 1` over all positions `t ≥ 1`; the induction score is its average
# weight on position `t − n + 1` over the second copy. We take the best head of each
# kind, and require it to beat the runner-up by a clear margin (more than 0.03, chosen
# to be far larger than the rounding differences between backends), so that the choice
# does not depend on the hardware.

# %%
T = 2 * n
t = mx.arange(1, T)
previous_token_score = maps[:, :, t, t - 1].mean(axis=-1)  # (layers, heads)
t = mx.arange(n, T)  # positions of the second copy
induction_score = maps[:, :, t, t - n + 1].mean(axis=-1)  # (layers, heads)

winners = {}
head_scores = {"previous-token": previous_token_score, "induction": induction_score}
for kind, score in head_scores.items():
    flat = np.array(score).ravel()  # layer-major: index = layer · n_heads + head
    best, runner_up = np.argsort(flat)[::-1][:2]
    assert flat[best] - flat[runner_up] > 0.03, f"no clear {kind} head"
    winners[kind] = divmod(int(best), n_heads)  # (layer, head)
    print(f"{kind:15} head: layer {winners[kind][0]:2}, head {winners[kind][1]}: score "
          f"{flat[best]:.1f}, ahead of every other head by more than 0.03")
assert winners["previous-token"][0] < winners["induction"][0]  # earlier layer feeds it

fig, axes = plt.subplots(1, 2, figsize=(11, 2.8))
for ax, (kind, score) in zip(axes, head_scores.items()):
    image = ax.imshow(np.array(score).T, cmap="magma", vmin=0, vmax=1, aspect="auto")
    layer, head = winners[kind]
    box = plt.Rectangle((layer - 0.5, head - 0.5), 1, 1, fill=False, color="cyan", lw=2)
    ax.add_patch(box)
    ax.set_xlabel("layer")
    ax.set_ylabel("head")
    ax.set_title(f"{kind} score of all {n_layers} × {n_heads} heads", fontsize=10)
fig.colorbar(image, ax=axes, fraction=0.03)
plt.show()

# %% [markdown]
# The two heads' attention maps, row = query position, column = key position (the dashed
# lines mark where the second copy starts):

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
for ax, kind in zip(axes, ("previous-token", "induction")):
    layer, head = winners[kind]
    ax.imshow(np.array(maps[layer, head]), cmap="viridis", vmin=0, vmax=1)
    ax.axhline(n - 0.5, color="white", linestyle="--", linewidth=0.8)
    ax.axvline(n - 0.5, color="white", linestyle="--", linewidth=0.8)
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(f"{kind} head: layer {layer}, head {head}", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# The previous-token head is a bright line just below the diagonal, in both copies. The
# induction head has nothing to find in the first copy, where no token has occurred
# before, and parks its weight on the first token (a common "do nothing" of trained
# heads); in the second copy it attends along a line `n − 1` positions left of the
# diagonal: from each token to the one that followed it last time, the token to predict
# next. It sits in a later layer than the previous-token head, as the mechanism needs.
# Nobody programmed either: they are what training a next-token predictor on text found
# useful, out of the weighted averages this chapter built.

# %% [markdown]
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 3.1 (what the mask protects).** Take
# `MultiHeadAttention(ModelConfig(dims=16, n_heads=4))` and an input of 6 random
# token vectors, then change only the *last* token. Predict which of the 6 outputs
# change with the causal mask (the default), and which change with `mask=None`.

# %% tags=["hide-input"]
layer_16 = MultiHeadAttention(ModelConfig(dims=16, n_heads=4))
x_6 = mx.random.normal((1, 6, 16), key=mx.random.key(10))  # (B, T, C)
x_6_changed = x_6.at[:, 5].add(3.0)  # only the last token changes
causal_before, causal_after = layer_16(x_6), layer_16(x_6_changed)
# causal: positions 0..4 never see position 5, so their outputs stay the same
assert_close(causal_after[:, :5], causal_before[:, :5],
             what="with the mask, earlier outputs must not depend on a later token:")
assert mx.abs(causal_after[:, 5] - causal_before[:, 5]).max().item() > 1e-2
# no mask: every position reads position 5, so even output 0 changes
open_before, open_after = layer_16(x_6, mask=None), layer_16(x_6_changed, mask=None)
assert mx.abs(open_after[:, 0] - open_before[:, 0]).max().item() > 1e-2
print("causal: only output 5 changes;  mask=None: output 0 changes too")

# %% [markdown]
# **Exercise 3.2 (implement MQA with MHA).** Multi-query attention is the case
# `n_kv_heads=1`. Build it from an MHA layer as §3.5 did for GQA: copy the single key
# and value head of `MultiHeadAttention(ModelConfig(dims=16, n_heads=4, n_kv_heads=1,
# bias=False))` into all four heads of an MHA layer, and check that both give the same
# output. How many parameters does MQA save here?

# %% tags=["hide-input"]
from mlx.utils import tree_flatten  # noqa: E402

mqa = MultiHeadAttention(ModelConfig(dims=16, n_heads=4, n_kv_heads=1, bias=False))
mha_4 = MultiHeadAttention(ModelConfig(dims=16, n_heads=4, bias=False))
head_width = mqa.head_dim  # 4


def copy_to_every_head(weight: mx.array) -> mx.array:  # (D, C) -> (H·D, C)
    return mx.concatenate([weight] * 4, axis=0)


mha_4.update({"q_proj": mqa.q_proj.parameters(), "o_proj": mqa.o_proj.parameters(),
              "k_proj": {"weight": copy_to_every_head(mqa.k_proj.weight)},
              "v_proj": {"weight": copy_to_every_head(mqa.v_proj.weight)}})
assert_close(mqa(x_6), mha_4(x_6), what="MQA must equal MHA with one shared k/v head:")


def count(layer) -> int:
    return sum(p.size for _, p in tree_flatten(layer.parameters()))


saved = count(mha_4) - count(mqa)
assert saved == 2 * 16 * (4 - 1) * head_width  # k and v: 3 heads of (D, C) fewer
print(f"MQA == MHA with copied k/v: True; MQA saves {saved} of "
      f"{count(mha_4)} parameters")

# %% [markdown]
# **Exercise 3.3 (memory).** SmolLM2-135M, loaded in §3.7, has 30 layers and 3
# key/value heads of width 64. With `kv_cache_bytes`, compute its KV cache per token
# and for its full context of 8,192 tokens in bfloat16 (2 bytes a value), and compare
# it with its weights in bfloat16 (134.5 million parameters). How much more with a
# kv head for each of its 9 query heads? Check `kv_cache_bytes` against a real
# `KVCache` filled with 256 positions of one layer.

# %% tags=["hide-input"]
config = model.config
assert (config.n_layers, config.n_kv_heads, config.head_dim) == (30, 3, 64)
assert config.context_length == 8192 and round(model.num_parameters() / 1e6, 1) == 134.5
per_token = kv_cache_bytes(config.n_layers, config.n_kv_heads, config.head_dim, 1)
at_8192 = kv_cache_bytes(config.n_layers, config.n_kv_heads, config.head_dim, 8192)
assert per_token == 2 * 30 * 3 * 64 * 2 == 23_040  # k and v · layers · heads · D · 2
mha_at_8192 = kv_cache_bytes(config.n_layers, config.n_heads, config.head_dim, 8192)
assert mha_at_8192 == 3 * at_8192  # 9 kv heads instead of 3
# an independent count: a real cache, one layer, 256 positions of bfloat16
one_layer = KVCache()
keys = mx.zeros((1, config.n_kv_heads, 256, config.head_dim), dtype=mx.bfloat16)
one_layer.update_and_fetch(keys, keys)
assert one_layer.nbytes == kv_cache_bytes(1, config.n_kv_heads, config.head_dim, 256)
weights_bytes = model.num_parameters() * 2  # bfloat16
print(f"{per_token / 2**10:.1f} KiB per token; 8,192 tokens: {at_8192 / 2**20:.0f} MiB "
      f"= {at_8192 / weights_bytes:.2f} × the weights; with 9 kv heads: "
      f"{mha_at_8192 / 2**20:.0f} MiB")

# %% [markdown]
# **Exercise 3.4 (predict, then run).** If every query is the zero vector, all scores
# are 0. Predict the output at position `t` with the causal mask, and with
# `mask=None`. Check with `attention_reference`.

# %% tags=["hide-input"]
v_6 = mx.random.normal((1, 1, 6, 4), key=mx.random.key(11))  # (B, H, T, D)
k_6 = mx.random.normal((1, 1, 6, 4), key=mx.random.key(12))
q_zero = mx.zeros((1, 1, 6, 4))
causal_out = attention_reference(q_zero, k_6, v_6, causal_mask(6))
open_out = attention_reference(q_zero, k_6, v_6, None)
# equal scores -> equal weights 1/(t+1) over the keys it may see: a running mean
running_mean = mx.cumsum(v_6, axis=2) / mx.arange(1, 7)[:, None]  # (1, 1, 6, 4)
assert_close(causal_out, running_mean, what="zero queries: the mean of v[0..t]:")
# no mask: every position averages all six values
assert_close(open_out, mx.broadcast_to(v_6.mean(axis=2, keepdims=True), v_6.shape),
             what="zero queries, no mask: the mean of all values:")
print("zero queries: output t = mean of v[0..t] (causal), of all v (no mask): True")

# %% [markdown]
# ## What we built
#
# - **`causal_mask`**: who may look at whom, aligned bottom-right for cached decoding.
# - **Scaled dot-product attention**, from loops to matrices to `H` heads with a reshape
#   and a transpose; the step-by-step **`attention_reference`** and the production
#   **`scaled_dot_product_attention`** (`mx.fast`), checked equal; and why the scores
#   are divided by $\sqrt{D}$.
# - **`MultiHeadAttention`** with `n_kv_heads` for MHA, GQA and MQA (GQA = MHA with
#   shared k/v weights, checked), optional RoPE; its memory cost at generation time,
#   **`kv_cache_bytes`**.
# - **`KVCache`**: keys and values kept between decoding steps, preallocated in chunks
#   and written in place, equal to full recomputation.
# - **Trained heads**: in SmolLM2-135M, a previous-token head and an induction head,
#   found by scoring all 270 heads on a repeated random sequence.
#
# [Chapter 4](04_transformer_block.ipynb) wraps this layer with a feed-forward network,
# normalization and residual connections into a transformer block.
