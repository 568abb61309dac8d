"""The `mlxllm` command, run as a user runs it (a subprocess): train → resume → generate, tokenize, errors."""

import errno
import hashlib
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
    assert "step 3: val loss" in result.stdout and "bits/byte" in result.stdout and "best val loss" in result.stdout
    manifest = json.loads((out / "checkpoint.json").read_text())
    assert manifest["step"] == 3
    assert manifest["source"] == {"corpus": str(corpus.resolve()), "corpus_sha256": hashlib.sha256(
        CORPUS.encode()).hexdigest(), "tokenizer": "char", "preset": "tiny"}  # what the run trained on

    result = mlxllm("train", "--steps", "5", "--out", out, "--resume", "--quiet")  # no --corpus: the recorded one
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "step 5: val loss" in result.stdout
    manifest = json.loads((out / "checkpoint.json").read_text())
    assert json.loads((out / manifest["folder"] / "metrics.json").read_text())["step"] == [1, 2, 3, 4, 5]
    assert not (out / "run.lock").exists()  # released at the end

    result = mlxllm("generate", out, "--prompt", "All:", "--max-new-tokens", "8", "--temperature", "0.8",
                    "--top-k", "5", "--seed", "1")
    assert result.returncode == 0, result.stderr
    text = result.stdout.rstrip("\n")
    assert text.startswith("All:") and len(text) == len("All:") + 8
    assert set(text) <= set(CORPUS)  # a character model can only write the corpus's characters
    again = mlxllm("generate", out, "--prompt", "All:", "--max-new-tokens", "8", "--temperature", "0.8",
                   "--top-k", "5", "--seed", "1")
    assert again.stdout == result.stdout  # same seed, same text


def test_resume_refuses_another_corpus_tokenizer_or_preset(tmp_path, corpus):
    out = tmp_path / "run"
    assert mlxllm("train", "--corpus", corpus, *TINY, "--steps", "1", "--out", out).returncode == 0
    other = tmp_path / "other.txt"
    other.write_text(CORPUS.upper())
    for args, message in [(["--corpus", other], "is not the corpus of the run in"),
                          (["--tokenizer", "bpe:300"], "was trained with --tokenizer char, not bpe:300"),
                          (["--preset", "nanogpt-cpu"], "was trained with --preset tiny, not nanogpt-cpu")]:
        result = mlxllm("train", "--out", out, "--resume", "--steps", "2", *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    corpus.write_text(CORPUS + "more")  # the recorded file itself changed
    result = mlxllm("train", "--out", out, "--resume", "--steps", "2")
    assert result.returncode == 2 and "has changed since the run in" in result.stderr, result.stderr


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
    (["generate", "{tmp}"], "holds no model"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/a", "--seed", "-1"], "seed must be a non-negative integer"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/a", "--context", "20000", "--batch-size", "64"],
     "needs about"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/a", "--context", "2000"], "too few for windows of context 2000"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/a", "--save", "first"], "invalid choice: 'first'"),
    (["train", "--steps", "ten", "--out", "{tmp}/a"], "invalid int value: 'ten'"),
    (["fly"], "invalid choice: 'fly'"),
    # seeds outside [0, 2**63): one line from every command, not a TypeError from inside MLX
    (["generate", "{tmp}", "--seed", "-1"],
     "mlxllm generate: error: argument --seed: must be an integer from 0 to 2**63 - 1, got '-1'"),
    (["generate", "{tmp}", "--seed", str(2**64)], f"argument --seed: must be an integer from 0 to 2**63 - 1, got '{2**64}'"),
    (["chat", "{tmp}", "--seed", "-1"], "argument --seed: must be an integer from 0 to 2**63 - 1"),
    (["chat", "{tmp}", "--seed", str(2**64)], "argument --seed: must be an integer from 0 to 2**63 - 1"),
    (["train", "--corpus", "{corpus}", "--out", "{tmp}/a", "--seed", str(2**64)],
     f"seed must be an integer from 0 to 2**63 - 1, got {2**64}"),
    (["finetune", "{tmp}", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/a", "--seed", "-1"],
     "seed must be a non-negative integer, got -1"),
    (["finetune", "{tmp}", "--data", "{tmp}/d.jsonl", "--out", "{tmp}/a", "--seed", str(2**64)],
     "seed must be an integer from 0 to 2**63 - 1"),
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


@pytest.fixture
def trained(tmp_path, corpus):
    out = tmp_path / "run"
    assert mlxllm("train", "--corpus", corpus, *TINY, "--steps", "2", "--out", out).returncode == 0
    return out


def one_line_error(result, *messages):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for message in messages:
        assert message in result.stderr, result.stderr


@pytest.mark.parametrize("name, damage, message", [
    ("model.safetensors", lambda p: p.write_bytes(p.read_bytes()[:100]), "model.safetensors is damaged"),
    ("optimizer.safetensors", lambda p: p.write_bytes(b""), "optimizer.safetensors is empty"),
    ("state.json", lambda p: p.write_text("{"), "state.json is damaged"),
    ("metrics.json", lambda p: p.write_text("[]"), "metrics.json is damaged"),
])
def test_damaged_checkpoint_files_are_named_in_one_line(trained, name, damage, message):
    damage(trained / json.loads((trained / "checkpoint.json").read_text())["folder"] / name)
    one_line_error(mlxllm("train", "--out", trained, "--resume", "--steps", "3"), message, "restore")


def test_generate_names_a_damaged_model_file(trained):
    path = trained / json.loads((trained / "checkpoint.json").read_text())["folder"] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    one_line_error(mlxllm("generate", trained, "--max-new-tokens", "2"), "model.safetensors is damaged")


def test_a_full_disk_is_one_line_and_exit_2(trained, capsys, monkeypatch):
    import mlxllm.checkpoint as checkpoint
    from mlxllm.cli import main

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_atomic", full)
    assert main(["train", "--out", str(trained), "--resume", "--steps", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device); free some space, then continue with --resume" in err
    assert len(err.strip().splitlines()) == 1 and json.loads((trained / "checkpoint.json").read_text())["step"] == 2


def test_a_folder_in_use_by_another_run_is_refused(trained):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (trained / "run.lock").write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename}))
        one_line_error(mlxllm("train", "--out", trained, "--resume", "--steps", "3"),
                       f"is in use by another run (pid {sleeper.pid})")
    finally:
        sleeper.kill()
        sleeper.wait()
    result = mlxllm("train", "--out", trained, "--resume", "--steps", "3", "--quiet")  # stale now: taken over
    assert result.returncode == 0, result.stderr


def test_every_train_config_field_is_an_option():
    from dataclasses import fields

    from mlxllm.cli import make_parser
    from mlxllm.config import TrainConfig

    options = make_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions
    for f in fields(TrainConfig):
        action = options[f"--{f.name.replace('_', '-')}"]
        assert action.help.startswith(f.metadata["help"]) and action.default is None


def test_chat_with_the_real_model_answers_from_piped_stdin():
    result = subprocess.run([sys.executable, "-m", "mlxllm.cli", "chat", "smollm2-135m-instruct", "--temperature", "0",
                             "--max-new-tokens", "24"], input="What is the capital of France?\n",
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_generate_and_chat_refuse_a_folder_that_holds_no_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    for command in ("generate", "chat"):
        one_line_error(mlxllm(command, tmp_path), "holds no model")


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

LATIN1 = "Speak, speak.\nAll: caf\xe9\n".encode("latin-1")  # 0xe9 on line 2: not UTF-8


@pytest.mark.parametrize("command", ["train", "tokenize", "finetune"])
def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path, command):
    path = tmp_path / ("data.jsonl" if command == "finetune" else "corpus.txt")
    path.write_bytes(b'{"messages": []}\n' + LATIN1 if command == "finetune" else LATIN1)
    args = {"train": ["train", "--corpus", path, *TINY, "--out", tmp_path / "run"],
            "tokenize": ["tokenize", "--tokenizer", "char", path],
            "finetune": ["finetune", tmp_path, "--data", path, "--out", tmp_path / "run"]}[command]
    line = 3 if command == "finetune" else 2
    one_line_error(mlxllm(*args), f"{path} is not UTF-8 text: line {line} has the byte 0xe9",
                   "convert the file to UTF-8")


def test_a_prompt_that_is_not_utf8_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mlxllm.cli", "generate", str(tmp_path), "--prompt", b"caf\xe9"],
                            capture_output=True, text=True, timeout=300)
    one_line_error(result, "mlxllm generate: error: --prompt is not UTF-8 text (the byte 0xe9 at position 3)")


def test_chat_input_that_is_not_utf8_is_one_line_naming_the_line():
    result = subprocess.run([sys.executable, "-m", "mlxllm.cli", "chat", "smollm2-135m-instruct", "--temperature", "0",
                             "--max-new-tokens", "1"], input=b"Hello\ncaf\xe9\n", capture_output=True, timeout=300)
    stderr = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert "chat input line 2 is not UTF-8 text (the byte 0xe9 at position 3)" in stderr, stderr
    assert result.stdout.decode().strip()  # the first line was answered


def test_a_full_disk_in_mlxs_writer_is_one_line_and_exit_2(trained, capsys, monkeypatch):
    import mlx.core as mx

    from mlxllm.cli import main

    def full(path, arrays, **metadata):
        raise RuntimeError("[write] Unable to write 8 bytes to file.")  # what MLX says on a full disk

    monkeypatch.setattr(mx, "save_safetensors", full)
    assert main(["train", "--out", str(trained), "--resume", "--steps", "3", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "(MLX: [write] Unable to write 8 bytes to file.); free some space or fix the folder's permissions" in err
    assert len(err.strip().splitlines()) == 1 and json.loads((trained / "checkpoint.json").read_text())["step"] == 2
    assert not [p for p in trained.iterdir() if p.name.startswith(".saving-")]
