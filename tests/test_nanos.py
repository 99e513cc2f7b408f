"""A DateTime64(9) watermark, end to end on every transport: keyset pages that end
inside one microsecond, ties on the same nanosecond, rows arriving later in the last
committed microsecond, late rows repaired by day, and readers we did not write."""

from __future__ import annotations

import anyio
import orjson
import pytest

from offloader.iceberg import IcebergCatalog, files
from offloader.offload.supervisor import run_once
from tests.helpers import Env, independent_reads

pytestmark = pytest.mark.integration

DAY_NS = 86_400 * 10**9

NANO = """
CREATE TABLE {db}.nano (ts DateTime64(9, 'UTC'), id UInt64, v String)
ENGINE = MergeTree ORDER BY (ts, id)
"""


def nano_rows(db: str, day: str, count: int, first_id: int, second: str = "12:00:00") -> str:
    """`count` rows from `day` `second`: groups of 5 nanoseconds of one microsecond, each
    nanosecond held by 2 rows (a tie), microseconds 1 apart."""
    return (
        f"INSERT INTO {db}.nano SELECT toDateTime64('{day} {second}', 9, 'UTC') "
        "+ toIntervalMicrosecond(intDiv(number, 10)) "
        "+ toIntervalNanosecond(intDiv(number % 10, 2)), "
        f"{first_id} + number, toString(number) FROM numbers({count})"
    )


def cycle(env: Env) -> dict[str, object]:
    report = anyio.run(run_once, env.config())
    assert report.ok, report.summary()
    return report.tables[0].as_dict()


def test_nanosecond_watermark_is_exact(env: Env) -> None:
    db = env.ch_database
    env.ch(NANO.format(db=db))
    for i, day in enumerate(("2026-01-01", "2026-01-02")):
        env.ch(nano_rows(db, day, 230, 1 + i * 1000))
    # The last and first nanosecond of a UTC day.
    env.ch(
        f"INSERT INTO {db}.nano VALUES ('2026-01-01 23:59:59.999999999', 5000, 'last'), "
        "('2026-01-02 00:00:00.000000000', 5001, 'first')"
    )
    env.write_config(
        [
            env.table(
                "nano",
                watermark="ts",
                keys=["id"],
                # 7 rows a page: pages end inside a microsecond and inside a tie.
                batch_rows=7,
                append_rows=70,
                audit_days=7,
            )
        ]
    )
    first = cycle(env)
    assert first["rows"] == 462 and first["drifted"] == [], first
    assert env.assert_tiers_equal("cold.nano") == 462
    ice = IcebergCatalog(env.config().catalog).load("cold.nano")
    assert ice is not None
    field = ice.table.schema().find_field("ts")
    assert str(field.field_type) == "long"
    assert field.doc is not None and field.doc.startswith("ticks of 10^-9 seconds")
    # Each data file holds one UTC day (the audit counts days from the manifests).
    live = files.live_files(ice, "ts")
    assert live.kind == "ticks9"
    assert {(f.lower // DAY_NS, f.upper // DAY_NS) for f in live.stats} == {
        (20454, 20454),
        (20455, 20455),
    }

    # Rows later in the last committed microsecond, past its nanosecond: read, once.
    position = orjson.loads(env.cli("status", "--json").stdout)[0]["watermark"]
    last = position[0]
    assert last == 20455 * DAY_NS + 12 * 3600 * 10**9 + 22 * 1000 + 4  # 12:00:00.000022004
    shown = env.cli("status").stdout
    assert "2026-01-02 12:00:00.000022004, 1230" in shown, shown
    env.ch(
        f"INSERT INTO {db}.nano VALUES (reinterpret(toInt64({last}), 'DateTime64(9, ''UTC'')'), "
        f"9000, 'tie'), (reinterpret(toInt64({last + 1}), 'DateTime64(9, ''UTC'')'), 9001, 'n')"
    )
    second = cycle(env)
    assert second["rows"] == 2, second
    assert env.assert_tiers_equal("cold.nano") == 464

    # A late row below the watermark, within an offloaded microsecond: found by the
    # audit on its day, repaired exactly once.
    env.ch(f"INSERT INTO {db}.nano VALUES ('2026-01-01 12:00:00.000003001', 9002, 'late')")
    found = cycle(env)
    assert [d["day"] for d in found["drifted"]] == ["2026-01-01"], found  # type: ignore[union-attr]
    fixed = env.cli("repair", "cold.nano", "--json")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert [d["day"] for d in orjson.loads(fixed.stdout)["days"]] == ["2026-01-01"]
    assert cycle(env)["drifted"] == []
    assert env.assert_tiers_equal("cold.nano") == 465
    verify = env.cli("verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Engines we did not write read the same ticks.
    ice = IcebergCatalog(env.config().catalog).load("cold.nano")
    assert ice is not None
    query = "SELECT count(*), sum(ts % 1000), max(ts) FROM {t}"
    got = independent_reads(ice.table.location(), ice.table.metadata_location, query)
    count, nanos, newest = env.ch(
        f"SELECT count(), sum(reinterpretAsInt64(ts) % 1000), max(reinterpretAsInt64(ts)) "
        f"FROM {db}.nano"
    )[0]
    expected = f"{count},{nanos},{newest}"
    assert got == [expected, expected], (got, expected)


def test_a_day_transform_of_ticks_is_refused(env: Env) -> None:
    env.ch(NANO.format(db=env.ch_database))
    env.ch(nano_rows(env.ch_database, "2026-01-01", 10, 1))
    env.write_config([env.table("nano", watermark="ts", keys=["id"], partition_by=["day(ts)"])])
    report = anyio.run(run_once, env.config())
    assert not report.ok
    error = report.tables[0].error or ""
    assert "'ts' is stored as a long (ticks of 10^-9 seconds" in error, error
    assert "day transform cannot read" in error, error
    assert IcebergCatalog(env.config().catalog).load("cold.nano") is None


def test_rows_in_the_last_microsecond_of_a_day_are_read(env: Env) -> None:
    """Pages that end at UTC days (parquet) bound them in the watermark's own type:
    ClickHouse 26.9 drops a DateTime64 row at 23:59:59.999999 from a filter against
    a DateTime midnight when it uses the primary key, which stalled such a table."""
    db = env.ch_database
    env.ch(
        f"CREATE TABLE {db}.edge (ts DateTime64(6, 'UTC'), id UInt64) "
        "ENGINE = MergeTree ORDER BY (ts, id)"
    )
    env.ch(
        f"INSERT INTO {db}.edge SELECT toDateTime64('2026-01-01 12:00:00', 6, 'UTC') "
        "+ toIntervalMicrosecond(number), number FROM numbers(230)"
    )
    env.ch(
        f"INSERT INTO {db}.edge VALUES ('2026-01-01 23:59:59.999999', 5000), "
        "('2026-01-02 00:00:00', 5001)"
    )
    env.write_config([env.table("edge", watermark="ts", keys=["id"], batch_rows=100)])
    assert cycle(env)["rows"] == 232
    assert env.assert_tiers_equal("cold.edge") == 232
