"""The checks an OpenAI-compatible answer passes before it becomes :class:`Completion` objects.

An endpoint is not trusted: every field is checked for its type, Unicode (no lone surrogates),
counts (``0 ≤ tokens < 2**31``; completion tokens, logprob positions and text bounded by
``max_tokens``), and log-probabilities (finite and ≤ 0; a positive value up to
``LOGPROB_ROUNDING`` is a server's rounding and is stored as 0). A failed check raises
:class:`Malformed`, whose message names the field and the rule it broke.
"""

from __future__ import annotations

import math
from typing import Any

from avocado_llm.teachers.base import Completion, SamplingParams, TokenLogprobs

# Only running out of tokens is "length"; tool calls, content filters and the like end an
# answer on the model's (or the server's) own terms: "stop".
LENGTH_REASONS = frozenset({"length", "max_tokens", "model_length"})
LOGPROB_ROUNDING = 1e-4
"""A positive log-probability up to this is a server's float rounding (a log-softmax of a
near-certain token), stored as 0; above it the answer is refused."""
MAX_COUNT = 2**31 - 1
"""Token counts are int32 in the harvest's Parquet schema."""
MAX_TOKEN_BYTES = 256
"""More bytes than any token of the usual vocabularies spells: ``max_tokens`` tokens of text are
at most ``max_tokens × MAX_TOKEN_BYTES`` bytes (+ ``TEXT_SLACK_BYTES``)."""
TEXT_SLACK_BYTES = 1024


class Malformed(ValueError):
    """The answer breaks the protocol or a bound; the message says where."""


def parse_completions(
    data: Any, latency: float, top_k: int, params: SamplingParams, keep_reasoning: bool = False
) -> list[Completion]:
    """Completions from a checked answer (see the module's docstring); a :class:`Malformed`
    says which field broke which rule. ``keep_reasoning``: keep a ``reasoning_content`` (or
    ``reasoning``) field as the completion's reasoning."""
    if not isinstance(data, dict):
        raise Malformed(f"the answer is a JSON {type(data).__name__}, not an object")
    usage = _object(data.get("usage"), "usage")
    raw_choices = data.get("choices")
    if not isinstance(raw_choices, list) or not raw_choices:
        raise Malformed("no choices")
    indexed = []
    for i, choice in enumerate(raw_choices):
        choice = _object(choice, f"choices[{i}]")
        index = choice.get("index", i)
        indexed.append((_count(index, f"choices[{i}].index"), i, choice))
    choices = [c for _, _, c in sorted(indexed, key=lambda t: t[:2])]
    limit = params.max_new_tokens + 1  # one token of slack: an end-of-turn some count
    logprobs = [_logprobs(c, top_k, limit) if top_k else None for c in choices]
    prompt_tokens = _count(usage.get("prompt_tokens") or 0, "usage.prompt_tokens")
    total = _count(usage.get("completion_tokens") or 0, "usage.completion_tokens")
    if total > len(choices) * limit:
        raise Malformed(
            f"usage.completion_tokens is {total} for {len(choices)} choice(s) of at most "
            f"max_tokens={params.max_new_tokens}"
        )
    counts = _share(total, [len(lp or []) for lp in logprobs])
    max_bytes = params.max_new_tokens * MAX_TOKEN_BYTES + TEXT_SLACK_BYTES
    completions = []
    for i, (choice, lps, count) in enumerate(zip(choices, logprobs, counts, strict=True)):
        message = _object(choice.get("message"), f"choices[{i}].message")
        text = _text(message.get("content"), f"choices[{i}].message.content")
        reasoning = None
        if keep_reasoning:
            field = "reasoning_content" if "reasoning_content" in message else "reasoning"
            reasoning = _text(message.get(field), f"choices[{i}].message.{field}") or None
        size = len(text.encode()) + len((reasoning or "").encode())
        if size > max_bytes:
            raise Malformed(
                f"choices[{i}] has {size} bytes of text, more than max_tokens="
                f"{params.max_new_tokens} tokens can spell ({max_bytes})"
            )
        finish = choice.get("finish_reason")
        if finish is not None and not isinstance(finish, str):
            raise Malformed(f"choices[{i}].finish_reason is a {type(finish).__name__}")
        completions.append(
            Completion(
                text=text,
                finish_reason="length" if finish in LENGTH_REASONS else "stop",
                logprobs=lps,
                prompt_tokens=prompt_tokens,
                completion_tokens=count,
                reasoning=reasoning,
                latency_s=latency,
            )
        )
    return completions


def _object(value: Any, where: str) -> dict[str, Any]:
    """A JSON object, ``None`` read as empty."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Malformed(f"{where} is a {type(value).__name__}, not an object")
    return value


def _count(value: Any, where: str) -> int:
    """A whole number in ``[0, 2**31)`` (a float that is one, like 12.0, is accepted)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise Malformed(f"{where} is {_show(value)}, not a whole number")
    if not 0 <= value <= MAX_COUNT:
        raise Malformed(f"{where} is {value}, outside [0, {MAX_COUNT}]")
    return value


def _text(value: Any, where: str) -> str:
    """A string (``None`` read as empty) that is valid Unicode: no lone surrogates."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Malformed(f"{where} is a {type(value).__name__}, not a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise Malformed(f"{where} holds a lone surrogate at {error.start}") from None
    return value


def _logprob(value: Any, where: str) -> float:
    """A log-probability: finite and ≤ 0 (up to ``LOGPROB_ROUNDING``, then clamped to 0)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Malformed(f"{where} is {_show(value)}, not a number")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf if value > 0 else -math.inf
    if not math.isfinite(number) or number > LOGPROB_ROUNDING:
        raise Malformed(f"{where} is {number}, not a log-probability (finite and at most 0)")
    return min(number, 0.0)


def _logprobs(choice: dict[str, Any], top_k: int, limit: int) -> list[TokenLogprobs] | None:
    where = f"choices[{choice.get('index')}].logprobs"
    block = _object(choice.get("logprobs"), where)
    content = block.get("content")
    if content is None:
        return None
    if not isinstance(content, list):
        raise Malformed(f"{where}.content is a {type(content).__name__}, not a list")
    if len(content) > limit:
        raise Malformed(f"{where} has {len(content)} positions for max_tokens={limit - 1}")
    positions = []
    for p, entry in enumerate(content):
        here = f"{where}.content[{p}]"
        entry = _object(entry, here)
        tops = entry.get("top_logprobs") or []
        if not isinstance(tops, list) or len(tops) > top_k + 1:
            raise Malformed(f"{here}.top_logprobs is not a list of at most {top_k + 1}")
        tops = [_object(t, f"{here}.top_logprobs[{j}]") for j, t in enumerate(tops)]
        positions.append(
            TokenLogprobs(
                token_id=None,
                token=_token(entry.get("token"), f"{here}.token"),
                logprob=_logprob(entry.get("logprob"), f"{here}.logprob"),
                top_ids=[None] * len(tops),
                top_tokens=[
                    _token(t.get("token"), f"{here}.top_logprobs[{j}].token")
                    for j, t in enumerate(tops)
                ],
                top_logprobs=[
                    _logprob(t.get("logprob"), f"{here}.top_logprobs[{j}].logprob")
                    for j, t in enumerate(tops)
                ],
            )
        )
    return positions


def _token(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise Malformed(f"{where} is {_show(value)}, not a string")
    if len(value) > 4 * MAX_TOKEN_BYTES:
        raise Malformed(f"{where} is {len(value)} characters long, not one token")
    return _text(value, where)


def _show(value: Any) -> str:
    """A short description of a JSON value for a message."""
    shown = repr(value) if isinstance(value, int | float | bool) or value is None else ""
    return f"{type(value).__name__} {shown[:40]}".strip()


def _share(total: int, sizes: list[int]) -> list[int]:
    """Split a request's completion tokens (the API reports one sum) among its choices: each
    gets its logprob count, and the rest (end-of-turn tokens; all without logprobs) evenly."""
    base, rest = divmod(max(total - sum(sizes), 0), len(sizes) or 1)
    return [size + base + (i < rest) for i, size in enumerate(sizes)]


def chat_shape(data: Any) -> Any:
    """A ``/v1/completions`` answer (a base model's, :mod:`~avocado_llm.teachers.prompting`) in
    the shape of a ``/chat/completions`` one, for :func:`parse_completions` to check: each
    choice's ``text`` becomes its message (stripped, as the in-process teacher strips), and its
    ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs`` as token → log-probability)
    become positions. Positions that begin past the text — the stop string's or the
    end-of-text token — are dropped, as the chat answer leaves out its end-of-turn marker. A
    shape that is not a completions answer is passed on for the checks to refuse."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        return data
    choices = []
    for i, choice in enumerate(data["choices"]):
        if not isinstance(choice, dict) or "message" in choice:
            choices.append(choice)
            continue
        text = _text(choice.get("text"), f"choices[{i}].text")
        shaped = {k: v for k, v in choice.items() if k not in ("text", "logprobs")}
        shaped["message"] = {"role": "assistant", "content": text.strip()}
        if choice.get("logprobs") is not None:
            where = f"choices[{i}].logprobs"
            shaped["logprobs"] = {"content": _text_positions(choice["logprobs"], text, where)}
        choices.append(shaped)
    return {**data, "choices": choices}


def _text_positions(block: Any, text: str, where: str) -> list[dict[str, Any]]:
    block = _object(block, where)
    tokens, values = block.get("tokens"), block.get("token_logprobs")
    tops = block.get("top_logprobs")
    if not isinstance(tokens, list) or not isinstance(values, list) or len(tokens) != len(values):
        raise Malformed(f"{where}: tokens and token_logprobs are not lists of one length")
    if tops is None:
        tops = [None] * len(tokens)
    if not isinstance(tops, list) or len(tops) != len(tokens):
        raise Malformed(f"{where}.top_logprobs is not a list as long as tokens")
    positions, start = [], 0
    for p, (token, value, top) in enumerate(zip(tokens, values, tops, strict=True)):
        token = _token(token, f"{where}.tokens[{p}]")
        if start >= len(text.rstrip()):
            break
        start += len(token)
        alternatives = sorted(
            _object(top, f"{where}.top_logprobs[{p}]").items(),
            key=lambda kv: -kv[1] if isinstance(kv[1], int | float) else 0,
        )
        positions.append({
            "token": token,
            "logprob": value,
            "top_logprobs": [{"token": t, "logprob": v} for t, v in alternatives],
        })  # fmt: skip
    return positions
