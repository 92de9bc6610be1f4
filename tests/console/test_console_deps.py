"""Console pages are guarded by their dependencies (#20.3): every route but the sign-in page,
the static files and the HTML 404 declares who may call it (``CustomerDep``, ``OperatorDep``,
``SignedInDep``), and every POST but the sign-in itself takes a checked form (``...FormDep``).
So a new page that forgets its guard fails here instead of serving anyone: deny by default,
as the API's ``/v1`` routes depend on ``authenticate``.

The refusals themselves (sign in first, 403 for a customer on an operator page, a form without
the session's CSRF token) are tested end to end against a real server in
``test_console_security.py`` and in a browser in ``test_console_browser.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from avocado_llm.console import admin, auth, build_router, customer, customer_reports, deps
from avocado_llm.console.views import PREFIX

OPEN = {
    ("GET", "/console"),  # redirects to /console/
    ("GET", "/console/login"),
    ("POST", "/console/login"),  # its own double-submit token: nobody is signed in yet
    ("GET", "/console/static/{name:path}"),
    ("GET", "/console/{anything:path}"),  # the HTML 404
}
GUARDS = {auth.customer, auth.operator, auth.signed_in}
FORMS = {deps._customer_form, deps._operator_form, deps._signed_in_form}


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def _routes() -> list[tuple[str, str, set[Callable[..., Any]]]]:
    """(method, path, what it depends on) of every console route: the console router's own,
    and those of the routers it includes (FastAPI includes them lazily)."""
    routes = [(r, "") for r in build_router().routes]
    routes += [
        (r, PREFIX)
        for r in (*admin.router.routes, *customer.router.routes, *customer_reports.router.routes)
    ]
    found = []
    for route, prefix in routes:
        if isinstance(route, APIRoute):
            for method in route.methods:
                found.append((method, prefix + route.path, set(_calls(route.dependant))))
    return found


def test_every_console_route_but_the_open_ones_is_guarded_by_a_dependency() -> None:
    routes = _routes()
    assert len(routes) > 20  # the router's routes were found
    unguarded = [(m, p) for m, p, calls in routes if (m, p) not in OPEN and not calls & GUARDS]
    assert not unguarded, f"console routes without CustomerDep/OperatorDep: {unguarded}"
    no_form = [
        (m, p) for m, p, calls in routes if m == "POST" and (m, p) not in OPEN and not calls & FORMS
    ]
    assert not no_form, f"console POSTs without a checked form: {no_form}"


def test_operator_pages_take_the_operator_guard() -> None:
    for method, path, calls in _routes():
        if path.startswith("/console/admin"):
            assert auth.operator in calls, (method, path)
            assert auth.customer not in calls, (method, path)
