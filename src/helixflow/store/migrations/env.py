"""Alembic environment for HelixFlow.

Online, ``helixflow db ...`` (``store/migrate.py``) hands over an open connection in
``config.attributes["connection"]``. Offline (``helixflow db upgrade --sql``) renders the DDL
for the URL's dialect without connecting, which is how a DBA reviews a change, or how the SAP
HANA schema is produced.
"""

from __future__ import annotations

from alembic import context

from helixflow.store.schema import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "run migrations through `helixflow db upgrade`, which opens the connection"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
