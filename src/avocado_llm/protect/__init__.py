"""Protect the closed model: a keyed, per-account watermark on the API's answers, its detector,
and the radioactivity check that tells when another model was distilled from Avocado.

- :mod:`avocado_llm.protect.scheme` — the green-list scheme (engine and detector share it);
- :mod:`avocado_llm.protect.serving` — the plan's watermark on each request;
- :mod:`avocado_llm.protect.detect` — scoring text, by key or by account;
- :mod:`avocado_llm.protect.command` — ``avocado watermark detect | suspect``.
"""
