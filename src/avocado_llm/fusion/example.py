"""What fusion produces: training examples (``FusedExample``) and a report (``FusionReport``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class FusionError(ValueError):
    """Fusion cannot run as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FusedExample:
    """One training example: a prompt, the answer to learn, and whose distributions to learn it
    from."""

    prompt_id: str
    family: str
    messages: list[dict[str, str]]
    target: str
    """The exact completion text of the chosen answer (``"The answer is 42."``), as a teacher
    wrote it: the sequence-level target."""
    weights: dict[str, float]
    """Teacher → weight of its top-k distributions in token-level distillation; sums to 1, and
    only teachers whose completion is exactly ``target`` appear (their top-k is about that very
    text)."""
    record_keys: dict[str, str]
    """Teacher → key of its harvest record with that completion (the one whose top-k to use)."""
    strategy: str
    """The strategy that chose the target (``vote`` where ``verify`` fell back to it)."""
    support: float = 1.0
    """The chosen answer's share of the strategy's score, in [0, 1]: its share of the weighted
    vote, of the likelihood among the candidates (``min_ce``, ``judge``), 1 when verified or for
    ``all`` / ``single:``. ``min_weight`` drops examples below it."""


@dataclass
class FamilyReport:
    """What fusion did on one task family."""

    total: int = 0
    """Prompts of the family in the harvest."""
    kept: int = 0
    """Prompts with at least one example."""
    examples: int = 0
    wins: dict[str, int] = field(default_factory=dict)
    """Teacher → examples whose target is exactly its answer (it has weight in them)."""
    references: int = 0
    """Examples that learn the prompt's reference because no teacher got it right
    (``fusion.use_reference``)."""
    reliability: dict[str, float] = field(default_factory=dict)
    """Teacher → the reliability the strategy used on this family (``verify``: accuracy against
    gold on verified families; ``vote``: the label-free estimate); empty for the others."""
    target_accuracy: float | None = None
    """EVALUATION ONLY — the share of examples whose target the family's verifier accepts
    against gold. Computed after every decision was made, from gold that fusion never reads on
    unverified families; ``None`` when the prompts have no gold."""


@dataclass
class FusionReport:
    strategy: str
    families: dict[str, FamilyReport] = field(default_factory=dict)

    @property
    def wins(self) -> dict[str, int]:
        """Teacher → examples (all families) whose target is exactly its answer."""
        total: dict[str, int] = {}
        for family in self.families.values():
            for teacher, n in family.wins.items():
                total[teacher] = total.get(teacher, 0) + n
        return dict(sorted(total.items()))

    def to_dict(self) -> dict[str, Any]:
        decisions = {}
        accuracy = {}
        for name, family in self.families.items():
            data = asdict(family)
            accuracy[name] = data.pop("target_accuracy")
            decisions[name] = data
        return {
            "strategy": self.strategy,
            "families": decisions,
            "wins": self.wins,
            "diagnostics": {
                "note": "evaluation data: computed with gold answers after fusion; "
                "never used to choose targets",
                "target_accuracy": accuracy,
            },
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FusionReport:
        accuracy = data.get("diagnostics", {}).get("target_accuracy", {})
        families = {
            name: FamilyReport(**fields, target_accuracy=accuracy.get(name))
            for name, fields in data["families"].items()
        }
        return cls(data["strategy"], families)
