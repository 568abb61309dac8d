"""Hugging Face tokenizer files (tokenizer.json, vocab.json + merges.txt, folders) against `tokenizers` itself."""

import json

import pytest
import regex
from conftest import QWEN2_PATTERN, SPECIALS, TEXT, hf_pre_tokenizer, write_hf_tokenizer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlxllm.data import get_path
from mlxllm.tokenizer import GPT2_DIGITS_SPLIT_PATTERN, GPT2_SPLIT_PATTERN, QWEN2_SPLIT_PATTERN, Tokenizer, load_tokenizer
from mlxllm.tokenizer.files import gpt2_byte_to_unicode
from mlxllm.tokenizer.hf import save_hf_tokenizer, tokenizer_from_hf, tokenizer_from_json, tokenizer_to_json

# ---------------------------------------------------------------------------- tokenizers against HF `tokenizers`

@pytest.mark.parametrize("style", ["gpt2", "smollm", "qwen2"])
def test_tokenizer_json_gives_the_ids_of_hf_tokenizers(tmp_path, style):
    hf = write_hf_tokenizer(tmp_path, style)
    ours = tokenizer_from_json(tmp_path / "tokenizer.json")
    text = TEXT + "<|im_start|>user\nhi 12345<|im_end|><|endoftext|>"
    assert ours.encode(text, allowed_special="all") == hf.encode(text).ids
    assert ours.special_tokens == {token: hf.token_to_id(token) for token in SPECIALS}
    assert ours.vocab_size == hf.get_vocab_size() == 320
    assert ours.decode(hf.encode(text).ids) == text


@pytest.mark.parametrize("style", ["gpt2", "smollm", "qwen2"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.sampled_from([" ", "  ", "\n", " \n", "\t", "a", "Bc", "1", "23", "'s", "'LL", ".", "-",
                                        "é", "²", "x9", "!?"]), max_size=14))
def test_split_patterns_cut_like_hf_pre_tokenizers(tmp_path, style, pieces):
    text = "".join(pieces)
    pattern = {"gpt2": GPT2_SPLIT_PATTERN, "smollm": GPT2_DIGITS_SPLIT_PATTERN, "qwen2": QWEN2_PATTERN}[style]
    byte_to_char = gpt2_byte_to_unicode()
    ours = ["".join(byte_to_char[b] for b in chunk.encode()) for chunk in regex.findall(pattern, text)]
    assert ours == [piece for piece, _ in hf_pre_tokenizer(style).pre_tokenize_str(text)]


def test_gpt2_files_and_tokenizer_json_give_the_same_tokenizer(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers

    vocab, merges = get_path("gpt2-vocab"), get_path("gpt2-merges")
    hf = HFTokenizer(models.BPE.from_file(str(vocab), str(merges)))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    from_files = Tokenizer.from_gpt2_files(vocab, merges)
    from_json = tokenizer_from_json(tmp_path / "tokenizer.json")
    assert from_json.merges == from_files.merges and from_json.special_tokens == {"<|endoftext|>": 50256}
    text = TEXT + "<|endoftext|>"
    assert from_json.encode(text, allowed_special="all") == from_files.encode(text, allowed_special="all") == hf.encode(text).ids


@pytest.mark.parametrize("change,message", [
    ({"model": {"type": "Unigram", "vocab": []}}, "tokenizer model 'Unigram' is not supported"),
    ({"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}}, "SentencePiece-style tokenizer"),
    ({"normalizer": {"type": "Replace", "pattern": {"String": "a"}, "content": "b"}},
     r"normalizes text first \(Replace\)"),  # NFC, NFKC, Lowercase... are done: test_tokenizer_fields.py
    ({"pre_tokenizer": {"type": "Whitespace"}}, r"unsupported tokenizer.json pre-tokenizer \['Whitespace'\]"),
])
def test_unsupported_tokenizer_json_is_refused(tmp_path, change, message):
    write_hf_tokenizer(tmp_path, "gpt2")
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    (tmp_path / "tokenizer.json").write_text(json.dumps({**spec, **change}))
    with pytest.raises(ValueError, match=message):
        tokenizer_from_json(tmp_path / "tokenizer.json")


def test_sentencepiece_style_bpe_is_refused(tmp_path):
    write_hf_tokenizer(tmp_path, "gpt2")
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    spec["model"]["byte_fallback"] = True
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="SentencePiece-style BPE"):
        tokenizer_from_json(tmp_path / "tokenizer.json")


def test_our_qwen2_pattern_is_the_one_written_in_qwen2_files():
    assert QWEN2_SPLIT_PATTERN == QWEN2_PATTERN


# ---------------------------------------------------------------------------- real files are not always complete
def _edited(tmp_path, edit) -> tuple:
    """A trained tokenizer.json after `edit(spec)`, read by ours and by `tokenizers` itself."""
    from tokenizers import Tokenizer as HFTokenizer

    write_hf_tokenizer(tmp_path, "gpt2")
    spec = json.loads((tmp_path / "tokenizer.json").read_text())
    edit(spec)
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    return tokenizer_from_json(tmp_path / "tokenizer.json"), HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))


def test_missing_byte_tokens_load_and_encode_drops_them_like_hf(tmp_path):
    char = gpt2_byte_to_unicode()
    lacking = [0x04, 0xC0, 0xF1]  # a control character, an impossible UTF-8 byte, a 4-byte lead

    def drop_bytes(spec):
        vocab = spec["model"]["vocab"]
        for b in lacking:
            del vocab[char[b]]

    ours, hf = _edited(tmp_path, drop_bytes)
    assert [b for b, i in enumerate(ours.byte_ids) if i is None] == lacking
    for text in ["a\x04b", "Be\x04fore we", "\U00040000x", "\x04", TEXT[:200] + "\x04\x04 x"]:
        assert ours.encode(text) == hf.encode(text).ids, repr(text)


def test_vocab_entries_no_merge_makes_are_decoded_but_never_encoded(tmp_path):
    char = gpt2_byte_to_unicode()
    orphan = "".join(char[b] for b in "Citizen".encode())  # a whole word as one token, made by no merge

    def add_orphan(spec):
        spec["model"]["vocab"][orphan] = 320  # the trained ids are 0..319

    ours, hf = _edited(tmp_path, add_orphan)
    assert ours.extra_tokens == {320: b"Citizen"} and ours.decode([320]) == hf.decode([320]) == "Citizen"
    text = "First Citizen: Citizen"
    assert ours.encode(text) == hf.encode(text).ids and 320 not in ours.encode(text)


def test_split_regex_that_misses_text_keeps_it_like_hf(tmp_path):
    """A Split regex that matches only letters: the text between matches becomes chunks too (nothing is lost)."""
    from tokenizers import Regex, pre_tokenizers

    letters = r"\p{L}+"

    def letters_only(spec):
        spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": letters}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}

    ours, hf = _edited(tmp_path, letters_only)
    text = "It's 1984, and 3.14 apples!  Ünïcode ²³ end"
    assert ours.encode(text) == hf.encode(text).ids and ours.decode(ours.encode(text)) == text
    pieces = pre_tokenizers.Split(Regex(letters), behavior="isolated").pre_tokenize_str(text)
    assert ours._splitter.findall(text) == [piece for piece, _ in pieces]


def test_tokenizer_json_errors_name_the_file(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}', encoding="utf-8")
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        tokenizer_from_json(path)
    write_hf_tokenizer(tmp_path, "gpt2")
    spec = json.loads(path.read_text())
    spec["model"]["merges"] = [["Ġ", "nowhere"]] + spec["model"]["merges"]
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=f"{path}: merge 0 uses the token 'nowhere'"):
        tokenizer_from_json(path)


# ---------------------------------------------------------------------------- folders: chat template, eos ids
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


@pytest.mark.parametrize("where", ["string", "named list", "jinja file"])
def test_folder_gives_chat_template_and_eos_ids(tmp_path, where):
    write_hf_tokenizer(tmp_path, "smollm")
    config = {"bos_token": "<|endoftext|>", "eos_token": {"content": "<|endoftext|>", "special": True}}
    if where == "string":
        config["chat_template"] = CHATML
    elif where == "named list":
        config["chat_template"] = [{"name": "tool_use", "template": "{{ tools }}"}, {"name": "default", "template": CHATML}]
    else:
        (tmp_path / "chat_template.jinja").write_text(CHATML, encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 2]}))
    (tmp_path / "config.json").write_text(json.dumps({"eos_token_id": 0}))
    tok = tokenizer_from_hf(tmp_path)
    specials = {token: i for i, token in enumerate(SPECIALS)}
    assert tok.special_tokens == specials
    assert tok.chat_template == CHATML and (tok.bos_token, tok.eos_token) == ("<|endoftext|>", "<|endoftext|>")
    assert tok.eos_token_ids == [0, 2]  # generation_config's list; config's and the template's <|im_end|> already in it
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_folder_without_config_files_has_no_template_and_gpt2_files_work(tmp_path):
    write_hf_tokenizer(tmp_path, "gpt2")
    tok = tokenizer_from_hf(tmp_path)
    assert tok.chat_template is None and tok.eos_token_ids == []
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "vocab.json").write_bytes(get_path("gpt2-vocab").read_bytes())
    (gpt2 / "merges.txt").write_bytes(get_path("gpt2-merges").read_bytes())
    (gpt2 / "config.json").write_text(json.dumps({"eos_token_id": 50256}))
    assert tokenizer_from_hf(gpt2).eos_token_ids == [50256]
    (gpt2 / "config.json").write_text(json.dumps({"eos_token_id": 99999}))
    with pytest.raises(ValueError, match=r"gpt2: eos_token_ids \[99999\] are not ids"):
        tokenizer_from_hf(gpt2)


def test_save_hf_tokenizer_round_trip_keeps_chat_settings_and_transformers_reads_it(tmp_path):
    from transformers import AutoTokenizer

    write_hf_tokenizer(tmp_path / "source", "smollm")
    (tmp_path / "source" / "tokenizer_config.json").write_text(json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>"}))
    tok = tokenizer_from_hf(tmp_path / "source")
    save_hf_tokenizer(tok, tmp_path / "saved", context_length=256)
    back = tokenizer_from_hf(tmp_path / "saved")
    assert back.merges == tok.merges and back.chat_template == CHATML and back.eos_token_ids == tok.eos_token_ids == [2]
    assert load_tokenizer(tmp_path / "saved").merges == tok.merges  # a folder is sniffed too
    hf = AutoTokenizer.from_pretrained(str(tmp_path / "saved"))
    chat = [{"role": "user", "content": "12 apples"}]
    assert hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == back.apply_chat_template(chat)
    assert tokenizer_to_json(back)["model"]["merges"] == tokenizer_to_json(tok)["model"]["merges"]
