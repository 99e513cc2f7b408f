"""docs/configuration.md's key tables, the file reader and the config dataclasses agree:
every key the reader accepts is documented and every documented key is accepted; a
documented default, written into a config file, reads as the dataclass's default and
as what the reader uses when the key is absent; every field carries a docstring.

The reader's accepted keys are taken from its own refusal of an unknown key (its
"known: ..." list), and defaults are compared after the reader normalises them, so
"15m" and 900.0, "128MB" and 128_000_000 are the same default.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from offloader import config as config_module
from offloader.config import Config
from offloader.configfile import parse_config
from offloader.errors import ConfigError

DOCS = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

# The smallest config the reader accepts: every required key, nothing else.
MINIMAL: dict[str, Any] = {
    "clickhouse": {},
    "postgres": {"dsn": "postgresql://u@h/db"},
    "iceberg": {"catalog": {"name": "cold"}},
    "tables": [{"source": "db.t", "target": "ns.t", "watermark": "ts", "keys": ["id"]}],
}
# What a section's table of keys is called in the file, and where its values land.
SECTIONS = {
    "offloader": lambda c: c.service,
    "clickhouse": lambda c: c.clickhouse,
    "postgres": lambda c: c.postgres,
    "tables": lambda c: c.tables[0],
    "maintenance": lambda c: c.maintenance,
    "retention": lambda c: c.retention,
    "views": lambda c: c.views,
}
# Config sections whose keys have no table in the docs: the catalog's properties are
# pyiceberg's, passed as they are (the docs say so under `[iceberg.catalog]`).
PASSED_THROUGH = {"iceberg"}
UNUSED = "zz_not_a_key"


def doc_rows(text: str) -> dict[str, list[tuple[str, str]]]:
    """Each `## `[section]`` heading's table as (key, default cell) rows; a row naming
    two keys (`host`, `port`) gives one row per key with its part of the default."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        heading = re.match(r"^## `\[\[?([a-z_.]+)\]\]?`", line)
        if heading:
            current = sections.setdefault(heading.group(1), [])
        elif line.startswith("## "):
            current = None
        elif current is not None and line.startswith("| `"):
            key_cell, default_cell = (cell.strip() for cell in line.split("|")[1:3])
            keys = re.findall(r"`([^`]+)`", key_cell)
            defaults = default_cell.split(", ") if len(keys) > 1 else [default_cell]
            assert len(defaults) == len(keys), f"docs: {line!r}: one default per key"
            current.extend(zip(keys, defaults, strict=True))
    return {name: rows for name, rows in sections.items() if rows}


DOC_ROWS = doc_rows(DOCS.read_text(encoding="utf-8"))


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, "tables.toml", {})


def with_key(section: str, key: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    if section == "tables":
        data["tables"][0][key] = value
    else:
        data.setdefault(section, {})[key] = value
    return data


def accepted_keys(section: str | None) -> set[str]:
    """The keys the reader accepts, from its own refusal of an unknown one."""
    data = copy.deepcopy(MINIMAL) if section is None else with_key(section, UNUSED, 1)
    if section is None:
        data[UNUSED] = 1
    with pytest.raises(ConfigError, match=f"{UNUSED} is not a known key") as raised:
        parse(data)
    return set(str(raised.value).split("; known: ", 1)[1].split(", "))


def field_docstrings(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass's fields (the string right after each)."""
    body = ast.parse(inspect.getsource(cls)).body[0]
    assert isinstance(body, ast.ClassDef)
    found: dict[str, str] = {}
    for node, after in zip(body.body, [*body.body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            doc = after.value if isinstance(after, ast.Expr) else None
            text = doc.value if isinstance(doc, ast.Constant) else None
            found[node.target.id] = text.strip() if isinstance(text, str) else ""
    return found


def test_every_config_section_with_keys_has_a_docs_table() -> None:
    assert set(DOC_ROWS) == accepted_keys(None) - PASSED_THROUGH
    assert "## `[iceberg.catalog]`" in DOCS.read_text(encoding="utf-8")


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_docs_table_lists_exactly_the_keys_the_reader_accepts(section: str) -> None:
    documented = [key for key, _ in DOC_ROWS[section]]
    accepted = accepted_keys(section)
    assert len(documented) == len(set(documented)), f"[{section}]: a key documented twice"
    assert sorted(accepted - set(documented)) == [], f"[{section}]: accepted, not documented"
    assert sorted(set(documented) - accepted) == [], f"[{section}]: documented, not accepted"
    fields = {f.name for f in dataclasses.fields(SECTIONS[section](parse(MINIMAL)))}
    assert accepted == fields, f"[{section}]: the reader's keys are not the dataclass's fields"


@pytest.mark.parametrize(
    ("section", "key", "cell"),
    [(section, key, cell) for section, rows in DOC_ROWS.items() for key, cell in rows],
)
def test_documented_default_is_the_default(section: str, key: str, cell: str) -> None:
    """A literal default (`"15m"`, `4`, `"128MB"`), written into the file, reads as the
    dataclass's default and as the value used when the key is absent. `—` marks a
    required key, `unset` and `empty` a default of none, `from ...` one taken from
    another setting."""
    pick = SECTIONS[section]
    absent = getattr(pick(parse(MINIMAL)), key)
    field = {f.name: f for f in dataclasses.fields(pick(parse(MINIMAL)))}[key]
    if cell == "—":
        data = copy.deepcopy(MINIMAL)
        del (data["tables"][0] if section == "tables" else data[section])[key]
        with pytest.raises(ConfigError, match=rf"\.{key} is required"):
            parse(data)
        return
    if cell.startswith("from "):
        # Taken from the setting it names (`[views] security`; `[clickhouse]`: the key of
        # the same name there), which must be one the reader accepts. Catalog properties
        # are pyiceberg's.
        named = re.match(r"^from `\[([a-z_.]+)\](?: ([a-z_]+))?`", cell)
        assert named, f"docs [{section}] {key}: {cell!r} names no `[section] key`"
        if named.group(1) not in PASSED_THROUGH | {"iceberg.catalog"}:
            assert (named.group(2) or key) in accepted_keys(named.group(1)), cell
        return
    if cell in ("unset", "empty"):
        assert absent in (None, "", ()), f"[{section}] {key}: documented {cell}, reads {absent!r}"
        assert field.default == absent, f"[{section}] {key}: dataclass default {field.default!r}"
        return
    literal = re.match(r"^`([^`]+)`", cell)
    assert literal, f"docs [{section}] {key}: default {cell!r} is not `value`, —, unset or from"
    value = tomllib.loads(f"v = {literal.group(1)}")["v"]
    written = getattr(pick(parse(with_key(section, key, value))), key)
    assert written == field.default, f"[{section}] {key}: docs {cell}, dataclass {field.default!r}"
    assert written == absent, f"[{section}] {key}: docs {cell}, the reader's default {absent!r}"


@pytest.mark.parametrize(
    "cls",
    [
        cls
        for cls in vars(config_module).values()
        if inspect.isclass(cls)
        and cls.__module__ == config_module.__name__
        and dataclasses.is_dataclass(cls)
        and cls.__name__.endswith("Config")
    ],
    ids=lambda cls: cls.__name__,
)
def test_every_config_field_has_a_docstring(cls: type) -> None:
    docs = field_docstrings(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert [name for name, doc in docs.items() if not doc] == [], f"{cls.__name__}: no docstring"
