"""Chat messages to prompt text, through the Jinja template stored in tokenizer_config.json (as transformers does).

The default template is DeepSeek's: begin-of-sentence, the system prompt, then alternating user and assistant
turns marked by role tokens, each assistant turn closed by end-of-sentence; with a generation prompt it ends on
the assistant role token, where the model writes its answer. Tool results (role "tool") are wrapped in DeepSeek-V3's
tool-output tokens, consecutive ones in one block; how the assistant asks for a tool is the tool-calling issue's.
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<｜System｜>' + message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ '<｜Assistant｜>' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'tool' %}"
    "{% if loop.first or loop.previtem['role'] != 'tool' %}{{ '<｜tool▁outputs▁begin｜>' }}{% endif %}"
    "{{ '<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>' }}"
    "{% if loop.last or loop.nextitem['role'] != 'tool' %}{{ '<｜tool▁outputs▁end｜>' }}{% endif %}"
    "{% else %}{{ raise_exception('unknown role ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)

ROLES = ("system", "user", "assistant", "tool")
MAX_MESSAGES = 10_000


class ChatError(ValueError):
    """Messages that cannot be rendered: wrong shape, unknown role, a template that fails."""


def check_messages(messages: object) -> list[dict[str, str]]:
    """[{"role": ..., "content": str}, ...] with roles system/user/assistant/tool; a clear error for anything else."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ChatError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
    if len(messages) > MAX_MESSAGES:
        raise ChatError(f"messages holds {len(messages)} messages; at most {MAX_MESSAGES}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatError(f"messages[{i}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise ChatError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ChatError(f"messages[{i}].content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2 import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str):
        raise TemplateError(message)

    # the environment transformers renders chat templates in, so the same template gives the same text
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def render_chat(messages: object, template: str, bos_token: str, eos_token: str,
                add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages` (a list of role/content dicts)."""
    from jinja2 import TemplateError

    checked = check_messages(messages)
    try:
        return _compile(template).render(messages=checked, bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt)
    except TemplateError as e:
        raise ChatError(f"chat template: {e}") from None
