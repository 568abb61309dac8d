# %% [markdown]
# # 2. Embedding: from token ids to vectors that know where they are
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
#                           ^^^^^^^^^
# ```
#
# [Chapter 1](01_tokenization.ipynb) turned text into a list of integers. A neural
# network cannot do much with the integer 1,337 as a *number* (token 1,337 is not
# "bigger" than token 12), so the first layer of every language model replaces each id
# by a learned vector of `C` numbers. That is the **token embedding**.
#
# Then comes a surprise: the layer that does all the mixing between tokens, attention,
# does not know in which order the tokens came. We prove it, and then add **positional
# information** in the three ways models use: a learned table (GPT-2), a fixed
# sinusoidal table (the 2017 Transformer {cite:p}`vaswani2017attention`) and rotary
# embeddings (RoPE: LLaMA and nearly every model since), including the two RoPE layouts
# you meet in real checkpoints.
#
# Shapes in this chapter: `B` batch, `T` tokens, `V` vocabulary size, `C` model width,
# `D` per-head width.

# %%
import inspect

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mlxllm
from mlxllm import LearnedPositions, ModelConfig, MultiHeadAttention, RoPE
from mlxllm import SinusoidalPositions, TransformerLM
from mlxllm.tolerances import assert_close

mx.random.seed(0)

# %% [markdown]
# ## 2.1 The token embedding is a lookup, and a lookup is a matrix product
#
# An embedding is a matrix `W` of shape `(V, C)`: row `i` is the vector of token `i`.
# Looking up a batch of ids of shape `(B, T)` gives `(B, T, C)`. MLX's `nn.Embedding`
# holds that matrix as `.weight`.

# %%
V, C = 12, 8  # a toy vocabulary of 12 tokens, 8 numbers per token
embedding = nn.Embedding(V, C)
ids = mx.array([[3, 0, 11, 3], [5, 5, 2, 7]])  # (B, T) = (2, 4)
vectors = embedding(ids)
print("ids       ", ids.shape, ids.dtype)
print("W         ", embedding.weight.shape)
print("embedding ", vectors.shape, vectors.dtype)

# %% [markdown]
# Why is it called a *layer* and trained like one? Write each id as a one-hot row of
# length `V` (a 1 in column `id`, zeros elsewhere). Multiplying that row by `W` picks
# out row `id` of `W`, so the lookup is exactly the matrix product `one_hot(ids) @ W`,
# shapes `(B, T, V) @ (V, C) → (B, T, C)`. The gradient of a lookup is therefore the
# gradient of a linear layer; the lookup just skips the `V − 1` multiplications by zero.
#
# How do we check "equal" here? The lookup copies a row, while the product goes through
# a matrix-multiply kernel, and on a GPU float32 products may run in TF32, which keeps
# only 10 bits of each factor's mantissa. So, like every comparison in this book of
# floats computed by different kernels, we use the package's one tolerance policy,
# `mlxllm.tolerances.assert_close`: the largest difference, relative to the largest
# value, must stay below a bound set by the dtype and the device (1e-5 for float32, 5e-3
# where TF32 is possible, 3e-2 for bfloat16). Exact equality is kept for what is exact:
# ids, shapes, and one computation repeated.

# %%
one_hot = (mx.arange(V)[None, None, :] == ids[..., None]).astype(mx.float32)  # (B,T,V)
row_sums = one_hot.sum(axis=-1).astype(mx.int32).tolist()
print("one_hot   ", one_hot.shape, "  row sums:", row_sums)
by_matmul = one_hot @ embedding.weight  # (B, T, V) @ (V, C) -> (B, T, C)
assert_close(by_matmul, vectors, what="a lookup must equal one-hot × matrix:")
# the same token gets the same vector, wherever it is (one row copied twice: exact)
assert mx.array_equal(vectors[0, 0], vectors[0, 3])
print("lookup == one-hot @ W (within the float32 tolerance):", True)

# %% [markdown]
# The second assert is the problem this chapter solves: token 3 at position 0 and token
# 3 at position 3 get identical vectors. Nothing in the embedding says *where* a token
# is.
#
# ## 2.2 Attention alone is blind to order
#
# [Chapter 3](03_attention.ipynb) builds attention in detail; here we only need one fact
# about it. Each output is a weighted average of all the value vectors, with weights
# computed from dot products between tokens. Shuffle the input tokens and every dot
# product is still there, just in shuffled places, so the outputs come out shuffled the
# same way: attention is **permutation-equivariant**.
# `attention(x[perm]) == attention(x)[perm]`.
#
# We check it with the package's attention layer (random weights; `mask=None`, i.e.
# every token may look at every other one). The layer reads its sizes from a
# `ModelConfig` ([Chapter 5](05_next_token_prediction.ipynb) builds the whole model from
# one); here only the width and the number of heads matter.

# %%
T = 6
x = mx.random.normal((1, T, C))  # (B, T, C): six token vectors
attention = MultiHeadAttention(ModelConfig(dims=C, n_heads=2))
perm = mx.array([3, 0, 5, 1, 4, 2])  # a shuffle of the six positions

out = attention(x, mask=None)  # (1, 6, 8)
out_of_shuffled = attention(x[:, perm], mask=None)  # (1, 6, 8)
print("x", x.shape, "-> attention ->", out.shape)
# shuffled keys are summed in another order, so the match is up to rounding
assert_close(out_of_shuffled, out[:, perm],
             what="attention without positions must be permutation-equivariant:")
print("attention(x[perm]) == attention(x)[perm]:", True)

# %% [markdown]
# So "dog bites man" and "man bites dog" would produce the same three vectors, in a
# different order, and the model could not tell who bit whom. Now add a vector that
# depends on the *slot* (not the token) before attention: the shuffled tokens land in
# different slots, get different position vectors, and the equivariance breaks. That is
# all "positional information" means.
#
# (The causal mask of [Chapter 3](03_attention.ipynb), where each token only sees
# earlier ones, already leaks some order: a token can count how many tokens it sees.
# Models without any position embedding do learn from that signal, but explicit
# positions work better and are what every model family in this book uses.)

# %%
positions = 0.5 * mx.random.normal((T, C))  # a vector per slot, shared by the batch
with_positions = attention(x + positions, mask=None)
shuffled_with_positions = attention(x[:, perm] + positions, mask=None)
gap = mx.abs(shuffled_with_positions - with_positions[:, perm]).max().item()
assert gap > 1e-2, "with positions added, order must matter"
print("with positions: attention(x[perm] + P) and attention(x + P)[perm] differ "
      f"by more than 0.01: {gap > 1e-2}  (order now matters)")

# %% [markdown]
# ## 2.3 Learned positions (GPT-2)
#
# The simplest way: a second embedding table, indexed by position instead of token id,
# of shape `(context_length, C)`, added to the token vectors and trained with everything
# else. GPT-2 small's table (`wpe`) is `1024 × 768`: 786,432 parameters, and the model
# cannot handle position 1,024 because it never had a row for it.
#
# `LearnedPositions(T, C)(length, offset)` returns rows `offset … offset + length − 1`;
# the `offset` is used when decoding with a cache ([Chapter 3](03_attention.ipynb)),
# where the new token is not at position 0.

# %%
learned = LearnedPositions(context_length=16, dims=C)
print("table", learned.weight.shape, " rows 5..7:", learned(3, offset=5).shape)
assert mx.array_equal(learned(3, offset=5), learned.weight[5:8])
token_and_position = vectors + learned(4)  # (B, T, C) + (T, C) -> (B, T, C)
print("tokens + positions:", token_and_position.shape)
# token 3 at slots 0 and 3 now differs
assert not mx.array_equal(token_and_position[0, 0], token_and_position[0, 3])

# %% [markdown]
# ## 2.4 Sinusoidal positions ("Attention Is All You Need")
#
# The 2017 Transformer {cite:p}`vaswani2017attention` used a fixed table instead, with
# nothing to learn:
#
# $$PE[t, 2i] = \sin\left(\frac{t}{10000^{2i/C}}\right), \qquad
#   PE[t, 2i+1] = \cos\left(\frac{t}{10000^{2i/C}}\right).$$
#
# Column pair `i` is a sine/cosine wave whose wavelength grows geometrically from $2\pi$
# (pair 0, one radian per position) to about $2\pi \cdot 10000$ (the last pair): the
# fast columns tell neighbours apart, the slow ones tell far-apart positions apart, like
# the hands of a clock. Because $\sin(a + b)$ and $\cos(a + b)$ are fixed linear
# combinations of $\sin a$ and $\cos a$, the vector at $t + k$ is a rotation of the
# vector at $t$ that depends only on $k$, an idea RoPE (next) takes all the way. We
# build the table with two loops, straight from the formula:

# %%
def sinusoidal_by_hand(context_length: int, dims: int,
                       base: float = 10000.0) -> np.ndarray:
    table = np.zeros((context_length, dims))
    for t in range(context_length):
        for i in range(dims // 2):
            angle = t / base ** (2 * i / dims)
            table[t, 2 * i] = np.sin(angle)
            table[t, 2 * i + 1] = np.cos(angle)
    return table


T_max, C_big = 64, 32
table = sinusoidal_by_hand(T_max, C_big)  # (T, C) = (64, 32)
print("sinusoidal table", table.shape, "  PE[1, 0:2] =", np.round(table[1, :2], 4),
      "= (sin 1, cos 1)")

fig, ax = plt.subplots(figsize=(7, 3))
image = ax.imshow(table.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set_xlabel("position t")
ax.set_ylabel("feature (2i: sin, 2i+1: cos)")
ax.set_title("Sinusoidal position table, C = 32")
fig.colorbar(image, ax=ax)
plt.show()

# %% [markdown]
# The top rows flicker from position to position, the bottom ones barely move over 64
# positions. Here is the package's version, vectorised (no loops) and returned as an MLX
# array:

# %%
print(inspect.getsource(mlxllm.embedding.sinusoidal_table))

# %%
package_table = np.array(mlxllm.sinusoidal_table(T_max, C_big))  # float32, vectorised
assert_close(package_table, table, what="package table must equal the formula:")
# every row has norm √(C/2): sin² + cos² = 1 per pair
assert np.allclose(np.linalg.norm(table, axis=1), np.sqrt(C_big / 2))
row_norm = round(float(np.linalg.norm(table[10])), 4)
print("package == by hand:", True, "  row norm:", row_norm, "= √16")
# the table is fixed, so SinusoidalPositions keeps it out of the trainable parameters
print("trainable parameters of SinusoidalPositions:",
      SinusoidalPositions(T_max, C_big).trainable_parameters())

# %% [markdown]
# ## 2.5 Rotary position embedding (RoPE): positions as rotations
#
# Learned and sinusoidal positions are *added* to the token vector once, at the bottom
# of the model, and every layer has to untangle "what" from "where". RoPE
# {cite:p}`su2021roformer` instead encodes position inside every attention layer, in the
# only place where it matters: the dot product $q \cdot k$ between a query at position
# $m$ and a key at position $n$.
#
# Split the `D` features of a query (or key) head into `D/2` pairs and treat each pair
# as a point in the plane. At position $t$, rotate pair $i$ by the angle $t \, \theta_i$
# with $\theta_i = \text{base}^{-2i/D}$ (the same frequencies as the sinusoidal table;
# base = 10,000 by default, LLaMA 3 uses 500,000). The picture shows one pair rotating
# as the position grows, for a fast pair ($\theta_0 = 1$ rad per position) and a slower
# one ($\theta_1 = 0.1$):

# %%
D = 8
thetas = 10000.0 ** (-np.arange(0, D, 2) / D)  # (D/2,) = 1, 0.1, 0.01, 0.001
print("frequencies θ_i:", np.round(thetas, 4))

fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
for ax, i in zip(axes, (0, 1)):
    for t in range(8):
        angle = t * thetas[i]
        ax.annotate("", xy=(np.cos(angle), np.sin(angle)), xytext=(0, 0),
                    arrowprops=dict(arrowstyle="->", color=plt.cm.viridis(t / 7)))
        ax.text(1.12 * np.cos(angle), 1.12 * np.sin(angle), str(t),
                ha="center", va="center", fontsize=8)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_title(f"pair {i}: θ = {thetas[i]:g} rad / position")
    ax.axis("off")
fig.suptitle("RoPE rotates the pair (1, 0) by t·θ at position t = 0 … 7")
fig.tight_layout()
plt.show()

# %% [markdown]
# Rotations are what make this work: rotating $q$ by angle $m\theta$ and $k$ by
# $n\theta$ and taking their dot product is the same as rotating $k$ by $(n - m)\theta$
# relative to $q$. So
#
# $$\text{RoPE}(q, m) \cdot \text{RoPE}(k, n) \text{ depends only on } m - n,$$
#
# the *relative* distance: attention scores are the same wherever in the text the two
# tokens sit.
#
# ### Building it by hand
#
# Which features form a pair is a convention, and there are two in use:
#
# - **adjacent pairs** $(x_0, x_1), (x_2, x_3), \dots$: the RoFormer paper
#   {cite:p}`su2021roformer` and Meta's original LLaMA code (`traditional=True` in MLX);
# - **rotate-half** $(x_0, x_{D/2}), (x_1, x_{D/2+1}), \dots$: Hugging Face's
#   implementation, and so every checkpoint in Hugging Face format
#   (`traditional=False`).
#
# The rotation of a pair $(a, b)$ by angle $\phi$ is
# $(a\cos\phi - b\sin\phi,\; a\sin\phi + b\cos\phi)$. Input and output shape
# `(B, H, T, D)`.

# %%
def rope_by_hand(x: mx.array, offset: int = 0, base: float = 10000.0,
                 traditional: bool = False) -> mx.array:
    *_, T, D = x.shape  # (B, H, T, D)
    freqs = base ** (-mx.arange(0, D, 2, dtype=mx.float32) / D)  # (D/2,)
    positions = mx.arange(offset, offset + T, dtype=mx.float32)  # (T,)
    angles = positions[:, None] * freqs[None, :]  # (T, D/2)
    cos, sin = mx.cos(angles), mx.sin(angles)
    if traditional:  # pairs (x0, x1), (x2, x3), ...
        a, b = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
        rotated = mx.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
        return rotated.reshape(x.shape)  # (B, H, T, D/2, 2) -> (B, H, T, D)
    a, b = x[..., : D // 2], x[..., D // 2 :]  # pairs (x_i, x_{i + D/2})
    return mx.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


q = mx.random.normal((1, 2, 5, D))  # (B, H, T, D) = (1, 2, 5, 8)
print("q", q.shape, "-> rope ->", rope_by_hand(q).shape)
# position 0: rotation by angle 0 (cos 0 = 1 and sin 0 = 0 exactly)
assert mx.array_equal(rope_by_hand(q)[..., 0, :], q[..., 0, :])
# a rotation keeps lengths: each pair, hence each vector, keeps its norm
norms = mx.linalg.norm(rope_by_hand(q, offset=100), axis=-1)
assert_close(norms, mx.linalg.norm(q, axis=-1), what="a rotation must keep the norm:")
print("rotation keeps every vector's norm:", True)

# %% [markdown]
# The package's `RoPE` is a thin wrapper over MLX's fused kernel `mx.fast.rope`, with
# the layout and base as settings and the offset passed at call time:

# %%
print(inspect.getsource(RoPE))

# %% [markdown]
# The fused kernel and our rotation compute the angle $t\,\theta_i$ in float32, each in
# its own way, and a float32 angle near $t$ radians is only known to about
# $t \times 6 \times 10^{-8}$: $6 \times 10^{-5}$ at position 1,000. The differences
# therefore grow with the position, and for this check we state a looser bound, 1e-4,
# instead of the float32 default.

# %%
for traditional in (True, False):
    rope = RoPE(D, base=10000.0, traditional=traditional)
    for offset in (0, 7, 1000):
        assert_close(rope(q, offset), rope_by_hand(q, offset, traditional=traditional),
                     rtol=1e-4, what="mx.fast.rope must equal the rotation by hand:")
        print(f"traditional={traditional!s:5}  offset={offset:4}  package == by hand "
              "(within 1e-4): True")

# %% [markdown]
# ### The score depends only on the distance
#
# Take one query vector and one key vector, put the query at position $m$ and the key at
# $n$, rotate both, and plot the score against $m - n$ for three different absolute
# positions of the key. If RoPE does what it promises, the three curves lie on top of
# each other.

# %%
D = 32
rope = RoPE(D)
q1, k1 = mx.random.normal((1, 1, 1, D)), mx.random.normal((1, 1, 1, D))  # one q, one k


def score(m: int, n: int) -> float:
    return (rope(q1, m) * rope(k1, n)).sum().item()  # q·k, q at position m, k at n


distances = np.arange(0, 41)
fig, ax = plt.subplots(figsize=(6, 3))
curves = {}
for n, marker in ((0, "o"), (50, "x"), (500, "+")):
    curves[n] = np.array([score(n + d, n) for d in distances])
    ax.plot(distances, curves[n], marker, label=f"key at position {n}", markersize=5)
ax.set_xlabel("distance m − n")
ax.set_ylabel("q · k")
ax.set_title("RoPE: the score depends on the distance, not on where the pair sits")
ax.legend(fontsize=8)
plt.show()

spread = max(np.abs(curves[n] - curves[0]).max() for n in (50, 500))
assert spread < 1e-3, "RoPE scores must depend only on m - n"
assert np.ptp(curves[0]) > 1.0  # ...but they do depend on the distance
print("curves agree:", spread < 1e-3, "  score range over distances 0..40: "
      f"{curves[0].min():.1f} … {curves[0].max():.1f}")

# %% [markdown]
# ## 2.6 Two layouts, and why a checkpoint needs the right one
#
# Both layouts rotate pairs by the same angles; they only disagree on *which* features
# are paired. A trained model has learned its q and k projections for one pairing. Apply
# the other layout and features that were never meant to rotate together are rotated
# together: the attention scores change, and the model's output turns to noise. This is
# why `ModelConfig` has `rope_traditional`, and why loading a checkpoint
# ([Chapter 7](07_pretrained.ipynb)) must set it from the checkpoint's origin.

# %%
D = 8
q2, k2 = mx.random.normal((1, 1, 6, D)), mx.random.normal((1, 1, 6, D))  # 6 q's, 6 k's


def scores(traditional: bool, q: mx.array = q2, k: mx.array = k2) -> mx.array:
    rope = RoPE(D, traditional=traditional)
    return rope(q) @ rope(k).swapaxes(-1, -2)  # (1, 1, 6, 6) scores before the softmax


wrong = mx.abs(scores(True) - scores(False)).max().item()
assert wrong > 0.1, "the two layouts must give different scores"
print(f"same q and k, other layout: scores change by up to {wrong:.1f}")

# %% [markdown]
# The two layouts are the same rotation applied to reordered features. Reorder the
# features as "even ones first, then odd ones", `perm = [0, 2, 4, 6, 1, 3, 5, 7]`: then
# adjacent pair $(x_{2i}, x_{2i+1})$ lands at positions $(i, i + D/2)$, exactly a
# rotate-half pair with the same frequency. Permuting q and k the same way does not
# change their dot product. So a checkpoint written for adjacent pairs works with
# rotate-half once the rows of its `q_proj` and `k_proj` weights are permuted. This is
# precisely what Hugging Face's LLaMA conversion script does to Meta's weights, and the
# reason their checkpoints use rotate-half.

# %%
perm = mx.concatenate([mx.arange(0, D, 2), mx.arange(1, D, 2)])  # evens, then odds
print("perm:", perm.tolist())
rotated_half = RoPE(D, traditional=False)(q2[..., perm])
assert_close(rotated_half, RoPE(D, traditional=True)(q2)[..., perm],
             what="rotate-half of permuted features must be adjacent pairs, permuted:")
permuted_scores = scores(False, q2[..., perm], k2[..., perm])
assert_close(permuted_scores, scores(True),
             what="permuted features + rotate-half must score like adjacent pairs:")
print("rotate-half on permuted features == adjacent pairs:", True)

# %% [markdown]
# ## 2.7 Positions in the model
#
# `ModelConfig(position=...)` picks one of the three (or `"none"`). Learned and
# sinusoidal tables are added to the token embeddings at the bottom of `TransformerLM`;
# RoPE is handed to every attention layer. Only the learned table costs parameters:

# %%
sizes = dict(vocab_size=100, context_length=64, dims=32, n_layers=1, n_heads=4)
counts = {}
for position in ("learned", "sinusoidal", "rope", "none"):
    model = TransformerLM(ModelConfig(**sizes, position=position))
    logits = model(mx.array([[1, 2, 3, 4, 5]]))  # (B, T) -> (B, T, V)
    counts[position] = model.num_parameters()
    print(f"{position:10}  parameters: {counts[position]:6,}  logits {logits.shape}")
assert counts["learned"] - counts["rope"] == 64 * 32  # the table: context_length × dims

# %% [markdown]
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 2.1 (count).** GPT-2 small has a vocabulary of 50,257 tokens, a context of
# 1,024 positions and width 768. How many parameters do its token table and its learned
# position table hold, and what fraction of its 124,439,808 parameters
# ([Chapter 4](04_transformer_block.ipynb) counts them) is that? Check with
# `nn.Embedding` and `LearnedPositions`.

# %% tags=["hide-input"]
wte = nn.Embedding(50257, 768)  # MLX is lazy: no random numbers are drawn for .size
wpe = LearnedPositions(context_length=1024, dims=768)
table_params = wte.weight.size + wpe.weight.size
assert wte.weight.size == 50257 * 768 == 38_597_376
assert wpe.weight.size == 1024 * 768 == 786_432
print(f"token table {wte.weight.size:,} + position table {wpe.weight.size:,} = "
      f"{table_params:,}: {table_params / 124_439_808:.0%} of GPT-2 small")

# %% [markdown]
# **Exercise 2.2 (check a property).** Show numerically that in §2.4's sinusoidal
# `table` (64 positions, 32 features) the dot product $PE[t] \cdot PE[t + k]$ depends
# only on the distance $k$, not on $t$, and that it equals
# $\sum_i \cos(k\,\theta_i)$ with $\theta_i = 10000^{-2i/C}$. Hint:
# $\sin a \sin b + \cos a \cos b = \cos(a - b)$.

# %% tags=["hide-input"]
frequencies = 10000.0 ** (-np.arange(0, C_big, 2) / C_big)  # θ_i, (C/2,)
for k in range(0, 20):
    dots = (table[: T_max - k] * table[k:]).sum(axis=1)  # PE[t]·PE[t+k] for every t
    # float64 numpy: the same on every machine, so a tight check is fair
    assert np.allclose(dots, np.cos(k * frequencies).sum(), atol=1e-9)
print("PE[t]·PE[t+k] = Σ cos(k·θ_i) for every t and k = 0..19: True")

# %% [markdown]
# **Exercise 2.3 (predict, then run).** Put a query and a key at the *same* position
# $m$ and rotate both with `RoPE(32)`. Predict how their dot product compares with
# the dot product of the unrotated vectors, for $m$ = 0, 17 and 1,000.

# %% tags=["hide-input"]
rope32 = RoPE(32)
q_same = mx.random.normal((1, 8, 1, 32), key=mx.random.key(5))  # 8 heads, one token
k_same = mx.random.normal((1, 8, 1, 32), key=mx.random.key(6))
plain_dots = (q_same * k_same).sum(axis=-1)  # (1, 8, 1)
for m in (0, 17, 1000):
    rotated_dots = (rope32(q_same, m) * rope32(k_same, m)).sum(axis=-1)
    # the same rotation of both vectors keeps their dot product (distance m − m = 0);
    # the angle's float32 rounding grows with m, hence 1e-4 as in §2.5
    assert_close(rotated_dots, plain_dots, rtol=1e-4,
                 what="equal positions must leave q·k unchanged:")
print("same position, any m: rotated q·k == unrotated q·k (within 1e-4): True")

# %% [markdown]
# **Exercise 2.4 (the gradient of a lookup).** With §2.1's `embedding`, `ids` and
# `one_hot`, take the loss `(W[ids] * g).sum()` for a fixed random `g` of shape
# `(2, 4, 8)`. Predict its gradient with respect to `W`: which rows are zero, and
# what is row 3 (token 3 occurs twice)? Check with `mx.grad` and against
# `one_hotᵀ @ g`, the gradient of the equivalent matrix product.

# %% tags=["hide-input"]
g = mx.random.normal((2, 4, C), key=mx.random.key(7))  # (B, T, C): upstream gradient
grad_W = mx.grad(lambda W: (W[ids] * g).sum())(embedding.weight)  # (V, C)
# a matrix product's gradient: one_hotᵀ (V, B·T) @ g (B·T, C)
expected = one_hot.reshape(-1, V).T @ g.reshape(-1, C)
assert_close(grad_W, expected, what="lookup gradient must equal one_hotᵀ @ g:")
unused = [i for i in range(V) if i not in set(ids.reshape(-1).tolist())]
assert mx.array_equal(grad_W[mx.array(unused)], mx.zeros((len(unused), C)))
assert_close(grad_W[3], g[0, 0] + g[0, 3], what="a repeated token adds up:")
print(f"rows of the {len(unused)} unused tokens are exactly 0; row 3 = g[0, 0] + "
      "g[0, 3]; gradient == one_hotᵀ @ g: True")

# %% [markdown]
# ## What we built
#
# - **Token embedding**: `nn.Embedding(V, C)`, ids `(B, T)` → vectors `(B, T, C)`; a
#   lookup that equals one-hot × matrix.
# - A proof that **attention is blind to order** without positional information
#   (permutation-equivariant).
# - **`LearnedPositions`** (GPT-2's trainable table) and **`SinusoidalPositions`** /
#   `sinusoidal_table` (the fixed sin/cos table, checked against the formula).
# - **`RoPE`**: rotations of feature pairs by position × frequency through
#   `mx.fast.rope`, equal to our from-scratch rotation in both layouts (adjacent pairs,
#   `traditional=True`; rotate-half, `traditional=False`), with scores that depend only
#   on the distance between tokens, and the feature permutation that converts one layout
#   into the other.
#
# Next, [Chapter 3](03_attention.ipynb) builds the attention layer these vectors flow
# into.
