"""Rendering: the Jinja2 environment (autoescaped), number filters, and the security headers
every console response carries."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from avocado_llm.billing import MICRO, format_usd

PREFIX = "/console"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # balances and keys must not sit in shared caches
}


def usd(micro: int | None) -> str:
    """``4_999_873`` → ``$4.999873`` (exact: the ledger's own unit, six decimals)."""
    if micro is None:
        return ""
    return ("-$" if micro < 0 else "$") + format_usd(abs(micro))


def usd_float(micro: int) -> float:
    """For charts only (never for money shown as text)."""
    return micro / MICRO


def num(value: int | None) -> str:
    return "" if value is None else f"{value:,}"


def when(value: datetime | str | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def chart_json(config: dict[str, Any]) -> Markup:
    """A chart's configuration for a ``<script type="application/json">`` block: ``<``, ``>``
    and ``&`` escaped, so no data (a model named ``</script>…``) can end the block."""
    text = json.dumps(config, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)


ENV = Environment(
    loader=PackageLoader("avocado_llm.console", "templates"),
    autoescape=select_autoescape(["html"], default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
ENV.filters.update(usd=usd, num=num, when=when, chart_json=chart_json)
ENV.globals["prefix"] = PREFIX


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    html = ENV.get_template(template).render(request=request, **context)
    return secure(HTMLResponse(html, status_code=status_code))  # type: ignore[return-value]


def redirect(path: str) -> Response:
    """303 See Other (after a POST, the browser GETs the target)."""
    return secure(RedirectResponse(path, status_code=303))


def error_page(
    request: Request, status_code: int, title: str, message: str, **context: Any
) -> HTMLResponse:
    return render(
        request, "error.html", status_code=status_code, title=title, message=message, **context
    )
