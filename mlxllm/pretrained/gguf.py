"""GGUF files (llama.cpp's format) into ``TransformerLM``, quantized tensors kept quantized.

``mx.load`` reads a GGUF file: F32/F16/BF16 tensors as they are, Q4_0/Q4_1/Q8_0 as MLX's affine
quantized triples (uint32 packed ``weight``, ``scales``, ``biases``; 32 weights per group), plus
the metadata (architecture, sizes, tokenizer). The file's header is checked first in Python, so a
damaged file gets a clear error instead of crashing MLX's reader.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import mlx.core as mx

from mlxllm.model import TransformerLM
from mlxllm.pretrained.families import FAMILIES, rename
from mlxllm.pretrained.hf import build_model, dtype_of

# GGML tensor types we read: type id → (name, bytes per block, weights per block)
TENSOR_TYPES = {0: ("F32", 4, 1), 1: ("F16", 2, 1), 30: ("BF16", 2, 1), 2: ("Q4_0", 18, 32),
                3: ("Q4_1", 20, 32), 8: ("Q8_0", 34, 32)}
# metadata value type id → struct format of a scalar (8: string, 9: array are read separately)
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}


class _Header:
    """A bounds-checked reader over the bytes of a GGUF header."""

    def __init__(self, data, path: Path):
        self.data, self.path, self.at = data, path, 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.at + size > len(self.data):
            raise ValueError(f"{self.path} ends inside its GGUF header (at byte {self.at}); "
                             "the file is truncated or not a GGUF file")
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += size
        return value

    def string(self) -> str:
        length = self.take("<Q")
        if self.at + length > len(self.data):
            raise ValueError(f"{self.path}: a GGUF string of {length} bytes runs past the end of "
                             "the file")
        self.at += length
        return bytes(self.data[self.at - length:self.at]).decode("utf-8", errors="replace")

    def value(self, kind: int, depth: int = 0):
        if kind in SCALARS:
            return self.take(SCALARS[kind])
        if kind == 8:
            return self.string()
        if kind == 9 and depth == 0:
            item, count = self.take("<I"), self.take("<Q")
            if count > len(self.data) - self.at:
                raise ValueError(f"{self.path}: a GGUF array claims {count} items, more than the "
                                 "file holds")
            for _ in range(count):
                self.value(item, depth + 1)
            return None
        raise ValueError(f"{self.path}: unknown GGUF metadata value type {kind}; "
                         "the file is damaged")


def check_gguf(path: str | Path) -> None:
    """ValueError unless ``path`` is a readable GGUF v2/v3 file whose tensors we support and which
    it holds whole.

    Built in Chapter 7, Pretrained weights.
    """
    path = Path(path)
    with open(path, "rb") as file:
        if path.stat().st_size < 24 or file.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (it does not start with the bytes 'GGUF')")
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            header = _Header(data, path)
            header.at = 4
            if (version := header.take("<I")) not in (2, 3):
                raise ValueError(f"{path} is GGUF version {version}; versions 2 and 3 are "
                                 "supported")
            n_tensors, n_values = header.take("<Q"), header.take("<Q")
            if n_tensors > len(data) // 16 or n_values > len(data) // 12:
                raise ValueError(f"{path}: its header claims {n_tensors} tensors and {n_values} "
                                 "metadata entries, more than the file can hold; the file is "
                                 "damaged")
            alignment = 32
            for _ in range(n_values):
                key, kind = header.string(), header.take("<I")
                value = header.value(kind)
                if key == "general.alignment":
                    alignment = value
            if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
                raise ValueError(f"{path}: general.alignment={alignment!r} is not a power of two")
            tensors = []
            for _ in range(n_tensors):
                name, n_dims = header.string(), header.take("<I")
                if not 1 <= n_dims <= 4:
                    raise ValueError(f"{path}: tensor {name!r} has {n_dims} dimensions; "
                                     "the file is damaged")
                shape = [header.take("<Q") for _ in range(n_dims)]
                kind, offset = header.take("<I"), header.take("<Q")
                tensors.append((name, shape, kind, offset))
            # tensor data begins at the next aligned byte
            start = -(-header.at // alignment) * alignment
            for name, shape, kind, offset in tensors:
                if kind not in TENSOR_TYPES:
                    known = ", ".join(t[0] for t in TENSOR_TYPES.values())
                    raise ValueError(f"{path}: tensor {name!r} has GGML type {kind}; supported "
                                     f"types are {known} (re-quantize the model to one of them)")
                _, block_bytes, block = TENSOR_TYPES[kind]
                count = 1
                for size in shape:
                    count *= size
                if (shape[0] % block or count == 0
                        or start + offset + count // block * block_bytes > len(data)):
                    raise ValueError(f"{path}: tensor {name!r} {shape} does not fit in the file; "
                                     "it is truncated or damaged, download it again")


def read_gguf(path: str | Path) -> tuple[dict[str, mx.array], dict]:
    """(tensors, metadata) of a checked GGUF file, as ``mx.load`` returns them."""
    check_gguf(path)
    try:
        return mx.load(str(path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None


def model_from_gguf(path: str | Path, dtype: mx.Dtype | str | None = None,
                    gguf: tuple[dict, dict] | None = None) -> TransformerLM:
    """The model of a GGUF file (``load_pretrained`` without the tokenizer). Built in Chapter 7.

    ``dtype=None`` keeps quantized layers quantized; a dtype dequantizes them and casts everything.
    ``gguf``: the (tensors, metadata) of ``read_gguf`` when the caller has them already.
    """
    dtype = dtype_of(dtype)
    weights, metadata = gguf or read_gguf(path)
    architecture = metadata.get("general.architecture")
    family = next((f for f in FAMILIES.values() if f.config_from_gguf and f.name == architecture),
                  None)
    if family is None:
        readable = [name for name, f in FAMILIES.items() if f.config_from_gguf]
        raise ValueError(f"{path}: GGUF architecture {architecture!r} is not supported; "
                         f"supported: {readable}")
    try:
        config = family.config_from_gguf(metadata, set(weights))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    # unknown keys: reported as they are
    source = {rename(key, family.gguf_names) or key: key for key in weights}
    weights = {ours: weights[key] for ours, key in source.items()}
    return build_model(config, family.sanitize_gguf(weights, config), source, dtype, path)
