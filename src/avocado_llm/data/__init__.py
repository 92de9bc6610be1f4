"""Your own prompt data: sources, splits and per-source verifiers."""
