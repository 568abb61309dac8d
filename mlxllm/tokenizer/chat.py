"""Chat templates: a conversation -> the exact text the model was fine-tuned on.

Built in Chapter 7, Pretrained weights. A chat model ships its own Jinja template (in
tokenizer_config.json, chat_template.jinja or the GGUF metadata); we render it the way
transformers does, in a sandbox (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks), with
the same helpers and variables.
"""

import json
from collections.abc import Sequence
from datetime import datetime
from functools import lru_cache

# Tokens that end one turn of a chat (ChatML, LLaMA-3, Phi-3, Gemma): when the template writes one
# of them and the tokenizer has it as a special token, generation must stop there too, not only at
# end-of-sequence.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


def validate_messages(messages: Sequence[dict]) -> list[dict]:
    """A copy of `messages` after checking it is a list of {"role": str, "content": str}; else
    ValueError."""
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ValueError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                         f"got {type(messages).__name__}")
    checked = []
    for number, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ValueError(f"message {number} must be a dict with 'role' and 'content', "
                             f"got {type(message).__name__}")
        if missing := [key for key in ("role", "content") if key not in message]:
            raise ValueError(f"message {number} has no {' and no '.join(map(repr, missing))} key: "
                             "each message is {'role': 'user' (or 'system', 'assistant'), "
                             "'content': 'text'}")
        for key in ("role", "content"):
            if not isinstance(message[key], str):
                raise ValueError(f"message {number}: {key!r} must be a str, "
                                 f"got {type(message[key]).__name__}")
        if not message["role"]:
            raise ValueError(f"message {number}: 'role' is empty (use 'system', 'user' or "
                             "'assistant')")
        checked.append(dict(message))
    return checked


@lru_cache(maxsize=16)
def compile_template(template: str):
    """The template compiled in a sandbox with transformers' settings and helpers;
    TemplateSyntaxError if bad."""
    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # templates call it to refuse a conversation (e.g. roles out of order)
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes <, > and & for HTML; chat templates want plain JSON
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[loopcontrols])
    environment.filters["tojson"] = tojson
    environment.globals["raise_exception"] = raise_exception
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(format)
    return environment.from_string(template)


def render(
    template: str | None,
    messages: Sequence[dict],
    add_generation_prompt: bool = True,
    **variables: str | None,
) -> str:
    """`messages` rendered by the model's `template`; `variables` are bos_token, eos_token, ...
    (ValueError on failure)."""
    if template is None:
        raise ValueError("this tokenizer has no chat template (its files define none); format the "
                         "prompt yourself or load a chat model's tokenizer (tokenizer_config.json, "
                         "chat_template.jinja or a GGUF)")
    if not isinstance(add_generation_prompt, bool):
        raise ValueError("add_generation_prompt must be True or False, "
                         f"got {add_generation_prompt!r}")
    import jinja2

    messages = validate_messages(messages)
    try:
        return compile_template(template).render(
            messages=messages, add_generation_prompt=add_generation_prompt, tools=None,
            documents=None, **variables
        )
    except jinja2.exceptions.TemplateError as error:
        # syntax errors and the template's own raise_exception
        raise ValueError("the chat template refused these messages or could not be rendered: "
                         f"{error}") from None


def end_of_turn_ids(template: str | None, special_tokens: dict[str, int]) -> list[int]:
    """Ids of the special tokens the template uses to end a turn (<|im_end|> for ChatML)."""
    if not template:
        return []
    return [special_tokens[token] for token in END_OF_TURN_TOKENS
            if token in template and token in special_tokens]
