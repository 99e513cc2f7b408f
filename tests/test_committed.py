"""What is committed (state.Committed) as a run carries it and the report shows it:
pure, no server."""

from __future__ import annotations

import dataclasses

import pytest

from offloader.report import TableReport
from offloader.state import Committed, TableState


def test_each_commit_follows_the_one_before_and_leaves_it_unchanged() -> None:
    start = TableState("cold.t", 2, (20, "b"), 40, None).committed
    assert start == Committed(2, (20, "b")) and start.watermark == [20, "b"]
    after = start.after([35, "a"])
    assert after == Committed(3, (35, "a")) and start == Committed(2, (20, "b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.seq = 4  # type: ignore[misc]
    assert Committed().watermark is None and Committed().after([1]) == Committed(1, (1,))


def test_the_report_shows_the_committed_position() -> None:
    report = TableReport("cold.t", "db.t")
    report.reached(Committed(3, (35, "a")))
    assert report.as_dict()["watermark"] == [35, "a"]
    report.reached(Committed())
    assert "watermark" not in report.as_dict()
