"""Helpers for the tests and the benchmarks: throwaway PostgreSQL (:mod:`.pgtemp`) and Redis
(:mod:`.redistemp`) servers on loopback, and the :mod:`.watchdog` that stops them when their
owner dies. No production module imports this package (``tests/test_layers.py`` checks it)."""
