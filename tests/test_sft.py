"""Supervised fine-tuning (mlxllm.sft, the trainer's fine-tuning rows, mlxllm.tasks, `mlxllm finetune`)."""

import datetime
import json
import os
import re
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest
from conftest import make_model, randomize
from mlx.utils import tree_flatten

import mlxllm
from mlxllm import sft, tasks
from mlxllm.generation import generate
from mlxllm.lora import apply_lora
from mlxllm.model import ModelConfig, TransformerLM
from mlxllm.prediction import IGNORE, cross_entropy, masked_cross_entropy
from mlxllm.tolerances import assert_close

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "It is 6."}]


@pytest.fixture(scope="module")
def tokenizer():
    return mlxllm.load_pretrained("smollm2-135m-instruct")[1]  # SmolLM2's tokenizer and chat template


def test_prompt_mask_excludes_exactly_the_prompt_tokens(tokenizer):
    ids, learn = sft.render(tokenizer, CHAT)
    full = tokenizer.apply_chat_template(CHAT, add_generation_prompt=False)
    assert ids == tokenizer.encode(full, allowed_special="all")  # the pieces add up to the whole text
    learned = [i for i, keep in zip(ids, learn) if keep]
    assert tokenizer.decode(learned) == "4<|im_end|>\nIt is 6.<|im_end|>\n"  # both answers and their ends
    first_prompt = tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True)
    n_prompt = len(tokenizer.encode(first_prompt, allowed_special="all"))
    assert not any(learn[:n_prompt]) and learn[n_prompt]  # everything up to the assistant header is masked


def test_rows_shift_targets_and_ignore_prompt_and_padding(tokenizer):
    conversations = [CHAT[:3], CHAT]
    rows = sft.make_rows(tokenizer, conversations)
    assert rows.shape == (2, 2, len(sft.render(tokenizer, CHAT)[0]) - 1) and rows.dtype == np.int32
    for row, messages in zip(rows, conversations):
        ids, learn = sft.render(tokenizer, messages)
        n = len(ids) - 1
        assert row[0, :n].tolist() == ids[:-1]
        assert row[1, :n].tolist() == [t if keep else IGNORE for t, keep in zip(ids[1:], learn[1:])]
        assert (row[1, n:] == IGNORE).all()  # padding carries no loss
    unmasked = sft.make_rows(tokenizer, conversations, mask_prompt=False)
    n = len(sft.render(tokenizer, CHAT[:3])[0]) - 1
    assert unmasked[0, 1, :n].tolist() == sft.render(tokenizer, CHAT[:3])[0][1:]
    with pytest.raises(ValueError, match="more than rows"):
        sft.make_rows(tokenizer, conversations, length=5)


def test_masked_cross_entropy_averages_only_the_kept_targets():
    logits = mx.random.normal((2, 5, 11), key=mx.random.key(0))
    targets = mx.array([[1, IGNORE, 3, 4, IGNORE], [IGNORE, IGNORE, 7, 0, 10]])
    kept = np.array(targets) != IGNORE
    flat_logits = mx.array(np.array(logits)[kept])[None]  # (1, 6, 11): the kept positions only
    flat_targets = mx.array(np.array(targets)[kept])[None]
    assert_close(masked_cross_entropy(logits, targets), cross_entropy(flat_logits, flat_targets))
    full = mx.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    assert_close(masked_cross_entropy(logits, full), cross_entropy(logits, full))


def test_trainer_on_rows_lowers_the_loss_and_changes_only_the_adapters():
    model = randomize(make_model("llama", seed=0))  # O(1) weights: a frozen tied head that can reach token 7
    apply_lora(model, rank=4, alpha=8, targets="all")
    rng = np.random.default_rng(0)
    rows = np.full((16, 2, 12), IGNORE, dtype=np.int32)
    rows[:, 0] = rng.integers(0, 97, (16, 12))
    rows[:, 1, 6:] = 7  # the answer half: always token 7 (the prompt half carries no loss)
    before = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    config = sft.finetune_config(steps=30, batch_size=8, lr=1e-2, warmup=2, eval_interval=30, eval_batches=2)
    trainer = mlxllm.Trainer(model, config, rows[:12], rows[12:], mlxllm.optimizer.make_optimizer(model, config))
    first = trainer.train_step()
    for _ in range(29):
        last = trainer.train_step()
    assert trainer.rows and trainer.context == 12
    assert last < 0.5 * first, (first, last)
    assert trainer.evaluate()["val_loss"] < 0.5 * first  # rows of the validation split, masked the same way
    changed = {k for k, v in tree_flatten(model.parameters()) if not np.array_equal(np.array(v), before[k])}
    assert changed and all(k.endswith((".lora_a", ".lora_b")) for k in changed)
    bad = rows.copy()
    bad[:, 1] = IGNORE
    with pytest.raises(ValueError, match="no target tokens"):
        mlxllm.Trainer(model, sft.finetune_config(), bad, rows, mlxllm.optimizer.make_optimizer(model,
                                                                                               sft.finetune_config()))


def test_date_task_answers_are_exact_and_splits_disjoint():
    splits = tasks.date_splits({"train": 300, "valid": 20, "test": 50}, seed=7)
    assert splits == tasks.date_splits({"train": 300, "valid": 20, "test": 50}, seed=7)  # seeded
    questions = [{m[0]["content"] for m in split} for split in splits.values()]
    assert sum(map(len, questions)) == 370 and len(set.union(*questions)) == 370  # distinct, no leaks
    formats = ["the %d of %B, %Y", "%B %d, %Y", "%B %d %Y", "%d %B %Y", "%b %d, %Y", "%d/%m/%Y (day first)",
               "%m/%d/%Y (month first)", "%d.%m.%Y (day first)"]
    for user, assistant in splits["train"]:
        text = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", user["content"].removeprefix(tasks.INSTRUCTION))
        parsed = set()
        for form in formats:
            try:
                parsed.add(datetime.datetime.strptime(text, form).date().isoformat())
            except ValueError:
                pass
        assert parsed == {assistant["content"]}, (user["content"], parsed)


def test_load_jsonl_reports_bad_lines(tmp_path):
    path = tmp_path / "data.jsonl"
    sft.write_jsonl([CHAT], path)
    assert sft.load_jsonl(path) == [CHAT]
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:1: there is no assistant message"):
        sft.load_jsonl(path)
    path.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(ValueError, match="role"):
        sft.load_jsonl(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sft.load_jsonl(tmp_path / "missing.jsonl")


def save_tiny_chat_model(folder, tokenizer, context_length: int) -> None:
    """A tiny seeded LLaMA-style model with ``tokenizer``, saved as a Hugging Face folder."""
    mx.random.seed(0)
    tiny = TransformerLM(ModelConfig.llama(vocab_size=tokenizer.vocab_size, context_length=context_length,
                                           dims=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dims=64))
    mlxllm.save_pretrained(tiny, tokenizer, folder)


def test_cli_finetune_then_chat_with_the_adapter(tmp_path, tokenizer):
    save_tiny_chat_model(tmp_path / "tiny", tokenizer, context_length=256)
    splits = tasks.date_splits({"train": 8, "valid": 2, "test": 3}, seed=0)
    for name, conversations in splits.items():
        sft.write_jsonl(conversations, tmp_path / f"{name}.jsonl")
    env = {**os.environ, "TQDM_DISABLE": "1"}

    def mlxllm_cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "mlxllm.cli", *map(str, args)], capture_output=True,
                              text=True, env=env, input=stdin, timeout=300)

    out = tmp_path / "adapters"
    result = mlxllm_cli("finetune", tmp_path / "tiny", "--data", tmp_path / "train.jsonl", "--valid",
                        tmp_path / "valid.jsonl", "--eval", tmp_path / "test.jsonl", "--out", out, "--steps", "3",
                        "--batch-size", "2", "--lora-rank", "2", "--lora-targets", "q_proj,down_proj",
                        "--max-new-tokens", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "results.json").read_text())
    assert report["split_sizes"] == {"train": 8, "valid": 2, "test": 3} and report["steps"] == 3
    assert report["trainable_parameters"] == 2 * 2 * ((32 + 32) + (64 + 32))  # 2 blocks × rank 2 × (in+out)
    assert 0 <= report["base_accuracy"] <= 1 and 0 <= report["finetuned_accuracy"] <= 1
    assert report["command"].startswith("mlxllm finetune ") and "general_answer" in report
    assert (out / "adapters.safetensors").is_file() and (out / "adapter_config.json").is_file()
    chat = mlxllm_cli("chat", tmp_path / "tiny", "--adapter", out, "--temperature", "0", "--max-new-tokens", "3",
                      stdin="hello\n")
    assert chat.returncode == 0, chat.stderr
    bad = mlxllm_cli("finetune", tmp_path / "tiny", "--data", tmp_path / "missing.jsonl", "--out", out)
    assert bad.returncode == 2 and "does not exist" in bad.stderr


# ---------------------------------------------------------------------------- faults and bad input (issue #33)

def test_a_batch_is_cut_to_its_longest_row_so_one_long_conversation_pads_only_its_own():
    rng = np.random.default_rng(1)
    rows = np.full((40, 2, 300), IGNORE, dtype=np.int32)
    rows[:, 0] = 0
    rows[:, 0, :10] = rng.integers(1, 97, (40, 10))  # distinct prompts: each row can be found again
    rows[:, 1, 5:10] = 7
    rows[0, 0, :290] = rng.integers(1, 97, 290)  # one long conversation of 290 tokens
    rows[0, 1, 280:290] = 7
    model = randomize(make_model("llama", seed=0))
    apply_lora(model, rank=2, alpha=4, targets="all")
    config = sft.finetune_config(steps=40, batch_size=4, eval_interval=40, eval_batches=1)
    trainer = mlxllm.Trainer(model, config, rows[:36], rows[36:], mlxllm.optimizer.make_optimizer(model, config))
    assert trainer.context == 300
    widths = []
    for _ in range(40):
        inputs, targets = trainer.next_batch()  # (A, B, width)
        widths.append(inputs.shape[-1])
        for row_inputs, row_targets in zip(np.array(inputs[0]), np.array(targets[0])):
            source = next(i for i in range(36) if np.array_equal(rows[i, 0, :10], row_inputs[:10]))
            assert np.array_equal(rows[source, 0, :len(row_inputs)], row_inputs)  # a prefix of its row...
            assert (rows[source, 1, len(row_targets):] == IGNORE).all()  # ...that keeps every target
    assert set(widths) == {32, 300}, widths  # short batches are not padded to the long row
    again = mlxllm.Trainer(model, config, rows[:36], rows[36:], mlxllm.optimizer.make_optimizer(model, config))
    assert [again.next_batch()[0].shape[-1] for _ in range(40)] == widths  # the same draws from the same seed
    losses = [again.train_step() for _ in range(6)]  # the compiled step takes every width
    assert all(np.isfinite(losses))


@pytest.fixture
def long_context_chat_model(tmp_path, tokenizer):
    """A tiny chat model (SmolLM2's tokenizer) with room for long conversations, and data with one of ~6,000 tokens."""
    save_tiny_chat_model(tmp_path / "tiny", tokenizer, context_length=8192)
    splits = tasks.date_splits({"train": 8, "valid": 2, "test": 1}, seed=0)
    long = [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": "word " * 6000}]
    sft.write_jsonl(splits["train"][:2] + [long] + splits["train"][2:], tmp_path / "train.jsonl")
    sft.write_jsonl(splits["valid"], tmp_path / "valid.jsonl")
    return tmp_path


def test_finetune_estimates_memory_and_refuses_a_batch_that_cannot_fit(long_context_chat_model, monkeypatch, capsys):
    import mlxllm.presets as presets
    from mlxllm.cli import main

    folder = long_context_chat_model
    monkeypatch.setattr(presets, "available_memory", lambda: 8 * 2**30)
    args = ["finetune", str(folder / "tiny"), "--data", str(folder / "train.jsonl"), "--valid",
            str(folder / "valid.jsonl"), "--out", str(folder / "out"), "--steps", "1", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"mlxllm finetune: error: batch_size 16 × rows of 6,0\d\d tokens \(the longest conversation, "
                        r".*train\.jsonl:3\) needs about [\d,.]+ GiB for one training step, more than the 8\.0 GiB this "
                        r"machine has; shorten or remove the longest conversations \(--max-tokens N names any over N "
                        r"tokens\), or use a smaller --batch-size\n", err), err
    assert main(args + ["--max-tokens", "512"]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(r"mlxllm finetune: error: .*train\.jsonl:3: the conversation is 6,0\d\d tokens, a row of "
                        r"6,0\d\d, longer than --max-tokens 512; shorten or remove it, or raise --max-tokens\n", err), err


def test_ctrl_c_during_finetune_saves_the_adapters_and_names_finetune(long_context_chat_model, monkeypatch, capsys):
    import signal

    import mlxllm.training as training
    from mlxllm.cli import main
    from mlxllm.lora import load_adapters, read_adapter_config
    from mlxllm.pretrained.hf import model_from_hf

    folder = long_context_chat_model
    sft.write_jsonl(tasks.date_splits({"train": 8}, seed=0)["train"], folder / "train.jsonl")
    launch = training.Trainer._launch

    def launch_then_signal(self, step):
        launched = launch(self, step)
        if step == 2:  # as Ctrl-C would, while step 2 runs
            os.kill(os.getpid(), signal.SIGINT)
        return launched

    monkeypatch.setattr(training.Trainer, "_launch", launch_then_signal)
    out = folder / "out"
    assert main(["finetune", str(folder / "tiny"), "--data", str(folder / "train.jsonl"), "--valid",
                 str(folder / "valid.jsonl"), "--out", str(out), "--steps", "50", "--batch-size", "2", "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.startswith(f"mlxllm finetune: stopped by SIGINT at step 2; the adapters of step 2 are in {out} "), err
    assert read_adapter_config(out)["steps"] == 2
    load_adapters(model_from_hf(folder / "tiny"), out)  # whole and verified


def test_cli_adapter_files_that_are_missing_damaged_or_of_another_model_are_one_line(long_context_chat_model):
    folder = long_context_chat_model
    env = {**os.environ, "TQDM_DISABLE": "1"}

    def mlxllm_cli(*args):
        return subprocess.run([sys.executable, "-m", "mlxllm.cli", *map(str, args)], capture_output=True, text=True,
                              env=env, timeout=300)

    def one_line(result, message):
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr

    out = folder / "adapters"
    one_line(mlxllm_cli("generate", folder / "tiny", "--adapter", out, "--max-new-tokens", "1"), "holds no LoRA adapters")
    sft.write_jsonl(tasks.date_splits({"train": 8}, seed=0)["train"], folder / "train.jsonl")
    assert mlxllm_cli("finetune", folder / "tiny", "--data", folder / "train.jsonl", "--valid", folder / "valid.jsonl",
                      "--out", out, "--steps", "1", "--batch-size", "2", "--quiet").returncode == 0
    other = TransformerLM(ModelConfig.llama(vocab_size=49152, context_length=8192, dims=32, n_layers=2, n_heads=4,
                                            n_kv_heads=2, ffn_dims=64))  # the same sizes, other weights
    mlxllm.save_pretrained(randomize(other, seed=3), mlxllm.load_pretrained(folder / "tiny")[1], folder / "other")
    one_line(mlxllm_cli("generate", folder / "other", "--adapter", out, "--max-new-tokens", "1"),
             "were trained on another base model")
    file = out / "adapters.safetensors"
    file.write_bytes(file.read_bytes()[:-100])
    one_line(mlxllm_cli("chat", folder / "tiny", "--adapter", out, "--max-new-tokens", "1"), "damaged or incomplete")
