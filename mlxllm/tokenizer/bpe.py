"""The byte-level BPE tokenizer: text -> token ids -> text.

Built in Chapter 1, Tokenization. One consistent state (the id of each byte, the merges in
rank order, the special tokens, the split pattern); everything else is derived from it.
"""

import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from types import MappingProxyType

from . import chat, files
from .merge import LONG_CHUNK, apply_merges
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Splitter
from .train import count_chunks, train_merges

_CACHE_LIMIT = 1 << 18  # chunks remembered by encode before the cache starts afresh
_ITERABLE_BLOCK = 1 << 16  # characters encode_iterable gathers before it looks for a cut


class _ChunkCache(dict):
    """chunk (str) -> token ids; a miss runs BPE on the chunk and remembers the answer
    (short chunks only)."""

    def __init__(self, encode_chunk):
        super().__init__()
        self.encode_chunk = encode_chunk

    def __missing__(self, chunk: str) -> list[int]:
        ids = self.encode_chunk(chunk)
        if len(chunk) <= LONG_CHUNK:
            self[chunk] = ids
        return ids


class Tokenizer:
    """Byte-level BPE with regex pre-splitting and special tokens; equals tiktoken on its files.

    Built in Chapter 1, Tokenization. The constructor takes the merges as (left id, right id,
    new id) in rank order, `byte_ids[b]` = the id of the single byte b (cl100k permutes them)
    and `special_tokens` (str -> id); usually you call `Tokenizer.train`, `from_gpt2_files`,
    `from_tiktoken_file` or `load` instead (or `mlxllm.tokenizer.hf` / `.gguf` for model files).

    Real model vocabularies are not always complete: `byte_ids[b]` may be None for a byte the
    vocab lacks (SmolLM2 lacks 21). Encoding then drops that byte, as Hugging Face `tokenizers`
    does for a BPE without unk_token, and the bytes around it may merge. `extra_tokens`
    (id -> bytes) are vocab entries no merge makes: decoded, never produced by encoding.
    `eos_token_ids`, `chat_template`, `bos_token` and `eos_token` come from a chat model's files.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int, int]] = (),
        *,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: dict[str, int] | None = None,
        byte_ids: Sequence[int | None] | None = None,
        extra_tokens: dict[int, bytes] | None = None,
        eos_token_ids: Sequence[int] = (),
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
    ):
        byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        special_tokens = dict(special_tokens or {})
        self._byte_ids = byte_ids
        self._merge_ids = [tuple(merge) for merge in merges]
        self._special_tokens = special_tokens
        self._extra_tokens = dict(extra_tokens or {})
        self._splitter = Splitter(pattern)
        self._vocab = _build_vocab(byte_ids, self._merge_ids, special_tokens, self._extra_tokens)
        self._eos_token_ids = _check_eos(eos_token_ids, self._vocab)
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError("chat_template must be a str (a Jinja template) or None, "
                             f"got {type(chat_template).__name__}")
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and not isinstance(token, str):
                raise ValueError(f"{name} must be a str or None, got {token!r}")
        self._chat_template, self._bos_token, self._eos_token = chat_template, bos_token, eos_token

        # bytes -> id of every mergeable token, for a direct lookup of whole chunks (as
        # tiktoken does); on a duplicate byte string the earliest token wins. (This equals running
        # the merges for vocabularies learned by BPE, where each token is the BPE of its own bytes.)
        self._encoder: dict[bytes, int] = {}
        for token_id in chain(byte_ids, (new for _, _, new in self._merge_ids)):
            if token_id is not None:
                self._encoder.setdefault(self._vocab[token_id], token_id)
        self._ranks = {chr(a) + chr(b): rank for rank, (a, b, _) in enumerate(self._merge_ids)}
        self._merged = [chr(new) for _, _, new in self._merge_ids]
        identity = byte_ids == list(range(256))
        # str.translate deletes the characters mapped to None: a byte the vocab lacks is dropped
        self._byte_table = (None if identity
                            else {b: token_id for b, token_id in enumerate(byte_ids)})
        self._cache = _ChunkCache(self._encode_chunk)

        longest_first = sorted(special_tokens, key=len, reverse=True)
        self._special_re = _alternation(longest_first)
        self._margin = max([4, *map(len, special_tokens)])  # see encode_iterable

    # ----------------------------------------------------------------------------- training
    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        *,
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = (),
        verbose: bool = False,
    ) -> "Tokenizer":
        """Learn merges from a text (or an iterable of documents) until `vocab_size` tokens.

        `vocab_size` counts the 256 bytes, the merges and the special tokens, which take the
        last ids. Ties go to the lexicographically greatest pair of byte strings (CS336's
        rule), so training is deterministic. Stops early if every chunk became one token.
        """
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            raise ValueError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
        if isinstance(special_tokens, str):
            raise ValueError("special_tokens must be a list of str, not a single str")
        special_tokens = list(special_tokens)
        for token in special_tokens:
            if not isinstance(token, str) or not token:
                raise ValueError(f"special tokens must be non-empty str, got {token!r}")
        if len(set(special_tokens)) != len(special_tokens):
            raise ValueError(f"special tokens must be distinct, got {special_tokens}")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(
                f"vocab_size={vocab_size} is too small: it must be at least 256 (one token per "
                f"byte) + {len(special_tokens)} special tokens = {256 + len(special_tokens)}"
            )
        documents = [text] if isinstance(text, str) else text
        splitter = Splitter(pattern)
        special_re = _alternation(sorted(special_tokens, key=len, reverse=True))
        chunk_counts = count_chunks(documents, splitter, special_re)
        if not chunk_counts:
            raise ValueError("no text to train on: the text is empty (or only special tokens)")
        vocab = {b: bytes([b]) for b in range(256)}
        n_merges = vocab_size - 256 - len(special_tokens)
        merges = train_merges(chunk_counts, n_merges, vocab, verbose=verbose)
        first_special = 256 + len(merges)
        specials = {token: first_special + i for i, token in enumerate(special_tokens)}
        return cls(merges, pattern=pattern, special_tokens=specials)

    # ----------------------------------------------------------------------------- encoding
    def _encode_chunk(self, chunk: str) -> list[int]:
        """Token ids of one chunk: a direct lookup if it is one token, else the BPE merges."""
        data = chunk.encode("utf-8")
        token_id = self._encoder.get(data)
        if token_id is not None:
            return [token_id]
        symbols = data.decode("latin-1")  # one character per byte...
        if self._byte_table is not None:
            symbols = symbols.translate(self._byte_table)  # ...then per byte's token id
        return list(map(ord, apply_merges(symbols, self._ranks, self._merged)))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        chunks = self._splitter.findall(text)
        return list(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none") -> list[int]:
        """Encode text like tiktoken: special tokens are encoded only where allowed.

        `allowed_special` is "none" (the default), "all", or a set of special-token strings.
        Text containing a special token that is not allowed raises ValueError, because such
        text usually comes from a user and must not act as a control token.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = self._allowed(allowed_special)
        if self._special_re is None:
            return self.encode_ordinary(text)
        ids: list[int] = []
        start = 0
        # specials are matched leftmost, longest first; text between them is ordinary text
        for found in self._special_re.finditer(text):
            token = found.group()
            if token not in allowed:
                raise ValueError(
                    f"the text contains the special token {token!r}, which is not allowed. Pass "
                    f"allowed_special={{{token!r}}} (or 'all') to encode it as a special token, "
                    "or use encode_ordinary() to encode it as plain text."
                )
            ids += self.encode_ordinary(text[start : found.start()])
            ids.append(self._special_tokens[token])
            start = found.end()
        ids += self.encode_ordinary(text[start:])
        return ids

    def _allowed(self, allowed_special: str | Iterable[str]) -> frozenset[str]:
        if allowed_special == "none":
            return frozenset()
        if allowed_special == "all":
            return frozenset(self._special_tokens)
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special must be 'none', 'all' or a set of special tokens, "
                f"got the str {allowed_special!r}"
            )
        allowed = frozenset(allowed_special)
        unknown = sorted(allowed - self._special_tokens.keys())
        if unknown:
            raise ValueError(
                f"allowed_special names {unknown}, which are not special tokens of this "
                f"tokenizer (it has {sorted(self._special_tokens)})"
            )
        return allowed

    def encode_iterable(
        self, texts: Iterable[str], allowed_special: str | Iterable[str] = "none"
    ) -> Iterator[int]:
        """Yield the ids of the concatenated texts lazily (e.g. the lines of a large file).

        Gives the same ids as encode("".join(texts)): text is held back until a point where
        no chunk or special token can continue across it.
        """
        buffer = ""
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode_iterable expects str items, got {type(text).__name__}")
            buffer += text
            if len(buffer) < _ITERABLE_BLOCK:
                continue  # gather some text first: one encode call per block, not per line
            cut = self._safe_cut(buffer)
            if cut:
                yield from self.encode(buffer[:cut], allowed_special)
                buffer = buffer[cut:]
        if buffer:
            yield from self.encode(buffer, allowed_special)

    def _safe_cut(self, text: str) -> int:
        """A position in `text` before which the encoding cannot change when text is appended.

        The end of a special token is safe. So is the start of a chunk that follows a
        non-space character: the split patterns look past a chunk only across whitespace or by a
        few characters, so the chunks before it are final and end the same way on their own.
        Cuts stay `_margin` characters from the end, so that no special token or contraction
        ("'ll") can be cut in two.
        """
        limit = len(text) - self._margin
        if limit <= 0:
            return 0
        start, stop = 0, len(text)
        if self._special_re is not None:
            for found in self._special_re.finditer(text):
                if found.end() > limit:
                    stop = found.start()
                    break
                start = found.end()
        cut = start
        segment = text[start:stop]  # encode() splits this segment on its own
        splitter = self._splitter
        compiled = (splitter.ascii if splitter.ascii is not None and segment.isascii()
                    else splitter.compiled)
        for found in compiled.finditer(segment):
            position = found.start()
            if start + position > limit:
                break
            if position and not segment[position - 1].isspace():
                cut = start + position
        return cut

    # ----------------------------------------------------------------------------- decoding
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes behind token ids (special tokens as their UTF-8 text)."""
        if hasattr(ids, "tolist"):  # numpy / mlx arrays
            ids = ids.tolist()
        ids = list(ids)  # a generator is read once, so that a bad id can be reported
        if not set(map(type, ids)) <= {int}:  # 1.0 or True must not pass for id 1 (they hash alike)
            ids = [_as_id(i) for i in ids]
        try:
            return b"".join(map(self._vocab.__getitem__, ids))
        except KeyError:
            bad = next(i for i in ids if i not in self._vocab)
            raise ValueError(
                f"unknown token id {bad!r}: ids must be ints in this tokenizer's vocabulary "
                f"(vocab_size={self.vocab_size})"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; byte sequences that are not valid UTF-8 become U+FFFD
        (as tiktoken)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------------ introspection
    @property
    def vocab(self) -> MappingProxyType:
        """id -> bytes of every token, special tokens included (read-only)."""
        return MappingProxyType(self._vocab)

    @property
    def merges(self) -> list[tuple[bytes, bytes]]:
        """The merges as (left bytes, right bytes), in rank order (first learned first)."""
        return [(self._vocab[a], self._vocab[b]) for a, b, _ in self._merge_ids]

    @property
    def merge_ids(self) -> list[tuple[int, int, int]]:
        """The merges as (left id, right id, new id), in rank order."""
        return list(self._merge_ids)

    @property
    def byte_ids(self) -> list[int | None]:
        """byte_ids[b] is the id of the single byte b (None if the vocab lacks it)."""
        return list(self._byte_ids)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special-token text -> id."""
        return dict(self._special_tokens)

    @property
    def pattern(self) -> str:
        """The regex that splits text into chunks before BPE."""
        return self._splitter.pattern

    @property
    def extra_tokens(self) -> dict[int, bytes]:
        """Vocab entries that no merge makes (id -> bytes): decoded, never produced by encode."""
        return dict(self._extra_tokens)

    @property
    def eos_token_ids(self) -> list[int]:
        """Ids that end a generated answer: end of sequence and, for chat models, end of turn."""
        return list(self._eos_token_ids)

    @property
    def chat_template(self) -> str | None:
        """The model's Jinja chat template (None when its files define none)."""
        return self._chat_template

    @property
    def bos_token(self) -> str | None:
        """The beginning-of-sequence token's text, as chat templates see it (None if unknown)."""
        return self._bos_token

    @property
    def eos_token(self) -> str | None:
        """The end-of-sequence token's text, as chat templates see it (None if unknown)."""
        return self._eos_token

    def apply_chat_template(self, messages: Sequence[dict],
                            add_generation_prompt: bool = True) -> str:
        """A conversation ([{"role": ..., "content": ...}]) as the prompt text the model was
        tuned on.

        Renders the model's own template as transformers does; encode the result with
        allowed_special="all". ValueError if there is no template or the messages are malformed.
        """
        return chat.render(self._chat_template, messages, add_generation_prompt,
                           bos_token=self._bos_token, eos_token=self._eos_token)

    @property
    def vocab_size(self) -> int:
        """1 + the largest id: the number of rows an embedding table for these ids needs."""
        return max(self._vocab) + 1

    def __repr__(self) -> str:
        names = {GPT2_SPLIT_PATTERN: "GPT2_SPLIT_PATTERN", GPT4_SPLIT_PATTERN: "GPT4_SPLIT_PATTERN"}
        pattern = names.get(self.pattern, repr(self.pattern))
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self._merge_ids)}, "
            f"special_tokens={len(self._special_tokens)}, pattern={pattern})"
        )

    # ------------------------------------------------------------------------ files
    def save(self, path: str | Path) -> None:
        """Write one human-readable, versioned text file with a checksum (see `files.py`),
        atomically."""
        settings = {"eos_token_ids": self._eos_token_ids, "chat_template": self._chat_template,
                    "bos_token": self._bos_token, "eos_token": self._eos_token}
        files.write_tokenizer(path, self.pattern, self._byte_ids, self._merge_ids,
                              self._special_tokens, self._extra_tokens, settings, self._vocab)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a file written by `save`; a truncated, corrupt, damaged or foreign file
        -> ValueError."""
        fields = files.read_tokenizer(path)
        try:
            return cls(**fields)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def dump_vocab(self, path: str | Path | None = None) -> str:
        """Every token on a line (id, text, and the two tokens it merges); written to
        `path` if given."""
        text = files.vocab_listing(self._byte_ids, self._merge_ids, self._special_tokens,
                                   self._extra_tokens, self._vocab)
        if path is not None:
            files.write_atomic(path, text)
        return text

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> "Tokenizer":
        """GPT-2's tokenizer from `encoder.json` and `vocab.bpe` (with or without `#version`).

        Registers `<|endoftext|>` (id 50256) as a special token, as GPT-2 does.
        """
        byte_ids, merges, special_tokens = files.read_gpt2_files(encoder_json, vocab_bpe)
        try:
            return cls(merges, pattern=GPT2_SPLIT_PATTERN, special_tokens=special_tokens,
                       byte_ids=byte_ids)
        except ValueError as error:
            raise ValueError(f"{encoder_json}, {vocab_bpe}: {error}") from None

    @classmethod
    def from_tiktoken_file(
        cls, path: str | Path, *, pattern: str, special_tokens: dict[str, int] | None = None
    ) -> "Tokenizer":
        """A tokenizer from a tiktoken rank file (`cl100k_base.tiktoken`, `.gz` too).

        Ids are tiktoken's ranks; the merges are recovered by running BPE on each token's
        bytes with the lower-ranked merges, which must end in exactly two parts.
        """
        ranks = files.read_tiktoken_ranks(path)
        byte_ids, merges = recover_merges(ranks, source=str(path))
        try:
            return cls(merges, pattern=pattern, special_tokens=special_tokens, byte_ids=byte_ids)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None


def recover_merges(ranks: dict[bytes, int], source: str = "ranks") -> tuple[list[int], list]:
    """(byte_ids, merges) from tiktoken-style ranks (bytes -> rank, lower merges first)."""
    byte_ids = [ranks.get(bytes([b])) for b in range(256)]
    missing = [b for b, token_id in enumerate(byte_ids) if token_id is None]
    if missing:
        raise ValueError(f"{source}: no token for the single bytes {missing[:8]}...")
    byte_table = {b: token_id for b, token_id in enumerate(byte_ids)}
    pair_ranks: dict[str, int] = {}
    merged: list[str] = []
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) == 1:
            continue
        symbols = token.decode("latin-1").translate(byte_table)
        parts = apply_merges(symbols, pair_ranks, merged)
        if len(parts) != 2:
            raise ValueError(f"{source}: token {token!r} (rank {rank}) is not a merge of two "
                             "tokens")
        pair_ranks[parts] = len(merges)
        merged.append(chr(rank))
        merges.append((ord(parts[0]), ord(parts[1]), rank))
    return byte_ids, merges


def _build_vocab(byte_ids, merges, special_tokens, extra_tokens) -> dict[int, bytes]:
    """id -> bytes, checking that ids are distinct and that every merge uses known tokens."""
    present = [token_id for token_id in byte_ids if token_id is not None]
    if len(byte_ids) != 256 or len(set(present)) != len(present):
        raise ValueError("byte_ids must give 256 entries, one per byte value: distinct ids "
                         "(None for a byte the vocab lacks)")
    vocab: dict[int, bytes] = {}
    for b, token_id in enumerate(byte_ids):
        if token_id is not None:
            _check_id(token_id, vocab)
            vocab[token_id] = bytes([b])
    for rank, merge in enumerate(merges):
        if len(merge) != 3:
            raise ValueError(f"merge {rank} is {merge!r}; expected (left id, right id, new id)")
        a, b, new = merge
        if a not in vocab or b not in vocab:
            raise ValueError(f"merge {rank} {merge} uses an id that is not defined before it")
        _check_id(new, vocab)
        vocab[new] = vocab[a] + vocab[b]
    for token, token_id in special_tokens.items():
        if not isinstance(token, str) or not token:
            raise ValueError(f"special tokens must be non-empty str, got {token!r}")
        _check_id(token_id, vocab)
        vocab[token_id] = token.encode("utf-8")
    for token_id, token in extra_tokens.items():
        if not isinstance(token, bytes):
            raise ValueError(f"extra token {token_id} must be bytes, got {type(token).__name__}")
        _check_id(token_id, vocab)
        vocab[token_id] = token
    return vocab


def _check_eos(eos_token_ids, vocab) -> list[int]:
    if isinstance(eos_token_ids, (int, str)):
        raise ValueError(f"eos_token_ids must be a list of ids, got {eos_token_ids!r}")
    eos = list(dict.fromkeys(eos_token_ids))  # keep the order, drop repeats
    if bad := [i for i in eos if isinstance(i, bool) or not isinstance(i, int) or i not in vocab]:
        raise ValueError(f"eos_token_ids {bad} are not ids of this tokenizer's vocabulary")
    return eos


def _as_id(value) -> int:
    """An int token id from an int-like value (numpy ints); ValueError for floats,
    bools and the rest."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"unknown token id {value!r}: token ids must be ints, "
                         f"not {type(value).__name__} (cast them with int() if they are whole "
                         "numbers)")
    return value.__index__()


def _check_id(token_id, vocab) -> None:
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < 0x110000:
        raise ValueError(f"token id {token_id!r} is not an int in [0, 1114112)")
    if token_id in vocab:
        raise ValueError(f"token id {token_id} is used twice")


def _alternation(tokens: Sequence[str]) -> re.Pattern | None:
    """A regex matching any of `tokens`, trying them in the given order (longest first)."""
    if not tokens:
        return None
    return re.compile("|".join(map(re.escape, tokens)))
