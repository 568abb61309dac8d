# %% [markdown]
# # 7. Pretrained weights: real GPT-2 and LLaMA-family checkpoints in our own model
#
# ```
# text ──tokenization──▶ token ids ──embedding──▶ T×C vectors ──N × transformer block──▶ T×C ──prediction──▶ T×V
# └──────────── tokenizer files ────────────┘  └───────────────────── model.safetensors + config.json ─────────────┘
# ```
#
# We have built every stage by hand. A pretrained model is nothing more than those same stages with
# numbers that someone else trained: a folder with a `config.json` (the sizes and architectural choices),
# one or more `.safetensors` files (named arrays) and the tokenizer files. If we map every name and every
# layout correctly, the model that cost its authors thousands of GPU hours runs through *our* code.
#
# This chapter reads such folders in the Hugging Face layout, for two families:
#
# - **GPT-2** (`model_type: gpt2`): learned positions, LayerNorm, tanh-GELU, biases, a tied head;
# - **LLaMA and its relatives** (`llama`, `mistral`, `qwen2`; SmolLM2 is a `llama`): RoPE, RMSNorm,
#   SwiGLU, grouped-query attention.
#
# Everything below runs offline on **tiny random checkpoints in exactly the real layout**, built here and
# checked against an independent implementation (mlx-lm). The last section runs the same code on the real
# GPT-2 124M and SmolLM2-135M when you switch on `DOWNLOAD_REAL_MODELS` (a few hundred MB from the Hub).

# %%
import inspect
import json
import struct
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto, imported by mlx-lm's dependencies
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model as mlx_lm_load_model

import mlxllm.weights
from mlxllm import ModelConfig, TransformerLM, generate, load_pretrained, save_pretrained
from mlxllm.data import get_path
from mlxllm.weights import checkpoint_folder, config_from_hf, read_weights, weights_from_hf

DOWNLOAD_REAL_MODELS = False  # True: download GPT-2 124M and SmolLM2-135M from the Hub (section 7.8)

mx.random.seed(0)
rng = np.random.default_rng(0)
scratch = tempfile.TemporaryDirectory(prefix="mlxllm-ch7-")  # the checkpoints we write; removed at exit
workdir = Path(scratch.name)


def random(shape, scale=0.2, around=0.0):
    return mx.array(around + scale * rng.standard_normal(shape), dtype=mx.float32)


# %% [markdown]
# ## 7.1 A GPT-2 checkpoint, tensor by tensor
#
# This is what `transformers` writes for GPT-2 (the same names and shapes as the real
# `openai-community/gpt2`, only smaller): token table `wte`, position table `wpe`, and per layer
# `h.{i}` two LayerNorms, the attention (`attn.c_attn` holds q, k and v side by side, `attn.c_proj`
# is the output projection) and the MLP (`mlp.c_fc`, `mlp.c_proj`). Two oddities come from GPT-2's
# original TensorFlow code: the linear layers are `Conv1D` modules that store their weight as
# **(in, out)**, the transpose of `nn.Linear`'s (out, in); and each layer carries a buffer
# `attn.bias` which is not a bias at all but the causal mask. We write such a file with random numbers
# (norm weights around 1, every bias non-zero, so a wrong mapping cannot hide) and GPT-2's real tokenizer.

# %%
V, P, C, L, H = 50257, 128, 64, 4, 4  # GPT-2's vocabulary; a tiny model: 128 positions, width 64, 4 layers, 4 heads
gpt2_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": V, "n_positions": P,
               "n_ctx": P, "n_embd": C, "n_layer": L, "n_head": H, "n_inner": None,
               "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
gpt2_shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
for i in range(L):
    gpt2_shapes |= {
        f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
        f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),  # Conv1D: (in, out)
        f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
        f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
        f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
        f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,),
    }
gpt2_shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,)}
gpt2_tensors = {name: random(shape, around=1.0 if "ln" in name and name.endswith("weight") else 0.0)
                for name, shape in gpt2_shapes.items()}
for i in range(L):
    gpt2_tensors[f"h.{i}.attn.bias"] = mx.tril(mx.ones((P, P)))[None, None]  # the causal-mask buffer

gpt2_dir = workdir / "tiny-gpt2"
gpt2_dir.mkdir()
(gpt2_dir / "config.json").write_text(json.dumps(gpt2_config, indent=2))
mx.save_safetensors(str(gpt2_dir / "model.safetensors"), gpt2_tensors, metadata={"format": "pt"})
(gpt2_dir / "vocab.json").write_bytes(get_path("gpt2-vocab").read_bytes())  # GPT-2's real tokenizer files
(gpt2_dir / "merges.txt").write_bytes(get_path("gpt2-merges").read_bytes())
print(sorted(p.name for p in gpt2_dir.iterdir()))
print(f"{len(gpt2_tensors)} tensors, {sum(t.size for t in gpt2_tensors.values()):,} numbers")

# %% [markdown]
# A `.safetensors` file is deliberately simple: 8 bytes giving the length N of a JSON header, the header
# (name → dtype, shape, byte offsets), then the raw bytes of every tensor. No code runs when it is read
# (unlike PyTorch's pickles), and a reader can check that every tensor fits inside the file before it
# touches the data. Here is the header, read by hand:

# %%
raw = (gpt2_dir / "model.safetensors").read_bytes()
(header_length,) = struct.unpack("<Q", raw[:8])  # little-endian unsigned 64-bit
header = json.loads(raw[8 : 8 + header_length])
for name in ["wte.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias", "h.0.attn.bias"]:
    print(f"{name:24} {header[name]}")
last_byte = max(entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__")
assert 8 + header_length + last_byte == len(raw)  # the file ends exactly where the last tensor does
print("metadata:", header["__metadata__"], f"  file: {len(raw):,} bytes")

# %% [markdown]
# This is the check that protects against a download that stopped half-way: `mx.load` refuses a tensor
# whose offsets run past the end of the file, and `read_weights` turns that into an error that names the
# file, instead of a crash or a model loaded with half of its numbers.

# %%
broken = workdir / "broken"
broken.mkdir()
(broken / "model.safetensors").write_bytes(raw[: len(raw) // 2])  # a download that stopped half-way
try:
    read_weights([broken / "model.safetensors"])
except ValueError as error:
    message = str(error)
assert "damaged or incomplete" in message
print(message.replace(str(broken), "…"))

# %% [markdown]
# ## 7.2 config.json → ModelConfig
#
# The config names the same choices our `ModelConfig` names, in the family's own words: `n_embd` is
# `dims`, `n_positions` is `context_length`, `activation_function: gelu_new` is the tanh approximation of
# GELU (`gelu_tanh`), and GPT-2's head is tied to its embedding. Anything our model cannot express exactly
# (another RoPE scaling, a different head width, sliding-window attention...) is refused with a
# `ValueError` that names it, rather than loaded into a model that would compute something else.

# %%
config = config_from_hf(gpt2_config)
print(config)
assert (config.dims, config.n_layers, config.position, config.activation) == (C, L, "learned", "gelu_tanh")
try:
    config_from_hf({**gpt2_config, "model_type": "gemma"})
except ValueError as error:
    print("\n", error)

# %%
print(inspect.getsource(config_from_hf))

# %% [markdown]
# ## 7.3 Checkpoint names → our parameters
#
# Our modules were named so that the mapping is short. For GPT-2 it is a rename table plus two layout
# fixes, which we first do by hand for layer 0:
#
# 1. **Transpose** every Conv1D weight, (in, out) → (out, in);
# 2. **split** `c_attn` (now (3C, C)) into three (C, C) blocks of rows: q, k, v.

# %%
c_attn_w = gpt2_tensors["h.0.attn.c_attn.weight"]  # (C, 3C), Conv1D layout
c_attn_b = gpt2_tensors["h.0.attn.c_attn.bias"]  # (3C,)
q_w, k_w, v_w = mx.split(c_attn_w.T, 3, axis=0)  # (3C, C) → three (C, C)
q_b, k_b, v_b = mx.split(c_attn_b, 3)
print("c_attn", c_attn_w.shape, "→ transposed", c_attn_w.T.shape, "→ q, k, v", q_w.shape, k_w.shape, v_w.shape)

ours, source = weights_from_hf(gpt2_tensors, config)
assert mx.array_equal(ours["blocks.0.attention.q_proj.weight"], q_w)
assert mx.array_equal(ours["blocks.0.attention.v_proj.bias"], v_b)
assert mx.array_equal(ours["blocks.0.ffn.up_proj.weight"], gpt2_tensors["h.0.mlp.c_fc.weight"].T)
print("by hand == weights_from_hf:", True)

# %% [markdown]
# The whole map for one layer (the other layers differ only in the number), with the shapes on both sides.
# The mask buffers `attn.bias` have no counterpart (our attention builds its mask from `"causal"`), and
# neither does `lm_head.weight`: with a tied head the output matrix *is* the embedding matrix.

# %%
def mapping_table(ours: dict, source: dict, checkpoint: dict, layer_prefixes: tuple) -> None:
    print(f"{'checkpoint key':46} {'shape':>11}   {'our parameter':33} {'shape':>11}  how")
    for name in ours:
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        key = source[name]
        if key.startswith(layer_prefixes) and not key.startswith(tuple(p + "0." for p in layer_prefixes)):
            continue
        theirs_shape, our_shape = tuple(checkpoint[key].shape), tuple(ours[name].shape)
        how = "split q/k/v" if "c_attn" in key else ("transpose" if theirs_shape != our_shape else "rename")
        print(f"{key:46} {str(theirs_shape):>11}   {name:33} {str(our_shape):>11}  {how}")


mapping_table(ours, source, gpt2_tensors, ("h.",))
model = TransformerLM(config)
expected = dict(tree_flatten(model.parameters()))
assert {name: v.shape for name, v in ours.items()} == {name: v.shape for name, v in expected.items()}
print(f"\n{len(ours)} parameters, every one with the shape our model expects")

# %% [markdown]
# The rename tables and the conversion, as they are in the package (`mlxllm/weights.py`). Saving runs the
# same tables backwards (`weights_to_hf`), so one table serves both directions.

# %%
print("GPT2_NAMES =", json.dumps(mlxllm.weights.GPT2_NAMES, indent=4))
print("LLAMA_NAMES =", json.dumps(mlxllm.weights.LLAMA_NAMES, indent=4))
print(inspect.getsource(weights_from_hf))

# %% [markdown]
# ## 7.4 A LLaMA-family checkpoint: nearly 1:1
#
# A LLaMA checkpoint's names map onto ours by prefix (`model.layers.{i}.self_attn` → `blocks.{i}.attention`,
# and so on), and `nn.Linear` weights are already (out, in). We write a tiny one shaped like SmolLM2:
# grouped-query attention (8 query heads share 2 key/value heads, so `k_proj` and `v_proj` are 4× smaller
# than `q_proj`), RMSNorm, SwiGLU, RoPE with the rotate-half layout, a tied head, and a byte-level BPE
# `tokenizer.json` trained by Hugging Face's `tokenizers` library with SmolLM2's pre-tokenizer (each digit
# on its own, then GPT-2's split).

# %%
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

shakespeare = get_path("tinyshakespeare").read_text()[:200_000]
hf_tokenizer = HFTokenizer(models.BPE())
hf_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
hf_tokenizer.decoder = decoders.ByteLevel()
hf_tokenizer.train_from_iterator([shakespeare], trainers.BpeTrainer(
    vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"], show_progress=False,
    initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))

Vl, Cl, Ll, Hl, KVl, Fl = 512, 64, 4, 8, 2, 176  # vocab, width, layers, query heads, kv heads, SwiGLU width
Dl = Cl // Hl
llama_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": Vl,
                "hidden_size": Cl, "num_hidden_layers": Ll, "num_attention_heads": Hl, "num_key_value_heads": KVl,
                "intermediate_size": Fl, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
                "rope_theta": 10000.0, "rope_scaling": None, "hidden_act": "silu", "tie_word_embeddings": True}
llama_tensors = {"model.embed_tokens.weight": random((Vl, Cl), scale=1.0), "model.norm.weight": random((Cl,), around=1.0)}
for i in range(Ll):
    p = f"model.layers.{i}"
    llama_tensors |= {
        f"{p}.input_layernorm.weight": random((Cl,), around=1.0),
        f"{p}.self_attn.q_proj.weight": random((Hl * Dl, Cl)),
        f"{p}.self_attn.k_proj.weight": random((KVl * Dl, Cl)),  # GQA: fewer key/value heads
        f"{p}.self_attn.v_proj.weight": random((KVl * Dl, Cl)),
        f"{p}.self_attn.o_proj.weight": random((Cl, Hl * Dl)),
        f"{p}.post_attention_layernorm.weight": random((Cl,), around=1.0),
        f"{p}.mlp.gate_proj.weight": random((Fl, Cl)),
        f"{p}.mlp.up_proj.weight": random((Fl, Cl)),
        f"{p}.mlp.down_proj.weight": random((Cl, Fl)),
    }
llama_dir = workdir / "tiny-llama"
llama_dir.mkdir()
(llama_dir / "config.json").write_text(json.dumps(llama_config, indent=2))
mx.save_safetensors(str(llama_dir / "model.safetensors"), llama_tensors, metadata={"format": "pt"})
hf_tokenizer.save(str(llama_dir / "tokenizer.json"))

llama = config_from_hf(llama_config)
llama_ours, llama_source = weights_from_hf(llama_tensors, llama)
mapping_table(llama_ours, llama_source, llama_tensors, ("model.layers.",))

# %% [markdown]
# ## 7.5 Loading, checked against mlx-lm and Hugging Face `tokenizers`
#
# `load_pretrained` does all of the above: read config.json, read and convert the tensors (checking that
# the checkpoint has exactly our parameters, each with our shape), build the model, and build our
# `Tokenizer` from `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`). mlx-lm, an independent MLX
# implementation, loads the same folders with its own model code: the logits must agree, and the token ids
# must agree with Hugging Face's `tokenizers` reading the same `tokenizer.json`.

# %%
def relative_difference(a: mx.array, b: mx.array) -> float:
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


text = "ROMEO: Is the day so young? 'Tis but 1597, and the night is 42 hours old."
gpt2_model, gpt2_tokenizer = load_pretrained(gpt2_dir)
llama_model, llama_tokenizer = load_pretrained(llama_dir)
llama_ids = llama_tokenizer.encode(text)
assert llama_ids == hf_tokenizer.encode(text).ids, "token ids must equal Hugging Face tokenizers'"
print("LLaMA ids == HF tokenizers':", True, "  first tokens:", [llama_tokenizer.decode([i]) for i in llama_ids[:12]])

differences_to_mlx_lm = {}
for name, model, ids, folder in [("GPT-2", gpt2_model, gpt2_tokenizer.encode(text), gpt2_dir),
                                 ("LLaMA", llama_model, llama_ids, llama_dir)]:
    reference, _ = mlx_lm_load_model(folder)
    x = mx.array([ids])  # (1, T)
    differences_to_mlx_lm[name] = relative_difference(model(x), reference(x))
    assert differences_to_mlx_lm[name] < 1e-4
    print(f"{name}: {len(ids)} tokens → logits {model(x).shape}; relative difference to mlx-lm below 1e-4:", True)

# %% tags=["nbval-ignore-output"]
print(differences_to_mlx_lm)  # the exact values depend on the machine's kernels (asserted < 1e-4 above)

# %% [markdown]
# Both implementations run the same MLX kernels, so the difference is zero or at the level of float32
# rounding (~1e-7: our GPT-2 weights are stored row-major after the transpose, mlx-lm's are transposed
# views, which sends the matmuls down slightly different paths). The package code:

# %%
print(inspect.getsource(mlxllm.weights.load_pretrained))
print(inspect.getsource(mlxllm.weights.model_from_hf))

# %% [markdown]
# ## 7.6 The two RoPE layouts meet real weights
#
# Chapter 2 showed that RoPE comes in two layouts that pair features differently: adjacent pairs
# (Meta's original LLaMA code, `rope_traditional=True`) and rotate-half (Hugging Face, the default), and
# that they are the same rotation applied to permuted features. A checkpoint's q and k projections are
# trained for one of them. Hugging Face checkpoints are rotate-half, because their conversion script
# permuted the rows of Meta's `q_proj` and `k_proj`. We now do that in reverse on our LLaMA checkpoint:
#
# - with the **wrong layout** (same weights, `rope_traditional=True`) the logits are garbage;
# - with the **weights permuted back to Meta's order** (within each head, rows `[0, D/2, 1, D/2+1, …]`)
#   and `rope_traditional=True`, the logits are those of the original, to rounding.

# %%
x = mx.array([llama_ids])  # (1, T)
reference_logits = llama_model(x)

wrong_model = TransformerLM(ModelConfig(**{**llama.to_dict(), "rope_traditional": True}))
wrong_model.load_weights(list(llama_ours.items()))
wrong = relative_difference(wrong_model(x), reference_logits)

to_meta = mx.array(np.stack([np.arange(Dl // 2), np.arange(Dl // 2, Dl)], axis=1).reshape(-1))  # [0, D/2, 1, D/2+1, …]
meta_weights = dict(llama_ours)
for i in range(Ll):
    for proj, heads in (("q_proj", Hl), ("k_proj", KVl)):
        w = llama_ours[f"blocks.{i}.attention.{proj}.weight"]  # (heads·D, C)
        meta_weights[f"blocks.{i}.attention.{proj}.weight"] = w.reshape(heads, Dl, Cl)[:, to_meta, :].reshape(heads * Dl, Cl)
meta_model = TransformerLM(ModelConfig(**{**llama.to_dict(), "rope_traditional": True}))
meta_model.load_weights(list(meta_weights.items()))
meta = relative_difference(meta_model(x), reference_logits)

print("row order within a head, Meta's from Hugging Face's:", to_meta.tolist())
assert wrong > 0.1 and meta < 1e-5
print(f"wrong layout:                 relative difference {wrong:.1f}")
print(f"permuted rows + other layout: relative difference below 1e-5:", meta < 1e-5)

# %% [markdown]
# The layout is therefore a property of the *checkpoint*, not of the architecture: `config_from_hf`
# always sets `rope_traditional=False` because every Hugging Face LLaMA-family checkpoint is rotate-half.
#
# ## 7.7 Tied heads and dtypes
#
# **Tied heads.** GPT-2 and SmolLM2 use the token embedding matrix $W$ (V × C) a second time as the LM
# head: logits $= h\,W^\top$. The checkpoint then has no `lm_head.weight` (or has a copy we drop), and the
# model is smaller by V·C numbers, a large share for small models:

# %%
for name, sizes in {"GPT-2 124M": ModelConfig.gpt2(), "SmolLM2-135M": ModelConfig.llama(tie_embeddings=True)}.items():
    total = TransformerLM(sizes).num_parameters()  # the arrays are never computed: counting is free
    shared = sizes.vocab_size * sizes.dims
    print(f"{name:13} {total:,} parameters; the tied matrix holds {shared / 1e6:4.1f}M of them = {shared / total:.0%}")

h = gpt2_model.hidden_states(mx.array([gpt2_tokenizer.encode("The meaning of life")]))  # (1, 4, C)
assert "head" not in gpt2_model and mx.allclose(gpt2_model.logits(h), h @ gpt2_model.token_embedding.weight.T, atol=1e-5)
print("GPT-2: logits == h @ Wᵀ with the embedding matrix:", True)

# %% [markdown]
# **dtypes.** Recent checkpoints are stored in bfloat16 (SmolLM2's `model.safetensors` is), GPT-2's in
# float32. `load_pretrained(..., dtype=None)` keeps what the file holds; `dtype="float32"` or `"bfloat16"`
# converts. bfloat16 keeps float32's range with only 8 bits of mantissa (about 3 significant digits), which
# halves memory and memory traffic, and decoding a token reads every weight once, so it is also up to
# twice as fast on a GPU. Where precision matters the computation is done in float32 anyway: MLX's fused
# RMSNorm/LayerNorm and attention accumulate in float32, and our softmax and cross-entropy upcast the
# logits first. Summing 49,152 probabilities shows why that upcast is needed:

# %%
logits32 = random((49152,), scale=3.0)
probs32 = mx.softmax(logits32)
running = mx.array(0.0, dtype=mx.bfloat16)
for chunk in mx.split(probs32.astype(mx.bfloat16), 48):  # add up in bfloat16, 1,024 numbers at a time
    running = running + chunk.sum()
print(f"sum of probabilities: float32 {probs32.sum().item():.4f}, accumulated in bfloat16 {running.item():.4f}")

model32, _ = load_pretrained(llama_dir)
model16, _ = load_pretrained(llama_dir, dtype="bfloat16")
bytes32 = sum(p.nbytes for _, p in tree_flatten(model32.parameters()))
bytes16 = sum(p.nbytes for _, p in tree_flatten(model16.parameters()))
logits32_, logits16 = model32(x), model16(x)
assert bytes16 * 2 == bytes32 and logits16.dtype == mx.bfloat16
print(f"weights: {bytes32:,} bytes in float32, {bytes16:,} in bfloat16; logits dtype {logits16.dtype}")

# %% tags=["nbval-ignore-output"]
bf16_difference = relative_difference(logits16.astype(mx.float32), logits32_)
agree = (mx.argmax(logits32_, -1) == mx.argmax(logits16, -1)).mean().item()
assert bf16_difference < 0.05 and agree > 0.8  # rounding of ~3 significant digits, not a wrong model
print(f"bfloat16 vs float32 logits: relative difference {bf16_difference:.3f}, same top-1 token at {agree:.0%} of positions")

# %% [markdown]
# ## 7.8 Layer by layer against mlx-lm
#
# Matching logits say the whole is right; a per-layer comparison says *where* something would go wrong.
# We run both implementations block by block on the LLaMA checkpoint and record the largest absolute
# difference of the residual stream after the embedding, after every block and after the final norm. Three
# of our models go through it: the correct one (both in float32), one loaded in bfloat16 (compared with the
# float32 mlx-lm: rounding that grows a little with depth), and the wrong RoPE layout from 7.6 (which
# breaks in the very first attention layer and never recovers).

# %%
def our_states(model: TransformerLM, x: mx.array) -> list[mx.array]:
    h = model.token_embedding(x)  # (B, T, C)
    states = [h]
    for block in model.blocks:
        h = block(h, "causal")
        states.append(h)
    return states + [model.norm(h)]


def mlx_lm_states(reference, x: mx.array) -> list[mx.array]:
    h = reference.model.embed_tokens(x)
    states = [h]
    for layer in reference.model.layers:
        h = layer(h, "causal")
        states.append(h)
    return states + [reference.model.norm(h)]


reference, _ = mlx_lm_load_model(llama_dir)
theirs = mlx_lm_states(reference, x)
stages = ["embed"] + [f"block {i}" for i in range(Ll)] + ["norm"]
differences = {
    "ours vs mlx-lm (float32)": [mx.abs(a - b).max().item() for a, b in zip(our_states(model32, x), theirs)],
    "ours in bfloat16 vs mlx-lm": [mx.abs(a.astype(mx.float32) - b).max().item() for a, b in zip(our_states(model16, x), theirs)],
    "wrong RoPE layout vs mlx-lm": [mx.abs(a - b).max().item() for a, b in zip(our_states(wrong_model, x), theirs)],
}
assert max(differences["ours vs mlx-lm (float32)"]) < 1e-4
assert differences["wrong RoPE layout vs mlx-lm"][0] == 0 and min(differences["wrong RoPE layout vs mlx-lm"][1:]) > 0.1

fig, ax = plt.subplots(figsize=(7.5, 3.4))
width = 0.27
for n, (label, values) in enumerate(differences.items()):
    ax.bar(np.arange(len(stages)) + (n - 1) * width, values, width, label=label)
ax.set_yscale("symlog", linthresh=1e-6)
ax.set_xticks(range(len(stages)), stages)
ax.set_ylabel("max |difference|")
ax.set_title("Residual stream after each stage (no bar = bit-identical)")
ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12), frameon=False)
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
for label, values in differences.items():  # exact values depend on the machine's kernels (asserted above)
    print(f"{label:28}", "  ".join(f"{v:.1e}" for v in values))

# %% [markdown]
# ## 7.9 Saving: our models in the same layout
#
# `save_pretrained(model, tokenizer, folder)` writes config.json (with the right `model_type`), one
# `model.safetensors` in the family's naming and layouts, and a `tokenizer.json`, so a model trained with
# this package opens in mlx-lm and `transformers`. A configuration that no supported family can express
# (QK-norm, a parallel block, a logit soft-cap...) is refused rather than written wrongly. Round trip:

# %%
saved = save_pretrained(model32, llama_tokenizer, workdir / "saved-llama")
print(sorted(p.name for p in saved.iterdir()))
reloaded, reloaded_tokenizer = load_pretrained(saved)
assert mx.array_equal(reloaded(x), model32(x)) and reloaded_tokenizer.merges == llama_tokenizer.merges
reference, _ = mlx_lm_load_model(saved)
assert relative_difference(reference(x), model32(x)) < 1e-4
print("save → load: identical logits; mlx-lm opens the saved folder: same logits")
try:
    save_pretrained(TransformerLM(ModelConfig(**{**llama.to_dict(), "qk_norm": True})), llama_tokenizer, workdir / "nope")
except ValueError as error:
    print(error)

# %% [markdown]
# ## 7.10 Generating with a pretrained model
#
# The payoff: the same three lines for any supported checkpoint. With `DOWNLOAD_REAL_MODELS = True` they
# download GPT-2 124M (float32, ~550 MB) and SmolLM2-135M (bfloat16, ~270 MB) through `huggingface_hub`
# (`pip install 'mlxllm[hub]'`; cached after the first time) and generate on the Mac's GPU. By default they
# run on our two tiny local checkpoints, so this cell is tested offline; their text is random-weight
# gibberish, but mlx-lm, decoding greedily from the same folder, must produce the very same tokens. (With
# bfloat16 weights on a GPU the two implementations round a few intermediate results differently, so long
# greedy continuations may part ways after a near-tie; the prompt's logits must still agree to bfloat16's
# precision.)

# %% tags=["nbval-ignore-output"]
if DOWNLOAD_REAL_MODELS:
    checkpoints = {"GPT-2 124M": "openai-community/gpt2", "SmolLM2-135M": "HuggingFaceTB/SmolLM2-135M"}
else:
    checkpoints = {"tiny random GPT-2": gpt2_dir, "tiny random LLaMA": llama_dir}
prompt_text = "The meaning of life is"
for name, where in checkpoints.items():
    model, tokenizer = load_pretrained(where)  # a folder, or a Hub repo id
    prompt = tokenizer.encode(prompt_text)
    new_ids = list(generate(model, prompt, 30, temperature=0))  # greedy, KV-cached
    reference, _ = mlx_lm_load_model(checkpoint_folder(where))
    reference_ids = [int(t) for t, _ in generate_step(mx.array(prompt), reference, max_tokens=30)]
    same = sum(a == b for a, b in zip(new_ids, reference_ids))
    dtype = model.token_embedding.weight.dtype
    x = mx.array([prompt])  # the prompt's logits agree to float32 rounding, or to bfloat16's ~3 digits
    tolerance = 1e-4 if dtype == mx.float32 else 5e-2
    assert relative_difference(model(x).astype(mx.float32), reference(x).astype(mx.float32)) < tolerance
    assert new_ids[0] == reference_ids[0] and (DOWNLOAD_REAL_MODELS or new_ids == reference_ids)
    print(f"{name} ({model.num_parameters() / 1e6:.1f}M parameters, {dtype}, {mx.default_device()}), "
          f"{same}/30 tokens equal to mlx-lm's:")
    print("   ", repr(prompt_text + tokenizer.decode(new_ids)))

# %% [markdown]
# ## What we built
#
# - **`load_pretrained(path_or_repo_id, dtype=None)`** → `(TransformerLM, Tokenizer)` from a Hugging Face
#   folder (`config.json`, `model.safetensors` or shards with `model.safetensors.index.json`, tokenizer
#   files) or a Hub repo id; **`save_pretrained(model, tokenizer, folder)`** writes the same layout.
# - The three steps as functions: **`config_from_hf`** (config.json → `ModelConfig`, refusing what we
#   cannot compute exactly), **`weights_from_hf`** / `weights_to_hf` (rename tables, GPT-2's Conv1D
#   transposes and fused q/k/v), **`tokenizer_from_json`** (byte-level BPE `tokenizer.json` → our
#   `Tokenizer`; GPT-2's `vocab.json` + `merges.txt` go through `Tokenizer.from_gpt2_files`).
# - Supported families: **GPT-2** (`gpt2`) and **LLaMA-shaped** models (`llama`, `mistral`, `qwen2` with
#   its q/k/v biases; SmolLM2 is a `llama`), with GQA, `rope_theta`, tied or untied heads. Refused with a
#   clear error: other model types, RoPE scaling, sliding windows, head_dim ≠ C/H, SentencePiece-style or
#   normalizing tokenizers; damaged files, missing shards, missing or unexpected keys and shape mismatches
#   (naming the key and both shapes).
# - Tolerances achieved against mlx-lm on tiny random checkpoints in float32, on the CPU: relative logit
#   difference **0.0** for LLaMA (tied and untied), Mistral and Qwen2 and **~1e-6** for GPT-2 (the bar is 1e-4); token ids
#   identical to Hugging Face `tokenizers` for GPT-2-, SmolLM- and Qwen2-style pre-tokenizers;
#   save → load gives bit-identical logits. `benchmarks/bench_pretrained.py` compares decoding speed with
#   mlx-lm on the same folder.
