"""A chat answer as the Responses API's: a ``response`` object, or its event stream (the
request side is :mod:`avocado_llm.serve.responses_request`). The answer's output is a
``message`` item (its text) and/or ``function_call`` items; a stream is:

    response.created → response.in_progress
    → per item: response.output_item.added (+ response.content_part.added for a message)
      → response.output_text.delta … | response.function_call_arguments.delta …
      → response.output_text.done + response.content_part.done
        | response.function_call_arguments.done
      → response.output_item.done
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
from avocado_llm.serve import tools as t
from avocado_llm.serve.engine import Delta, Usage
from avocado_llm.serve.responses_request import Echo
from avocado_llm.serve.serving import ChoiceResult


def response_usage(usage: Usage) -> r.ResponseUsage:
    return r.ResponseUsage(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.prompt_tokens + usage.completion_tokens,
    )


class Batch(BaseModel):
    """Several events from one delta (an item's end and the next one's start)."""

    events: list[BaseModel]


@dataclass
class _Item:
    """One output item as it streams: a message's text or a function call's arguments."""

    index: int
    """Its ``output_index``."""
    id: str
    kind: str
    """``message`` or ``function_call``."""
    pieces: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    status: str = "in_progress"

    def out(self) -> r.OutputMessage | r.FunctionCallOut:
        status: Any = self.status if self.status != "in_progress" else "incomplete"
        if self.kind == "message":
            content = [r.OutputText(text="".join(self.pieces))]
            return r.OutputMessage(id=self.id, status=status, content=content)
        return r.FunctionCallOut(id=self.id, call_id=self.call_id, name=self.name,
                                 arguments="".join(self.pieces), status=status)  # fmt: skip


@dataclass
class ResponsesFormatter:
    """One request's answer or event stream (a :class:`~avocado_llm.serve.serving.Formatter`
    and a :class:`~avocado_llm.serve.metering.EventStream`): it numbers the events and keeps
    the output items streamed so far, for the closing events. An item is opened when its
    first text or call arrives (so a turn of calls alone has no empty message), and closed
    when the next one opens or the answer ends."""

    model: str
    echo: Echo
    items: list[_Item] = field(default_factory=list)
    calls: dict[int, _Item] = field(default_factory=dict)
    """The function call items, by the engine's call index (late pieces find theirs)."""
    open: _Item | None = None
    finish_reason: str | None = None
    sequence: int = 0
    rid: str = ""
    created: int = 0
    """The response's id and time, once its first snapshot is made (for a failure's)."""

    def answer(
        self, rid: str, created: int, choices: list[ChoiceResult], usage: Usage
    ) -> r.ResponseObject:
        choice = choices[0] if choices else ChoiceResult(0)
        status = "incomplete" if choice.finish_reason == "length" else "completed"
        if choice.text or not choice.tool_calls:
            self._new("message", status=status).pieces.append(choice.text)
        for call in t.merge_calls(choice.tool_calls):
            item = self._new("function_call", status=status)
            item.call_id, item.name = call.id, call.function.name
            item.pieces.append(call.function.arguments)
        return self._response(rid, created, status, usage)

    def opening(self, rid: str, created: int, n_choices: int) -> list[BaseModel]:
        snapshot = self._response(rid, created, "in_progress")
        return [
            r.LifecycleEvent(type="response.created", sequence_number=self._next(),
                             response=snapshot),
            r.LifecycleEvent(type="response.in_progress", sequence_number=self._next(),
                             response=snapshot),
        ]  # fmt: skip

    def chunk(self, rid: str, created: int, delta: Delta) -> BaseModel | None:
        self.finish_reason = delta.finish_reason or self.finish_reason
        events: list[BaseModel] = []
        if delta.text:
            if self.open is None or self.open.kind != "message":
                events += self._close("completed") + self._open("message")
            assert self.open is not None
            self.open.pieces.append(delta.text)
            events.append(r.TextDeltaEvent(
                sequence_number=self._next(), item_id=self.open.id,
                output_index=self.open.index, content_index=0, delta=delta.text,
            ))  # fmt: skip
        for piece in delta.tool_calls:
            if piece.id is not None:  # a new call (the engine checked its id and name)
                events += self._close("completed")
                events += self._open("function_call", piece.id, piece.name or "")
                assert self.open is not None
                self.calls[piece.index] = self.open
            item = self.calls.get(piece.index)
            if item is None or not piece.arguments:
                continue
            item.pieces.append(piece.arguments)
            events.append(r.ArgumentsDeltaEvent(
                sequence_number=self._next(), item_id=item.id, output_index=item.index,
                delta=piece.arguments,
            ))  # fmt: skip
        if not events:
            return None
        return events[0] if len(events) == 1 else Batch(events=events)

    def usage_chunk(self, rid: str, created: int, usage: Usage) -> BaseModel:
        """The Responses stream has no usage chunk: the closing event carries the usage."""
        return Batch(events=self._closing_events(rid, created, usage))

    # The stream's events (EventStream).

    def event(self, item: BaseModel | dict[str, Any]) -> bytes:
        if isinstance(item, Batch):
            return b"".join(self.event(e) for e in item.events)
        data = item.model_dump_json() if isinstance(item, BaseModel) else _json(item)
        kind = getattr(item, "type", None) if isinstance(item, BaseModel) else item.get("type")
        return f"event: {kind or 'error'}\ndata: {data}\n\n".encode()

    def closing(self, rid: str, created: int, usage: Usage) -> bytes:
        return self.event(Batch(events=self._closing_events(rid, created, usage)))

    def failure(self, message: str, code: str | None) -> bytes:
        """An ``error`` event, then ``response.failed`` with the output sent so far."""
        code = code or "server_error"
        error = r.ErrorEvent(sequence_number=self._next(), code=code, message=message)
        failed = self._response(self.rid, self.created, "failed")
        failed.error = r.ResponseError(code=code, message=message)
        return self.event(error) + self.event(
            r.LifecycleEvent(type="response.failed", sequence_number=self._next(),
                             response=failed)
        )  # fmt: skip

    def _closing_events(self, rid: str, created: int, usage: Usage) -> list[BaseModel]:
        status = "incomplete" if self.finish_reason == "length" else "completed"
        events = self._close(status)
        if not self.items:  # no text and no call: an empty message, as chat's ""
            events += self._open("message") + self._close(status)
        final = self._response(rid, created, status, usage)
        kind = f"response.{status}"
        return [*events, r.LifecycleEvent(type=kind, sequence_number=self._next(), response=final)]

    def _new(self, kind: str, status: str = "in_progress") -> _Item:
        prefix = "msg" if kind == "message" else "fc"
        item = _Item(len(self.items), f"{prefix}_{uuid.uuid4().hex}", kind, status=status)
        self.items.append(item)
        return item

    def _open(self, kind: str, call_id: str = "", name: str = "") -> list[BaseModel]:
        """Open a new item: its ``output_item.added`` (and a message's ``content_part.added``)."""
        item = self.open = self._new(kind)
        item.call_id, item.name = call_id, name
        added = r.OutputItemEvent(type="response.output_item.added",
                                  sequence_number=self._next(), output_index=item.index,
                                  item=self._empty(item))  # fmt: skip
        if kind != "message":
            return [added]
        part = r.ContentPartEvent(type="response.content_part.added",
                                  sequence_number=self._next(), item_id=item.id,
                                  output_index=item.index, content_index=0,
                                  part=r.OutputText(text=""))  # fmt: skip
        return [added, part]

    @staticmethod
    def _empty(item: _Item) -> r.OutputMessage | r.FunctionCallOut:
        if item.kind == "message":
            return r.OutputMessage(id=item.id, status="in_progress", content=[])
        return r.FunctionCallOut(id=item.id, call_id=item.call_id, name=item.name,
                                 arguments="", status="in_progress")  # fmt: skip

    def _close(self, status: str) -> list[BaseModel]:
        """Close the open item (if any): its ``.done`` events, with ``status``."""
        item, self.open = self.open, None
        if item is None:
            return []
        item.status = status
        done = item.out()
        where = {"item_id": item.id, "output_index": item.index}
        if isinstance(done, r.FunctionCallOut):
            events: list[BaseModel] = [r.ArgumentsDoneEvent(
                sequence_number=self._next(), name=done.name, arguments=done.arguments, **where
            )]  # fmt: skip
        else:
            part = done.content[0]
            events = [
                r.TextDoneEvent(sequence_number=self._next(), content_index=0, text=part.text,
                                **where),
                r.ContentPartEvent(type="response.content_part.done",
                                   sequence_number=self._next(), content_index=0, part=part,
                                   **where),
            ]  # fmt: skip
        events.append(r.OutputItemEvent(type="response.output_item.done",
                                        sequence_number=self._next(),
                                        output_index=item.index, item=done))  # fmt: skip
        return events

    def _response(
        self, rid: str, created: int, status: str, usage: Usage | None = None
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
            output=[] if status == "in_progress" else [item.out() for item in self.items],
            parallel_tool_calls=e.parallel_tool_calls,
            temperature=e.temperature,
            text=e.text,
            tool_choice=e.tool_choice,
            tools=e.tools,
            top_p=e.top_p,
            usage=response_usage(usage) if usage is not None else None,
            user=e.user,
        )

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence - 1


def _json(item: dict[str, Any]) -> str:
    return json.dumps(item, separators=(",", ":"))
