"""The training step's kernels built in the background: publishing into MLX's cache, the builder process, and
the trainer's switch from the uncompiled to the compiled step (Chapter 6)."""

import os
from pathlib import Path

import numpy as np
import pytest

from mlxllm import ModelConfig, kernels
from mlxllm.kernels import StepBuilder, publish
from mlxllm.tolerances import assert_close
from mlxllm.training import TrainConfig, Trainer

IDS = np.random.default_rng(0).integers(0, 20, 6000).astype(np.uint16)
MODEL = ModelConfig.gpt2(vocab_size=20, context_length=16, dims=32, n_layers=1, n_heads=2, bias=False, dropout=0.1)
CONFIG = TrainConfig(steps=40, batch_size=4, lr=1e-2, min_lr=1e-3, warmup=3, eval_interval=20, eval_batches=2)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty MLX kernel cache of this test's own (the builder's process inherits it)."""
    monkeypatch.setenv("MLX_PTX_CACHE_DIR", str(tmp_path / "ptx"))
    return tmp_path / "ptx"


def test_kernel_cache_follows_mlx_ptx_cache_dir(cache):
    assert kernels.kernel_cache() == cache


def test_publish_moves_each_kernel_whole_with_its_ptx_last(tmp_path, monkeypatch):
    built, cache = tmp_path / "built", tmp_path / "cache"
    long_name = "A" * 245 + "B" * 10  # MLX cuts a name longer than 245 characters into a folder and a file
    for name in ("short_kernel", f"{long_name[:245]}/{long_name[245:]}"):
        (built / name).parent.mkdir(parents=True, exist_ok=True)
        for suffix, text in ((".ptx", "code"), (".txt", "mangled names"), (".cu", "source")):
            (built / name).with_suffix(suffix).write_text(f"{name} {text}")
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(kernels.os, "replace", lambda a, b: (moves.append(b), real_replace(a, b)))
    assert publish(built, cache) == 2
    assert (cache / "short_kernel.ptx").read_text() == "short_kernel code"
    assert (cache / long_name[:245] / f"{long_name[245:]}.txt").read_text().endswith("mangled names")
    assert not list(built.rglob("*.ptx"))
    for i in range(0, 6, 3):  # per kernel: the names and the source first, the file MLX looks for last
        assert [m.suffix for m in moves[i:i + 3]] == [".txt", ".cu", ".ptx"]


def test_builders_start_from_the_cached_kernels_and_publish_only_new_ones(tmp_path):
    cache, builder = tmp_path / "cache", tmp_path / "cache" / ".mlxllm-build-x" / "step"
    for folder, name in ((cache, "cached"), (builder, "other_builders_file")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.ptx").write_text(name)
    assert kernels.kernel_files(cache) == [Path("cached.ptx")]  # a builder's folder is not the cache's
    fresh = tmp_path / "fresh"
    assert publish(cache, fresh, link=True) == 1 and (fresh / "cached.ptx").read_text() == "cached"
    assert (fresh / "cached.ptx").stat().st_ino == (cache / "cached.ptx").stat().st_ino  # a link, not a copy
    (fresh / "built.ptx").write_text("built")
    assert publish(fresh, cache, skip=frozenset(kernels.kernel_files(cache))) == 1  # the new one only
    assert (cache / "built.ptx").read_text() == "built" and (fresh / "cached.ptx").exists()


def make_trainer() -> Trainer:
    return Trainer.create(MODEL, CONFIG, IDS[:5000], IDS[5000:])


def test_steps_run_uncompiled_until_the_builder_is_done_then_compiled_with_the_same_losses(cache):
    trainer = make_trainer()
    trainer.kernel_builder = StepBuilder.start(trainer, force=True)  # off CUDA only when forced
    assert trainer.kernel_builder is not None
    builder = trainer.kernel_builder
    losses = [trainer.train_step()]  # its processes have not even imported MLX yet: uncompiled
    modes = [trainer._step_fn[0]]
    for part in ("update", "step"):
        builder.processes[part].wait()
    for loss in trainer.steps(CONFIG.steps - 1):  # the builder is done: published, then compiled
        modes.append(trainer._step_fn[0])
        losses.append(loss)
    assert all(process.returncode == 0 for process in builder.processes.values())
    assert builder.update_moved
    assert modes[0] is False and modes[-1] is True and modes == sorted(modes)  # one switch, never back
    assert list(cache.glob("mlxllm-step-*.built")) and not list(cache.glob(".mlxllm-build-*"))
    assert StepBuilder.start(make_trainer(), force=True) is None  # the marker: built once per machine and step
    compiled = make_trainer()
    # the same step compiled or not, from the same state and random draws: float32 rounding apart, equal
    assert_close(np.array(losses), np.array(list(compiled.steps(CONFIG.steps))), what="losses")


def test_a_builder_stopped_early_leaves_no_marker_and_no_folder(cache):
    trainer = make_trainer()
    cache.mkdir(parents=True)
    (cache / "cached.ptx").write_text("a kernel built before")
    builder = StepBuilder.start(trainer, force=True)
    assert all((builder.folder / part / "cached.ptx").exists() for part in builder.PARTS)  # not built again
    builder.close()
    assert builder.done() and builder.kernels == 0
    assert not list(cache.glob("mlxllm-step-*.built")) and not list(cache.glob(".mlxllm-build-*"))


def test_no_builder_off_cuda_when_disabled_or_for_a_trainer_it_cannot_copy(cache, monkeypatch):
    trainer = make_trainer()
    if not kernels.on_cuda():
        assert StepBuilder.start(trainer) is None  # the CPU and Metal build their kernels in milliseconds
    monkeypatch.setenv("MLXLLM_BUILD_IN_BACKGROUND", "0")
    assert StepBuilder.start(trainer, force=True) is None
    monkeypatch.delenv("MLXLLM_BUILD_IN_BACKGROUND")
    trainer.model.blocks[0].freeze()  # only some parameters trained (as under LoRA adapters)
    assert StepBuilder.start(trainer, force=True) is None
