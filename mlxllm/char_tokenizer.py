"""A character-level tokenizer: one id per distinct character of the training text (nanoGPT's shakespeare-char).

It has the same surface as the BPE ``Tokenizer`` where training needs it (``encode``, ``decode``,
``decode_bytes``, ``vocab_size``, ``save``/``load``), so a corpus, a checkpoint and the CLI can use
either. Built in Chapter 6, Training.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


class CharTokenizer:
    """Ids are positions in the sorted list of the characters seen in training (65 for tinyshakespeare)."""

    def __init__(self, chars: Iterable[str]):
        self.chars = list(chars)
        if not self.chars or any(not isinstance(c, str) or len(c) != 1 for c in self.chars):
            raise ValueError("CharTokenizer needs a non-empty list of single characters")
        if len(set(self.chars)) != len(self.chars):
            raise ValueError("CharTokenizer characters must be distinct")
        self._ids = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        """The vocabulary is every distinct character of ``text``, sorted by code point."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as error:
            raise ValueError(f"character {error.args[0]!r} is not in this {self.vocab_size}-character "
                             "vocabulary; use text made of the training corpus's characters") from None

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if bad := [i for i in ids if not 0 <= i < self.vocab_size]:
            raise ValueError(f"ids {bad[:5]} are outside the vocabulary [0, {self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self.decode(ids).encode("utf-8")

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON: ``{"type": "char", "chars": [...]}``."""
        Path(path).write_text(json.dumps({"type": "char", "chars": self.chars}, ensure_ascii=False))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        try:
            saved = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read a character tokenizer from {path}: {error}") from None
        if not isinstance(saved, dict) or saved.get("type") != "char" or not isinstance(saved.get("chars"), list):
            raise ValueError(f"{path} is not a character tokenizer file (expected {{\"type\": \"char\", ...}})")
        return cls(saved["chars"])
