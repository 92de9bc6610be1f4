"""The Responses API's shapes (``POST /v1/responses``): the request, the ``response`` object and
its stream events, as OpenAI's API reference (and ``openai.types.responses``) spell them.

Requests are strict, like the chat ones (:class:`~avocado_llm.serve.protocol.Request`): an
argument we do not support is a 400, never ignored. Input is text: a string, or items —
messages whose content is a string or ``input_text`` parts (``output_text`` for an earlier
assistant answer sent back), and an earlier turn's ``function_call`` and
``function_call_output`` items. Tools are ``function`` tools; ``text.format`` is ``text``,
``json_object`` or ``json_schema``. Responses are not stored (``store: true`` is refused; see
the route).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Discriminator, Field, Tag

from avocado_llm.serve.protocol import FunctionName, Request

MAX_METADATA = 16
"""Key-value pairs of ``metadata`` (OpenAI's limits: 16 pairs, keys of 64 characters, values
of 512)."""

_PART_TYPES = ("input_text", "output_text")
_ITEM_TYPES = ("message", "function_call", "function_call_output")


def _text_only(items: object) -> object:
    """A clear message for an input item or a content part we do not take (a function call,
    a reasoning item, an image, a file), before the union's own checks, whose joined messages
    say less."""
    for i, item in enumerate(items if isinstance(items, list) else []):
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(kind, str) and kind not in _ITEM_TYPES:
            raise ValueError(
                f"input[{i}] is of type {kind!r:.40}, which is not supported: send message, "
                "function_call and function_call_output items only"
            )
        parts = item.get("content") if isinstance(item, dict) else None
        for j, part in enumerate(parts if isinstance(parts, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind not in _PART_TYPES:
                raise ValueError(
                    f"input[{i}].content[{j}] is of type {kind!r:.40}, which is not "
                    "supported: this model reads text only (input_text; output_text for an "
                    "earlier answer)"
                )
    return items


def _function_tools_only(tools: object) -> object:
    """A clear message for a built-in tool (web search, file search, …): not offered here."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if isinstance(kind, str) and kind != "function":
            raise ValueError(
                f"tools[{i}] is of type {kind!r:.40}, which is not supported: only function "
                "tools (type 'function', with a name and parameters)"
            )
    return tools


def _bounded_metadata(metadata: object) -> object:
    if isinstance(metadata, dict):
        if len(metadata) > MAX_METADATA:
            raise ValueError(f"at most {MAX_METADATA} pairs; got {len(metadata)}")
        for k, v in metadata.items():
            if isinstance(k, str) and len(k) > 64:
                raise ValueError(f"keys have at most 64 characters; {k[:20]!r}… has {len(k)}")
            if isinstance(v, str) and len(v) > 512:
                raise ValueError(f"values have at most 512 characters; {k[:20]!r}'s has {len(v)}")
    return metadata


class InputText(Request):
    type: Literal["input_text"]
    text: str


class OutputTextIn(Request):
    """An earlier answer's text, as a client sends ``response.output`` back."""

    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    """Citations of that answer: they do not change the prompt."""
    logprobs: list[dict[str, Any]] | None = None
    """Log-probabilities of that answer: they do not change the prompt."""


ContentPart = Annotated[InputText | OutputTextIn, Field(discriminator="type")]


class InputMessage(Request):
    """A message item: ``{"role": "user", "content": "..."}`` (``type`` may be left out), or an
    earlier output message sent back (with its ``id`` and ``status``)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


CallId = Annotated[str, Field(min_length=1, max_length=256)]


class FunctionCallIn(Request):
    """An earlier turn's function call, sent back."""

    type: Literal["function_call"]
    call_id: CallId
    name: FunctionName
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputIn(Request):
    """The result of an earlier function call (``call_id``), as text."""

    type: Literal["function_call_output"]
    call_id: CallId
    output: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _item_type(item: object) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "")
    return kind if isinstance(kind, str) else ""


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallIn, Tag("function_call")]
    | Annotated[FunctionCallOutputIn, Tag("function_call_output")],
    Discriminator(_item_type),
]


class FunctionTool(Request):
    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON Schema of the arguments (an object); checked as chat's are."""
    strict: bool | None = None


class FunctionToolChoice(Request):
    """Call this function (one of ``tools``)."""

    type: Literal["function"]
    name: FunctionName


class TextFormatText(Request):
    type: Literal["text"]


class TextFormatJSONObject(Request):
    type: Literal["json_object"]


class TextFormatJSONSchema(Request):
    type: Literal["json_schema"]
    name: FunctionName
    schema_: dict[str, Any] = Field(alias="schema")
    """The JSON Schema the answer follows; checked as chat's ``response_format`` is."""
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[
    TextFormatText | TextFormatJSONObject | TextFormatJSONSchema, Field(discriminator="type")
]


class TextConfig(Request):
    format: TextFormat | None = None


class ResponseCreateRequest(Request):
    """``POST /v1/responses``."""

    model: str
    input: Annotated[
        str | Annotated[list[InputItem], Field(min_length=1)], BeforeValidator(_text_only)
    ]
    """A user message, or items (a conversation)."""
    instructions: str | None = None
    """A system message before the input."""
    max_output_tokens: int | None = Field(None, ge=1)
    metadata: Annotated[dict[str, str] | None, BeforeValidator(_bounded_metadata)] = None
    """Up to 16 pairs, echoed in the response."""
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    """Refused: responses are not stored, so send the whole conversation in ``input``."""
    store: bool | None = None
    """Only ``false`` (or left out): this server does not store responses."""
    stream: bool = False
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    text: TextConfig | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    tools: (
        Annotated[list[FunctionTool], Field(max_length=128), BeforeValidator(_function_tools_only)]
        | None
    ) = None
    """Functions the model may call (at most 128; schemas capped as chat's are)."""
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    user: str | None = None


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class FunctionCallOut(BaseModel):
    """A function call the model made (``call_id`` is what its ``function_call_output``
    answers)."""

    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = Annotated[OutputMessage | FunctionCallOut, Field(discriminator="type")]


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """The ``response`` object (answer, and the snapshot in lifecycle events)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool = True
    store: bool = False
    temperature: float
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class LifecycleEvent(BaseModel):
    """``response.created``, ``.in_progress``, ``.completed``, ``.incomplete``, ``.failed``."""

    type: str
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(BaseModel):
    """``response.output_item.added`` and ``.done``."""

    type: str
    sequence_number: int
    output_index: int
    item: OutputItem


class ContentPartEvent(BaseModel):
    """``response.content_part.added`` and ``.done``."""

    type: str
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[dict[str, Any]] = Field(default_factory=list)


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None = None


class ArgumentsDeltaEvent(BaseModel):
    type: Literal["response.function_call_arguments.delta"] = (
        "response.function_call_arguments.delta"
    )
    sequence_number: int
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(BaseModel):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    sequence_number: int
    item_id: str
    output_index: int
    name: str
    arguments: str
