"""Alembic migrations of the billing ledger (``avocado admin migrate`` applies them)."""
