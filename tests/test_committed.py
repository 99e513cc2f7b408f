"""What is committed (state.Committed) as a run carries it, the report shows it and the
view over both tiers is kept at it (view.upkeep): pure, no server."""

from __future__ import annotations

import dataclasses

import pytest

from offloader.config import TableConfig, ViewsConfig
from offloader.report import TableReport
from offloader.state import Committed, TableState, ViewState
from offloader.tiers import view
from offloader.types import parse_type

METADATA = "file:///warehouse/cold/t/metadata/00002-abc.metadata.json"


def recorded(seq: int = 2, name: str = "db.t_all", **kw: object) -> ViewState:
    args: dict[str, object] = dict(
        target="cold.t", name=name, seq=seq, position=(20, "b"), metadata=METADATA
    )
    args.update(kw)
    return ViewState(**args)  # type: ignore[arg-type]


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


def test_a_view_at_the_committed_seq_keeps_its_recorded_pin() -> None:
    upkeep = view.upkeep("db.t_all", recorded(seq=2), Committed(2, (20, "b")))
    assert upkeep.keep and upkeep.drop is None and not upkeep.read_pin
    assert upkeep.pin == view.ColdSide(
        "file:///warehouse/cold/t", METADATA, 2, (20, "b"), snapshot_id=None
    )


@pytest.mark.parametrize(
    "known",
    [
        None,  # a first run, or a crash before the first replacement
        recorded(seq=1),  # a commit after the view's (a repair, a failed replacement)
        recorded(seq=2, error="view database missing"),  # its last replacement failed
        recorded(seq=2, metadata=None),  # recorded without a pin (nothing offloaded then)
    ],
)
def test_a_view_behind_the_committed_seq_is_pinned_to_icebergs_own(
    known: ViewState | None,
) -> None:
    upkeep = view.upkeep("db.t_all", known, Committed(2, (20, "b")))
    assert upkeep.keep and upkeep.drop is None
    assert upkeep.read_pin and upkeep.pin is None


def test_nothing_committed_is_a_view_of_the_hot_table_alone() -> None:
    upkeep = view.upkeep("db.t_all", recorded(seq=0, position=None, metadata=None), Committed())
    assert upkeep.keep and not upkeep.read_pin and upkeep.pin is None


def test_a_view_turned_off_or_renamed_is_dropped() -> None:
    off = view.upkeep(None, recorded(), Committed(2, (20, "b")))
    assert off.drop == "db.t_all" and not off.keep and off.recorded is None
    renamed = view.upkeep("db.t_both", recorded(), Committed(2, (20, "b")))
    assert renamed.drop == "db.t_all" and renamed.keep and renamed.recorded is None
    assert renamed.read_pin  # the new name has no pin of its own yet
    assert view.upkeep(None, None, Committed(2, (20, "b"))) == view.Upkeep(
        None, False, None, False, None
    )


def test_only_the_view_as_last_replaced_at_the_same_pin_is_current() -> None:
    table = TableConfig(
        source="db.t", target="cold.t", watermark="ts", keys=("k",), view="db.t_all"
    )
    views = ViewsConfig()
    spec = view.ViewSpec(
        name="db.t_all",
        relation="db.t",
        source=("db", "t"),
        columns=[("ts", "UInt32"), ("k", "String")],
        order=[("ts", parse_type("UInt32")), ("k", parse_type("String"))],
        position=(20, "b"),
        seq=2,
        uint64=table.uint64,
        security=table.view_security,
    )
    pin = view.ColdSide("file:///warehouse/cold/t", METADATA, 2, (20, "b"))
    signed = recorded(signature=spec.signature(pin, views))
    assert view.upkeep("db.t_all", signed, Committed(2, (20, "b"))).current(spec, pin, views)
    later = dataclasses.replace(spec, position=(35, "a"), seq=3)
    assert not view.upkeep("db.t_all", signed, Committed(3, (35, "a"))).current(later, pin, views)
    failed = dataclasses.replace(signed, error="view database missing")
    assert not view.upkeep("db.t_all", failed, Committed(2, (20, "b"))).current(spec, pin, views)
    assert not view.upkeep("db.t_other", signed, Committed(2, (20, "b"))).current(spec, pin, views)
