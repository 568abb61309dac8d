"""A character-level tokenizer: one id per distinct character of the training text (nanoGPT's
shakespeare-char).

It has the surface of the BPE ``Tokenizer`` (``TokenizerProtocol``: ``encode``, ``decode``,
``decode_bytes``, ``vocab_size``, ``special_tokens``, ``eos_token_ids``, ``chat_template``,
``save``/``load``), so a corpus, a checkpoint and the CLI can use either. Built in Chapter 6,
Training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from mlxllm.files import write_atomic

from .files import checksum


def _checksum(chars: list[str]) -> str:
    return checksum(json.dumps(chars, ensure_ascii=False))


class CharTokenizer:
    """Ids are positions in the sorted list of the characters seen in training (65 for
    tinyshakespeare).

    Built in Chapter 6, Training. It has no special tokens, no end-of-sequence id and no chat
    template.
    """

    chat_template: str | None = None

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        if not self.chars or any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer needs a non-empty list of single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer characters must be distinct")
        self._ids = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens = {}  # per instance, so that no caller can change the class's dict
        self.eos_token_ids: list[int] = []

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary is every distinct character of ``text``, sorted by code point."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none", *,
               add_special_tokens: bool = False) -> list[int]:
        """One id per character; ``allowed_special`` and ``add_special_tokens`` exist for the common
        surface (there are no specials to allow or add)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if not isinstance(allowed_special, str) and (named := sorted(allowed_special)):
            raise ValueError(f"allowed_special names {named}, but a character tokenizer has no "
                             "special tokens")
        if isinstance(allowed_special, str) and allowed_special not in ("none", "all"):
            raise ValueError("allowed_special must be 'none', 'all' or a set of special tokens, "
                             f"got {allowed_special!r}")
        try:
            return [self._ids[c] for c in text]
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in this "
                             f"{self.vocab_size}-character vocabulary; use text made of the "
                             "training corpus's characters") from None

    def decode(self, ids: Iterable[int]) -> str:
        if hasattr(ids, "tolist"):  # numpy / mlx arrays
            ids = ids.tolist()
        ids = list(ids)
        if bad := [i for i in ids if isinstance(i, bool) or not hasattr(i, "__index__")]:
            raise ValueError(f"unknown token id {bad[0]!r}: token ids must be ints, "
                             f"not {type(bad[0]).__name__}")
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def apply_chat_template(self, messages: list[dict],
                            add_generation_prompt: bool = True) -> str:
        """Always refused: a character tokenizer trained on plain text has no chat template."""
        raise ValueError("this CharTokenizer has no chat template: it was trained on plain text, "
                         "not on chats; format the conversation yourself, or use a pretrained "
                         "chat model's tokenizer")

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON: ``{"type": "char", "chars": [...], "sha256": ...}``
        (atomically)."""
        saved = {"type": "char", "chars": self.chars, "sha256": _checksum(self.chars)}
        write_atomic(path, json.dumps(saved, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        """Read a file written by ``save``; one whose checksum does not match is refused."""
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read a character tokenizer from {path}: {error}") from None
        if (not isinstance(saved, dict) or saved.get("type") != "char"
                or not isinstance(saved.get("chars"), list)):
            raise ValueError(f"{path} is not a character tokenizer file "
                             f"(expected {{\"type\": \"char\", ...}})")
        # files before the checksum lack it
        if "sha256" in saved and saved["sha256"] != _checksum(saved["chars"]):
            raise ValueError(f"{path} is damaged: its characters do not match its sha256 checksum")
        try:
            return cls(saved["chars"])
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
