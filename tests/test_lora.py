"""LoRA (mlxllm.lora): zero start, merge, QLoRA gradients, freezing, save/load, bad input."""

import json

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import pytest
from conftest import make_model, randomize
from mlx.utils import tree_flatten

from mlxllm.lora import LoRALinear, apply_lora, dense_weight, load_adapters, lora_layers, merge_lora, \
    save_adapters
from mlxllm.tolerances import assert_close, bound

IDS = mx.array([[3, 14, 15, 92, 65, 35, 8, 9], [2, 71, 82, 81, 82, 84, 5, 90]])


def llama(seed=0, quantized=False):
    model = randomize(make_model("llama", seed=seed, dims=64, ffn_dims=128, n_heads=4, n_kv_heads=2), seed)
    if quantized:  # 4-bit affine, groups of 32 (the GGUF model's layout)
        nn.quantize(model, group_size=32, bits=4, class_predicate=lambda _, m: isinstance(m, nn.Linear))
    return model


def randomize_adapters(model, seed=1):
    """B is zero at the start; give it (and A) values so the adapters actually change the output."""
    key = mx.random.key(seed)
    for _, layer in lora_layers(model):
        key, a, b = mx.random.split(key, 3)
        layer.lora_a = 0.2 * mx.random.normal(layer.lora_a.shape, key=a)
        layer.lora_b = 0.2 * mx.random.normal(layer.lora_b.shape, key=b)
    mx.eval(model.parameters())


def test_lora_layer_is_base_plus_scaled_low_rank_product():
    mx.random.seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, rank=4, alpha=8)
    layer.lora_b = mx.random.normal((12, 4))
    x = mx.random.normal((3, 16))
    by_hand = x @ base.weight.T + base.bias + (x @ layer.lora_a.T @ layer.lora_b.T) * (8 / 4)
    assert_close(layer(x), by_hand, what="LoRA layer vs the formula")
    assert layer.lora_a.shape == (4, 16) and layer.lora_b.shape == (12, 4)


@pytest.mark.parametrize("quantized", [False, True])
def test_zero_initialised_adapters_leave_logits_unchanged(quantized):
    model = llama(quantized=quantized)
    before = model(IDS)
    apply_lora(model, rank=4, alpha=8, targets="all")
    assert all(mx.array_equal(layer.lora_b, mx.zeros_like(layer.lora_b)) for _, layer in lora_layers(model))
    assert mx.array_equal(model(IDS), before)  # B = 0: the update is exactly zero


def test_apply_lora_freezes_the_rest_and_counts_trainable_parameters():
    model = llama()
    n = apply_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj"))
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert trainable and all(k.endswith((".lora_a", ".lora_b")) for k in trainable)
    c = model.config  # per block: q (dims → heads·hd) and v (dims → kv_heads·hd)
    expected = c.n_layers * 4 * ((c.dims + c.n_heads * c.head_dim) + (c.dims + c.n_kv_heads * c.head_dim))
    assert n == expected == sum(v.size for v in trainable.values())
    one = llama()
    assert apply_lora(one, rank=4, alpha=8, targets="all", layers=1) < apply_lora(llama(), 4, 8, "all")
    assert {p.split(".")[1] for p, _ in lora_layers(one)} == {str(c.n_layers - 1)}  # the last block only


# LoRA's algebra (merging, gradients through the 4-bit base) is checked in full float32 on the CPU stream, on
# every machine: a GPU's TF32 products would add rounding of their own to both sides (the GPU's kernels are
# compared with the CPU's in test_backends.py).
CPU_FLOAT32 = bound(mx.float32, mx.cpu)


@pytest.mark.parametrize("quantized", [False, True])
def test_merged_model_equals_base_plus_adapters(quantized):
    with mx.stream(mx.cpu):
        model = llama(quantized=quantized)
        apply_lora(model, rank=4, alpha=8, targets="all")
        randomize_adapters(model)
        with_adapters = model(IDS)
        assert merge_lora(model) == 7 * model.config.n_layers
        assert not lora_layers(model) and not any(isinstance(m, nn.QuantizedLinear) for name, m in
                                                  model.named_modules() if name.startswith("blocks"))  # dense
        assert_close(model(IDS), with_adapters, rtol=CPU_FLOAT32, what="merged vs adapter logits")


def test_quantized_base_gradients_equal_dequantized_base_gradients():
    """QLoRA: gradients reach the adapters through mx.quantized_matmul and match a float copy of the base."""
    quantized = llama(quantized=True)
    dense = llama()
    for (_, q), (_, d) in zip(quantized.named_modules(), dense.named_modules()):
        if isinstance(q, nn.QuantizedLinear):  # the float model gets the dequantized 4-bit weights
            d.weight = dense_weight(q)
    for model in (quantized, dense):
        mx.random.seed(5)
        apply_lora(model, rank=4, alpha=8, targets="all")
        randomize_adapters(model)
    targets = mx.roll(IDS, -1, axis=1)

    def loss(m):
        return nn.losses.cross_entropy(m(IDS), targets, reduction="mean")

    with mx.stream(mx.cpu):
        _, q_grads = nn.value_and_grad(quantized, loss)(quantized)
        _, d_grads = nn.value_and_grad(dense, loss)(dense)
        q_grads, d_grads = dict(tree_flatten(q_grads)), dict(tree_flatten(d_grads))
        mx.eval(q_grads, d_grads)
    assert set(q_grads) == set(d_grads) and all(k.endswith((".lora_a", ".lora_b")) for k in q_grads)
    for name in q_grads:
        assert float(mx.abs(q_grads[name]).max()) > 0, name
        assert_close(q_grads[name], d_grads[name], rtol=CPU_FLOAT32, what=name)
    # the base was never dequantized in memory: its layers are still packed 4-bit words
    assert all(isinstance(layer.base, nn.QuantizedLinear) for _, layer in lora_layers(quantized))


@pytest.mark.parametrize("quantized", [False, True])
def test_an_optimizer_step_changes_only_the_adapters(quantized):
    model = llama(quantized=quantized)
    apply_lora(model, rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    optimizer = optim.AdamW(1e-2)
    _, grads = nn.value_and_grad(model, lambda m: nn.losses.cross_entropy(
        m(IDS), mx.roll(IDS, -1, axis=1), reduction="mean"))(model)
    optimizer.update(model, grads)
    mx.eval(model.parameters())
    changed = {k for k, v in tree_flatten(model.parameters()) if not np.array_equal(np.array(v), before[k])}
    assert changed and all(k.endswith((".lora_a", ".lora_b")) for k in changed)
    assert any(k.endswith(".lora_b") for k in changed)


def test_save_load_adapters_round_trip(tmp_path):
    model = llama(quantized=True)
    apply_lora(model, rank=4, alpha=8, targets=("q_proj", "o_proj", "up_proj"), layers=1)
    randomize_adapters(model)
    expected = model(IDS)
    save_adapters(model, tmp_path / "adapters", base_model="tiny")
    config = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert config["rank"] == 4 and config["alpha"] == 8 and config["layers"] == 1 and config["base_model"] == "tiny"
    assert config["targets"] == ["q_proj", "o_proj", "up_proj"]
    assert not [p for p in (tmp_path / "adapters").iterdir() if p.name.startswith(".")]  # no temporary files left
    fresh = load_adapters(llama(quantized=True), tmp_path / "adapters")
    assert mx.array_equal(fresh(IDS), expected)  # the same arrays, the same computation


def test_bad_lora_input_gets_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="targets"):
        apply_lora(llama(), targets=("query",))
    with pytest.raises(ValueError, match="rank"):
        apply_lora(llama(), rank=0)
    with pytest.raises(ValueError, match="layers"):
        apply_lora(llama(), layers=9)
    model = llama()
    apply_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        apply_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapters(llama(), tmp_path / "none")
    with pytest.raises(ValueError, match="holds no LoRA adapters"):
        load_adapters(llama(), tmp_path)
    save_adapters(model, tmp_path / "a")
    other = randomize(make_model("llama", dims=64, ffn_dims=128, n_heads=4, n_kv_heads=2, n_layers=3))
    with pytest.raises(ValueError, match="3"):
        load_adapters(other, tmp_path / "a")


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

def saved_pair(tmp_path):
    """Adapters A saved in tmp_path/a, and a second model with adapters B (same shapes, other alpha and values)."""
    a = llama()
    apply_lora(a, rank=4, alpha=8, targets=("q_proj", "v_proj"))
    randomize_adapters(a, seed=1)
    save_adapters(a, tmp_path / "a", base_model="tiny")
    b = llama()
    apply_lora(b, rank=4, alpha=16, targets=("q_proj", "v_proj"))
    randomize_adapters(b, seed=2)
    return a(IDS), b, b(IDS)


@pytest.mark.parametrize("writer", ["settings", "arrays"])
def test_a_save_cut_off_anywhere_loads_the_old_adapters_or_the_new_never_a_mix(tmp_path, monkeypatch, writer):
    import mlxllm.lora as lora

    logits_a, b, logits_b = saved_pair(tmp_path)

    def killed(*args, **kwargs):
        raise SystemExit("the process is killed here")

    if writer == "settings":
        monkeypatch.setattr(lora, "write_atomic", killed)
    else:
        monkeypatch.setattr(mx, "save_safetensors", killed)
    with pytest.raises(SystemExit):
        save_adapters(b, tmp_path / "a", base_model="tiny")
    monkeypatch.undo()
    loaded = load_adapters(llama(), tmp_path / "a")(IDS)
    assert mx.array_equal(loaded, logits_a) or mx.array_equal(loaded, logits_b)
    save_adapters(b, tmp_path / "a", base_model="tiny")  # and once the save ends, the new ones
    assert mx.array_equal(load_adapters(llama(), tmp_path / "a")(IDS), logits_b)


def test_adapters_refuse_a_base_model_other_than_theirs(tmp_path):
    saved_pair(tmp_path)
    with pytest.raises(ValueError, match=r"were trained on another base model \(tiny\): this model's sizes or weights "
                                         r"differ"):
        load_adapters(llama(seed=5), tmp_path / "a")  # the same shapes, other weights
    cast = llama()
    cast.set_dtype(mx.bfloat16)
    load_adapters(cast, tmp_path / "a")  # the same weights in bfloat16: the same base
    load_adapters(llama(quantized=True), tmp_path / "a")  # and quantized (QLoRA's base)


def test_missing_and_damaged_adapter_files_are_one_sentence(tmp_path):
    saved_pair(tmp_path)
    file = tmp_path / "a" / "adapters.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"adapters\.safetensors cannot be read .*damaged or incomplete; fine-tune"):
        load_adapters(llama(), tmp_path / "a")
    file.write_bytes(data[:-4] + bytes(4))  # the last float changed: the header still reads
    with pytest.raises(ValueError, match=r"adapters\.safetensors is damaged \(its arrays' sha256 differs"):
        load_adapters(llama(), tmp_path / "a")
    mx.save_safetensors(str(file), {"x": mx.zeros((2,))})  # a safetensors file of someone else's
    with pytest.raises(ValueError, match=r"lacks the adapter setting 'mlxllm-lora'"):
        load_adapters(llama(), tmp_path / "a")
    file.unlink()
    with pytest.raises(ValueError, match="holds no LoRA adapters"):
        load_adapters(llama(), tmp_path / "a")


def test_a_full_disk_while_saving_adapters_is_one_sentence_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    def full(path, arrays, **metadata):
        open(path, "wb").write(b"the first bytes")
        raise RuntimeError("[write] Unable to write 8 bytes to file.")  # what MLX says on a full disk

    model = llama()
    apply_lora(model)
    monkeypatch.setattr(mx, "save_safetensors", full)
    with pytest.raises(ValueError, match=r"could not write the adapters in .* \(MLX: \[write\] Unable to write 8 bytes "
                                         r"to file\.\); free some space or fix the folder's permissions"):
        save_adapters(model, tmp_path / "a")
    assert [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")] == []
