"""A CUDA GPU's compiled kernels: where MLX keeps them, and building the training step's in the background.

MLX's CUDA backend compiles each fused kernel of an ``mx.compile``d function with NVRTC the first time it runs
(seconds each) and keeps it on disk, in ``MLX_PTX_CACHE_DIR`` (default ``$TMPDIR/mlx/<version>/ptx``). The
training step fuses into about 30 kernels, so on a machine that has never run it the first step would wait
minutes. ``StepBuilder`` runs the compiled step once in other processes, with cache folders of their own,
while the trainer takes the same steps uncompiled; when they are done, their kernels move into MLX's cache
(each file whole, by rename) and the trainer switches to the compiled step, which loads them. A marker in the
cache records the build, so later runs of the same step on this machine are compiled from their first step.
Metal and the CPU build their kernels in milliseconds, so this is for CUDA only. Built in Chapter 6, Training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.training import TrainConfig, Trainer, apply_gradients, make_update_ratios

BUILD_PREFIX = ".mlxllm-build-"  # a builder's folder inside MLX's kernel cache


def on_cuda() -> bool:
    """Whether arrays go to a GPU through MLX's CUDA backend (not Metal, not the CPU)."""
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def kernel_cache() -> Path:
    """The folder MLX's CUDA backend keeps its compiled kernels in (``MLX_PTX_CACHE_DIR`` or its default)."""
    folder = os.environ.get("MLX_PTX_CACHE_DIR")
    return Path(folder) if folder else Path(tempfile.gettempdir()) / "mlx" / mx.__version__ / "ptx"


def kernel_files(cache: Path) -> list[Path]:
    """The kernels in ``cache``, as paths of their ``.ptx`` files relative to it (builders' folders left out)."""
    found = (ptx.relative_to(cache) for ptx in cache.rglob("*.ptx"))
    return sorted(ptx for ptx in found if not ptx.parts[0].startswith(BUILD_PREFIX))


def publish(built: Path, cache: Path, skip: frozenset = frozenset(), link: bool = False) -> int:
    """Move the kernels in ``built`` (but those in ``skip``) into ``cache``, or hard-link them; returns how many.

    MLX looks a kernel up by its ``.ptx`` file and then reads its ``.txt`` (the kernels' mangled names), so
    each file arrives whole, by rename or link, and the ``.ptx`` last. A name longer than 245 characters is a
    path of folders (MLX cuts it so), kept as it is.
    """
    count = 0
    for ptx in kernel_files(built):
        if ptx in skip:
            continue
        (cache / ptx).parent.mkdir(parents=True, exist_ok=True)
        for suffix in (".txt", ".cu", ".ptx"):
            source, target = built / ptx.with_suffix(suffix), cache / ptx.with_suffix(suffix)
            if not source.exists():
                continue
            if not link:
                os.replace(source, target)
                continue
            try:
                os.link(source, target)
            except OSError:  # a file system without hard links
                shutil.copy2(source, target)
        count += 1
    return count


def step_signature(trainer: Trainer) -> str:
    """A digest of what the compiled training step's kernels depend on: MLX, this package's code and the two
    configs (which fix the batch's shape and the dtypes); the trainer's own fingerprints of them."""
    fingerprints = trainer.fingerprints()
    parts = ("MLX version", "mlxllm source code", "model config", "training config")
    return hashlib.sha256(b"".join(fingerprints[part] for part in parts)).hexdigest()


class StepBuilder:
    """Builds the compiled training step's kernels in two processes; ``done()`` once they are in MLX's cache.

    One runs the whole step; the other, at the same time, only the step's end (the kernels the first would
    build last), whose kernels move into the first one's cache as soon as they are ready. Both start from the
    kernels already in MLX's cache, so they build only the missing ones (after ``--resume --steps N``, say:
    the learning-rate schedule's constants are in its kernels).

    Made by ``StepBuilder.start(trainer)``, which returns None where there is nothing to build: not CUDA, a
    marker says this step was built here before, a trainer the builder cannot copy (fine-tuning rows, LoRA
    adapters, data-parallel ranks), or ``MLXLLM_BUILD_IN_BACKGROUND=0`` in the environment (every step
    compiled, the first one waiting for its kernels).
    """

    PARTS = ("step", "update")  # the whole step; and its end alone, whose kernels the first would build last

    def __init__(self, trainer: Trainer, cache: Path, marker: Path):
        self.cache, self.marker = cache, marker
        cache.mkdir(parents=True, exist_ok=True)
        self.folder = Path(tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=cache))  # same disk: renames are atomic
        spec = {"model": trainer.model.config.to_dict(), "train": trainer.config.to_dict(),
                "tokens": 4 * trainer.context + 1}
        (self.folder / "spec.json").write_text(json.dumps(spec))
        # each builder starts from the kernels this machine has (links, not copies) and builds only the rest
        self.cached = frozenset(kernel_files(cache))
        for part in self.PARTS:
            publish(cache, self.folder / part, link=True)
        self.processes = {part: self._spawn(part) for part in self.PARTS}
        self.update_moved = False  # the "update" kernels moved into the "step" builder's cache
        self.kernels = None  # how many were published, once done

    def _spawn(self, part: str) -> subprocess.Popen:
        """A builder process for ``part``, with a kernel cache of its own in this builder's folder."""
        with open(self.folder / f"{part}.log", "w") as log:
            return subprocess.Popen([sys.executable, "-m", "mlxllm.kernels", str(self.folder / "spec.json"), part],
                                    env={**os.environ, "MLX_PTX_CACHE_DIR": str(self.folder / part)},
                                    stdout=log, stderr=subprocess.STDOUT)

    @classmethod
    def start(cls, trainer: Trainer, force: bool = False) -> StepBuilder | None:
        """A builder for ``trainer``'s step, or None (see the class). ``force``: off CUDA too (for tests)."""
        trainable = {name for name, _ in tree_flatten(trainer.model.trainable_parameters())}
        if (not (force or on_cuda()) or os.environ.get("MLXLLM_BUILD_IN_BACKGROUND") == "0"
                or trainer.rows or trainer.group.size() > 1 or type(trainer.model) is not TransformerLM
                or trainable != {name for name, _ in tree_flatten(trainer.model.parameters())}):
            return None
        cache = kernel_cache()
        marker = cache / f"mlxllm-step-{step_signature(trainer)[:16]}.built"
        return None if marker.exists() else cls(trainer, cache, marker)

    def done(self) -> bool:
        """True once the step's kernels are in MLX's cache (or its builder failed: then the compiled step builds
        them itself, as without a builder). Called before each step; it never waits."""
        if self.kernels is not None:
            return True
        step, update = self.processes["step"], self.processes["update"]
        if not self.update_moved and update.poll() == 0:  # the step's builder finds them when it gets there
            publish(self.folder / "update", self.folder / "step", self.cached)
            self.update_moved = True
        code = step.poll()
        if code is None:
            return False
        if code == 0:
            self.kernels = publish(self.folder / "step", self.cache, self.cached)
            self.marker.write_text(f"{self.kernels} kernels\n")
        else:
            self.kernels = 0
            warnings.warn(f"building the training step's kernels failed (exit code {code}); the compiled step "
                          f"builds them itself. The builder's log:\n{(self.folder / 'step.log').read_text()[-2000:]}")
        self.close()
        return True

    def close(self) -> None:
        """Stop the builder processes still running (training ended first) and remove the builder's folder."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.kernels = 0 if self.kernels is None else self.kernels
        shutil.rmtree(self.folder, ignore_errors=True)


def build(spec: dict, part: str) -> None:
    """What a builder process does: run the compiled ``part`` of the training step ``spec`` describes once,
    on random ids. "step": a whole step that also measures the update:data ratios; "update": the step's end
    alone (gradient clipping, the optimizer update) and the ratios, from zero gradients."""
    model_config, config = ModelConfig.from_dict(spec["model"]), TrainConfig.from_dict(spec["train"])
    ids = np.random.default_rng(0).integers(0, model_config.vocab_size, spec["tokens"], dtype=np.int32)
    trainer = Trainer.create(model_config, config, ids, ids)
    model, optimizer = trainer.model, trainer.optimizer
    if part == "step":
        trainer._finish(trainer._launch(Trainer.DIAGNOSTICS_EVERY))  # a step that measures the ratios too
    else:
        state = [model.state, optimizer.state]
        update = mx.compile(functools.partial(apply_gradients, model, optimizer, config), inputs=state, outputs=state)
        before = model.trainable_parameters()
        mx.eval(update(tree_map(mx.zeros_like, before)), state)
        sums, _ = make_update_ratios(model)
        mx.eval(sums(before, model.trainable_parameters()))
    mx.eval(model.state, optimizer.state)


if __name__ == "__main__":
    build(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2])
