"""Files written whole: a crash mid-write leaves the old file or the new one, never half of either.

A file is written beside its target under a temporary name, flushed to the disk (``fsync``), renamed
over the target (one atomic ``os.replace``), and the folder is flushed so that the rename itself
survives a power cut. Tokenizers, checkpoints, adapters, model folders and downloads all go
through here; the module imports nothing of the package. MLX's writers raise RuntimeError where
Python's raise OSError (a full disk); ``save_arrays`` makes them alike.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

import mlx.core as mx


def fsync(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (names created or renamed), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(source: str | Path, target: str | Path) -> None:
    """Rename the written file ``source`` over ``target`` (on the same disk), both flushed."""
    fsync(source)
    os.replace(source, target)
    fsync(Path(target).parent)


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; when the block ends without an error the file
    there replaces ``path`` (``replace_file``), else it is deleted. It keeps ``path``'s suffix, for
    writers that add theirs (``mx.save_safetensors``, ``np.save``)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp{path.suffix}")
    try:
        yield temporary
        replace_file(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, newlines as they are) to ``path`` as one unit."""
    with replacing(path) as temporary:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


class WriteFailed(OSError):
    """MLX could not write a file: it raises RuntimeError ('[write] Unable to write 8 bytes')."""


def save_arrays(path: str | Path, arrays: dict[str, mx.array], **metadata) -> None:
    """``mx.save_safetensors``, with MLX's RuntimeError on a full disk raised as an OSError."""
    try:
        mx.save_safetensors(str(path), arrays, **metadata)
    except RuntimeError as error:
        raise WriteFailed(f"MLX: {error}") from None


def disk_trouble(error: OSError) -> str:
    """'what went wrong); what to do' for a failed write (a full disk, no permission)."""
    if isinstance(error, WriteFailed):
        return f"{error}); free some space or fix the folder's permissions"
    what = error.strerror or str(error)
    return f"{what}); " + ("free some space" if error.errno == errno.ENOSPC else
                          "fix the folder's permissions")
