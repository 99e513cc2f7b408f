"""Retention's choices without servers: which tables it refuses, and how a cluster's
parts are named in an intent and found again on their shard."""

from __future__ import annotations

from typing import Any

import pytest

from offloader.config import TableConfig
from offloader.errors import SourceSchemaError
from offloader.ops.retention import _Node, _Source

pytestmark = pytest.mark.anyio

TABLE = TableConfig(
    source="market.trades", target="cold.trades", watermark="ts", keys=("id",), hot_retention=86400
)


class Session:
    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.commands: list[str] = []

    async def scalar(self, query: str) -> Any:
        assert "SELECT engine FROM system.tables" in query, query
        return self.engine

    async def command(self, query: str) -> None:
        self.commands.append(query)


class Src:
    def __init__(self, shards: list[Session] | None, own: Session) -> None:
        self.source = own
        self.database = "market"
        self._shards = shards

    @property
    def distributed(self) -> tuple[str, str, str] | None:
        return ("c", "market", "trades_local") if self._shards is not None else None

    async def shards(self) -> list[tuple[int, Session]]:
        assert self._shards is not None
        return list(enumerate(self._shards, 1))


@pytest.mark.parametrize("sharded", [False, True])
async def test_a_replicated_table_is_refused_naming_it(sharded: bool) -> None:
    replicated = Session("ReplicatedMergeTree")
    src = Src([Session("MergeTree"), replicated], Session("Distributed")) if sharded else None
    src = src or Src(None, replicated)
    with pytest.raises(SourceSchemaError, match=r"ReplicatedMergeTree market\.trades") as err:
        await _Source.open(src, TABLE)  # type: ignore[arg-type]
    assert "one replica" in str(err.value)


async def test_a_shards_parts_are_dropped_and_attached_on_that_shard() -> None:
    one, two = Session("MergeTree"), Session("MergeTree")
    src = Src([one, two], Session("Distributed"))
    hot = await _Source.open(src, TABLE)  # type: ignore[arg-type]
    assert [n.prefix for n in hot.nodes] == ["shard 1/", "shard 2/"]
    await hot.drop(["shard 2/20250501_1_1_0", "shard 1/20250501_3_3_0"])
    await hot.attach(["shard 1/20250502_2_2_0"])
    assert [c.split(" SETTINGS")[0] for c in two.commands] == [
        "ALTER TABLE `market`.`trades_local` DROP DETACHED PART '20250501_1_1_0'"
    ]
    assert one.commands[0].startswith(
        "ALTER TABLE `market`.`trades_local` DROP DETACHED PART '20250501_3_3_0'"
    )
    assert one.commands[1] == "ALTER TABLE `market`.`trades_local` ATTACH PART '20250502_2_2_0'"


def test_one_servers_parts_keep_their_names() -> None:
    """Intents recorded before clusters name parts without a prefix: still found."""
    node = _Node("", Session("MergeTree"), "market", "trades")  # type: ignore[arg-type]
    hot = _Source(None, TABLE, [node])  # type: ignore[arg-type]
    assert hot._located(["20250501_1_1_0"]) == [(node, "20250501_1_1_0")]
