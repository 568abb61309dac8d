"""Named corpora and tokenizer files: downloaded once, checked by sha256, cached.

`get_path("tinyshakespeare")` returns a local path to the verified file. Lookup order:
1. the folder in `$MLXLLM_DATA_DIR` (a local copy, e.g. for offline CI), under its usual names;
2. the user cache (`~/Library/Caches/mlxllm` on macOS, `$XDG_CACHE_HOME/mlxllm` or `~/.cache/mlxllm` elsewhere);
3. a download into that cache (once; written to a temporary file, verified, then renamed into place).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path


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
    # Six short TinyStories (Eldan & Li 2023) separated by <|endoftext|>, from stanford-cs336/assignment1-basics.
    "tinystories_sample": DataFile(
        "tinystories_sample.txt",
        "https://raw.githubusercontent.com/stanford-cs336/assignment1-basics/main/tests/fixtures/tinystories_sample.txt",
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
    """Return `path` if its sha256 is one we accept, else raise a ValueError that says what to do."""
    actual = sha256_of(path)
    if actual not in entry.sha256:
        raise ValueError(
            f"{path} does not match the known {name!r} file (sha256 {actual}, expected "
            f"{' or '.join(entry.sha256)}). Replace it with the file from {entry.url or 'its source'}."
        )
    return path


def _download(entry: DataFile, name: str, target: Path) -> Path:
    """Download `entry` to `target` atomically; a copy with the wrong checksum is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(entry.url, timeout=60) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        _check(tmp, entry, name)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
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
            f"({entry.size:,} bytes) yourself and save it as {where}, or set MLXLLM_DATA_DIR to a folder "
            f"that contains {entry.filename}."
        ) from None
