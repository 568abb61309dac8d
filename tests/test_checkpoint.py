"""Checkpoints (Chapter 6): one unit on disk, verified on load, best vs last, early stopping, signals, the run lock."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlx.core as mx
import pytest

import mlxllm.checkpoint as checkpoint
import mlxllm.training as training
from mlxllm.checkpoint import CheckpointError, is_checkpoint, load_model, run_lock
from mlxllm.tolerances import assert_close
from mlxllm.training import Trainer, TrainingInterrupted
from conftest import TRAIN_IDS, VAL_IDS, assert_same, make_trainer, parameters, small_config


def scripted_val_losses(monkeypatch, val_losses: list[float]):
    """Replace the loss estimate with a script: evaluation i reports val_losses[i] (train loss 9.0)."""
    calls = []

    def estimate(model, ids, config, key, context=None):
        calls.append(1)
        return 9.0 if len(calls) % 2 else val_losses[len(calls) // 2 - 1]

    monkeypatch.setattr(training, "estimate_loss", estimate)


def test_a_save_broken_off_by_an_exception_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer()
    trainer.run(until=2, out=tmp_path, progress=False)
    at_step_2 = parameters(trainer.model)
    real_write = checkpoint.write_atomic

    def fail_on_metrics(path, data):
        if path.name == "metrics.json":
            raise RuntimeError("injected failure in the middle of a save")
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "write_atomic", fail_on_metrics)
    with pytest.raises(RuntimeError, match="injected"):
        trainer.run(until=4, out=tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 2
    model, _ = load_model(tmp_path)  # hashes verified: the step-2 files are whole
    assert_same(parameters(model), at_step_2)
    monkeypatch.setattr(checkpoint, "write_atomic", real_write)
    trainer.save(tmp_path)  # the next good save cleans up the half-written folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000004"]


def test_a_process_killed_mid_save_leaves_a_loadable_checkpoint(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = [{str(Path(__file__).parent)!r}, {os.getcwd()!r}]  # tests/conftest.py
        import mlxllm.checkpoint as checkpoint
        from conftest import make_trainer
        trainer = make_trainer()
        trainer.run(until=3, out=sys.argv[1], progress=False)
        real = checkpoint.mx.save_safetensors
        def die_halfway(path, arrays):
            if path.endswith("optimizer.safetensors"):
                open(path, "wb").write(b"half a file")
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, arrays)
        checkpoint.mx.save_safetensors = die_halfway
        trainer.run(until=6, out=sys.argv[1], progress=False)
    """)
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 3
    resumed = Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)
    assert resumed.step == 3
    resumed.run(progress=False, out=tmp_path)  # and it continues to the end, over the leftovers
    assert resumed.step == 12 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_damaged_empty_and_missing_files_are_named(tmp_path):
    make_trainer(steps=2).run(out=tmp_path, progress=False)
    files = tmp_path / "step-000002"
    data = (files / "model.safetensors").read_bytes()
    (files / "model.safetensors").write_bytes(data[:-8] + b"\0" * 8)
    with pytest.raises(CheckpointError, match=r"model.safetensors is damaged .*restore the file"):
        load_model(tmp_path)
    (files / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"model.safetensors is empty"):
        load_model(tmp_path)
    (files / "model.safetensors").write_bytes(data)
    state = (files / "state.json").read_bytes()
    (files / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"state.json is damaged"):
        Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)
    (files / "state.json").write_bytes(state)
    (files / "metrics.json").unlink()
    with pytest.raises(CheckpointError, match=r"metrics.json is missing"):
        Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)
    (tmp_path / "checkpoint.json").write_text('{"format": "mlxllm-checkpoint", "step": ')
    with pytest.raises(CheckpointError, match=r"checkpoint.json is corrupt"):
        load_model(tmp_path)
    assert not is_checkpoint(tmp_path)


def test_a_hugging_face_folder_is_not_a_training_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert not is_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="looks like a Hugging Face model folder, so load it with "
                                              "mlxllm.load_pretrained"):
        load_model(tmp_path)
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint folder"):
        load_model(tmp_path / "config.json")


def test_a_full_disk_is_one_sentence_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    trainer = make_trainer()
    trainer.run(until=2, out=tmp_path, progress=False)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    with pytest.raises(CheckpointError, match=r"No space left on device\); free some space, then continue with "
                                              r"--resume: the previous checkpoint there is intact"):
        trainer.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000002"]


def test_the_best_model_is_kept_and_resume_continues_from_the_latest(tmp_path, monkeypatch):
    scripted_val_losses(monkeypatch, [3.0, 2.0, 2.5, 2.4, 2.6])  # evaluations at steps 0, 5, 10, 12 (+ resume)
    config = small_config(save="best")
    straight = make_trainer(config)
    straight.run(until=5, progress=False)
    at_best = parameters(straight.model)
    straight.run(out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    assert manifest["best"] == {"step": 5, "val_loss": 2.0} and manifest["step"] == 12
    assert "latest.safetensors" in manifest["files"]
    kept, _ = load_model(tmp_path)
    assert_same(parameters(kept), at_best)  # the model to use is the best one
    resumed = Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS, small_config(save="best", steps=14))
    assert resumed.step == 12
    assert_same(parameters(resumed.model), parameters(straight.model))  # training goes on from the latest
    assert_same(parameters(resumed.best_parameters), at_best)


def test_last_policy_keeps_the_final_model(tmp_path, monkeypatch):
    scripted_val_losses(monkeypatch, [3.0, 2.0, 2.5, 2.4])
    trainer = make_trainer(save="last")
    trainer.run(out=tmp_path, progress=False)
    kept, _ = load_model(tmp_path)
    assert_same(parameters(kept), parameters(trainer.model))
    assert json.loads((tmp_path / "checkpoint.json").read_text())["best"] == {"step": 5, "val_loss": 2.0}


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path, monkeypatch):
    scripted_val_losses(monkeypatch, [3.0, 2.0, 2.5, 2.6, 1.0])
    trainer = make_trainer(steps=30, patience=2)
    trainer.run(out=tmp_path, progress=False)
    assert trainer.stopped_early and trainer.step == 15  # evaluations at 10 and 15 did not beat step 5
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 15


def test_sigint_stops_after_the_step_with_a_resumable_checkpoint(tmp_path, monkeypatch):
    config = small_config()
    straight = make_trainer(config)
    straight.run(progress=False)
    trainer = make_trainer(config)
    launch = trainer._launch

    def launch_then_signal(step):
        launched = launch(step)
        if step == 3:  # as Ctrl-C would, while step 3 runs on the device (step 2 not yet read)
            os.kill(os.getpid(), signal.SIGINT)
        return launched

    monkeypatch.setattr(trainer, "_launch", launch_then_signal)
    handler = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN when started in the background
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 3; the checkpoint in .* is resumable"):
        trainer.run(out=tmp_path, progress=False)
    assert signal.getsignal(signal.SIGINT) is handler  # the handlers are given back
    resumed = Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)
    assert resumed.step == 3
    resumed.run(progress=False)
    if mx.default_device() == mx.cpu:  # exact where the backend repeats itself (see test_resume_is_exact_...)
        assert resumed.metrics["loss"] == straight.metrics["loss"]
    else:  # CUDA's atomic scatter-adds: two uninterrupted runs already differ in the last bits
        assert_close(resumed.metrics["loss"], straight.metrics["loss"], what="losses per step")


def test_a_folder_in_use_by_a_live_run_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        with pytest.raises(CheckpointError, match=f"in use by another run \\(pid {sleeper.pid}\\)"):
            with run_lock(tmp_path):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()
    # the holder is gone now: the lock is stale, taken over, and released afterwards
    with run_lock(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(CheckpointError, match=f"pid {os.getpid()}"):  # not even the same process twice
            with run_lock(tmp_path):
                pass
    assert not (tmp_path / "run.lock").exists()


def test_a_checkpoint_without_a_tokenizer_loads_through_load_pretrained(tmp_path):
    from mlxllm import load_pretrained

    trainer = make_trainer(steps=2, tokenizer=None)  # no tokenizer
    trainer.run(out=tmp_path, progress=False)
    model, tokenizer = load_pretrained(tmp_path)
    assert tokenizer is None
    assert_same(parameters(model), parameters(trainer.model))


def test_resuming_a_last_run_with_save_best_does_not_call_the_latest_model_the_best(tmp_path):
    trainer = make_trainer(save="last")
    trainer.run(out=tmp_path, progress=False)
    resumed = Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS, small_config(save="best"))
    # the "last" run never kept its best parameters: they are unknown, not the final ones
    assert resumed.best_parameters is None


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

@pytest.mark.parametrize("folder", ["..", "../step-000002", "/tmp", ".", "", "step-000002/../..", 7])
def test_checkpoint_json_may_name_only_a_folder_inside_the_checkpoint(tmp_path, folder):
    make_trainer(steps=2).run(out=tmp_path / "run", progress=False)
    marker = tmp_path / "run" / "checkpoint.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "folder": folder}))
    with pytest.raises(CheckpointError, match=r"names the step folder .*which is not a folder inside"):
        load_model(tmp_path / "run")


def test_state_json_may_resume_only_from_the_checkpoints_model_files(tmp_path):
    make_trainer(steps=2).run(out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    state = tmp_path / manifest["folder"] / "state.json"
    state.write_text(json.dumps({**json.loads(state.read_text()), "resume_from": "../../elsewhere.safetensors"}))
    manifest["files"]["state.json"] = checkpoint.sha256_of(state)  # as if written so: the digest alone proves nothing
    (tmp_path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"resumes from '\.\./\.\./elsewhere\.safetensors', not one of"):
        Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)


def test_a_checkpoint_json_of_a_million_blocks_is_compared_with_the_weights_first(tmp_path, monkeypatch):
    from test_pretrained import no_deep_models

    make_trainer(steps=2).run(out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "checkpoint.json").read_text())
    manifest["model"]["n_layers"] = 10**6
    (tmp_path / "checkpoint.json").write_text(json.dumps(manifest))
    no_deep_models(monkeypatch, checkpoint)
    with pytest.raises(ValueError, match=r"n_layers=1,000,000 blocks, but .*model\.safetensors holds the tensors of 1"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="n_layers=1,000,000 blocks"):
        Trainer.resume(tmp_path, TRAIN_IDS, VAL_IDS)


def test_a_full_disk_in_mlxs_writer_is_one_sentence_and_leaves_no_partial_save(tmp_path, monkeypatch):
    """mx.save_safetensors raises RuntimeError, not OSError, when the disk is full: caught, cleaned up, one line."""
    trainer = make_trainer()
    trainer.run(until=2, out=tmp_path, progress=False)

    def full(path, arrays, **metadata):
        open(path, "wb").write(b"the first bytes")
        raise RuntimeError("[write] Unable to write 8 bytes to file.")  # what MLX says on a full disk

    monkeypatch.setattr(mx, "save_safetensors", full)
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint in .* \(MLX: \[write\] Unable to write "
                                              r"8 bytes to file\.\); free some space or fix the folder's permissions, "
                                              r"then continue with --resume"):
        trainer.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "step-000002"]  # no .saving-* left
    monkeypatch.undo()
    assert load_model(tmp_path)[0] is not None


LOCK_CONTENDER = """
import os, sys, time
sys.path.insert(0, sys.argv[4])
import mlxllm.checkpoint as checkpoint
folder, go, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
real_open = os.open

def slow_open(path, *args, **kwargs):  # a slow disk: time passes between creating run.lock and using it
    fd = real_open(path, *args, **kwargs)
    if str(path).endswith("run.lock"):
        time.sleep(delay)
    return fd

os.open = slow_open
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.0005)
try:
    with checkpoint.run_lock(folder):
        print("held", flush=True)
        time.sleep(1.5)
except checkpoint.CheckpointError as error:
    print("refused", error, flush=True)
"""


@pytest.mark.parametrize("delay", [0.0, 0.05])
def test_of_six_runs_started_together_exactly_one_holds_the_lock(tmp_path, delay):
    for trial in range(2):
        folder, go = tmp_path / f"run{trial}", tmp_path / f"go{trial}"
        runs = [subprocess.Popen([sys.executable, "-c", LOCK_CONTENDER, str(folder), str(go), str(delay), os.getcwd()],
                                 stdout=subprocess.PIPE, text=True) for _ in range(6)]
        assert all(run.stdout.readline().strip() == "ready" for run in runs)
        go.touch()  # all six start at once
        outcomes = [run.communicate(timeout=60)[0].split(None, 1)[0] for run in runs]
        assert sorted(outcomes) == ["held"] + ["refused"] * 5, outcomes
        assert not (folder / "run.lock").exists()
