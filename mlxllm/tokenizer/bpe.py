"""The byte-level BPE tokenizer: text -> token ids -> text.

Built in Chapter 1, Tokenization. One consistent state (the id of each byte, the merges in
rank order, the special tokens, the split pattern); everything else is derived from it.
"""

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from types import MappingProxyType

from . import chat, files
from .added import SpecialTokenMatcher, check_options, normalize
from .merge import LONG_CHUNK, apply_merges
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, Splitter
from .train import count_chunks, train_merges

_CACHE_LIMIT = 1 << 18  # chunks remembered by encode before the cache starts afresh
_ITERABLE_BLOCK = 1 << 16  # characters encode_iterable gathers before it looks for a cut


# Settings that reproduce a Hugging Face tokenizer.json or a GGUF file exactly (Chapter 7), with
# their defaults (which are our own tokenizers' behaviour):
# - ignore_merges: a chunk that is a whole token is that token (tiktoken; False: always merge)
# - unk_token_id, fuse_unk: a byte the vocab lacks becomes unk (one per run with fuse_unk)
# - missing_bytes: without unk such a byte is dropped, "skip" before merging (Hugging Face) or
#   "split" after (llama.cpp: the bytes around it do not merge)
# - normalizer: steps among added.NORMALIZERS applied to the text between special tokens
# - special_token_options: special token -> options among added.TOKEN_OPTIONS
# - pre_split, add_prefix_space: a pre-tokenizer in two steps (see patterns.Splitter)
# - prefix_ids, suffix_ids: what encode(..., add_special_tokens=True) adds around the text
SETTINGS = MappingProxyType(dict(
    ignore_merges=True, unk_token_id=None, fuse_unk=False, missing_bytes="skip", normalizer=(),
    special_token_options={}, pre_split=None, add_prefix_space=False, prefix_ids=(), suffix_ids=(),
))


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

    The other settings reproduce a Hugging Face or GGUF file exactly (Chapter 7), see `SETTINGS`.
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
        **settings,
    ):
        byte_ids = list(range(256)) if byte_ids is None else list(byte_ids)
        special_tokens = dict(special_tokens or {})
        self._byte_ids = byte_ids
        self._merge_ids = [tuple(merge) for merge in merges]
        self._special_tokens = special_tokens
        self._extra_tokens = dict(extra_tokens or {})
        if unknown := sorted(set(settings) - set(SETTINGS)):
            raise ValueError(f"unknown Tokenizer settings {unknown}; known: {sorted(SETTINGS)}")
        self._settings = {**SETTINGS, **settings}
        settings = self._settings
        self._splitter = Splitter(pattern, settings["pre_split"], settings["add_prefix_space"])
        self._vocab = _build_vocab(byte_ids, self._merge_ids, special_tokens, self._extra_tokens)
        self._eos_token_ids = _check_eos(eos_token_ids, self._vocab)
        for name in ("prefix_ids", "suffix_ids"):
            settings[name] = _check_eos(settings[name], self._vocab, name, keep_repeats=True)
        for name in ("ignore_merges", "fuse_unk", "add_prefix_space"):
            if not isinstance(settings[name], bool):
                raise ValueError(f"{name} must be True or False, got {settings[name]!r}")
        self._options = check_options(settings["special_token_options"], special_tokens,
                                      settings["normalizer"])
        self._normalizer = tuple(settings["normalizer"])
        settings["normalizer"] = list(self._normalizer)
        settings["special_token_options"] = {token: sorted(names)
                                             for token, names in self._options.items()}
        unk = settings["unk_token_id"]
        if unk is not None and (isinstance(unk, bool) or unk not in self._vocab):
            raise ValueError(f"unk_token_id {unk!r} is not an id of this tokenizer's vocabulary")
        if settings["missing_bytes"] not in ("skip", "split"):
            raise ValueError("missing_bytes must be 'skip' (Hugging Face) or 'split' (llama.cpp), "
                             f"got {settings['missing_bytes']!r}")
        if chat_template is not None and not isinstance(chat_template, str):
            raise ValueError("chat_template must be a str (a Jinja template) or None, "
                             f"got {type(chat_template).__name__}")
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token)):
            if token is not None and not isinstance(token, str):
                raise ValueError(f"{name} must be a str or None, got {token!r}")
        self._chat_template, self._bos_token, self._eos_token = chat_template, bos_token, eos_token

        # ignore_merges: bytes -> id of every token, for a direct lookup of whole chunks (as
        # tiktoken, LLaMA 3 and llama.cpp do); on a duplicate byte string the earliest token wins.
        # Otherwise every chunk is merged (GPT-2's encoder.py, most tokenizer.json files): the same
        # ids, unless a token is not the BPE of its own bytes.
        self._encoder: dict[bytes, int] = {}
        if settings["ignore_merges"]:
            made = (new for _, _, new in self._merge_ids)
            for token_id in chain(byte_ids, made, sorted(self._extra_tokens)):
                if token_id is not None:
                    self._encoder.setdefault(self._vocab[token_id], token_id)
        self._ranks = {chr(a) + chr(b): rank for rank, (a, b, _) in enumerate(self._merge_ids)}
        self._merged = [chr(new) for _, _, new in self._merge_ids]
        self._byte_table, self._barrier, self._unknown_run = self._missing_byte_rules(unk)
        self._cache = _ChunkCache(self._encode_chunk)

        longest_first = sorted(special_tokens, key=len, reverse=True)
        self._special_re = _alternation(longest_first)
        self._matcher = (SpecialTokenMatcher(special_tokens, self._options, self._normalizer)
                         if special_tokens and (self._options or self._normalizer) else None)
        self._margin = max([4, *map(len, special_tokens)])  # see encode_iterable

    def _missing_byte_rules(self, unk: int | None):
        """How a byte the vocab lacks is encoded: dropped before merging (Hugging Face), the
        unk token (Hugging Face with unk_token; fuse_unk: one per run), or dropped after merging,
        parting its neighbours (llama.cpp). Returns (translate table, barrier, unknown run)."""
        missing = [b for b, token_id in enumerate(self._byte_ids) if token_id is None]
        if not missing:
            identity = self._byte_ids == list(range(256))
            return (None if identity else dict(enumerate(self._byte_ids))), None, None
        table = dict(enumerate(self._byte_ids))  # str.translate deletes what is mapped to None
        barrier = run = None
        if unk is not None:
            table.update({b: unk for b in missing})
            if self._settings["fuse_unk"]:
                run = re.compile("[" + "".join(map(re.escape, map(chr, missing))) + "]{2,}")
        elif self._settings["missing_bytes"] == "split":
            # a symbol in no merge: the bytes on both sides cannot merge across it
            barrier = next(i for i in range(self.vocab_size, 0x110000) if i not in self._vocab)
            table.update({b: barrier for b in missing})
        return table, barrier, run

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
        if self._unknown_run is not None:  # fuse_unk: a run of unknown bytes is one unk token
            symbols = self._unknown_run.sub(lambda run: run.group()[0], symbols)
        if self._byte_table is not None:
            symbols = symbols.translate(self._byte_table)  # ...then per byte's token id
        merged = apply_merges(symbols, self._ranks, self._merged)
        if self._barrier is not None:
            merged = merged.replace(chr(self._barrier), "")
        return list(map(ord, merged))

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special-token text as plain text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self._encode_normalized(normalize(text, self._normalizer))

    def _encode_normalized(self, text: str) -> list[int]:
        if len(self._cache) > _CACHE_LIMIT:
            self._cache.clear()
        chunks = self._splitter.findall(text)
        return list(chain.from_iterable(map(self._cache.__getitem__, chunks)))

    def encode(self, text: str, allowed_special: str | Iterable[str] = "none", *,
               add_special_tokens: bool = False) -> list[int]:
        """Encode text like tiktoken: special tokens are encoded only where allowed.

        `allowed_special` is "none" (the default), "all", or a set of special-token strings.
        Text containing a special token that is not allowed raises ValueError, because such
        text usually comes from a user and must not act as a control token.
        `add_special_tokens=True` adds `prefix_ids` and `suffix_ids` around the ids (the BOS of
        LLaMA 3), as transformers' ``tokenizer(text)`` and llama.cpp do for a raw prompt.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        if not isinstance(add_special_tokens, bool):
            raise ValueError(f"add_special_tokens must be True or False, got "
                             f"{add_special_tokens!r}")
        allowed = self._allowed(allowed_special)
        ids = self._encode_with_specials(text, allowed)
        if add_special_tokens:
            ids = self._settings["prefix_ids"] + ids + self._settings["suffix_ids"]
        return ids

    def _encode_with_specials(self, text: str, allowed: frozenset[str]) -> list[int]:
        if self._special_re is None:
            return self.encode_ordinary(text)
        if self._matcher is not None:  # token options or a normalizer: tokenizers' two passes
            pieces = self._matcher.split(text)
        else:  # specials are matched leftmost, longest first; text between them is ordinary
            pieces, start = [], 0
            for found in self._special_re.finditer(text):
                pieces += [(text[start : found.start()], None), (found.group(), found.group())]
                start = found.end()
            pieces.append((text[start:], None))
        ids: list[int] = []
        for piece, token in pieces:
            if token is None:
                ids += self._encode_normalized(piece)
            elif token in allowed:
                ids.append(self._special_tokens[token])
            else:
                raise ValueError(
                    f"the text contains the special token {token!r}, which is not allowed. Pass "
                    f"allowed_special={{{token!r}}} (or 'all') to encode it as a special token, "
                    "or use encode_ordinary() to encode it as plain text."
                )
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
        ("'ll") can be cut in two. A normalizer, a pre-split or a prefix space (which act on each
        piece between special tokens) allow only cuts after a special token; lstrip, rstrip and
        single_word (whose matches look at their neighbours) none: the text is encoded whole.
        """
        limit = len(text) - self._margin
        if limit <= 0 or any(names - {"normalized"} for names in self._options.values()):
            return 0
        only_specials = bool(self._normalizer) or self._splitter.staged
        start, stop = 0, len(text)
        if self._matcher is not None:  # after the last special token of the first pass
            for piece, token in self._matcher.find_raw(text):
                if token is not None and start + len(piece) <= limit:
                    stop = start + len(piece)
                start += len(piece)
            return stop if stop < len(text) else 0
        if self._special_re is not None:
            for found in self._special_re.finditer(text):
                if found.end() > limit:
                    stop = found.start()
                    break
                start = found.end()
        if only_specials:
            return start
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
    def prefix_ids(self) -> list[int]:
        """Ids that `encode(..., add_special_tokens=True)` puts before the text (LLaMA 3's BOS)."""
        return list(self._settings["prefix_ids"])

    @property
    def suffix_ids(self) -> list[int]:
        """Ids that `encode(..., add_special_tokens=True)` puts after the text (an EOS, if any)."""
        return list(self._settings["suffix_ids"])

    @property
    def bos_token_id(self) -> int | None:
        """The id of `bos_token` (None if unknown or not a special token)."""
        return self._special_tokens.get(self._bos_token) if self._bos_token else None

    @property
    def settings(self) -> dict:
        """The settings that reproduce a Hugging Face or GGUF tokenizer (see `SETTINGS`)."""
        return json.loads(json.dumps(self._settings))  # a deep copy (they are plain JSON)

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
        defaults = json.loads(json.dumps(dict(SETTINGS)))
        # only the settings that differ from the default
        settings.update({name: value for name, value in self.settings.items()
                         if value != defaults[name]})
        files.write_tokenizer(path, self.pattern, self._byte_ids, self._merge_ids,
                              self._special_tokens, self._extra_tokens, settings, self._vocab)

    @classmethod
    def load(cls, path: str | Path) -> "Tokenizer":
        """Read a file written by `save`; a truncated, corrupt, damaged or foreign file
        -> ValueError."""
        fields = files.read_tokenizer(path, set(SETTINGS))
        try:
            return cls(**fields)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def with_settings(self, **changes) -> "Tokenizer":
        """A copy with some `SETTINGS` changed (e.g. ``missing_bytes="skip"``)."""
        fields = dict(pattern=self.pattern, special_tokens=self._special_tokens,
                      byte_ids=self._byte_ids, extra_tokens=self._extra_tokens,
                      eos_token_ids=self._eos_token_ids, chat_template=self._chat_template,
                      bos_token=self._bos_token, eos_token=self._eos_token)
        return type(self)(self._merge_ids, **fields, **{**self.settings, **changes})

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


def _check_eos(eos_token_ids, vocab, name="eos_token_ids", keep_repeats=False) -> list[int]:
    if isinstance(eos_token_ids, (int, str)):
        raise ValueError(f"{name} must be a list of ids, got {eos_token_ids!r}")
    # keep the order, drop repeats (a stop set; prefix ids are kept as they are)
    eos = list(eos_token_ids) if keep_repeats else list(dict.fromkeys(eos_token_ids))
    if bad := [i for i in eos if isinstance(i, bool) or not isinstance(i, int) or i not in vocab]:
        raise ValueError(f"{name} {bad} are not ids of this tokenizer's vocabulary")
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
