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

# llama.cpp's pre-tokenizer names (llama-vocab.cpp) -> the regex it applies. "default" (or no name)
# is not here: llama.cpp then splits with regexes of its own, unlike any tokenizer.json.
PRE_TOKENIZERS = {
    "gpt-2": GPT2_SPLIT_PATTERN,
    # = tokenizer.json's Sequence[Digits(individual_digits), ByteLevel]
    "smollm": GPT2_DIGITS_SPLIT_PATTERN,
    "llama-bpe": LLAMA3_SPLIT_PATTERN,
    "llama3": LLAMA3_SPLIT_PATTERN,
    "llama-v3": LLAMA3_SPLIT_PATTERN,
    "qwen2": QWEN2_SPLIT_PATTERN,
}
# llama.cpp's LLaMA 3 pre-tokenizers look whole chunks up (ignore_merges) and add a BOS by default
LLAMA3_PRE = {"llama-bpe", "llama3", "llama-v3"}
# llama.cpp token types that are special tokens (1 is normal, 5 unused, 6 a byte)
UNKNOWN, CONTROL, USER_DEFINED = 2, 3, 4
# keys llama.cpp reads only for other tokenizer models (SentencePiece, Unigram, WordPiece) or that
# name ids without changing how text is encoded
NO_EFFECT_ON_BPE = {"scores", "token_type_count", "add_space_prefix", "remove_extra_whitespaces",
                    "precompiled_charsmap", "unknown_token_id", "seperator_token_id",
                    "padding_token_id", "cls_token_id", "mask_token_id", "prefix_token_id",
                    "suffix_token_id", "middle_token_id", "fim_pre_token_id", "fim_suf_token_id",
                    "fim_mid_token_id", "fim_pad_token_id", "fim_rep_token_id", "fim_sep_token_id"}
USED = {"model", "pre", "tokens", "token_type", "merges", "bos_token_id", "eos_token_id",
        "eot_token_id", "eom_token_id", "add_bos_token", "add_eos_token", "add_sep_token"}


def _value(metadata: dict, key: str):
    """A metadata value as plain Python (mx.load gives scalars and the token types as mx.array)."""
    value = metadata.get(key)
    return value.tolist() if hasattr(value, "tolist") else value


def _check_keys(metadata: dict) -> None:
    """Every tokenizer.ggml.* key is one we use or one that cannot change ids; ValueError names
    the others."""
    keys = {key.removeprefix("tokenizer.ggml.") for key in metadata
            if key.startswith("tokenizer.ggml.")}
    if unknown := sorted(keys - USED - NO_EFFECT_ON_BPE):
        raise ValueError(f"GGUF tokenizer.ggml.{unknown[0]} is not known to us; it may change "
                         "how llama.cpp encodes text, so the file is refused")
    if _value(metadata, "tokenizer.ggml.add_sep_token"):
        raise ValueError("GGUF tokenizer.ggml.add_sep_token is true, which we do not honour")
    name = str(_value(metadata, "general.name") or "").lower()
    if "phi-3" in name or "phi3" in name:
        raise ValueError(f"GGUF general.name {name!r}: llama.cpp strips the spaces after this "
                         "model's special tokens (rstrip), which we do not do")


def tokenizer_from_gguf(metadata: dict) -> Tokenizer:
    """Our Tokenizer from GGUF metadata (as `mx.load(path, return_metadata=True)[1]` gives it).
    Built in Chapter 7.

    The ids are llama.cpp's: control, user-defined and unknown-type tokens become special tokens,
    tokenizer.ggml.add_bos_token / add_eos_token give `prefix_ids` / `suffix_ids` (for
    ``encode(..., add_special_tokens=True)``); `eos_token_ids` are eos, eot and eom plus the chat
    template's end-of-turn token. ValueError for what we cannot read, naming the key.
    """
    model = _value(metadata, "tokenizer.ggml.model")
    if model is None:
        raise ValueError("this GGUF file has no tokenizer (no tokenizer.ggml.model in its "
                         "metadata); load a tokenizer from the model's Hugging Face files instead")
    if model != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model {model!r} is not supported: only byte-level "
                         "BPE ('gpt2'; SmolLM, Qwen2, LLaMA 3) is; SentencePiece ('llama') "
                         "tokenizers are not")
    pre = _value(metadata, "tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZERS:
        raise ValueError(f"GGUF tokenizer.ggml.pre {pre!r} is not supported; "
                         f"known: {sorted(PRE_TOKENIZERS)}")
    _check_keys(metadata)
    tokens, merges = (_value(metadata, "tokenizer.ggml.tokens"),
                      _value(metadata, "tokenizer.ggml.merges"))
    if not isinstance(tokens, list) or not isinstance(merges, list):
        raise ValueError("GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges "
                         "(lists of str)")
    types = _value(metadata, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ValueError(f"GGUF metadata has {len(tokens)} tokens but {len(types)} token types")
    special_tokens = {token: i for i, (token, kind) in enumerate(zip(tokens, types))
                      if kind in (UNKNOWN, CONTROL, USER_DEFINED)}
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("GGUF tokenizer.ggml.tokens lists a token twice")

    template = _value(metadata, "tokenizer.chat_template")
    ends = {}
    for name in ("bos", "eos", "eot", "eom"):
        token_id = _value(metadata, f"tokenizer.ggml.{name}_token_id")
        if token_id is not None and not 0 <= token_id < len(tokens):
            raise ValueError(f"GGUF tokenizer.ggml.{name}_token_id {token_id} is not one of the "
                             f"{len(tokens)} tokens")
        ends[name] = token_id
    added = {}
    for name, default in (("bos", pre in LLAMA3_PRE), ("eos", False)):
        add = _value(metadata, f"tokenizer.ggml.add_{name}_token")
        if add if add is not None else default:
            if ends[name] is None:  # llama.cpp would guess id 11
                raise ValueError(f"GGUF tokenizer.ggml.add_{name}_token is true (or the default "
                                 f"of pre {pre!r}), but tokenizer.ggml.{name}_token_id is not set")
            added[name] = [ends[name]]
    eos_ids = [ends[name] for name in ("eos", "eot", "eom") if ends[name] is not None]
    eos_ids += chat.end_of_turn_ids(template, special_tokens)
    return tokenizer_from_vocab(
        vocab, merges, special_tokens, PRE_TOKENIZERS[pre], "GGUF metadata",
        eos_token_ids=eos_ids,
        chat_template=template if isinstance(template, str) else None,
        bos_token=None if ends["bos"] is None else tokens[ends["bos"]],
        eos_token=None if ends["eos"] is None else tokens[ends["eos"]],
        ignore_merges=pre in LLAMA3_PRE, missing_bytes="split",
        prefix_ids=added.get("bos", []), suffix_ids=added.get("eos", []),
    )
