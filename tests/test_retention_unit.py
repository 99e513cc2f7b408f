"""Retention's choices without servers: which tables it refuses, how a cluster's parts
are named in an intent and found again on their shard, and the statement sequence of
the retiring-table method on Replicated shards (replication cannot run here: a fake
ClickHouse plays each replica's tables, as system.parts shows them)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import replace
from typing import Any

import pytest

from offloader.config import TableConfig
from offloader.errors import SourceSchemaError
from offloader.ops import retention
from offloader.ops.retention import Decision, Partition, _Node, _Source, retiring_ddl
from offloader.state import RetentionIntent

pytestmark = pytest.mark.anyio

TABLE = TableConfig(
    source="market.trades", target="cold.trades", watermark="ts", keys=("id",), hot_retention=86400
)
RETIRING = replace(TABLE, retiring_table="trades_local_retiring")
ZK = "ReplicatedMergeTree('/clickhouse/tables/{shard}/market/trades_local', '{replica}')"
ENGINE_FULL = (
    f"{ZK} PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id) SETTINGS index_granularity = 8192"
)


class Session:
    """One node's ClickHouse: its tables' engines and active parts (partition id -> part
    hashes; part "hN" holds one row whose hash is N, "h1.h2" is h1 and h2 merged), the
    replicas of each shard, the statements it ran, and what it answers retention's
    queries with."""

    def __init__(self, engine: str, parts: dict[str, list[str]] | None = None) -> None:
        self.engine = engine
        self.tables: dict[str, dict[str, list[str]]] = {"trades_local": parts or {}}
        self.commands: list[str] = []
        self.replicas = {1: 1, 2: 1}  # system.clusters: replicas of each shard

    def add_retiring(self) -> Session:
        self.tables["trades_local_retiring"] = {}
        return self

    async def rows(self, query: str) -> list[tuple[Any, ...]]:
        if query.startswith("SELECT engine, engine_full"):
            name = re.search(r"name = '(\w+)'", query)
            assert name is not None
            if name[1] not in self.tables and name[1] != "trades":
                return []
            full = ENGINE_FULL.replace("ReplicatedMergeTree", self.engine)
            return [(self.engine, full, "toYYYYMMDD(ts)")]
        if "FROM system.clusters" in query:  # sql.system.CLUSTER_COLUMNS, a row per node
            return [
                (shard, r, f"h{shard}-{r}", f"h{shard}-{r}", 9000, False)
                for shard, count in self.replicas.items()
                for r in range(1, count + 1)
            ]
        if "FROM system.replicas" in query:
            return [IN_SYNC] if self.engine.startswith("Replicated") else []
        counted = re.search(r"FROM `market`\.`(\w+)` WHERE _partition_id = '(\w+)'", query)
        if counted:
            parts = self.tables[counted[1]].get(counted[2], [])
            rows = [h for part in parts for h in part.split(".")]
            return [(len(rows), str(sum(int(h[1:]) for h in rows)))]
        table = re.search(r"AND table = '(\w+)'", query)
        assert table is not None and "hash_of_all_files" in query, query
        return [
            (p, p, f"{p}_{k}_{k}_0", h, 1)
            for p, hashes in self.tables[table[1]].items()
            for k, h in enumerate(hashes)
        ]

    async def scalar(self, query: str) -> Any:
        return (await self.rows(query))[0][0]

    async def command(self, query: str) -> None:
        if query.startswith("SYSTEM SYNC REPLICA"):
            return
        self.commands.append(query)
        moved = re.fullmatch(
            r"ALTER TABLE `market`\.`(\w+)` MOVE PARTITION ID '(\w+)' TO TABLE `market`\.`(\w+)`",
            query,
        )
        dropped = re.fullmatch(r"ALTER TABLE `market`\.`(\w+)` DROP PARTITION ID '(\w+)'", query)
        if moved:
            src, pid, dst = moved.groups()
            self.tables[dst].setdefault(pid, []).extend(self.tables[src].pop(pid, []))
        elif dropped:
            self.tables[dropped[1]].pop(dropped[2], None)
        else:
            raise AssertionError(f"unexpected statement {query}")


class Src:
    def __init__(self, shards: list[Session] | None, own: Session) -> None:
        self.source = own
        self.database = "market"
        self.columns = [("ts", "DateTime"), ("id", "UInt64")]
        self._shards = shards

    @property
    def distributed(self) -> tuple[str, str, str] | None:
        return ("c", "market", "trades_local") if self._shards is not None else None

    async def shards(self) -> list[tuple[int, Session]]:
        assert self._shards is not None
        return list(enumerate(self._shards, 1))


class Store:
    def __init__(self) -> None:
        self.intents: list[RetentionIntent | None] = []

    async def retention_intent(self, target: str, intent: RetentionIntent | None) -> None:
        self.intents.append(intent)

    async def retention_dropping(self, target: str, intent: RetentionIntent) -> None:
        self.intents.append(intent)


def _cluster(one: dict[str, list[str]], two: dict[str, list[str]]) -> tuple[Session, Session]:
    return (
        Session("ReplicatedMergeTree", one).add_retiring(),
        Session("ReplicatedMergeTree", two).add_retiring(),
    )


async def _opened(one: Session, two: Session) -> _Source:
    src = Src([one, two], Session("Distributed"))
    return await _Source.open(src, RETIRING)  # type: ignore[arg-type]


def _decision(hot_parts: list[str]) -> Decision:
    day = dt.date(2025, 5, 1)
    return Decision(
        Partition("20250501", "20250501", tuple(sorted(hot_parts)), 10),
        day,
        day + dt.timedelta(days=1),
        "candidate",
    )


async def _compared(hot: _Source, hot_parts: list[str], *rows: str) -> Decision:
    """The decision `_differs` hands on once the comparison read `rows` ("hN")."""
    checksum = sum(int(h[1:]) for h in rows)
    why, d = await retention._on_the_replicas(hot, _decision(hot_parts), len(rows), checksum)
    assert why is None, why.text
    return d


LOCAL, OUT = "`market`.`trades_local`", "`market`.`trades_local_retiring`"
MOVE = f"ALTER TABLE {LOCAL} MOVE PARTITION ID '20250501' TO TABLE {OUT}"
BACK = f"ALTER TABLE {OUT} MOVE PARTITION ID '20250501' TO TABLE {LOCAL}"
# system.replicas rows (sql.system.REPLICA_STATE: read-only, session expired, delay, queue,
# inserts to fetch, log pointer, log top): in sync, and behind on fetches.
IN_SYNC = (0, 0, 0, 0, 0, 5, 4)
BEHIND = (0, 0, 12, 3, 2, 3, 4)
DROP = "ALTER TABLE `market`.`trades_local_retiring` DROP PARTITION ID '20250501'"


@pytest.mark.parametrize("sharded", [False, True])
async def test_a_replicated_table_without_a_retiring_table_is_refused_naming_it(
    sharded: bool,
) -> None:
    replicated = Session("ReplicatedMergeTree")
    src = Src([Session("MergeTree"), replicated], Session("Distributed")) if sharded else None
    src = src or Src(None, replicated)
    with pytest.raises(SourceSchemaError, match=r"ReplicatedMergeTree market\.trades") as err:
        await _Source.open(src, TABLE)  # type: ignore[arg-type]
    assert "one replica" in str(err.value)
    assert "/market/trades_local_retiring', '{replica}')" in str(err.value)
    assert "retiring_table = " in str(err.value)


async def test_a_retiring_table_that_is_missing_or_of_another_family_is_refused() -> None:
    with pytest.raises(SourceSchemaError, match="does not exist on shard 2; create it"):
        await _opened(Session("ReplicatedMergeTree").add_retiring(), Session("ReplicatedMergeTree"))
    plain = Session("MergeTree").add_retiring()

    async def replicated_retiring(query: str) -> list[tuple[Any, ...]]:
        if "'trades_local_retiring'" in query:
            return [("ReplicatedMergeTree", ENGINE_FULL, "toYYYYMMDD(ts)")]
        return await Session.rows(plain, query)

    plain.rows = replicated_retiring  # type: ignore[method-assign]
    with pytest.raises(SourceSchemaError, match="same engine family"):
        await _opened(plain, Session("MergeTree").add_retiring())


def test_the_retiring_table_of_a_replicated_table_has_its_own_zookeeper_path() -> None:
    ddl = retiring_ddl("market", "trades_local", "trades_local_retiring", ENGINE_FULL)
    assert ddl == (
        "CREATE TABLE `market`.`trades_local_retiring` AS `market`.`trades_local` ENGINE = "
        "ReplicatedMergeTree('/clickhouse/tables/{shard}/market/trades_local_retiring', "
        "'{replica}') PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id) "
        "SETTINGS index_granularity = 8192"
    )
    plain = "MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (ts, id)"
    assert retiring_ddl("m", "t", "r", plain).endswith(f"AS `m`.`t` ENGINE = {plain}")


async def test_replicated_shards_move_the_partition_out_then_drop_it_there() -> None:
    """Each shard: MOVE PARTITION to the retiring table (a replicated ALTER: every replica
    of the shard moves the same parts, so nothing stays in any replica's detached/),
    compare what arrived with what was verified (by content: rows and row-hash sum on
    each shard), then DROP PARTITION there (replicated too). The intent is recorded
    before the move, the point of no return before the drop."""
    one, two = _cluster({"20250501": ["h1", "h2"]}, {"20250501": ["h3"]})
    hot = await _opened(one, two)
    assert hot.method == "move"
    d = await _compared(hot, ["shard 1/h1", "shard 1/h2", "shard 2/h3"], "h1", "h2", "h3")
    assert d.partition.parts == ("shard 1/2 rows, hash sum 3", "shard 2/1 rows, hash sum 3")
    store = Store()
    why = await retention._drop(hot, store, "cold.trades", d)  # type: ignore[arg-type]
    assert why is None
    assert one.commands == [MOVE, DROP] and two.commands == [MOVE, DROP]
    assert [i.phase if i else None for i in store.intents] == ["detach", "drop", None]
    assert store.intents[0] is not None and store.intents[0].method == "move"
    assert one.tables == {"trades_local": {}, "trades_local_retiring": {}}


async def test_a_part_inserted_on_one_shard_after_the_comparison_moves_everything_back() -> None:
    one, two = _cluster({"20250501": ["h1"]}, {"20250501": ["h3"]})
    hot = await _opened(one, two)
    d = await _compared(hot, ["shard 1/h1", "shard 2/h3"], "h1", "h3")
    one.tables["trades_local"]["20250501"].append("h9")  # the insert
    store = Store()
    why = await retention._drop(hot, store, "cold.trades", d)  # type: ignore[arg-type]
    assert why is not None and "changed between the comparison and the drop" in why
    assert one.commands == [MOVE, BACK] and two.commands == [MOVE, BACK]
    assert sorted(one.tables["trades_local"]["20250501"]) == ["h1", "h9"]
    assert [i.phase if i else None for i in store.intents] == ["detach", None]


async def test_a_replica_holding_other_rows_than_were_compared_parks_nothing() -> None:
    """The comparison read through the Distributed table, from a replica without the
    late row h9; the replica retention opened on shard 1 has it: refused, nothing
    parked (else h9 would be moved and dropped unread)."""
    one, two = _cluster({"20250501": ["h1", "h9"]}, {"20250501": ["h3"]})
    hot = await _opened(one, two)
    why, _ = await retention._on_the_replicas(hot, _decision(["shard 1/h1"]), 2, 4)
    assert why is not None and why.reason == "changed"
    assert "(2 rows, hash sum 4; shard 1/2 rows, hash sum 10; shard 2/1 rows" in why.text
    why, _ = await retention._on_the_replicas(hot, _decision(["shard 1/h1"]), 3, 12)
    assert why is not None and "shard 1/2 rows, hash sum 10" in why.text  # same count
    assert one.commands == [] and two.commands == []


async def test_a_lagging_replica_is_not_used() -> None:
    one, two = _cluster({"20250501": ["h1"]}, {})

    async def behind(query: str) -> list[tuple[Any, ...]]:
        if "FROM system.replicas" in query:
            return [BEHIND]
        return await Session.rows(two, query)

    two.rows = behind  # type: ignore[method-assign]
    why = await retention._replicas_ready(await _opened(one, two))
    assert why is not None and why.text.startswith(
        "shard 2/`market`.`trades_local`: 2 inserted parts not fetched yet"
    ), why.text
    assert "12 s behind" in why.text


async def test_a_replica_falling_behind_after_the_comparison_parks_nothing() -> None:
    """A replicated MOVE drops the partition's parts on every replica but moves only the
    ones the replica running it holds: a replica that took a late part elsewhere since
    the comparison must not park. Checked right before the park: the intent is cleared,
    nothing moves, the partition waits."""
    one, two = _cluster({"20250501": ["h1"]}, {"20250501": ["h3"]})
    hot = await _opened(one, two)
    d = await _compared(hot, ["shard 1/h1", "shard 2/h3"], "h1", "h3")

    async def behind_now(query: str) -> list[tuple[Any, ...]]:
        if "FROM system.replicas" in query:
            return [BEHIND]
        return await Session.rows(two, query)

    two.rows = behind_now  # type: ignore[method-assign]
    store = Store()
    why = await retention._drop(hot, store, "cold.trades", d)  # type: ignore[arg-type]
    assert why is not None and "not fetched yet" in why
    assert one.commands == [] and two.commands == []
    assert store.intents[-1] is None


@pytest.mark.parametrize("refused", [None, "access denied", "unknown table"])
async def test_a_replica_is_synced_where_granted(refused: str | None) -> None:
    """SYSTEM SYNC REPLICA on each Replicated node before its delay and queue are read;
    where it is not granted the delay and queue decide alone; any other error fails."""
    one, two = _cluster({"20250501": ["h1"]}, {})
    synced: list[str] = []

    async def sync(query: str) -> None:
        if query.startswith("SYSTEM SYNC REPLICA"):
            synced.append(query)
            if refused:
                raise SourceSchemaError(f"shard 1: {refused}: Not enough privileges")
            return
        await Session.command(one, query)

    one.command = sync  # type: ignore[method-assign]
    hot = await _opened(one, two)
    if refused == "unknown table":
        with pytest.raises(SourceSchemaError, match="unknown table"):
            await retention._replicas_ready(hot)
    else:
        assert await retention._replicas_ready(hot) is None
    assert synced[0] == "SYSTEM SYNC REPLICA `market`.`trades_local`"
    if refused != "unknown table":  # and its retiring table's, where the parts go
        assert synced == [
            "SYSTEM SYNC REPLICA `market`.`trades_local`",
            "SYSTEM SYNC REPLICA `market`.`trades_local_retiring`",
        ]


async def test_two_parts_of_the_same_rows_are_two_parts() -> None:
    """Two parts of identical rows are still two (by content: two rows), so the
    partition is dropped, not refused."""
    one, two = _cluster({"20250501": ["h1", "h1"]}, {})
    hot = await _opened(one, two)
    d = await _compared(hot, ["shard 1/h1", "shard 1/h1"], "h1", "h1")
    why = await retention._drop(hot, Store(), "cold.trades", d)  # type: ignore[arg-type]
    assert why is None and one.commands == [MOVE, DROP]


async def test_a_retiring_table_holding_the_partition_already_is_refused() -> None:
    one, two = _cluster({"20250501": ["h1"]}, {})
    one.tables["trades_local_retiring"]["20250501"] = ["h0"]
    hot = await _opened(one, two)
    store = Store()
    d = await _compared(hot, ["shard 1/h1"], "h1")
    why = await retention._drop(hot, store, "cold.trades", d)  # type: ignore[arg-type]
    assert why is not None and "did not move there" in why
    assert one.commands == [] and store.intents == []


@pytest.mark.parametrize("phase", ["detach", "drop"])
async def test_a_merge_in_the_retiring_table_does_not_change_what_arrived(phase: str) -> None:
    """Stopped after the move, then the retiring table merged the moved parts (new
    names, new hashes): before the point of no return the content is still the compared
    one, so the drop is finished (not moved back); after it, the partition is dropped
    whatever its parts are called now."""
    one, two = _cluster({}, {})
    one.tables["trades_local_retiring"]["20250501"] = ["h1.h2"]  # h1 and h2, merged
    hot = await _opened(one, two)
    said, store = await _recover_moved(hot, phase, ("shard 1/2 rows, hash sum 3",))
    assert one.commands == [DROP] and two.commands == [], said
    assert one.tables["trades_local_retiring"] == {} and store.intents[-1] is None
    assert said.startswith("finished dropping partition 20250501")


@pytest.mark.parametrize("phase", ["detach", "drop"])
async def test_a_pass_stopped_between_the_shards_moves_is_undone_or_finished(phase: str) -> None:
    """Killed after shard 1 moved its parts and before shard 2 did: before the point of
    no return they are moved back; after it (phase drop, every shard moved) whatever is
    still in a retiring table is dropped, nothing moved back."""
    if phase == "detach":
        one, two = _cluster({}, {"20250501": ["h3"]})
        one.tables["trades_local_retiring"]["20250501"] = ["h1"]
    else:
        one, two = _cluster({}, {})
        two.tables["trades_local_retiring"]["20250501"] = ["h3"]  # shard 1 dropped already
    hot = await _opened(one, two)
    parts = ("shard 1/1 rows, hash sum 1", "shard 2/1 rows, hash sum 3")
    intent = RetentionIntent("20250501", parts, (), "2025-05-02", phase, "move")
    store = Store()
    said = await retention._recover(hot, store, "cold.trades", intent)  # type: ignore[arg-type]
    if phase == "detach":
        assert one.commands == [BACK] and two.commands == []
        assert "put partition 20250501 back" in said
        assert one.tables["trades_local"]["20250501"] == ["h1"]
    else:
        assert one.commands == [] and two.commands == [DROP]
        assert "1 of its 2 nodes' parts left in the retiring table" in said
    assert store.intents == [None]


async def test_an_intent_of_the_other_method_is_not_guessed_at() -> None:
    one, two = _cluster({}, {})
    hot = await _opened(one, two)
    intent = RetentionIntent("20250501", ("shard 1/a_1_1_0",), (), "2025-05-02")
    with pytest.raises(SourceSchemaError, match="parked by method 'detach'"):
        await retention._recover(hot, Store(), "cold.trades", intent)  # type: ignore[arg-type]
    assert RetentionIntent.decode(intent.encode()) == intent
    old = '["20250501", ["a_1_1_0"], [], "2025-05-02", "drop"]'  # before `method`
    assert RetentionIntent.decode(old) == replace(intent, parts=("a_1_1_0",), phase="drop")


async def test_a_shards_detached_parts_are_dropped_and_attached_on_that_shard() -> None:
    one, two = Session("MergeTree"), Session("MergeTree")
    recorded: list[str] = []

    async def record(query: str) -> None:
        recorded.append(query)

    one.command = two.command = record  # type: ignore[method-assign]
    src = Src([one, two], Session("Distributed"))
    hot = await _Source.open(src, TABLE)  # type: ignore[arg-type]
    assert [n.prefix for n in hot.shards] == ["shard 1/", "shard 2/"] and hot.method == "detach"
    await hot.drop("20250501", ["shard 2/20250501_1_1_0", "shard 1/20250501_3_3_0"])
    await hot.attach("20250502", ["shard 1/20250502_2_2_0"])
    assert [c.split(" SETTINGS")[0] for c in recorded] == [
        "ALTER TABLE `market`.`trades_local` DROP DETACHED PART '20250501_3_3_0'",
        "ALTER TABLE `market`.`trades_local` DROP DETACHED PART '20250501_1_1_0'",
        "ALTER TABLE `market`.`trades_local` ATTACH PART '20250502_2_2_0'",
    ]


async def test_a_shard_of_several_replicas_without_replication_is_refused() -> None:
    """DETACH and DROP DETACHED act on one replica, and each replica of a non-Replicated
    shard holds rows of its own: refused, naming the shard and why."""
    one, two = Session("MergeTree"), Session("MergeTree")
    src = Src([one, two], Session("Distributed"))
    src.source.replicas = {1: 1, 2: 2}
    with pytest.raises(SourceSchemaError, match=r"shard 2/market\.trades_local: the shard has 2"):
        await _Source.open(src, TABLE)  # type: ignore[arg-type]
    src.source.replicas = {1: 1, 2: 1}
    assert len((await _Source.open(src, TABLE)).shards) == 2  # type: ignore[arg-type]


def test_one_servers_parts_keep_their_names() -> None:
    """Intents recorded before clusters name parts without a prefix: still found."""
    node = _Node("", Session("MergeTree"), "market", "trades")  # type: ignore[arg-type]
    shard = retention.Sql(node, "cityHash64(1)", final=False)
    hot = _Source(None, TABLE, [shard])
    assert hot._located(["20250501_1_1_0"]) == [(shard, ["20250501_1_1_0"])]


@pytest.mark.parametrize("phase", ["detach", "drop"])
async def test_a_stopped_pass_is_not_recovered_on_a_replica_behind(phase: str) -> None:
    """A replica that has not fetched the parked parts (or the retiring table's) would
    see fewer of them than were parked: recovery there waits, keeping the intent, and
    runs nothing."""
    one, two = _cluster({}, {})
    one.tables["trades_local_retiring"]["20250501"] = ["h1"]
    hot = await _opened(one, two)

    async def behind(query: str) -> list[tuple[Any, ...]]:
        if "FROM system.replicas" in query:
            return [BEHIND]
        return await Session.rows(two, query)

    two.rows = behind  # type: ignore[method-assign]
    said, store = await _recover_moved(hot, phase, ("shard 1/1 rows, hash sum 1",))
    assert said.startswith("recovery of partition 20250501 waits"), said
    assert one.commands == [] and two.commands == [] and store.intents == []


async def _recover_moved(hot: Any, phase: str, parts: tuple[str, ...]) -> tuple[str, Store]:
    """Recover a stopped `move` pass in `phase` of partition 20250501, recorded with
    `parts`, while Iceberg is still at the snapshot it was compared against."""
    intent = RetentionIntent("20250501", parts, (), "2025-05-02", phase, "move", snapshot_id=7)
    store = Store()

    async def iceberg_where_compared() -> int:
        return 7

    said = await retention._recover(hot, store, "cold.trades", intent, iceberg_where_compared)
    return said, store
