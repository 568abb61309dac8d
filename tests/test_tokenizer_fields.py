"""Every field of a tokenizer.json and every tokenizer.ggml.* key of a GGUF gives the ids of Hugging Face
`tokenizers` / llama.cpp, or is refused in one line that names it (issue #33: no silent wrong ids).

The files are built by `tokenizers` itself (a tiny BPE trained on TEXT, then the field set) and by gguf's
own writer; the reference ids are `tokenizers`' encode(...).ids on the same file.
"""

import json

import mlx.core as mx
import pytest
from conftest import QWEN2_PATTERN, SPECIALS, write_hf_tokenizer

from mlxllm.tokenizer import Tokenizer, load_tokenizer
from mlxllm.tokenizer.files import gpt2_byte_to_unicode
from mlxllm.tokenizer.gguf import tokenizer_from_gguf
from mlxllm.tokenizer.hf import tokenizer_from_json, tokenizer_to_json

TEXTS = [
    "First Citizen: Before we proceed any further, hear me speak.",
    "abc123 de  7", "12345 + 678 = 13023", "x1y22z333", "3.14159 and 1,000,000",
    "   leading spaces", "trailing spaces   ", "two  spaces\tand\ttabs", "line\nbreaks\n\n\nruns\r\n",
    " \n \n  ", "naïve café — résumé ²³", "ÉCOLE Straße ΣΑΣ ΟΔΟΣ İstanbul", "e\u0301 vs é, ﬁ ligature, ① ½",
    "中文字符测试，日本語。", "Привет, мир!", "emoji 👍🏽 👨‍👩‍👧‍👦 ❤️", "It's we're they'll I'd YOU'LL",
    "<|im_start|>user\nhi 12345<|im_end|>", "<|endoftext|><|endoftext|>", "a<|im_end|>b <|im_end|> c",
    "word<|im_start|>  spaced <|im_end|>\n", "", "x",
]


def trained(tmp_path, style: str = "gpt2"):
    """A BPE trained by `tokenizers` on TEXT (specials <|endoftext|>, <|im_start|>, <|im_end|>)."""
    return write_hf_tokenizer(tmp_path / "trained", style)


def both(tmp_path, hf, edit=None) -> tuple:
    """`hf` saved (then `edit(spec)` applied to the JSON), read back by ours and by `tokenizers`."""
    from tokenizers import Tokenizer as HFTokenizer

    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    if edit is not None:
        spec = json.loads(path.read_text())
        edit(spec)
        path.write_text(json.dumps(spec))
    return tokenizer_from_json(path), HFTokenizer.from_file(str(path))


def assert_same_ids(ours, hf, texts=TEXTS, add_special_tokens: bool = False) -> None:
    """Our ids equal `tokenizers`' on every text, also after our save / load and through our tokenizer.json."""
    from tokenizers import Tokenizer as HFTokenizer

    again = HFTokenizer.from_str(json.dumps(tokenizer_to_json(ours)))  # what save_pretrained writes
    for text in texts:
        expected = hf.encode(text, add_special_tokens=add_special_tokens).ids
        assert ours.encode(text, allowed_special="all", add_special_tokens=add_special_tokens) == expected, repr(text)
        assert again.encode(text, add_special_tokens=add_special_tokens).ids == expected, repr(text)
    assert list(ours.encode_iterable(texts, allowed_special="all")) == ours.encode("".join(texts), "all")


def assert_saved_and_loaded(ours, tmp_path) -> None:
    ours.save(tmp_path / "ours.tok")
    back = load_tokenizer(tmp_path / "ours.tok")
    assert back.settings == ours.settings
    assert [back.encode(t, "all") for t in TEXTS] == [ours.encode(t, "all") for t in TEXTS]


# ---------------------------------------------------------------------------- pre-tokenizer: ByteLevel's add_prefix_space
@pytest.mark.parametrize("steps", ["ByteLevel", "Digits+ByteLevel", "DigitRuns+ByteLevel",
                                   "Split+ByteLevel", "Split+ByteLevel(regex)", "ByteLevel(no regex)"])
def test_byte_level_add_prefix_space_gives_the_ids_of_tokenizers(tmp_path, steps):
    """ByteLevel(add_prefix_space=True) puts a space before every piece the steps before it made."""
    from tokenizers import Regex, pre_tokenizers

    hf = trained(tmp_path)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=steps != "ByteLevel(no regex)",
                                          use_regex="no regex" not in steps and steps != "Split+ByteLevel")
    first = {"Digits": pre_tokenizers.Digits(individual_digits=True),
             "DigitRuns": pre_tokenizers.Digits(individual_digits=False),
             "Split": pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")}.get(steps.split("+")[0])
    hf.pre_tokenizer = pre_tokenizers.Sequence([first, byte_level]) if first else byte_level
    ours, hf = both(tmp_path, hf)
    assert_same_ids(ours, hf)
    assert_saved_and_loaded(ours, tmp_path)


# ---------------------------------------------------------------------------- post_processor: BOS and friends
@pytest.mark.parametrize("kind", ["TemplateProcessing", "BertProcessing", "RobertaProcessing",
                                  "Sequence[ByteLevel, TemplateProcessing]"])
def test_post_processor_ids_are_added_with_add_special_tokens(tmp_path, kind):
    from tokenizers import processors

    hf = trained(tmp_path)
    bos, end = ("<|endoftext|>", 0), ("<|im_end|>", 2)
    template = processors.TemplateProcessing(single="<|endoftext|> $A", pair="<|endoftext|> $A $B",
                                             special_tokens=[bos])
    hf.post_processor = {
        "TemplateProcessing": processors.TemplateProcessing(single="<|endoftext|> $A <|im_end|>",
                                                            special_tokens=[bos, end]),
        "BertProcessing": processors.BertProcessing(end, bos),  # (sep, cls)
        "RobertaProcessing": processors.RobertaProcessing(end, bos),
        "Sequence[ByteLevel, TemplateProcessing]": processors.Sequence([processors.ByteLevel(), template]),
    }[kind]
    ours, hf = both(tmp_path, hf)
    assert ours.prefix_ids == [0] and ours.suffix_ids == ([] if kind.startswith("Sequence") else [2])
    assert_same_ids(ours, hf, add_special_tokens=True)
    assert_same_ids(ours, hf, add_special_tokens=False)  # the default: encode's contract is unchanged
    assert ours.encode("hi") == hf.encode("hi", add_special_tokens=False).ids
    assert_saved_and_loaded(ours, tmp_path)


def test_a_folder_with_llama3_style_bos_gives_the_prompt_transformers_gives(tmp_path):
    from tokenizers import processors
    from transformers import AutoTokenizer

    hf = trained(tmp_path)
    hf.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>",
                                                                "tokenizer_class": "PreTrainedTokenizerFast"}))
    ours, theirs = load_tokenizer(tmp_path), AutoTokenizer.from_pretrained(str(tmp_path))
    assert ours.bos_token_id == 1 and ours.prefix_ids == [1]
    for text in TEXTS[:8]:
        assert ours.encode(text, add_special_tokens=True) == theirs(text)["input_ids"]


# ---------------------------------------------------------------------------- model: ignore_merges, unk_token, fuse_unk
def _competing_merge(spec) -> str:
    """Moves a merge inside a trained word-token to the front, so that merging no longer reaches that
    token (checked with `tokenizers`' own BPE): a vocab where a token is not the BPE of its own bytes,
    as LLaMA 3's (converted from tiktoken). Returns the token's text (GPT-2 style)."""
    from tokenizers import models

    model = spec["model"]
    vocab, merges = model["vocab"], [list(merge) for merge in model["merges"]]
    for left, right in merges:
        word = left + right
        if not (word.isascii() and word.isalpha() and len(word) >= 3):
            continue
        for i in range(len(word) - 1):
            pair = [word[i], word[i + 1]]
            edited = [pair] + [merge for merge in merges if merge != pair]
            extended = {**vocab, "".join(pair): vocab.get("".join(pair), max(vocab.values()) + 1)}
            if len(models.BPE(extended, [tuple(m) for m in edited]).tokenize(word)) > 1:
                model["vocab"], model["merges"] = extended, edited
                return word
    raise AssertionError("no trained token could be made unreachable")


@pytest.mark.parametrize("ignore_merges", [False, True])
def test_ignore_merges_gives_the_ids_of_tokenizers(tmp_path, ignore_merges):
    byte_to_char = gpt2_byte_to_unicode()
    found = {}

    def edit(spec):
        found["word"] = _competing_merge(spec)
        spec["model"]["ignore_merges"] = ignore_merges
        orphan = "".join(byte_to_char[b] for b in "Citizen".encode())  # a token no merge makes
        spec["model"]["vocab"][orphan] = max(spec["model"]["vocab"].values()) + 1

    ours, hf = both(tmp_path, trained(tmp_path), edit)
    word = as_text(found["word"])
    texts = TEXTS + [word, f"{word} {word}!", "Citizen", "First Citizen: Citizen"]
    assert_same_ids(ours, hf, texts)
    assert_saved_and_loaded(ours, tmp_path)
    merged = hf.encode(word).ids
    assert (len(merged) == 1) == ignore_merges  # the file really parts the two rules


def as_text(token: str) -> str:
    """The text of a GPT-2-style printable token string."""
    char_to_byte = {char: b for b, char in gpt2_byte_to_unicode().items()}
    return bytes(char_to_byte[c] for c in token).decode("utf-8")


@pytest.mark.parametrize("fuse_unk", [False, True])
def test_unk_token_replaces_missing_bytes_like_tokenizers(tmp_path, fuse_unk):
    char = gpt2_byte_to_unicode()
    lacking = [0x04, 0x05, 0xC0, 0xF1, ord("q")]

    def edit(spec):
        for b in lacking:
            spec["model"]["vocab"].pop(char[b], None)
        spec["model"]["merges"] = [m for m in spec["model"]["merges"]
                                   if not any(char[b] in "".join(m) for b in lacking)]
        spec["model"]["unk_token"], spec["model"]["fuse_unk"] = "<|endoftext|>", fuse_unk

    ours, hf = both(tmp_path, trained(tmp_path), edit)
    texts = TEXTS + ["a\x04b", "a\x04\x05\x04b", "quick qq", "\U00040000x", "\x04", "Be\x04fore we"]
    assert_same_ids(ours, hf, texts)
    assert ours.encode("a\x04\x05b")[1:-1] == ([0] if fuse_unk else [0, 0])
    assert_saved_and_loaded(ours, tmp_path)


# ---------------------------------------------------------------------------- added tokens: lstrip, rstrip, single_word, normalized
@pytest.mark.parametrize("options", [dict(lstrip=True), dict(rstrip=True), dict(single_word=True),
                                     dict(lstrip=True, rstrip=True, single_word=True), dict(normalized=True)])
def test_added_token_options_give_the_ids_of_tokenizers(tmp_path, options):
    from tokenizers import AddedToken, normalizers

    hf = trained(tmp_path)
    if options.get("normalized"):
        hf.normalizer = normalizers.Lowercase()  # a normalized token matches the lowercased text
    hf.add_tokens([AddedToken("<mask>", **options), AddedToken("Word", **options)])
    hf.add_special_tokens([AddedToken("[SEP]", special=True, **options)])
    ours, hf = both(tmp_path, hf)
    texts = TEXTS + ["a <mask> b", "a<mask>b", "  <mask>  ", "<mask><mask>", "x [SEP]\n\ny", "[SEP]   [SEP]",
                     "Word words aWord Word_ Word. WORD word", "\u3000<mask>\u00a0", "é<mask>é", "<MASK> [sep]"]
    assert_same_ids(ours, hf, texts)
    assert_saved_and_loaded(ours, tmp_path)


# ---------------------------------------------------------------------------- normalizers
@pytest.mark.parametrize("name", ["NFC", "NFD", "NFKC", "NFKD", "Lowercase", "Sequence[NFKC, Lowercase]"])
def test_normalizers_give_the_ids_of_tokenizers(tmp_path, name):
    from tokenizers import normalizers

    hf = trained(tmp_path)
    hf.normalizer = (normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
                     if name.startswith("Sequence") else getattr(normalizers, name)())
    ours, hf = both(tmp_path, hf)
    assert_same_ids(ours, hf, TEXTS + ["Ǆ ǅ ǆ ẞ ß", "ΌΣΟΣ ΣΑΣ.", "ｆｕｌｌ ｗｉｄｔｈ １２３", "한국어 ᄀ ᅡ"])
    assert_saved_and_loaded(ours, tmp_path)


# ---------------------------------------------------------------------------- what we refuse, by name
def _set(path: str, value):
    def edit(spec):
        *parents, last = path.split(".")
        target = spec
        for key in parents:
            target = target[key]
        target[last] = value
    return edit


@pytest.mark.parametrize("edit,message", [
    (_set("model.dropout", 0.1), r"model.dropout is 0.1: BPE dropout"),
    (_set("model.byte_fallback", True), r"model.byte_fallback is true"),
    (_set("model.continuing_subword_prefix", "##"), r"model.continuing_subword_prefix is '##'"),
    (_set("model.end_of_word_suffix", "</w>"), r"model.end_of_word_suffix is '</w>'"),
    (_set("model.unk_token", "<nope>"), r"model.unk_token '<nope>' is not in the vocab"),
    (_set("truncation", {"max_length": 8, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}),
     r"truncation is set"),
    (_set("padding", {"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                      "pad_type_id": 0, "pad_token": "<|endoftext|>"}), r"padding is set"),
    (_set("decoder", {"type": "WordPiece", "prefix": "##", "cleanup": True}), r"decoder \['WordPiece'\]"),
    (_set("normalizer", {"type": "Strip", "strip_left": True, "strip_right": True}), r"normalizes text first \(Strip\)"),
    (_set("post_processor", {"type": "Mystery"}), r"post_processor 'Mystery' is not supported"),
    (_set("pre_tokenizer", {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": " "}, "behavior": "Removed", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}),
     r"pre_tokenizer Split with behavior 'Removed'"),
])
def test_fields_that_would_change_ids_are_refused_by_name(tmp_path, edit, message):
    path = tmp_path / "tokenizer.json"
    trained(tmp_path).save(str(path))
    spec = json.loads(path.read_text())
    edit(spec)
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=message) as error:
        tokenizer_from_json(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_fields_that_cannot_change_ids_are_accepted(tmp_path):
    def edit(spec):
        spec["model"]["dropout"] = 0.0  # tokenizers skips dropout at 0
        spec["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None,
                           "pad_id": 0, "pad_type_id": 0, "pad_token": "<|endoftext|>"}
        spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                                  "use_regex": True}

    ours, hf = both(tmp_path, trained(tmp_path), edit)
    assert_same_ids(ours, hf, add_special_tokens=True)


def test_what_a_tokenizer_json_cannot_say_is_not_written():
    tok = Tokenizer.train("some text to learn from " * 20, 270)
    staged = tok.with_settings(add_prefix_space=True)  # a prefix space before GPT-4's regex
    with pytest.raises(ValueError, match="a tokenizer.json cannot cut like this tokenizer"):
        tokenizer_to_json(staged)
    with pytest.raises(ValueError, match=r"unknown Tokenizer settings \['add_bos'\]"):
        tok.with_settings(add_bos=True)


# ---------------------------------------------------------------------------- GGUF: tokenizer.ggml.* keys, as llama.cpp reads them
def write_tokenizer_gguf(path, hf, pre: str, **keys) -> dict:
    """A GGUF holding `hf`'s vocab and merges, written by gguf's own GGUFWriter; returns its metadata as
    mx.load reads it."""
    import gguf
    import numpy as np

    spec = json.loads(hf.to_str())
    vocab = spec["model"]["vocab"]
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_merges([" ".join(merge) for merge in spec["model"]["merges"]])
    writer.add_token_types([3 if token in SPECIALS else 1 for token in tokens])
    writer.add_bos_token_id(vocab["<|im_start|>"])
    writer.add_eos_token_id(vocab["<|im_end|>"])
    for key, value in keys.items():
        kind = {bool: gguf.GGUFValueType.BOOL, int: gguf.GGUFValueType.UINT32}[type(value)]
        writer.add_key_value(f"tokenizer.ggml.{key}", value, kind)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return mx.load(str(path), return_metadata=True)[1]


@pytest.mark.parametrize("pre,keys,bos", [("qwen2", {}, False), ("qwen2", {"add_bos_token": True}, True),
                                          ("llama-bpe", {}, True), ("llama-bpe", {"add_bos_token": False}, False)])
def test_gguf_add_bos_token_is_honoured_like_llama_cpp(tmp_path, pre, keys, bos):
    """llama.cpp adds the BOS when add_bos_token says so, and by default for its LLaMA 3 pre-tokenizers."""
    hf = trained(tmp_path, "qwen2")
    ours = tokenizer_from_gguf(write_tokenizer_gguf(tmp_path / "t.gguf", hf, pre, **keys))
    assert ours.prefix_ids == ([1] if bos else []) and ours.suffix_ids == []
    for text in TEXTS:
        plain = ours.encode(text, "all")
        assert ours.encode(text, "all", add_special_tokens=True) == [1] * bos + plain
        if pre == "qwen2":
            assert plain == hf.encode(text).ids, repr(text)


def test_gguf_add_eos_token_and_end_of_generation_ids(tmp_path):
    ours = tokenizer_from_gguf(write_tokenizer_gguf(tmp_path / "t.gguf", trained(tmp_path, "qwen2"), "qwen2",
                                                    add_eos_token=True, eot_token_id=0))
    assert ours.encode("hi", add_special_tokens=True) == ours.encode("hi") + [2]
    assert ours.eos_token_ids == [2, 0]  # eos, then eot: both end a generated answer in llama.cpp


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe"])
def test_gguf_llama3_pre_tokenizers_look_whole_chunks_up_like_llama_cpp(tmp_path, pre):
    """llama.cpp sets ignore_merges for its LLaMA 3 pre-tokenizers only: there a chunk that is a token is
    that token, elsewhere every chunk is merged (here the two differ: a token no merge reaches)."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, models, pre_tokenizers

    from mlxllm.tokenizer import LLAMA3_SPLIT_PATTERN

    hf = trained(tmp_path, "qwen2")
    spec = json.loads(hf.to_str())
    word = _competing_merge(spec)
    edited = HFTokenizer.from_str(json.dumps(spec))
    ours = tokenizer_from_gguf(write_tokenizer_gguf(tmp_path / "t.gguf", edited, pre))
    model = spec["model"]
    reference = HFTokenizer(models.BPE(model["vocab"], [tuple(m) for m in model["merges"]],
                                       ignore_merges=pre == "llama-bpe"))
    split = LLAMA3_SPLIT_PATTERN if pre == "llama-bpe" else QWEN2_PATTERN
    reference.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(split), behavior="isolated"),
                                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    reference.add_special_tokens(SPECIALS)
    text = as_text(word)
    for sample in TEXTS + [text, f"{text} and {text}"]:
        assert ours.encode(sample, "all") == reference.encode(sample).ids, repr(sample)
    assert (len(ours.encode(text)) == 1) == (pre == "llama-bpe")


@pytest.mark.parametrize("keys,message", [
    ({"add_sep_token": True}, "tokenizer.ggml.add_sep_token is true"),
    ({"mystery_flag": True}, "tokenizer.ggml.mystery_flag is not known to us"),
])
def test_gguf_keys_that_would_change_ids_are_refused_by_name(tmp_path, keys, message):
    metadata = write_tokenizer_gguf(tmp_path / "t.gguf", trained(tmp_path, "qwen2"), "qwen2", **keys)
    with pytest.raises(ValueError, match=message):
        tokenizer_from_gguf(metadata)
    no_bos = {key: value for key, value in metadata.items()
              if key != "tokenizer.ggml.bos_token_id" and key.removeprefix("tokenizer.ggml.") not in keys}
    with pytest.raises(ValueError, match="add_bos_token is true .* but tokenizer.ggml.bos_token_id is not set"):
        tokenizer_from_gguf({**no_bos, "tokenizer.ggml.add_bos_token": True})
