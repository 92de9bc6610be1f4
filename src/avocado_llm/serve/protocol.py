"""OpenAI's request and response shapes for the endpoints we serve.

Fields are in the order of OpenAI's API reference; fields we do not support are absent, so a
request using one gets 400 ("Unrecognized request argument") instead of being silently
ignored. Our own extensions (vLLM's names) are marked ``# extension``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

MAX_STOPS = 4
"""Stop strings per request (OpenAI's limit)."""
MAX_STOP_CHARS = 1000
"""Characters per stop string: a stream holds back up to this much text that could be the
start of one, and an upstream server matches them too."""


def _check_stops(stop: object) -> object:
    """Clear messages for empty or over-long stop strings (before the union's own checks,
    whose joined messages say less)."""
    for s in [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []:
        if s == "":
            raise ValueError("stop sequences must not be empty strings")
        if isinstance(s, str) and len(s) > MAX_STOP_CHARS:
            raise ValueError(
                f"a stop sequence may have at most {MAX_STOP_CHARS} characters; one has {len(s)}"
            )
    return stop


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
Stop = Annotated[
    StopString | Annotated[list[StopString], Field(max_length=MAX_STOPS)] | None,
    BeforeValidator(_check_stops),
]
"""Up to 4 strings (of 1 to 1,000 characters) that end a choice; the text returned does not
contain them."""


class Request(BaseModel):
    """Base of request bodies: unknown arguments are errors, and so are values of another
    JSON type than the schema says (``true`` or ``"5"`` for an integer), never coerced."""

    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(Request):
    include_usage: bool = False
    """Send a last chunk with the request's ``usage`` before ``data: [DONE]``."""


class TextPart(Request):
    type: Literal["text"]
    text: str


FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"
"""A function's (and a JSON schema's) name: OpenAI's rule."""
FunctionName = Annotated[str, Field(pattern=FUNCTION_NAME)]


class FunctionCall(Request):
    name: FunctionName
    arguments: str
    """JSON text, as the model wrote it."""


class ToolCall(Request):
    """A function call of an earlier assistant turn (in ``messages``)."""

    id: str = Field(min_length=1, max_length=256)
    type: Literal["function"]
    function: FunctionCall


class ChatMessage(Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    """The call a ``tool`` message answers."""
    tool_calls: Annotated[list[ToolCall], Field(min_length=1, max_length=128)] | None = None
    """The calls an ``assistant`` message made (its content may then be null)."""

    @model_validator(mode="after")
    def _tool_fields(self) -> ChatMessage:
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError("only assistant messages may have tool_calls")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("only tool messages may have a tool_call_id")
        if self.role == "tool" and self.tool_call_id is None:
            raise ValueError("a tool message needs the tool_call_id of the call it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class FunctionDefinition(Request):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    """A JSON Schema of the arguments (an object); checked against the meta-schema."""
    strict: bool | None = None


class Tool(Request):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Request):
    name: FunctionName


class NamedToolChoice(Request):
    """Call this function (one of ``tools``)."""

    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class ResponseFormatText(Request):
    type: Literal["text"]


class ResponseFormatJSONObject(Request):
    type: Literal["json_object"]


class JSONSchemaFormat(Request):
    name: FunctionName
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    """The JSON Schema the answer follows; checked against the meta-schema."""
    strict: bool | None = None


class ResponseFormatJSONSchema(Request):
    type: Literal["json_schema"]
    json_schema: JSONSchemaFormat


ResponseFormat = Annotated[
    ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema,
    Field(discriminator="type"),
]


class ChatCompletionRequest(Request):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str
    logprobs: bool = False
    max_completion_tokens: int | None = Field(None, ge=1)
    max_tokens: int | None = Field(None, ge=1)
    """Deprecated by OpenAI in favour of ``max_completion_tokens``; still accepted."""
    n: int = Field(1, ge=1, le=128)
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    tool_choice: ToolChoice | None = None
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    """Functions the model may call (at most 128; their schemas are capped in size and depth,
    see ``serve/tools.py``)."""
    top_logprobs: int | None = Field(None, ge=0, le=20)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    ignore_eos: bool = False  # extension: keep generating past end-of-turn (load tests)


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
"""A prompt given as token ids (what lm-evaluation-harness sends)."""


class CompletionRequest(Request):
    """``POST /v1/completions`` (legacy text completions)."""

    model: str
    prompt: (
        str
        | Annotated[list[str], Field(min_length=1, max_length=64)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1, max_length=64)]
    )
    """Text, several texts, token ids, or several lists of token ids."""
    echo: bool = False
    """Each choice's text starts with its prompt; with ``logprobs``, so do its log-probabilities
    (the prompt's first token has none). Then ``max_tokens`` may be 0: the prompt alone."""
    logprobs: int | None = Field(None, ge=0, le=5)
    max_tokens: int | None = Field(None, ge=0)
    """0 only with ``echo``."""
    n: int = Field(1, ge=1, le=128)
    seed: int | None = None
    stop: Stop = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    user: str | None = None
    ignore_eos: bool = False  # extension: keep generating past end-of-turn (load tests)


class Usage(BaseModel):
    completion_tokens: int
    prompt_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    bytes: list[int] | None
    logprob: float


class TokenLogprobEntry(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """Chat logprobs: one entry per generated token."""

    content: list[TokenLogprobEntry] | None


class FunctionCallOut(BaseModel):
    arguments: str
    name: str


class ToolCallOut(BaseModel):
    id: str
    function: FunctionCallOut
    type: Literal["function"] = "function"


class ChatMessageOut(BaseModel):
    content: str | None
    refusal: str | None = None
    role: Literal["assistant"] = "assistant"
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(BaseModel):
    finish_reason: str
    index: int
    logprobs: ChoiceLogprobs | None = None
    message: ChatMessageOut


class ChatCompletion(BaseModel):
    id: str
    choices: list[ChatChoice]
    created: int
    model: str
    object: Literal["chat.completion"] = "chat.completion"
    usage: Usage


class ChunkFunctionCall(BaseModel):
    arguments: str | None = None
    name: str | None = None


class ChunkToolCall(BaseModel):
    """A piece of a streamed call: the first of each carries its id, type and name; the
    following ones more of its arguments (to be appended)."""

    index: int
    id: str | None = None
    function: ChunkFunctionCall | None = None
    type: Literal["function"] | None = None


class ChunkDelta(BaseModel):
    content: str | None = None
    role: Literal["assistant"] | None = None
    tool_calls: list[ChunkToolCall] | None = None


class ChunkChoice(BaseModel):
    delta: ChunkDelta
    finish_reason: str | None = None
    index: int
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    choices: list[ChunkChoice]
    created: int
    model: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    """Legacy logprobs: parallel lists, one item per token of the choice's text (an echoed
    prompt's tokens first: the very first has ``null`` log-probability and alternatives)."""

    text_offset: list[int]
    token_logprobs: list[float | None]
    tokens: list[str]
    top_logprobs: list[dict[str, float] | None]


class CompletionChoice(BaseModel):
    finish_reason: str | None
    index: int
    logprobs: CompletionLogprobs | None = None
    text: str


class Completion(BaseModel):
    """A ``/v1/completions`` answer, and each of its stream chunks (same object type)."""

    id: str
    choices: list[CompletionChoice]
    created: int
    model: str
    object: Literal["text_completion"] = "text_completion"
    usage: Usage | None = None


class Model(BaseModel):
    id: str
    created: int
    object: Literal["model"] = "model"
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]
