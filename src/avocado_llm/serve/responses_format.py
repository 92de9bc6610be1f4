"""The Responses API translated to and from the chat path that both engines run.

A request becomes chat messages (``instructions`` a system message first, then the input's
messages; ``developer`` is ``system``, as in chat), which run and are metered exactly as a chat
completion is. The answer becomes a ``response`` object; a stream becomes the Responses event
sequence:

    response.created → response.in_progress → response.output_item.added
    → response.content_part.added → response.output_text.delta …
    → response.output_text.done → response.content_part.done → response.output_item.done
    → response.completed (with usage) | response.incomplete (max_output_tokens reached)

A stream that fails ends with an ``error`` event and ``response.failed``. Each event is
``event: <type>`` and ``data: <json>``, numbered by ``sequence_number``; there is no
``[DONE]``. As with chat, the events after the last text go out once the request is settled.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from avocado_llm.serve import responses_protocol as r
from avocado_llm.serve.engine import Delta, Usage
from avocado_llm.serve.errors import bad_request
from avocado_llm.serve.serving import ChoiceResult


def to_messages(body: r.ResponseCreateRequest) -> list[dict[str, Any]]:
    """The chat messages of a Responses request; 400 for a part of the wrong kind for its
    role (``output_text`` is an assistant's, ``input_text`` everyone else's)."""
    messages: list[dict[str, Any]] = []
    if body.instructions is not None:
        messages.append({"role": "system", "content": body.instructions})
    if isinstance(body.input, str):
        return [*messages, {"role": "user", "content": body.input}]
    for i, item in enumerate(body.input):
        role = "system" if item.role == "developer" else item.role
        if isinstance(item.content, str):
            messages.append({"role": role, "content": item.content})
            continue
        expected = "output_text" if item.role == "assistant" else "input_text"
        for j, part in enumerate(item.content):
            if part.type != expected:
                raise bad_request(
                    f"input[{i}] is a {item.role} message: its content parts are {expected}, "
                    f"but part {j} is {part.type}",
                    param=f"input[{i}].content[{j}].type",
                )
        messages.append({"role": role, "content": "".join(p.text for p in item.content)})
    return messages


@dataclass(frozen=True)
class Echo:
    """The request's parameters that every ``response`` object repeats."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    temperature: float
    top_p: float
    user: str | None

    @classmethod
    def of(cls, body: r.ResponseCreateRequest) -> Echo:
        return cls(
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            metadata=dict(body.metadata or {}),
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            user=body.user,
        )


def response_usage(usage: Usage) -> r.ResponseUsage:
    return r.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


@dataclass
class ResponsesFormatter:
    """One request's answer or event stream (a :class:`~avocado_llm.serve.serving.Formatter`
    and a :class:`~avocado_llm.serve.metering.EventStream`): it numbers the events and keeps
    the text streamed so far, for the closing events."""

    model: str
    echo: Echo
    item_id: str = field(default_factory=lambda: f"msg_{uuid.uuid4().hex}")
    pieces: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    sequence: int = 0
    rid: str = ""
    created: int = 0
    """The response's id and time, once its first snapshot is made (for a failure's)."""

    def answer(
        self, rid: str, created: int, choices: list[ChoiceResult], usage: Usage
    ) -> r.ResponseObject:
        choice = choices[0] if choices else ChoiceResult(0)
        incomplete = choice.finish_reason == "length"
        item = self._item(choice.text, "incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        return self._response(rid, created, status, [item], usage)

    def opening(self, rid: str, created: int, n_choices: int) -> list[BaseModel]:
        snapshot = self._response(rid, created, "in_progress", [])
        return [
            r.LifecycleEvent(type="response.created", sequence_number=self._next(),
                             response=snapshot),
            r.LifecycleEvent(type="response.in_progress", sequence_number=self._next(),
                             response=snapshot),
            r.OutputItemEvent(type="response.output_item.added", sequence_number=self._next(),
                              output_index=0, item=self._item(None, "in_progress")),
            r.ContentPartEvent(type="response.content_part.added", sequence_number=self._next(),
                               item_id=self.item_id, output_index=0, content_index=0,
                               part=r.OutputText(text="")),
        ]  # fmt: skip

    def chunk(self, rid: str, created: int, delta: Delta) -> r.TextDeltaEvent | None:
        self.finish_reason = delta.finish_reason or self.finish_reason
        if not delta.text:
            return None
        self.pieces.append(delta.text)
        return r.TextDeltaEvent(
            sequence_number=self._next(), item_id=self.item_id, output_index=0, content_index=0,
            delta=delta.text,
        )  # fmt: skip

    def usage_chunk(self, rid: str, created: int, usage: Usage) -> BaseModel:
        """The Responses stream has no usage chunk: the closing event carries the usage."""
        return self._closing_events(rid, created, usage)[-1]

    # The stream's events (EventStream).

    def event(self, item: BaseModel | dict[str, Any]) -> bytes:
        data = item.model_dump_json() if isinstance(item, BaseModel) else _json(item)
        kind = item.type if isinstance(item, BaseModel) else item.get("type", "error")  # type: ignore[attr-defined]
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def closing(self, rid: str, created: int, usage: Usage) -> bytes:
        return b"".join(self.event(e) for e in self._closing_events(rid, created, usage))

    def failure(self, message: str, code: str | None) -> bytes:
        """An ``error`` event, then ``response.failed`` with the text sent so far."""
        code = code or "server_error"
        error = r.ErrorEvent(sequence_number=self._next(), code=code, message=message)
        item = self._item("".join(self.pieces), "incomplete")
        failed = self._response(self.rid, self.created, "failed", [item])
        failed.error = r.ResponseError(code=code, message=message)
        return self.event(error) + self.event(
            r.LifecycleEvent(type="response.failed", sequence_number=self._next(),
                             response=failed)
        )  # fmt: skip

    def _closing_events(self, rid: str, created: int, usage: Usage) -> list[BaseModel]:
        text = "".join(self.pieces)
        incomplete = self.finish_reason == "length"
        item = self._item(text, "incomplete" if incomplete else "completed")
        status = "incomplete" if incomplete else "completed"
        final = self._response(rid, created, status, [item], usage)
        return [
            r.TextDoneEvent(sequence_number=self._next(), item_id=self.item_id, output_index=0,
                            content_index=0, text=text),
            r.ContentPartEvent(type="response.content_part.done", sequence_number=self._next(),
                               item_id=self.item_id, output_index=0, content_index=0,
                               part=r.OutputText(text=text)),
            r.OutputItemEvent(type="response.output_item.done", sequence_number=self._next(),
                              output_index=0, item=item),
            r.LifecycleEvent(type=f"response.{status}", sequence_number=self._next(),
                             response=final),
        ]  # fmt: skip

    def _item(self, text: str | None, status: str) -> r.OutputMessage:
        content = [] if text is None else [r.OutputText(text=text)]
        return r.OutputMessage(id=self.item_id, status=status, content=content)  # type: ignore[arg-type]

    def _response(
        self,
        rid: str,
        created: int,
        status: str,
        output: list[r.OutputMessage],
        usage: Usage | None = None,
    ) -> r.ResponseObject:
        self.rid, self.created = rid, created
        e = self.echo
        return r.ResponseObject(
            id=rid,
            created_at=created,
            status=status,  # type: ignore[arg-type]
            incomplete_details=(
                r.IncompleteDetails(reason="max_output_tokens") if status == "incomplete" else None
            ),
            instructions=e.instructions,
            max_output_tokens=e.max_output_tokens,
            metadata=e.metadata,
            model=self.model,
            output=output,
            temperature=e.temperature,
            top_p=e.top_p,
            usage=response_usage(usage) if usage is not None else None,
            user=e.user,
        )

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1


def _json(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))
