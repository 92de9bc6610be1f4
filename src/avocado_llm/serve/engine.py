"""What the server asks of an engine, whichever runs the model.

Two engines implement :class:`Engine`: :class:`~avocado_llm.serve.local_engine.LocalEngine`
(a Hugging Face model in this process, with dynamic batching) and
:class:`~avocado_llm.serve.upstream.UpstreamEngine` (any OpenAI-compatible server, e.g. vLLM).
Both stream: a :class:`Generation` yields :class:`Delta` pieces of text per choice, and its
:attr:`Generation.usage` always says how many tokens were produced so far, which is what a
client that hangs up mid-stream pays for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from avocado_llm.protect.scheme import Watermark


class EngineError(Exception):
    """The engine could not answer. ``status`` is what the client gets (an upstream's 400 is
    the client's fault and stays 400; anything else is 502/500). ``message`` is for the client:
    never an upstream's own text (that goes to the server's log).

    ``billable``: text was produced before the failure, and the generation's ``usage`` counts
    it (a stream has passed it on: it is settled for that usage, not released)."""

    def __init__(
        self,
        message: str,
        status: int = 500,
        code: str | None = None,
        *,
        billable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.billable = billable


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample every choice of one request (the OpenAI parameters, resolved)."""

    max_tokens: int
    """Most tokens per choice; the server has checked that it fits the context."""
    temperature: float = 1.0
    """0 means greedy."""
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end a choice; the text returned stops before them."""
    seed: int | None = None
    """Same seed, same request → same answer (each choice its own stream of draws)."""
    n: int = 1
    """Choices per prompt."""
    logprobs: int | None = None
    """Return each token's log-probability and this many alternatives; None: none."""
    ignore_eos: bool = False
    echo: bool = False
    """Legacy completions: each choice starts with its prompt, and with ``logprobs`` the
    prompt tokens' log-probabilities (the first token's ``None``) and alternatives, the
    model's own (as vLLM's prompt log-probabilities); ``max_tokens`` may then be 0."""
    watermark: Watermark | None = None
    """The account's keyed watermark (in-process engine; set by the server from the plan)."""
    tool_choice: str | dict[str, Any] | None = None
    """``none``, ``auto``, ``required`` or a named function (only with :attr:`Prompt.tools`)."""
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    """OpenAI's ``response_format`` (``json_object``, ``json_schema``), checked by
    ``serve/tools.py``; None: free text."""


TOOLS = "tools"
"""An engine feature: tool calling (``tools``, ``tool_choice``, calls in the conversation)."""
STRUCTURED_OUTPUTS = "structured_outputs"
"""An engine feature: ``response_format`` ``json_object`` and ``json_schema``."""


@dataclass(frozen=True)
class Prompt:
    """One prompt, as the engine will see it."""

    tokens: int
    """Prompt tokens: exact when the engine tokenises, otherwise an upper bound."""
    token_ids: tuple[int, ...] | None = None
    messages: list[dict[str, Any]] | None = None
    """Chat messages (upstream engines forward these)."""
    text: str | None = None
    """Raw text of a legacy completion prompt."""
    tools: list[dict[str, Any]] | None = None
    """Function tools the conversation offers the model (their schemas are prompt tokens)."""


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float | None
    """None for an echoed prompt's first token (nothing precedes it)."""
    top: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class ToolCallDelta:
    """A piece of a function call: the first piece of call ``index`` has its id and name, the
    following ones more of its arguments (JSON text, appended)."""

    index: int
    """The call's position among the choice's calls."""
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    """New text of one choice; ``finish_reason`` is set on the choice's last delta."""

    index: int
    """Choice index: ``prompt_index * n + sample_index``."""
    text: str
    finish_reason: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0


def longest_token(tokenizer: Any) -> int:
    """Characters of the tokenizer's longest token, as its vocabulary spells it (one character
    per byte for byte-level BPE, ``▁`` for a space in SentencePiece: never fewer than the
    token's text has), added tokens included."""
    return max((len(token) for token in tokenizer.get_vocab()), default=1)


class Generation(Protocol):
    """A running request. Iterate it for deltas; ``cancel`` stops it (a client hung up)."""

    usage: Usage
    """Tokens so far; final once iteration has ended or :meth:`wait_stopped` returned."""

    def __aiter__(self) -> AsyncIterator[Delta]: ...

    def cancel(self) -> None: ...

    async def wait_stopped(self) -> None:
        """Return once the engine produces nothing more for this request."""
        ...


class Engine(Protocol):
    """A model that answers prompts."""

    model: str
    """The model id clients ask for."""
    context_length: int | None
    """Prompt + completion tokens the model takes; None when unknown (upstream)."""
    max_token_chars: int | None
    """The most characters one token of :attr:`Prompt.tokens` stands for (its tokenizer's
    longest token): bounds a prompt's characters by its tokens, before tokenizing it. None
    when unknown (not started)."""
    features: frozenset[str]
    """What it can do beyond text: :data:`TOOLS`, :data:`STRUCTURED_OUTPUTS`. A request using
    another feature is refused (400), never answered as if it had not asked."""

    async def start(self) -> None: ...

    async def aclose(self) -> None: ...

    def chat_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Prompt:
        """The prompt for a conversation (and the tools it offers), in the model's chat
        template. Raises ``ValueError`` with the template's message when the conversation does
        not fit it."""
        ...

    def text_prompt(self, text: str) -> Prompt: ...

    def generate(self, prompts: Sequence[Prompt], options: SamplingOptions) -> Generation:
        """Start ``options.n`` choices per prompt; the first delta may come later."""
        ...
