"""Tokenization: byte-level BPE that trains fast and equals tiktoken (Chapter 1, Tokenization).

- `patterns.py`: the regex split patterns (GPT-2, GPT-4, GPT-4o, SmolLM, LLaMA 3, Qwen2)
- `train.py`: learning merges with incremental pair counts
- `bpe.py`: the `Tokenizer` (encode, decode, special tokens, introspection)
- `files.py`: our save format, GPT-2's files, tiktoken rank files
- `char.py`: the character-level `CharTokenizer`; `base.py`: `TokenizerProtocol`, what both offer
- `hf.py`: Hugging Face tokenizer.json / folders; `gguf.py`: a GGUF file's tokenizer;
  `chat.py`: chat templates
"""

import json
from pathlib import Path

from .base import TokenizerProtocol
from .bpe import Tokenizer
from .char import CharTokenizer
from .files import MAGIC
from .patterns import (
    GPT2_DIGITS_SPLIT_PATTERN,
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    GPT4O_SPLIT_PATTERN,
    LLAMA3_SPLIT_PATTERN,
    QWEN2_SPLIT_PATTERN,
)

__all__ = [
    "Tokenizer", "CharTokenizer", "TokenizerProtocol", "load_tokenizer", "save_tokenizer",
    "GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "GPT4O_SPLIT_PATTERN", "GPT2_DIGITS_SPLIT_PATTERN",
    "LLAMA3_SPLIT_PATTERN", "QWEN2_SPLIT_PATTERN",
]


def save_tokenizer(tokenizer: TokenizerProtocol, path: str | Path) -> None:
    """Write either kind of tokenizer to one file of our own format (with a checksum), atomically.

    Built in Chapter 6, Training. `load_tokenizer` reads it back.
    """
    if not isinstance(tokenizer, (Tokenizer, CharTokenizer)):
        raise ValueError("save_tokenizer writes a Tokenizer or a CharTokenizer, "
                         f"got {type(tokenizer).__name__}")
    tokenizer.save(path)


def load_tokenizer(path: str | Path) -> Tokenizer | CharTokenizer:
    """A tokenizer from our BPE file, our character file, a tokenizer.json or a Hugging Face
    folder (sniffed).

    Built in Chapter 6, Training. Anything else -> ValueError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        from .hf import tokenizer_from_hf

        return tokenizer_from_hf(path)
    try:
        with path.open("rb") as file:
            start = file.read(64)
    except OSError as error:
        raise ValueError(f"cannot read a tokenizer from {path}: {error}") from None
    if start.startswith(MAGIC.encode()):
        return Tokenizer.load(path)
    if start.lstrip().startswith(b"{"):
        try:
            kind = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a tokenizer file: it starts like JSON but is not "
                             f"({error})") from None
        if isinstance(kind, dict) and kind.get("type") == "char":
            return CharTokenizer.load(path)
        if isinstance(kind, dict) and "model" in kind:
            from .hf import tokenizer_from_spec

            return tokenizer_from_spec(kind, path)
    raise ValueError(f"{path} is not a tokenizer file: expected our BPE format ({MAGIC!r}), "
                     "a character tokenizer ({\"type\": \"char\"}), a tokenizer.json or a "
                     "Hugging Face folder")
