# %% [markdown]
# # 3. Causal attention: how tokens read each other
#
# ```
# text ──tokenization──▶ token ids ──embedding──▶ T×C vectors ──N × transformer block──▶ T×C ──prediction──▶ T×V
#                                                                 ^^^^^^^^^ attention
# ```
#
# After Chapter 2 every token is a vector that knows its position, but each vector only knows about its
# own token. Attention is the one layer where information moves *between* positions: every position
# builds a **query** ("what am I looking for?"), every position offers a **key** ("what do I contain?")
# and a **value** ("what do I pass on if chosen"), and each output is a weighted average of the values,
# weighted by how well the query matches each key. A language model predicts the next token, so position
# `t` may only read positions `≤ t`: that is the **causal** part.
#
# We build it three times, each faster than the last and checked against the previous one: with loops,
# with matrices, and with several heads at once. Then the variants that make real models cheaper to run:
# grouped-query and multi-query attention, and the KV cache.
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
import mlx.nn as nn
import numpy as np

import mlxllm
import mlxllm.data
from mlxllm import KVCache, MultiHeadAttention, attention_reference, causal_mask, kv_cache_bytes
from mlxllm import scaled_dot_product_attention

mx.random.seed(0)

# %% [markdown]
# ## 3.1 With loops: one head, one sequence
#
# Start with a single sequence of `T` token vectors `x` of shape `(T, C)` and one attention head of width
# `D`. Three weight matrices `(C, D)` turn each token vector into its query, key and value. For each
# position `t`, score every allowed key `s ≤ t` by the dot product $q_t \cdot k_s / \sqrt{D}$ (the
# $\sqrt{D}$ is explained in 3.5), turn the scores into weights that are positive and sum to 1 with a
# softmax, and average the values with those weights.

# %%
T, C, D = 6, 16, 8
x = mx.random.normal((T, C))  # (T, C): six token vectors
W_q, W_k, W_v = (mx.random.normal((C, D)) / math.sqrt(C) for _ in range(3))  # (C, D) each

q, k, v = x @ W_q, x @ W_k, x @ W_v  # (T, D) each
print("x", x.shape, "  W_q, W_k, W_v", W_q.shape, "  q, k, v", q.shape)

out_loops = []
for t in range(T):  # each query position...
    scores = [(q[t] * k[s]).sum() / math.sqrt(D) for s in range(t + 1)]  # ...against keys 0..t only
    weights = mx.softmax(mx.stack(scores))  # (t + 1,), positive, sums to 1
    out_loops.append(sum(weights[s] * v[s] for s in range(t + 1)))  # (D,)
out_loops = mx.stack(out_loops)  # (T, D)
print("output", out_loops.shape)
assert mx.allclose(out_loops[0], v[0]), "position 0 can only see itself, so it returns its own value"

# %% [markdown]
# ## 3.2 With matrices
#
# All `T × T` dot products at once are one matrix product `Q Kᵀ`, shape `(T, D) @ (D, T) → (T, T)`:
# row `t` holds query `t`'s scores against every key. The causal rule becomes a **mask**: entries above
# the diagonal (keys in the future) are set to $-\infty$ before the softmax, so they get weight exactly 0.
# Then `weights @ V` is `(T, T) @ (T, D) → (T, D)`.

# %%
mask = causal_mask(T)  # (T, T) boolean, True = may attend
scores = (q @ k.T) / math.sqrt(D)  # (T, T)
scores = mx.where(mask, scores, -mx.inf)  # future keys -> -inf
weights = mx.softmax(scores, axis=-1)  # (T, T), each row sums to 1
out_matrices = weights @ v  # (T, D)
print("scores", scores.shape, "  weights", weights.shape, "  output", out_matrices.shape)
assert mx.allclose(out_matrices, out_loops, atol=1e-6), "matrix form must equal the loops"
assert mx.allclose(weights.sum(axis=-1), mx.ones(T)) and mx.all(mx.triu(weights, 1) == 0).item()
print("matrices == loops:", True)

# %% [markdown]
# ### The causal mask as a picture
#
# Left: the mask for 8 tokens, row = query, column = key. Right: the same rule when 3 *new* queries
# arrive after 5 tokens are already cached (Section 3.7): the queries are positions 5, 6 and 7, so the
# mask is the bottom three rows of the square one, "aligned bottom-right". `causal_mask` builds both:

# %%
print(inspect.getsource(causal_mask))

# %%
fig, axes = plt.subplots(1, 2, figsize=(7, 3), gridspec_kw={"width_ratios": [8, 8]})
for ax, (n_queries, n_keys) in zip(axes, ((8, 8), (3, 8))):
    ax.imshow(np.array(causal_mask(n_queries, n_keys)), cmap="Blues", vmin=0, vmax=1.4)
    ax.set_xlabel("key position")
    ax.set_ylabel("query")
    ax.set_yticks(range(n_queries), [str(n_keys - n_queries + i) for i in range(n_queries)])
    ax.set_title(f"causal_mask({n_queries}, {n_keys})")
fig.tight_layout()
plt.show()
assert mx.array_equal(causal_mask(8), mx.tril(mx.ones((8, 8))).astype(mx.bool_))
assert mx.array_equal(causal_mask(3, 8), causal_mask(8)[5:])  # bottom-right = the last rows of the square

# %% [markdown]
# ## 3.3 Many heads at once
#
# One head computes one weighting of the past. Real models run `H` heads in parallel, each with its own
# queries, keys and values of width `D = C / H`, so each can track a different relation (the previous
# token, the subject of the sentence, a matching bracket…), and then mix their outputs with one more
# matrix, the **output projection**. The total cost stays that of one head of width `C`.
#
# Written with loops over heads, head `h` uses columns `h·D … (h+1)·D − 1` of `C × C` projection matrices:

# %%
B, T, C, H = 2, 6, 16, 4
D = C // H
x = mx.random.normal((B, T, C))  # (B, T, C)
W_q, W_k, W_v, W_o = (mx.random.normal((C, C)) / math.sqrt(C) for _ in range(4))  # (C, C) each
mask = causal_mask(T)


def one_head(x: mx.array, W_q: mx.array, W_k: mx.array, W_v: mx.array) -> mx.array:
    q, k, v = x @ W_q, x @ W_k, x @ W_v  # (B, T, D)
    scores = mx.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1]), -mx.inf)  # (B, T, T)
    return mx.softmax(scores, axis=-1) @ v  # (B, T, D)


heads = [one_head(x, W_q[:, h * D : (h + 1) * D], W_k[:, h * D : (h + 1) * D], W_v[:, h * D : (h + 1) * D])
         for h in range(H)]  # H × (B, T, D)
out_head_loop = mx.concatenate(heads, axis=-1) @ W_o  # (B, T, H·D) @ (C, C) -> (B, T, C)
print(f"{H} heads of {heads[0].shape} -> concatenated {mx.concatenate(heads, axis=-1).shape} -> W_o -> {out_head_loop.shape}")

# %% [markdown]
# The fast way does all heads in one batched matrix product. Project once to `(B, T, C)`, **reshape**
# the last axis into `(H, D)` (head `h` gets exactly columns `h·D … (h+1)·D − 1`, as above), and
# **transpose** heads in front of time, so that the last two axes are `(T, D)` and `@` multiplies every
# (batch, head) pair at once:
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


q, k, v = split_heads(x @ W_q), split_heads(x @ W_k), split_heads(x @ W_v)  # (B, H, T, D)
scores = mx.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(D), -mx.inf)  # (B, H, T, T)
per_head = mx.softmax(scores, axis=-1) @ v  # (B, H, T, D)
merged = per_head.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): heads side by side again
out_batched = merged @ W_o  # (B, T, C)
for name, value in (("q", q), ("scores", scores), ("per_head", per_head), ("merged", merged), ("out", out_batched)):
    print(f"{name:9} {value.shape}")
assert mx.allclose(out_batched, out_head_loop, atol=1e-5), "batched heads must equal the loop over heads"

# %% [markdown]
# ### The package: `attention_reference`, the fused kernel, and `MultiHeadAttention`
#
# The package keeps the step-by-step version as `attention_reference` (used by the tests and this
# book) and runs the production path through MLX's fused kernel `mx.fast.scaled_dot_product_attention`,
# which never materialises the `(T, T)` score matrix on the GPU. `MultiHeadAttention` holds the four
# projections as `nn.Linear` layers named like Hugging Face's LLaMA (`q_proj`, `k_proj`, `v_proj`,
# `o_proj`), so pretrained weights map one to one (Chapter 7). An `nn.Linear` stores its weight as
# `(out, in)` and computes `x @ weight.T`.

# %%
print(inspect.getsource(attention_reference))
print(inspect.getsource(scaled_dot_product_attention))
print(inspect.getsource(MultiHeadAttention))

# %%
attention = MultiHeadAttention(C, n_heads=H)  # MHA: n_kv_heads defaults to n_heads
# the batched code from above, with the package layer's weights (nn.Linear computes x @ weight.T)
q = split_heads(x @ attention.q_proj.weight.T)
k = split_heads(x @ attention.k_proj.weight.T)
v = split_heads(x @ attention.v_proj.weight.T)
scores = mx.where(mask, q @ k.swapaxes(-1, -2) / math.sqrt(D), -mx.inf)
ours = (mx.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, C) @ attention.o_proj.weight.T

package = attention(x)  # (B, T, C), through mx.fast.scaled_dot_product_attention
assert mx.allclose(package, ours, atol=1e-5), "MultiHeadAttention must equal the attention built by hand"
fused = scaled_dot_product_attention(q, k, v, mask="causal")
reference = attention_reference(q, k, v, causal_mask(T))
assert mx.allclose(fused, reference, atol=1e-5), "fused kernel must equal the reference"
print("package == by hand:", True, "  fused == reference:", True, "  output", package.shape)

# %% [markdown]
# ## 3.4 Attention weights on a real sentence
#
# To look at attention on real text, we tokenize a sentence with Chapter 1's tokenizer (GPT-2's
# vocabulary), embed it, and draw the weights of each head. The weights here are **random**: nothing is
# trained yet, so the patterns say nothing about language. What the picture does show is the structure
# every causal head has (lower-triangular, rows summing to 1, the first token taking all of row 0) and
# what attention looks like at initialisation: scores are small, so each row is close to a plain average
# of the past, 1/(t + 1) per token, and fades as the row gets longer. Training is what sharpens the rows
# into heads that follow the previous token or a matching word (Chapter 7 loads GPT-2's trained weights).

# %%
tokenizer = mlxllm.Tokenizer.from_gpt2_files(mlxllm.data.get_path("gpt2-vocab"), mlxllm.data.get_path("gpt2-merges"))
sentence = "The cat sat on the mat because it was tired."
ids = tokenizer.encode(sentence)
labels = [tokenizer.decode([i]) for i in ids]
print(len(ids), "tokens:", labels)
assert tokenizer.decode(ids) == sentence

# %%
T_s, C_s, H_s = len(ids), 64, 4
embedding = nn.Embedding(tokenizer.vocab_size, C_s)  # random token vectors (B = 1)
positions = mlxllm.SinusoidalPositions(T_s, C_s)
x_s = embedding(mx.array([ids])) + positions(T_s)  # (1, T, C) = (1, 11, 64)
sentence_attention = MultiHeadAttention(C_s, n_heads=H_s)
q = sentence_attention.q_proj(x_s).reshape(1, T_s, H_s, -1).transpose(0, 2, 1, 3)  # (1, H, T, D)
k = sentence_attention.k_proj(x_s).reshape(1, T_s, H_s, -1).transpose(0, 2, 1, 3)
scores = mx.where(causal_mask(T_s), q @ k.swapaxes(-1, -2) / math.sqrt(C_s // H_s), -mx.inf)
weights = mx.softmax(scores, axis=-1)[0]  # (H, T, T)
print("x", x_s.shape, "  weights", weights.shape)
assert mx.allclose(weights.sum(axis=-1), mx.ones((H_s, T_s)), atol=1e-6) and mx.all(mx.triu(weights, 1) == 0).item()
last_row = weights[:, -1, :]  # (H, T): how the final "." spreads its attention
print(f"last row: weights between {last_row.min().item():.3f} and {last_row.max().item():.3f}; uniform would be {1 / T_s:.3f}")
assert mx.abs(last_row - 1 / T_s).max().item() < 0.1  # near-uniform at initialisation

fig, axes = plt.subplots(1, H_s, figsize=(12, 3.4))
for h, ax in enumerate(axes):
    ax.imshow(np.array(weights[h]), cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(T_s), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(T_s), labels if h == 0 else [], fontsize=7)
    ax.set_title(f"head {h} (random weights)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 3.5 Why divide by √D
#
# If the entries of `q` and `k` have mean 0 and variance 1, their dot product sums `D` such products and
# has variance `D`. The scores of a 1024-wide head would spread over ±64, and the softmax of such scores
# is essentially one-hot: one key gets all the weight, the others get $e^{-50}$, and their gradients
# vanish, so the model cannot learn to move weight around. Dividing by $\sqrt{D}$ brings the variance back
# to 1 whatever the head width. Below: the average largest weight in a row of 32 keys, with and without the
# scaling, as `D` grows.

# %%
head_dims = [4, 16, 64, 256, 1024]
rows, n_keys = 256, 32
key = mx.random.key(1)
largest = {"q·k": [], "q·k / √D": []}
variances = {}
for d in head_dims:
    kq, kk, key = mx.random.split(key, 3)
    q_rand, k_rand = mx.random.normal((rows, 1, d), key=kq), mx.random.normal((rows, n_keys, d), key=kk)
    raw = (q_rand * k_rand).sum(axis=-1)  # (rows, n_keys) unscaled scores
    variances[d] = (raw.var().item(), (raw / math.sqrt(d)).var().item())
    largest["q·k"].append(mx.softmax(raw, axis=-1).max(axis=-1).mean().item())
    largest["q·k / √D"].append(mx.softmax(raw / math.sqrt(d), axis=-1).max(axis=-1).mean().item())

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
    print(f"D = {d:4}: variance of q·k = {variances[d][0]:7.1f}, of q·k/√D = {variances[d][1]:.2f}")
assert all(abs(raw_var / d - 1) < 0.15 and abs(scaled_var - 1) < 0.15 for d, (raw_var, scaled_var) in variances.items())
assert largest["q·k"][-1] > 0.8 and largest["q·k / √D"][-1] < 0.4

# %% [markdown]
# ## 3.6 Grouped-query and multi-query attention
#
# At generation time a model keeps the keys and values of every past token (next section), and for long
# contexts that memory, not the weights, is what runs out. **Multi-query attention** (MQA, Shazeer 2019)
# gives all `H` query heads one shared key head and one value head; **grouped-query attention** (GQA,
# Ainslie et al. 2023; LLaMA-2-70B, LLaMA-3, Mistral, SmolLM2) is the middle ground: `H_kv` key/value
# heads, each shared by a group of `H / H_kv` query heads. The key and value projections shrink from
# `(C, C)` to `(C, H_kv·D)`.
#
# GQA is exactly MHA whose key/value weights are repeated across each group. We check that with the
# package: a GQA layer with 2 kv heads for 4 query heads, and an MHA layer with the GQA layer's k/v weights
# copied for each query head of the group.

# %%
gqa = MultiHeadAttention(C, n_heads=H, n_kv_heads=2)
print("GQA k_proj", gqa.k_proj.weight.shape, "  q_proj", gqa.q_proj.weight.shape)
mha = MultiHeadAttention(C, n_heads=H)
group = H // 2  # query heads per kv head


def repeat_kv_heads(weight: mx.array) -> mx.array:  # (H_kv·D, C) -> (H·D, C)
    return mx.repeat(weight.reshape(2, D, C), group, axis=0).reshape(H * D, C)


mha.update({"q_proj": gqa.q_proj.parameters(), "o_proj": gqa.o_proj.parameters(),
            "k_proj": {"weight": repeat_kv_heads(gqa.k_proj.weight)}, "v_proj": {"weight": repeat_kv_heads(gqa.v_proj.weight)}})
assert mx.allclose(gqa(x), mha(x), atol=1e-5), "GQA must equal MHA with repeated kv weights"
print("GQA(x) == MHA with repeated k/v weights:", True)

# %% [markdown]
# The cache keeps keys and values for every layer, kv head and position:
#
# $$\text{bytes} = 2 \times n_\text{layers} \times H_{kv} \times D \times T \times B \times \text{bytes per value}.$$
#
# For a LLaMA-2-7B-sized model (32 layers, 32 heads of 128, float16) that is half a megabyte *per token*;
# at 4,096 tokens, 2 GiB, on top of 12.6 GiB of weights (6.74 billion × 2 bytes); at 32k tokens the cache
# outgrows the weights. With 8 kv heads (GQA, as in LLaMA-3-8B) it is four times less, with one (MQA) 32
# times less:

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
ax.axhline(6.74e9 * 2 / 2**30, color="gray", linestyle=":", label="the 7B weights (float16)")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("context length T")
ax.set_ylabel("KV cache, GiB (batch 1, float16)")
ax.set_title("KV-cache memory, 32 layers × 128-wide heads")
ax.legend(fontsize=8)
plt.show()
for name, n_kv in variants.items():
    print(f"{name:18} {kv_cache_bytes(layers, n_kv, head_dim, 1) / 2**10:6.0f} KiB per token, "
          f"{kv_cache_bytes(layers, n_kv, head_dim, 4096) / 2**30:6.3f} GiB at T = 4096")
assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 32 * 32 * 128 * 4096 * 2 == 2 * 2**30
assert kv_cache_bytes(32, 8, 128, 4096) * 4 == kv_cache_bytes(32, 32, 128, 4096)

# %% [markdown]
# ## 3.7 The KV cache
#
# Generating text calls the model once per new token. Without a cache, step `t` recomputes the keys and
# values of all `t` previous tokens, although they have not changed (causality: a token's k and v depend
# only on tokens before it). The **KV cache** stores them: the first call (the *prefill*) processes the
# prompt and saves its k and v, and every later call feeds only the new token, `(B, 1, C)`, computes its
# q, k, v, appends k and v to the cache, and attends over everything cached. With RoPE, the new token is
# rotated by its true position, `cache.offset`.
#
# `KVCache` preallocates storage in chunks of 256 positions and writes each step into it in place, instead
# of concatenating a new, one-longer array every step (which would copy the whole cache each time):

# %%
print(inspect.getsource(KVCache))

# %% [markdown]
# We check the promise that matters: prefill 5 tokens, then decode one token at a time up to 300 (past
# the first 256-position chunk), and compare with recomputing all 300 positions at once. We also record
# how much memory the cache holds as it fills.

# %%
mx.random.seed(0)
C_small, T_long = 16, 300
layer = MultiHeadAttention(C_small, n_heads=4, n_kv_heads=2, rope=mlxllm.RoPE(4))
x_long = mx.random.normal((1, T_long, C_small))  # (B, T, C)
full = layer(x_long)  # (1, 300, 16): all positions at once

cache = KVCache()
pieces = [layer(x_long[:, :5], cache=cache)]  # prefill: (1, 5, 16)
held = [cache.nbytes]
for t in range(5, T_long):
    pieces.append(layer(x_long[:, t : t + 1], cache=cache))  # one new token: (1, 1, 16)
    held.append(cache.nbytes)
incremental = mx.concatenate(pieces, axis=1)  # (1, 300, 16)
print("cache offset:", cache.offset, "  keys storage:", cache.keys.shape, "  output:", incremental.shape)
assert cache.offset == T_long and cache.keys.shape == (1, 2, 512, 4)  # two chunks of 256
assert mx.allclose(incremental, full, atol=1e-5), "cached decoding must equal full recomputation"
print("cached == full recompute:", True)

fig, ax = plt.subplots(figsize=(5.5, 2.6))
ax.step(range(5, T_long + 1), held, where="post")
ax.set_xlabel("tokens in the cache")
ax.set_ylabel("bytes allocated")
ax.set_ylim(0, 1.1 * max(held))
ax.set_title("KVCache grows in chunks of 256 positions")
plt.show()
assert held[0] == held[250] == 2 * 2 * 256 * 4 * 4  # k and v · 2 kv heads · 256 positions · D = 4 · float32

# %% [markdown]
# ## What we built
#
# - **`causal_mask`**: who may look at whom, aligned bottom-right for cached decoding.
# - **Scaled dot-product attention**, from loops to matrices to `H` heads with a reshape and a transpose;
#   the step-by-step **`attention_reference`** and the production **`scaled_dot_product_attention`**
#   (`mx.fast`), checked equal; and why the scores are divided by $\sqrt{D}$.
# - **`MultiHeadAttention`** with `n_kv_heads` for MHA, GQA and MQA (GQA = MHA with shared k/v weights,
#   checked), optional RoPE; its memory cost at generation time, **`kv_cache_bytes`**.
# - **`KVCache`**: keys and values kept between decoding steps, preallocated in chunks and written in
#   place, equal to full recomputation.
#
# Chapter 4 wraps this layer with a feed-forward network, normalization and residual connections into a
# transformer block.
