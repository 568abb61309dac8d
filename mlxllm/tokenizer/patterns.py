"""Regex split patterns: text is cut into chunks first, and BPE merges never cross a chunk.

Built in Chapter 1, Tokenization. The patterns are the exact strings tiktoken uses for
GPT-2 (r50k) and GPT-4 (cl100k_base) / GPT-4o (o200k_base), written for the `regex` module.
"""

import re
from collections.abc import Iterator
from operator import itemgetter

import regex

# GPT-2: contractions, letter runs, digit runs, punctuation runs (each may take one leading
# space), and whitespace runs that leave their last space to the word that follows.
GPT2_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
)

# GPT-4 (cl100k_base): case-insensitive contractions, numbers in groups of at most 3 digits,
# newlines kept apart from other whitespace, a word may take one leading non-letter.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

# GPT-4o (o200k_base): words split at case changes, contractions glued to the word.
GPT4O_SPLIT_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# The same three patterns restricted to ASCII text, for the standard library's `re`, which
# is ~3x faster than `regex` on \p{..} classes. In ASCII, \p{L} is [A-Za-z], \p{N} is [0-9],
# \s is [ \t\n\v\f\r] in both modules, and a possessive quantifier at the end of an
# alternative (or before a class it cannot overlap) matches what the greedy one matches.
# tests/test_tokenizer.py checks that both versions cut ASCII text identically.
_ASCII_EQUIVALENTS = {
    GPT2_SPLIT_PATTERN: r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+$|\s+(?!\S)|\s""",
    GPT4_SPLIT_PATTERN: (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\sA-Za-z0-9]+[\r\n]*"""
        r"""|\s+$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    GPT4O_SPLIT_PATTERN: "|".join(
        [
            r"""[^\r\nA-Za-z0-9]?[A-Z]*[a-z]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\nA-Za-z0-9]?[A-Z]+[a-z]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[0-9]{1,3}""",
            r""" ?[^\sA-Za-z0-9]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}


class Splitter:
    """Cuts text into chunks with a split pattern; uses the fast ASCII form when it can."""

    def __init__(self, pattern: str):
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"the split pattern must be a non-empty str, got {pattern!r}")
        try:
            self.compiled = regex.compile(pattern)
        except regex.error as error:
            raise ValueError(f"the split pattern {pattern!r} is not a valid regex: {error}") from None
        ascii_pattern = _ASCII_EQUIVALENTS.get(pattern)
        self.ascii = re.compile(ascii_pattern, re.ASCII) if ascii_pattern else None
        self.pattern = pattern

    def findall(self, text: str) -> list[str]:
        """All chunks of `text`, in order; joined they give back `text`."""
        if self.ascii is not None and text.isascii():
            return self.ascii.findall(text)
        return self.compiled.findall(text)

    def iter_chunks(self, text: str) -> Iterator[str]:
        """The same chunks as `findall`, one at a time (memory does not grow with the text)."""
        compiled = self.ascii if self.ascii is not None and text.isascii() else self.compiled
        return map(itemgetter(0), compiled.finditer(text))
