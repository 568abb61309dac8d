"""Named corpora and tokenizer files: downloaded once, checked by sha256, cached.

`get_path("tinyshakespeare")` returns a local path to the verified file. Lookup order:
1. the folder in `$MLXLLM_DATA_DIR` (a local copy, e.g. for offline CI), under its usual names;
2. the user cache (`~/Library/Caches/mlxllm` on macOS, `$XDG_CACHE_HOME/mlxllm` or
   `~/.cache/mlxllm` elsewhere);
3. a download into that cache (once; written to a temporary file, verified, then renamed into
   place).

`tokenize_corpus(name_or_path, tokenizer)` turns a corpus into a cached id array, `split_ids` cuts
it into train/validation, and `get_batch` draws seeded (inputs, targets) windows (Chapter 6).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlxllm.files import replacing


@dataclass(frozen=True)
class DataFile:
    """One named data file: where it comes from and how to recognise a good copy."""

    filename: str  # name in the cache (and the first name looked for in MLXLLM_DATA_DIR)
    url: str | None  # None: not downloadable, must be supplied locally
    sha256: tuple[str, ...]  # every accepted version of the file
    size: int  # bytes of the first accepted version (for messages)
    local_names: tuple[str, ...] = ()  # other names it may have in MLXLLM_DATA_DIR


_GPT2_URL = "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main"

CORPORA: dict[str, DataFile] = {
    # karpathy/char-rnn's input.txt: 40,000 lines of Shakespeare, 1.1 MB.
    "tinyshakespeare": DataFile(
        "tinyshakespeare.txt",
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        ("86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",),
        1_115_394,
        ("input.txt", "tinyshakespeare/input.txt"),
    ),
    # Six short TinyStories (Eldan & Li 2023) separated by <|endoftext|>, from
    # stanford-cs336/assignment1-basics.
    "tinystories_sample": DataFile(
        "tinystories_sample.txt",
        "https://raw.githubusercontent.com/stanford-cs336/assignment1-basics/main/tests/fixtures/"
        "tinystories_sample.txt",
        ("defaedb58bf28079f3e29c6142cb7f3568d331a577e0911c5d7925c465c50c43",),
        3_794,
    ),
    # GPT-2's vocabulary: OpenAI's encoder.json (= Hugging Face's vocab.json), token string -> id.
    "gpt2-vocab": DataFile(
        "gpt2/gpt2_vocab.json",
        f"{_GPT2_URL}/encoder.json",
        ("196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",),
        1_042_301,
        ("gpt2/encoder.json", "gpt2/vocab.json", "gpt2_vocab.json", "encoder.json", "vocab.json"),
    ),
    # GPT-2's 50,000 merges in rank order: OpenAI's vocab.bpe (with a `#version` header line),
    # or the same lines without the header (the copy in stanford-cs336's test fixtures).
    "gpt2-merges": DataFile(
        "gpt2/gpt2_merges.txt",
        f"{_GPT2_URL}/vocab.bpe",
        (
            "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",  # with header
            "ac33235097fe06d4a8fff0feac994644809e6eb6ab70669e1e9fd40ae032428e",  # without header
        ),
        456_318,
        ("gpt2/vocab.bpe", "gpt2/merges.txt", "gpt2_merges.txt", "vocab.bpe", "merges.txt"),
    ),
}


def cache_dir() -> Path:
    """The per-user cache folder for mlxllm's downloads."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mlxllm"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlxllm"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check(path: Path, entry: DataFile, name: str) -> Path:
    """Return `path` if its sha256 is one we accept, else raise a ValueError that says what to
    do."""
    actual = sha256_of(path)
    if actual not in entry.sha256:
        raise ValueError(
            f"{path} does not match the known {name!r} file (sha256 {actual}, expected "
            f"{' or '.join(entry.sha256)}). Replace it with the file from "
            f"{entry.url or 'its source'}."
        )
    return path


def _download(entry: DataFile, name: str, target: Path) -> Path:
    """Download `entry` to `target` atomically; a copy with the wrong checksum is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with replacing(target) as temporary:
        with open(temporary, "wb") as out, \
                urllib.request.urlopen(entry.url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        _check(temporary, entry, name)
    return target


def get_path(name: str) -> Path:
    """Path to the verified local copy of the named file, downloading it once if needed."""
    if name not in CORPORA:
        raise ValueError(f"unknown data file {name!r}; known names: {', '.join(sorted(CORPORA))}")
    entry = CORPORA[name]
    data_dir = os.environ.get("MLXLLM_DATA_DIR")
    if data_dir:
        for candidate in (entry.filename, *entry.local_names):
            if (Path(data_dir) / candidate).is_file():
                return _check(Path(data_dir) / candidate, entry, name)
    cached = cache_dir() / entry.filename
    if cached.is_file():
        return _check(cached, entry, name)
    try:
        if entry.url is None:
            raise OSError("no download address is known")
        return _download(entry, name, cached)
    except OSError as error:  # no network, DNS failure, HTTP error, ...
        where = f"{data_dir}/{entry.filename} (MLXLLM_DATA_DIR)" if data_dir else str(cached)
        raise FileNotFoundError(
            f"could not get {name!r} ({error}). Download {entry.url or 'it'} "
            f"({entry.size:,} bytes) yourself and save it as {where}, or set MLXLLM_DATA_DIR to a "
            f"folder that contains {entry.filename}."
        ) from None


# --------------------------------------------------------------------------------------------------
# Tokenized corpora and random batches. Built in Chapter 6, Training.


def corpus_path(source: str | Path) -> Path:
    """A named corpus (``"tinyshakespeare"``) or the path of any UTF-8 text file."""
    if isinstance(source, str) and source in CORPORA:
        return get_path(source)
    path = Path(source)
    if not path.is_file():
        raise ValueError(f"unknown corpus {str(source)!r}: not a named corpus "
                         f"({', '.join(sorted(CORPORA))}) and not an existing text file")
    return path


def read_text(path: str | Path) -> str:
    """The text of a UTF-8 file (newlines as ``Path.read_text`` gives them); other bytes → one
    ValueError naming the file, the line and the byte, and what to do. Chapter 6."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # its position is within one chunk: find it in the whole file
        data = path.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as error:
            line = data.count(b"\n", 0, error.start) + 1
            raise ValueError(f"{path} is not UTF-8 text: line {line:,} has the byte "
                             f"0x{data[error.start]:02x} (at byte {error.start:,}); convert the "
                             "file to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or pass another "
                             "file") from None
        raise


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of what ``tokenizer.save`` writes: two tokenizers that save alike encode alike."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save(Path(folder) / "tokenizer")
        digest = hashlib.sha256()
        for path in sorted(Path(folder).iterdir()):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def encode_text(tokenizer, text: str) -> list[int]:
    """Encode a whole corpus; special tokens written in it (``<|endoftext|>``) become their ids."""
    # every tokenizer takes it (TokenizerProtocol)
    return tokenizer.encode(text, allowed_special="all")


def tokenize_corpus(source: str | Path, tokenizer, *, cache: bool = True,
                    corpus_sha256: str | None = None) -> np.ndarray:
    """All token ids of a corpus as a 1-D uint16 (vocab ≤ 65,536) or uint32 array, cached on disk.

    The cache file ``<cache_dir>/tokens/<name>-<corpus sha256>-<tokenizer sha256>.npy`` is keyed by
    the corpus bytes and the tokenizer, so a changed file or a retrained tokenizer never reuses
    stale ids.
    ``corpus_sha256``: the file's digest, when the caller has computed it already.
    """
    path = corpus_path(source)
    key = f"{(corpus_sha256 or sha256_of(path))[:16]}-{tokenizer_fingerprint(tokenizer)[:16]}"
    cached = cache_dir() / "tokens" / f"{path.stem}-{key}.npy"
    if cache and cached.is_file():
        return np.load(cached)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    ids = np.array(encode_text(tokenizer, read_text(path)), dtype=dtype)
    if cache:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with replacing(cached) as temporary:
            np.save(temporary, ids)
    return ids


def split_ids(ids: np.ndarray, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Train/validation split: the first (1 − val_fraction) of the tokens train, the rest validate.

    A contiguous tail (as nanoGPT's prepare.py does) keeps validation text unseen, never interleaved
    with training windows; for tinyshakespeare it is the last ~10% of the plays.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_train = int(len(ids) * (1.0 - val_fraction))
    return ids[:n_train], ids[n_train:]


def get_batch(ids: mx.array, batch_size: int, context: int,
              key: mx.array) -> tuple[mx.array, mx.array]:
    """``batch_size`` random windows of ``context`` tokens, and the same windows shifted by one.

    inputs[b, t] = ids[s_b + t] and targets[b, t] = ids[s_b + t + 1] (the next token), with start
    offsets s_b drawn uniformly from ``key``: the same key gives the same batch. Both (B, T)
    int32.
    """
    if len(ids) < context + 1:
        raise ValueError(f"{len(ids)} tokens are too few for windows of context {context} "
                         "(+1 target); use a smaller context or a larger corpus")
    starts = mx.random.randint(0, len(ids) - context, (batch_size,), key=key)  # (B,)
    windows = ids[starts[:, None] + mx.arange(context + 1)].astype(mx.int32)  # (B, T + 1)
    return windows[:, :-1], windows[:, 1:]


# --------------------------------------------------------------------------------------------------
# A corpus made ready for training: tokenizer, ids, split, and a record of what it was. Chapter 6.

TOKENIZER_SPECS = "char | gpt2 | bpe:VOCAB_SIZE"


def build_tokenizer(spec: str, text: str):
    """``char`` (from the text's characters), ``gpt2`` (GPT-2's files) or ``bpe:VOCAB`` (trained
    on the text)."""
    from mlxllm.tokenizer import CharTokenizer, Tokenizer

    if spec == "char":
        return CharTokenizer.train(text)
    if spec == "gpt2":
        return Tokenizer.from_gpt2_files(get_path("gpt2-vocab"), get_path("gpt2-merges"))
    if (isinstance(spec, str) and spec.startswith("bpe:") and spec[4:].isdigit()
            and int(spec[4:]) >= 256):
        return Tokenizer.train(text, int(spec[4:]))
    raise ValueError(f"unknown tokenizer {spec!r}; use {TOKENIZER_SPECS} (VOCAB_SIZE >= 256)")


def describe_corpus(source: str | Path, path: Path | None = None) -> dict:
    """What a run trains on: the corpus's name (or absolute path) and the sha256 of its bytes
    (``path``: the file ``source`` was already resolved to)."""
    path = path or corpus_path(source)
    name = source if isinstance(source, str) and source in CORPORA else str(path.resolve())
    return {"corpus": name, "corpus_sha256": sha256_of(path)}


@dataclass
class PreparedCorpus:
    """Training and validation ids of one corpus, the tokenizer that made them, and where they
    came from."""

    train_ids: np.ndarray
    val_ids: np.ndarray
    tokenizer: object
    # {"corpus", "corpus_sha256", "tokenizer"}: recorded in checkpoints, checked on resume
    source: dict


def prepare_corpus(source: str | Path, tokenizer, val_fraction: float = 0.1) -> PreparedCorpus:
    """corpus → tokenizer (a spec such as ``"char"``, or a tokenizer) → cached ids →
    train/validation split."""
    path = corpus_path(source)  # found (and, for a named corpus, verified) once
    described = describe_corpus(source, path)
    spec = tokenizer if isinstance(tokenizer, str) else f"{type(tokenizer).__name__} (given)"
    if isinstance(tokenizer, str):
        tokenizer = build_tokenizer(tokenizer, read_text(path))
    train_ids, val_ids = split_ids(tokenize_corpus(path, tokenizer,
                                                   corpus_sha256=described["corpus_sha256"]),
                                   val_fraction)
    return PreparedCorpus(train_ids, val_ids, tokenizer, {**described, "tokenizer": spec})
