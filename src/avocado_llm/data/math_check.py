"""The ``math`` verifier: math-verify (SymPy) equivalence of an answer's final expression and
the reference's, refusing inputs that could keep SymPy busy for ever
(:mod:`avocado_llm.data.verifiers` names it; split out so that module stays one idea long)."""

from __future__ import annotations

import re
import signal
import threading

MAX_MATH_CHARS = 4_000
"""``math`` parses at most the last this-many characters of an answer (and of a reference)."""
MATH_TIMEOUT_S = 5
"""math-verify's own parse / verify timeouts, in the main thread."""


# Inputs that can keep SymPy busy for ever: power towers, exponents of 7+ digits, factorials of
# big numbers or of expressions, binomials / products / sums / Gamma over big numbers. A
# heuristic list, not a proof: a caller scoring untrusted text at scale should also run the
# math verifier in a worker process it can kill. Refused everywhere: math-verify's timeouts run
# only in the main thread, and even there each one costs seconds (or cannot stop a C call).
_POW = r"(?:\^|(?<=[\w)\]}])\s*\*\*(?=\s*[\w({]))"  # ^, or ** between operands (not **bold**)
_MATH_BOMB = re.compile(
    rf"{_POW}\s*\{{[^}}]*{_POW}"  # 2^{10^{10}}
    rf"|{_POW}\s*\([^)]*{_POW}"  # 2**(2**40)
    rf"|{_POW}\s*[\d.]+\s*{_POW}"  # 2**2**40
    rf"|{_POW}\s*[{{(]?\s*[\d,]{{7,}}"  # 2^{10000000}
    r"|\d{6,}\s*!|\([^()]*(?:\^|\*\*|\d{3})[^()]*\)\s*!"  # 1000000!, (10^9)!
    rf"|{_POW}\s*\{{?\s*[\d.]+\s*\}}?\s*!"  # 10^{9}!, 10**9!
    # \binom{10^9}{10^8}, \Gamma(10^9), \prod_{i=1}^{10^9}: a 4-digit number or a 2-digit power
    r"|(?:\\(?:[dt]?binom|choose|prod|sum|Gamma|operatorname)|\b(?:gamma|factorial|binomial)\b)"
    r"[^$]{0,40}?(?:\d{4}|\d{2}\s*(?:\^|\*\*)|(?:\^|\*\*)\s*\{?\s*\d{2})"
)


def _alarm_is_free() -> bool:
    """Whether math-verify may use ``signal.alarm``: only in the main thread, and only when the
    caller has no alarm of its own running (math-verify's would cancel it)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        return signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    except (AttributeError, OSError):  # no interval timers (Windows)
        return False


def math_check(answer: str, reference: str, question: str | None = None) -> bool:
    answer = answer[-MAX_MATH_CHARS:]
    reference = reference[-MAX_MATH_CHARS:].strip()
    if not reference or not answer.strip():
        return False
    if _MATH_BOMB.search(answer) or _MATH_BOMB.search(reference):
        return False
    from math_verify import parse, verify  # imported on first use: it pulls in SymPy

    timeout = MATH_TIMEOUT_S if _alarm_is_free() else None
    if "$" not in reference and "\\boxed" not in reference and "\\(" not in reference:
        reference = f"${reference}$"  # math-verify reads a bare LaTeX gold only inside $...$
    gold = parse(reference, parsing_timeout=timeout)
    if not gold:
        return False
    got = parse(answer, parsing_timeout=timeout)
    return bool(got) and bool(verify(gold, got, timeout_seconds=timeout))
