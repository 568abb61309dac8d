"""Hugging Face tokenizer files in and out: tokenizer.json, vocab.json + merges.txt, and a folder's
chat settings.

Built in Chapter 7, Pretrained weights. A byte-level BPE tokenizer.json writes its vocab and merges
with GPT-2's byte -> printable character map; its pre-tokenizer becomes one of our split patterns.
"""

import json
from pathlib import Path

from mlxllm.files import write_atomic

from . import chat, files
from .bpe import Tokenizer
from .files import gpt2_byte_to_unicode
from .patterns import GPT2_DIGITS_SPLIT_PATTERN, GPT2_SPLIT_PATTERN


def _split_pattern(pre_tokenizer: dict | None) -> str:
    """The split regex equivalent to a byte-level tokenizer.json pre-tokenizer;
    ValueError for others."""
    steps = (pre_tokenizer.get("pretokenizers", [])
             if pre_tokenizer and pre_tokenizer.get("type") == "Sequence"
             else [pre_tokenizer or {}])
    kinds = [step.get("type") for step in steps]
    if (kinds == ["ByteLevel"] and steps[0].get("use_regex", True)
            and not steps[0].get("add_prefix_space")):
        return GPT2_SPLIT_PATTERN
    if (kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)):
        return GPT2_DIGITS_SPLIT_PATTERN
    if (kinds == ["Split", "ByteLevel"] and "Regex" in steps[0]["pattern"]
            and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and not steps[1].get("use_regex", True)):
        # the text between matches is kept (Isolated), as our Splitter does
        return steps[0]["pattern"]["Regex"]
    if "Metaspace" in kinds:
        raise ValueError("this is a SentencePiece-style tokenizer (Metaspace pre-tokenizer); only "
                         "byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2 style) are supported")
    raise ValueError(f"unsupported tokenizer.json pre-tokenizer {kinds}: expected ByteLevel, "
                     "[Digits, ByteLevel] or [Split(regex), ByteLevel]")


def tokenizer_from_vocab(
    vocab: dict[str, int], merges: list, special_tokens: dict[str, int], pattern: str, source: str,
    **settings
) -> Tokenizer:
    """A Tokenizer from GPT-2-style printable token strings (tokenizer.json and GGUF share this).

    A byte missing from the vocab stays missing (encode drops it, as `tokenizers` does); vocab
    entries that are neither bytes, merges nor specials are kept for decoding only. ValueError names
    `source`.
    """
    byte_to_char = gpt2_byte_to_unicode()
    char_to_byte = {char: b for b, char in byte_to_char.items()}
    encoder = {token: i for token, i in vocab.items() if token not in special_tokens}
    byte_ids = [encoder.get(byte_to_char[b]) for b in range(256)]
    merge_ids = []
    try:
        for rank, merge in enumerate(merges):
            left, right = merge.split(" ") if isinstance(merge, str) else merge
            merge_ids.append((encoder[left], encoder[right], encoder[left + right]))
    except KeyError as error:
        raise ValueError(f"{source}: merge {rank} uses the token {error.args[0]!r}, which is not "
                         "in the vocab; not a byte-level BPE, or a damaged file") from None
    except ValueError:
        raise ValueError(f"{source}: merge {rank} is {merge!r}, not two tokens") from None
    made = {i for i in byte_ids if i is not None} | {new for _, _, new in merge_ids}
    extra_tokens = {}
    for token, i in encoder.items():
        if i not in made:
            try:
                extra_tokens[i] = bytes(char_to_byte[char] for char in token)
            except KeyError:
                raise ValueError(f"{source}: vocab token {token!r} has characters outside GPT-2's "
                                 "byte map; not a byte-level BPE vocabulary") from None
    try:
        return Tokenizer(merge_ids, pattern=pattern, special_tokens=special_tokens,
                         byte_ids=byte_ids, extra_tokens=extra_tokens, **settings)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _read_json(path: Path) -> dict:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}); download it again") from None
    if not isinstance(spec, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(spec).__name__}")
    return spec


def tokenizer_from_json(path: str | Path, **settings) -> Tokenizer:
    """Our ``Tokenizer`` from a byte-level BPE tokenizer.json (GPT-2, SmolLM, Qwen2 style).
    Built in Chapter 7.

    Added tokens become special tokens. Normalizers and SentencePiece-style tokenizers are refused
    with ValueError. `settings` (eos_token_ids, chat_template, ...) go to the Tokenizer.
    """
    return tokenizer_from_spec(_read_json(Path(path)), path, **settings)


def _added_tokens(spec: dict) -> dict[str, int]:
    return {token["content"]: token["id"] for token in spec.get("added_tokens", [])}


def tokenizer_from_spec(spec: dict, path, **settings) -> Tokenizer:
    """``tokenizer_from_json`` for an already parsed tokenizer.json
    (``path`` names it in errors)."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(f"{path}: tokenizer model {model.get('type')!r} is not supported "
                         "(only byte-level BPE; SentencePiece Unigram and WordPiece tokenizers are "
                         "not)")
    if (model.get("byte_fallback") or model.get("continuing_subword_prefix")
            or model.get("end_of_word_suffix")):
        raise ValueError(f"{path}: a SentencePiece-style BPE (byte_fallback / subword prefixes) is "
                         "not supported; only byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2 "
                         "style) are")
    if spec.get("normalizer"):
        raise ValueError(f"{path}: the tokenizer normalizes text first "
                         f"({spec['normalizer'].get('type')}), which our Tokenizer does not do")
    try:
        pattern = _split_pattern(spec.get("pre_tokenizer"))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    return tokenizer_from_vocab(model.get("vocab", {}), model.get("merges", []),
                                _added_tokens(spec), pattern, str(path), **settings)


def tokenizer_to_json(tokenizer: Tokenizer) -> dict:
    """The tokenizer.json of a Tokenizer (the inverse of ``tokenizer_from_json``)."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    if tokenizer.pattern == GPT2_SPLIT_PATTERN:
        pre_tokenizer = byte_level
    elif tokenizer.pattern == GPT2_DIGITS_SPLIT_PATTERN:
        pre_tokenizer = {"type": "Sequence",
                         "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                           byte_level]}
    else:
        split = {"type": "Split", "pattern": {"Regex": tokenizer.pattern}, "behavior": "Isolated",
                 "invert": False}
        pre_tokenizer = {"type": "Sequence",
                         "pretokenizers": [split, {**byte_level, "use_regex": False}]}
    byte_to_char = gpt2_byte_to_unicode()
    specials = tokenizer.special_tokens
    special_ids = set(specials.values())
    as_text = {i: "".join(byte_to_char[b] for b in token) for i, token in tokenizer.vocab.items()
               if i not in special_ids}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": token, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for token, i in specials.items()],
        "normalizer": None, "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False,
                  "vocab": {text: i for i, text in sorted(as_text.items())},
                  "merges": [[as_text[a], as_text[b]] for a, b, _ in tokenizer.merge_ids]},
    }


def _token_text(value) -> str | None:
    """tokenizer_config.json writes a token as "text" or as {"content": "text", ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _chat_template(config: dict, folder: Path) -> str | None:
    """chat_template.jinja, else tokenizer_config.json's chat_template (a str, or named templates:
    "default")."""
    if (folder / "chat_template.jinja").exists():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    template = config.get("chat_template")
    # [{"name": "default", "template": ...}, {"name": "tool_use", ...}]
    if isinstance(template, list):
        named = {entry.get("name"): entry.get("template") for entry in template
                 if isinstance(entry, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


def folder_settings(folder: str | Path, special_tokens: dict[str, int]) -> dict:
    """The Tokenizer settings a Hugging Face folder gives: chat template, bos/eos token text,
    eos ids."""
    folder = Path(folder)
    config = (_read_json(folder / "tokenizer_config.json")
              if (folder / "tokenizer_config.json").exists() else {})
    template = _chat_template(config, folder)
    bos_token, eos_token = (_token_text(config.get("bos_token")),
                            _token_text(config.get("eos_token")))
    eos_ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        if (folder / name).exists():
            value = _read_json(folder / name).get("eos_token_id")
            eos_ids += ([value] if isinstance(value, int)
                        else [i for i in value or [] if isinstance(i, int)])
    if eos_token in special_tokens:
        eos_ids.append(special_tokens[eos_token])
    eos_ids += chat.end_of_turn_ids(template, special_tokens)
    return dict(chat_template=template, bos_token=bos_token, eos_token=eos_token,
                eos_token_ids=eos_ids)


def tokenizer_from_hf(folder: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint folder: tokenizer.json, else GPT-2's vocab.json + merges.txt,
    with the chat template and end-of-sequence ids of its config files. Built in Chapter 7."""
    folder = Path(folder)
    if (folder / "tokenizer.json").exists():
        spec = _read_json(folder / "tokenizer.json")
        settings = folder_settings(folder, _added_tokens(spec))
        return tokenizer_from_spec(spec, folder / "tokenizer.json", **settings)
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        byte_ids, merges, specials = files.read_gpt2_files(folder / "vocab.json",
                                                           folder / "merges.txt")
        settings = folder_settings(folder, specials)
        try:
            return Tokenizer(merges, pattern=GPT2_SPLIT_PATTERN, special_tokens=specials,
                             byte_ids=byte_ids, **settings)
        except ValueError as error:
            raise ValueError(f"{folder}: {error}") from None
    raise FileNotFoundError(f"no tokenizer in {folder}: expected tokenizer.json, "
                            "or vocab.json + merges.txt")


def special_token_ids(tokenizer: Tokenizer) -> dict:
    """config.json's bos/eos token ids: GPT-2's convention, ``<|endoftext|>`` for both,
    when present."""
    end = tokenizer.special_tokens.get("<|endoftext|>")
    return {} if end is None else {"bos_token_id": end, "eos_token_id": end}


def save_hf_tokenizer(tokenizer: Tokenizer, folder: str | Path, context_length: int) -> None:
    """tokenizer.json plus the tokenizer_config.json that lets transformers'
    AutoTokenizer open it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tokenizer.json",
                 json.dumps(tokenizer_to_json(tokenizer), ensure_ascii=False) + "\n")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context_length,
              "clean_up_tokenization_spaces": False}
    if "<|endoftext|>" in tokenizer.special_tokens:
        config.update(bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    if tokenizer.bos_token is not None:
        config["bos_token"] = tokenizer.bos_token
    if tokenizer.eos_token is not None:
        config["eos_token"] = tokenizer.eos_token
    if tokenizer.chat_template is not None:
        config["chat_template"] = tokenizer.chat_template
    write_atomic(folder / "tokenizer_config.json",
                 json.dumps(config, indent=2, ensure_ascii=False) + "\n")

