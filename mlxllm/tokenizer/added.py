"""Special (added) tokens found in text as Hugging Face `tokenizers` finds them, and normalizers.

Built in Chapter 7, Pretrained weights. A tokenizer.json's added tokens may strip the whitespace
around them (lstrip, rstrip), match only whole words (single_word) or match the normalized text
(normalized); its normalizer (NFC, Lowercase, ...) changes the text between them before splitting.
"""

import re
import unicodedata
from collections.abc import Iterable, Sequence

import regex

# the per-token options of a tokenizer.json added token (all False by default)
TOKEN_OPTIONS = ("lstrip", "rstrip", "single_word", "normalized")
# the normalizers we apply exactly as `tokenizers` does (its unicode and lowercase steps)
NORMALIZERS = ("NFC", "NFD", "NFKC", "NFKD", "Lowercase")

# `tokenizers` uses Rust's regex classes: \w is these categories, \s is White_Space
_WORD = regex.compile(r"[\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}]")
_SPACE = regex.compile(r"\p{White_Space}")


def normalize(text: str, steps: Sequence[str]) -> str:
    """`text` after the normalizer steps, in order (Unicode forms, lowercasing)."""
    for step in steps:
        if step != "Lowercase":
            text = unicodedata.normalize(step, text)
        elif "Σ" in text:  # tokenizers lowercases each character alone: no final sigma (ς)
            text = "".join(map(str.lower, text))
        else:
            text = text.lower()
    return text


def check_options(options: dict, special_tokens: dict[str, int],
                  normalizer: Sequence[str]) -> dict[str, frozenset[str]]:
    """`options` (special token -> option names) checked; ValueError names what is wrong."""
    if not isinstance(normalizer, (list, tuple)) or set(normalizer) - set(NORMALIZERS):
        raise ValueError(f"normalizer must be a list of steps among {list(NORMALIZERS)}, "
                         f"got {normalizer!r}")
    checked = {}
    for token, names in (options or {}).items():
        if token not in special_tokens:
            raise ValueError(f"special_token_options names {token!r}, which is not a special "
                             "token of this tokenizer")
        if isinstance(names, str) or not set(names) <= set(TOKEN_OPTIONS):
            raise ValueError(f"special_token_options[{token!r}] must list options among "
                             f"{list(TOKEN_OPTIONS)}, got {names!r}")
        if names:
            checked[token] = frozenset(names)
    return checked


class SpecialTokenMatcher:
    """Splits text into ordinary pieces and special tokens, like tokenizers' AddedVocabulary.

    First the tokens that match raw text are found (leftmost, longest first); then each piece
    between them is normalized and the tokens marked "normalized" are found in it.
    """

    def __init__(self, special_tokens: Iterable[str], options: dict[str, frozenset[str]],
                 normalizer: Sequence[str]):
        self.options, self.normalizer = options, tuple(normalizer)
        raw = [token for token in special_tokens if "normalized" not in options.get(token, ())]
        # a normalized token is looked for as its normalized text
        by_normal = {}
        for token in special_tokens:
            if "normalized" in options.get(token, ()):
                text = normalize(token, self.normalizer)
                if text in by_normal or not text:
                    raise ValueError(f"the special tokens {by_normal.get(text)!r} and {token!r} "
                                     "normalize to the same text; tokenizers cannot tell them "
                                     "apart either")
                by_normal[text] = token
        self.raw = _alternation(raw)
        self.normalized = _alternation(list(by_normal))
        self.by_normal = by_normal

    def split(self, text: str) -> list[tuple[str, str | None]]:
        """(piece, None) for ordinary text, already normalized, and (match, token) for a special
        token."""
        pieces = []
        for piece, token in self._find(text, self.raw, {}):
            if token is not None:
                pieces.append((piece, token))
                continue
            piece = normalize(piece, self.normalizer)
            pieces += self._find(piece, self.normalized, self.by_normal)
        return pieces

    def find_raw(self, text: str) -> list[tuple[str, str | None]]:
        """The first pass alone: the pieces of the raw text and the tokens that match it."""
        return self._find(text, self.raw, {})

    def _find(self, text: str, alternation, by_text: dict) -> list[tuple[str, str | None]]:
        """tokenizers' find_matches: single_word drops a match inside a word; lstrip / rstrip
        take the whitespace before / after it."""
        if alternation is None or not text:
            return [(text, None)] if text else []
        pieces, end = [], 0
        for found in alternation.finditer(text):
            start, stop = found.span()
            token = by_text.get(found.group(), found.group())
            options = self.options.get(token, ())
            if "single_word" in options and (
                    (start > 0 and _WORD.match(text[start - 1]))
                    or (stop < len(text) and _WORD.match(text[stop]))):
                continue  # not a whole word: ordinary text
            if "lstrip" in options:  # the whitespace before it, back to the previous match
                while start > end and _SPACE.match(text[start - 1]):
                    start -= 1
            if "rstrip" in options:
                while stop < len(text) and _SPACE.match(text[stop]):
                    stop += 1
            if end < start:
                pieces.append((text[end:start], None))
            pieces.append((text[start:stop], token))
            end = stop
        if end < len(text):
            pieces.append((text[end:], None))
        return pieces


def _alternation(tokens: Sequence[str]) -> re.Pattern | None:
    """A regex matching any of `tokens`, longest first (so leftmost-longest, as tokenizers)."""
    if not tokens:
        return None
    return re.compile("|".join(map(re.escape, sorted(tokens, key=len, reverse=True))))
