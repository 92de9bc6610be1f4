"""What identifies one teacher answer (its key), and how the answer becomes a record row.

The key is a SHA-256 over the teacher's name and weights revision, the prompt's messages, the
sampling parameters and the sample index. It includes the **revision** because a key must name
exactly one answer of exactly one model: if a teacher's weights change (a rebuilt zoo, a new
checkpoint under the same path), its old answers are not answers of the new model and must not
count as done. The store refuses to mix two revisions of one teacher in one harvest directory
rather than silently keeping both. It leaves out ``n`` (how many answers are asked for): the
sample index says which answer a record is, so raising ``samples_per_prompt`` from 1 to 2 keeps
sample 0 and only adds sample 1. A prompt of a ``data.sources`` entry adds the **source's
name**: the same prompt in two sources is asked, kept and fused once per source (its reference
and verifier differ). A tiny-world prompt has no source, and its key has no such field, so the
keys of existing tiny-world harvests are what they were.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from avocado_llm.teachers.base import Completion, Messages, SamplingParams, TeacherInfo
from avocado_llm.world.tasks import Example


def record_key(
    teacher: TeacherInfo,
    messages: Messages,
    params: SamplingParams,
    sample_index: int,
    source: str | None = None,
) -> str:
    """Hex SHA-256 of the canonical JSON of everything that determines one answer (and, for a
    prompt of a data source, which source asked it)."""
    sampling = {k: v for k, v in params.as_dict().items() if k != "n"}
    payload: dict[str, Any] = {
        "teacher": teacher.name,
        "revision": teacher.revision,
        "messages": messages,
        "sampling": sampling,
        "sample_index": sample_index,
    }
    if source is not None:
        payload["source"] = source
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_row(
    key: str,
    example: Example,
    teacher: TeacherInfo,
    params: SamplingParams,
    sample_index: int,
    answer: Completion,
    created_at: datetime,
) -> dict[str, Any]:
    """One row of :data:`avocado_llm.harvest.store.SCHEMA`."""
    positions = answer.logprobs
    has_top = positions is not None and params.top_logprobs > 0
    top_ids = [p.top_ids for p in positions] if has_top else None
    if top_ids is not None and all(i is None for ids in top_ids for i in ids) and positions:
        top_ids = None  # an endpoint that gives token strings only
    return {
        "key": key,
        "prompt_id": example.id,
        "family": example.family,
        "messages": [{"role": m["role"], "content": m["content"]} for m in example.messages],
        "gold": getattr(example, "answer", None),
        "teacher": teacher.name,
        "teacher_model": teacher.model,
        "teacher_revision": teacher.revision,
        "licence": teacher.licence,
        "sampling": json.dumps(params.as_dict(), sort_keys=True),
        "sample_index": sample_index,
        "completion": answer.text,
        "reasoning": answer.reasoning,
        "finish_reason": answer.finish_reason,
        "token_ids": answer.token_ids,
        "tokens": [p.token for p in positions] if positions is not None else None,
        "token_logprobs": [p.logprob for p in positions] if positions is not None else None,
        "top_ids": top_ids,
        "top_tokens": [p.top_tokens for p in positions] if has_top else None,
        "top_logprobs": [p.top_logprobs for p in positions] if has_top else None,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "latency_s": answer.latency_s,
        "created_at": created_at,
    }
