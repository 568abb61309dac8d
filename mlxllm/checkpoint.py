"""Training checkpoints: written as one unit, verified on load, resumed exactly, locked while a run
uses them.

A checkpoint folder (``mlxllm train --out``) holds ``checkpoint.json`` (the marker and manifest:
configs, what the run trained on, step, and the sha256 of every file) and one ``step-NNNNNN/``
folder with ``model.safetensors`` (the kept model: last or best), ``latest.safetensors`` (the newest
parameters, when the kept model is an older best), ``optimizer.safetensors``, ``state.json``,
``metrics.json`` and the tokenizer. A save writes a hidden temporary folder, fsyncs it, renames it
into place and then replaces ``checkpoint.json`` (one atomic rename): a crash mid-save leaves the
previous checkpoint whole. Built in Chapter 6, Training.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlxllm.config import ModelConfig, TrainConfig
from mlxllm.data import sha256_of
from mlxllm.files import disk_trouble, fsync, save_arrays, write_atomic
from mlxllm.model import TransformerLM, check_block_names
from mlxllm.optimizer import make_optimizer

MARKER = "checkpoint.json"
FORMAT = "mlxllm-checkpoint"
VERSION = 1
TOKENIZER_FILE = "tokenizer.mlxllm"
# TrainConfig fields a resume may change
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "patience", "save")


class CheckpointError(ValueError):
    """A folder that is not a checkpoint, a damaged file, or a checkpoint that cannot be written."""


def is_checkpoint(folder: str | Path) -> bool:
    """True for a folder written by ``Trainer.save`` (it has our ``checkpoint.json`` marker).

    Chapter 6.
    """
    path = Path(folder) / MARKER
    try:
        return path.is_file() and json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_manifest(folder: str | Path) -> dict:
    """``checkpoint.json`` of a checkpoint folder, or a CheckpointError saying in one sentence what
    it is instead."""
    folder = Path(folder)
    if not folder.exists():
        raise CheckpointError(f"{folder} does not exist, so it is not a checkpoint folder; train "
                              "into it first with `mlxllm train --out ...`")
    if not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a checkpoint folder; load model files such "
                              "as .gguf with mlxllm.load_pretrained (or `mlxllm generate`)")
    path = folder / MARKER
    if not path.is_file():
        if (folder / "config.json").is_file():
            raise CheckpointError(f"{folder} is not a checkpoint folder (it has config.json but no "
                                  f"{MARKER}): it looks like a Hugging Face model folder, so load "
                                  "it with mlxllm.load_pretrained (or `mlxllm generate`)")
        raise CheckpointError(f"{folder} is not a checkpoint folder (no {MARKER}); train into it "
                              "first with `mlxllm train --out ...`")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format is {manifest.get('format')!r}, not {FORMAT!r}")
        (manifest["step"], manifest["folder"], manifest["files"], manifest["model"],  # noqa: B018
         manifest["train"])
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise CheckpointError(f"{path} is corrupt ({type(error).__name__}: {error}); restore it "
                              "from a backup or train again into an empty --out") from None
    if not is_plain_name(manifest["folder"]):  # data, not a path to trust
        raise CheckpointError(f"{path} names the step folder {manifest['folder']!r}, which is not "
                              f"a folder inside {folder} (no '..', no '/', no absolute path); "
                              "restore checkpoint.json from a backup or train again")
    return manifest


def is_plain_name(name) -> bool:
    """Whether ``name`` is one file or folder name: no separators, not '.' or '..', not empty."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
            and "\\" not in name and "\0" not in name)


def verified(folder: str | Path, manifest: dict, name: str) -> Path:
    """The path of one file of the checkpoint, after checking its sha256 against the manifest."""
    path = Path(folder) / manifest["folder"] / str(name)
    expected = manifest["files"].get(name) if is_plain_name(name) else None
    if expected is None or not path.is_file():
        raise CheckpointError(f"{path} is missing from the checkpoint; restore it or train again "
                              "into an empty --out")
    if path.stat().st_size == 0 or sha256_of(path) != expected:
        state = "empty" if path.stat().st_size == 0 else \
            "damaged (its sha256 differs from the one in checkpoint.json)"
        raise CheckpointError(f"{path} is {state}; restore the file from a backup or train again "
                              "into an empty --out")
    return path


def read_json(folder: str | Path, manifest: dict, name: str) -> dict:
    path = verified(folder, manifest, name)
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise CheckpointError(f"{path} is corrupt ({error}); restore it or train again into an "
                              "empty --out") from None


def read_arrays(folder: str | Path, manifest: dict, name: str) -> dict[str, mx.array]:
    path = verified(folder, manifest, name)
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError) as error:
        raise CheckpointError(f"{path} cannot be read ({error}); restore it or train "
                              "again") from None


def first_config_mismatch(saved: dict, current: dict) -> str | None:
    """'name is A in the checkpoint but B here' for the first differing field, or None."""
    for name in list(saved) + [k for k in current if k not in saved]:
        if saved.get(name) != current.get(name):
            return f"{name} is {saved.get(name)!r} in the checkpoint but {current.get(name)!r} here"
    return None


def check_arrays(saved: dict[str, mx.array], current: dict[str, mx.array], what: str) -> None:
    """CheckpointError naming the first array that is missing, unexpected or of another shape."""
    for name, array in current.items():
        if name not in saved:
            raise CheckpointError(f"{what}: {name} is missing from the checkpoint")
        if saved[name].shape != array.shape:
            raise CheckpointError(f"{what}: {name} has shape {tuple(saved[name].shape)} in the "
                                  f"checkpoint but {tuple(array.shape)} here")
    if extra := [name for name in saved if name not in current]:
        raise CheckpointError(f"{what}: the checkpoint has {extra[0]}, which this model does not")


def load_model_weights(model: TransformerLM, folder: str | Path, name: str = "model.safetensors",
                       manifest: dict | None = None) -> None:
    """Load a checkpoint's ``model.safetensors`` into ``model``; another config or shape → error
    naming it. ``manifest``: the folder's, when the caller has read it already. Built in Chapter 6,
    Training."""
    manifest = manifest or read_manifest(folder)
    if problem := first_config_mismatch(manifest["model"], model.config.to_dict()):
        raise CheckpointError(f"checkpoint {folder} does not match the model: {problem}")
    weights = read_arrays(folder, manifest, name)
    check_arrays(weights, dict(tree_flatten(model.parameters())),
                 f"checkpoint {folder} does not match the model")
    model.load_weights(list(weights.items()))


def load_checkpoint_tokenizer(folder: str | Path, manifest: dict | None = None):
    """The tokenizer saved with a checkpoint (None when the run had none). Built in Chapter 6,
    Training."""
    from mlxllm.tokenizer import load_tokenizer

    manifest = manifest or read_manifest(folder)
    return load_tokenizer(verified(folder, manifest, TOKENIZER_FILE)) \
        if TOKENIZER_FILE in manifest["files"] else None


def load_model(folder: str | Path) -> tuple[TransformerLM, object]:
    """The kept model (in eval mode) and its tokenizer, from a checkpoint folder written by
    ``Trainer``. Chapter 6."""
    manifest = read_manifest(folder)
    model = new_model(folder, manifest, "model.safetensors")
    model.set_dtype(TrainConfig.from_dict(manifest["train"]).parameter_dtype)
    load_model_weights(model, folder, manifest=manifest)
    model.eval()
    return model, load_checkpoint_tokenizer(folder, manifest)


def new_model(folder: str | Path, manifest: dict, name: str) -> TransformerLM:
    """A model of the manifest's config, after a cheap look at the names in ``name``'s header: a
    damaged checkpoint.json could ask for a million blocks."""
    config = ModelConfig.from_dict(manifest["model"])
    path = Path(folder) / manifest["folder"] / name
    if (names := stored_names(path)) is not None:  # unreadable: verified() names the damage later
        check_block_names(config, names, str(path))
    return TransformerLM(config)


def stored_names(path: Path) -> list[str] | None:
    """The tensor names of a safetensors file, from its header alone (8-byte length, then JSON);
    None if it cannot be read."""
    try:
        with open(path, "rb") as file:
            length = int.from_bytes(file.read(8), "little")
            if length > path.stat().st_size:
                return None
            return [name for name in json.loads(file.read(length)) if name != "__metadata__"]
    except (OSError, ValueError, TypeError):
        return None


@dataclass
class SavedRun:
    """What a checkpoint holds to resume its run exactly (``load_run``; ``Trainer.resume``)."""

    manifest: dict
    config: TrainConfig
    model: TransformerLM  # the newest parameters, in training mode
    optimizer: optim.Optimizer
    step: int
    batch_key: mx.array  # the next batch and the next step's dropout come from it
    metrics: dict
    best_parameters: dict | None  # known only where the run kept them (save="best")
    world_size: int  # the ranks that wrote it


def load_run(folder: str | Path, config: TrainConfig | None = None) -> SavedRun:
    """Everything a checkpoint saved to resume its run, each file verified. ``config`` replaces the
    saved training config but may change only ``RESUMABLE_CHANGES``. Built in Chapter 6."""
    manifest = read_manifest(folder)
    saved_config = TrainConfig.from_dict(manifest["train"])
    if config is not None:
        keep = {name: getattr(saved_config, name) for name in RESUMABLE_CHANGES}
        if changed := first_config_mismatch(manifest["train"], {**config.to_dict(), **keep}):
            raise CheckpointError(f"cannot resume {folder} with another training config: {changed}")
    config = config or saved_config
    state = read_json(folder, manifest, "state.json")
    metrics = read_json(folder, manifest, "metrics.json")
    resume_from = state.get("resume_from", "model.safetensors")
    if resume_from not in ("model.safetensors", "latest.safetensors"):
        raise CheckpointError(f"{folder}: state.json resumes from {resume_from!r}, not one of the "
                              "checkpoint's model files; restore it or train again")
    model = new_model(folder, manifest, resume_from)
    model.set_dtype(config.parameter_dtype)
    load_model_weights(model, folder, resume_from, manifest)
    model.train()
    optimizer = make_optimizer(model, config)
    saved = read_arrays(folder, manifest, "optimizer.safetensors")
    check_arrays(saved, dict(tree_flatten(optimizer.state)),
                 f"optimizer state in {folder} does not match")
    optimizer.state = tree_unflatten(list(saved.items()))
    # the best parameters are known only where the run kept them: model.safetensors beside a newer
    # latest.safetensors (see save_checkpoint), or the current model when it was the best
    best = None
    if config.save == "best" and state.get("resume_from") == "latest.safetensors":
        best = tree_unflatten(list(read_arrays(folder, manifest, "model.safetensors").items()))
    elif config.save == "best" and manifest["train"].get("save") == "best" and manifest.get("best"):
        best = model.parameters()
    return SavedRun(manifest, config, model, optimizer, state["step"],
                    mx.array(state["batch_key"], dtype=mx.uint32), metrics, best,
                    state.get("world_size", 1))


# --------------------------------------------------------------------------------------------------
# Saving as one unit.


def save_checkpoint(trainer, folder: str | Path) -> Path:
    """Write ``trainer``'s checkpoint into ``folder`` as one unit; the previous one stays whole
    until the end.

    Disk errors (a full disk, no permission) become one CheckpointError sentence naming the folder.
    Chapter 6.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".saving-"))
    try:
        latest = dict(tree_flatten(trainer.model.parameters()))
        best = trainer.metrics.get("best")
        keep_best = trainer.config.save == "best" and trainer.best_parameters is not None
        save_arrays(tmp / "model.safetensors",
                    dict(tree_flatten(trainer.best_parameters)) if keep_best else latest)
        resume_from = "model.safetensors"
        # the kept model is older: the newest goes beside it
        if keep_best and best["step"] != trainer.step:
            save_arrays(tmp / "latest.safetensors", latest)
            resume_from = "latest.safetensors"
        save_arrays(tmp / "optimizer.safetensors", dict(tree_flatten(trainer.optimizer.state)))
        if trainer.tokenizer is not None:
            from mlxllm.tokenizer import save_tokenizer

            save_tokenizer(trainer.tokenizer, tmp / TOKENIZER_FILE)
        state = {"step": trainer.step, "batch_key": trainer.batch_key.tolist(),
                 "world_size": trainer.group.size(), "resume_from": resume_from}
        write_atomic(tmp / "state.json", json.dumps(state))
        write_atomic(tmp / "metrics.json", json.dumps(trainer.metrics))
        files = {}
        for path in sorted(tmp.iterdir()):
            fsync(path)
            files[path.name] = sha256_of(path)
        fsync(tmp)
        target = folder / f"step-{trainer.step:06d}"
        for n in range(1, 1000):  # the same step saved twice (a periodic save, then the final one)
            if not target.exists():
                break
            target = folder / f"step-{trainer.step:06d}.{n}"
        os.rename(tmp, target)
        manifest = {"format": FORMAT, "version": VERSION, "step": trainer.step,
                    "folder": target.name, "model": trainer.model.config.to_dict(),
                    "train": trainer.config.to_dict(), "source": trainer.source, "best": best,
                    "files": files}
        # the commit, one rename: before it the old checkpoint, after it the new one
        write_atomic(folder / MARKER, json.dumps(manifest, indent=2))
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"could not write the checkpoint in {folder} ({disk_trouble(error)}, "
                              "then continue with --resume: the previous checkpoint there is "
                              "intact") from None
    except BaseException:  # anything else (a bug, Ctrl-C twice): no half-written folder stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in folder.iterdir():  # older step folders and interrupted saves
        if old.is_dir() and old != target and old.name.startswith(("step-", ".saving-")):
            shutil.rmtree(old, ignore_errors=True)
    return folder


# --------------------------------------------------------------------------------------------------
# One run per folder.


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(fd: int) -> tuple[int | None, str | None]:
    """(pid, host) written in an open lock file; (None, None) while it is empty or unreadable."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0))
        return int(holder["pid"]), holder.get("host")
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


@contextlib.contextmanager
def run_lock(folder: str | Path):
    """Hold ``folder/run.lock`` while a run writes there: an exclusive ``flock`` (of runs started
    at once exactly one gets it; the kernel drops it when a run dies), with our pid and host inside
    for the others' message. A live other run → CheckpointError naming its pid. Chapter 6."""
    # a file naming a live process that holds no flock (an older mlxllm's, or another host's on
    # a shared disk) is respected too; one naming a process that is gone is taken over
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, me = folder / "run.lock", {"pid": os.getpid(), "host": socket.gethostname()}

    def in_use(pid, host):
        where = "" if host in (None, me["host"]) else f" on {host}"
        who = f"pid {pid}{where}" if pid is not None else "which is starting"
        return CheckpointError(f"{folder} is in use by another run ({who}); wait for it to finish "
                               f"or choose another --out (if that run is gone, delete {path})")

    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = in_use(*_holder(fd))
            os.close(fd)
            raise error from None
        try:  # a run that ends unlinks the file before it unlocks: is ours still the one there?
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is None or current.st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            continue
        pid, host = _holder(fd)
        if pid is not None and pid != me["pid"] and (host != me["host"] or _alive(pid)):
            os.close(fd)
            raise in_use(pid, host)
        break  # free, or left by a process that is gone
    else:
        raise CheckpointError(f"could not take the lock {path}; delete it if no run uses {folder}")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still locked: a waiting run then makes a new file
        os.close(fd)
