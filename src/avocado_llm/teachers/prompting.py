"""A base model's prompt template (``teachers[].prompt_template``) in the two forms the teachers
use: plain text for an endpoint's ``/v1/completions`` (:meth:`PromptTemplate.render`), and the
same text as a Jinja chat template for the in-process teacher (:func:`jinja_template`), so that
generation, scoring and evaluation render it through the one chat path. Both give the same
string for every conversation (``tests/teachers/test_vllm_launch.py`` checks it), the Jinja one
with the tokenizer's BOS token in front when the template asks for it."""

from __future__ import annotations

import json

from avocado_llm.config.teacher_options import CONTENT, PromptTemplate

__all__ = ["PromptTemplate", "jinja_template", "stop_cut"]


def _literal(text: str) -> str:
    """``text`` as a Jinja expression that prints it verbatim: a JSON string is a valid Jinja
    string literal (its escapes are Python's), whatever braces or quotes it holds."""
    return "{{ " + json.dumps(text, ensure_ascii=False) + " }}" if text else ""


def _turn(template: str) -> str:
    return "{{ message['content'] }}".join(_literal(part) for part in template.split(CONTENT))


def jinja_template(template: PromptTemplate, bos: str = "") -> str:
    """The chat template that renders a conversation as ``bos + template.render(messages)``;
    ``add_generation_prompt`` adds nothing (the last user turn ends where the answer begins)."""
    return (
        _literal(bos)
        + _literal(template.prefix)
        + "{% for message in messages %}"
        + "{% if message['role'] == 'system' %}"
        + _turn(template.system)
        + "{% elif message['role'] == 'assistant' %}"
        + _turn(template.assistant)
        + "{% else %}"
        + _turn(template.user)
        + "{% endif %}{% endfor %}"
    )


def stop_cut(texts: list[str], template: PromptTemplate) -> tuple[str, int | None]:
    """The answer text up to the first stop string, given the decoded text after each generated
    token (``texts[i]``: tokens ``0..i``), and how many tokens to keep (``None``: no stop
    string): those that begin inside the answer, so a token that holds its last characters and
    the stop string's first is kept, and the stop string's own tokens are not."""
    full = texts[-1] if texts else ""
    text, found = template.cut(full)
    if not found:
        return full, None
    starts = [0, *(len(t) for t in texts[:-1])]
    return text, sum(start < len(text) for start in starts)
