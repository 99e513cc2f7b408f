"""`offloader --version` names the version of the installed distribution, which is the
one pyproject.toml declares (CI runs it on the wheel installed in a fresh venv)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from offloader.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def test_version_is_pyprojects(capsys: pytest.CaptureFixture[str]) -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"offloader {declared}"
