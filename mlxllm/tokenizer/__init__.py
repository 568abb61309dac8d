"""Tokenization: byte-level BPE that trains fast and equals tiktoken (Chapter 1, Tokenization).

- `patterns.py`: the regex split patterns (GPT-2, GPT-4, GPT-4o)
- `train.py`: learning merges with incremental pair counts
- `bpe.py`: the `Tokenizer` (encode, decode, special tokens, introspection)
- `files.py`: our save format, GPT-2's files, tiktoken rank files
"""

from .bpe import Tokenizer
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, GPT4O_SPLIT_PATTERN

__all__ = ["Tokenizer", "GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN", "GPT4O_SPLIT_PATTERN"]
