"""A Responses API request as the chat request it is, which both engines run and the chat
checks (``serve/tools.py``) validate: ``instructions`` a system message first, then the input's
items as chat messages (``developer`` is ``system``; an earlier turn's ``function_call`` items
its assistant message's ``tool_calls``, their ``function_call_output`` items ``tool``
messages), function tools in chat's shape, ``text.format`` as ``response_format``, and
``max_output_tokens`` as ``max_completion_tokens``. :class:`Echo` is what every ``response``
object repeats of the request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from avocado_llm.serve import protocol as p
from avocado_llm.serve import responses_protocol as r
from avocado_llm.serve.errors import bad_request


def to_chat(body: r.ResponseCreateRequest) -> tuple[p.ChatCompletionRequest, list[dict[str, Any]]]:
    """The chat request a Responses request is, and its messages as the engine takes them;
    400 for what chat cannot say (a content part of the wrong kind for its role)."""
    messages = _messages(body)
    fmt = body.text.format if body.text is not None else None
    chat: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "stream": body.stream,
        "max_completion_tokens": body.max_output_tokens,
        "temperature": 1.0 if body.temperature is None else body.temperature,
        "top_p": 1.0 if body.top_p is None else body.top_p,
        "user": body.user,
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": _response_format(fmt),
        "tool_choice": (
            {"type": "function", "function": {"name": body.tool_choice.name}}
            if isinstance(body.tool_choice, r.FunctionToolChoice)
            else body.tool_choice
        ),
        "tools": None
        if body.tools is None
        else [
            {"type": "function", "function": t.model_dump(exclude_unset=True, exclude={"type"})}
            for t in body.tools
        ],
    }
    try:
        request = p.ChatCompletionRequest.model_validate({k: v for k, v in chat.items()
                                                          if v is not None})  # fmt: skip
    except ValidationError as e:
        error = e.errors()[0]
        raise bad_request(f"input cannot be read as a conversation: {error['msg']}", "input") from e
    return request, messages


def _messages(body: r.ResponseCreateRequest) -> list[dict[str, Any]]:
    """``instructions`` as a system message, then the input's items as chat messages: an
    earlier turn's function calls are its assistant message's ``tool_calls`` (consecutive
    calls one message), their outputs ``tool`` messages."""
    messages: list[dict[str, Any]] = []
    if body.instructions is not None:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        if isinstance(item, r.FunctionCallIn):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": item.arguments}}  # fmt: skip
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif isinstance(item, r.FunctionCallOutputIn):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
        else:
            messages.append({"role": "system" if item.role == "developer" else item.role,
                             "content": _text(i, item)})  # fmt: skip
    return messages


def _text(i: int, item: r.InputMessage) -> str:
    """A message's text; 400 for a part of the wrong kind for its role (``output_text`` is an
    assistant's, ``input_text`` everyone else's)."""
    if isinstance(item.content, str):
        return item.content
    expected = "output_text" if item.role == "assistant" else "input_text"
    for j, part in enumerate(item.content):
        if part.type != expected:
            raise bad_request(
                f"input[{i}] is a {item.role} message: its content parts are {expected}, "
                f"but part {j} is {part.type}",
                param=f"input[{i}].content[{j}].type",
            )
    return "".join(part.text for part in item.content)


def _response_format(fmt: r.TextFormat | None) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format``."""
    if fmt is None:
        return None
    if isinstance(fmt, r.TextFormatJSONSchema):
        schema = fmt.model_dump(by_alias=True, exclude_unset=True, exclude={"type"})
        return {"type": "json_schema", "json_schema": schema}
    return {"type": fmt.type}


@dataclass(frozen=True)
class Echo:
    """The request's parameters that every ``response`` object repeats."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    temperature: float
    top_p: float
    user: str | None
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: str | dict[str, Any] = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})

    @classmethod
    def of(cls, body: r.ResponseCreateRequest) -> Echo:
        choice = body.tool_choice
        fmt = body.text.format if body.text is not None else None
        return cls(
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=dict(body.metadata or {}),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            user=body.user,
            tools=[t.model_dump(exclude_unset=True) for t in body.tools or []],
            tool_choice=choice.model_dump() if isinstance(choice, BaseModel) else choice or "auto",
            parallel_tool_calls=body.parallel_tool_calls is not False,
            text={"format": fmt.model_dump(by_alias=True, exclude_unset=True)}
            if fmt is not None
            else {"format": {"type": "text"}},
        )
