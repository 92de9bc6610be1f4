"""``Billing``: the ledger as the server and the admin CLI use it.

Every method opens its own transaction; every method that moves money moves it in exactly one.
Thread-safe (one engine, a connection pool); processes may share a PostgreSQL database.

The methods come in groups, one module each: :mod:`~avocado_llm.billing.request_methods` (a
request's key, hold and settlement, idempotency), :mod:`~avocado_llm.billing.server_methods`
(server leases, the sweep of their holds), :mod:`~avocado_llm.billing.admin_methods` (accounts,
credits, keys, prices, statements), :mod:`~avocado_llm.billing.console_user_methods` and
:mod:`~avocado_llm.billing.console_methods` (the web console); the engine, the write lock and
the secret are :mod:`~avocado_llm.billing.base`'s.
"""

from __future__ import annotations

from avocado_llm.billing.admin_methods import AdminMethods
from avocado_llm.billing.base import TOUCH_INTERVAL_S
from avocado_llm.billing.console_methods import ConsoleMethods
from avocado_llm.billing.console_user_methods import ConsoleUserMethods
from avocado_llm.billing.request_methods import STATUS_LENGTH, RequestMethods
from avocado_llm.billing.server_methods import ServerMethods

__all__ = ["STATUS_LENGTH", "TOUCH_INTERVAL_S", "Billing"]


class Billing(RequestMethods, ServerMethods, AdminMethods, ConsoleUserMethods, ConsoleMethods):
    """Keys, prices, prepaid credit with holds, usage events and statements in one database.

    ``database_url`` is ``sqlite:///path`` (embedded default) or ``postgresql+psycopg://…``
    (several server processes); ``secret`` is the server secret that keys are HMAC'd under
    (needed only by :meth:`authenticate` and :meth:`create_key`).
    """
