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
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# SmolLM / StarCoder (tokenizer.json: Sequence[Digits(individual_digits=True), ByteLevel];
# GGUF pre "smollm"): every digit is a chunk of its own, then GPT-2's regex; a whitespace run
# before a digit stays whole.
GPT2_DIGITS_SPLIT_PATTERN = (
    r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
)

# LLaMA 3 (GGUF pre "llama-bpe") and Qwen2 (GGUF pre "qwen2"): GPT-4's idea, digits in threes
# or one by one.
LLAMA3_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN2_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# The same patterns restricted to ASCII text, for the standard library's `re`, which
# is ~3x faster than `regex` on \p{..} classes. In ASCII, \p{L} is [A-Za-z], \p{N} is [0-9],
# \s is [ \t\n\v\f\r] in both modules, and a possessive quantifier at the end of an
# alternative (or before a class it cannot overlap) matches what the greedy one matches.
# tests/test_tokenizer.py checks that both versions cut ASCII text identically.
_ASCII_EQUIVALENTS = {
    GPT2_SPLIT_PATTERN: (
        r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+$|\s+(?!\S)|\s"""
    ),
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
    GPT2_DIGITS_SPLIT_PATTERN: (
        r"""'(?:[sdmt]|ll|ve|re)| ?[A-Za-z]+|[0-9]| ?[^\sA-Za-z0-9]+|\s+(?![^\s0-9])|\s+"""
    ),
    LLAMA3_SPLIT_PATTERN: (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}"""
        r"""| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ),
    QWEN2_SPLIT_PATTERN: (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\nA-Za-z0-9]?[A-Za-z]+|[0-9]"""
        r"""| ?[^\sA-Za-z0-9]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
    ),
}


# Patterns known to match every character (each ends in catch-all alternatives), so no text falls
# between chunks.
_COVERING = {GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, GPT4O_SPLIT_PATTERN, GPT2_DIGITS_SPLIT_PATTERN,
             LLAMA3_SPLIT_PATTERN, QWEN2_SPLIT_PATTERN}


class Splitter:
    """Cuts text into chunks with a split pattern; uses the fast ASCII form when it can.

    Text that the pattern does not match is kept, as a chunk of its own between the matches (as a
    tokenizer.json Split with behavior "Isolated" does; tiktoken would drop it): no text is ever
    lost. A tokenizer.json pre-tokenizer in two steps (Split or Digits, then ByteLevel) gives
    `pre_split`, cut first, and `add_prefix_space`: each piece gets a leading space (ByteLevel's
    add_prefix_space) before `pattern` cuts it.
    """

    def __init__(self, pattern: str, pre_split: str | None = None, add_prefix_space: bool = False):
        self.compiled = _compile(pattern)
        ascii_pattern = _ASCII_EQUIVALENTS.get(pattern)
        self.ascii = re.compile(ascii_pattern, re.ASCII) if ascii_pattern else None
        self.pattern = pattern
        self.covering = pattern in _COVERING
        # with groups, findall would return the groups, not the matches
        self.plain = self.compiled.groups == 0
        self.pre_split = None if pre_split is None else _compile(pre_split)
        self.add_prefix_space = bool(add_prefix_space)
        self.staged = self.pre_split is not None or self.add_prefix_space

    def findall(self, text: str) -> list[str]:
        """All chunks of `text`, in order; joined they give back `text` (with the prefix
        spaces)."""
        if not self.staged:
            return self._cut(text)
        pieces = [text] if self.pre_split is None else _with_gaps(self.pre_split, text)
        if self.add_prefix_space:  # ByteLevel: a space before each piece that has none
            pieces = [piece if piece.startswith(" ") else " " + piece for piece in pieces if piece]
        return [chunk for piece in pieces for chunk in self._cut(piece)]

    def _cut(self, text: str) -> list[str]:
        if self.ascii is not None and text.isascii():
            return self.ascii.findall(text)
        if self.covering and self.plain:  # the built-in patterns match every character: no gaps
            return self.compiled.findall(text)
        if self.plain:
            chunks = self.compiled.findall(text)
            if sum(map(len, chunks)) == len(text):  # these matches happen to cover the text
                return chunks
        return list(_with_gaps(self.compiled, text))

    def iter_chunks(self, text: str) -> Iterator[str]:
        """The same chunks as `findall`, one at a time (memory does not grow with the text)."""
        if self.staged:
            return iter(self.findall(text))
        if self.ascii is not None and text.isascii():
            return map(itemgetter(0), self.ascii.finditer(text))
        if self.covering:
            return map(itemgetter(0), self.compiled.finditer(text))
        return _with_gaps(self.compiled, text)


def _compile(pattern: str) -> regex.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"the split pattern must be a non-empty str, got {pattern!r}")
    try:
        return regex.compile(pattern)
    except regex.error as error:
        raise ValueError(f"the split pattern {pattern!r} is not a valid regex: {error}") from None


def _with_gaps(compiled: regex.Pattern, text: str) -> Iterator[str]:
    """The non-empty matches of `compiled` in `text` and, as chunks of their own, the pieces
    between them."""
    end = 0
    for found in compiled.finditer(text):
        start, stop = found.span()
        if start > end:
            yield text[end:start]
        if stop > start:
            yield text[start:stop]
        end = max(end, stop)
    if end < len(text):
        yield text[end:]
