"""The builders of offloader/sql/scan.py (reading a source's rows), without servers: the
exact SQL of each."""

from __future__ import annotations

from offloader.pinned import TEXT_SETTINGS
from offloader.sql.scan import (
    Scan,
    above_int64_query,
    invalid_utf8_query,
    page_query,
    positions_order_query,
    probe_relation,
    range_sums_query,
)
from offloader.sql.text import row_hash
from offloader.types import parse_type

TS = parse_type("DateTime64(6)")
ORDER = [("ts", TS), ("id", parse_type("UInt64"))]
SETTINGS = " SETTINGS " + ", ".join(TEXT_SETTINGS)


def ts(text: str) -> str:
    return f"toDateTime64('{text}', 6, 'UTC')"


def after(when: str, key: int) -> str:
    """keyset_after(ORDER, [when, key]): past (when, key)."""
    t = ts(when)
    return f"`ts` >= {t} AND (`ts` > {t} OR (`ts` = {t} AND (`id` > {key})))"


def test_a_page_of_a_plain_scan() -> None:
    scan = Scan("`db`.`t`", "2026-03-02 00:00:00.000000")
    assert page_query(scan, ORDER, ["`ts`", "`id`"], None, 10) == (
        f"SELECT `ts`, `id` FROM `db`.`t` WHERE `ts` <= {ts('2026-03-02 00:00:00.000000')} "
        "ORDER BY `ts`, `id` LIMIT 10 WITH TIES" + SETTINGS
    )


def test_a_page_of_a_repair_scan_within_one_day() -> None:
    """Every bound of the scan (upto, after, since, before, through), then the day's end:
    the first row's day, found by a subquery with the same bounds."""
    scan = Scan(
        "`db`.`t` FINAL",
        "2026-03-09 00:00:00.000000",
        since="2026-03-01 00:00:00.000000",
        before="2026-03-05 00:00:00.000000",
        through=["2026-03-04 00:00:00.000000", 3],
    )
    sql = page_query(scan, ORDER, ["*"], ["2026-03-01 00:00:00.000000", 7], 100, one_day=True)
    where = (
        f"`ts` <= {ts('2026-03-09 00:00:00.000000')} "
        f"AND ({after('2026-03-01 00:00:00.000000', 7)}) "
        f"AND `ts` >= {ts('2026-03-01 00:00:00.000000')} "
        f"AND `ts` < {ts('2026-03-05 00:00:00.000000')} "
        f"AND NOT ({after('2026-03-04 00:00:00.000000', 3)})"
    )
    end = "toDateTime64(toStartOfDay(`ts`, 'UTC') + toIntervalDay(1), 6, 'UTC')"
    assert sql == (
        f"SELECT * FROM `db`.`t` FINAL WHERE {where} AND `ts` < (SELECT {end} FROM "
        f"`db`.`t` FINAL WHERE {where} ORDER BY `ts` LIMIT 1) ORDER BY `ts`, `id` LIMIT 100 "
        "WITH TIES" + SETTINGS
    )


def test_a_scan_reads_its_pages_in_its_plans_order() -> None:
    class Plan:
        order = ORDER

    scan = Scan("`db`.`t`", "2026-03-02 00:00:00.000000")
    assert scan.query(Plan(), ["*"], ["2026-03-01 00:00:00.000000", 1], 5) == page_query(
        scan, ORDER, ["*"], ["2026-03-01 00:00:00.000000", 1], 5
    )


def test_range_sums_cover_the_page_from_the_scans_since() -> None:
    hashed = row_hash([("ts", "DateTime64(6)"), ("id", "UInt64")])
    head = "SELECT count(), toString(sum(cityHash64(tuple(`ts`, `id`)))) FROM db.t WHERE "
    last = ["2026-01-01 00:00:01.000000", 9]
    repair = Scan("db.t", "2026-01-09 00:00:00.000000", since="2026-01-01 00:00:00.000000")
    assert range_sums_query(repair, ORDER, ["2026-01-01 00:00:00.000000", 1], last, hashed) == (
        f"{head}NOT ({after('2026-01-01 00:00:01.000000', 9)}) "
        f"AND ({after('2026-01-01 00:00:00.000000', 1)}) "
        f"AND `ts` >= {ts('2026-01-01 00:00:00.000000')}"
    )
    # The scan's other bounds hold for every row up to the page's last: not repeated.
    plain = Scan("db.t", "2026-01-09 00:00:00.000000", before="2026-01-05", through=last)
    assert range_sums_query(plain, ORDER, None, last, hashed) == (
        f"{head}NOT ({after('2026-01-01 00:00:01.000000', 9)})"
    )


def test_the_probe_reads_the_row_at_an_offset_by_its_order_columns() -> None:
    columns = ["ts", "id", "v"]
    upto = "2026-03-02 00:00:00.000000"
    rel = probe_relation("`db`.`t_local` FINAL", ORDER, columns, upto, None, 999)
    assert rel == (
        "(SELECT `ts`, `id`, `v` FROM `db`.`t_local` FINAL WHERE (`ts`, `id`) IN (SELECT `ts`, "
        f"`id` FROM `db`.`t_local` FINAL WHERE `ts` <= {ts(upto)} ORDER BY `ts`, `id` "
        "LIMIT 1 OFFSET 999))"
    )
    rel = probe_relation("t", ORDER, columns, upto, ["2026-03-01 00:00:00.000000", 3], 0)
    assert rel == (
        "(SELECT `ts`, `id`, `v` FROM t WHERE (`ts`, `id`) IN (SELECT `ts`, `id` FROM t "
        f"WHERE `ts` <= {ts(upto)} AND ({after('2026-03-01 00:00:00.000000', 3)}) "
        "ORDER BY `ts`, `id` LIMIT 1 OFFSET 0))"
    )


def test_positions_are_ordered_by_clickhouse_ties_by_index() -> None:
    t = ts("2026-03-01 00:00:00.000000")
    sql = positions_order_query(
        ORDER, [["2026-03-01 00:00:00.000000", 3], ["2026-03-01 00:00:00.000000", 2]]
    )
    assert sql == (
        f"SELECT i FROM (SELECT 0 AS i, tuple({t}, 3) AS p UNION ALL "
        f"SELECT 1 AS i, tuple({t}, 2) AS p) ORDER BY p, i"
    )


def test_the_examples_of_values_a_page_refused() -> None:
    assert invalid_utf8_query("`db`.`t` FINAL", "v`x") == (
        "SELECT hex(any(`v\\`x`)), count() FROM `db`.`t` FINAL WHERE NOT isValidUTF8(`v\\`x`)"
    )
    assert above_int64_query("`db`.`t`", "n") == (
        "SELECT toString(max(`n`)) FROM `db`.`t` WHERE `n` > 9223372036854775807"
    )
