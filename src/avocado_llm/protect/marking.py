"""The watermark inside the decode loop: :class:`WatermarkState` biases each row of a dynamic
batch with its own account's green list (the scheme is in :mod:`avocado_llm.protect.scheme`).

    marks = WatermarkState.for_rows([r.options.watermark for r in rows], device, temperatures)
    logits = marks.apply(logits)   # every step, before sampling
    marks.advance(tokens)          # then shift the new tokens into the contexts
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from avocado_watermark.marking import GREEDY_TOP, TensorMarks
from avocado_watermark.scheme import Watermark

from avocado_llm.protect import kernel
from avocado_llm.protect.kernel import CompiledState

if TYPE_CHECKING:  # imported where a GPU is used (Triton takes a while to import)
    from avocado_llm.protect.gpu_kernel import TritonState

__all__ = ["GREEDY_TOP", "TensorMarks", "WatermarkState"]


class WatermarkState(TensorMarks):
    """The watermark of one batch in the decode loop, on tensors: ``avocado_watermark``'s
    :class:`~avocado_watermark.marking.TensorMarks` (the vLLM logits processor runs the same
    class); :meth:`for_rows` picks a compiled kernel where one runs."""

    @classmethod
    def for_rows(
        cls,
        marks: Sequence[Watermark | None],
        device: torch.device,
        temperatures: Sequence[float] | None = None,
        compiled: bool | None = None,
    ) -> WatermarkState | CompiledState | TritonState | None:
        """The state for a batch, or None when no row is watermarked (nothing to do): the
        compiled kernel's for ``device`` where it runs (numba on the CPU, Triton on a GPU),
        else the tensors'; ``compiled`` True or False asks for one of them."""
        if not any(m is not None and m.delta != 0 for m in marks):
            return None
        if device.type == "cpu":
            if kernel.available() if compiled is None else compiled:
                return CompiledState(marks, temperatures)
            return cls(marks, device, temperatures)
        from avocado_llm.protect import gpu_kernel

        if gpu_kernel.available(device) if compiled is None else compiled:
            return gpu_kernel.TritonState(marks, device, temperatures)
        return cls(marks, device, temperatures)
