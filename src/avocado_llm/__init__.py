"""Avocado: build one flagship language model out of several others, and sell it per call.

The pipeline, one sub-package per stage: ``world`` (tiny tasks and teacher zoo) → ``teachers``
→ ``harvest`` → ``fusion`` → ``distill`` → ``evaluate`` → ``serve`` / ``billing``.
"""

__version__ = "0.1.0"
