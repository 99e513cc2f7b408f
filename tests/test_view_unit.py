"""The view over both tiers without servers: its SQL (view.py), its config ([views] and
the per-table `view`), and a whole table run against the fake source and state store
(the view moves with every commit; an idle run whose view is current sends nothing)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from offloader.config import ViewsConfig
from offloader.configfile import load_config
from offloader.errors import ConfigError
from offloader.tiers.view import (
    ColdSide,
    ViewError,
    ViewSpec,
    cold_reader,
    column_pair,
    constant_literal,
    exact,
    view_ddl,
)
from offloader.types import parse_type
from tests.test_config import BASE, write

LOCAL = ColdSide("file:///w/cold/t", "file:///w/cold/t/metadata/00003-a.metadata.json", 3, (1,), 7)
S3 = ColdSide(
    "s3://bucket/wh/cold/t", "s3://bucket/wh/cold/t/metadata/00003-a.metadata.json", 3, (1,)
)


def test_cold_reader_pins_the_metadata_file() -> None:
    assert cold_reader(LOCAL, ViewsConfig(), "cold.t") == (
        "icebergLocal('/w/cold/t', SETTINGS iceberg_metadata_file_path = "
        "'metadata/00003-a.metadata.json')"
    )
    views = ViewsConfig(s3_collection="cold_s3", s3_endpoint="http://minio:9000")
    assert cold_reader(S3, views, "cold.t") == (
        "icebergS3(cold_s3, url = 'http://minio:9000/bucket/wh/cold/t/', SETTINGS "
        "iceberg_metadata_file_path = 'metadata/00003-a.metadata.json')"
    )


@pytest.mark.parametrize(
    ("cold", "views", "message"),
    [
        (S3, ViewsConfig(), "set [views] s3_collection to a ClickHouse named collection"),
        (S3, ViewsConfig(s3_collection="c"), "set [views] s3_endpoint"),
        (
            ColdSide("gs://b/t", "gs://b/t/metadata/m.json", 1, (1,)),
            ViewsConfig(),
            "only file:// and s3://",
        ),
        (
            ColdSide("file:///w/t", "file:///elsewhere/m.json", 1, (1,)),
            ViewsConfig(),
            "is not under",
        ),
    ],
)
def test_cold_reader_refusals_say_what_to_do(
    cold: ColdSide, views: ViewsConfig, message: str
) -> None:
    with pytest.raises(ViewError, match=r"cold\.t: ") as caught:
        cold_reader(cold, views, "cold.t")
    assert message in str(caught.value)


def test_column_pairs_cast_back_to_the_source_type() -> None:
    assert column_pair("id", "UInt64", "Int64", "error") == ("`id`", "CAST(`id`, 'UInt64') AS `id`")
    hot, cold = column_pair("ts", "DateTime64(9, 'UTC')", "Int64", "error")
    assert hot == "`ts`"
    assert cold == "CAST(reinterpret(`ts`, 'DateTime64(9)'), 'DateTime64(9, \\'UTC\\')') AS `ts`"
    _, cold = column_pair("a", "Array(Nullable(Time64(6)))", "Array(Nullable(Int64))", "error")
    assert "arrayMap(__v0 -> reinterpret(__v0, 'Decimal64(9)'), `a`)" in cold
    # A column Iceberg added as optional: older rows read the default, or NULL.
    _, cold = column_pair("venue", "LowCardinality(String)", "Nullable(String)", "error", "'x'")
    assert cold == (
        "CAST(ifNull(CAST(`venue`, 'Nullable(String)'), 'x'), 'LowCardinality(String)') AS `venue`"
    )
    _, cold = column_pair("n", "Int8", None, "error")
    assert cold == "CAST(defaultValueOfTypeName('Int8'), 'Int8') AS `n`"
    _, cold = column_pair("n", "Nullable(Int8)", None, "error")
    assert cold == "CAST(NULL, 'Nullable(Int8)') AS `n`"


@pytest.mark.parametrize(
    ("type_text", "is_exact"),
    [
        ("Variant(String, UInt64)", False),
        ("Map(String, Dynamic)", False),
        ("Array(Geometry)", False),
        ("Nullable(Nothing)", True),
        ("Array(Nothing)", True),
        ("Tuple(Array(Nothing))", False),
        ("Map(LowCardinality(String), Array(Enum8('a' = 1)))", True),
        ("QBit(BFloat16, 8)", True),
    ],
)
def test_which_families_have_a_way_back(type_text: str, is_exact: bool) -> None:
    assert exact(parse_type(type_text)) is is_exact


@pytest.mark.parametrize(
    "expression",
    [
        "'x'",
        "'it''s \\' ok'",
        "0",
        "-1.5e3",
        "0x1F",
        "NULL",
        "true",
        "-inf",
        "[]",
        "[1, 2]",
        "('a', [NULL, 3])",
        "['2025-01-01 00:00:00']",
    ],
)
def test_constant_literal_defaults_are_copied_into_the_view(expression: str) -> None:
    assert constant_literal(expression)


@pytest.mark.parametrize(
    "expression",
    [
        "now()",
        "toDate('2025-01-01')",
        "dictGet('db.d', 'venue', toUInt64(1))",
        "(SELECT max(x) FROM db.secrets)",
        "currentUser()",
        "other_column",
        "1 + 2",
        "'a' || 'b'",
        "'a' 'b'",
        "[1, 2",
        "(1,)",
        "'x'::String",
        "",
    ],
)
def test_expressions_are_not_constant_literals(expression: str) -> None:
    assert not constant_literal(expression)


def test_text_families_read_their_stored_form_from_both_tiers() -> None:
    hot, cold = column_pair("v", "Variant(String, UInt64)", "Nullable(String)", "error")
    assert hot == "CAST(if(isNull(`v`), NULL, toString(`v`)), 'Nullable(String)') AS `v`"
    assert cold == "CAST(`v`, 'Nullable(String)') AS `v`"


def _spec(position: tuple[object, ...] | None) -> ViewSpec:
    return ViewSpec(
        name="market.trades_all",
        relation="`market`.`trades`",
        source=("market", "trades"),
        columns=[("ts", "DateTime64(6, 'UTC')"), ("id", "UInt64"), ("side", "Enum8('b' = 1)")],
        order=[("ts", parse_type("DateTime64(6, 'UTC')")), ("id", parse_type("UInt64"))],
        position=position,
        seq=4,
    )


def test_view_ddl_splits_at_the_committed_position() -> None:
    reader = cold_reader(LOCAL, ViewsConfig(), "cold.t")
    cold_types = {"ts": "DateTime64(6, 'UTC')", "id": "Int64", "side": "String"}
    ddl = view_ddl(_spec(("2025-01-01 00:00:00.5", 9)), reader, cold_types)
    assert ddl.startswith(
        "CREATE OR REPLACE VIEW `market`.`trades_all` DEFINER = CURRENT_USER SQL SECURITY "
        "DEFINER AS\nSELECT `ts`, `id`, `side` FROM `market`.`trades` WHERE `ts` >= "
        "toDateTime64('2025-01-01 00:00:00.5', 6, 'UTC') AND (`ts` > "
    )
    assert "`id` > 9" in ddl
    # `ts` is read as the source's own type: bare; `id` (Int64 in Iceberg) and `side`
    # (String) are cast back to the source's UInt64 and Enum8.
    assert (
        "\nUNION ALL\nSELECT `ts`, CAST(`id`, 'UInt64') AS `id`, "
        "CAST(`side`, 'Enum8(\\'b\\' = 1)') AS `side`"
    ) in ddl
    assert f"FROM {reader}\nCOMMENT 'offloader: both tiers at commit 4, position" in ddl
    hot_only = view_ddl(_spec(None), None, {})
    assert "UNION" not in hot_only and "nothing offloaded yet" in hot_only


def test_signature_follows_what_the_sql_depends_on() -> None:
    views = ViewsConfig()
    a = _spec((1, 2)).signature(LOCAL, views)
    assert a == _spec((1, 2)).signature(LOCAL, views)
    assert a != _spec((1, 3)).signature(LOCAL, views)
    assert a != _spec((1, 2)).signature(S3, views)
    assert a != _spec((1, 2)).signature(LOCAL, ViewsConfig(s3_collection="c"))


def test_view_security_is_definer_unless_invoker_is_asked_for() -> None:
    reader = cold_reader(LOCAL, ViewsConfig(), "cold.t")
    definer = view_ddl(_spec((1, 2)), reader, {})
    assert "DEFINER = CURRENT_USER SQL SECURITY DEFINER AS\n" in definer
    invoker = view_ddl(dataclasses.replace(_spec((1, 2)), security="invoker"), reader, {})
    assert "`market`.`trades_all` SQL SECURITY INVOKER AS\n" in invoker
    assert "DEFINER" not in invoker
    # Switching replaces the view (its signature changes).
    views = ViewsConfig()
    signature = _spec((1, 2)).signature(LOCAL, views)
    other = dataclasses.replace(_spec((1, 2)), security="invoker").signature(LOCAL, views)
    assert other != signature


def test_view_security_config(tmp_path: Path) -> None:
    text = BASE.replace("[[tables]]", VIEWS + "\n[[tables]]")
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.views.security == "definer" and cfg.tables[0].view_security == "definer"
    invoker = text.replace("[views]\n", '[views]\nsecurity = "invoker"\n')
    cfg = load_config(write(tmp_path, invoker), env={})
    assert cfg.views.security == "invoker" and cfg.tables[0].view_security == "invoker"
    own = load_config(write(tmp_path, invoker + 'view_security = "definer"\n'), env={})
    assert own.tables[0].view_security == "definer"


VIEWS = """
[views]
enabled = true
s3_collection = "cold_s3"
"""


def test_views_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, BASE), env={})
    assert cfg.tables[0].view is None and not cfg.views.enabled
    text = BASE.replace("[[tables]]", VIEWS + "\n[[tables]]")
    cfg = load_config(write(tmp_path, text), env={})
    assert cfg.tables[0].view == "market.bronze_trades_binance_all"
    assert cfg.views.s3_collection == "cold_s3"
    for value, expected in (
        ('"trades_everything"', "market.trades_everything"),
        ('"other.v"', "other.v"),
        ("false", None),
    ):
        cfg = load_config(write(tmp_path, text + f"view = {value}\n"), env={})
        assert cfg.tables[0].view == expected
    s3 = BASE.replace('warehouse = "file:///tmp/warehouse"', 's3.endpoint = "http://s3:9000/"')
    assert load_config(write(tmp_path, s3), env={}).views.s3_endpoint == "http://s3:9000"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('view = "market.bronze_trades_binance"', "view must not be the source table itself"),
        ('view = "a.b.c"', "view must be true, false, 'database.view'"),
        ("view = 3", "view must be true, false"),
        ('[views]\nsuffix = "x.y"', "views.suffix must be a non-empty name part"),
        ('[views]\ns3_endpoint = "minio:9000"', "views.s3_endpoint must be an http:// or"),
        ('[views]\ns3_collection = "bad name"', "views.s3_collection must be a named"),
        ("[views]\nenabeld = true", "views.enabeld"),
        ('[views]\nsecurity = "caller"', "views.security must be 'definer' (the view reads"),
        ('view_security = "INVOKER"', "view_security must be 'definer' (the view reads"),
    ],
)
def test_views_config_mistakes(tmp_path: Path, edit: str, message: str) -> None:
    text = BASE + edit + "\n" if edit.startswith("view ") else BASE + "\n" + edit + "\n"
    with pytest.raises(ConfigError, match=r"tables\.toml: ") as caught:
        load_config(write(tmp_path, text), env={})
    assert message in str(caught.value), str(caught.value)


def test_two_tables_cannot_share_a_view(tmp_path: Path) -> None:
    second = BASE.split("[[tables]]")[1].replace("binance", "kraken")
    text = BASE + 'view = "v"\n\n[[tables]]' + second + 'view = "v"\n'
    with pytest.raises(ConfigError, match=r"tables\[1\].*view is also the view of tables\[0\]"):
        load_config(write(tmp_path, text), env={})
