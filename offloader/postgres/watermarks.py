"""Per-table watermarks, locks and the run log in PostgreSQL. The only module importing asyncpg.

A watermark advances only by compare-and-set on its commit sequence number, in
one transaction with a row of the commit log, so two workers can never both
advance it from the same place.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import date
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg

from offloader import cursor, faults
from offloader.config import PostgresConfig, dsn_secrets, redact_dsn, redact_secrets
from offloader.errors import InconsistentState, Locked, StateError
from offloader.state import (
    CLEANUP_SECONDS,
    HASH_MODULUS,
    Advance,
    AuditAgreed,
    DaySum,
    DaySums,
    RetentionIntent,
    RunRecord,
    StatusRow,
    TableState,
    ViewState,
)

log = logging.getLogger(__name__)

# First key of the two-int advisory lock: the letters "OF" so our locks are recognisable
# in pg_locks and never collide with an application using single-bigint locks.
LOCK_CLASS = 0x4F46

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS {s}.watermarks (
        target      text PRIMARY KEY,
        source      text NOT NULL,
        seq         bigint NOT NULL DEFAULT 0,
        position    jsonb,
        rows_total  bigint NOT NULL DEFAULT 0,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE IF NOT EXISTS {s}.commits (
        id           bigserial PRIMARY KEY,
        target       text NOT NULL,
        seq          bigint NOT NULL,
        position     jsonb NOT NULL,
        rows         bigint NOT NULL,
        run_id       text NOT NULL,
        snapshot_id  bigint,
        recovered    boolean NOT NULL DEFAULT false,
        committed_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS commits_target_seq ON {s}.commits (target, seq);
    CREATE TABLE IF NOT EXISTS {s}.runs (
        id          bigserial PRIMARY KEY,
        run_id      text NOT NULL,
        target      text NOT NULL,
        host        text NOT NULL,  -- hostname:pid of the worker
        started_at  timestamptz NOT NULL,
        finished_at timestamptz NOT NULL DEFAULT now(),
        status      text NOT NULL,
        rows        bigint NOT NULL DEFAULT 0,
        pages       integer NOT NULL DEFAULT 0,
        snapshots   integer NOT NULL DEFAULT 0,
        seconds     double precision NOT NULL DEFAULT 0,
        error       text
    );
    CREATE INDEX IF NOT EXISTS runs_target_id ON {s}.runs (target, id DESC);
    """,
    # Per table and UTC day: the rows offloaded and the sum (mod 2^64) of their row
    # hashes (sql.RowHash), added in the same transaction as the watermark they moved,
    # replaced by a repair. The late-rows audit compares them with ClickHouse's.
    """
    CREATE TABLE IF NOT EXISTS {s}.day_sums (
        target      text NOT NULL,
        day         integer NOT NULL,  -- days since 1970-01-01
        rows        bigint NOT NULL,
        checksum    numeric(20, 0) NOT NULL,
        columns_key text NOT NULL,  -- sql.RowHash.key; '' when the day mixes two
        PRIMARY KEY (target, day)
    );
    """,
    # The audit window that last agreed in full and the source's parts then
    # (state.AuditAgreed): while neither changes, an idle audit does not hash the
    # window again. Every commit and reset clears it.
    """
    ALTER TABLE {s}.watermarks ADD COLUMN IF NOT EXISTS audit_agreed text;
    """,
    # The view over both tiers per table (state.ViewState): what it was last replaced
    # with, or why the last replacement failed.
    """
    CREATE TABLE IF NOT EXISTS {s}.views (
        target      text PRIMARY KEY,
        name        text NOT NULL,
        seq         bigint NOT NULL DEFAULT -1,
        position    jsonb,
        metadata    text,
        snapshot_id bigint,
        signature   text NOT NULL DEFAULT '',
        replaced_at timestamptz,
        error       text,
        failed_at   timestamptz
    );
    """,
    # Verified hot retention (retention.py): the days dropped from ClickHouse, and a drop
    # in progress.
    """
    ALTER TABLE {s}.watermarks ADD COLUMN IF NOT EXISTS retained_until date;
    ALTER TABLE {s}.watermarks ADD COLUMN IF NOT EXISTS retention_intent text;
    """,
    # The last retention pass's result per table (status shows it).
    """
    ALTER TABLE {s}.watermarks ADD COLUMN IF NOT EXISTS retention_last jsonb;
    """,
)
_MOD64 = HASH_MODULUS


@contextmanager
def _mapped(what: str, dsn: str) -> Iterator[None]:
    """asyncpg's and the socket's exceptions -> StateError (Exception only:
    cancellation and offloader's own errors pass through untouched)."""
    try:
        yield
    except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError, TimeoutError) as exc:
        # The driver's own text may quote the DSN's parameters: scrub them too. It may
        # span lines (asyncpg's HINT): the error is one line.
        said = " ".join(redact_secrets(str(exc), dsn_secrets(dsn)).split())
        raise StateError(
            f"PostgreSQL {redact_dsn(dsn)}: {what} failed: {type(exc).__name__}: {said}"
            + _advice(exc)
        ) from exc


def _advice(exc: BaseException) -> str:
    """What to do about a connection refused over TLS, which the driver does not say."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            "; the server's certificate could not be verified: set sslrootcert=<PEM file of "
            "the CA that signed it> in [postgres] dsn (with sslmode=verify-full), and a host "
            "the certificate names"
        )
    text = str(exc)
    if isinstance(exc, asyncpg.ClientConfigurationError) and "root certificate" in text:
        return "; set sslrootcert=<PEM file of the server's CA> in [postgres] dsn"
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError) and (
        "no encryption" in text
    ):
        return (
            "; the server accepts only TLS connections: set sslmode=verify-full and "
            "sslrootcert=<PEM file of the server's CA> in [postgres] dsn"
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in text:
        return (
            "; the server does not offer TLS: turn ssl on in the server, or change sslmode "
            "in [postgres] dsn"
        )
    return ""


@contextmanager
def _parsed(dsn: str) -> Iterator[None]:
    """asyncpg's ValueError on a DSN it cannot parse -> StateError. asyncpg splits the
    user info at the first `@` and its message quotes what follows (the rest of a
    password): not shown, and not chained. A certificate the TLS handshake refused is a
    ValueError too (ssl.SSLCertVerificationError), and so is asyncpg's word on a DSN it
    parsed but cannot use (ClientConfigurationError: no sslrootcert file, an unknown
    sslmode): those go on to `_mapped`, which redacts them, unless the DSN holds more
    than one `@`, when asyncpg's split may have cut the password."""
    try:
        yield
    except ValueError as exc:
        understood = isinstance(exc, asyncpg.ClientConfigurationError) and dsn.count("@") <= 1
        if isinstance(exc, ssl.SSLError) or understood:
            raise
        raise StateError(
            f"PostgreSQL {redact_dsn(dsn)}: asyncpg cannot parse [postgres] dsn (its message "
            "is not shown: it may quote the password); percent-encode reserved characters "
            "in the user and password (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23)"
        ) from None


class Watermarks:
    """A connection pool to the state database plus the queries offloader needs."""

    def __init__(self, cfg: PostgresConfig, pool: asyncpg.Pool) -> None:
        self._cfg = cfg
        self._pool = pool
        self._s = '"' + cfg.schema + '"'

    def __repr__(self) -> str:
        return f"<Watermarks {redact_dsn(self._cfg.dsn)} schema={self._cfg.schema}>"

    @classmethod
    async def open(cls, cfg: PostgresConfig, max_size: int = 10) -> Watermarks:
        """Connect and bring the state schema up to date; create the database if missing."""
        for attempt in (1, 2):
            with _mapped("connect", cfg.dsn), _parsed(cfg.dsn):
                pool = await _create_pool(cfg.dsn, max_size)
            self = cls(cfg, pool)
            try:
                # The pool's first connection, made apart (back to the pool unused, no
                # round trip): a server that refuses it says "connect failed".
                with _mapped("connect", cfg.dsn), _parsed(cfg.dsn):
                    async with pool.acquire():
                        pass
                with _mapped("schema migration", cfg.dsn), _parsed(cfg.dsn):
                    await self._migrate()
                log.debug("state database open", extra={"dsn": redact_dsn(cfg.dsn)})
                return self
            except StateError as exc:
                await pool.close()
                missing = isinstance(exc.__cause__, asyncpg.InvalidCatalogNameError)
                if not missing or attempt == 2:
                    raise
            except BaseException:
                await pool.close()
                raise
            await _create_database(cfg.dsn)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
            await self._pool.close()

    async def _migrate(self) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Serialise concurrent first starts: CREATE ... IF NOT EXISTS races otherwise.
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", LOCK_CLASS)
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self._s}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._s}.schema_version (version integer NOT NULL)"
            )
            version = await conn.fetchval(f"SELECT max(version) FROM {self._s}.schema_version")
            version = version or 0
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number > version:
                    await conn.execute(sql.format(s=self._s))
                    await conn.execute(
                        f"INSERT INTO {self._s}.schema_version (version) VALUES ($1)", number
                    )
                    log.info("applied state migration", extra={"version": number})

    async def _run(self, what: str, query: str, *args: Any) -> Any:
        with _mapped(what, self._cfg.dsn):
            async with self._pool.acquire() as conn:
                return await conn.fetch(query, *args)

    @asynccontextmanager
    async def table_lock(self, target: str) -> AsyncIterator[None]:
        """Hold this table's advisory lock for the block, or raise Locked at once.

        The lock is the state schema's and the target's together: two deployments whose
        state shares one PostgreSQL database in different schemas (staging and
        production) hold different locks for a target of the same name, as they keep
        different watermarks for it."""
        key = f"{self._cfg.schema}.{target}"
        with _mapped("connect", self._cfg.dsn):
            conn = await self._pool.acquire()
        try:
            try:
                with _mapped("lock", self._cfg.dsn):
                    got = await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))", LOCK_CLASS, key
                    )
            except BaseException:
                # Stopped while asking (a deadline, a shutdown): the server may hold the
                # lock for this session, and the pool no longer unlocks all on release.
                conn.terminate()
                raise
            if not got:
                raise Locked(f"{target}: another offloader worker is running this table; skipped")
            try:
                yield
            finally:
                with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
                    try:
                        await conn.execute(
                            "SELECT pg_advisory_unlock($1, hashtext($2))", LOCK_CLASS, key
                        )
                    except Exception:
                        # A dead connection has dropped the lock with itself; one asyncpg
                        # no longer lends us is reset (its locks released) by the pool.
                        with contextlib.suppress(Exception):
                            conn.terminate()
        finally:
            with anyio.move_on_after(CLEANUP_SECONDS, shield=True):
                await self._pool.release(conn)

    async def get(self, target: str, source: str) -> TableState:
        rows = await self._run(
            "read watermark",
            f"""INSERT INTO {self._s}.watermarks (target, source) VALUES ($1, $2)
                ON CONFLICT (target) DO UPDATE SET source = EXCLUDED.source
                RETURNING seq, position::text, rows_total, updated_at, audit_agreed,
                          EXISTS (SELECT 1 FROM {self._s}.views v WHERE v.target = $1),
                          retained_until, retention_intent""",
            target,
            source,
        )
        row = rows[0]
        agreed = AuditAgreed.decode(row[4])
        return TableState(
            target,
            row[0],
            cursor.loads(row[1]),
            row[2],
            row[3],
            agreed,
            row[5],
            row[6],
            RetentionIntent.decode(row[7]),
        )

    async def audit_agreed(self, target: str, agreed: AuditAgreed) -> None:
        """Remember the audit window that agreed in full at `agreed.seq` (ignored if
        the table has committed since)."""
        await self._run(
            "record audit",
            f"""UPDATE {self._s}.watermarks SET audit_agreed = $3
                WHERE target = $1 AND seq = $2""",
            target,
            agreed.seq,
            agreed.encode(),
        )

    async def commit(self, target: str, prev_seq: int, advance: Advance) -> None:
        """Advance the watermark from `prev_seq` (compare-and-set) as `advance` says,
        atomically."""
        a = advance
        pos = cursor.dumps(a.position)
        with _mapped("watermark commit", self._cfg.dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                updated = await conn.fetchval(
                    f"""UPDATE {self._s}.watermarks
                        SET seq = $3, position = $4::jsonb, rows_total = rows_total + $5,
                            updated_at = now(), audit_agreed = NULL
                        WHERE target = $1 AND seq = $2 RETURNING seq""",
                    target,
                    prev_seq,
                    a.seq,
                    pos,
                    a.rows,
                )
                if updated is None:
                    current = await conn.fetchval(
                        f"SELECT seq FROM {self._s}.watermarks WHERE target = $1", target
                    )
                    raise InconsistentState(
                        f"{target}: PostgreSQL watermark is at commit {current}, expected "
                        f"{prev_seq}; another worker moved it. Nothing was changed."
                    )
                faults.point("watermark_txn")
                await conn.execute(
                    f"""INSERT INTO {self._s}.commits
                        (target, seq, position, rows, run_id, snapshot_id, recovered)
                        VALUES ($1, $2, $3::jsonb, $4, $5, $6, $7)""",
                    target,
                    a.seq,
                    pos,
                    a.rows,
                    a.run_id,
                    a.snapshot_id,
                    a.recovered,
                )
                if a.days:
                    await self._add_days(conn, target, a.days, a.replace_days)

    async def _add_days(self, conn: Any, target: str, days: DaySums, replace: bool) -> None:
        ordered = sorted(days.items())
        await conn.execute(
            f"""INSERT INTO {self._s}.day_sums AS d (target, day, rows, checksum, columns_key)
                SELECT $1, u.day, u.rows, u.checksum, u.key
                FROM unnest($2::int[], $3::bigint[], $4::numeric[], $5::text[])
                     AS u(day, rows, checksum, key)
                ON CONFLICT (target, day) DO UPDATE SET
                    rows = CASE WHEN $6 THEN EXCLUDED.rows ELSE d.rows + EXCLUDED.rows END,
                    checksum = CASE WHEN $6 THEN EXCLUDED.checksum
                                    ELSE (d.checksum + EXCLUDED.checksum) % {_MOD64} END,
                    columns_key = CASE WHEN $6 OR d.columns_key = EXCLUDED.columns_key
                                       THEN EXCLUDED.columns_key ELSE '' END""",
            target,
            [day for day, _ in ordered],
            [s.rows for _, s in ordered],
            [Decimal(s.checksum % _MOD64) for _, s in ordered],
            [s.columns_key for _, s in ordered],
            replace,
        )

    async def day_sums(self, target: str, first: int, last: int) -> dict[int, DaySum]:
        """The recorded sums of days first..last (day numbers)."""
        rows = await self._run(
            "read day sums",
            f"""SELECT day, rows, checksum, columns_key FROM {self._s}.day_sums
                WHERE target = $1 AND day BETWEEN $2 AND $3""",
            target,
            first,
            last,
        )
        return {int(r[0]): DaySum(int(r[1]), int(r[2]), str(r[3])) for r in rows}

    async def view_state(self, target: str) -> ViewState | None:
        states = await self.views(target)
        return states[0] if states else None

    async def views(self, target: str | None = None) -> list[ViewState]:
        """The recorded views (of one table, or all)."""
        rows = await self._run(
            "read views",
            f"""SELECT target, name, seq, position::text, metadata, snapshot_id, signature,
                       replaced_at, error, failed_at
                FROM {self._s}.views WHERE $1::text IS NULL OR target = $1 ORDER BY target""",
            target,
        )
        return [
            ViewState(r[0], r[1], r[2], cursor.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9])
            for r in rows
        ]

    async def record_view(self, state: ViewState) -> None:
        pos = None if state.position is None else cursor.dumps(state.position)
        await self._run(
            "record view",
            f"""INSERT INTO {self._s}.views
                (target, name, seq, position, metadata, snapshot_id, signature, replaced_at)
                VALUES ($1, $2, $3, $4::jsonb, $5, $6, $7, now())
                ON CONFLICT (target) DO UPDATE SET
                    name = EXCLUDED.name, seq = EXCLUDED.seq, position = EXCLUDED.position,
                    metadata = EXCLUDED.metadata, snapshot_id = EXCLUDED.snapshot_id,
                    signature = EXCLUDED.signature, replaced_at = now(), error = NULL,
                    failed_at = NULL""",
            state.target,
            state.name,
            state.seq,
            pos,
            state.metadata,
            state.snapshot_id,
            state.signature,
        )

    async def retention_intent(self, target: str, intent: RetentionIntent | None) -> None:
        await self._run(
            "record retention intent",
            f"UPDATE {self._s}.watermarks SET retention_intent = $2 WHERE target = $1",
            target,
            intent.encode() if intent is not None else None,
        )

    async def retention_dropping(self, target: str, intent: RetentionIntent) -> None:
        """The point of no return of a retention drop, in one transaction: the intent
        in its `drop` phase and the table's retained_until moved to the intent's day."""
        await self._run(
            "record retention drop",
            f"""UPDATE {self._s}.watermarks
                SET retention_intent = $2,
                    retained_until = GREATEST(coalesce(retained_until, $3), $3)
                WHERE target = $1""",
            target,
            intent.encode(),
            date.fromisoformat(intent.retained_until),
        )

    async def record_retention(self, target: str, result: dict[str, Any]) -> None:
        """The result of a table's last retention pass (status shows it)."""
        await self._run(
            "record retention result",
            f"UPDATE {self._s}.watermarks SET retention_last = $2::jsonb WHERE target = $1",
            target,
            json.dumps(result),
        )

    async def forget_view(self, target: str) -> None:
        await self._run("forget view", f"DELETE FROM {self._s}.views WHERE target = $1", target)

    async def view_failed(self, target: str, name: str, error: str) -> None:
        await self._run(
            "record view failure",
            f"""INSERT INTO {self._s}.views (target, name, error, failed_at)
                VALUES ($1, $2, $3, now())
                ON CONFLICT (target) DO UPDATE SET error = EXCLUDED.error, failed_at = now()""",
            target,
            name,
            error[:2000],
        )

    async def record_run(self, run: RunRecord) -> None:
        await self._run(
            "record run",
            f"""INSERT INTO {self._s}.runs
                (run_id, target, host, started_at, finished_at, status, rows, pages, snapshots,
                 seconds, error)
                VALUES ($1, $2, $3, $4, $11, $5, $6, $7, $8, $9, $10)""",
            run.run_id,
            run.target,
            f"{socket.gethostname()}:{os.getpid()}",
            run.started_at,
            run.status,
            run.rows,
            run.pages,
            run.snapshots,
            run.seconds,
            run.error,
            run.finished_at,
        )

    async def status(self) -> list[StatusRow]:
        rows = await self._run(
            "read status",
            f"""SELECT w.target, w.source, w.seq, w.position::text, w.rows_total, w.updated_at,
                       r.status, r.finished_at, r.rows, r.error, w.retained_until,
                       w.retention_last::text
                FROM {self._s}.watermarks w
                LEFT JOIN LATERAL (
                    SELECT status, finished_at, rows, error FROM {self._s}.runs
                    WHERE target = w.target ORDER BY id DESC LIMIT 1
                ) r ON true
                ORDER BY w.target""",
        )
        return [
            StatusRow(
                r[0],
                r[1],
                r[2],
                cursor.loads(r[3]),
                r[4],
                r[5],
                r[6],
                r[7],
                r[8],
                r[9],
                r[10],
                json.loads(r[11]) if r[11] else None,
            )
            for r in rows
        ]

    async def reset(self, target: str, seq: int, position: Sequence[Any] | None) -> None:
        """Operator recovery: set a table's watermark (see README "Recovery"). The
        per-day sums are forgotten: the Iceberg table may not be the one they describe
        (the audit then compares counts only, until a repair records them again)."""
        pos = None if position is None else cursor.dumps(position)
        with _mapped("reset watermark", self._cfg.dsn):
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    f"""UPDATE {self._s}.watermarks
                        SET seq = $2, position = $3::jsonb, updated_at = now(),
                            audit_agreed = NULL
                        WHERE target = $1""",
                    target,
                    seq,
                    pos,
                )
                await conn.execute(f"DELETE FROM {self._s}.day_sums WHERE target = $1", target)


async def _release(conn: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to the pool: only a transaction left
    open rolled back. asyncpg's default reset (advisory unlock all, CLOSE ALL, UNLISTEN,
    RESET ALL) is one more round trip per query, 3 of an idle table's 7 transactions;
    offloader sets no session state, and table_lock unlocks its lock itself (or
    terminates a connection it could not lock or unlock on)."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _create_pool(dsn: str, max_size: int) -> asyncpg.Pool:
    with anyio.fail_after(15):
        pool = await asyncpg.create_pool(
            dsn, min_size=0, max_size=max_size, command_timeout=60, timeout=10, reset=_release
        )
    assert pool is not None
    return pool


async def _create_database(dsn: str) -> None:
    """Create the state database on first use, connecting to 'postgres' on the same server."""
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with _mapped(f"create database {name!r}", dsn):
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            await conn.execute('CREATE DATABASE "' + name.replace('"', '""') + '"')
            log.info("created state database", extra={"database": name})
        except asyncpg.DuplicateDatabaseError:
            pass
        finally:
            await conn.close()
