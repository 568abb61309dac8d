"""The `mlxllm` command, run as a user runs it (a subprocess): train → resume → generate, tokenize, errors."""

import json
import os
import subprocess
import sys

import pytest

CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 30
TINY = ["--preset", "tiny", "--tokenizer", "char", "--batch-size", "2", "--context", "16", "--quiet"]


def mlxllm(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "mlxllm.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "speech.txt"
    path.write_text(CORPUS)
    return path


def test_train_resume_generate(tmp_path, corpus):
    out = tmp_path / "run"
    result = mlxllm("train", "--corpus", corpus, *TINY, "--steps", "3", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "step 3: val loss" in result.stdout and "bits/byte" in result.stdout
    assert json.loads((out / "state.json").read_text())["step"] == 3

    result = mlxllm("train", "--corpus", corpus, "--steps", "5", "--out", out, "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "step 5: val loss" in result.stdout
    assert json.loads((out / "metrics.json").read_text())["step"] == [1, 2, 3, 4, 5]

    result = mlxllm("generate", out, "--prompt", "All:", "--max-new-tokens", "8", "--temperature", "0.8",
                    "--top-k", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert text.startswith("All:") and len(text) == len("All:") + 8
    assert set(text) <= set(CORPUS)  # a character model can only write the corpus's characters
    again = mlxllm("generate", out, "--prompt", "All:", "--max-new-tokens", "8", "--temperature", "0.8",
                   "--top-k", "5", "--seed", "1")
    assert again.stdout == result.stdout  # same seed, same text


def test_tokenize_prints_ids_and_counts(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abca")
    result = mlxllm("tokenize", "--tokenizer", "char", path)
    assert result.returncode == 0 and result.stdout.split() == ["0", "1", "2", "0"]
    result = mlxllm("tokenize", "--tokenizer", "char", path, "--count")
    assert result.stdout.startswith("4 tokens, 4 characters, 4 bytes, 1.00 bytes/token, vocabulary 3")


@pytest.mark.parametrize("args, message", [
    (["train", "--preset", "huge", "--out", "{tmp}/a"], "unknown preset 'huge'; choose one of: tiny, nanogpt-cpu"),
    (["train", "--corpus", "nope", "--out", "{tmp}/a"], "unknown corpus 'nope'"),
    (["train", "--corpus", "{corpus}", "--tokenizer", "wordpiece", "--out", "{tmp}/a"], "unknown tokenizer 'wordpiece'"),
    (["train", "--corpus", "{corpus}", "--out", "{corpus}/sub"], "cannot write to --out"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/empty", "--resume"], "is not a checkpoint folder"),
    (["generate", "{tmp}/none"], "is not a checkpoint folder"),
    (["train", "--steps", "ten", "--out", "{tmp}/a"], "invalid int value: 'ten'"),
    (["fly"], "invalid choice: 'fly'"),
])
def test_errors_are_one_line_with_exit_status_2(tmp_path, corpus, args, message):
    result = mlxllm(*[a.format(tmp=tmp_path, corpus=corpus) for a in args])
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_resume_with_an_incompatible_config_is_refused(tmp_path, corpus):
    out = tmp_path / "run"
    assert mlxllm("train", "--corpus", corpus, *TINY, "--steps", "1", "--out", out).returncode == 0
    result = mlxllm("train", "--corpus", corpus, "--batch-size", "3", "--out", out, "--resume")
    assert result.returncode == 2 and "batch_size is 2 in the checkpoint but 3 here" in result.stderr
    result = mlxllm("train", "--corpus", corpus, *TINY, "--out", out)  # no --resume: do not overwrite
    assert result.returncode == 2 and "already holds a checkpoint; pass --resume" in result.stderr
