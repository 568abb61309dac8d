# %% [markdown]
# # 4. The transformer block: feed-forward, normalization and the residual stream
#
# ```
# text ──tokenization──▶ token ids ──embedding──▶ T×C vectors ──N × transformer block──▶ T×C ──prediction──▶ T×V
#                                                               ^^^^^^^^^^^^^^^^^^^^^^^^^
# ```
#
# Attention (Chapter 3) moves information *between* positions. A transformer block pairs it with a
# **feed-forward network** that processes each position on its own, wraps both in **normalization**, and
# adds their results to a **residual stream** that runs from the embedding to the output. A model is this
# block repeated `N` times (12 in GPT-2 small, 32 in LLaMA-2-7B):
#
# $$h = x + \text{attention}(\text{norm}_1(x)), \qquad \text{out} = h + \text{ffn}(\text{norm}_2(h)).$$
#
# We build each piece by hand, check it against the package, then assemble a whole block and check it
# against `mlxllm.TransformerBlock`. Shapes: `B` batch, `T` tokens, `C` model width, `F` feed-forward width.

# %%
import inspect
import math

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

import mlxllm
from mlxllm import MLP, RoPE, SwiGLU, TransformerBlock, causal_mask, make_norm
from mlxllm.block import swiglu_hidden_dims

mx.random.seed(0)


def n_params(module: nn.Module) -> int:
    return sum(p.size for _, p in tree_flatten(module.parameters()))


# %% [markdown]
# ## 4.1 The feed-forward network works on each position separately
#
# The feed-forward network (FFN, or MLP) is two linear layers with a non-linearity between them, widening
# each vector from `C` to `F = 4·C` and back: `(B, T, C) → (B, T, F) → (B, T, C)`. It has no interaction
# between positions at all, which is why it is called *position-wise*: applying it to the whole `(B, T, C)`
# array is the same as applying it to each token vector on its own. Attention mixes tokens; the FFN
# transforms each token with what it has gathered (and holds much of what the model "knows": two thirds of
# a block's parameters).

# %%
B, T, C = 2, 5, 16
x = mx.random.normal((B, T, C))  # (B, T, C)
mlp = MLP(C, 4 * C, activation="gelu_tanh")
print("x", x.shape, "  up_proj", mlp.up_proj.weight.shape, "  down_proj", mlp.down_proj.weight.shape)
hidden = nn.gelu_approx(mlp.up_proj(x))  # (B, T, F)
print("hidden", hidden.shape, "  output", mlp(x).shape)

one_at_a_time = mx.stack([mx.stack([mlp(x[b, t]) for t in range(T)]) for b in range(B)])  # each (C,) alone
assert mx.allclose(one_at_a_time, mlp(x), atol=1e-6), "the FFN must act on each position independently"
changed = x.at[:, 3].add(10.0)  # change token 3 only
assert mx.array_equal(mlp(changed)[:, :3], mlp(x)[:, :3]) and mx.array_equal(mlp(changed)[:, 4:], mlp(x)[:, 4:])
print("per position == batched:", True, "  changing token 3 changes only output 3:", True)

# %% [markdown]
# ### Activations: ReLU, GELU and its tanh approximation
#
# GPT-2 uses GELU, $x \cdot \Phi(x)$ with $\Phi$ the standard normal CDF: a smooth ReLU that lets a little
# negative signal through. Computing $\Phi$ needs `erf`; GPT-2 was trained with the tanh approximation
#
# $$\text{GELU}_\text{tanh}(x) = \tfrac{1}{2} x \left(1 + \tanh\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right).$$
#
# The two differ by less than $5 \times 10^{-4}$, small but not zero: to reproduce a checkpoint exactly, use
# the one it was trained with (`activation="gelu_tanh"` for GPT-2, `"gelu"` for the exact form).

# %%
def gelu_exact_by_hand(x: mx.array) -> mx.array:
    return x * 0.5 * (1 + mx.erf(x / math.sqrt(2)))


def gelu_tanh_by_hand(x: mx.array) -> mx.array:
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


grid = mx.linspace(-4, 4, 401)
assert mx.allclose(gelu_exact_by_hand(grid), nn.gelu(grid), atol=1e-6)
assert mx.allclose(gelu_tanh_by_hand(grid), nn.gelu_approx(grid), atol=1e-6)
gap = mx.abs(nn.gelu(grid) - nn.gelu_approx(grid))
print(f"max |exact − tanh| on [-4, 4] = {gap.max().item():.1e}")
assert 1e-4 < gap.max().item() < 5e-4

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
for name, values in (("ReLU", nn.relu(grid)), ("GELU (exact)", nn.gelu(grid)), ("SiLU (SwiGLU's gate)", nn.silu(grid))):
    axes[0].plot(np.array(grid), np.array(values), label=name)
axes[0].set_title("activations")
axes[0].legend(fontsize=8)
axes[1].plot(np.array(grid), np.array(nn.gelu(grid) - nn.gelu_approx(grid)))
axes[1].set_title("GELU exact − tanh approximation")
fig.tight_layout()
plt.show()

# %% [markdown]
# ### SwiGLU (LLaMA)
#
# LLaMA replaces the MLP by a *gated* one (Shazeer 2020): two projections up, one passed through SiLU
# ($x \cdot \sigma(x)$) and used to gate the other elementwise, then one projection down:
#
# $$\text{SwiGLU}(x) = W_\text{down}\left(\text{silu}(W_\text{gate}\,x) \odot W_\text{up}\,x\right).$$
#
# Three matrices instead of two, so the hidden width is cut to $\tfrac{2}{3} \cdot 4C = \tfrac{8}{3}C$,
# rounded up to a multiple of 32 (LLaMA-7B: 256), to keep the parameter count of a `4·C` MLP.

# %%
print(inspect.getsource(MLP))
print(inspect.getsource(SwiGLU))
print(inspect.getsource(swiglu_hidden_dims))

# %%
F = swiglu_hidden_dims(C)  # 8/3 · 16 = 42.7 -> 64
swiglu = SwiGLU(C, F)
by_hand = (nn.silu(x @ swiglu.gate_proj.weight.T) * (x @ swiglu.up_proj.weight.T)) @ swiglu.down_proj.weight.T
assert mx.allclose(swiglu(x), by_hand, atol=1e-5), "SwiGLU by hand must equal the package"
mlp_by_hand = gelu_tanh_by_hand(x @ mlp.up_proj.weight.T + mlp.up_proj.bias) @ mlp.down_proj.weight.T + mlp.down_proj.bias
assert mx.allclose(mlp(x), mlp_by_hand, atol=1e-5), "MLP by hand must equal the package"
print(f"SwiGLU width for C = {C}: {F}; for C = 4096 with multiple_of = 256: {swiglu_hidden_dims(4096, 256)} (LLaMA-7B)")
for name, ffn, formula in (("MLP, 4·C, biases", MLP(768, 3072), 2 * 768 * 3072 + 3072 + 768),
                           ("SwiGLU, 8/3·C, no biases", SwiGLU(768, swiglu_hidden_dims(768)), 3 * 768 * 2048)):
    assert n_params(ffn) == formula
    print(f"C = 768, {name:25}: {n_params(ffn):,} parameters")

# %% [markdown]
# ## 4.2 LayerNorm and RMSNorm
#
# Deep stacks train well only if the vectors entering each layer have a predictable scale. **LayerNorm**
# (GPT-2) standardises each token vector over its `C` features, then applies a learned per-feature scale
# `weight` and shift `bias`:
#
# $$\text{LayerNorm}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot w + b, \qquad \mu, \sigma^2 \text{ the mean and variance of } x\text{'s features.}$$
#
# **RMSNorm** (Zhang & Sennrich 2019; LLaMA) skips the centring and the shift, dividing by the root mean
# square only. It is cheaper and works as well in practice:
#
# $$\text{RMSNorm}(x) = \frac{x}{\sqrt{\text{mean}(x^2) + \epsilon}} \odot w.$$
#
# Both work per token: shape `(B, T, C)` in and out, statistics over the last axis.

# %%
def layer_norm_by_hand(x: mx.array, weight: mx.array, bias: mx.array | None, eps: float) -> mx.array:
    mean = x.mean(axis=-1, keepdims=True)  # (B, T, 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (B, T, 1), biased, as in the paper
    out = (x - mean) / mx.sqrt(var + eps) * weight
    return out if bias is None else out + bias


def rms_norm_by_hand(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return x / mx.sqrt((x**2).mean(axis=-1, keepdims=True) + eps) * weight  # (B, T, C)


shifted = 3 * x + 2  # vectors with mean about 2 and spread about 3
normed_ln, normed_rms = layer_norm_by_hand(shifted, 1, 0, 1e-5), rms_norm_by_hand(shifted, 1, 1e-5)
print(f"input:     mean {shifted.mean().item():5.2f}, rms {mx.sqrt((shifted**2).mean()).item():.2f}")
print(f"LayerNorm: mean {normed_ln.mean().item():5.2f}, rms {mx.sqrt((normed_ln**2).mean()).item():.2f}")
print(f"RMSNorm:   mean {normed_rms.mean().item():5.2f}, rms {mx.sqrt((normed_rms**2).mean()).item():.2f}  (not centred)")

# %% [markdown]
# The package picks a norm by name with `make_norm`; both classes are MLX's own, which call the fused
# kernels `mx.fast.layer_norm` and `mx.fast.rms_norm`:

# %%
print(inspect.getsource(make_norm))
print(inspect.getsource(nn.LayerNorm.__call__))
print(inspect.getsource(nn.RMSNorm.__call__))

# %%
layer_norm, rms_norm = make_norm("layernorm", C), make_norm("rmsnorm", C)
# random weights and biases, so the check covers the learned scale and shift too
layer_norm.update(tree_map(lambda p: mx.random.normal(p.shape), layer_norm.parameters()))
rms_norm.update(tree_map(lambda p: mx.random.normal(p.shape), rms_norm.parameters()))
ln_gap = mx.abs(layer_norm(shifted) - layer_norm_by_hand(shifted, layer_norm.weight, layer_norm.bias, 1e-5)).max().item()
rms_gap = mx.abs(rms_norm(shifted) - rms_norm_by_hand(shifted, rms_norm.weight, 1e-5)).max().item()
assert ln_gap < 1e-5 and rms_gap < 1e-5, "hand-written norms must equal mx.fast"
print("LayerNorm parameters:", n_params(layer_norm), "(weight + bias)   RMSNorm parameters:", n_params(rms_norm), "(weight)")
print("by hand == fused:", True)

# %% [markdown]
# ## 4.3 The residual stream
#
# Each block does not *replace* its input; it *adds* to it. Think of `x` as a stream that flows from the
# embedding to the output head, and of every attention and FFN as a branch that reads a normalised copy of
# the stream and writes a correction back. Two consequences:
#
# - at initialisation, when the branches contribute little, the whole network is close to the identity,
#   and the gradient reaches the first layer straight along the stream (no product of `N` Jacobians);
# - every layer reads and writes the same `(B, T, C)` space, so the stream is the model's shared memory.
#
# ### Pre-norm and post-norm
#
# The 2017 Transformer normalised *after* adding (**post-norm**): `x = norm(x + branch(x))`. GPT-2 moved the
# norm *into* the branch (**pre-norm**): `x = x + branch(norm(x))`, plus one final norm before the output
# head. The difference looks cosmetic but is not: in post-norm every norm sits on the residual path itself,
# so the stream is rescaled `2N` times and the gradient passes through all those norms; in pre-norm the
# stream is a clean sum. Post-norm models famously need a careful learning-rate warm-up and become hard to
# train as they get deep (Xiong et al., 2020); pre-norm is what nearly every LLM uses.
#
# We stack 24 small blocks (`C = 64`, default initialisation), feed random unit-scale vectors, and record the
# scale (root mean square) of the stream after each block, and the size of the gradient each block receives
# for a simple loss.

# %%
L, C_deep = 24, 64


class Stack(nn.Module):
    """L blocks on the residual stream; a final norm for pre-norm (as TransformerLM has)."""

    def __init__(self, pre_norm: bool):
        super().__init__()
        self.blocks = [TransformerBlock(C_deep, 4, pre_norm=pre_norm) for _ in range(L)]
        self.norm = make_norm("layernorm", C_deep) if pre_norm else nn.Identity()

    def __call__(self, x: mx.array) -> mx.array:
        for block in self.blocks:
            x = block(x)  # (B, T, C) -> (B, T, C)
        return self.norm(x)


x_deep = mx.random.normal((4, 32, C_deep), key=mx.random.key(1))  # (B, T, C)
target = mx.random.normal((4, 32, C_deep), key=mx.random.key(2))  # a fixed direction for the loss
stream_rms, gradient_norms = {}, {}
for name, pre_norm in (("pre-norm", True), ("post-norm", False)):
    mx.random.seed(0)  # the same weights for both stacks
    stack = Stack(pre_norm)
    h, scales = x_deep, [mx.sqrt((x_deep**2).mean()).item()]
    for block in stack.blocks:
        h = block(h)
        scales.append(mx.sqrt((h**2).mean()).item())
    stream_rms[name] = scales
    _, grads = nn.value_and_grad(stack, lambda model: (model(x_deep) * target).mean())(stack)
    gradient_norms[name] = [math.sqrt(sum((g**2).sum().item() for _, g in tree_flatten(b))) for b in grads["blocks"]]

fig, axes = plt.subplots(1, 2, figsize=(9, 3))
for name in stream_rms:
    axes[0].plot(stream_rms[name], "o-", markersize=3, label=name)
    axes[1].plot(range(1, L + 1), gradient_norms[name], "o-", markersize=3, label=name)
axes[0].set_xlabel("after block")
axes[0].set_ylabel("RMS of the residual stream")
axes[0].set_title("activation scale per layer, at init")
axes[1].set_xlabel("block")
axes[1].set_ylabel("‖gradient of its weights‖")
axes[1].set_title("gradient per layer, at init")
for ax in axes:
    ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
for name in stream_rms:
    print(f"{name:9}: stream RMS {stream_rms[name][0]:.2f} -> {stream_rms[name][-1]:.2f};  "
          f"gradient norm block 1: {gradient_norms[name][0]:.3f}, block {L}: {gradient_norms[name][-1]:.3f}")
assert all(abs(s - 1) < 0.01 for s in stream_rms["post-norm"][1:])  # post-norm: every block ends in a norm
assert stream_rms["pre-norm"][-1] > 1.5 * stream_rms["pre-norm"][0]  # pre-norm: branches add up along the stream
assert gradient_norms["pre-norm"][0] > gradient_norms["pre-norm"][-1]

# %% [markdown]
# Post-norm pins the stream at scale 1 after every block. Pre-norm lets it grow (each branch adds a
# roughly independent contribution, so the variance grows with depth) and relies on the final norm before
# the head; a later block then changes the stream *relatively* less, and the gradient its weights receive
# shrinks with depth, as Xiong et al. find for pre-norm. In post-norm the gradient does not shrink and
# tends to grow towards the last layers, which is the behaviour they link to post-norm's need for a
# learning-rate warm-up; with 24 tiny blocks the effect is mild, but it grows with depth. GPT-2 also scales the initial weights of each branch's last
# projection by $1/\sqrt{2N}$ (`TransformerLM.init_weights`, Chapter 5) to keep the pre-norm stream's
# growth in check.
#
# ## 4.4 Counting a block's parameters
#
# For a GPT-2 block of width `C` (biases everywhere, `F = 4C`):
#
# | piece | parameters |
# | --- | --- |
# | attention q, k, v, o: four `C × C` matrices + biases | $4C^2 + 4C$ |
# | MLP: `C × 4C` and `4C × C` + biases | $8C^2 + 5C$ |
# | two LayerNorms (weight + bias) | $4C$ |
# | **total** | $12C^2 + 13C$ |
#
# For a LLaMA block (no biases, `H_kv` kv heads of width `D`, SwiGLU width `F`): $2C^2 + 2 C H_{kv} D + 3CF + 2C$.

# %%
def gpt2_block_params(C: int) -> int:
    return 12 * C * C + 13 * C


def llama_block_params(C: int, n_kv_heads: int, head_dim: int, F: int) -> int:
    return 2 * C * C + 2 * C * n_kv_heads * head_dim + 3 * C * F + 2 * C


gpt2_small_block = TransformerBlock(768, 12, norm="layernorm", activation="gelu_tanh")
assert n_params(gpt2_small_block) == gpt2_block_params(768) == 7_087_872
# SmolLM2-135M's block: C = 576, 9 heads of 64, 3 kv heads, SwiGLU width 1536
smol_block = TransformerBlock(576, 9, n_kv_heads=3, ffn_dims=1536, norm="rmsnorm", activation="swiglu", bias=False)
assert n_params(smol_block) == llama_block_params(576, 3, 64, 1536)
print(f"GPT-2 small block: {n_params(gpt2_small_block):,} parameters; x 12 blocks = {12 * n_params(gpt2_small_block):,}")
print(f"SmolLM2-135M block: {n_params(smol_block):,} parameters; x 30 blocks = {30 * n_params(smol_block):,}")
# GPT-2 small in full: 12 blocks + token table (50257 x 768) + position table (1024 x 768) + final LayerNorm
total = 12 * gpt2_block_params(768) + 50257 * 768 + 1024 * 768 + 2 * 768
print(f"GPT-2 small: {total:,} parameters (the '124M')")
assert total == 124_439_808

# %% [markdown]
# ## 4.5 The whole block, by hand and from the package
#
# Now we assemble a block from the pieces we wrote by hand in this chapter and the last (norms, attention
# with heads, FFN) and check it against `TransformerBlock`. We do it twice: a GPT-2 block (LayerNorm,
# tanh-GELU MLP, biases) and a LLaMA block (RMSNorm, SwiGLU, RoPE, grouped-query attention, no biases),
# with random values in *every* parameter so that a wrongly wired norm weight or bias cannot hide.

# %%
def attention_by_hand(x: mx.array, attention) -> mx.array:
    """Chapter 3's multi-head attention, with GQA by repeating kv heads and optional RoPE."""
    B, T, C = x.shape
    H, H_kv, D = attention.n_heads, attention.n_kv_heads, attention.head_dim

    def project(linear, heads):  # (B, T, C) -> (B, heads, T, D)
        y = x @ linear.weight.T + (linear.bias if "bias" in linear else 0)
        return y.reshape(B, T, heads, D).transpose(0, 2, 1, 3)

    q, k, v = project(attention.q_proj, H), project(attention.k_proj, H_kv), project(attention.v_proj, H_kv)
    if attention.rope is not None:
        q, k = attention.rope(q), attention.rope(k)  # RoPE, checked against a by-hand rotation in Chapter 2
    k, v = mx.repeat(k, H // H_kv, axis=1), mx.repeat(v, H // H_kv, axis=1)  # (B, H, T, D)
    scores = mx.where(causal_mask(T), q @ k.swapaxes(-1, -2) / math.sqrt(D), -mx.inf)  # (B, H, T, T)
    out = (mx.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, C)
    return out @ attention.o_proj.weight.T + (attention.o_proj.bias if "bias" in attention.o_proj else 0)


def norm_by_hand(x: mx.array, norm) -> mx.array:
    if isinstance(norm, nn.RMSNorm):
        return rms_norm_by_hand(x, norm.weight, norm.eps)
    return layer_norm_by_hand(x, norm.weight, norm.bias if "bias" in norm else None, norm.eps)


def ffn_by_hand(x: mx.array, ffn) -> mx.array:
    if isinstance(ffn, SwiGLU):
        return (nn.silu(x @ ffn.gate_proj.weight.T) * (x @ ffn.up_proj.weight.T)) @ ffn.down_proj.weight.T
    return gelu_tanh_by_hand(x @ ffn.up_proj.weight.T + ffn.up_proj.bias) @ ffn.down_proj.weight.T + ffn.down_proj.bias


def block_by_hand(x: mx.array, block) -> mx.array:
    h = x + attention_by_hand(norm_by_hand(x, block.attention_norm), block.attention)  # (B, T, C)
    return h + ffn_by_hand(norm_by_hand(h, block.ffn_norm), block.ffn)  # (B, T, C)


# %%
print(inspect.getsource(TransformerBlock))

# %%
C_b = 32
blocks = {
    "GPT-2 style": TransformerBlock(C_b, 4, norm="layernorm", activation="gelu_tanh", bias=True),
    "LLaMA style": TransformerBlock(C_b, 4, n_kv_heads=2, norm="rmsnorm", activation="swiglu", bias=False,
                                    rope=RoPE(C_b // 4)),
}
x_b = mx.random.normal((2, 7, C_b))  # (B, T, C)
for name, block in blocks.items():
    block.update(tree_map(lambda p: 0.3 * mx.random.normal(p.shape), block.parameters()))  # every weight random
    ours, package = block_by_hand(x_b, block), block(x_b)
    assert package.shape == x_b.shape == (2, 7, C_b)
    assert mx.allclose(ours, package, atol=1e-5), f"{name}: hand-built block must equal TransformerBlock"
    print(f"{name}: {n_params(block):,} parameters, output {package.shape}, by hand == package: True")

# %% [markdown]
# ### Variants on the same weights
#
# `TransformerBlock` also builds the two variants used in the architecture experiments of Chapter 8:
# post-norm (`pre_norm=False`) and the **parallel** block of GPT-J and PaLM (`parallel=True`), where
# attention and FFN read the same normed input side by side, `x + attn(n(x)) + ffn(n(x))`, which lets the
# two branches run concurrently. Loaded with the same weights, each computes something different:

# %%
pre = blocks["GPT-2 style"]
post = TransformerBlock(C_b, 4, activation="gelu_tanh", pre_norm=False)
parallel = TransformerBlock(C_b, 4, activation="gelu_tanh", parallel=True)
post.update(pre.parameters())
parallel.update({name: value for name, value in pre.parameters().items() if name != "ffn_norm"})  # one norm only
post_by_hand = norm_by_hand(x_b + attention_by_hand(x_b, pre.attention), pre.attention_norm)
post_by_hand = norm_by_hand(post_by_hand + ffn_by_hand(post_by_hand, pre.ffn), pre.ffn_norm)
h = norm_by_hand(x_b, pre.attention_norm)
parallel_by_hand = x_b + attention_by_hand(h, pre.attention) + ffn_by_hand(h, pre.ffn)
assert mx.allclose(post(x_b), post_by_hand, atol=1e-5) and mx.allclose(parallel(x_b), parallel_by_hand, atol=1e-5)
for name, block in (("post-norm", post), ("parallel", parallel)):
    difference = mx.abs(block(x_b) - pre(x_b)).max().item()
    assert difference > 0.1
    print(f"{name:9} vs pre-norm, same weights: outputs differ by up to {difference:.2f}")

# %% [markdown]
# ## What we built
#
# - **Feed-forward**: `MLP` (GELU exact or tanh, or ReLU; `4·C` wide) and `SwiGLU` (`≈ 8/3·C`, LLaMA),
#   position-wise, checked by hand and against their parameter formulas.
# - **Norms**: LayerNorm and RMSNorm by hand == MLX's fused `nn.LayerNorm` / `nn.RMSNorm`, chosen with
#   `make_norm`.
# - **The residual stream** and why pre-norm is the default: activation scale and gradient per layer at
#   initialisation for a 24-block stack.
# - **Parameter counts**: $12C^2 + 13C$ per GPT-2 block (and the LLaMA formula), giving GPT-2 small's 124M.
# - **`TransformerBlock`**: assembled by hand from the pieces and checked against the package in GPT-2 and
#   LLaMA form, plus the post-norm and parallel variants.
#
# Chapter 5 stacks these blocks between the embedding of Chapter 2 and an output head: `TransformerLM`.
