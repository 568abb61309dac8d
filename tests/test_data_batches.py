"""Tokenized corpora, the train/validation split, seeded batches, and the character tokenizer (Chapter 6)."""

import numpy as np
import mlx.core as mx
import pytest

from mlxllm import data
from mlxllm.tokenizer import CharTokenizer


def test_char_tokenizer_round_trip_and_save(tmp_path):
    tok = CharTokenizer.train("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"] and tok.vocab_size == 8
    assert tok.encode("hold") == [3, 5, 4, 1]
    assert tok.decode([3, 5, 4, 1]) == "hold" and tok.decode_bytes([7]) == b"w"
    tok.save(tmp_path / "t.json")
    assert CharTokenizer.load(tmp_path / "t.json").chars == tok.chars
    with pytest.raises(ValueError, match="'z' is not in this 8-character vocabulary"):
        tok.encode("zoo")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, 8\)"):
        tok.decode([8])
    (tmp_path / "bad.json").write_text('{"type": "bpe"}')
    with pytest.raises(ValueError, match="not a character tokenizer file"):
        CharTokenizer.load(tmp_path / "bad.json")


def test_tokenize_corpus_caches_by_corpus_and_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("abcabc\nab")
    ids = data.tokenize_corpus(corpus, CharTokenizer.train("\nabc"))
    assert ids.dtype == np.uint16 and ids.tolist() == [1, 2, 3, 1, 2, 3, 0, 1, 2]
    assert len(list((tmp_path / "cache" / "tokens").glob("corpus-*.npy"))) == 1
    # a second call reads the cache; another tokenizer or changed text gets its own file
    assert data.tokenize_corpus(corpus, CharTokenizer.train("\nabc")).tolist() == ids.tolist()
    assert data.tokenize_corpus(corpus, CharTokenizer.train("\nabcd")).tolist() == [1, 2, 3, 1, 2, 3, 0, 1, 2]
    corpus.write_text("cab")
    assert data.tokenize_corpus(corpus, CharTokenizer.train("\nabc")).tolist() == [3, 1, 2]
    assert len(list((tmp_path / "cache" / "tokens").glob("corpus-*.npy"))) == 3


def test_unknown_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*tinyshakespeare"):
        data.corpus_path("nope")


def test_split_is_the_last_tenth():
    ids = np.arange(1000)
    train, val = data.split_ids(ids)
    assert train.tolist() == list(range(900)) and val.tolist() == list(range(900, 1000))
    with pytest.raises(ValueError, match="val_fraction"):
        data.split_ids(ids, 1.5)


def test_batches_are_windows_with_targets_shifted_by_one():
    ids = mx.arange(1000)  # token i has id i, so a window's first id is its start offset
    inputs, targets = data.get_batch(ids, 6, 16, mx.random.key(3))
    assert inputs.shape == targets.shape == (6, 16) and inputs.dtype == mx.int32
    starts = np.array(inputs[:, 0])
    assert (np.array(inputs) == starts[:, None] + np.arange(16)).all()
    assert (np.array(targets) == np.array(inputs) + 1).all()
    assert starts.min() >= 0 and starts.max() + 16 <= 999
    again, _ = data.get_batch(ids, 6, 16, mx.random.key(3))
    other, _ = data.get_batch(ids, 6, 16, mx.random.key(4))
    assert mx.array_equal(inputs, again) and not mx.array_equal(inputs, other)
    with pytest.raises(ValueError, match="too few for windows of context 16"):
        data.get_batch(mx.arange(16), 2, 16, mx.random.key(0))


def test_prepare_corpus_records_what_it_read_and_splits_by_val_fraction(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "cache_dir", lambda: tmp_path / "cache")
    path = tmp_path / "text.txt"
    path.write_text("hello world, " * 100)
    prepared = data.prepare_corpus(path, "char", val_fraction=0.25)
    assert prepared.source == {"corpus": str(path.resolve()), "corpus_sha256": data.sha256_of(path),
                               "tokenizer": "char"}
    assert (len(prepared.train_ids), len(prepared.val_ids)) == (975, 325)
    assert prepared.tokenizer.decode(list(prepared.train_ids[:5])) == "hello"
    assert data.describe_corpus("tinyshakespeare")["corpus"] == "tinyshakespeare"  # named corpora by name


def test_build_tokenizer_accepts_the_specs_and_names_them_otherwise():
    assert data.build_tokenizer("char", "abca").vocab_size == 3
    assert data.build_tokenizer("bpe:258", "abab abab abab").vocab_size == 258
    with pytest.raises(ValueError, match=r"unknown tokenizer 'bpe:12'; use char \| gpt2 \| bpe:VOCAB_SIZE"):
        data.build_tokenizer("bpe:12", "text")
