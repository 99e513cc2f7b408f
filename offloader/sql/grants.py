"""The statements `offloader grants` prints: ClickHouse GRANTs for offloader's user,
and the one PostgreSQL GRANT on the state database. Pure: no driver."""

from __future__ import annotations

from offloader.sql.text import quote_ident

# The privileges offloader's grants give, in ClickHouse's words.
SELECT = "SELECT"
READ = "READ"  # ON FILE, S3 or REMOTE: table functions
PARK_AND_DROP = "ALTER DELETE, INSERT"  # hot retention: DETACH/DROP DETACHED, ATTACH, MOVE
RETIRING = "SELECT, ALTER DELETE, INSERT"  # a retiring table: MOVE in and back, DROP
VIEWS = "CREATE VIEW, DROP VIEW, SELECT"  # CREATE OR REPLACE VIEW
TEMPORARY_TABLES = "CREATE TEMPORARY TABLE"  # table functions need it
NAMED_COLLECTION = "NAMED COLLECTION"


def grant_statement(privileges: str, on: str, user: str, comment: str) -> str:
    """`GRANT privileges ON on TO user`, with a comment saying what it is for."""
    return f"GRANT {privileges} ON {on} TO {quote_ident(user)};  -- {comment}"


def postgres_grant(database: str, role: str, comment: str) -> str:
    """PostgreSQL: `role` may connect to `database` and create a schema in it."""
    return (
        f"GRANT CONNECT, CREATE ON DATABASE {_pg_ident(database)} TO {_pg_ident(role)};"
        f"  -- {comment}"
    )


def _pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
