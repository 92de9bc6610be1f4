"""Harvest: ask every teacher the training prompts and keep their answers, with top-k
log-probabilities and provenance, in Parquet shards that a rerun resumes from.

``harvest(recipe)`` runs it (``avocado harvest RECIPE``); ``read_records(dir)`` and
``status(dir)`` read what a harvest directory holds. The record layout is ``SCHEMA``.
"""

from avocado_llm.harvest.keys import record_key, record_row
from avocado_llm.harvest.reader import TeacherStatus, read_records, status
from avocado_llm.harvest.runner import HarvestSummary, TeacherReport, harvest, harvest_prompts
from avocado_llm.harvest.store import SCHEMA, HarvestError, HarvestStore

__all__ = [
    "SCHEMA",
    "HarvestError",
    "HarvestStore",
    "HarvestSummary",
    "TeacherReport",
    "TeacherStatus",
    "harvest",
    "harvest_prompts",
    "read_records",
    "record_key",
    "record_row",
    "status",
]
