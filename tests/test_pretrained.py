"""Pretrained weights: tiny random checkpoints in Hugging Face layout, written here by hand (key names and
shapes as transformers stores them), loaded by mlxllm.pretrained and, independently, by mlx-lm."""

import json
import shutil
import sys

import mlx.core as mx
import mlx.nn as nn
import pytest
from conftest import TEXT, make_trainer, randomize, write_hf_tokenizer
from mlx.utils import tree_flatten
from mlx_lm.models import gpt2 as lm_gpt2
from mlx_lm.models import llama as lm_llama
from mlx_lm.models import qwen2 as lm_qwen2
from mlx_lm.utils import load_model as mlx_lm_load_model

from mlxllm import ModelConfig, TransformerLM, load_pretrained, save_pretrained
from mlxllm.data import get_path
from mlxllm.pretrained import FAMILIES
from mlxllm.pretrained.hf import model_from_hf
from mlxllm.tokenizer import GPT4_SPLIT_PATTERN, Tokenizer
from mlxllm.tolerances import assert_close, bound

# sizes that MLX can quantize (every input width a multiple of the group size 32)
QUANTIZABLE = dict(hidden_size=64, num_attention_heads=8, intermediate_size=96)
IDS = mx.array([[3, 17, 5, 250, 11, 42, 7, 99, 1, 64, 300, 2]])  # (1, 12), below every test vocab size


def assert_matches(actual: mx.array, expected: mx.array, what: str = "logits") -> float:
    """Two implementations of the same model: within 1e-4 of the largest logit (TF32's bound on a GPU)."""
    return assert_close(actual, expected, rtol=max(1e-4, bound()), what=what)


# ---------------------------------------------------------------------------- checkpoint writers (HF layout)

def gpt2_hf_config(vocab_size: int, **overrides) -> dict:
    return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab_size, "n_positions": 64,
            "n_ctx": 64, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True, **overrides}


def write_gpt2(folder, vocab_size: int, seed: int = 0, prefix: str = "", masked_bias: bool = False) -> dict:
    """A random GPT-2 as transformers stores it: Conv1D weights (in, out), fused c_attn, attn.bias mask buffer."""
    hf = gpt2_hf_config(vocab_size)
    reference = lm_gpt2.Model(lm_gpt2.ModelArgs.from_dict(hf))
    randomize(reference, seed)
    weights = {}
    for name, value in tree_flatten(reference.parameters()):
        key = name.removeprefix("model.")
        if key.endswith(".weight") and any(f".{m}." in key for m in ("c_attn", "c_proj", "c_fc")):
            value = value.T  # nn.Linear (out, in) → Conv1D (in, out)
        weights[prefix + key] = value
    n = hf["n_positions"]
    for i in range(hf["n_layer"]):
        weights[f"{prefix}h.{i}.attn.bias"] = mx.tril(mx.ones((n, n)))[None, None]  # the causal mask buffer
        if masked_bias:
            weights[f"{prefix}h.{i}.attn.masked_bias"] = mx.array(-1e4)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    return hf


def llama_hf_config(model_type: str, vocab_size: int, tied: bool, **overrides) -> dict:
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}[model_type]
    return {"model_type": model_type, "architectures": [arch], "vocab_size": vocab_size, "hidden_size": 48,
            "num_hidden_layers": 2, "num_attention_heads": 6, "num_key_value_heads": 2, "intermediate_size": 80,
            "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 5000.0, "hidden_act": "silu",
            "tie_word_embeddings": tied, "rope_scaling": None, **overrides}


def write_llama(folder, vocab_size: int, model_type: str = "llama", tied: bool = False, seed: int = 0,
                shards: int = 1, **overrides) -> dict:
    """A random LLaMA-family model in transformers' naming (model.layers.i.self_attn.q_proj...), optionally sharded."""
    hf = llama_hf_config(model_type, vocab_size, tied, **overrides)
    module = lm_qwen2 if model_type == "qwen2" else lm_llama
    reference = module.Model(module.ModelArgs.from_dict(hf))
    randomize(reference, seed)
    weights = dict(tree_flatten(reference.parameters()))
    for i in range(hf["num_hidden_layers"]):  # older checkpoints still carry this buffer
        weights[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = mx.ones((4,))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf))
    if shards == 1:
        mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    else:
        keys, weight_map = sorted(weights), {}
        for s in range(shards):
            name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: weights[k] for k in keys[s::shards]}
            mx.save_safetensors(str(folder / name), part, metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return hf


def mlx_lm_logits(folder) -> mx.array:
    model, _ = mlx_lm_load_model(folder)
    return model(IDS)


# ---------------------------------------------------------------------------- logits against mlx-lm

@pytest.mark.parametrize("model_type,tied", [("llama", False), ("llama", True), ("mistral", False), ("qwen2", True)])
def test_llama_family_logits_match_mlx_lm(tmp_path, model_type, tied):
    write_llama(tmp_path, 320, model_type, tied)
    model = model_from_hf(tmp_path)
    assert model.config.position == "rope" and model.config.n_kv_heads == 2 and model.config.tie_embeddings == tied
    assert model.config.qkv_bias == (model_type == "qwen2")
    assert_matches(model(IDS), mlx_lm_logits(tmp_path))


def test_gpt2_logits_match_mlx_lm(tmp_path):
    write_gpt2(tmp_path, 320)
    model = model_from_hf(tmp_path)
    assert model.config.activation == "gelu_tanh" and model.config.tie_embeddings
    assert_matches(model(IDS), mlx_lm_logits(tmp_path))


def test_gpt2_key_variants_load_the_same_model(tmp_path):
    """Keys with the GPT2LMHeadModel `transformer.` prefix and the legacy attn.masked_bias buffer."""
    write_gpt2(tmp_path / "plain", 320)
    write_gpt2(tmp_path / "prefixed", 320, prefix="transformer.", masked_bias=True)
    logits = model_from_hf(tmp_path / "plain")(IDS)
    assert mx.array_equal(model_from_hf(tmp_path / "prefixed")(IDS), logits)


def test_sharded_checkpoint_loads_the_same_model(tmp_path):
    write_llama(tmp_path / "one", 320)
    write_llama(tmp_path / "three", 320, shards=3)
    assert len(list((tmp_path / "three").glob("model-*-of-00003.safetensors"))) == 3
    assert mx.array_equal(model_from_hf(tmp_path / "three")(IDS), model_from_hf(tmp_path / "one")(IDS))


def test_dtype_bfloat16_weights(tmp_path):
    write_llama(tmp_path, 320)
    model16 = model_from_hf(tmp_path, dtype="bfloat16")
    assert {p.dtype for _, p in tree_flatten(model16.parameters())} == {mx.bfloat16}
    assert model_from_hf(tmp_path).token_embedding.weight.dtype == mx.float32  # None keeps the stored dtype
    assert_close(model16(IDS), model_from_hf(tmp_path)(IDS), dtype=mx.bfloat16, what="bfloat16 vs float32 logits")
    with pytest.raises(ValueError, match="dtype must be"):
        model_from_hf(tmp_path, dtype="fp8")


def test_kv_cached_decoding_of_a_loaded_model_matches_full_forward(tmp_path):
    write_llama(tmp_path, 320)
    model = model_from_hf(tmp_path)
    cache = model.make_cache()
    model(IDS[:, :8], cache=cache)
    step = model(IDS[:, 8:9], cache=cache)[:, -1]
    assert_close(step, model(IDS[:, :9])[:, -1], what="cached step vs full forward logits")


# ---------------------------------------------------------------------------- errors

def test_shape_mismatch_names_key_and_both_shapes(tmp_path):
    write_llama(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "intermediate_size": 96}))
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.(down|gate|up)_proj\.weight' has shape \((48, 80|80, 48)\).*\((48, 96|96, 48)\)"):
        model_from_hf(tmp_path)


def test_gpt2_fused_qkv_of_the_wrong_width_is_reported(tmp_path):
    write_gpt2(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "n_embd": 40, "n_head": 4}))
    with pytest.raises(ValueError, match=r"'h\.0\.attn\.c_attn\.weight' has shape \(96, 32\).*\(120, 40\)"):
        model_from_hf(tmp_path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    write_llama(tmp_path, 320)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    del weights["model.layers.1.post_attention_layernorm.weight"]
    weights["model.layers.1.self_attn.extra_proj.weight"] = mx.zeros((2, 2))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    with pytest.raises(ValueError, match=r"missing 1 parameter.*blocks\.1\.ffn_norm\.weight"):
        model_from_hf(tmp_path)
    weights["model.layers.1.post_attention_layernorm.weight"] = mx.ones((48,))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    with pytest.raises(ValueError, match=r"1 key\(s\) this model does not use.*model\.layers\.1\.self_attn\.extra_proj\.weight"):
        model_from_hf(tmp_path)


def test_untied_config_without_lm_head_is_missing_a_key(tmp_path):
    write_llama(tmp_path, 320, tied=True)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": False}))
    with pytest.raises(ValueError, match=r"missing.*'head\.weight'"):
        model_from_hf(tmp_path)


@pytest.mark.parametrize("cut", [0.5, 0.999, 20 / 10**6])
def test_truncated_safetensors_is_a_clear_error(tmp_path, cut):
    write_llama(tmp_path, 320)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * cut), 20)])
    with pytest.raises(ValueError, match=r"cannot read .*model\.safetensors.*damaged or incomplete"):
        model_from_hf(tmp_path)


def test_missing_shard_is_named(tmp_path):
    write_llama(tmp_path, 320, shards=2)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        model_from_hf(tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"model_type": "gemma"}, "unsupported model_type 'gemma'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "unsupported RoPE scaling 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "unsupported RoPE scaling 'linear'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "unsupported RoPE scaling 'yarn'"),
    ({"head_dim": 16}, "unsupported head_dim=16"),
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"attention_bias": True}, "unsupported attention_bias=True with mlp_bias=False"),
])
def test_unsupported_configs_are_refused_by_name(tmp_path, change, message):
    write_llama(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))
    with pytest.raises(ValueError, match=message):
        model_from_hf(tmp_path)


def test_rope_parameters_of_transformers_5_are_read(tmp_path):
    write_llama(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    del hf["rope_theta"], hf["rope_scaling"]
    (tmp_path / "config.json").write_text(json.dumps({**hf, "rope_parameters": {"rope_type": "default", "rope_theta": 5000.0}}))
    assert model_from_hf(tmp_path).config.rope_theta == 5000.0


def test_mistral_sliding_window_caps_the_context(tmp_path):
    write_llama(tmp_path, 320, "mistral")
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "sliding_window": 32}))
    assert model_from_hf(tmp_path).config.context_length == 32


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(llama_hf_config("llama", 320, False)))
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        model_from_hf(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80")
    with pytest.raises(ValueError, match=r"PyTorch pickles .*only \.safetensors"):
        model_from_hf(tmp_path)


# ---------------------------------------------------------------------------- tokenizers against HF `tokenizers`

# ---------------------------------------------------------------------------- load_pretrained, save_pretrained

def test_load_pretrained_llama_with_tokenizer_json(tmp_path):
    write_llama(tmp_path, 320, "llama", tied=True)
    hf = write_hf_tokenizer(tmp_path, "smollm")
    model, tokenizer = load_pretrained(str(tmp_path))
    ids = tokenizer.encode("It's 1984, hear me speak.")
    assert ids == hf.encode("It's 1984, hear me speak.").ids
    reference, _ = mlx_lm_load_model(tmp_path)
    assert_matches(model(mx.array([ids])), reference(mx.array([ids])))


def test_load_pretrained_gpt2_with_vocab_and_merges(tmp_path):
    write_gpt2(tmp_path, 50257)
    shutil.copy(get_path("gpt2-vocab"), tmp_path / "vocab.json")
    shutil.copy(get_path("gpt2-merges"), tmp_path / "merges.txt")
    model, tokenizer = load_pretrained(tmp_path)
    ids = tokenizer.encode("Hello world, this is GPT-2.")
    assert ids == [15496, 995, 11, 428, 318, 402, 11571, 12, 17, 13]  # GPT-2's ids (tiktoken "gpt2")
    reference, _ = mlx_lm_load_model(tmp_path)
    assert_matches(model(mx.array([ids])), reference(mx.array([ids])))


def test_load_pretrained_without_tokenizer_files(tmp_path):
    write_llama(tmp_path, 320)
    with pytest.raises(FileNotFoundError, match="expected tokenizer.json, or vocab.json \\+ merges.txt"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_save_pretrained_round_trip_and_other_tools_open_it(tmp_path, family):
    mx.random.seed(1)
    tokenizer = Tokenizer.train(TEXT, 300, pattern=GPT4_SPLIT_PATTERN, special_tokens=["<|endoftext|>"])
    small = dict(vocab_size=304, context_length=64, dims=32, n_layers=2, n_heads=4)
    config = (ModelConfig.gpt2(**small) if family == "gpt2" else
              ModelConfig.llama(**small, n_kv_heads=2, ffn_dims=64, qkv_bias=family == "qwen2", tie_embeddings=False))
    model = TransformerLM(config)
    randomize(model, seed=2)
    folder = save_pretrained(model, tokenizer, tmp_path / "saved")
    assert json.loads((folder / "config.json").read_text())["model_type"] == family

    loaded, loaded_tokenizer = load_pretrained(folder)
    assert loaded.config.to_dict() == config.to_dict() and loaded.config.family == config.family
    assert mx.array_equal(loaded(IDS), model(IDS))  # bit for bit
    assert loaded_tokenizer.merges == tokenizer.merges and loaded_tokenizer.special_tokens == tokenizer.special_tokens
    assert loaded_tokenizer.pattern == GPT4_SPLIT_PATTERN

    from mlx_lm.utils import load as mlx_lm_load
    from tokenizers import Tokenizer as HFTokenizer

    reference, reference_tokenizer = mlx_lm_load(str(folder))
    assert_matches(reference(IDS), model(IDS))
    text = TEXT + "<|endoftext|>"
    ids = tokenizer.encode(text, allowed_special="all")
    assert HFTokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids == ids
    if family != "qwen2":  # transformers 5 always gives a qwen2 model Qwen's own split pattern and NFC normalizer
        assert reference_tokenizer.encode(text, add_special_tokens=False) == ids
    assert reference_tokenizer.decode(ids) == text


def test_save_pretrained_refuses_what_no_hf_family_expresses(tmp_path):
    tokenizer = Tokenizer.train(TEXT, 260)
    model = TransformerLM(ModelConfig.llama(vocab_size=260, dims=32, n_layers=1, n_heads=4, n_kv_heads=2, qk_norm=True))
    with pytest.raises(ValueError, match="no Hugging Face equivalent: qk_norm=True"):
        save_pretrained(model, tokenizer, tmp_path)
    model = TransformerLM(ModelConfig.gpt2(vocab_size=260, dims=32, n_layers=1, n_heads=4, norm="rmsnorm"))
    with pytest.raises(ValueError, match="no Hugging Face equivalent: norm='rmsnorm'"):
        save_pretrained(model, tokenizer, tmp_path)
    model = TransformerLM(ModelConfig.gpt2(vocab_size=200, dims=32, n_layers=1, n_heads=4))
    with pytest.raises(ValueError, match="tokenizer has ids up to 259, but the model's vocab_size is 200"):
        save_pretrained(model, tokenizer, tmp_path)


# ---------------------------------------------------------------------------- the Hub

def test_repo_id_without_huggingface_hub_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'mlxllm\[hub\]'"):
        load_pretrained("HuggingFaceTB/SmolLM2-135M")


def test_repo_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(OSError, match="could not download 'mlxllm-tests/no-such-model' from the Hugging Face Hub"):
        load_pretrained("mlxllm-tests/no-such-model")


def test_path_that_is_neither_a_model_nor_a_repo_id_is_one_clear_sentence(tmp_path):
    with pytest.raises(ValueError, match="is neither a model folder, a .gguf file nor a Hugging Face Hub repo id"):
        load_pretrained(tmp_path / "nowhere" / "at" / "all")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds no model: pass a \.gguf file, a Hugging Face folder"):
        load_pretrained(tmp_path / "config.json")
    (tmp_path / "config.json").unlink()
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="holds no model"):
        load_pretrained(tmp_path)


# ---------------------------------------------------------------------------- families and faults (#16)

def test_the_family_comes_from_the_config_not_the_position_encoding(tmp_path):
    write_llama(tmp_path / "llama", 320)
    write_gpt2(tmp_path / "gpt2", 320)
    assert model_from_hf(tmp_path / "llama").config.family == "llama"
    assert model_from_hf(tmp_path / "gpt2").config.family == "gpt2"
    assert set(FAMILIES) == {"gpt2", "llama"} and FAMILIES["llama"].gguf_names
    assert {"llama", "mistral", "qwen2"} <= set(FAMILIES["llama"].model_types)


def test_save_pretrained_over_a_sharded_folder_leaves_no_stale_shards(tmp_path):
    write_llama(tmp_path, 320, shards=3)
    write_hf_tokenizer(tmp_path, "gpt2")
    old, tokenizer = load_pretrained(tmp_path)
    model = randomize(TransformerLM(old.config), seed=7)  # other weights, same shapes
    save_pretrained(model, tokenizer, tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    loaded, _ = load_pretrained(tmp_path)
    assert mx.array_equal(loaded(IDS), model(IDS)) and not mx.array_equal(loaded(IDS), old(IDS))


def test_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    write_llama(tmp_path, 300)  # 300 embedding rows; the tokenizer has 320 tokens
    write_hf_tokenizer(tmp_path, "gpt2", vocab_size=320)
    with pytest.raises(ValueError, match="the tokenizer has 320 tokens but the model's embedding only 300 rows"):
        load_pretrained(tmp_path)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/abs.safetensors", "sub/model.safetensors",
                                   "model-00001-of-00002.bin"])
def test_index_shard_paths_stay_in_the_folder_and_are_safetensors(tmp_path, shard):
    write_llama(tmp_path, 320, shards=2)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = shard
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="must be .safetensors files in the folder itself"):
        model_from_hf(tmp_path)


@pytest.mark.parametrize("dtype", [mx.int8, mx.bool_, mx.int32])
def test_integer_and_bool_weights_are_refused(tmp_path, dtype):
    write_llama(tmp_path, 320)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(dtype)
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    with pytest.raises(ValueError, match=rf"'model\.norm\.weight' has dtype {dtype}: weights must be floating point"):
        model_from_hf(tmp_path)


def test_quantized_layout_must_be_complete(tmp_path):
    write_llama(tmp_path, 320, **QUANTIZABLE)
    weights = mx.load(str(tmp_path / "model.safetensors"))
    w, scales, _ = mx.quantize(weights["model.layers.0.mlp.up_proj.weight"], group_size=32, bits=4)
    weights["model.layers.0.mlp.up_proj.weight"] = w  # scales without biases: no known layout
    weights["model.layers.0.mlp.up_proj.scales"] = scales
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    with pytest.raises(ValueError, match="uint32 weight with float scales and biases"):
        model_from_hf(tmp_path)


def test_mlx_lm_quantized_folder_loads_quantized_and_dequantized(tmp_path):
    """A folder quantized by mlx-lm's converter (uint32 weight, scales, biases) keeps its layers quantized."""
    from mlx_lm import convert

    write_llama(tmp_path / "float", 320, **QUANTIZABLE)
    write_hf_tokenizer(tmp_path / "float", "gpt2")
    convert(str(tmp_path / "float"), str(tmp_path / "q4"), quantize=True, q_group_size=32, q_bits=4)
    model = model_from_hf(tmp_path / "q4")
    assert isinstance(model.blocks[0].ffn.up_proj, nn.QuantizedLinear) and model.blocks[0].ffn.up_proj.bits == 4
    assert_matches(model(IDS), mlx_lm_logits(tmp_path / "q4"), "quantized logits")
    dequantized = model_from_hf(tmp_path / "q4", dtype="float32")
    assert {p.dtype for _, p in tree_flatten(dequantized.parameters())} == {mx.float32}
    assert_matches(dequantized(IDS), model(IDS), "dequantized vs quantized logits")


@pytest.mark.parametrize("change,message", [
    ("{not json", r"config\.json is not valid JSON"),
    ("[1, 2]", r"config\.json holds a JSON list"),
    ({"hidden_size": None}, r"config\.json lacks the key 'hidden_size' that a llama config needs"),
    ({"n_layer": None, "model_type": "gpt2"}, r"config\.json lacks the key 'n_embd' that a gpt2 config needs"),
    ({"rope_theta": 0.0}, "rope theta must be positive, got 0.0"),
    ({"rope_theta": -10000.0}, "rope theta must be positive, got -10000.0"),
])
def test_broken_config_json_is_one_clear_sentence_naming_the_file(tmp_path, change, message):
    write_llama(tmp_path, 320)
    if isinstance(change, dict):
        hf = {**json.loads((tmp_path / "config.json").read_text()), **change}
        change = json.dumps({key: value for key, value in hf.items() if value is not None})
    (tmp_path / "config.json").write_text(change)
    with pytest.raises(ValueError, match=message):
        model_from_hf(tmp_path)


def test_training_checkpoint_folder_is_delegated_to_the_checkpoint_loader(tmp_path):
    from mlxllm.checkpoint import load_model

    make_trainer(steps=2, batch_size=2, eval_interval=2, eval_batches=1).run(out=tmp_path, progress=False)
    model, tokenizer = load_pretrained(tmp_path)
    reference, _ = load_model(tmp_path)
    assert tokenizer.decode([0, 1, 2]) == "abc"
    assert mx.array_equal(model(IDS % 20), reference(IDS % 20))
    assert load_pretrained(tmp_path, dtype="bfloat16")[0].token_embedding.weight.dtype == mx.bfloat16


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

def test_a_tied_config_with_a_distinct_lm_head_keeps_the_head_as_transformers_does(tmp_path):
    """transformers (modeling_utils.tie_weights) ties only when lm_head equals the embedding; a distinct one is
    kept, with a warning. The reference: the same tensors under an untied config, in mlx-lm."""
    write_llama(tmp_path / "tied", 320, tied=True)
    weights = mx.load(str(tmp_path / "tied" / "model.safetensors"))
    head = mx.random.normal(weights["model.embed_tokens.weight"].shape, key=mx.random.key(3)) / 7
    mx.save_safetensors(str(tmp_path / "tied" / "model.safetensors"), {**weights, "lm_head.weight": head})
    shutil.copytree(tmp_path / "tied", tmp_path / "untied")
    hf = json.loads((tmp_path / "untied" / "config.json").read_text())
    (tmp_path / "untied" / "config.json").write_text(json.dumps({**hf, "tie_word_embeddings": False}))
    with pytest.warns(UserWarning, match="differs from the embedding; it is kept untied, as transformers does"):
        model = model_from_hf(tmp_path / "tied")
    assert not model.config.tie_embeddings and mx.array_equal(model.head.weight, head)
    assert_matches(model(IDS), mlx_lm_logits(tmp_path / "untied"))
    # an lm_head that is a copy of the embedding is the tied head itself; a lone lm_head is the embedding
    embedding = weights["model.embed_tokens.weight"]
    mx.save_safetensors(str(tmp_path / "tied" / "model.safetensors"), {**weights, "lm_head.weight": embedding})
    assert model_from_hf(tmp_path / "tied").config.tie_embeddings
    del weights["model.embed_tokens.weight"]
    mx.save_safetensors(str(tmp_path / "tied" / "model.safetensors"), {**weights, "lm_head.weight": embedding})
    model = model_from_hf(tmp_path / "tied")
    assert model.config.tie_embeddings and mx.array_equal(model.token_embedding.weight, embedding)


@pytest.mark.parametrize("change,message", [
    ({"rope_theta": float("inf")}, "rope theta must be finite, got inf"),
    ({"rope_theta": float("nan")}, "rope theta must be finite, got nan"),
    ({"rms_norm_eps": float("inf")}, "norm_eps must be a finite positive number, got inf"),
    ({"rms_norm_eps": float("nan")}, "norm_eps must be a finite positive number, got nan"),
    ({"max_position_embeddings": 2**62}, "context_length=4,611,686,018,427,387,904 is more than the 16,777,216"),
])
def test_infinite_and_nan_numbers_in_config_json_are_refused(tmp_path, change, message):
    write_llama(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, **change}))  # json writes Infinity and NaN
    with pytest.raises(ValueError, match=rf"config\.json: .*{message}"):
        model_from_hf(tmp_path)


def no_deep_models(monkeypatch, module):
    """Fail the test if ``module`` builds a TransformerLM deeper than 16 blocks (10^6 would take ~100 GiB)."""
    real = module.TransformerLM

    def guarded(config):
        assert config.n_layers <= 16, f"a model of {config.n_layers:,} blocks was built before the check"
        return real(config)

    monkeypatch.setattr(module, "TransformerLM", guarded)


def test_a_config_of_a_million_layers_is_compared_with_the_file_before_the_model_is_built(tmp_path, monkeypatch):
    import mlxllm.pretrained.hf as hf_module

    no_deep_models(monkeypatch, hf_module)
    write_llama(tmp_path, 320)
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 10**6}))
    with pytest.raises(ValueError, match=r"n_layers=1,000,000 blocks, but .* holds the tensors of 2 "
                                         r"\(numbered 0 to 1\)"):
        model_from_hf(tmp_path)
