"""A whole table run against the fake source and state store (tests/fakes.py): paging,
ties at page ends, max_rows_per_cycle, shutdown mid-run and a failing page, without
ClickHouse or PostgreSQL. Iceberg is a real SQL catalog on SQLite in a temp dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from offloader.config import CatalogConfig, ClickHouseConfig, TableConfig
from offloader.errors import SinkError, SourceUnavailable
from offloader.iceberg import IcebergCatalog
from offloader.offload.supervisor import offload_table
from offloader.report import TableReport
from offloader.source import SourceTable
from offloader.tiers.services import Services
from tests.fakes import FakeSource, FakeStore


class Harness:
    def __init__(self, tmp: Path, data: list[tuple[int, str]]) -> None:
        self.fake = FakeSource(data)
        self.store = FakeStore()
        warehouse = tmp / "warehouse"
        warehouse.mkdir()
        self.catalog = IcebergCatalog(
            CatalogConfig(
                "unit",
                {
                    "type": "sql",
                    "uri": f"sqlite:///{tmp}/catalog.db",
                    "warehouse": f"file://{warehouse}",
                },
            )
        )

    def run(self, table: TableConfig, stopping_after: int | None = None) -> TableReport:
        async def go() -> TableReport:
            stopping = anyio.Event()
            if stopping_after is not None:
                self.fake.on_page = lambda n: stopping.set() if n >= stopping_after else None
            services = Services(
                ClickHouseConfig(),
                self.store,
                anyio.CapacityLimiter(1),
                anyio.CapacityLimiter(2),
                lambda: self.catalog,
            )
            return await offload_table(services, table, timeout=60, stopping=stopping)

        return anyio.run(go)

    def iceberg_rows(self, target: str = "cold.t") -> list[tuple[int, str]]:
        data = self.catalog.read(target).sort_by("id")
        return list(zip(data.column("id").to_pylist(), data.column("v").to_pylist(), strict=True))


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> Callable[[FakeSource], None]:
    """Route the pipeline's open_table to a FakeSource."""
    from contextlib import asynccontextmanager

    from offloader.offload import pipeline
    from tests.fakes import COLUMNS

    def install(fake: FakeSource) -> None:
        @asynccontextmanager
        async def open_table(cfg: ClickHouseConfig, table: TableConfig, surveyed: object = None):  # type: ignore[no-untyped-def]
            yield SourceTable(fake, table, list(COLUMNS), "db")

        monkeypatch.setattr(pipeline, "open_table", open_table)

    return install


def table(**kw: object) -> TableConfig:
    args: dict[str, object] = dict(
        source="db.t", target="cold.t", watermark="id", keys=(), batch_rows=100, append_rows=250
    )
    args.update(kw)
    return TableConfig(**args)  # type: ignore[arg-type]


def rows(n: int, start: int = 1) -> list[tuple[int, str]]:
    return [(i, f"v{i}") for i in range(start, start + n)]


def failing_from(page: int) -> Callable[[int], None]:
    """A FakeSource.on_page that fails every page from `page` on."""

    def fail(n: int) -> None:
        if n >= page:
            raise SourceUnavailable(f"fake: connection reset on page {n}")

    return fail


def test_pages_and_appends_reach_the_high_water_mark(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, rows(1_050))
    opened(h.fake)
    report = h.run(table())
    assert report.status == "ok", report.error
    assert report.rows == 1_050 and report.pages == 11
    assert report.snapshots == 4  # appends of >= 250 rows: 300, 300, 300, 150
    assert report.watermark == [1_050] and h.store.position["cold.t"] == (1_050,)
    assert h.iceberg_rows() == rows(1_050)
    assert report.rows_behind == 0
    again = h.run(table())
    assert again.status == "idle" and again.rows == 0 and h.iceberg_rows() == rows(1_050)


def test_ties_at_a_page_end_are_never_split(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    # 40 rows share the watermark that ends the first page: WITH TIES keeps them together,
    # and the next page starts after them, so none is skipped or read twice.
    data = rows(90) + [(95, f"tie{k}") for k in range(40)] + rows(50, start=200)
    h = Harness(tmp_path, data)
    opened(h.fake)
    report = h.run(table(batch_rows=100))
    assert report.status == "ok", report.error
    assert report.rows == len(data)
    assert sorted(h.iceberg_rows()) == sorted(data)


def test_max_rows_per_cycle_leaves_the_rest_for_the_next_run(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, rows(1_000))
    opened(h.fake)
    first = h.run(table(max_rows_per_cycle=300))
    assert first.status == "ok" and first.more and first.rows == 300
    assert h.iceberg_rows() == rows(300)
    while True:
        report = h.run(table(max_rows_per_cycle=300))
        if not report.more:
            break
    assert h.iceberg_rows() == rows(1_000)


def test_shutdown_mid_run_commits_what_was_read(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, rows(1_000))
    opened(h.fake)
    report = h.run(table(), stopping_after=3)
    assert report.status == "ok" and report.more
    assert 0 < report.rows < 1_000 and report.rows % 100 == 0
    assert h.iceberg_rows() == rows(report.rows)
    h.fake.on_page = None
    rest = h.run(table())
    assert rest.rows == 1_000 - report.rows and h.iceberg_rows() == rows(1_000)


def test_a_failing_page_fails_the_run_and_loses_nothing(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    h = Harness(tmp_path, rows(1_000))
    opened(h.fake)
    h.fake.on_page = failing_from(5)
    report = h.run(table())
    assert report.status == "failed" and report.reason == "clickhouse"
    assert "page 5" in (report.error or "")
    committed = h.iceberg_rows()
    assert committed == rows(len(committed)) and len(committed) < 1_000  # a prefix, kept
    assert h.store.position.get("cold.t", (0,)) == ((committed[-1][0],) if committed else (0,))
    h.fake.on_page = None
    h.fake.pages_served = 0
    again = h.run(table())
    assert again.status == "ok" and h.iceberg_rows() == rows(1_000)
    assert [r.status for r in h.store.runs] == ["failed", "ok"]


def test_a_failed_run_reports_what_is_committed(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    """The report's watermark is the committed position whether the run ends well or
    not: the last commit of a run that fails after it, the one the run started from when
    it fails before its first."""
    h = Harness(tmp_path, rows(600))
    opened(h.fake)
    h.fake.on_page = failing_from(5)
    report = h.run(table())
    assert report.status == "failed" and report.snapshots == 1  # 300 rows, then page 5
    assert report.watermark == [300] and h.store.position["cold.t"] == (300,)
    h.fake.on_page, h.fake.pages_served = failing_from(1), 0
    again = h.run(table())
    assert again.status == "failed" and again.snapshots == 0
    assert again.watermark == [300]


def test_recovery_found_while_the_first_page_is_read_reads_again_from_iceberg(
    tmp_path: Path,
    opened,  # type: ignore[no-untyped-def]
) -> None:
    """Iceberg opens while the first page is read from the state store's position; a run
    that died between its Iceberg and state commits left Iceberg ahead, so that page is
    dropped and the rows are read again from Iceberg's position: none twice."""
    h = Harness(tmp_path, rows(300))
    opened(h.fake)
    assert h.run(table()).rows == 300
    h.store.seq["cold.t"], h.store.position["cold.t"] = 0, None  # the lost state commit
    h.fake.data += rows(100, start=301)
    served = h.fake.pages_served
    report = h.run(table())
    assert report.status == "ok", report.error
    assert report.recovered and report.rows == 100
    assert h.iceberg_rows() == rows(400)
    assert h.store.position["cold.t"] == (400,) and h.store.seq["cold.t"] == 2
    # The speculative page (from the start) was read, then the two from row 301 on.
    assert h.fake.pages_served - served == 3


def test_a_scan_ends_at_the_rows_prepare_counted_without_an_empty_page(
    tmp_path: Path,
    opened,  # type: ignore[no-untyped-def]
) -> None:
    """1,000 rows waiting in full pages of 100: the run ends after the tenth page, with no
    eleventh (empty) one to find out. Rows arriving mid-run inside the scanned range take
    the place of some counted ones; those are past the position and come next cycle:
    none is lost or read twice."""
    h = Harness(tmp_path, rows(1_000))
    opened(h.fake)
    report = h.run(table())
    assert report.status == "ok" and report.rows == 1_000 and report.pages == 10
    assert h.fake.pages_served == 10

    evens = [(i, f"v{i}") for i in range(2_002, 4_001, 2)]  # 1,000 rows, ids 2002..4000
    h.fake.data += evens
    odds = [(i, f"v{i}") for i in range(2_601, 2_800, 2)]  # 100 rows among them, mid-run

    def arrive(n: int) -> None:
        if n == 13:  # the third page of the second run, which reads from id 2402 on
            h.fake.data += odds

    h.fake.on_page = arrive
    second = h.run(table())
    assert second.status == "ok" and second.rows == 1_000 and not second.more
    assert h.fake.pages_served == 20  # ten full pages, then the count was reached
    h.fake.on_page = None
    third = h.run(table())
    assert third.rows == 100  # the counted rows the new ones displaced
    assert h.iceberg_rows() == sorted(rows(1_000) + evens + odds)


def test_the_view_moves_with_every_commit_and_idle_runs_send_nothing(
    tmp_path: Path,
    opened,  # type: ignore[no-untyped-def]
) -> None:
    """With a view, each commit replaces it at that commit's position and metadata file
    (recorded in the state store); an idle run whose view is current sends no statement;
    a failed replacement is reported and retried by the next (idle) run."""
    h = Harness(tmp_path, rows(600))
    opened(h.fake)
    report = h.run(table(view="db.t_all"))
    assert report.status == "ok" and report.snapshots == 2 and report.view_error is None
    views = [c for c in h.fake.commands if c.startswith("CREATE OR REPLACE VIEW `db`.`t_all`")]
    assert len(views) == 2 and "at commit 2, position [600]" in views[-1]
    state = h.store.views["cold.t"]
    assert state.seq == 2 and state.position == (600,) and state.metadata is not None
    assert f"'metadata/{state.metadata.rsplit('/', 1)[1]}'" in views[-1]  # the pinned file
    again = h.run(table(view="db.t_all"))
    assert again.status == "idle" and len(h.fake.commands) == 2
    # A statement that fails: the run is still ok, the failure recorded, then retried.
    h.fake.data += rows(10, start=601)
    failing = h.fake.command

    async def refuse(query: str) -> None:
        raise SourceUnavailable("fake: DDL refused")

    h.fake.command = refuse  # type: ignore[method-assign]
    report = h.run(table(view="db.t_all"))
    assert report.status == "ok" and report.rows == 10
    assert "DDL refused" in (report.view_error or "")
    assert h.store.views["cold.t"].error and h.store.views["cold.t"].seq == 2
    h.fake.command = failing  # type: ignore[method-assign]
    idle = h.run(table(view="db.t_all"))
    assert idle.status == "idle" and idle.view_error is None
    assert h.store.views["cold.t"].seq == 3 and "at commit 3" in h.fake.commands[-1]


def test_a_view_turned_off_or_renamed_is_dropped(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    """Renaming a table's view drops the old one (it would read a snapshot that expiry
    removes); turning it off drops it and forgets it; tables that never had one pay
    nothing (no statement)."""
    h = Harness(tmp_path, rows(100))
    opened(h.fake)
    assert h.run(table(view="db.a")).view_error is None
    assert h.run(table(view="db.b")).status == "idle"
    assert h.fake.commands[-2:][0] == "DROP VIEW IF EXISTS `db`.`a`"
    assert h.fake.commands[-1].startswith("CREATE OR REPLACE VIEW `db`.`b`")
    assert h.store.views["cold.t"].name == "db.b"
    h.run(table())
    assert h.fake.commands[-1] == "DROP VIEW IF EXISTS `db`.`b`" and not h.store.views
    sent = len(h.fake.commands)
    h.run(table())
    assert len(h.fake.commands) == sent


def test_a_sqlite_catalog_in_a_new_directory_is_created(tmp_path: Path) -> None:
    """The embedded catalog's directory is created on first use; one that cannot be
    created is named with what to do (not SQLite's "unable to open database file")."""
    props = {"type": "sql", "warehouse": f"file://{tmp_path}/warehouse"}
    fresh = IcebergCatalog(
        CatalogConfig("c", {**props, "uri": f"sqlite:///{tmp_path}/new/dir/catalog.db"})
    )
    assert fresh.catalog.list_namespaces() == []
    assert (tmp_path / "new" / "dir" / "catalog.db").exists()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    bad = IcebergCatalog(CatalogConfig("c", {**props, "uri": f"sqlite:///{blocked}/x/c.db"}))
    with pytest.raises(SinkError, match=r"directory .*/file/x does not exist and cannot be"):
        _ = bad.catalog


def test_a_page_that_does_not_advance_fails_the_table(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    """A server whose pages ignore the position (a filter bug) would have the scan read
    and commit the same rows again and again: the second page, ending where the first
    did, fails the table naming it and the position; no row is committed twice."""
    h = Harness(tmp_path, rows(1_000))
    opened(h.fake)
    h.fake.broken_filter = True
    report = h.run(table())
    assert report.status == "failed" and report.reason == "clickhouse", report.error
    assert "cold.t: a page of ClickHouse rows after position [100] ended at [100]" in (
        report.error or ""
    )
    committed = h.iceberg_rows() if report.snapshots else []
    assert len(committed) == len(set(committed))


def test_check_advance_refuses_the_same_position_or_an_earlier_watermark() -> None:
    from offloader.errors import SourceUnavailable
    from offloader.source import check_advance

    check_advance("t", ["2026-01-01 00:00:00.000001", 5], ["2026-01-01 00:00:00.000001", 6])
    check_advance("t", [10, "b"], [11, "a"])
    for after, position in (
        (["2026-01-01 00:00:00.000002", 1], ["2026-01-01 00:00:00.000001", 9]),
        ([10, "b"], [10, "b"]),
        ([10, "b"], [9, "z"]),
    ):
        with pytest.raises(SourceUnavailable, match="not past the position"):
            check_advance("t", after, position)


def test_a_deadline_during_the_two_commits_lets_both_finish(tmp_path: Path, opened) -> None:  # type: ignore[no-untyped-def]
    """The table's deadline (or a shutdown) fires while the Iceberg commit is done and
    the PostgreSQL one is under way: the commits are shielded, so PostgreSQL still
    records it in the same run (without the shield it would be left for the next run's
    recovery, which this test would catch)."""
    h = Harness(tmp_path, rows(100))
    opened(h.fake)

    async def go() -> None:
        with anyio.CancelScope() as deadline:

            async def fire() -> None:
                deadline.cancel()
                await anyio.sleep(0.01)  # a checkpoint: cancelled here unless shielded

            h.store.on_commit = fire
            services = Services(
                ClickHouseConfig(),
                h.store,
                anyio.CapacityLimiter(1),
                anyio.CapacityLimiter(2),
                lambda: h.catalog,
            )
            await offload_table(services, table(), timeout=60)

    anyio.run(go)
    ice = h.catalog.load("cold.t")
    assert ice is not None
    mark = ice.latest_mark()
    assert mark is not None and mark.seq == 1
    assert h.store.seq.get("cold.t") == 1 and h.store.position["cold.t"] == (100,)
