"""Training: schedule, decay groups, clipping, the compiled step, memory, checkpoints, exact resume (Chapter 6)."""

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlxllm import ModelConfig, TransformerLM, cross_entropy
from mlxllm.char_tokenizer import CharTokenizer
from mlxllm.data import get_batch
from mlxllm.training import (PRESETS, TrainConfig, Trainer, TrainingDiverged, load_model, load_model_weights,
                             lr_schedule, make_optimizer)

TOKENIZER = CharTokenizer("abcdefghijklmnopqrst")
IDS = np.random.default_rng(0).integers(0, 20, 6000).astype(np.uint16)
TRAIN, VAL = IDS[:5000], IDS[5000:]
MODEL = ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2, bias=False)


def small_config(**overrides) -> TrainConfig:
    base = dict(steps=12, batch_size=4, context=16, lr=1e-2, min_lr=1e-3, warmup=3, eval_interval=5, eval_batches=2)
    return TrainConfig(**{**base, **overrides})


def test_schedule_warms_up_then_follows_a_half_cosine():
    schedule = lr_schedule(TrainConfig(lr=1e-3, min_lr=1e-4, warmup=10, steps=110))
    expected = {0: 1e-3 / 11, 5: 6e-3 / 11, 10: 1e-3, 60: 5.5e-4, 110: 1e-4, 500: 1e-4}
    for step, lr in expected.items():
        assert schedule(step).item() == pytest.approx(lr, rel=1e-5), step
    # a quarter of the way through the decay: min + (max - min)(1 + cos(π/4))/2
    assert schedule(35).item() == pytest.approx(1e-4 + 9e-4 * (1 + math.sqrt(0.5)) / 2, rel=1e-5)


def test_weight_decay_shrinks_matrices_only():
    model = TransformerLM(ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2))
    config = TrainConfig(lr=0.1, min_lr=0.1, warmup=0, weight_decay=0.5)
    optimizer = make_optimizer(model, config)
    before = dict(tree_flatten(model.parameters()))
    zeros = {k: mx.zeros_like(v) for k, v in before.items()}  # zero gradients: only the decay moves weights
    optimizer.update(model, tree_unflatten(list(zeros.items())))
    after = dict(tree_flatten(model.parameters()))
    decayed = sorted(k for k in before if not mx.allclose(after[k], before[k]))
    assert decayed == sorted(f"blocks.0.{k}.weight" for k in
                             ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj",
                              "ffn.up_proj", "ffn.down_proj"))
    for k in decayed:  # decoupled decay: θ ← θ·(1 − lr·λ)
        assert mx.allclose(after[k], before[k] * (1 - 0.1 * 0.5), atol=1e-7)


def test_gradient_norm_is_measured_before_clipping_and_clipping_bounds_the_step():
    trainer = Trainer.create(MODEL, small_config(grad_clip=1e-3, lr=1e-2, warmup=0), TRAIN, VAL)
    model_copy = TransformerLM(MODEL)
    model_copy.update(trainer.model.parameters())
    _, batch_key, _ = mx.random.split(trainer.batch_key, 3)  # the key the first batch will be drawn from
    inputs, targets = get_batch(mx.array(TRAIN.astype(np.int32)), 4, 16, batch_key)
    loss, grads = nn.value_and_grad(model_copy, lambda m, x, y: cross_entropy(m(x), y))(model_copy, inputs, targets)
    norm = math.sqrt(sum((g.astype(mx.float32) ** 2).sum().item() for _, g in tree_flatten(grads)))
    assert trainer.train_step() == pytest.approx(loss.item(), rel=1e-5)
    assert trainer.metrics["grad_norm"][0] == pytest.approx(norm, rel=1e-4) and norm > 1e-3


def test_memory_stays_flat_over_fifty_steps():
    trainer = Trainer.create(MODEL, small_config(steps=60), TRAIN, VAL)
    for _ in range(10):
        trainer.train_step()
    baseline = mx.get_active_memory()
    for _ in range(50):
        trainer.train_step()
    assert mx.get_active_memory() - baseline < 256 * 1024  # no graph or buffers pile up from step to step


def test_resume_is_exact_with_dropout_and_accumulation(tmp_path):
    model = ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2, dropout=0.1)
    config = small_config(grad_accumulation=2)
    straight = Trainer.create(model, config, TRAIN, VAL, TOKENIZER)
    straight.run(progress=False)
    first_half = Trainer.create(model, config, TRAIN, VAL, TOKENIZER)
    first_half.run(until=6, out=tmp_path / "ckpt", progress=False)
    mx.random.seed(12345)  # a different global random state must not matter
    resumed = Trainer.resume(tmp_path / "ckpt", TRAIN, VAL)
    assert resumed.step == 6
    resumed.run(progress=False)
    assert resumed.metrics["loss"] == straight.metrics["loss"]  # every step's loss, bit for bit
    assert resumed.metrics["eval"]["val_loss"][-1] == straight.metrics["eval"]["val_loss"][-1]
    for (name, a), (_, b) in zip(tree_flatten(straight.model.parameters()), tree_flatten(resumed.model.parameters())):
        assert mx.array_equal(a, b), name


def test_checkpoint_files_and_identical_logits(tmp_path):
    trainer = Trainer.create(MODEL, small_config(), TRAIN, VAL, TOKENIZER)
    trainer.run(out=tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {"model.safetensors", "optimizer.safetensors", "config.json", "state.json", "tokenizer.json",
                     "metrics.json"}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["n_layers"] == 1 and config["train"]["steps"] == 12
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 12
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["loss"]) == len(metrics["lr"]) == len(metrics["grad_norm"]) == 12
    assert metrics["eval"]["step"] == [0, 5, 10, 12] and metrics["update_ratio"]["step"] == [10]
    assert all(0 < r < 1 for group in ("attention", "ffn", "norm", "embedding") for r in metrics["update_ratio"][group])
    model, tokenizer = load_model(tmp_path)
    ids = mx.array([TOKENIZER.encode("abcdefg")])
    trainer.model.eval()
    assert mx.array_equal(model(ids), trainer.model(ids)) and tokenizer.chars == TOKENIZER.chars


def test_mismatched_checkpoint_names_the_first_difference(tmp_path):
    Trainer.create(MODEL, small_config(steps=1), TRAIN, VAL, TOKENIZER).run(out=tmp_path, progress=False)
    wider = TransformerLM(ModelConfig.gpt2(vocab_size=20, context_length=16, dims=64, n_layers=1, n_heads=2, bias=False))
    with pytest.raises(ValueError, match="dims is 32 in the checkpoint but 64 here"):
        load_model_weights(wider, tmp_path)
    # same config.json, weights of another shape: the first differing parameter is named
    mx.save_safetensors(str(tmp_path / "model.safetensors"), dict(tree_flatten(wider.parameters())))
    with pytest.raises(ValueError, match=r"token_embedding.weight has shape \(20, 64\) in the checkpoint but \(20, 32\)"):
        load_model_weights(TransformerLM(MODEL), tmp_path)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        Trainer.resume(tmp_path / "missing", TRAIN, VAL)
    with pytest.raises(ValueError, match="another training config: batch_size is 4 in the checkpoint but 8 here"):
        Trainer.resume(tmp_path, TRAIN, VAL, config=small_config(batch_size=8))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer.create(MODEL, small_config(checkpoint_interval=2), TRAIN, VAL, TOKENIZER)
    trainer.run(until=2, out=tmp_path, progress=False)
    trainer.model.norm.weight = mx.full(trainer.model.norm.weight.shape, mx.nan)  # poison the model
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3.*last good checkpoint was kept"):
        trainer.run(out=tmp_path, progress=False)
    assert json.loads((tmp_path / "state.json").read_text())["step"] == 2
    model, _ = load_model(tmp_path)
    assert not mx.isnan(model.norm.weight).any().item()


def test_bfloat16_training_runs():
    trainer = Trainer.create(MODEL, small_config(dtype="bfloat16", steps=3), TRAIN, VAL)
    trainer.run(progress=False)
    assert trainer.model.blocks[0].ffn.up_proj.weight.dtype == mx.bfloat16
    assert all(math.isfinite(x) for x in trainer.metrics["loss"])


def test_presets_follow_nanogpt():
    cpu = PRESETS["nanogpt-cpu"]
    model = TransformerLM(cpu.model_config(vocab_size=65))
    # nanoGPT prints 0.80M for this config: every parameter except the position table
    assert model.num_parameters() - 64 * 128 == 795_904
    assert (cpu.train.batch_size, cpu.train.context, cpu.train.steps, cpu.train.lr) == (12, 64, 2000, 1e-3)
    gpu = PRESETS["shakespeare-char"]
    c = gpu.model_config(vocab_size=65)
    assert (c.n_layers, c.n_heads, c.dims, c.dropout, c.context_length) == (6, 6, 384, 0.2, 256)
    assert (gpu.train.batch_size, gpu.train.steps, gpu.train.warmup, gpu.train.min_lr, gpu.train.beta2) == (
        64, 5000, 100, 1e-4, 0.99)
    assert PRESETS["llama-bpe"].model_config(vocab_size=2048).position == "rope"


def test_bad_train_config_is_rejected():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainConfig(dtype="float16")
