"""Dependencies of the console's routes, as ``Annotated`` aliases (as ``serve/deps.py`` has for
the API): who is signed in, and a POSTed form whose CSRF token and origin were checked.

Each raises :class:`~avocado_llm.console.auth.Refused` instead of returning, and the app sends
its response (sign in first, operators only, form refused): a route that takes
``session: CustomerDep`` runs only for a signed-in customer, and one that takes
``form: CustomerFormDep`` only for that customer's own form. The session is looked up once per
request (FastAPI caches a dependency's value within one request).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from avocado_llm.console import auth
from avocado_llm.console.auth import Form, Session

SignedInDep = Annotated[Session, Depends(auth.signed_in)]
"""Anyone signed in (else: to the sign-in page)."""
CustomerDep = Annotated[Session, Depends(auth.customer)]
"""A signed-in customer (else: sign in first and come back; operators go to /console/admin)."""
OperatorDep = Annotated[Session, Depends(auth.operator)]
"""A signed-in operator (else: sign in first; a customer gets 403)."""


async def _signed_in_form(request: Request, session: SignedInDep) -> Form:
    return await auth.checked_form(request, session)


async def _customer_form(request: Request, session: CustomerDep) -> Form:
    return await auth.checked_form(request, session)


async def _operator_form(request: Request, session: OperatorDep) -> Form:
    return await auth.checked_form(request, session)


SignedInFormDep = Annotated[Form, Depends(_signed_in_form)]
CustomerFormDep = Annotated[Form, Depends(_customer_form)]
"""The signed-in customer's POSTed form (else 403: no CSRF token of this session, or a
foreign origin)."""
OperatorFormDep = Annotated[Form, Depends(_operator_form)]
"""The signed-in operator's POSTed form (else 403, as :data:`CustomerFormDep`)."""
