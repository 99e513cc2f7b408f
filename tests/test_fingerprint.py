"""The parts fingerprint (sql.system.fingerprints_query) against a real ClickHouse: merges leave
it as it was, in engines whose merges keep rows and in those that fold them; every kind
of change to the data a table holds moves it. The cycle's survey and a table's own
subquery compute the same value."""

from __future__ import annotations

import pytest

from offloader.sql.system import fingerprints_query, parts_fingerprint
from tests.helpers import Env

pytestmark = pytest.mark.integration

ENGINES = ["MergeTree", "ReplacingMergeTree", "CollapsingMergeTree(sign)"]
SYNC = "SETTINGS mutations_sync = 2"


def create(env: Env, name: str, engine: str) -> None:
    env.ch(
        f"CREATE TABLE {env.ch_database}.{name} (d Date, k UInt64, v String, sign Int8 DEFAULT 1)"
        f" ENGINE = {engine} PARTITION BY toYYYYMM(d) ORDER BY k"
    )


def insert(env: Env, name: str, values: str) -> None:
    env.ch(f"INSERT INTO {env.ch_database}.{name} (d, k, v, sign) VALUES {values}")


@pytest.fixture(params=ENGINES)
def table(request: pytest.FixtureRequest, env_one: Env) -> str:
    """`t` in env_one's database with the engine of the parameter: two monthly
    partitions, three parts (so there is something to merge)."""
    create(env_one, "t", request.param)
    insert(env_one, "t", "('2026-01-01', 1, 'a', 1), ('2026-02-01', 2, 'b', 1)")
    insert(env_one, "t", "('2026-01-05', 3, 'c', 1), ('2026-02-05', 4, 'd', 1)")
    insert(env_one, "t", "('2026-01-09', 5, 'e', 1)")
    return str(request.param)


def fingerprint(env: Env, name: str) -> str:
    """The table's fingerprint as a run reads it, checked equal to the survey's."""
    [(own,)] = env.ch(f"SELECT {parts_fingerprint(env.ch_database, name)}")
    surveyed = env.ch(fingerprints_query([(env.ch_database, name)]))
    assert [(env.ch_database, name, own)] == surveyed or (own == "" and surveyed == [])
    return str(own)


def rows(env: Env, name: str) -> int:
    """The rows the table's active parts hold (what a folding merge reduces)."""
    where = f"database = '{env.ch_database}' AND table = '{name}' AND active"
    [(n,)] = env.ch(f"SELECT sum(rows) FROM system.parts WHERE {where}")
    return int(n)


def test_a_merge_leaves_the_fingerprint_unchanged(env_one: Env, table: str) -> None:
    """OPTIMIZE FINAL after each of: the initial inserts, an insert that replaces a key
    (ReplacingMergeTree) or cancels a row (CollapsingMergeTree), a mutation, and an insert
    after that mutation (its part merges with mutated ones)."""
    db = f"{env_one.ch_database}.t"
    steps = [
        "",
        f"INSERT INTO {db} VALUES ('2026-01-01', 1, 'a', -1)",
        f"ALTER TABLE {db} UPDATE v = 'u' WHERE k = 3 {SYNC}",
        f"INSERT INTO {db} VALUES ('2026-01-04', 6, 'f', 1)",
    ]
    folded = 0
    for step in steps:
        if step:
            env_one.ch(step)
        before, held = fingerprint(env_one, "t"), rows(env_one, "t")
        env_one.ch(f"OPTIMIZE TABLE {db} FINAL")
        folded += held - rows(env_one, "t")
        assert fingerprint(env_one, "t") == before, f"{table}: a merge after {step!r} moved it"
    # Folding engines' merges did remove rows (key 1's replaced or cancelled row).
    assert (folded > 0) == (table != "MergeTree"), folded


# Each change: statements that prepare it (the fingerprint is read after them), then
# the change itself.
CHANGES: dict[str, tuple[list[str], list[str]]] = {
    "insert": ([], ["INSERT INTO {t} VALUES ('2026-01-02', 7, 'g', 1)"]),
    "alter update": ([], ["ALTER TABLE {t} UPDATE v = 'u' WHERE k = 3 " + SYNC]),
    "alter delete": ([], ["ALTER TABLE {t} DELETE WHERE k = 3 " + SYNC]),
    "lightweight delete": (
        [],
        ["DELETE FROM {t} WHERE k = 3 SETTINGS lightweight_deletes_sync = 2"],
    ),
    "drop partition": ([], ["ALTER TABLE {t} DROP PARTITION 202602"]),
    "detach partition": ([], ["ALTER TABLE {t} DETACH PARTITION 202602"]),
    "attach partition": (
        ["ALTER TABLE {t} DETACH PARTITION 202602"],
        ["ALTER TABLE {t} ATTACH PARTITION 202602"],
    ),
    "replace partition": (
        ["INSERT INTO {o} VALUES ('2026-01-07', 8, 'h', 1)"],
        ["ALTER TABLE {t} REPLACE PARTITION 202601 FROM {o}"],
    ),
    "move partition": ([], ["ALTER TABLE {t} MOVE PARTITION 202602 TO TABLE {o}"]),
    "recreation": (
        [],
        [
            "DROP TABLE {t} SYNC",
            "CREATE TABLE {t} AS {o}",
            "INSERT INTO {t} VALUES ('2026-01-01', 1, 'new', 1), ('2026-02-01', 2, 'b', 1)",
            "INSERT INTO {t} VALUES ('2026-01-05', 3, 'c', 1), ('2026-02-05', 4, 'd', 1)",
            "INSERT INTO {t} VALUES ('2026-01-09', 5, 'e', 1)",
            "OPTIMIZE TABLE {t} FINAL",
        ],
    ),
    "materialize ttl": (
        [
            "ALTER TABLE {t} MODIFY TTL d + INTERVAL 1 DAY DELETE WHERE k = 3 "
            "SETTINGS materialize_ttl_after_modify = 0"
        ],
        ["ALTER TABLE {t} MATERIALIZE TTL " + SYNC],
    ),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_every_change_of_the_data_moves_the_fingerprint(
    env_one: Env, table: str, change: str
) -> None:
    """Each change of what the table holds moves its fingerprint, merged or not: merge
    the table, prepare the change, read it; change, and read it again before and after
    a merge. (A TTL's rows are removed by its MATERIALIZE TTL, not the merge before.)"""
    create(env_one, "o", table)
    db = env_one.ch_database
    names = {"t": f"{db}.t", "o": f"{db}.o"}
    prepare, statements = CHANGES[change]
    env_one.ch(f"OPTIMIZE TABLE {db}.t FINAL")
    for sql in prepare:
        env_one.ch(sql.format(**names))
    before, held = fingerprint(env_one, "t"), contents(env_one)
    for sql in statements:
        env_one.ch(sql.format(**names))
    assert contents(env_one) != held, f"{table}: {change} changed nothing"  # a real change
    assert fingerprint(env_one, "t") != before, f"{table}: {change} left the fingerprint"
    env_one.ch(f"OPTIMIZE TABLE {db}.t FINAL")
    assert fingerprint(env_one, "t") not in ("", before), f"{table}: merged after {change}"


def contents(env: Env) -> tuple[int, int]:
    """The rows of `t` and a sum of their hashes."""
    [(count, hashed)] = env.ch(
        f"SELECT count(), sum(cityHash64(d, k, v, sign)) FROM {env.ch_database}.t"
    )
    return int(count), int(hashed)


def _crafted(env: Env, parts: list[tuple[int, int, int, int]]) -> str:
    """The fingerprint the builder computes, on the real server, of one MergeTree
    partition whose active parts are `parts`: (min_block, max_block, data_version,
    rows) each — states a test cannot stop a real mutation in."""
    rows = " UNION ALL ".join(
        f"SELECT 1 AS active, 'db' AS database, 't' AS table, '202601' AS partition_id, "
        f"toInt64({lo}) AS min_block_number, toInt64({hi}) AS max_block_number, "
        f"toUInt64({version}) AS data_version, toUInt64({n}) AS rows, "
        "'MergeTree' AS engine, '/data/store/0b6e0000-0000-0000-0000-000000000000/p/' AS path"
        for lo, hi, version, n in parts
    )
    query = fingerprints_query([("db", "t")]).replace("system.parts", f"({rows})")
    [(_, _, found)] = env.ch(query)
    return str(found)


def test_a_mutation_finishing_its_last_part_moves_the_fingerprint(env_one: Env) -> None:
    """A mutation (version 9) rewrites a partition's parts one by one. The state after
    the first part is rewritten, the state once every part is, and a merge of the
    rewritten parts: the last part's rewrite moves the fingerprint (an audit that agreed
    in between with a repair of the half-mutated day is repeated), the merge does not."""
    before = _crafted(env_one, [(1, 1, 1, 10), (2, 2, 2, 10)])
    first_done = _crafted(env_one, [(1, 1, 9, 10), (2, 2, 2, 10)])
    all_done = _crafted(env_one, [(1, 1, 9, 10), (2, 2, 9, 10)])
    merged = _crafted(env_one, [(1, 2, 9, 20)])
    assert len({before, first_done, all_done}) == 3
    assert merged == all_done
