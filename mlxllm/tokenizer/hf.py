"""Hugging Face tokenizer files in and out: tokenizer.json, vocab.json + merges.txt, and a folder's
chat settings.

Built in Chapter 7, Pretrained weights. A byte-level BPE tokenizer.json writes its vocab and merges
with GPT-2's byte -> printable character map; its pre-tokenizer becomes one of our split patterns.
"""

import json
from pathlib import Path

import regex

from mlxllm.files import write_atomic

from . import chat, files
from .added import NORMALIZERS, TOKEN_OPTIONS
from .bpe import Tokenizer
from .files import gpt2_byte_to_unicode
from .patterns import GPT2_DIGITS_SPLIT_PATTERN, GPT2_SPLIT_PATTERN


WHOLE = r"[\s\S]+"  # a ByteLevel without its regex: each piece is one chunk
DIGITS = {True: r"\p{N}", False: r"\p{N}+"}  # Digits(individual_digits), as a split


def _pre_tokenizer(pre_tokenizer: dict | None) -> dict:
    """The split pattern, pre_split and add_prefix_space equal to a byte-level tokenizer.json
    pre-tokenizer; ValueError for others."""
    steps = (pre_tokenizer.get("pretokenizers", [])
             if pre_tokenizer and pre_tokenizer.get("type") == "Sequence"
             else [pre_tokenizer or {}])
    kinds = [step.get("type") for step in steps]
    if "Metaspace" in kinds:
        raise ValueError("this is a SentencePiece-style tokenizer (Metaspace pre-tokenizer); only "
                         "byte-level BPE tokenizers (GPT-2, SmolLM, Qwen2 style) are supported")
    if kinds not in (["ByteLevel"], ["Digits", "ByteLevel"], ["Split", "ByteLevel"]):
        raise ValueError(f"unsupported tokenizer.json pre-tokenizer {kinds}: expected ByteLevel, "
                         "[Digits, ByteLevel] or [Split(regex), ByteLevel]")
    byte_level = steps[-1]
    regex_on = byte_level.get("use_regex", True)
    prefix = byte_level.get("add_prefix_space", True)  # tokenizers' default
    pre_split = None
    if kinds[0] == "Digits":
        pre_split = DIGITS[bool(steps[0].get("individual_digits", False))]
    elif kinds[0] == "Split":
        split = steps[0]
        pattern = split.get("pattern") or {}
        if split.get("behavior") != "Isolated" or split.get("invert"):
            raise ValueError(f"pre_tokenizer Split with behavior {split.get('behavior')!r} and "
                             f"invert {split.get('invert')!r} is not supported (only Isolated, "
                             "not inverted)")
        pre_split = pattern.get("Regex", regex.escape(pattern.get("String", "")))
        if not pre_split:
            raise ValueError(f"pre_tokenizer Split has no pattern: {pattern!r}")
    # one regex where the two steps are one (the files we write, SmolLM, Qwen2, LLaMA 3)
    if not prefix and (pre_split is None or pre_split == DIGITS[True]) and regex_on:
        pattern = GPT2_SPLIT_PATTERN if pre_split is None else GPT2_DIGITS_SPLIT_PATTERN
        return dict(pattern=pattern, pre_split=None, add_prefix_space=False)
    if not prefix and not regex_on and pre_split is not None:
        return dict(pattern=pre_split, pre_split=None, add_prefix_space=False)
    return dict(pattern=GPT2_SPLIT_PATTERN if regex_on else WHOLE, pre_split=pre_split,
                add_prefix_space=bool(prefix))


def _normalizer(normalizer: dict | None) -> list[str]:
    """The normalizer steps of a tokenizer.json normalizer; ValueError for those we lack."""
    if not normalizer:
        return []
    steps = (normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence"
             else [normalizer])
    kinds = [step.get("type") for step in steps]
    if unknown := [kind for kind in kinds if kind not in NORMALIZERS]:
        raise ValueError(f"the tokenizer normalizes text first ({', '.join(map(str, unknown))}), "
                         f"which our Tokenizer does not do (it does {', '.join(NORMALIZERS)})")
    return kinds


def _bpe_settings(model: dict) -> dict:
    """The settings of a tokenizer.json BPE model; ValueError naming a field we cannot honour."""
    if model.get("type") != "BPE":
        raise ValueError(f"tokenizer model {model.get('type')!r} is not supported "
                         "(only byte-level BPE; SentencePiece Unigram and WordPiece tokenizers are "
                         "not)")
    if model.get("byte_fallback"):
        raise ValueError("model.byte_fallback is true: a SentencePiece-style BPE (bytes as "
                         "<0x..> tokens) is not supported, only byte-level BPE")
    for field in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(field):
            raise ValueError(f"model.{field} is {model[field]!r}: a SentencePiece-style BPE "
                             "(subword prefixes / suffixes) is not supported, only byte-level BPE")
    if model.get("dropout"):
        raise ValueError(f"model.dropout is {model['dropout']!r}: BPE dropout (random merges, "
                         "for training) is not supported; set it to null for inference")
    unk = model.get("unk_token")
    vocab = model.get("vocab") or {}
    if unk is not None and unk not in vocab:
        raise ValueError(f"model.unk_token {unk!r} is not in the vocab; tokenizers fails on it too")
    return dict(ignore_merges=bool(model.get("ignore_merges", False)),
                unk_token_id=None if unk is None else vocab[unk],
                fuse_unk=bool(model.get("fuse_unk", False)))


def _post_processor(processor: dict | None, special_ids) -> tuple[list[int], list[int]]:
    """The ids a tokenizer.json post-processor adds before and after one text."""
    kind = (processor or {}).get("type")
    if kind in (None, "ByteLevel"):  # ByteLevel only trims offsets
        return [], []
    if kind == "Sequence":  # each wraps what the ones before it made
        prefix, suffix = [], []
        for step in processor.get("processors", []):
            before, after = _post_processor(step, special_ids)
            prefix, suffix = before + prefix, suffix + after
        return prefix, suffix
    if kind in ("BertProcessing", "RobertaProcessing"):  # [CLS] text [SEP], <s> text </s>
        return [processor["cls"][1]], [processor["sep"][1]]
    if kind == "TemplateProcessing":
        single, specials = processor.get("single", []), processor.get("special_tokens", {})
        sequences = [i for i, piece in enumerate(single) if "Sequence" in piece]
        if len(sequences) != 1:
            raise ValueError(f"post_processor TemplateProcessing single {single!r} must hold the "
                             "text ($A) once")
        try:
            ids = [specials[piece["SpecialToken"]["id"]]["ids"] if "SpecialToken" in piece
                   else None for piece in single]
        except KeyError as error:
            raise ValueError(f"post_processor TemplateProcessing uses {error.args[0]!r}, which "
                             "its special_tokens do not define") from None
        at = sequences[0]
        return ([i for part in ids[:at] for i in part], [i for part in ids[at + 1:] for i in part])
    raise ValueError(f"post_processor {kind!r} is not supported (only TemplateProcessing, "
                     "BertProcessing, RobertaProcessing, ByteLevel and Sequences of them)")


def _check_decoder(decoder: dict | None) -> None:
    """Our decode joins the tokens' bytes: tokenizers' ByteLevel decoder (or none)."""
    steps = ((decoder or {}).get("decoders", []) if (decoder or {}).get("type") == "Sequence"
             else [decoder] if decoder else [])
    if bad := [step.get("type") for step in steps if step.get("type") != "ByteLevel"]:
        raise ValueError(f"decoder {bad} is not supported: our decode joins the tokens' bytes "
                         "(a ByteLevel decoder)")


def _check_padding(spec: dict) -> None:
    """truncation and padding would change the ids of one text: refused, unless padding cannot."""
    if spec.get("truncation") is not None:
        raise ValueError(f"truncation is set ({spec['truncation']}): tokenizers would cut every "
                         "text to max_length; set \"truncation\" to null in the file")
    padding = spec.get("padding")
    if padding is not None and (padding.get("strategy") != "BatchLongest"
                                or padding.get("pad_to_multiple_of")):
        raise ValueError(f"padding is set ({padding}): tokenizers would pad every text; set "
                         "\"padding\" to null in the file")


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

    Added tokens become special tokens; every other field gives the ids `tokenizers` gives or is
    refused with a ValueError naming it (SentencePiece-style tokenizers, BPE dropout, truncation,
    ...). `settings` (eos_token_ids, chat_template, ...) go to the Tokenizer.
    """
    return tokenizer_from_spec(_read_json(Path(path)), path, **settings)


def _added_tokens(spec: dict) -> dict[str, int]:
    return {token["content"]: token["id"] for token in spec.get("added_tokens", [])}


def _token_options(spec: dict) -> dict[str, list[str]]:
    """added token -> its options that are on (lstrip, rstrip, single_word, normalized)."""
    return {token["content"]: [name for name in TOKEN_OPTIONS if token.get(name)]
            for token in spec.get("added_tokens", [])
            if any(token.get(name) for name in TOKEN_OPTIONS)}


def spec_settings(spec: dict) -> dict:
    """The pattern and Tokenizer settings that make a tokenizer.json's ids; ValueError names a
    field of the file that we cannot honour."""
    _check_padding(spec)
    _check_decoder(spec.get("decoder"))
    settings = {**_pre_tokenizer(spec.get("pre_tokenizer")),
                **_bpe_settings(spec.get("model") or {}),
                "normalizer": _normalizer(spec.get("normalizer")),
                "special_token_options": _token_options(spec)}
    settings["prefix_ids"], settings["suffix_ids"] = _post_processor(spec.get("post_processor"),
                                                                     _added_tokens(spec))
    return settings


def tokenizer_from_spec(spec: dict, path, **settings) -> Tokenizer:
    """``tokenizer_from_json`` for an already parsed tokenizer.json
    (``path`` names it in errors).

    Every field either gives the ids `tokenizers` gives or is refused with a ValueError naming it.
    """
    model = spec.get("model") or {}
    try:
        file_settings = spec_settings(spec)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
        if not isinstance(error, ValueError):
            error = f"a malformed field ({type(error).__name__}: {error})"
        raise ValueError(f"{path}: {error}") from None
    pattern = file_settings.pop("pattern")
    return tokenizer_from_vocab(model.get("vocab", {}), model.get("merges", []),
                                _added_tokens(spec), pattern, str(path),
                                **{**file_settings, **settings})


def _pre_tokenizer_json(tokenizer: Tokenizer) -> dict:
    """The tokenizer.json pre-tokenizer that cuts as `tokenizer` does; ValueError if none can."""
    settings, pattern = tokenizer.settings, tokenizer.pattern
    pre_split, prefix = settings["pre_split"], settings["add_prefix_space"]
    byte_level = {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True,
                  "use_regex": pattern == GPT2_SPLIT_PATTERN}
    if pre_split is None and not prefix and pattern not in (GPT2_SPLIT_PATTERN, WHOLE):
        if pattern == GPT2_DIGITS_SPLIT_PATTERN:
            pre_split, byte_level["use_regex"] = DIGITS[True], True
        else:
            pre_split = pattern
    elif pattern not in (GPT2_SPLIT_PATTERN, WHOLE):
        raise ValueError("a tokenizer.json cannot cut like this tokenizer (a prefix space or "
                         "pre-split before a pattern other than GPT-2's)")
    if pre_split is None:
        return byte_level
    digits = {regex_text: individual for individual, regex_text in DIGITS.items()}
    first = ({"type": "Digits", "individual_digits": digits[pre_split]} if pre_split in digits
             else {"type": "Split", "pattern": {"Regex": pre_split}, "behavior": "Isolated",
                   "invert": False})
    return {"type": "Sequence", "pretokenizers": [first, byte_level]}


def _post_processor_json(tokenizer: Tokenizer, names: dict[int, str]) -> dict:
    """TemplateProcessing that adds prefix_ids and suffix_ids (ByteLevel when there are none)."""
    prefix, suffix = tokenizer.prefix_ids, tokenizer.suffix_ids
    if not prefix and not suffix:
        return {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                "use_regex": True}
    single = ([{"SpecialToken": {"id": names[i], "type_id": 0}} for i in prefix]
              + [{"Sequence": {"id": "A", "type_id": 0}}]
              + [{"SpecialToken": {"id": names[i], "type_id": 0}} for i in suffix])
    return {"type": "TemplateProcessing", "single": single,
            "pair": single + [{"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {names[i]: {"id": names[i], "ids": [i], "tokens": [names[i]]}
                               for i in prefix + suffix}}


def tokenizer_to_json(tokenizer: Tokenizer) -> dict:
    """The tokenizer.json of a Tokenizer (the inverse of ``tokenizer_from_json``); ValueError for a
    tokenizer whose ids no tokenizer.json gives.

    A GGUF tokenizer's bytes missing from the vocab (missing_bytes="split", llama.cpp's rule) are
    written with Hugging Face's rule, which is what the model's own tokenizer.json says.
    """
    settings = tokenizer.settings
    byte_to_char = gpt2_byte_to_unicode()
    specials = tokenizer.special_tokens
    special_ids = set(specials.values())
    as_text = {i: "".join(byte_to_char[b] for b in token) for i, token in tokenizer.vocab.items()
               if i not in special_ids}
    names = {**as_text, **{i: token for token, i in specials.items()}}
    options = settings["special_token_options"]
    steps = [{"type": step} for step in settings["normalizer"]]
    unk = settings["unk_token_id"]
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": token, "special": True,
                          **{name: name in options.get(token, ()) for name in TOKEN_OPTIONS}}
                         for token, i in sorted(specials.items(), key=lambda item: item[1])],
        "normalizer": (None if not steps else steps[0] if len(steps) == 1
                       else {"type": "Sequence", "normalizers": steps}),
        "pre_tokenizer": _pre_tokenizer_json(tokenizer),
        "post_processor": _post_processor_json(tokenizer, names),
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None if unk is None else names[unk],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": settings["fuse_unk"], "byte_fallback": False,
                  "ignore_merges": settings["ignore_merges"],
                  # the specials too: tokenizers gives an added token that is not in the vocab a
                  # new id (the one in added_tokens is only checked)
                  "vocab": {text: i for i, text in sorted(names.items())},
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

