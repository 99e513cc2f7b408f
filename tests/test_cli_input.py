"""Every command's options given malformed values (days, durations, table names, log
levels, empty strings, inverted ranges): exit 2 with one line naming the option, never
a silent success on a no-op. No server: every case fails before anything is contacted."""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from offloader import cli
from tests.test_config import BASE, write

DAY_COMMANDS = [["verify"], ["repair", "cold.bronze_trades_binance"]]


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """The exit code and stderr of `offloader ARGV` (in this process)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def one_line_naming(err: str, option: str) -> bool:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return len(lines) == 1 and option in lines[0]


@pytest.fixture
def config(tmp_path: Path) -> str:
    return str(write(tmp_path, BASE))


@pytest.mark.parametrize("command", DAY_COMMANDS)
@pytest.mark.parametrize(
    "value", ["garbage", "yesterday", "2025-3-1", "03/01/2025", "2025-13-01", "20250301", ""]
)
@pytest.mark.parametrize("option", ["--since", "--until"])
def test_malformed_days_are_refused(
    capsys: pytest.CaptureFixture[str], config: str, command: list[str], value: str, option: str
) -> None:
    code, err = run(capsys, ["--config", config, *command, option, value])
    assert code == 2, err
    assert one_line_naming(err, option), err
    assert "use YYYY-MM-DD" in err


@pytest.mark.parametrize("command", DAY_COMMANDS)
@pytest.mark.parametrize(("since", "until"), [("2025-03-04", "2025-03-02"), ("2025-03-02",) * 2])
def test_inverted_or_empty_ranges_are_refused(
    capsys: pytest.CaptureFixture[str], config: str, command: list[str], since: str, until: str
) -> None:
    code, err = run(capsys, ["--config", config, *command, "--since", since, "--until", until])
    assert code == 2 and one_line_naming(err, "--since"), err
    assert f"must be before --until {until}" in err


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["expire", "--older-than", "7x"], "--older-than"),
        (["expire", "--older-than", ""], "--older-than"),
        (["expire", "--older-than", "-1d"], "--older-than"),
        (["--log-level", "loud", "status"], "--log-level"),
        (["status", "--log-level", ""], "--log-level"),
        (["--log-format", "xml", "status"], "--log-format"),
        (["verify", "no.such_table"], "no.such_table"),
        (["verify", ""], "''"),
        (["repair", ""], "''"),
        (["maintain", "nope"], "nope"),
        (["expire", "nope"], "nope"),
        (["reset", "nope"], "nope"),
        (["repair", "cold.bronze_trades_binance", "--force"], "--force"),
        (["once", "--jsn"], "--jsn"),
        (["retain", "nope"], "nope"),
        (["retain", ""], "''"),
        (["retain", "--dry-rn"], "--dry-rn"),
        (["retain", "--json", "cold.nope"], "cold.nope"),
    ],
)
def test_malformed_options_are_refused(
    capsys: pytest.CaptureFixture[str], config: str, argv: list[str], option: str
) -> None:
    code, err = run(capsys, ["--config", config, *argv])
    assert code == 2, err
    assert one_line_naming(err, option), err


def test_an_empty_config_path_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, ["--config", "", "status"])
    assert code == 2 and one_line_naming(err, "--config"), err


@pytest.mark.parametrize(
    "argv",
    [["grants", "--user", ""], ["grants", "--local-table", "market.bronze_trades_binance"]],
)
def test_grants_options_are_checked(
    capsys: pytest.CaptureFixture[str], config: str, argv: list[str]
) -> None:
    code, err = run(capsys, ["--config", config, *argv])
    assert code == 2 and one_line_naming(err, argv[1]), err


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=14) | st.from_regex(r"\d{4}-\d{2}-\d{2}", fullmatch=True))
def test_a_day_option_is_a_real_day_or_refused(text: str) -> None:
    """Any text given as --since: parsed to that exact day, or refused with exit 2 and
    one line naming the option (never a string compared as if it were a day)."""
    parser = cli.build_parser()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text) and _real(text):
        args = parser.parse_args(["verify", "--since", text])
        assert args.since == dt.date.fromisoformat(text) and args.since.isoformat() == text
    else:
        err = io.StringIO()
        with pytest.raises(SystemExit) as refused, contextlib.redirect_stderr(err):
            parser.parse_args(["verify", "--since", text])
        assert refused.value.code == 2
        assert one_line_naming(err.getvalue(), "--since"), err.getvalue()


def _real(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True
