"""Training: schedule, decay groups, clipping, the compiled step, memory, checkpoints, exact resume (Chapter 6)."""

import json
import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten, tree_unflatten

from mlxllm import ModelConfig, TransformerLM, cross_entropy, prediction, training
from mlxllm.checkpoint import load_model, load_model_weights
from mlxllm.config import TrainConfig
from mlxllm.data import get_batch, sha256_of
from mlxllm.tolerances import assert_close, bound, relative_difference
from mlxllm.optimizer import lr_schedule, make_optimizer
from mlxllm.presets import PRESETS
from mlxllm.training import Trainer, TrainingDiverged
from conftest import (RUN_MODEL, RUN_TOKENIZER, TRAIN_IDS, VAL_IDS, make_trainer, parameters_equal,
                      randomize, small_config)


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
    trainer = make_trainer(grad_clip=1e-3, lr=1e-2, warmup=0)
    model_copy = TransformerLM(RUN_MODEL)
    model_copy.update(trainer.model.parameters())
    _, batch_key, _ = mx.random.split(trainer.batch_key, 3)  # the key the first batch will be drawn from
    inputs, targets = get_batch(mx.array(TRAIN_IDS.astype(np.int32)), 4, 16, batch_key)
    loss, grads = nn.value_and_grad(model_copy, lambda m, x, y: cross_entropy(m(x), y))(model_copy, inputs, targets)
    norm = math.sqrt(sum((g.astype(mx.float32) ** 2).sum().item() for _, g in tree_flatten(grads)))
    assert trainer.train_step() == pytest.approx(loss.item(), rel=1e-5)
    trainer.flush_metrics()  # gradient norms stay on the device until read in bulk
    assert trainer.metrics["grad_norm"][0] == pytest.approx(norm, rel=1e-4) and norm > 1e-3


def test_memory_stays_flat_over_fifty_steps():
    trainer = make_trainer(steps=60)
    for _ in range(10):
        trainer.train_step()
    baseline = mx.get_active_memory()
    for _ in range(50):
        trainer.train_step()
    growth = mx.get_active_memory() - baseline
    assert growth < 256 * 1024, f"{growth:,} bytes more after 50 steps"  # no graph or buffers pile up


def test_resume_is_exact_with_dropout_and_accumulation(tmp_path):
    """Bit for bit wherever the backend repeats one computation exactly (CPU; Metal). MLX's CUDA backend does not:
    its scatter-adds (the embedding gradient) use atomics, so two uninterrupted runs already differ in the last
    bits (measured on an H200: 3e-6 relative in the losses, 3e-5 in the parameters after 12 steps); there the
    resumed run must be as close to the uninterrupted one as a second uninterrupted run is."""
    model = ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2, dropout=0.1)
    config = small_config(grad_accumulation=2)
    straight = make_trainer(config, model)
    straight.run(progress=False)
    again = make_trainer(config, model)
    again.run(progress=False)
    first_half = make_trainer(config, model)
    first_half.run(until=6, out=tmp_path / "ckpt", progress=False)
    mx.random.seed(12345)  # a different global random state must not matter
    resumed = Trainer.resume(tmp_path / "ckpt", TRAIN_IDS, VAL_IDS)
    assert resumed.step == 6
    resumed.run(progress=False)
    deterministic = again.metrics["loss"] == straight.metrics["loss"] and parameters_equal(again.model, straight.model)
    if mx.default_device() == mx.cpu:
        assert deterministic  # the CPU backend always repeats itself: no excuse there
    if deterministic:
        assert resumed.metrics["loss"] == straight.metrics["loss"]  # every step's loss, bit for bit
        assert resumed.metrics["eval"]["val_loss"][-1] == straight.metrics["eval"]["val_loss"][-1]
        assert parameters_equal(resumed.model, straight.model)
    else:
        noise = relative_difference(again.metrics["loss"], straight.metrics["loss"])
        rtol = max(2 * noise, bound(mx.float32))  # as close as a repeat of the same run, at least
        assert_close(resumed.metrics["loss"], straight.metrics["loss"], rtol=rtol, what="losses per step")
        assert_close(resumed.metrics["eval"]["val_loss"][-1:], straight.metrics["eval"]["val_loss"][-1:], rtol=rtol,
                     what="final validation losses")


def test_checkpoint_files_and_identical_logits(tmp_path):
    trainer = make_trainer()
    trainer.run(out=tmp_path, progress=False)
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint.json", "step-000012"}
    step_folder = tmp_path / "step-000012"
    names = {p.name for p in step_folder.iterdir()}
    assert names == {"model.safetensors", "optimizer.safetensors", "state.json", "tokenizer.mlxllm", "metrics.json"}
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    assert manifest["model"]["n_layers"] == 1 and manifest["train"]["steps"] == 12 and manifest["step"] == 12
    assert set(manifest["files"]) == names  # every file's sha256 is recorded
    assert json.loads((step_folder / "state.json").read_text())["step"] == 12
    metrics = json.loads((step_folder / "metrics.json").read_text())
    assert len(metrics["loss"]) == len(metrics["lr"]) == len(metrics["grad_norm"]) == 12
    assert metrics["eval"]["step"] == [0, 5, 10, 12] and metrics["update_ratio"]["step"] == [10]
    assert all(0 < r < 1 for group in ("attention", "ffn", "norm", "embedding") for r in metrics["update_ratio"][group])
    model, tokenizer = load_model(tmp_path)
    ids = mx.array([RUN_TOKENIZER.encode("abcdefg")])
    trainer.model.eval()
    assert mx.array_equal(model(ids), trainer.model(ids)) and tokenizer.chars == RUN_TOKENIZER.chars


def test_mismatched_checkpoint_names_the_first_difference(tmp_path):
    make_trainer(steps=1).run(out=tmp_path, progress=False)
    wider = TransformerLM(ModelConfig.gpt2(vocab_size=20, context_length=16, dims=64, n_layers=1, n_heads=2, bias=False))
    with pytest.raises(ValueError, match="dims is 32 in the checkpoint but 64 here"):
        load_model_weights(wider, tmp_path)
    # same configs, weights of another shape (with a matching manifest): the first differing parameter is named
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    weights = tmp_path / manifest["folder"] / "model.safetensors"
    mx.save_safetensors(str(weights), dict(tree_flatten(wider.parameters())))
    manifest["files"]["model.safetensors"] = sha256_of(weights)
    (tmp_path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"token_embedding.weight has shape \(20, 64\) in the checkpoint but \(20, 32\)"):
        load_model_weights(TransformerLM(RUN_MODEL), tmp_path)
    with pytest.raises(ValueError, match="is not a checkpoint folder"):
        Trainer.resume(tmp_path / "missing", TRAIN_IDS, VAL_IDS)
    with pytest.raises(ValueError, match="another training config: batch_size is 4 in the checkpoint but 8 here"):
        Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS, config=small_config(batch_size=8))


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = make_trainer(checkpoint_every=2)
    trainer.run(until=2, out=tmp_path, progress=False)
    trainer.model.norm.weight = mx.full(trainer.model.norm.weight.shape, mx.nan)  # poison the model
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3.*last good checkpoint was kept"):
        trainer.run(out=tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 2
    model, _ = load_model(tmp_path)
    assert not mx.isnan(model.norm.weight).any().item()


def test_bfloat16_training_runs():
    trainer = make_trainer(dtype="bfloat16", steps=3)
    trainer.run(progress=False)
    assert trainer.model.blocks[0].ffn.up_proj.weight.dtype == mx.bfloat16
    assert all(math.isfinite(x) for x in trainer.metrics["loss"])


def test_presets_follow_nanogpt():
    cpu = PRESETS["nanogpt-cpu"]
    model = TransformerLM(cpu.model_config(vocab_size=65))
    # nanoGPT prints 0.80M for this config: every parameter except the position table
    assert model.num_parameters() - 64 * 128 == 795_904
    assert (cpu.train.batch_size, cpu.context_length, cpu.train.steps, cpu.train.lr) == (12, 64, 2000, 1e-3)
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


def test_prepare_run_builds_the_preset_on_the_corpus(tmp_path, monkeypatch):
    from mlxllm import data
    from mlxllm.presets import prepare_run

    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    path = tmp_path / "text.txt"
    path.write_text("to be or not to be, " * 200)
    trainer = prepare_run(path, "tiny", "char", steps=3, val_fraction=0.5, batch_size=4)
    assert len(trainer.train_ids) == len(trainer.val_ids) == 2000  # val_fraction is used
    assert trainer.model.config.context_length == trainer.context == PRESETS["tiny"].context_length == 32
    assert trainer.model.config.vocab_size == len(set("to be or not to be, "))
    assert trainer.source["preset"] == "tiny" and trainer.source["tokenizer"] == "char"
    shorter = prepare_run(path, "tiny", "char", context=16)  # --context sets the model's context length too
    assert shorter.model.config.context_length == shorter.context == 16
    with pytest.raises(ValueError, match="unknown preset 'huge'; choose one of: tiny"):
        prepare_run(path, "huge")
    with pytest.raises(ValueError, match=r"needs about [\d,.]+ GiB for one training step"):
        prepare_run(path, "tiny", "char", context=100_000, batch_size=64)


def test_training_windows_longer_than_the_model_are_refused():
    with pytest.raises(ValueError, match="context 32 is longer than the model's context_length 16"):
        make_trainer(context=32)


def test_ids_outside_the_vocabulary_are_refused_once_up_front():
    bad = TRAIN_IDS.copy()
    bad[100] = 20
    with pytest.raises(ValueError, match="the training ids go up to 20 but the model's vocabulary has 20 tokens"):
        Trainer.create(RUN_MODEL, small_config(), bad, VAL_IDS)


def test_mixed_bfloat16_computes_in_bfloat16_over_float32_weights():
    from mlxllm.tolerances import assert_close

    mixed = make_trainer(dtype="mixed-bfloat16", steps=3)
    full = make_trainer(steps=3)
    mixed_losses = [mixed.train_step() for _ in range(3)]
    full_losses = [full.train_step() for _ in range(3)]
    assert mixed_losses[0] != full_losses[0]  # the forward pass really ran in bfloat16 ...
    assert_close(mx.array(mixed_losses), mx.array(full_losses), dtype=mx.bfloat16, what="losses")  # ... on the same path
    assert {p.dtype for _, p in tree_flatten(mixed.model.parameters())} == {mx.float32}  # master weights
    assert {s.dtype for _, s in tree_flatten(mixed.optimizer.state) if s.size > 1} == {mx.float32}


@pytest.mark.parametrize("rows", [False, True])
def test_loss_estimate_joins_batches_but_keeps_each_batch_mean(monkeypatch, rows):
    """Batches joined into one forward pass give the mean of the batch-by-batch losses (a masked mean per
    batch for fine-tuning rows), for any number of batches per pass."""
    # on the CPU stream, under the CPU's float32 bound: joining is the same logic on every backend, and a
    # masked mean over a joined pass differs by ~6e-4 (TF32's bound would let that through)
    with mx.stream(mx.cpu):
        mx.random.seed(0)
        model = randomize(TransformerLM(RUN_MODEL))  # O(1) weights: per-token losses far apart, so weighting shows
        model.train()
        config = small_config(eval_batches=5)
        ids = mx.array(VAL_IDS.astype(np.int32))
        if rows:  # (N, 2, T) rows whose first targets are ignored in every other row
            windows = np.lib.stride_tricks.sliding_window_view(VAL_IDS.astype(np.int32), 17)[:200:7]  # (29, 17)
            targets = windows[:, 1:].copy()
            for n, row in enumerate(targets):
                row[:15 * (n % 2)] = prediction.IGNORE  # one kept target in every other row
            ids = mx.array(np.stack([windows[:, :-1], targets], axis=1))
        key = mx.random.key(3)
        model.eval()
        one_by_one = []
        for k in mx.random.split(key, 5):
            x, y = training.get_rows(ids, 4, k) if rows else get_batch(ids, 4, 16, k)
            one_by_one.append(prediction.token_loss(rows)(model(x), y).item())
        model.train()
        passes = []
        forward = TransformerLM.__call__
        monkeypatch.setattr(TransformerLM, "__call__", lambda m, x, **kw: passes.append(x.shape) or forward(m, x, **kw))
        for tokens, shapes in ((64, [(4, 16)] * 5), (3 * 64, [(12, 16), (8, 16)]), (1 << 17, [(20, 16)])):
            passes.clear()
            monkeypatch.setattr(training, "EVAL_TOKENS", tokens)
            estimate = training.estimate_loss(model, ids, config, key, context=16)
            assert passes == shapes
            assert model.training  # left as it was found
            assert_close(estimate, float(np.mean(one_by_one)), rtol=bound(mx.float32, mx.cpu), what="estimates")
