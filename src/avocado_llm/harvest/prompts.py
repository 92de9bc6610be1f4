"""What a harvest asks: the tiny world's training prompts, then every ``data.sources`` entry's.

A source's prompt is a :class:`SourceExample`: its ``family`` is the source's name and its id
is ``<source>-<prompt hash>``, so the same prompt in two sources is two prompts (each with its
own reference, verifier and records; :func:`~avocado_llm.harvest.keys.record_key` takes the
source too). The tiny world's examples and their keys are unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice, zip_longest

from avocado_llm.config import Recipe
from avocado_llm.data.prompts import HeldoutIndex, heldout_index, prompt_rows
from avocado_llm.data.sources import DataError, source_digest
from avocado_llm.harvest.store import HarvestError
from avocado_llm.world import tasks
from avocado_llm.world.tasks import Example


@dataclass(frozen=True)
class SourceExample(Example):
    """A training prompt of a data source (``answer``: its reference, None if open-ended)."""

    source: str = ""
    """The source's name (also ``family``); part of the prompt's record keys."""


def key_source(example: Example) -> str | None:
    """The source that scopes ``example``'s record keys; None for a tiny-world prompt."""
    return example.source if isinstance(example, SourceExample) else None


def harvest_prompts(recipe: Recipe, limit: int | None = None) -> list[Example]:
    """The training prompts, families interleaved round-robin, so the first N cover them all."""
    examples = tasks.generate(
        recipe.world.families, "train", recipe.harvest.prompts_per_family, recipe.seed
    )
    by_family: dict[str, list[Example]] = {}
    for example in examples:
        by_family.setdefault(example.family, []).append(example)
    mixed = [ex for row in zip_longest(*by_family.values()) for ex in row if ex is not None]
    return mixed if limit is None else mixed[:limit]


def source_prompts(recipe: Recipe, index: HeldoutIndex | None = None) -> Iterator[Example]:
    """The training prompts of the recipe's ``data.sources``, streamed source after source,
    each a :class:`SourceExample`. ``index``: the held-out side of every source
    (:func:`~avocado_llm.data.prompts.heldout_index`), computed here when not given."""
    sources = recipe.data.sources
    if index is None:
        index = heldout_index(sources)
    for source in sources:
        for row in prompt_rows(source, "train", index):
            yield SourceExample(
                f"{row.source}-{row.id}", row.source, "train", row.messages,
                row.reference, row.source,  # type: ignore[arg-type]
            )  # fmt: skip


def source_digests(recipe: Recipe) -> dict[str, str]:
    """Source name → the content hash of its file(s), as the harvest manifest keeps it."""
    return {s.name: source_digest(s.path) for s in recipe.data.sources}


class Prompts:
    """Prompts to harvest, read again for every teacher: a list, or a stream of known length."""

    def __init__(self, make: Callable[[], Iterable[Example]], total: int) -> None:
        self.make, self.total = make, total

    def __iter__(self) -> Iterator[Example]:
        return iter(self.make())

    def __len__(self) -> int:
        return self.total


def with_sources(
    recipe: Recipe, world: list[Example], limit: int | None
) -> tuple[Prompts, dict[str, str]]:
    """The tiny world's prompts, then every source's training prompts (streamed, counted and
    checked once here, so a bad source fails before any teacher loads), and their digests."""
    try:
        digests = source_digests(recipe)
        index = heldout_index(recipe.data.sources)
        total = len(world) + sum(1 for _ in source_prompts(recipe, index))
    except DataError as error:
        raise HarvestError(str(error)) from None
    if limit is not None:
        total = min(total, limit)

    def make() -> Iterator[Example]:
        try:  # a source that breaks while it is read again (edited meanwhile)
            yield from islice(chain(world, source_prompts(recipe, index)), total)
        except DataError as error:
            raise HarvestError(str(error)) from None

    return Prompts(make, total), digests
