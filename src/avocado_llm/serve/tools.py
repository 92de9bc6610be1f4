"""Tool calling and structured outputs: what a request may offer the model and ask of it, and
what an engine's function calls must look like before they reach the client.

A request's JSON Schemas (a function's ``parameters``, a ``response_format``'s ``schema``) are
checked here, before anything is held or tokenized. First, on the event loop and cheap: at most
:data:`MAX_SCHEMA_DEPTH` levels of nesting (without recursion), :data:`MAX_SCHEMA_BYTES` each as
compact JSON, :data:`MAX_TOOLS_BYTES` for all tools together (:func:`check_tools`,
:func:`check_response_format`). Then, after the key's rate limit and credit (admission), in a
worker thread: valid against their draft's meta-schema (``jsonschema``; Draft 2020-12 unless
``$schema`` names another; :func:`check_meta`) — up to half a second of CPU for a 64 KiB schema,
so each verdict is kept by the schema's hash (agents send the same tools every turn). Each
failure is a 400 that names the parameter. Whether a key's plan and the engine allow the
feature at all is :func:`check_features`.

Calls an engine returns are checked piece by piece (:class:`CallChecker`): each call's first
piece has an id and the name of one of the request's tools, the pieces of one choice's calls
are numbered 0, 1, … in order, no call is made when ``tool_choice`` is ``none`` (or none was
offered), a named ``tool_choice`` gets that function only, and ``parallel_tool_calls`` false
one call per choice at most.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import validator_for

from avocado_llm.billing import Plan
from avocado_llm.serve import protocol as p
from avocado_llm.serve.engine import STRUCTURED_OUTPUTS, TOOLS, Engine, ToolCallDelta
from avocado_llm.serve.errors import bad_request

MAX_TOOLS = 128
"""Tools per request (OpenAI's limit; the request schema says it too)."""
MAX_SCHEMA_DEPTH = 32
"""Levels of nested objects and arrays in one JSON Schema."""
MAX_SCHEMA_BYTES = 64 * 1024
"""Bytes of one JSON Schema, as compact JSON."""
MAX_TOOLS_BYTES = 256 * 1024
"""Bytes of all of a request's tools together (names, descriptions, schemas), compact JSON."""
MAX_CALL_ID_CHARS = 256
"""Characters of the id an engine gives a call."""

_NAME = re.compile(p.FUNCTION_NAME)
_JSON_FORMATS = ("json_object", "json_schema")


def compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def depth(value: object) -> int:
    """Levels of nested dicts and lists in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Sequence[object] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level > MAX_SCHEMA_DEPTH:
            break  # deep enough to refuse: look no further
        stack.extend((child, level + 1) for child in children)
    return deepest


def check_schema(schema: dict[str, Any], param: str) -> None:
    """400 naming ``param`` unless ``schema`` is a JSON Schema within the caps (both checks)."""
    check_shape(schema, param)
    check_meta([(schema, param)])


def check_shape(schema: dict[str, Any], param: str) -> None:
    """400 naming ``param`` when ``schema`` is nested too deep or too large (cheap)."""
    levels = depth(schema)
    if levels > MAX_SCHEMA_DEPTH:
        raise bad_request(
            f"{param} is nested more than {MAX_SCHEMA_DEPTH} levels deep; flatten the schema",
            param,
        )
    size = len(compact(schema).encode())
    if size > MAX_SCHEMA_BYTES:
        raise bad_request(
            f"{param} has {size} bytes as JSON, more than the {MAX_SCHEMA_BYTES} a schema may "
            "have; shorten it",
            param,
        )


_VERDICTS: OrderedDict[str, tuple[str, str] | None] = OrderedDict()
"""Meta-schema verdicts by the SHA-256 of a schema's compact JSON: None (valid) or the error's
message and where it is (most recently used last)."""
_VERDICTS_KEPT = 4096
_verdicts_lock = threading.Lock()


def check_meta(schemas: Sequence[tuple[dict[str, Any], str]]) -> None:
    """400 naming the parameter of the first of ``schemas`` (each with its parameter) that is
    not valid against its meta-schema. CPU-bound: call it in a worker thread."""
    for schema, param in schemas:
        digest = hashlib.sha256(compact(schema).encode()).hexdigest()
        with _verdicts_lock:
            known = digest in _VERDICTS
            verdict = _VERDICTS.get(digest)
            if known:
                _VERDICTS.move_to_end(digest)
        if not known:
            verdict = _meta_verdict(schema)
            with _verdicts_lock:
                _VERDICTS[digest] = verdict
                while len(_VERDICTS) > _VERDICTS_KEPT:
                    _VERDICTS.popitem(last=False)
        if verdict is not None:
            message, where = verdict
            at = f" at {param}{where}" if where else ""
            raise bad_request(f"{param} is not a valid JSON Schema: {message}{at}", param)


def _meta_verdict(schema: dict[str, Any]) -> tuple[str, str] | None:
    try:
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        return str(e.message)[:300], e.json_path.removeprefix("$") or " (the root)"
    except Exception as e:  # a $schema of the wrong type, a pattern the regex engine refuses …
        return f"{type(e).__name__}: {str(e)[:200]}", ""
    return None


def check_function(name: str, parameters: dict[str, Any] | None, param: str) -> None:
    """A function tool's name (also checked by the request schema) and its parameters'
    schema's shape (:func:`check_shape`; :func:`check_meta` is the caller's, in a worker
    thread), which must describe an object when it says what it describes."""
    if not _NAME.match(name):
        raise bad_request(f"{param}.name must match {p.FUNCTION_NAME}", f"{param}.name")
    if parameters is None:
        return
    where = f"{param}.parameters"
    if "type" in parameters and parameters["type"] != "object":
        raise bad_request(
            f"{where} must be a JSON Schema of type 'object' (the arguments are an object), "
            f"not {compact(parameters['type'])[:100]}",
            where,
        )
    check_shape(parameters, where)


def check_tools(body: p.ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The chat request's ``tools`` as forwarded (None: none), with ``tool_choice`` and
    ``parallel_tool_calls`` checked against them; 400 for anything wrong."""
    if not body.tools:
        if body.tools is not None:
            raise bad_request("tools must not be empty; leave it out to offer none", "tools")
        for name in ("tool_choice", "parallel_tool_calls"):
            if getattr(body, name) is not None:
                raise bad_request(f"{name} is only allowed when tools are given", name)
        return None
    names: set[str] = set()
    for i, tool in enumerate(body.tools):
        function = tool.function
        if function.name in names:
            raise bad_request(
                f"tools has two functions named {function.name!r}; names must be unique",
                f"tools[{i}].function.name",
            )
        names.add(function.name)
        check_function(function.name, function.parameters, f"tools[{i}].function")
    tools = [t.model_dump(exclude_unset=True) for t in body.tools]
    size = len(compact(tools).encode())
    if size > MAX_TOOLS_BYTES:
        raise bad_request(
            f"tools have {size} bytes as JSON, more than the {MAX_TOOLS_BYTES} a request's "
            "tools may have together; offer fewer or shorter ones",
            "tools",
        )
    choice = body.tool_choice
    if isinstance(choice, p.NamedToolChoice) and choice.function.name not in names:
        raise bad_request(
            f"tool_choice names the function {choice.function.name!r}, which is not in tools",
            "tool_choice",
        )
    return tools


def tool_choice(body: p.ChatCompletionRequest) -> str | dict[str, Any] | None:
    choice = body.tool_choice
    return choice.model_dump() if isinstance(choice, p.NamedToolChoice) else choice


def check_response_format(body: p.ChatCompletionRequest) -> dict[str, Any] | None:
    """``response_format`` as forwarded (None: free text, also for ``{"type": "text"}``)."""
    fmt = body.response_format
    if fmt is None or isinstance(fmt, p.ResponseFormatText):
        return None
    if isinstance(fmt, p.ResponseFormatJSONSchema):
        if fmt.json_schema.schema_ is None:
            raise bad_request(
                "response_format.json_schema.schema is required: the JSON Schema the answer "
                "must follow",
                "response_format.json_schema.schema",
            )
        check_shape(fmt.json_schema.schema_, "response_format.json_schema.schema")
    return fmt.model_dump(by_alias=True, exclude_unset=True)


def schemas_of(
    tools: list[dict[str, Any]] | None, response_format: dict[str, Any] | None
) -> list[tuple[dict[str, Any], str]]:
    """The JSON Schemas of checked ``tools`` and ``response_format``, each with its parameter
    (for :func:`check_meta`)."""
    found = [
        (tool["function"]["parameters"], f"tools[{i}].function.parameters")
        for i, tool in enumerate(tools or [])
        if tool["function"].get("parameters") is not None
    ]
    schema = (response_format or {}).get("json_schema", {}).get("schema")
    if schema is not None:
        found.append((schema, "response_format.json_schema.schema"))
    return found


def has_calls(messages: Sequence[p.ChatMessage]) -> bool:
    """Whether the conversation has function calls of an earlier assistant turn."""
    return any(m.tool_calls for m in messages)


def check_features(
    plan: Plan,
    engine: Engine,
    *,
    tools: bool,
    calls_in_messages: bool = False,
    structured: bool,
    param: str = "tools",
) -> None:
    """400 when the key's plan or the engine does not allow what the request uses: ``tools``
    (offered to the model), ``calls_in_messages`` (earlier calls in the conversation),
    ``structured`` (a JSON ``response_format``)."""
    if tools and not plan.tools:
        raise bad_request(
            f"tools are not available on your plan ({plan.name!r}); remove '{param}'", param
        )
    if structured and not plan.structured_outputs:
        raise bad_request(
            f"structured outputs (response_format json_object or json_schema) are not "
            f"available on your plan ({plan.name!r}); remove 'response_format'",
            "response_format",
        )
    features = getattr(engine, "features", frozenset())
    if (tools or calls_in_messages) and TOOLS not in features:
        where = param if tools else "messages"
        raise bad_request(
            f"the model {engine.model!r} does not support tool calling on this server (its "
            f"in-process engine); remove '{param}' and earlier tool_calls from the messages",
            where,
            "unsupported_feature",
        )
    if structured and STRUCTURED_OUTPUTS not in features:
        raise bad_request(
            f"the model {engine.model!r} does not support structured outputs "
            "(response_format json_object or json_schema) on this server (its in-process "
            "engine); leave response_format out or use type 'text'",
            "response_format",
            "unsupported_feature",
        )


def wants_json(response_format: dict[str, Any] | None) -> bool:
    return response_format is not None and response_format.get("type") in _JSON_FORMATS


def check_chat(
    plan: Plan, engine: Engine, body: p.ChatCompletionRequest
) -> tuple[list[dict[str, Any]] | None, dict[str, Any] | None]:
    """A conversation's ``tools`` and ``response_format``, each checked, and both allowed by
    the plan and the engine (:func:`check_features`)."""
    tools = check_tools(body)
    response_format = check_response_format(body)
    check_features(
        plan,
        engine,
        tools=tools is not None,
        calls_in_messages=has_calls(body.messages),
        structured=wants_json(response_format),
    )
    return tools, response_format


@dataclass
class _Call:
    id: str
    name: str


@dataclass
class CallChecker:
    """Checks an engine's function calls as their pieces arrive (see the module's docstring);
    :meth:`take` raises ``ValueError`` for a piece that breaks the rules."""

    names: frozenset[str]
    """The functions the request offered (none: no call may be made)."""
    forced: str | None = None
    """The function a named ``tool_choice`` asks for."""
    max_calls: int = MAX_TOOLS
    _calls: dict[int, list[_Call]] = field(default_factory=dict)

    @classmethod
    def of(
        cls, tools: list[dict[str, Any]] | None, choice: object, parallel: object = None
    ) -> CallChecker:
        """The checker of a forwarded request's ``tools``, ``tool_choice`` and
        ``parallel_tool_calls``."""
        if not tools or choice == "none":
            return cls(frozenset())
        forced = choice["function"]["name"] if isinstance(choice, dict) else None
        names = frozenset(t["function"]["name"] for t in tools)
        return cls(names, forced, 1 if parallel is False else MAX_TOOLS)

    def calls(self, choice: int) -> int:
        """Calls begun in ``choice`` so far."""
        return len(self._calls.get(choice, []))

    def take(self, choice: int, raw: object) -> list[ToolCallDelta]:
        """The pieces in one choice's delta (``delta.tool_calls``: None or a list)."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ValueError(f"tool_calls that are not a list: {raw!r:.200}")
        return [self._piece(choice, item) for item in raw]

    def _piece(self, choice: int, item: object) -> ToolCallDelta:
        if not isinstance(item, dict):
            raise ValueError(f"a tool call that is not an object: {item!r:.200}")
        index, call_id, kind = item.get("index"), item.get("id"), item.get("type")
        function = item.get("function") or {}
        if not isinstance(function, dict):
            raise ValueError(f"a tool call's function that is not an object: {item!r:.200}")
        name, arguments = function.get("name"), function.get("arguments") or ""
        if type(index) is not int or not isinstance(arguments, str):
            raise ValueError(f"a tool call of the wrong shape: {item!r:.200}")
        if kind not in (None, "function") or not isinstance(call_id, str | None):
            raise ValueError(f"a tool call of the wrong shape: {item!r:.200}")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"a tool call's name that is not a string: {item!r:.200}")
        calls = self._calls.setdefault(choice, [])
        if index == len(calls):  # a new call: its id and one of the offered names
            if not self.names:
                raise ValueError("a tool call where no tool was offered (or tool_choice none)")
            if not call_id or len(call_id) > MAX_CALL_ID_CHARS or name not in self.names:
                raise ValueError(f"a tool call without an id or an offered name: {item!r:.200}")
            if self.forced is not None and name != self.forced:
                raise ValueError(f"a call of {name!r} where tool_choice asked for {self.forced!r}")
            if index >= self.max_calls:
                raise ValueError(f"more than {self.max_calls} tool calls in one choice")
            calls.append(_Call(call_id, name))
            return ToolCallDelta(index, call_id, name, arguments)
        if not 0 <= index < len(calls):
            raise ValueError(f"a tool call index out of order: {index} after {len(calls)} calls")
        call = calls[index]
        if call_id not in (None, call.id) or name not in (None, "", call.name):
            raise ValueError(f"a tool call that changed its id or name: {item!r:.200}")
        return ToolCallDelta(index, None, None, arguments)


def merge_calls(pieces: Sequence[ToolCallDelta]) -> list[p.ToolCallOut]:
    """A choice's calls from their pieces (in order): id and name from each call's first
    piece, the arguments of all of its pieces joined."""
    calls: dict[int, p.ToolCallOut] = {}
    for piece in pieces:
        call = calls.get(piece.index)
        if call is None:
            function = p.FunctionCallOut(name=piece.name or "", arguments=piece.arguments)
            calls[piece.index] = p.ToolCallOut(id=piece.id or "", function=function)
        else:
            call.function.arguments += piece.arguments
    return [calls[i] for i in sorted(calls)]


def call_pieces(pieces: Sequence[ToolCallDelta]) -> list[p.ChunkToolCall] | None:
    """A stream chunk's ``tool_calls`` (None: no piece)."""
    if not pieces:
        return None
    return [
        p.ChunkToolCall(
            index=piece.index,
            id=piece.id,
            type="function" if piece.id is not None else None,
            function=p.ChunkFunctionCall(name=piece.name, arguments=piece.arguments),
        )
        for piece in pieces
    ]
