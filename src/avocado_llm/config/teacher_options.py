"""A teacher's engine options (``teachers[].vllm``) and the prompt template of a base model
(``teachers[].prompt_template``): parts of the recipe's teacher entry."""

import re
from dataclasses import dataclass, field

from avocado_llm.config.fields import Check, check_range

CONTENT = "{content}"
"""Where a message's text goes in a :class:`PromptTemplate` turn."""


@dataclass(kw_only=True)
class VllmConfig:
    """How the vLLM server of an `engine: vllm` teacher is started (`avocado teachers up`)."""

    dtype: str = "bfloat16"
    """Weights and activations: bfloat16 (CPU and GPU), float16 (GPU) or float32."""
    max_model_len: int = 2048
    """Longest prompt + answer, in tokens; bounds the KV cache one sequence needs."""
    kv_cache_gb: float = 2.0
    """KV cache size in GiB on a CPU (VLLM_CPU_KVCACHE_SPACE); on a GPU vLLM sizes it from
    gpu_memory_utilization instead."""
    gpu_memory_utilization: float = 0.9
    """GPU only: the share of the GPU's memory this server may take."""
    tensor_parallel_size: int = 1
    """GPU only: GPUs one server spreads the model over."""
    cuda_devices: str | None = None
    """GPU only: the GPUs this server sees (its CUDA_VISIBLE_DEVICES), e.g. "1", or "2,3" with
    tensor_parallel_size 2; null: those Avocado itself sees."""
    start_timeout_s: float = 900.0
    """Seconds to wait for the server's /health before giving up (loading and compiling on a
    CPU takes minutes)."""
    extra_args: list[str] = field(default_factory=list)
    """More `vllm serve` arguments, as separate items, e.g. [--enforce-eager]."""

    def check(self) -> list[Check]:
        problems = [
            *check_range(self, "max_model_len", 16),
            *check_range(self, "kv_cache_gb", 0, low_open=True),
            *check_range(self, "gpu_memory_utilization", 0, 1, low_open=True),
            *check_range(self, "tensor_parallel_size", 1),
            *check_range(self, "start_timeout_s", 0, low_open=True),
        ]
        if self.cuda_devices is not None and not re.fullmatch(
            r"[0-9]+(,[0-9]+)*", self.cuda_devices
        ):
            fix = 'list GPU indices, e.g. "0" or "2,3"'
            problems.append(("cuda_devices", f"bad GPU list {self.cuda_devices!r}", fix))
        if self.dtype not in ("auto", "bfloat16", "float16", "float32", "half", "float"):
            fix = "use bfloat16, float16, float32 or auto"
            problems.append(("dtype", f"unknown dtype {self.dtype!r}", fix))
        owned = ("--host", "--port", "--model", "--served-model-name", "--max-logprobs")
        for i, arg in enumerate(self.extra_args):
            if arg.split("=", 1)[0] in owned:
                fix = "remove it: Avocado sets it (loopback, a free port, the teacher's name)"
                problems.append((f"extra_args[{i}]", f"{arg!r} is set by Avocado", fix))
        return problems


@dataclass(kw_only=True)
class PromptTemplate:
    """How a base model (no chat template) is asked: a plain-text prompt — a few-shot prefix,
    then the conversation's turns — continued by the model until a stop string. In each turn
    `{content}` stands for the message's text."""

    prefix: str = ""
    """Text before the conversation: an instruction and worked examples (few-shot)."""
    system: str = "{content}\n\n"
    """A system message."""
    user: str = "Question: {content}\nAnswer:"
    """A user message; the last one ends the prompt, so it ends where the answer begins."""
    assistant: str = " {content}\n\n"
    """An earlier answer of the assistant (multi-turn conversations)."""
    stop: list[str] = field(default_factory=lambda: ["\n"])
    """The answer ends before the first of these strings (or at the model's end of text)."""
    add_bos: bool = True
    """Start with the tokenizer's beginning-of-text token when its tokenizer adds one to plain
    text (Gemma does; models are trained with it)."""

    def check(self) -> list[Check]:
        problems: list[Check] = []
        for name in ("system", "user", "assistant"):
            if CONTENT not in getattr(self, name):
                fix = f"put {CONTENT} where the message's text goes"
                problems.append((name, f"has no {CONTENT}", fix))
        if not self.stop or any(not s for s in self.stop):
            fix = 'list at least one non-empty string, e.g. ["\\n"]'
            problems.append(("stop", "needs non-empty stop strings", fix))
        return problems

    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt text of a conversation (without any BOS token)."""
        parts = [self.prefix]
        for message in messages:
            role = message.get("role", "user")
            turn = {"system": self.system, "assistant": self.assistant}.get(role, self.user)
            parts.append(turn.replace(CONTENT, str(message.get("content") or "")))
        return "".join(parts)

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to its first stop string, and whether one was found."""
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return (text[: min(hits)], True) if hits else (text, False)
