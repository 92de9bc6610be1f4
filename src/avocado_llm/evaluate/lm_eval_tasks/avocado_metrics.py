"""The scorer of Avocado's lm-eval generation tasks: a row's own verifier, as ``avocado eval``
scores the same answer (``family:<name>`` for a tiny-world family, else a data source's
verifier spec: ``number``, ``math``, ``regex:<pattern>``, ...), given the row's prompt as the
question (a source's last user turn, the question ``avocado eval`` and fusion give it)."""

from __future__ import annotations

from typing import Any


def score(doc: dict[str, Any], answer: str) -> float:
    spec = str(doc["verifier"])
    if spec.startswith("family:"):
        from avocado_llm.world.tasks import get_family

        return 1.0 if get_family(spec[len("family:") :]).verify(answer, doc["answer"]) else 0.0
    from avocado_llm.data.verifiers import verifier

    check = verifier(spec)
    return 0.0 if check is None else check(answer, doc["answer"], doc.get("prompt"))


def process_generation(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"acc": score(doc, results[0])}
