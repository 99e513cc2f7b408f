"""The product's documents speak of the product: its tracked text files (README, RESULTS,
code, tests, config, unit files) label figures and sections by date and commit, never by
when or how the work was organised (ordinals of working periods, tracker numbers,
who looked at it, who asked)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces so that this file does not match itself.
_ORDINALS = "first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|previous|next|last"
WORDS = re.compile(
    r"\b(?:" + _ORDINALS + r")\s+" + "ses" + r"sions?\b"
    r"|\b" + "iss" + r"ues?\b"
    r"|\b" + "rev" + r"iew(?:ed|s|er)?\b"
    r"|\b" + "C" + r"EO\b"
    r"|\(#\d+\)|\bTODO\b",
    re.IGNORECASE,
)
TEXT = (".py", ".md", ".toml", ".sh", ".yml", ".service", ".txt", "")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [ROOT / f for f in listed if Path(f).suffix in TEXT and (ROOT / f).is_file()]


def test_documents_speak_of_the_product_only() -> None:
    files = tracked_text_files()
    assert len(files) > 50, "git ls-files found too few files: is this a checkout?"
    found = []
    for path in files:
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if WORDS.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


def test_the_pattern_finds_what_it_names() -> None:
    for line in (
        "as measured in the ninth " + "session",
        "see " + "iss" + "ue 6",
        "after the final " + "rev" + "iew",
        "the target of (" + "#13)",
    ):
        assert WORDS.search(line), line
    assert not WORDS.search("a ClickHouse session over HTTP, closed by a task group")
