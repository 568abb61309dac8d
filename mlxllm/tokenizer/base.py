"""What every tokenizer offers: the surface that training, checkpoints, generation and
the CLI rely on.

Built in Chapter 1, Tokenization. Both `Tokenizer` (byte-level BPE) and `CharTokenizer` satisfy it,
which `isinstance(tokenizer, TokenizerProtocol)` checks (the names, not the signatures).
"""

from collections.abc import Iterable
from pathlib import Path
from typing import Protocol, runtime_checkable


@runtime_checkable
class TokenizerProtocol(Protocol):
    """text <-> ids, special tokens, end-of-sequence ids, a chat template and a file.

    Built in Chapter 1, Tokenization."""

    special_tokens: dict[str, int]  # special-token text -> id (empty for a character tokenizer)
    eos_token_ids: list[int]  # ids that end a generated answer (may be empty)
    chat_template: str | None  # the model's Jinja chat template, if it has one

    @property
    def vocab_size(self) -> int: ...

    # add_special_tokens=True: the ids the model's files add around a raw prompt (LLaMA 3's BOS)
    def encode(self, text: str, allowed_special: str | Iterable[str] = "none", *,
               add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def decode_bytes(self, ids: Iterable[int]) -> bytes: ...

    def apply_chat_template(self, messages: list[dict],
                            add_generation_prompt: bool = True) -> str: ...

    def save(self, path: str | Path) -> None: ...
