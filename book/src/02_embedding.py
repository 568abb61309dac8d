# %% [markdown]
# # 2. Embedding: from token ids to vectors that know where they are
#
# ```
# text ──tokenization──▶ token ids ──embedding──▶ T×C vectors ──N × transformer block──▶ T×C ──prediction──▶ T×V
#                                   ^^^^^^^^^
# ```
#
# Chapter 1 turned text into a list of integers. A neural network cannot do much with the integer
# 1,337 as a *number* (token 1,337 is not "bigger" than token 12), so the first layer of every language
# model replaces each id by a learned vector of `C` numbers. That is the **token embedding**.
#
# Then comes a surprise: the layer that does all the mixing between tokens, attention, does not know in
# which order the tokens came. We prove it, and then add **positional information** in the three ways
# models use: a learned table (GPT-2), a fixed sinusoidal table (the 2017 Transformer) and rotary
# embeddings (RoPE: LLaMA and nearly every model since), including the two RoPE layouts you meet in real
# checkpoints.
#
# Shapes in this chapter: `B` batch, `T` tokens, `V` vocabulary size, `C` model width, `D` per-head width.

# %%
import inspect

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mlxllm
from mlxllm import LearnedPositions, ModelConfig, MultiHeadAttention, RoPE, SinusoidalPositions, TransformerLM

mx.random.seed(0)

# %% [markdown]
# ## 2.1 The token embedding is a lookup, and a lookup is a matrix product
#
# An embedding is a matrix `W` of shape `(V, C)`: row `i` is the vector of token `i`. Looking up a batch
# of ids of shape `(B, T)` gives `(B, T, C)`. MLX's `nn.Embedding` holds that matrix as `.weight`.

# %%
V, C = 12, 8  # a toy vocabulary of 12 tokens, 8 numbers per token
embedding = nn.Embedding(V, C)
ids = mx.array([[3, 0, 11, 3], [5, 5, 2, 7]])  # (B, T) = (2, 4)
vectors = embedding(ids)
print("ids       ", ids.shape, ids.dtype)
print("W         ", embedding.weight.shape)
print("embedding ", vectors.shape, vectors.dtype)

# %% [markdown]
# Why is it called a *layer* and trained like one? Write each id as a one-hot row of length `V` (a 1 in
# column `id`, zeros elsewhere). Multiplying that row by `W` picks out row `id` of `W`, so the lookup is
# exactly the matrix product `one_hot(ids) @ W`, shapes `(B, T, V) @ (V, C) → (B, T, C)`. The gradient of
# a lookup is therefore the gradient of a linear layer; the lookup just skips the `V − 1` multiplications
# by zero.

# %%
one_hot = (mx.arange(V)[None, None, :] == ids[..., None]).astype(mx.float32)  # (B, T, V)
print("one_hot   ", one_hot.shape, "  row sums:", one_hot.sum(axis=-1).astype(mx.int32).tolist())
by_matmul = one_hot @ embedding.weight  # (B, T, V) @ (V, C) -> (B, T, C)
assert mx.array_equal(by_matmul, vectors), "a lookup must equal one-hot × matrix"
assert mx.array_equal(vectors[0, 0], vectors[0, 3])  # the same token gets the same vector, wherever it is
print("lookup == one-hot @ W:", mx.array_equal(by_matmul, vectors).item())

# %% [markdown]
# The second assert is the problem this chapter solves: token 3 at position 0 and token 3 at position 3
# get identical vectors. Nothing in the embedding says *where* a token is.
#
# ## 2.2 Attention alone is blind to order
#
# Chapter 3 builds attention in detail; here we only need one fact about it. Each output is a weighted
# average of all the value vectors, with weights computed from dot products between tokens. Shuffle the
# input tokens and every dot product is still there, just in shuffled places, so the outputs come out
# shuffled the same way: attention is **permutation-equivariant**. `attention(x[perm]) == attention(x)[perm]`.
#
# We check it with the package's attention layer (random weights; `mask=None`, i.e. every token may look
# at every other one).

# %%
T = 6
x = mx.random.normal((1, T, C))  # (B, T, C): six token vectors
attention = MultiHeadAttention(C, n_heads=2)
perm = mx.array([3, 0, 5, 1, 4, 2])  # a shuffle of the six positions

out = attention(x, mask=None)  # (1, 6, 8)
out_of_shuffled = attention(x[:, perm], mask=None)  # (1, 6, 8)
print("x", x.shape, "-> attention ->", out.shape)
assert mx.allclose(out_of_shuffled, out[:, perm], atol=1e-6), "attention without positions must be permutation-equivariant"
print("attention(x[perm]) == attention(x)[perm]:", True)

# %% [markdown]
# So "dog bites man" and "man bites dog" would produce the same three vectors, in a different order,
# and the model could not tell who bit whom. Now add a vector that depends on the *slot* (not the token)
# before attention: the shuffled tokens land in different slots, get different position vectors, and the
# equivariance breaks. That is all "positional information" means.
#
# (The causal mask of Chapter 3, where each token only sees earlier ones, already leaks some order:
# a token can count how many tokens it sees. Models without any position embedding do learn from that
# signal, but explicit positions work better and are what every model family in this book uses.)

# %%
positions = 0.5 * mx.random.normal((T, C))  # one vector per slot, (T, C), broadcast over the batch
with_positions = attention(x + positions, mask=None)
shuffled_with_positions = attention(x[:, perm] + positions, mask=None)
gap = mx.abs(shuffled_with_positions - with_positions[:, perm]).max().item()
assert gap > 1e-2, "with positions added, order must matter"
print(f"with positions: max |attention(x[perm] + P) - attention(x + P)[perm]| = {gap:.3f}  (order now matters)")

# %% [markdown]
# ## 2.3 Learned positions (GPT-2)
#
# The simplest way: a second embedding table, indexed by position instead of token id, of shape
# `(context_length, C)`, added to the token vectors and trained with everything else. GPT-2 small's
# table (`wpe`) is `1024 × 768`: 786,432 parameters, and the model cannot handle position 1,024
# because it never had a row for it.
#
# `LearnedPositions(T, C)(length, offset)` returns rows `offset … offset + length − 1`; the `offset` is
# used when decoding with a cache (Chapter 3), where the new token is not at position 0.

# %%
learned = LearnedPositions(context_length=16, dims=C)
print("table", learned.weight.shape, " rows 5..7:", learned(3, offset=5).shape)
assert mx.array_equal(learned(3, offset=5), learned.weight[5:8])
token_and_position = vectors + learned(4)  # (B, T, C) + (T, C) -> (B, T, C)
print("tokens + positions:", token_and_position.shape)
assert not mx.array_equal(token_and_position[0, 0], token_and_position[0, 3])  # token 3 at slots 0 and 3 now differ

# %% [markdown]
# ## 2.4 Sinusoidal positions ("Attention Is All You Need")
#
# The 2017 Transformer used a fixed table instead, with nothing to learn:
#
# $$PE[t, 2i] = \sin\left(\frac{t}{10000^{2i/C}}\right), \qquad PE[t, 2i+1] = \cos\left(\frac{t}{10000^{2i/C}}\right).$$
#
# Column pair `i` is a sine/cosine wave whose wavelength grows geometrically from $2\pi$ (pair 0, one
# radian per position) to about $2\pi \cdot 10000$ (the last pair): the fast columns tell neighbours apart,
# the slow ones tell far-apart positions apart, like the hands of a clock. Because
# $\sin(a + b)$ and $\cos(a + b)$ are fixed linear combinations of $\sin a$ and $\cos a$, the vector at
# $t + k$ is a rotation of the vector at $t$ that depends only on $k$, an idea RoPE (next) takes all the
# way. We build the table with two loops, straight from the formula:

# %%
def sinusoidal_by_hand(context_length: int, dims: int, base: float = 10000.0) -> np.ndarray:
    table = np.zeros((context_length, dims))
    for t in range(context_length):
        for i in range(dims // 2):
            angle = t / base ** (2 * i / dims)
            table[t, 2 * i] = np.sin(angle)
            table[t, 2 * i + 1] = np.cos(angle)
    return table


T_max, C_big = 64, 32
table = sinusoidal_by_hand(T_max, C_big)  # (T, C) = (64, 32)
print("sinusoidal table", table.shape, "  PE[1, 0:2] =", np.round(table[1, :2], 4), "= (sin 1, cos 1)")

fig, ax = plt.subplots(figsize=(7, 3))
image = ax.imshow(table.T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set_xlabel("position t")
ax.set_ylabel("feature (2i: sin, 2i+1: cos)")
ax.set_title("Sinusoidal position table, C = 32")
fig.colorbar(image, ax=ax)
plt.show()

# %% [markdown]
# The top rows flicker from position to position, the bottom ones barely move over 64 positions.
# Here is the package's version, vectorised (no loops) and returned as an MLX array:

# %%
print(inspect.getsource(mlxllm.embedding.sinusoidal_table))

# %%
package_table = np.array(mlxllm.sinusoidal_table(T_max, C_big))
assert np.abs(package_table - table).max() < 1e-4, "package table must equal the formula"
assert np.allclose(np.linalg.norm(table, axis=1), np.sqrt(C_big / 2))  # every row has norm √(C/2): sin² + cos² = 1 per pair
print("package == by hand:", True, "  row norm:", round(float(np.linalg.norm(table[10])), 4), "= √16")
# the table is fixed, so SinusoidalPositions keeps it out of the trainable parameters
print("trainable parameters of SinusoidalPositions:", SinusoidalPositions(T_max, C_big).trainable_parameters())

# %% [markdown]
# ## 2.5 Rotary position embedding (RoPE): positions as rotations
#
# Learned and sinusoidal positions are *added* to the token vector once, at the bottom of the model, and
# every layer has to untangle "what" from "where". RoPE (Su et al., 2021) instead encodes position inside
# every attention layer, in the only place where it matters: the dot product $q \cdot k$ between a query
# at position $m$ and a key at position $n$.
#
# Split the `D` features of a query (or key) head into `D/2` pairs and treat each pair as a point in the
# plane. At position $t$, rotate pair $i$ by the angle $t \, \theta_i$ with $\theta_i = \text{base}^{-2i/D}$
# (the same frequencies as the sinusoidal table; base = 10,000 by default, LLaMA 3 uses 500,000). The
# picture shows one pair rotating as the position grows, for a fast pair ($\theta_0 = 1$ rad per position)
# and a slower one ($\theta_1 = 0.1$):

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
        ax.text(1.12 * np.cos(angle), 1.12 * np.sin(angle), str(t), ha="center", va="center", fontsize=8)
    ax.set_xlim(-1.3, 1.3)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_title(f"pair {i}: θ = {thetas[i]:g} rad / position")
    ax.axis("off")
fig.suptitle("RoPE rotates the pair (1, 0) by t·θ at position t = 0 … 7")
fig.tight_layout()
plt.show()

# %% [markdown]
# Rotations are what make this work: rotating $q$ by angle $m\theta$ and $k$ by $n\theta$ and taking
# their dot product is the same as rotating $k$ by $(n - m)\theta$ relative to $q$. So
#
# $$\text{RoPE}(q, m) \cdot \text{RoPE}(k, n) \text{ depends only on } m - n,$$
#
# the *relative* distance: attention scores are the same wherever in the text the two tokens sit.
#
# ### Building it by hand
#
# Which features form a pair is a convention, and there are two in use:
#
# - **adjacent pairs** $(x_0, x_1), (x_2, x_3), \dots$: the RoFormer paper and Meta's original LLaMA code
#   (`traditional=True` in MLX);
# - **rotate-half** $(x_0, x_{D/2}), (x_1, x_{D/2+1}), \dots$: Hugging Face's implementation, and so every
#   checkpoint in Hugging Face format (`traditional=False`).
#
# The rotation of a pair $(a, b)$ by angle $\phi$ is $(a\cos\phi - b\sin\phi,\; a\sin\phi + b\cos\phi)$.
# Input and output shape `(B, H, T, D)`.

# %%
def rope_by_hand(x: mx.array, offset: int = 0, base: float = 10000.0, traditional: bool = False) -> mx.array:
    *_, T, D = x.shape  # (B, H, T, D)
    freqs = base ** (-mx.arange(0, D, 2, dtype=mx.float32) / D)  # (D/2,)
    angles = mx.arange(offset, offset + T, dtype=mx.float32)[:, None] * freqs[None, :]  # (T, D/2)
    cos, sin = mx.cos(angles), mx.sin(angles)
    if traditional:  # pairs (x0, x1), (x2, x3), ...
        a, b = x[..., 0::2], x[..., 1::2]  # (B, H, T, D/2) each
        return mx.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(x.shape)
    a, b = x[..., : D // 2], x[..., D // 2 :]  # pairs (x_i, x_{i + D/2})
    return mx.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)


q = mx.random.normal((1, 2, 5, D))  # (B, H, T, D) = (1, 2, 5, 8)
print("q", q.shape, "-> rope ->", rope_by_hand(q).shape)
assert mx.allclose(rope_by_hand(q)[..., 0, :], q[..., 0, :])  # position 0: rotation by angle 0
# a rotation keeps lengths: each pair, hence each vector, keeps its norm
assert mx.allclose(mx.linalg.norm(rope_by_hand(q, offset=100), axis=-1), mx.linalg.norm(q, axis=-1), atol=1e-5)

# %% [markdown]
# The package's `RoPE` is a thin wrapper over MLX's fused kernel `mx.fast.rope`, with the layout and
# base as settings and the offset passed at call time:

# %%
print(inspect.getsource(RoPE))

# %% tags=["nbval-ignore-output"]
for traditional in (True, False):
    rope = RoPE(D, base=10000.0, traditional=traditional)
    for offset in (0, 7, 1000):
        difference = mx.abs(rope(q, offset) - rope_by_hand(q, offset, traditional=traditional)).max().item()
        print(f"traditional={traditional!s:5}  offset={offset:4}  max |package − by hand| = {difference:.1e}")
        assert difference < 1e-4, "mx.fast.rope must equal the rotation written by hand"

# %% [markdown]
# (The differences are float32 rounding of the angles, largest at large offsets.)
#
# ### The score depends only on the distance
#
# Take one query vector and one key vector, put the query at position $m$ and the key at $n$, rotate
# both, and plot the score against $m - n$ for three different absolute positions of the key. If RoPE
# does what it promises, the three curves lie on top of each other.

# %%
D = 32
rope = RoPE(D)
q1, k1 = mx.random.normal((1, 1, 1, D)), mx.random.normal((1, 1, 1, D))  # one query, one key


def score(m: int, n: int) -> float:
    return (rope(q1, m) * rope(k1, n)).sum().item()  # q·k with q at position m, k at position n


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

spread = max(np.abs(curves[50] - curves[0]).max(), np.abs(curves[500] - curves[0]).max())
assert spread < 1e-3, "RoPE scores must depend only on m - n"
assert np.ptp(curves[0]) > 1.0  # ...but they do depend on the distance
print("curves agree:", spread < 1e-3, f"  score range over distances 0..40: {curves[0].min():.2f} … {curves[0].max():.2f}")

# %% [markdown]
# ## 2.6 Two layouts, and why a checkpoint needs the right one
#
# Both layouts rotate pairs by the same angles; they only disagree on *which* features are paired. A
# trained model has learned its q and k projections for one pairing. Apply the other layout and features
# that were never meant to rotate together are rotated together: the attention scores change, and the
# model's output turns to noise. This is why `ModelConfig` has `rope_traditional`, and why loading a
# checkpoint (Chapter 7) must set it from the checkpoint's origin.

# %%
D = 8
q2, k2 = mx.random.normal((1, 1, 6, D)), mx.random.normal((1, 1, 6, D))  # six queries and six keys


def scores(traditional: bool, q: mx.array = q2, k: mx.array = k2) -> mx.array:
    rope = RoPE(D, traditional=traditional)
    return rope(q) @ rope(k).swapaxes(-1, -2)  # (1, 1, 6, 6) scores before the softmax


wrong = mx.abs(scores(True) - scores(False)).max().item()
assert wrong > 0.1, "the two layouts must give different scores"
print(f"same q and k, other layout: scores change by up to {wrong:.2f}")

# %% [markdown]
# The two layouts are the same rotation applied to reordered features. Reorder the features as
# "even ones first, then odd ones", `perm = [0, 2, 4, 6, 1, 3, 5, 7]`: then adjacent pair $(x_{2i}, x_{2i+1})$
# lands at positions $(i, i + D/2)$, exactly a rotate-half pair with the same frequency. Permuting q and k
# the same way does not change their dot product. So a checkpoint written for adjacent pairs works with
# rotate-half once the rows of its `q_proj` and `k_proj` weights are permuted. This is precisely what
# Hugging Face's LLaMA conversion script does to Meta's weights, and the reason their checkpoints use
# rotate-half.

# %%
perm = mx.concatenate([mx.arange(0, D, 2), mx.arange(1, D, 2)])  # [0, 2, 4, 6, 1, 3, 5, 7]
print("perm:", perm.tolist())
rotated_half = RoPE(D, traditional=False)(q2[..., perm])
assert mx.allclose(rotated_half, RoPE(D, traditional=True)(q2)[..., perm], atol=1e-6)
permuted_scores = scores(False, q2[..., perm], k2[..., perm])
assert mx.allclose(permuted_scores, scores(True), atol=1e-5), "permuted features + rotate-half == adjacent pairs"
print("rotate-half on permuted features == adjacent pairs:", True)

# %% [markdown]
# ## 2.7 Positions in the model
#
# `ModelConfig(position=...)` picks one of the three (or `"none"`). Learned and sinusoidal tables are added
# to the token embeddings at the bottom of `TransformerLM`; RoPE is handed to every attention layer. Only
# the learned table costs parameters:

# %%
for position in ("learned", "sinusoidal", "rope", "none"):
    config = ModelConfig(vocab_size=100, context_length=64, dims=32, n_layers=1, n_heads=4, position=position)
    model = TransformerLM(config)
    logits = model(mx.array([[1, 2, 3, 4, 5]]))  # (B, T) -> (B, T, V)
    print(f"{position:10}  parameters: {model.num_parameters():6,}  logits {logits.shape}")
assert TransformerLM(ModelConfig(vocab_size=100, context_length=64, dims=32, n_layers=1, n_heads=4)).num_parameters() \
    - TransformerLM(ModelConfig(vocab_size=100, context_length=64, dims=32, n_layers=1, n_heads=4, position="rope")).num_parameters() \
    == 64 * 32  # the learned table: context_length × dims

# %% [markdown]
# ## What we built
#
# - **Token embedding**: `nn.Embedding(V, C)`, ids `(B, T)` → vectors `(B, T, C)`; a lookup that equals
#   one-hot × matrix.
# - A proof that **attention is blind to order** without positional information (permutation-equivariant).
# - **`LearnedPositions`** (GPT-2's trainable table) and **`SinusoidalPositions`** / `sinusoidal_table`
#   (the fixed sin/cos table, checked against the formula).
# - **`RoPE`**: rotations of feature pairs by position × frequency through `mx.fast.rope`, equal to our
#   from-scratch rotation in both layouts (adjacent pairs, `traditional=True`; rotate-half,
#   `traditional=False`), with scores that depend only on the distance between tokens, and the feature
#   permutation that converts one layout into the other.
#
# Next, Chapter 3 builds the attention layer these vectors flow into.
