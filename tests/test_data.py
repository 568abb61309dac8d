"""mlxllm.data: local copies, the cache, checksums, and the errors a user sees. No network."""

import dataclasses
import hashlib
import io
import urllib.error
from pathlib import Path

import pytest

from mlxllm import data

SAMPLE = b"Once upon a time there was a tiny model.\n"


@pytest.fixture
def sample_entry(monkeypatch):
    """Register a small fake corpus whose checksum we know independently."""
    entry = data.DataFile(
        "sample.txt", "https://example.invalid/sample.txt", (hashlib.sha256(SAMPLE).hexdigest(),), len(SAMPLE)
    )
    monkeypatch.setitem(data.CORPORA, "sample", entry)
    return entry


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No MLXLLM_DATA_DIR, an empty cache under tmp_path, and a network that is down."""
    monkeypatch.delenv("MLXLLM_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    return tmp_path


def test_data_dir_copy_is_used_and_verified(isolated, monkeypatch):
    (isolated / "gpt2").mkdir()
    # The merges file with a `#version` header and the one without it have different checksums;
    # a file that is neither must be rejected even under an accepted name.
    (isolated / "gpt2" / "vocab.bpe").write_bytes(b"#version: 0.2\nnot the real merges\n")
    monkeypatch.setenv("MLXLLM_DATA_DIR", str(isolated))
    with pytest.raises(ValueError, match="does not match the known 'gpt2-merges' file"):
        data.get_path("gpt2-merges")


def test_data_dir_alternative_names(isolated, monkeypatch, sample_entry):
    monkeypatch.setitem(data.CORPORA, "sample", dataclasses.replace(sample_entry, local_names=("input.txt",)))
    (isolated / "input.txt").write_bytes(SAMPLE)
    monkeypatch.setenv("MLXLLM_DATA_DIR", str(isolated))
    assert data.get_path("sample") == isolated / "input.txt"


def test_shared_data_dir_if_present(monkeypatch):
    """The real files in MLXLLM_DATA_DIR (as CI sets it) pass their checksums and have the documented sizes."""
    folder = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not folder.is_dir():
        pytest.skip("no ../shared/data beside the repository")
    monkeypatch.setenv("MLXLLM_DATA_DIR", str(folder))
    assert data.get_path("tinyshakespeare").stat().st_size == 1_115_394
    assert data.get_path("gpt2-vocab").stat().st_size == 1_042_301
    merges = data.get_path("gpt2-merges")
    assert merges.read_text(encoding="utf-8").splitlines()[0] == "Ġ t"  # the header-less copy
    assert data.get_path("tinystories_sample").read_text(encoding="utf-8").count("<|endoftext|>") == 5


def test_download_once_then_cached(isolated, monkeypatch, sample_entry):
    calls = []

    def fake_urlopen(url, timeout):
        calls.append(url)
        return io.BytesIO(SAMPLE)

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    first = data.get_path("sample")
    second = data.get_path("sample")
    assert first == second == isolated / "cache" / "sample.txt"
    assert first.read_bytes() == SAMPLE
    assert calls == ["https://example.invalid/sample.txt"]  # downloaded exactly once
    assert [p.name for p in first.parent.iterdir()] == ["sample.txt"]  # no temporary file left


def test_download_with_wrong_checksum_is_deleted(isolated, monkeypatch, sample_entry):
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(b"tampered"))
    with pytest.raises(ValueError, match="does not match"):
        data.get_path("sample")
    assert list((isolated / "cache").iterdir()) == []


def test_corrupt_cache_is_reported(isolated, sample_entry):
    (isolated / "cache").mkdir()
    (isolated / "cache" / "sample.txt").write_bytes(SAMPLE[:-1])
    with pytest.raises(ValueError, match="Replace it with the file from https://example.invalid/sample.txt"):
        data.get_path("sample")


def test_offline_and_not_cached_says_what_to_put_where(isolated):
    with pytest.raises(FileNotFoundError) as info:
        data.get_path("tinyshakespeare")
    message = str(info.value)
    assert "network is unreachable" in message
    assert "karpathy/char-rnn" in message and "1,115,394 bytes" in message
    assert str(isolated / "cache" / "tinyshakespeare.txt") in message
    assert "MLXLLM_DATA_DIR" in message


def test_offline_with_data_dir_names_the_data_dir(isolated, monkeypatch):
    monkeypatch.setenv("MLXLLM_DATA_DIR", str(isolated / "mydata"))
    with pytest.raises(FileNotFoundError, match=r"save it as .*mydata/gpt2/gpt2_vocab.json \(MLXLLM_DATA_DIR\)"):
        data.get_path("gpt2-vocab")


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="unknown data file 'shakespeare'.*gpt2-merges, gpt2-vocab, tinyshakespeare"):
        data.get_path("shakespeare")


def test_cache_dir_follows_platform(monkeypatch, tmp_path):
    monkeypatch.setattr(data.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert data.cache_dir() == tmp_path / "mlxllm"
    monkeypatch.setattr(data.sys, "platform", "darwin")
    assert data.cache_dir() == Path.home() / "Library" / "Caches" / "mlxllm"
