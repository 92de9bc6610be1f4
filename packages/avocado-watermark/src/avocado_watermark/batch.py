"""The vLLM logits processor's work, without vLLM: which row of the engine's persistent batch
carries which watermark (kept up to date from vLLM's ``BatchUpdate``: rows removed, added,
moved), and the bias of a step's logits — by :class:`~avocado_watermark.marking.TensorMarks`,
the class Avocado's in-process engine uses, with each row's context read from its output
tokens (the ``h`` answer tokens before the one being chosen, START before the first).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from avocado_watermark.marking import TensorMarks
from avocado_watermark.scheme import START, Watermark
from avocado_watermark.xargs import from_xargs

log = logging.getLogger("avocado_watermark")

GREEDY_BELOW = 1e-5
"""vLLM decodes a request greedily below this temperature (its ``_SAMPLING_EPS``): such a row
is biased as a greedy one (temperature 0)."""


@dataclass
class Row:
    """One watermarked request in the batch."""

    mark: Watermark
    temperature: float
    output: Sequence[int]
    """The request's output token ids (vLLM's own list: it grows as tokens are produced)."""


class BatchWatermarks:
    """The watermarked rows of vLLM's persistent batch, by row index."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self._warned = False

    def update(self, batch_update: Any | None) -> None:
        """Apply one ``BatchUpdate`` (None: the batch did not change), in vLLM's documented
        order: removed, added, moved (a one-way move empties its source; a swap swaps)."""
        if batch_update is None:
            return
        for index in batch_update.removed:
            self.rows.pop(index, None)
        for index, params, _prompt, output in batch_update.added:
            mark = from_xargs(getattr(params, "extra_args", None))
            if mark is None:
                self.rows.pop(index, None)
                continue
            temperature = float(getattr(params, "temperature", 1.0) or 0.0)
            if temperature < GREEDY_BELOW:
                temperature = 0.0
            self.rows[index] = Row(mark, temperature, output)
        for a, b, direction in batch_update.moved:
            row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
            if row_a is not None:
                self.rows[b] = row_a
            if row_b is not None and getattr(direction, "name", direction) == "SWAP":
                self.rows[a] = row_b

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        """Bias each watermarked row of ``logits`` (B, V) in place; returns them."""
        if not self.rows:
            return logits
        batch = logits.shape[0]
        marks: list[Watermark | None] = [None] * batch
        temperatures = [0.0] * batch
        rows = []
        for index, row in self.rows.items():
            if index >= batch:
                continue
            if any(t < 0 for t in row.output[-row.mark.params.context :]):
                self._warn(index)  # an output token not known yet (vLLM's placeholder)
                continue
            marks[index] = row.mark
            temperatures[index] = row.temperature
            rows.append(index)
        if not rows:
            return logits
        state = TensorMarks(marks, logits.device, temperatures)
        h = state.h
        context = [[START] * h for _ in range(batch)]
        for index in rows:
            tail = list(self.rows[index].output[-h:])
            context[index] = [START] * (h - len(tail)) + tail
        state.context = torch.tensor(context, dtype=torch.long, device=logits.device)
        return state.apply(logits)

    def _warn(self, index: int) -> None:
        if not self._warned:
            log.warning("row %d's previous tokens are not known yet: left unmarked", index)
            self._warned = True
