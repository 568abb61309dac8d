"""Supervised fine-tuning on chat data: conversations → rows of (inputs, targets) with the loss on
the assistant's tokens only, the trainer of Chapter 6 on those rows, and exact-match evaluation by
greedy generation. Data is mlx-lm's chat JSONL: one
``{"messages": [{"role": ..., "content": ...}, ...]}`` per line. Built in Chapter 9, Fine-tuning.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from mlxllm.data import read_text
from mlxllm.generation import generate_batch
from mlxllm.optimizer import make_optimizer
from mlxllm.presets import check_memory
from mlxllm.tokenizer.chat import validate_messages
from mlxllm.tokenizer.files import write_atomic
from mlxllm.training import IGNORE, TrainConfig, Trainer

ROLES = ("system", "user", "assistant")


def check_conversation(messages, where: str = "a conversation") -> list[dict]:
    """The messages, checked as ``apply_chat_template`` checks them, with roles from ``ROLES`` and
    at least one assistant turn; else a ValueError that starts with ``where``."""
    if isinstance(messages, list) and not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} "
                         "objects")
    try:
        messages = validate_messages(messages)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    if bad := [m["role"] for m in messages if m["role"] not in ROLES]:
        raise ValueError(f"{where}: every message needs a role in {list(ROLES)}, got {bad[0]!r}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{where}: there is no assistant message, so nothing to learn from")
    return messages


class Conversation(list):
    """The messages of one conversation (a list), with ``where`` it came from ("train.jsonl:7").
    Chapter 9."""

    def __init__(self, messages, where: str = "a conversation"):
        super().__init__(messages)
        self.where = where


def load_jsonl(path: str | Path) -> list[Conversation]:
    """The conversations of a chat JSONL file (mlx-lm's format), each checked and knowing its line.
    Chapter 9."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; make it with `python -m mlxllm.tasks` or "
                                "give a JSONL file of {\"messages\": [...]} lines")
    conversations = []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ValueError(f"{path}:{number} is not JSON ({error})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{number}: each line must be an object with 'messages'")
        where = f"{path}:{number}"
        conversations.append(Conversation(check_conversation(record.get("messages"), where),
                                          where))
    if not conversations:
        raise ValueError(f"{path} holds no conversations")
    return conversations


def write_jsonl(conversations: list[list[dict]], path: str | Path) -> None:
    """One ``{"messages": [...]}`` per line, written atomically."""
    write_atomic(path, "".join(json.dumps({"messages": m}) + "\n" for m in conversations))


def render(tokenizer, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Token ids of a conversation in the model's chat template, and for each id whether the loss
    sees it.

    Each assistant message's tokens (its text and its end-of-turn) are learned; the template's text
    before them (system, user turns, the assistant header) is the prompt, masked. The text is
    encoded piece by piece at those boundaries, so the mask is exact. Built in Chapter 9,
    Fine-tuning.
    """
    check_conversation(messages)
    ids, learn, done = [], [], ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: i + 1], add_generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError("this chat template does not render a conversation as a growing "
                             "prefix, so the assistant's tokens cannot be told apart; use a model "
                             "with a standard template")
        for text, is_answer in ((prompt[len(done):], False), (full[len(prompt):], True)):
            piece = tokenizer.encode(text, allowed_special="all") if text else []
            ids += piece
            learn += [is_answer] * len(piece)
        done = full
    return ids, learn


def make_rows(tokenizer, conversations: list[list[dict]], length: int | None = None,
              mask_prompt: bool = True) -> np.ndarray:
    """(N, 2, T) int32 rows [inputs, targets] for the trainer; targets are ``IGNORE`` on the prompt
    (``mask_prompt``) and on the right padding. T = ``length`` or the longest conversation − 1.
    Chapter 9.

    Right padding is exact under a causal mask: real tokens never attend to the pads after them.
    """
    return pack_rows([render(tokenizer, m) for m in conversations], length, mask_prompt)


def pack_rows(rendered: list[tuple[list[int], list[bool]]], length: int | None = None,
              mask_prompt: bool = True) -> np.ndarray:
    """``make_rows`` for conversations already rendered (``render``'s ids and learn flags)."""
    longest = max(len(ids) for ids, _ in rendered) - 1
    length = longest if length is None else length
    if longest > length:
        raise ValueError(f"a conversation has {longest + 1} tokens, more than rows of {length} + 1 "
                         "hold; raise the length or shorten the conversations")
    rows = np.full((len(rendered), 2, length), IGNORE, dtype=np.int32)
    rows[:, 0] = 0  # padding inputs: any valid id (their targets are ignored)
    for row, (ids, learn) in zip(rows, rendered):
        n = len(ids) - 1
        row[0, :n] = ids[:-1]
        row[1, :n] = [t if (keep or not mask_prompt) else IGNORE
                      for t, keep in zip(ids[1:], learn[1:])]
    return rows


def finetune_config(**overrides) -> TrainConfig:
    """TrainConfig defaults for LoRA fine-tuning: a higher peak rate, short warmup, no weight decay.

    Chapter 9.
    """
    settings = dict(steps=200, batch_size=16, lr=1e-3, min_lr=1e-4, warmup=20, weight_decay=0.0,
                    eval_interval=100, eval_batches=4, grad_clip=1.0)
    return TrainConfig(**{**settings, **overrides})


def make_trainer(model: nn.Module, tokenizer, train: list[list[dict]], valid: list[list[dict]],
                 config: TrainConfig, mask_prompt: bool = True,
                 max_tokens: int | None = None) -> Trainer:
    """A ``Trainer`` over the chat rows of ``train`` / ``valid`` for ``model`` as it is (after
    ``apply_lora``: only the adapters train). Built in Chapter 9, Fine-tuning."""
    # a conversation of n tokens is a row of n - 1; one longer than max_tokens (or the context),
    # and a batch of the longest row that cannot fit in memory, are refused by name (the trainer
    # cuts each batch to its own longest row, so one long conversation pads only its batches)
    limit = max_tokens or model.config.context_length
    source = "--max-tokens" if max_tokens else "the model's context_length"
    rendered, longest = [], (0, "")
    for split in (train, valid):
        rendered.append([])
        for i, messages in enumerate(split):
            ids, learn = render(tokenizer, messages)
            where = getattr(messages, "where", f"conversation {i + 1}")
            if len(ids) - 1 > limit:
                raise ValueError(f"{where}: the conversation is {len(ids):,} tokens, a row of "
                                 f"{len(ids) - 1:,}, longer than {source} {limit:,}; shorten or "
                                 "remove it" + (", or raise --max-tokens" if max_tokens else ""))
            longest = max(longest, (len(ids) - 1, where))
            rendered[-1].append((ids, learn))
    length, where = longest  # one row length for both splits
    # the frozen model once, and the adapters with their gradients and AdamW's two moments
    held = sum(p.nbytes for _, p in tree_flatten(model.parameters()))
    held += 3 * sum(p.nbytes for _, p in tree_flatten(model.trainable_parameters()))
    check_memory(model.config, dataclasses.replace(config, context=length),
                 what=f"batch_size {config.batch_size} × rows of {length:,} tokens (the longest "
                      f"conversation, {where})",
                 advice="shorten or remove the longest conversations (--max-tokens N names any "
                        "over N tokens), or use a smaller --batch-size", parameter_bytes=held)
    train_rows, valid_rows = (pack_rows(split, length, mask_prompt) for split in rendered)
    model.train()
    mx.random.seed(config.seed)
    return Trainer(model, config, train_rows, valid_rows, make_optimizer(model, config), tokenizer,
                   {"task": "sft", "train_conversations": len(train),
                    "valid_conversations": len(valid)})


def prompt_and_answer(tokenizer, messages: list[dict]) -> tuple[list[int], str]:
    """The prompt ids up to the last assistant message (with the assistant header) and that
    message."""
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    prompt = tokenizer.apply_chat_template(messages[:last], add_generation_prompt=True)
    return tokenizer.encode(prompt, allowed_special="all"), messages[last]["content"]


def exact_match(model: nn.Module, tokenizer, conversations: list[list[dict]],
                max_new_tokens: int = 24, batch_size: int = 64) -> tuple[float, list[dict]]:
    """Share of conversations whose greedy answer (stopped at end of turn, stripped) equals the last
    assistant message exactly, and every {prompt, expected, got}. Built in Chapter 9,
    Fine-tuning."""
    was_training = model.training
    model.eval()
    items = [prompt_and_answer(tokenizer, m) + (m,) for m in conversations]
    by_length: dict[int, list[int]] = {}
    for index, (ids, _, _) in enumerate(items):
        by_length.setdefault(len(ids), []).append(index)
    answers = [""] * len(items)
    for indices in by_length.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start: start + batch_size]
            outs = generate_batch(model, [items[i][0] for i in chunk], max_new_tokens,
                                  stop_ids=tokenizer.eos_token_ids)
            for i, out in zip(chunk, outs):
                answers[i] = tokenizer.decode(out).strip()
    model.train(was_training)
    results = [{"prompt": next(x["content"] for x in reversed(m) if x["role"] == "user"),
                "expected": answer, "got": got} for (_, answer, m), got in zip(items, answers)]
    return sum(r["got"] == r["expected"].strip() for r in results) / max(1, len(results)), results


def chat_answer(model: nn.Module, tokenizer, question: str, max_new_tokens: int = 48) -> str:
    """The greedy answer to one user message (e.g. a general question asked after fine-tuning)."""
    ids = tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": question}]),
                           allowed_special="all")
    was_training = model.training
    model.eval()
    answer = generate_batch(model, [ids], max_new_tokens, stop_ids=tokenizer.eos_token_ids)[0]
    answer = tokenizer.decode(answer).strip()
    model.train(was_training)
    return answer
