"""Tokenizer files: our own versioned text format, GPT-2's two files, tiktoken rank files.

Built in Chapter 1, Tokenization. Our format is one UTF-8 text file, readable in an editor:

    mlxllm-tokenizer v2
    pattern	"<the split pattern as a JSON string>"
    bytes	256
    <byte value>	<token id, or - if the vocab lacks the byte>	<the byte, escaped>   (256 lines)
    merges	<n>
    <new id>	<left id>	<right id>	<left bytes, escaped>	<right bytes, escaped>
    specials	<m>
    <token id>	"<the special token as a JSON string>"
    extras	<k>
    <token id>	<bytes, escaped>                   (vocab entries no merge makes: decoded only)
    settings	{"eos_token_ids": [...], "chat_template": ..., "bos_token": ..., "eos_token": ...}
                                       (and the bpe.SETTINGS that differ from their defaults)
    checksum	<sha256 of every line above, as written>
    end

Fields are separated by tabs; bytes are escaped like Python bytes literals (\\n, \\t, \\xe2, ...),
so a tab or a newline inside a token cannot break a line (and no raw CR ever appears: a file
that went through a CRLF conversion reads the same). Version 1 files (no extras, settings or
checksum) are still read.
"""

import base64
import codecs
import gzip
import hashlib
import json
from pathlib import Path

from mlxllm.files import write_atomic

MAGIC = "mlxllm-tokenizer"
VERSION = 2
READABLE_VERSIONS = (1, 2)


def escape(token: bytes) -> str:
    """Bytes as printable ASCII, like the inside of a Python bytes literal."""
    return codecs.escape_encode(token)[0].decode("ascii")


def unescape(text: str) -> bytes:
    return codecs.escape_decode(text.encode("ascii"))[0]


def show(token: bytes) -> str:
    """A token for people: its UTF-8 text with control characters escaped (bad bytes as \\xNN)."""
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode()
                   for c in text)


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_tokenizer(path, pattern, byte_ids, merges, special_tokens, extra_tokens, settings,
                    vocab) -> None:
    lines = [f"{MAGIC} v{VERSION}", f"pattern\t{json.dumps(pattern)}", "bytes\t256"]
    lines += [f"{b}\t{'-' if token_id is None else token_id}\t{escape(bytes([b]))}"
              for b, token_id in enumerate(byte_ids)]
    lines.append(f"merges\t{len(merges)}")
    for a, b, new in merges:
        lines.append(f"{new}\t{a}\t{b}\t{escape(vocab[a])}\t{escape(vocab[b])}")
    lines.append(f"specials\t{len(special_tokens)}")
    lines += [f"{token_id}\t{json.dumps(token)}" for token, token_id in special_tokens.items()]
    lines.append(f"extras\t{len(extra_tokens)}")
    lines += [f"{token_id}\t{escape(token)}" for token_id, token in sorted(extra_tokens.items())]
    lines.append(f"settings\t{json.dumps(settings, sort_keys=True)}")
    text = "\n".join(lines) + "\n"
    write_atomic(path, f"{text}checksum\t{checksum(text)}\nend\n")


class _Lines:
    """Reads a tokenizer file line by line, turning every problem into a ValueError with a place."""

    def __init__(self, path):
        self.path = path
        try:
            text = Path(path).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path} is not an mlxllm tokenizer file (it is not UTF-8 "
                             "text)") from None
        # our writer never puts a raw CR in a line (tokens are escaped), so CRLF is only a line
        # ending
        self.lines = text.replace("\r\n", "\n").split("\n")
        self.number = 0

    def fail(self, what: str):
        raise ValueError(f"{self.path}, line {self.number}: {what}")

    def next(self, expected: str) -> str:
        if self.number >= len(self.lines) or (
            self.number == len(self.lines) - 1 and not self.lines[-1]
        ):
            raise ValueError(f"{self.path} is truncated: it ends where {expected} should be")
        line = self.lines[self.number]
        self.number += 1
        return line

    def fields(self, expected: str, count: int) -> list[str]:
        fields = self.next(expected).split("\t")
        if len(fields) != count:
            self.fail(f"expected {expected} ({count} tab-separated fields), "
                      f"got {len(fields)} fields")
        return fields

    def text_so_far(self) -> str:
        """The lines read so far, as they were written (for the checksum)."""
        return "\n".join(self.lines[: self.number]) + "\n"

    def integer(self, text: str) -> int:
        try:
            return int(text)
        except ValueError:
            self.fail(f"{text!r} is not an integer")

    def section(self, name: str) -> int:
        key, count = self.fields(f"the '{name}' section header", 2)
        if key != name:
            self.fail(f"expected the '{name}' section, found {key!r}")
        return self.integer(count)

    def json_string(self, text: str) -> str:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            self.fail(f"bad JSON string {text!r}: {error}")
        if not isinstance(value, str):
            self.fail(f"expected a JSON string, got {text!r}")
        return value

    def escaped(self, text: str) -> bytes:
        try:
            return unescape(text)
        except (ValueError, UnicodeEncodeError) as error:
            self.fail(f"bad escaped bytes {text!r}: {error}")


def read_tokenizer(path, more_settings=frozenset()) -> dict:
    """The `Tokenizer` constructor's arguments from a file written by `write_tokenizer` (v1 or
    v2); `more_settings` names the settings beyond the chat ones."""
    reader = _Lines(path)
    header = reader.next("the header")
    versions = {f"{MAGIC} v{v}": v for v in READABLE_VERSIONS}
    if header not in versions:
        if header.startswith(f"{MAGIC} v"):
            reader.fail(f"format {header[len(MAGIC) + 1:]!r} is not supported (this mlxllm reads "
                        f"{', '.join(f'v{v}' for v in READABLE_VERSIONS)}); a newer mlxllm wrote "
                        "it?")
        reader.fail(f"not an mlxllm tokenizer file: expected the header {MAGIC!r} v{VERSION}, "
                    f"got {header[:40]!r}")
    version = versions[header]
    key, pattern = reader.fields("the pattern", 2)
    if key != "pattern":
        reader.fail(f"expected the 'pattern' line, found {key!r}")
    pattern = reader.json_string(pattern)

    if reader.section("bytes") != 256:
        reader.fail("the 'bytes' section must list 256 bytes")
    byte_ids = []
    for b in range(256):
        value, token_id, token = reader.fields(f"byte {b}", 3)
        if reader.integer(value) != b or reader.escaped(token) != bytes([b]):
            reader.fail(f"expected the line of byte {b}")
        byte_ids.append(None if token_id == "-" and version > 1 else reader.integer(token_id))
    vocab = {token_id: bytes([b]) for b, token_id in enumerate(byte_ids) if token_id is not None}

    merges = []
    for rank in range(reader.section("merges")):
        new, a, b, left, right = reader.fields(f"merge {rank}", 5)
        new, a, b = reader.integer(new), reader.integer(a), reader.integer(b)
        if vocab.get(a) != reader.escaped(left) or vocab.get(b) != reader.escaped(right):
            reader.fail(f"merge {rank}: ids {a}, {b} do not match the bytes {left!r}, {right!r}")
        vocab[new] = vocab[a] + vocab[b]
        merges.append((a, b, new))

    special_tokens = {}
    for _ in range(reader.section("specials")):
        token_id, token = reader.fields("a special token", 2)
        special_tokens[reader.json_string(token)] = reader.integer(token_id)
    fields = dict(pattern=pattern, byte_ids=byte_ids, merges=merges, special_tokens=special_tokens)
    if version > 1:
        extra_tokens = {}
        for _ in range(reader.section("extras")):
            token_id, token = reader.fields("an extra token", 2)
            extra_tokens[reader.integer(token_id)] = reader.escaped(token)
        key, settings = reader.fields("the 'settings' line", 2)
        if key != "settings":
            reader.fail(f"expected the 'settings' line, found {key!r}")
        try:
            settings = json.loads(settings)
        except json.JSONDecodeError as error:
            reader.fail(f"bad JSON settings: {error}")
        known = {"eos_token_ids", "chat_template", "bos_token", "eos_token", *more_settings}
        if not isinstance(settings, dict) or not set(settings) <= known:
            reader.fail(f"the settings must be a JSON object with keys among {sorted(known)}")
        written = reader.text_so_far()
        key, expected = reader.fields("the 'checksum' line", 2)
        if key != "checksum":
            reader.fail(f"expected the 'checksum' line, found {key!r}")
        if checksum(written) != expected:
            raise ValueError(f"{path} is damaged: its content does not match its sha256 checksum "
                             "(was it edited or cut?); save the tokenizer again from its source")
        fields.update(extra_tokens=extra_tokens, **settings)
    if reader.next("the 'end' line") != "end":
        reader.fail("expected the 'end' line (more lines than the section counts say?)")
    return fields


def vocab_listing(byte_ids, merges, special_tokens, extra_tokens, vocab) -> str:
    """One line per token, in id order: id, the token's text, how it was made."""
    made = {token_id: f"byte 0x{b:02x}" for b, token_id in enumerate(byte_ids)
            if token_id is not None}
    made.update({token_id: "extra (decoded only)" for token_id in extra_tokens})
    for a, b, new in merges:
        made[new] = f"[{show(vocab[a])}] + [{show(vocab[b])}]"
    for token, token_id in special_tokens.items():
        made[token_id] = "special"
    return "".join(f"{token_id}\t[{show(vocab[token_id])}]\t{made[token_id]}\n"
                   for token_id in sorted(vocab))


def gpt2_byte_to_unicode() -> dict[int, str]:
    """GPT-2's files write each byte as a printable character: printable bytes as themselves,
    the others shifted to U+0100 and up (so a space is 'Ġ', a newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    shifted = (b for b in range(256) if b not in mapping)
    for n, b in enumerate(shifted):
        mapping[b] = chr(256 + n)
    return mapping


def read_gpt2_files(encoder_json, vocab_bpe):
    """(byte_ids, merges, special_tokens) from GPT-2's `encoder.json` and `vocab.bpe`."""
    try:
        encoder = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{encoder_json} is not GPT-2's encoder.json: {error}") from None
    if not isinstance(encoder, dict):
        raise ValueError(f"{encoder_json} is not GPT-2's encoder.json (expected a JSON object)")
    byte_to_unicode = gpt2_byte_to_unicode()
    try:
        byte_ids = [encoder[byte_to_unicode[b]] for b in range(256)]
    except KeyError as error:
        raise ValueError(f"{encoder_json} has no token for the byte {error.args[0]!r}") from None
    merges = []
    try:
        lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as error:
        raise ValueError(f"{vocab_bpe} is not GPT-2's vocab.bpe / merges.txt (not UTF-8 text: "
                         f"{error})") from None
    for number, line in enumerate(lines, start=1):
        # CRLF line ends; no token holds a raw CR (byte 13 is written 'č')
        line = line.removesuffix("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue  # the official file starts with '#version: 0.2'; copies often do not
        parts = line.split(" ")
        if len(parts) != 2:
            raise ValueError(f"{vocab_bpe}, line {number}: expected two tokens, got {line!r}")
        try:
            merges.append((encoder[parts[0]], encoder[parts[1]], encoder[parts[0] + parts[1]]))
        except KeyError as error:
            raise ValueError(
                f"{vocab_bpe}, line {number}: token {error.args[0]!r} is not in {encoder_json}"
            ) from None
    special_tokens = {"<|endoftext|>": encoder.get("<|endoftext|>", 50256)}
    # every other token of encoder.json must be made by a merge: if not, the merges file is cut
    # short
    made = set(byte_ids) | {new for _, _, new in merges} | set(special_tokens.values())
    if unmade := [token for token, token_id in encoder.items() if token_id not in made]:
        raise ValueError(
            f"{vocab_bpe} has {len(merges)} merges, but {len(unmade)} tokens of {encoder_json} "
            f"(e.g. {unmade[:3]}) are made by none of them: the merges file is truncated or "
            "belongs to another vocabulary; download both files again"
        )
    return byte_ids, merges, special_tokens


def read_tiktoken_ranks(path) -> dict[bytes, int]:
    """bytes -> rank from a tiktoken file: lines of '<base64 token> <rank>' (gzip allowed)."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    ranks = {}
    for number, line in enumerate(data.splitlines(), start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise ValueError(f"{path}, line {number}: expected '<base64 token> <rank>', "
                             f"got {line[:60]!r}") from None
    if not ranks:
        raise ValueError(f"{path} holds no tokens")
    return ranks
