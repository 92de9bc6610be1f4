"""Account plans and console hardening: the limits every key made in the console inherits
(accounts.key_limits), who made each key (api_keys.origin), sign-in attempts counted in the
database (console_attempts), and just-created keys held server-side for their one display
(console_flashes).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL limits: console keys get the tightest of the operator's keys (billing.key_limits).
    op.add_column("accounts", sa.Column("key_limits", sa.JSON(), nullable=True))
    # Every existing key counts as the operator's: keys made in the console before this
    # revision may be wider than the operator meant, but they only ever tighten the ceiling.
    op.add_column(
        "api_keys",
        sa.Column("origin", sa.String(length=16), server_default="operator", nullable=False),
    )
    op.create_table(
        "console_attempts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_console_attempts")),
    )
    op.create_index(op.f("ix_console_attempts_window_start"), "console_attempts", ["window_start"])
    op.create_table(
        "console_flashes",
        sa.Column("session_id", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=False),
        sa.Column("nonce", sa.String(length=32), nullable=False),
        sa.Column("sealed", sa.String(length=400), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("session_id", name=op.f("pk_console_flashes")),
    )
    op.create_index(op.f("ix_console_flashes_expires_at"), "console_flashes", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_console_flashes_expires_at"), table_name="console_flashes")
    op.drop_table("console_flashes")
    op.drop_index(op.f("ix_console_attempts_window_start"), table_name="console_attempts")
    op.drop_table("console_attempts")
    # Plain ALTER TABLE … DROP COLUMN (SQLite ≥ 3.35 has it): a batch copy of ``accounts``
    # would have to drop a table that other tables' rows refer to.
    op.execute("ALTER TABLE api_keys DROP COLUMN origin")
    op.execute("ALTER TABLE accounts DROP COLUMN key_limits")
