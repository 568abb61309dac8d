# %% [markdown]
# # 4. The transformer block: feed-forward, normalization and the residual stream
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
#                                            ^^^^^^^^^
# ```
#
# Attention ([Chapter 3](03_attention.ipynb)) moves information *between* positions. A
# transformer block pairs it with a **feed-forward network** that processes each
# position on its own, wraps both in **normalization**, and adds their results to a
# **residual stream** that runs from the embedding to the output. A model is this block
# repeated `N` times (12 in GPT-2 small, 32 in LLaMA-2-7B):
#
# $$h = x + \text{attention}(\text{norm}_1(x)), \qquad
#   \text{out} = h + \text{ffn}(\text{norm}_2(h)).$$
#
# We build each piece by hand, check it against the package, then assemble a whole block
# and check it against `mlxllm.TransformerBlock`. Shapes: `B` batch, `T` tokens, `C`
# model width, `F` feed-forward width.

# %%
import dataclasses
import inspect
import math

import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mlxllm import MLP, ModelConfig, SwiGLU, TransformerBlock, causal_mask, make_norm
from mlxllm.config import swiglu_hidden_dims
from mlxllm.tolerances import assert_close

mx.random.seed(0)


def n_params(module: nn.Module) -> int:
    return sum(p.size for _, p in tree_flatten(module.parameters()))


# %% [markdown]
# ## 4.1 The feed-forward network works on each position separately
#
# The feed-forward network (FFN, or MLP) is two linear layers with a non-linearity
# between them, widening each vector from `C` to `F = 4·C` and back:
# `(B, T, C) → (B, T, F) → (B, T, C)`. It has no interaction between positions at all,
# which is why it is called *position-wise*: applying it to the whole `(B, T, C)` array
# is the same as applying it to each token vector on its own. Attention mixes tokens;
# the FFN transforms each token with what it has gathered (and holds much of what the
# model "knows": two thirds of a block's parameters).

# %%
B, T, C = 2, 5, 16
x = mx.random.normal((B, T, C))  # (B, T, C)
mlp = MLP(C, 4 * C, activation="gelu_tanh")
print("x", x.shape, "  up_proj", mlp.up_proj.weight.shape,
      "  down_proj", mlp.down_proj.weight.shape)
hidden = nn.gelu_approx(mlp.up_proj(x))  # (B, T, F)
print("hidden", hidden.shape, "  output", mlp(x).shape)

# each (C,) vector on its own; a matrix-vector product rounds differently from the
# batched matrix product, so "the same" means within the float32 tolerance (Chapter 2)
one_at_a_time = mx.stack([mx.stack([mlp(x[b, t]) for t in range(T)]) for b in range(B)])
assert_close(one_at_a_time, mlp(x),
             what="the FFN must act on each position independently:")
changed = x.at[:, 3].add(10.0)  # change token 3 only
# the same batched computation twice, so the untouched rows are bit-for-bit equal
untouched = (slice(0, 3), slice(4, T))
same = [mx.array_equal(mlp(changed)[:, s], mlp(x)[:, s]) for s in untouched]
assert all(same), "changing token 3 must leave the other outputs unchanged"
print("per position == batched:", True, "  changing token 3 changes only output 3:",
      True)

# %% [markdown]
# ### Activations: ReLU, GELU and its tanh approximation
#
# GPT-2 uses GELU, $x \cdot \Phi(x)$ with $\Phi$ the standard normal CDF: a smooth ReLU
# that lets a little negative signal through. Computing $\Phi$ needs `erf`; GPT-2 was
# trained with the tanh approximation
#
# $$\text{GELU}_\text{tanh}(x) = \tfrac{1}{2} x \left(1 +
#   \tanh\left(\sqrt{2/\pi}\,(x + 0.044715\,x^3)\right)\right).$$
#
# The two differ by less than $5 \times 10^{-4}$, small but not zero: to reproduce a
# checkpoint exactly, use the one it was trained with (`activation="gelu_tanh"` for
# GPT-2, `"gelu"` for the exact form).

# %%
def gelu_exact_by_hand(x: mx.array) -> mx.array:
    return x * 0.5 * (1 + mx.erf(x / math.sqrt(2)))


def gelu_tanh_by_hand(x: mx.array) -> mx.array:
    return 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


grid = mx.linspace(-4, 4, 401)
assert_close(gelu_exact_by_hand(grid), nn.gelu(grid), what="exact GELU:")
assert_close(gelu_tanh_by_hand(grid), nn.gelu_approx(grid), what="tanh GELU:")
gap = mx.abs(nn.gelu(grid) - nn.gelu_approx(grid))
print(f"max |exact − tanh| on [-4, 4] = {gap.max().item():.1e}")
assert 1e-4 < gap.max().item() < 5e-4

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8))
curves = {"ReLU": nn.relu(grid), "GELU (exact)": nn.gelu(grid),
          "SiLU (SwiGLU's gate)": nn.silu(grid)}
for name, values in curves.items():
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
# LLaMA replaces the MLP by a *gated* one {cite:p}`shazeer2020glu`: two projections up,
# one passed through SiLU ($x \cdot \sigma(x)$) and used to gate the other elementwise,
# then one projection down:
#
# $$\text{SwiGLU}(x) =
#   W_\text{down}\left(\text{silu}(W_\text{gate}\,x) \odot W_\text{up}\,x\right).$$
#
# Three matrices instead of two, so the hidden width is cut to
# $\tfrac{2}{3} \cdot 4C = \tfrac{8}{3}C$, rounded up to a multiple of 32 (LLaMA-7B:
# 256), to keep the parameter count of a `4·C` MLP. The package's `SwiGLU` (in
# `mlxllm/block.py`, next to §4.1's `MLP`) and its width rule (in `mlxllm/config.py`):

# %%
print(inspect.getsource(SwiGLU))
print(inspect.getsource(swiglu_hidden_dims))

# %%
F = swiglu_hidden_dims(C)  # 8/3 · 16 = 42.7 -> 64
swiglu = SwiGLU(C, F)
gated = nn.silu(x @ swiglu.gate_proj.weight.T) * (x @ swiglu.up_proj.weight.T)
by_hand = gated @ swiglu.down_proj.weight.T  # (B, T, C)
assert_close(swiglu(x), by_hand, what="SwiGLU by hand must equal the package:")
hidden = gelu_tanh_by_hand(x @ mlp.up_proj.weight.T + mlp.up_proj.bias)  # (B, T, 4C)
mlp_by_hand = hidden @ mlp.down_proj.weight.T + mlp.down_proj.bias
assert_close(mlp(x), mlp_by_hand, what="MLP by hand must equal the package:")
print(f"SwiGLU width for C = {C}: {F}; for C = 4096 with multiple_of = 256: "
      f"{swiglu_hidden_dims(4096, 256)} (LLaMA-7B)")
ffns = (("MLP, 4·C, biases", MLP(768, 3072), 2 * 768 * 3072 + 3072 + 768),
        ("SwiGLU, 8/3·C, no biases", SwiGLU(768, swiglu_hidden_dims(768)),
         3 * 768 * 2048))
for name, ffn, formula in ffns:
    assert n_params(ffn) == formula
    print(f"C = 768, {name:25}: {n_params(ffn):,} parameters")

# %% [markdown]
# ## 4.2 LayerNorm and RMSNorm
#
# Deep stacks train well only if the vectors entering each layer have a predictable
# scale. **LayerNorm** (GPT-2) standardises each token vector over its `C` features,
# then applies a learned per-feature scale `weight` and shift `bias`:
#
# $$\text{LayerNorm}(x) = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} \odot w + b,
#   \qquad \mu, \sigma^2 \text{ the mean and variance of } x\text{'s features.}$$
#
# **RMSNorm** ({cite:alp}`zhang2019root`; LLaMA) skips the centring and the shift,
# dividing by the root mean square only. It is cheaper and works as well in practice:
#
# $$\text{RMSNorm}(x) = \frac{x}{\sqrt{\text{mean}(x^2) + \epsilon}} \odot w.$$
#
# Both work per token: shape `(B, T, C)` in and out, statistics over the last axis.

# %%
def layer_norm_by_hand(x: mx.array, weight: mx.array, bias: mx.array | None,
                       eps: float) -> mx.array:
    mean = x.mean(axis=-1, keepdims=True)  # (B, T, 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)  # (B, T, 1), biased
    out = (x - mean) / mx.sqrt(var + eps) * weight
    return out if bias is None else out + bias


def rms_norm_by_hand(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    return x / mx.sqrt((x**2).mean(axis=-1, keepdims=True) + eps) * weight  # (B, T, C)


shifted = 3 * x + 2  # vectors with mean about 2 and spread about 3
normed_ln = layer_norm_by_hand(shifted, 1, 0, 1e-5)
normed_rms = rms_norm_by_hand(shifted, 1, 1e-5)


def rms(t: mx.array) -> float:
    return mx.sqrt((t**2).mean()).item()


def mean(t: mx.array) -> float:
    return round(t.mean().item(), 2) + 0.0  # + 0.0 turns a rounded -0.0 into 0.0


print(f"input:     mean {mean(shifted):5.2f}, rms {rms(shifted):.2f}")
print(f"LayerNorm: mean {mean(normed_ln):5.2f}, rms {rms(normed_ln):.2f}")
print(f"RMSNorm:   mean {mean(normed_rms):5.2f}, rms {rms(normed_rms):.2f}",
      " (not centred)")

# %% [markdown]
# The package picks the norm a `ModelConfig` names with `make_norm(config)` (in
# `mlxllm/block.py`); both classes are MLX's own, which call the fused kernels
# `mx.fast.layer_norm` and `mx.fast.rms_norm`. What it builds for each setting:

# %%
def small_config(**options) -> ModelConfig:
    """A ModelConfig of width C = 16 with 4 heads, for single layers."""
    return ModelConfig(dims=C, n_heads=4, **options)


built = {}
for name in ("layernorm", "rmsnorm", "none"):
    norm = make_norm(small_config(norm=name))
    built[name] = [path for path, _ in tree_flatten(norm.parameters())]
    print(f"norm={name!r:12} -> {type(norm).__name__:9} parameters {built[name]}")
# LayerNorm learns a scale and a shift, RMSNorm a scale only; "none" is the identity
assert built == {"layernorm": ["weight", "bias"], "rmsnorm": ["weight"], "none": []}

# %%
layer_norm = make_norm(small_config(norm="layernorm"))
rms_norm = make_norm(small_config(norm="rmsnorm"))
# random weights and biases, so the check covers the learned scale and shift too
for norm in (layer_norm, rms_norm):
    norm.update(tree_map(lambda p: mx.random.normal(p.shape), norm.parameters()))
assert_close(layer_norm(shifted),
             layer_norm_by_hand(shifted, layer_norm.weight, layer_norm.bias, 1e-5),
             what="LayerNorm by hand must equal mx.fast:")
assert_close(rms_norm(shifted), rms_norm_by_hand(shifted, rms_norm.weight, 1e-5),
             what="RMSNorm by hand must equal mx.fast:")
print("LayerNorm parameters:", n_params(layer_norm), "(weight + bias)   "
      "RMSNorm parameters:", n_params(rms_norm), "(weight)")
print("by hand == fused:", True)

# %% [markdown]
# ## 4.3 The residual stream
#
# Each block does not *replace* its input; it *adds* to it. Think of `x` as a stream
# that flows from the embedding to the output head, and of every attention and FFN as a
# branch that reads a normalised copy of the stream and writes a correction back. Two
# consequences:
#
# - at initialisation, when the branches contribute little, the whole network is close
#   to the identity, and the gradient reaches the first layer straight along the stream
#   (no product of `N` Jacobians);
# - every layer reads and writes the same `(B, T, C)` space, so the stream is the
#   model's shared memory.
#
# ![A pre-norm transformer block: the residual stream with attention and feed-forward
# branches, and post-norm vs pre-norm](figures/transformer_block.svg)
#
# ### Pre-norm and post-norm
#
# The 2017 Transformer {cite:p}`vaswani2017attention` normalised *after* adding
# (**post-norm**): `x = norm(x + branch(x))`. GPT-2 moved the norm *into* the branch
# (**pre-norm**): `x = x + branch(norm(x))`, plus one final norm before the output head.
# The difference looks cosmetic but is not: in post-norm every norm sits on the residual
# path itself, so the stream is rescaled `2N` times and the gradient passes through all
# those norms; in pre-norm the stream is a clean sum. Post-norm models famously need a
# careful learning-rate warm-up and become hard to train as they get deep
# {cite:p}`xiong2020layer`; pre-norm is what nearly every LLM uses.
#
# We stack 24 small blocks (`C = 64`, default initialisation), feed random unit-scale
# vectors, and record the scale (root mean square) of the stream after each block, and
# the size of the gradient each block receives for a simple loss.

# %%
L, C_deep = 24, 64


class Stack(nn.Module):
    """L blocks on the residual stream; pre-norm ends in a norm, like TransformerLM."""

    def __init__(self, pre_norm: bool):
        super().__init__()
        config = ModelConfig(dims=C_deep, n_heads=4, pre_norm=pre_norm)  # GPT-2 style
        self.blocks = [TransformerBlock(config) for _ in range(L)]
        self.norm = make_norm(config) if pre_norm else nn.Identity()

    def __call__(self, x: mx.array) -> mx.array:
        for block in self.blocks:
            x = block(x)  # (B, T, C) -> (B, T, C)
        return self.norm(x)


x_deep = mx.random.normal((4, 32, C_deep), key=mx.random.key(1))  # (B, T, C)
target = mx.random.normal((4, 32, C_deep), key=mx.random.key(2))  # for the loss
stream_rms, gradient_norms = {}, {}
for name, pre_norm in (("pre-norm", True), ("post-norm", False)):
    mx.random.seed(0)  # the same weights for both stacks
    stack = Stack(pre_norm)
    h, scales = x_deep, [mx.sqrt((x_deep**2).mean()).item()]
    for block in stack.blocks:
        h = block(h)
        scales.append(mx.sqrt((h**2).mean()).item())
    stream_rms[name] = scales
    loss = lambda model: (model(x_deep) * target).mean()  # noqa: E731
    _, grads = nn.value_and_grad(stack, loss)(stack)
    gradient_norms[name] = [
        math.sqrt(sum((g**2).sum().item() for _, g in tree_flatten(block_grads)))
        for block_grads in grads["blocks"]]

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
for name in stream_rms:  # rounded to what survives a GPU's rounding through 24 blocks
    first, last = gradient_norms[name][0], gradient_norms[name][-1]
    start, end = stream_rms[name][0], stream_rms[name][-1]
    print(f"{name:9}: stream RMS {start:.2f} -> {end:.2f};  gradient norm block 1: "
          f"{first:.1g}, block {L}: {last:.1g} (×{last / first:.1f})")
# post-norm: every block ends in a norm; pre-norm: the branches add up along the stream
assert all(abs(s - 1) < 0.01 for s in stream_rms["post-norm"][1:])
assert stream_rms["pre-norm"][-1] > 1.5 * stream_rms["pre-norm"][0]
assert gradient_norms["pre-norm"][0] > gradient_norms["pre-norm"][-1]

# %% [markdown]
# Post-norm pins the stream at scale 1 after every block. Pre-norm lets it grow (each
# branch adds a roughly independent contribution, so the variance grows with depth) and
# relies on the final norm before the head; a later block then changes the stream
# *relatively* less, and in this measurement the gradient its weights receive shrinks
# with depth. That is our default initialisation speaking, not a law:
# {cite:t}`xiong2020layer` analyse both layouts at initialisation and find pre-norm's
# gradients of about the same size in every layer (all of them smaller as the model
# gets deeper), and post-norm's growing towards the output layer, which they link to
# post-norm's need for a learning-rate warm-up. With 24 tiny blocks the differences
# here are mild; they grow with depth. GPT-2 also scales the initial weights of each
# branch's last projection by $1/\sqrt{2N}$ (`TransformerLM.init_weights`,
# [Chapter 5](05_next_token_prediction.ipynb)) to keep the pre-norm stream's growth in
# check.
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
# For a LLaMA block (no biases, `H_kv` kv heads of width `D`, SwiGLU width `F`):
# $2C^2 + 2 C H_{kv} D + 3CF + 2C$.

# %%
def gpt2_block_params(C: int) -> int:
    return 12 * C * C + 13 * C


def llama_block_params(C: int, n_kv_heads: int, head_dim: int, F: int) -> int:
    return 2 * C * C + 2 * C * n_kv_heads * head_dim + 3 * C * F + 2 * C


# ModelConfig.gpt2() defaults to GPT-2 small: C = 768, 12 heads, LayerNorm, tanh-GELU
gpt2_small_block = TransformerBlock(ModelConfig.gpt2())
assert n_params(gpt2_small_block) == gpt2_block_params(768) == 7_087_872
# ModelConfig.llama() defaults to SmolLM2-135M's sizes: C = 576, 9 heads of 64,
# 3 kv heads, SwiGLU width 1536
smol_block = TransformerBlock(ModelConfig.llama())
assert n_params(smol_block) == llama_block_params(576, 3, 64, 1536)
for name, block, n in (("GPT-2 small", gpt2_small_block, 12),
                       ("SmolLM2-135M", smol_block, 30)):
    print(f"{name} block: {n_params(block):,} parameters; x {n} blocks = "
          f"{n * n_params(block):,}")
# GPT-2 small in full: 12 blocks + token table (50257 x 768) + position table
# (1024 x 768) + final LayerNorm
total = 12 * gpt2_block_params(768) + 50257 * 768 + 1024 * 768 + 2 * 768
print(f"GPT-2 small: {total:,} parameters (the '124M')")
assert total == 124_439_808

# %% [markdown]
# ## 4.5 The whole block, by hand and from the package
#
# Now we assemble a block from the pieces we wrote by hand in this chapter and the last
# (norms, attention with heads, FFN) and check it against `TransformerBlock`. We do it
# twice: a GPT-2 block (LayerNorm, tanh-GELU MLP, biases) and a LLaMA block (RMSNorm,
# SwiGLU, RoPE, grouped-query attention, no biases), with random values in *every*
# parameter so that a wrongly wired norm weight or bias cannot hide.

# %%
def attention_by_hand(x: mx.array, attention) -> mx.array:
    """Chapter 3's multi-head attention: GQA by repeating kv heads, optional RoPE."""
    B, T, C = x.shape
    H, H_kv, D = attention.n_heads, attention.n_kv_heads, attention.head_dim

    def project(linear, heads):  # (B, T, C) -> (B, heads, T, D)
        y = x @ linear.weight.T + (linear.bias if "bias" in linear else 0)
        return y.reshape(B, T, heads, D).transpose(0, 2, 1, 3)

    q = project(attention.q_proj, H)
    k, v = project(attention.k_proj, H_kv), project(attention.v_proj, H_kv)
    if attention.rope is not None:  # RoPE, checked against our rotation in Chapter 2
        q, k = attention.rope(q), attention.rope(k)
    k, v = mx.repeat(k, H // H_kv, axis=1), mx.repeat(v, H // H_kv, axis=1)  # (B,H,T,D)
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(D)  # (B, H, T, T)
    weights = mx.softmax(mx.where(causal_mask(T), scores, -mx.inf), axis=-1)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, H * D)  # (B, T, C)
    o_proj = attention.o_proj
    return out @ o_proj.weight.T + (o_proj.bias if "bias" in o_proj else 0)


def norm_by_hand(x: mx.array, norm) -> mx.array:
    if isinstance(norm, nn.RMSNorm):
        return rms_norm_by_hand(x, norm.weight, norm.eps)
    bias = norm.bias if "bias" in norm else None
    return layer_norm_by_hand(x, norm.weight, bias, norm.eps)


def ffn_by_hand(x: mx.array, ffn) -> mx.array:
    if isinstance(ffn, SwiGLU):
        gated = nn.silu(x @ ffn.gate_proj.weight.T) * (x @ ffn.up_proj.weight.T)
        return gated @ ffn.down_proj.weight.T
    hidden = gelu_tanh_by_hand(x @ ffn.up_proj.weight.T + ffn.up_proj.bias)
    return hidden @ ffn.down_proj.weight.T + ffn.down_proj.bias


def block_by_hand(x: mx.array, block) -> mx.array:
    h = x + attention_by_hand(norm_by_hand(x, block.attention_norm), block.attention)
    return h + ffn_by_hand(norm_by_hand(h, block.ffn_norm), block.ffn)  # (B, T, C)


# %% [markdown]
# The package's `TransformerBlock` is in `mlxllm/block.py`. It holds the same four
# pieces under the names used above: `attention_norm`, `attention`, `ffn_norm`, `ffn`.
# A first check needs no arithmetic: silence both branches by zeroing their last
# projection, and a pre-norm block passes the stream through unchanged, bit for bit,
# while a post-norm block (§4.3) still normalises it.

# %%
for pre_norm in (True, False):
    block = TransformerBlock(small_config(pre_norm=pre_norm))
    for last in (block.attention.o_proj, block.ffn.down_proj):  # each branch's output
        last.update(tree_map(mx.zeros_like, last.parameters()))
    passes = mx.array_equal(block(x), x).item()  # x: §4.1's (B, T, C) input
    print(f"pre_norm={pre_norm!s:5}  block(x) == x with silent branches: {passes}")
    assert passes == pre_norm  # x + 0 + 0 is x; norm(x + 0) is not

# %%
C_b = 32
gpt2_config = ModelConfig(dims=C_b, n_heads=4, norm="layernorm", activation="gelu_tanh",
                          bias=True, position="learned")
llama_config = ModelConfig(dims=C_b, n_heads=4, n_kv_heads=2, norm="rmsnorm",
                           activation="swiglu", bias=False, position="rope")
blocks = {"GPT-2 style": TransformerBlock(gpt2_config),
          "LLaMA style": TransformerBlock(llama_config)}
x_b = mx.random.normal((2, 7, C_b))  # (B, T, C)
for name, block in blocks.items():  # every weight random:
    random = tree_map(lambda p: 0.3 * mx.random.normal(p.shape), block.parameters())
    block.update(random)
    ours, package = block_by_hand(x_b, block), block(x_b)
    assert package.shape == x_b.shape == (2, 7, C_b)
    assert_close(ours, package, what=f"{name}: by hand must equal TransformerBlock:")
    print(f"{name}: {n_params(block):,} parameters, output {package.shape}, "
          "by hand == package: True")

# %% [markdown]
# ### Variants on the same weights
#
# `TransformerBlock` also builds the two variants used in the architecture experiments
# of [Chapter 8](08_architecture_lab.ipynb): post-norm (`pre_norm=False`) and the
# **parallel** block of GPT-J and PaLM {cite:p}`chowdhery2022palm`
# (`parallel_block=True`), where attention and FFN read the same normed input side by
# side, `x + attn(n(x)) + ffn(n(x))`, which lets the two branches run concurrently.
# Loaded with the same weights, each computes something different:

# %%
pre = blocks["GPT-2 style"]
post = TransformerBlock(dataclasses.replace(gpt2_config, pre_norm=False))
parallel = TransformerBlock(dataclasses.replace(gpt2_config, parallel_block=True))
post.update(pre.parameters())
# a parallel block has one norm only
shared = {key: value for key, value in pre.parameters().items() if key != "ffn_norm"}
parallel.update(shared)
h = norm_by_hand(x_b + attention_by_hand(x_b, pre.attention), pre.attention_norm)
post_by_hand = norm_by_hand(h + ffn_by_hand(h, pre.ffn), pre.ffn_norm)
h = norm_by_hand(x_b, pre.attention_norm)
parallel_by_hand = x_b + attention_by_hand(h, pre.attention) + ffn_by_hand(h, pre.ffn)
assert_close(post(x_b), post_by_hand, what="post-norm block:")
assert_close(parallel(x_b), parallel_by_hand, what="parallel block:")
for name, block in (("post-norm", post), ("parallel", parallel)):
    difference = mx.abs(block(x_b) - pre(x_b)).max().item()
    assert difference > 0.1
    print(f"{name:9} vs pre-norm, same weights: outputs differ by up to "
          f"{difference:.1f}")

# %% [markdown]
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 4.1 (predict, then run).** Centre §4.2's input `shifted` so that every
# token vector has mean 0. Predict how a fresh LayerNorm and a fresh RMSNorm (weight 1,
# bias 0, both from `make_norm`) compare on it, and on `shifted` itself.

# %% tags=["hide-input"]
centred = shifted - shifted.mean(axis=-1, keepdims=True)  # each token: mean 0
fresh_ln = make_norm(small_config(norm="layernorm"))
fresh_rms = make_norm(small_config(norm="rmsnorm"))
# with mean 0, the variance is the mean square: the two formulas are the same
assert_close(fresh_ln(centred), fresh_rms(centred),
             what="on zero-mean vectors LayerNorm must equal RMSNorm:")
# with mean about 2, RMSNorm keeps the offset that LayerNorm removes
assert mx.abs(fresh_ln(shifted) - fresh_rms(shifted)).max().item() > 0.1
print("zero-mean input: LayerNorm == RMSNorm; shifted input: they differ")

# %% [markdown]
# **Exercise 4.2 (count).** LLaMA-7B has width $C = 4096$ and a SwiGLU of width
# `swiglu_hidden_dims(4096, 256)`. Count its FFN's parameters, compare with a bias-free
# `4·C` `MLP`, and say how many more a SwiGLU would have if it kept the width `4·C`.

# %% tags=["hide-input"]
F_7b = swiglu_hidden_dims(4096, 256)  # 8/3 · 4096 = 10922.7, up to a multiple of 256
swiglu_7b = n_params(SwiGLU(4096, F_7b))  # lazy: .size draws no random numbers
mlp_7b = n_params(MLP(4096, 4 * 4096, bias=False))
wide_swiglu = n_params(SwiGLU(4096, 4 * 4096))
assert F_7b == 11008 and swiglu_7b == 3 * 4096 * 11008
assert mlp_7b == 2 * 4096 * 4 * 4096 and wide_swiglu == 3 * mlp_7b // 2
print(f"SwiGLU, F = {F_7b}: {swiglu_7b:,}; MLP, 4·C: {mlp_7b:,} "
      f"(×{swiglu_7b / mlp_7b:.3f}); SwiGLU at 4·C: ×{wide_swiglu / mlp_7b:.1f}")

# %% [markdown]
# **Exercise 4.3 (predict, then run).** Feed an input of scale 100 (`100 * x`) to a
# fresh post-norm block, `TransformerBlock(small_config(pre_norm=False))`, and to a
# fresh pre-norm block. Predict the RMS of each output token vector.

# %% tags=["hide-input"]
big = 100 * x  # (B, T, C), RMS about 100
post_block = TransformerBlock(small_config(pre_norm=False))
pre_block = TransformerBlock(small_config())


def token_rms(t: mx.array) -> mx.array:
    return mx.sqrt((t**2).mean(axis=-1))  # (B, T): one RMS per token


# post-norm ends in a LayerNorm (weight 1, bias 0): mean 0 and variance 1 per token
# (ε = 1e-5 under its square root keeps the RMS a few millionths below 1: rtol 1e-4)
assert_close(token_rms(post_block(big)), mx.ones(x.shape[:2]), rtol=1e-4,
             what="a post-norm block's output must have unit RMS:")
# pre-norm adds its branches to the stream, which keeps the input's scale
assert token_rms(pre_block(big)).min().item() > 50
print("post-norm output: RMS 1 per token;  pre-norm output: RMS stays near 100")

# %% [markdown]
# **Exercise 4.4 (change one option).** A parallel block (`parallel_block=True`) reads
# one normed input for both branches. Predict how many parameters it saves in a GPT-2
# small block (`ModelConfig.gpt2()`), then check.

# %% tags=["hide-input"]
sequential = TransformerBlock(ModelConfig.gpt2())
side_by_side = TransformerBlock(
    dataclasses.replace(ModelConfig.gpt2(), parallel_block=True))
saved = n_params(sequential) - n_params(side_by_side)
assert saved == 2 * 768  # one LayerNorm fewer: its weight and bias
print(f"parallel block: {saved:,} parameters fewer, of {n_params(sequential):,}")

# %% [markdown]
# ## What we built
#
# - **Feed-forward**: `MLP` (GELU exact or tanh, or ReLU; `4·C` wide) and `SwiGLU`
#   (`≈ 8/3·C`, LLaMA), position-wise, checked by hand and against their parameter
#   formulas.
# - **Norms**: LayerNorm and RMSNorm by hand == MLX's fused `nn.LayerNorm` /
#   `nn.RMSNorm`, chosen with `make_norm`.
# - **The residual stream** and why pre-norm is the default: activation scale and
#   gradient per layer at initialisation for a 24-block stack.
# - **Parameter counts**: $12C^2 + 13C$ per GPT-2 block (and the LLaMA formula), giving
#   GPT-2 small's 124M.
# - **`TransformerBlock`**: assembled by hand from the pieces and checked against the
#   package in GPT-2 and LLaMA form, plus the post-norm and parallel variants.
#
# [Chapter 5](05_next_token_prediction.ipynb) stacks these blocks between the embedding
# of [Chapter 2](02_embedding.ipynb) and an output head: `TransformerLM`.
