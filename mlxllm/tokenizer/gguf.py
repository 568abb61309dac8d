"""A GGUF file's tokenizer, from its metadata (the `tokenizer.ggml.*` and `tokenizer.chat_template`
keys).

Built in Chapter 7, Pretrained weights. llama.cpp stores a byte-level BPE like tokenizer.json does:
the tokens as GPT-2-style printable strings (in id order), the merges as "left right" lines, a type
per token and the name of the pre-tokenizer ("pre"), which we map to one of our split patterns.
"""

from . import chat
from .bpe import Tokenizer
from .hf import tokenizer_from_vocab
from .patterns import (
    GPT2_DIGITS_SPLIT_PATTERN,
    GPT2_SPLIT_PATTERN,
    LLAMA3_SPLIT_PATTERN,
    QWEN2_SPLIT_PATTERN,
)

# llama.cpp's pre-tokenizer names (llama-vocab.cpp) -> the regex it applies
PRE_TOKENIZERS = {
    "default": GPT2_SPLIT_PATTERN,
    "gpt-2": GPT2_SPLIT_PATTERN,
    # = tokenizer.json's Sequence[Digits(individual_digits), ByteLevel]
    "smollm": GPT2_DIGITS_SPLIT_PATTERN,
    "llama-bpe": LLAMA3_SPLIT_PATTERN,
    "qwen2": QWEN2_SPLIT_PATTERN,
}
# llama.cpp token types that are special tokens (1 is normal, 6 a byte)
CONTROL, USER_DEFINED = 3, 4


def _value(metadata: dict, key: str):
    """A metadata value as plain Python (mx.load gives scalars and the token types as mx.array)."""
    value = metadata.get(key)
    return value.tolist() if hasattr(value, "tolist") else value


def tokenizer_from_gguf(metadata: dict) -> Tokenizer:
    """Our Tokenizer from GGUF metadata (as `mx.load(path, return_metadata=True)[1]` gives it).
    Built in Chapter 7.

    Control and user-defined tokens become special tokens; `eos_token_ids` are
    tokenizer.ggml.eos_token_id plus the chat template's end-of-turn token (<|im_end|> for ChatML).
    ValueError for what we cannot read.
    """
    model = _value(metadata, "tokenizer.ggml.model")
    if model is None:
        raise ValueError("this GGUF file has no tokenizer (no tokenizer.ggml.model in its "
                         "metadata); load a tokenizer from the model's Hugging Face files instead")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model {model!r} is not supported: only byte-level "
                         "BPE ('gpt2'; SmolLM, Qwen2, LLaMA 3) is; SentencePiece ('llama') "
                         "tokenizers are not")
    pre = _value(metadata, "tokenizer.ggml.pre") or "default"
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported; "
                         f"known: {sorted(PRE_TOKENIZERS)}")
    tokens, merges = (_value(metadata, "tokenizer.ggml.tokens"),
                      _value(metadata, "tokenizer.ggml.merges"))
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ValueError("GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges "
                         "(lists of str)")
    types = _value(metadata, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"GGUF metadata has {len(tokens)} tokens but {len(types)} token types")
    special_tokens = {token: i for i, (token, kind) in enumerate(zip(tokens, types))
                      if kind in (CONTROL, USER_DEFINED)}
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF tokenizer.ggml.tokens lists a token twice")

    template = _value(metadata, "tokenizer.chat_template")
    ends = {}
    for name in ("bos", "eos"):
        token_id = _value(metadata, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ValueError(f"GGUF tokenizer.ggml.{name}_token_id {token_id} is not one of the "
                             f"{len(tokens)} tokens")
        ends[name] = token_id
    eos_ids = [ends["eos"]] if ends["eos"] is not None else []
    eos_ids += chat.end_of_turn_ids(template, special_tokens)
    return tokenizer_from_vocab(
        vocab, merges, special_tokens, PRE_TOKENIZERS[pre], "GGUF metadata",
        eos_token_ids=eos_ids,
        chat_template=template if isinstance(template, str) else None,
        bos_token=None if ends["bos"] is None else tokens[ends["bos"]],
        eos_token=None if ends["eos"] is None else tokens[ends["eos"]],
    )
