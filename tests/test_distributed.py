"""Data-parallel training (Appendix): `mlxllm train` under `mlx.launch -n 2 --backend ring` over loopback.

Two ranks on the tiny preset must end with the parameters of one process trained on the same global
batches, rank 0 alone writes the checkpoint, a resume under 2 ranks continues bit-exactly (on the CPU
backend; within the tolerance policy on a GPU), and ranks
that disagree all stop with one message. Every launch has a hard timeout (`launch_local` kills the
launcher and its ranks), so CI can never hang here.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest

from mlxllm.distributed import launch_local, launcher
from mlxllm.tolerances import bound, relative_difference, tf32_possible

TIMEOUT = 120  # seconds per launch; a run takes a few seconds on an idle 2-core CPU
# The tiny preset on a smaller batch and context. lr = the preset's min_lr makes the schedule independent of
# --steps (warmup, then flat), so "2 steps, then resume to 4" and "4 steps" follow the same learning rates.
ARGS = ["--preset", "tiny", "--batch-size", "8", "--context", "32", "--lr", "3e-4", "--quiet"]
TRAIN = [sys.executable, "-m", "mlxllm.cli", "train", *ARGS]
TOLERANCE = 1e-5  # float32: averaging two half-batch means rounds differently from one full-batch mean
# On a GPU the ranks compute with TF32 products and CUDA training is not bit-reproducible (two identical runs
# differ after a few steps), so there the runs are compared within the tolerance policy, relative to the largest
# value; on the CPU backend the bars above (and bit-exact resumes) hold.
EXACT_BACKEND = not tf32_possible()

if launcher() is None or not mx.distributed.is_available("ring"):
    pytest.skip("mlx.launch or MLX's ring backend is not available in this environment", allow_module_level=True)


def launch(command: list[str], cwd: Path):
    return launch_local(command, n=2, timeout=TIMEOUT, cwd=cwd)


def run_single(arguments: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*TRAIN, *arguments], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def per_rank_out(steps: int, name: str) -> list[str]:
    """Each rank gets --out NAME<rank>: afterwards we can see which ranks wrote anything."""
    return ["sh", "-c", f'exec "$@" --steps {steps} --out {name}$MLX_RANK', "sh", *TRAIN]


def saved(folder: Path, name: str) -> Path:
    """A file of the checkpoint in ``folder`` (its step folder is named in checkpoint.json)."""
    return folder / json.loads((folder / "checkpoint.json").read_text())["folder"] / name


def arrays(folder: Path, name: str) -> dict[str, mx.array]:
    return mx.load(str(saved(folder, name)))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(mx.abs(a[k].astype(mx.float32) - b[k].astype(mx.float32)).max().item() for k in a)


def assert_runs_agree(a: dict, b: dict, absolute: float, what: str) -> None:
    """Within ``absolute`` on the CPU backend; within the policy's relative bound where products run in TF32."""
    if EXACT_BACKEND:
        assert max_difference(a, b) <= absolute, what
    else:
        assert max(relative_difference(a[k], b[k]) for k in a) <= bound(), what


def assert_losses_agree(a: list, b: list) -> None:
    assert a == pytest.approx(b, abs=1e-5) if EXACT_BACKEND else a == pytest.approx(b, rel=bound())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One process for 4 steps, and 2 ranks for 4 steps (rank-named --out folders)."""
    folder = tmp_path_factory.mktemp("distributed")
    single = run_single(["--steps", "4", "--out", "single"], folder)
    assert single.returncode == 0, single.stderr
    two = launch(per_rank_out(4, "two_ranks_"), folder)
    assert two.returncodes == [0, 0], two.stderr
    return folder


def test_two_ranks_equal_one_process_on_the_same_global_batches(runs):
    one, two = runs / "single", runs / "two_ranks_0"
    for name in ("model.safetensors", "optimizer.safetensors"):
        assert_runs_agree(arrays(one, name), arrays(two, name), TOLERANCE, name)
    # the recorded losses are the global batch's: the mean over the ranks of their half-batch means
    single_loss = json.loads(saved(one, "metrics.json").read_text())["loss"]
    two_loss = json.loads(saved(two, "metrics.json").read_text())["loss"]
    assert len(single_loss) == len(two_loss) == 4
    assert_losses_agree(single_loss, two_loss)
    # evaluation: each rank scores its rows of the same batches, the ranks average
    single_eval = json.loads(saved(one, "metrics.json").read_text())["eval"]
    two_eval = json.loads(saved(two, "metrics.json").read_text())["eval"]
    assert single_eval["step"] == two_eval["step"] == [0, 4]
    assert_losses_agree(single_eval["val_loss"], two_eval["val_loss"])
    assert_losses_agree(single_eval["train_loss"], two_eval["train_loss"])
    assert json.loads(saved(two, "state.json").read_text())["world_size"] == 2
    assert json.loads(saved(one, "state.json").read_text())["world_size"] == 1


def test_rank_zero_alone_writes_the_checkpoint(runs):
    assert saved(runs / "two_ranks_0", "model.safetensors").is_file()
    assert not (runs / "two_ranks_1").exists()  # rank 1 was told to write there, and did not even create it


def test_resume_under_two_ranks_continues_exactly(runs):
    folder = runs / "resume"
    folder.mkdir()
    first = launch([*TRAIN, "--steps", "2", "--out", "half"], folder)
    assert first.returncodes == [0, 0], first.stderr
    second = launch([*TRAIN, "--steps", "4", "--out", "half", "--resume"], folder)
    assert second.returncodes == [0, 0], second.stderr
    assert second.stdout.count("resuming half at step 2 of 4") == 1  # rank 0 alone prints
    for name in ("model.safetensors", "optimizer.safetensors"):  # bit-exact on the CPU backend
        assert_runs_agree(arrays(folder / "half", name), arrays(runs / "two_ranks_0", name), 0.0, name)


def test_resuming_with_another_number_of_ranks_says_so(runs):
    copy = runs / "one_rank_resume"
    shutil.copytree(runs / "two_ranks_0", copy)
    result = run_single(["--steps", "5", "--out", str(copy), "--resume"], runs)
    assert result.returncode == 0, result.stderr
    assert "was written by a run over 2 rank(s) and resumes over 1" in result.stderr


def test_ranks_with_different_settings_all_stop_with_one_message(tmp_path):
    # rank 0 gets --lr 0.001, rank 1 --lr 0.002: the training configs differ
    command = ["sh", "-c", 'exec "$@" --steps 2 --out out --lr 0.00$((MLX_RANK + 1))', "sh", *TRAIN]
    result = launch(command, tmp_path)
    assert None not in result.returncodes and 0 not in result.returncodes, result.stderr
    assert "rank 1 has a different training config than rank 0" in result.stderr
    assert not (tmp_path / "out" / "checkpoint.json").exists()


def test_when_a_rank_dies_the_other_exits_with_an_error_instead_of_hanging(tmp_path):
    # rank 1 is killed (SIGKILL: no chance to say goodbye) a few seconds into a long run
    die = 'if [ "$MLX_RANK" = 1 ]; then (sleep 4; kill -9 $$) & fi; exec "$@" --steps 100000 --out out'
    result = launch(["sh", "-c", die, "sh", *TRAIN], tmp_path)
    assert result.returncodes[1] == -9, result.stderr
    assert result.returncodes[0] not in (0, None), result.stderr


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path):
    result = launch([*TRAIN, "--steps", "2", "--out", "out", "--batch-size", "5"], tmp_path)
    assert None not in result.returncodes and 0 not in result.returncodes, result.stderr
    assert "batch_size 5 cannot be split evenly over 2 ranks" in result.stderr
