"""Avocado's watermark as a vLLM (v1) logits processor::

    python -m vllm.entrypoints.openai.api_server --model DIR \\
        --logits-processors avocado_watermark.vllm:WatermarkLogitsProcessor

Each request names its watermark in ``vllm_xargs`` (:mod:`avocado_watermark.xargs`; Avocado's
gateway sets them from the account's key and the plan's strength); a request without them is
not watermarked, so the vLLM endpoint must be reachable by the gateway only. The bias is the
in-process engine's (:class:`~avocado_watermark.batch.BatchWatermarks`), applied before vLLM's
penalties, temperature and nucleus, as the in-process engine does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

from avocado_watermark.batch import BatchWatermarks
from avocado_watermark.xargs import from_xargs

if TYPE_CHECKING:
    from vllm import SamplingParams
    from vllm.config import VllmConfig


class WatermarkLogitsProcessor(LogitsProcessor):
    """Raises each watermarked request's green tokens (it moves greedy picks: not
    argmax-invariant)."""

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        """A malformed watermark (partial, unknown names, out of range) is the request's 400."""
        from_xargs(sampling_params.extra_args)

    def __init__(self, vllm_config: VllmConfig, device: torch.device, is_pin_memory: bool) -> None:
        self.batch = BatchWatermarks()

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        self.batch.update(batch_update)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return self.batch.apply(logits)
