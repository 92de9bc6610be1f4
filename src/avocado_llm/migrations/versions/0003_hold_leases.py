"""Hold leases: server processes with a heartbeat; holds and running idempotency claims name
the server that placed them, so a starting server releases only the holds of servers gone.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("host", sa.String(length=300), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_servers")),
    )
    op.create_index(op.f("ix_servers_expires_at"), "servers", ["expires_at"], unique=False)
    # Existing holds and claims get NULL: no server, i.e. gone (a crash's, released at start).
    with op.batch_alter_table("holds") as batch:
        batch.add_column(sa.Column("server_id", sa.String(length=40), nullable=True))
        batch.create_index(batch.f("ix_holds_server_id"), ["server_id"], unique=False)
    with op.batch_alter_table("idempotency") as batch:
        batch.add_column(sa.Column("server_id", sa.String(length=40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency") as batch:
        batch.drop_column("server_id")
    with op.batch_alter_table("holds") as batch:
        batch.drop_index(batch.f("ix_holds_server_id"))
        batch.drop_column("server_id")
    op.drop_index(op.f("ix_servers_expires_at"), table_name="servers")
    op.drop_table("servers")
