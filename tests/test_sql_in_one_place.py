"""ClickHouse SQL is built in one place: the pure builders of offloader/sql/.

Every other module of offloader/ runs queries by calling a builder. This test reads the
source (no server): a string literal outside offloader/sql/ that starts a ClickHouse
statement, or reads a system table, fails it, naming the file and line. offloader/dev/
(the development servers' setup) and offloader/postgres/ (PostgreSQL's SQL, in its
adapter) are not ClickHouse SQL of the product's.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "offloader"
OUTSIDE = ("sql", "dev", "postgres")
STATEMENT = re.compile(
    r"^\s*\(?\s*(SELECT|ALTER|CREATE|DROP|INSERT|SYSTEM|GRANT|REVOKE|DETACH|ATTACH|OPTIMIZE"
    r"|EXISTS|SHOW|RENAME|TRUNCATE|WITH|KILL|DESCRIBE)\s+\S"
)
SYSTEM_READ = re.compile(r"\bFROM\s+system\.|clusterAllReplicas\(|\bsystem\.\w+\s+WHERE\b")


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes (module, class and function docstrings are prose)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _texts(tree: ast.AST) -> list[tuple[int, str]]:
    """Each string literal's line and text; an f-string's text with its fields as `{}`."""
    prose = _docstrings(tree)
    inside = {
        id(part)
        for node in ast.walk(tree)
        if isinstance(node, ast.JoinedStr)
        for part in node.values
    }
    texts = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "{}" for part in node.values
            )
            texts.append((node.lineno, str(text)))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in prose
            and id(node) not in inside
        ):
            texts.append((node.lineno, node.value))
    return texts


def clickhouse_sql_outside(package: Path) -> list[str]:
    """Where a module outside offloader/sql/ writes ClickHouse SQL: 'file:line: text'."""
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.relative_to(package).parts[0] in OUTSIDE:
            continue
        for line, text in _texts(ast.parse(path.read_text(), str(path))):
            if STATEMENT.match(text) or SYSTEM_READ.search(text):
                found.append(f"{path.relative_to(package.parent)}:{line}: {text[:70]!r}")
    return found


def test_clickhouse_sql_is_built_in_offloader_sql_only() -> None:
    assert clickhouse_sql_outside(PACKAGE) == []


@pytest.mark.parametrize(
    "text",
    [
        'QUERY = "SELECT count() FROM t"',
        'q = f"ALTER TABLE {name} DETACH PARTITION {p}"',
        "q = f'SELECT x FROM {t} WHERE y'",
        'q = "count() FROM system.parts WHERE active"',
        'q = f"x FROM clusterAllReplicas({c}, system.tables)"',
        'q = ("SELECT a, b "\n     f"FROM {t}")',
    ],
)
def test_the_check_finds_sql(tmp_path: Path, text: str) -> None:
    assert len(_found(tmp_path, text)) == 1


@pytest.mark.parametrize(
    "text",
    [
        '"""SELECT ... is what this module reads from system.parts."""',
        'def f():\n    """ALTER TABLE ... DETACH, in prose."""',
        'GRANT = ("SELECT", "system.replicas")',
        'error = f"{table}: SELECT on system.replicas is not granted"',
    ],
)
def test_the_check_leaves_prose_privilege_names_and_sql_itself(tmp_path: Path, text: str) -> None:
    assert _found(tmp_path, text) == []


def _found(package: Path, text: str) -> list[str]:
    """What the check finds in a package of one module outside sql/ holding `text`, and
    one inside it holding a query."""
    for folder, source in (("ops", text), ("sql", 'Q = "SELECT 1 FROM system.one"')):
        (package / folder).mkdir()
        (package / folder / "m.py").write_text(source + "\n")
    return clickhouse_sql_outside(package)
