"""Avocado's keyed watermark on the engine's side, with no dependency but torch: the scheme
(:mod:`~avocado_watermark.scheme`), the bias on a batch of logits
(:mod:`~avocado_watermark.marking`), the per-request arguments a gateway sends
(:mod:`~avocado_watermark.xargs`) and the vLLM logits processor (:mod:`~avocado_watermark.vllm`,
which imports vLLM; the rest does not).

In a vLLM virtualenv::

    pip install packages/avocado-watermark
    python -m vllm.entrypoints.openai.api_server --model DIR \\
        --logits-processors avocado_watermark.vllm:WatermarkLogitsProcessor
"""

__version__ = "0.1.0"
