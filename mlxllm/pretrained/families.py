"""The model families whose published weights load into ``TransformerLM``: one ``Family`` entry
each.

An entry says everything that differs between families: which Hugging Face ``model_type`` values it
accepts, config.json ↔ ``ModelConfig``, the checkpoint → our name table, and ``sanitize`` /
``unsanitize``, the layout fix-ups (mlx-lm's per-model ``sanitize``). GGUF files add their own name
table and metadata reader. A third family is one more entry in ``FAMILIES``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx

from mlxllm.config import ModelConfig

Weights = dict[str, mx.array]


@dataclass(frozen=True)
class Family:
    """How one family's checkpoints map onto ``TransformerLM``.

    Built in Chapter 7, Pretrained weights."""

    name: str  # ModelConfig.family
    model_types: dict[str, str]  # config.json model_type → its architectures entry
    names: dict[str, str]  # checkpoint prefix → our prefix ({i}: layer number); first match wins
    config_from_hf: Callable[[dict], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict]
    # checkpoint layout → ours (names still theirs)
    sanitize: Callable[[Weights, ModelConfig], Weights]
    unsanitize: Callable[[Weights, ModelConfig], Weights]  # the inverse, for saving
    # GGUF tensor prefix → ours; empty: no GGUF
    gguf_names: dict[str, str] = field(default_factory=dict)
    # GGUF metadata, tensor names → config
    config_from_gguf: Callable[[dict, set[str]], ModelConfig] | None = None
    sanitize_gguf: Callable[[Weights, ModelConfig], Weights] | None = None
    # sanitized name → the checkpoint key it came from
    origin: Callable[[str, Weights], str] = lambda name, weights: name


def _positive_theta(theta: float, where: str) -> float:
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ValueError(f"{where} rope theta must be a number, got {theta!r}; the file is "
                         "damaged or not a LLaMA model")
    if not (math.isfinite(theta) and theta > 0):
        rule = "be positive" if math.isfinite(theta) or theta < 0 else "be finite"
        raise ValueError(f"{where} rope theta must {rule}, got {theta}; the file is damaged "
                         "or not a LLaMA model")
    return float(theta)


# ---------------------------------------------------------------------------- GPT-2

GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu",
                    "relu": "relu"}
# GPT-2 stores its linear layers as Conv1D, weight (in, out): the transpose of nn.Linear's
# (out, in).
GPT2_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
GPT2_NAMES = {
    "wte": "token_embedding",
    "wpe": "position_embedding",
    "h.{i}.ln_1": "blocks.{i}.attention_norm",
    "h.{i}.attn.c_proj": "blocks.{i}.attention.o_proj",
    "h.{i}.attn": "blocks.{i}.attention",  # q_proj, k_proj, v_proj: split out of c_attn by sanitize
    "h.{i}.ln_2": "blocks.{i}.ffn_norm",
    "h.{i}.mlp.c_fc": "blocks.{i}.ffn.up_proj",
    "h.{i}.mlp.c_proj": "blocks.{i}.ffn.down_proj",
    "ln_f": "norm",
    "lm_head": "head",
}


def gpt2_config_from_hf(hf: dict) -> ModelConfig:
    """GPT-2's config.json fields (n_embd, n_layer, n_head...) → ModelConfig."""
    activation = hf.get("activation_function", "gelu_new")
    if activation not in GPT2_ACTIVATIONS:
        raise ValueError(f"unsupported GPT-2 activation_function {activation!r}; "
                         f"known: {tuple(GPT2_ACTIVATIONS)}")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("unsupported GPT-2 attention scaling (scale_attn_weights=False or "
                         "scale_attn_by_inverse_layer_idx=True); only 1/sqrt(head_dim) is "
                         "implemented")
    dims = hf["n_embd"]
    return ModelConfig.gpt2(
        vocab_size=hf["vocab_size"], context_length=hf.get("n_positions", hf.get("n_ctx", 1024)),
        dims=dims, n_layers=hf["n_layer"], n_heads=hf["n_head"],
        ffn_dims=hf.get("n_inner") or 4 * dims,
        activation=GPT2_ACTIVATIONS[activation], norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def gpt2_config_to_hf(c: ModelConfig) -> dict:
    activation = {"gelu_tanh": "gelu_new", "gelu": "gelu",
                  "relu": "relu"}.get(c.activation, c.activation)
    return dict(model_type="gpt2", vocab_size=c.vocab_size, n_positions=c.context_length,
                n_ctx=c.context_length, n_embd=c.dims, n_layer=c.n_layers, n_head=c.n_heads,
                n_inner=c.ffn_dims, activation_function=activation, layer_norm_epsilon=c.norm_eps,
                tie_word_embeddings=c.tie_embeddings)


def gpt2_sanitize(weights: Weights, config: ModelConfig) -> Weights:
    """Drop the `transformer.` prefix and the mask buffers, transpose Conv1D, split c_attn into
    q, k, v."""
    out = {}
    for key, value in weights.items():
        name = key.removeprefix("transformer.")  # GPT2LMHeadModel vs GPT2Model keys
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers, not parameters
        if GPT2_CONV1D.fullmatch(name):
            value = value.T  # Conv1D (in, out) → Linear (out, in)
        if match := re.fullmatch(r"(h\.\d+\.attn)\.c_attn\.(weight|bias)", name):
            fused = (3 * config.dims, config.dims) if match[2] == "weight" else (3 * config.dims,)
            if value.shape != fused:
                raise ValueError(f"checkpoint key {key!r} has shape {tuple(value.shape)} "
                                 f"(after the Conv1D transpose), but config.json implies {fused}: "
                                 f"q, k and v of n_embd={config.dims} each")
            for part, tensor in zip("qkv", mx.split(value, 3, axis=0)):  # rows: [q; k; v]
                out[f"{match[1]}.{part}_proj.{match[2]}"] = tensor
            continue
        out[name] = value
    return out


def gpt2_origin(name: str, weights: Weights) -> str:
    """The checkpoint key a sanitized name came from: q/k/v come out of c_attn, keys may carry
    `transformer.`."""
    name = re.sub(r"\.attn\.[qkv]_proj\.", ".attn.c_attn.", name)
    return (name if name in weights or f"transformer.{name}" not in weights
            else f"transformer.{name}")


def gpt2_unsanitize(weights: Weights, config: ModelConfig) -> Weights:
    """Fuse q, k, v back into c_attn and store the linear layers as Conv1D (in, out)."""
    out = {}
    for name, value in weights.items():
        if match := re.fullmatch(r"(h\.\d+\.attn)\.([qkv])_proj\.(weight|bias)", name):
            if match[2] == "q":
                fused = mx.concatenate([weights[f"{match[1]}.{p}_proj.{match[3]}"] for p in "qkv"],
                                       axis=0)
                out[f"{match[1]}.c_attn.{match[3]}"] = fused.T if match[3] == "weight" else fused
            continue
        out[name] = value.T if GPT2_CONV1D.fullmatch(name) else value
    return out


# ------------------------------------------------------------------ LLaMA (also Mistral, Qwen2)

LLAMA_NAMES = {
    "model.embed_tokens": "token_embedding",
    "model.layers.{i}.input_layernorm": "blocks.{i}.attention_norm",
    # q_proj, k_proj, v_proj, o_proj: same names
    "model.layers.{i}.self_attn": "blocks.{i}.attention",
    "model.layers.{i}.post_attention_layernorm": "blocks.{i}.ffn_norm",
    "model.layers.{i}.mlp": "blocks.{i}.ffn",  # gate_proj, up_proj, down_proj: same names
    "model.norm": "norm",
    "lm_head": "head",
}
# llama.cpp's names (blk.N.attn_q...), mapped straight to ours
LLAMA_GGUF_NAMES = {
    "token_embd": "token_embedding",
    "blk.{i}.attn_norm": "blocks.{i}.attention_norm",
    "blk.{i}.attn_q": "blocks.{i}.attention.q_proj",
    "blk.{i}.attn_k": "blocks.{i}.attention.k_proj",
    "blk.{i}.attn_v": "blocks.{i}.attention.v_proj",
    "blk.{i}.attn_output": "blocks.{i}.attention.o_proj",
    "blk.{i}.ffn_norm": "blocks.{i}.ffn_norm",
    "blk.{i}.ffn_gate": "blocks.{i}.ffn.gate_proj",
    "blk.{i}.ffn_up": "blocks.{i}.ffn.up_proj",
    "blk.{i}.ffn_down": "blocks.{i}.ffn.down_proj",
    "output_norm": "norm",
    "output": "head",
}


def llama_config_from_hf(hf: dict) -> ModelConfig:
    """LLaMA-shaped config.json fields (hidden_size, num_hidden_layers...) → ModelConfig."""
    model_type = hf["model_type"]
    # transformers 5 moved rope_theta / rope_scaling into one rope_parameters dict
    rope = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"unsupported RoPE scaling {rope_type!r} in config.json; only plain RoPE "
                         "is implemented")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"unsupported hidden_act {hf['hidden_act']!r}: LLaMA-style models use "
                         "SwiGLU with 'silu'")
    dims, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    if hf.get("head_dim") not in (None, dims // n_heads):
        raise ValueError(f"unsupported head_dim={hf['head_dim']}: our attention uses hidden_size / "
                         f"num_attention_heads = {dims // n_heads}")
    attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
    if attention_bias != mlp_bias:
        raise ValueError(f"unsupported attention_bias={attention_bias} with mlp_bias={mlp_bias}: "
                         "our blocks put biases on all projections or none")
    if hf.get("use_sliding_window", False):
        raise ValueError("unsupported use_sliding_window=True (sliding-window attention is not "
                         "implemented)")
    context_length = hf.get("max_position_embeddings", 2048)
    if model_type == "mistral" and hf.get("sliding_window"):
        # within the window it is plain attention
        context_length = min(context_length, hf["sliding_window"])
    theta = _positive_theta(rope.get("rope_theta", hf.get("rope_theta", 10000.0)), "config.json's")
    return ModelConfig.llama(
        vocab_size=hf["vocab_size"], context_length=context_length, dims=dims,
        n_layers=hf["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads, ffn_dims=hf["intermediate_size"],
        bias=attention_bias, qkv_bias=model_type == "qwen2",
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=theta, norm_eps=hf.get("rms_norm_eps", 1e-6),
    )


def llama_config_to_hf(c: ModelConfig) -> dict:
    return dict(model_type="qwen2" if c.qkv_bias and not c.bias else "llama",
                vocab_size=c.vocab_size, max_position_embeddings=c.context_length,
                hidden_size=c.dims, num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                num_key_value_heads=c.n_kv_heads, intermediate_size=c.ffn_dims, hidden_act="silu",
                attention_bias=c.bias, mlp_bias=c.bias, rms_norm_eps=c.norm_eps,
                rope_theta=c.rope_theta, rope_scaling=None, tie_word_embeddings=c.tie_embeddings)


def llama_sanitize(weights: Weights, config: ModelConfig) -> Weights:
    """Drop the rotary inv_freq buffers older checkpoints carry; the layout is already ours."""
    return {key: value for key, value in weights.items() if not key.endswith("rotary_emb.inv_freq")}


def llama_config_from_gguf(meta: dict, tensor_names: set[str]) -> ModelConfig:
    """The ``llama.*`` metadata keys of a GGUF file → ModelConfig (vocab size from the token list
    if absent, the head tied to the embedding when there is no ``output.weight``)."""
    def get(key, default=None):
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise ValueError(f"the GGUF metadata has no 'llama.{key}'; the file is incomplete")
        value = value.item() if isinstance(value, mx.array) else value
        # float32 1e-5, not 9.9999997e-06
        return float(f"{value:.7g}") if isinstance(value, float) and math.isfinite(value) else value

    def size(key, default=None) -> int:
        value = get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"the GGUF metadata's llama.{key} is {value!r}, not a positive "
                             "integer; the file is damaged or not a LLaMA model")
        return value

    n_heads = size("attention.head_count")
    dims = size("embedding_length")
    if get("rope.dimension_count", dims // n_heads) != dims // n_heads:
        raise ValueError(f"unsupported llama.rope.dimension_count={get('rope.dimension_count')}: "
                         "RoPE over part of a head is not implemented "
                         f"(head_dim={dims // n_heads})")
    if (scaling := get("rope.scaling.type", "none")) != "none":
        raise ValueError(f"unsupported RoPE scaling {scaling!r} in the GGUF metadata; only plain "
                         "RoPE is implemented")
    vocab_size = size("vocab_size", len(meta.get("tokenizer.ggml.tokens") or []) or None)
    return ModelConfig.llama(
        vocab_size=vocab_size, context_length=size("context_length"), dims=dims,
        n_layers=size("block_count"), n_heads=n_heads,
        n_kv_heads=size("attention.head_count_kv", n_heads), ffn_dims=size("feed_forward_length"),
        rope_theta=_positive_theta(get("rope.freq_base", 10000.0),
                                   "the GGUF file's llama.rope.freq_base:"),
        norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings="output.weight" not in tensor_names,
    )


def unpermute_rope_rows(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's converter: per head, rows (x0, y0, x1, y1, …) back to
    (x0, x1, …, y0, y1, …).

    llama.cpp rotates adjacent pairs, so its converter interleaves the two halves that Hugging
    Face's rotate-half RoPE pairs; every row-indexed tensor (weight, scales, biases) moves alike.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_sanitize_gguf(weights: Weights, config: ModelConfig) -> Weights:
    """q and k rows of a GGUF file back in Hugging Face's rotate-half order (names already ours)."""
    heads = {"q_proj": config.n_heads, "k_proj": config.n_kv_heads}
    out = {}
    for name, value in weights.items():
        if (match := re.fullmatch(r"blocks\.\d+\.attention\.([qk]_proj)\."
                                  r"(weight|scales|biases|bias)", name)):
            value = unpermute_rope_rows(value, heads[match[1]])
        out[name] = value
    return out


FAMILIES: dict[str, Family] = {
    "gpt2": Family("gpt2", {"gpt2": "GPT2LMHeadModel"}, GPT2_NAMES, gpt2_config_from_hf,
                   gpt2_config_to_hf, gpt2_sanitize, gpt2_unsanitize, origin=gpt2_origin),
    "llama": Family("llama", {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                              "qwen2": "Qwen2ForCausalLM"},
                    LLAMA_NAMES, llama_config_from_hf, llama_config_to_hf, llama_sanitize,
                    lambda w, c: w, LLAMA_GGUF_NAMES, llama_config_from_gguf, llama_sanitize_gguf),
}
MODEL_TYPES = tuple(t for family in FAMILIES.values() for t in family.model_types)


def family_for_model_type(model_type: str) -> Family:
    """The family that reads config.json's ``model_type``; ValueError naming the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    raise ValueError(f"unsupported model_type {model_type!r}: load_pretrained handles "
                     f"{MODEL_TYPES}")


def rename(key: str, names: dict[str, str]) -> str | None:
    """Rename ``key`` by the first table entry that is a prefix of it; None when none is."""
    for source, target in names.items():
        pattern = re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)") + r"(?P<rest>\..+)"
        if match := re.fullmatch(pattern, key):
            layer = match.groupdict().get("i")
            return (target.replace("{i}", layer) if layer else target) + match["rest"]
    return None
