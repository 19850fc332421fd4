"""Series completion as a pure function, and the tracker built on it."""

from __future__ import annotations

import pytest

from dicom_node.receive.assembly import SeriesTracker, series_complete
from image_model.fingerprint import instance_set_fingerprint


@pytest.mark.parametrize(
    ("last", "open_assocs", "quiet", "require_release", "now", "expected"),
    [
        (0.0, 0, 5.0, True, 5.0, True),  # released, quiet period exactly over
        (0.0, 0, 5.0, True, 4.99, False),  # released, still inside the quiet period
        (0.0, 1, 5.0, True, 100.0, False),  # association still open: never complete
        (
            0.0,
            1,
            5.0,
            False,
            5.0,
            True,
        ),  # release not required: quiet period alone decides
        (0.0, 1, 5.0, False, 1.0, False),
        (10.0, 0, 0.0, True, 10.0, True),  # zero quiet period: complete on release
        (10.0, 2, 0.0, True, 10.0, False),
    ],
)
def test_series_complete_table(
    last: float,
    open_assocs: int,
    quiet: float,
    require_release: bool,
    now: float,
    expected: bool,
) -> None:
    assert series_complete(last, open_assocs, quiet, require_release, now) is expected


def test_fingerprint_is_order_free_and_set_sensitive() -> None:
    assert instance_set_fingerprint(["1.2", "1.3"]) == instance_set_fingerprint(
        ["1.3", "1.2", "1.2"]
    )
    assert instance_set_fingerprint(["1.2", "1.3"]) != instance_set_fingerprint(
        ["1.2", "1.3", "1.4"]
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_tracker_waits_for_release_and_quiet_then_reruns_on_late_instance() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_seconds=5, require_release=True, clock=clock)
    assert tracker.instance_received("1.1", "1.1.1", "1.1.1.1", "a1", "PACS", "NODE")
    assert tracker.instance_received("1.1", "1.1.1", "1.1.1.2", "a1")
    # Duplicate counted once.
    assert not tracker.instance_received("1.1", "1.1.1", "1.1.1.2", "a1")
    clock.now += 60
    assert tracker.due() == []  # association a1 still open
    tracker.association_ended("a1")
    (due,) = tracker.due()
    assert due.sop_uids == {"1.1.1.1", "1.1.1.2"}
    assert due.calling_ae == "PACS"
    tracker.mark_processed(due.study_uid, due.series_uid, due.fingerprint, ("job-1",))
    assert tracker.due() == []  # processed: not due again

    # A late instance on a new association: due again after release + quiet, superseding job-1.
    tracker.instance_received("1.1", "1.1.1", "1.1.1.3", "a2")
    tracker.association_ended("a2")
    assert tracker.due() == []  # quiet period restarted by the arrival
    clock.now += 5
    (again,) = tracker.due()
    assert again.sop_uids == {"1.1.1.1", "1.1.1.2", "1.1.1.3"}
    assert again.fingerprint != due.fingerprint
    assert again.supersedes == ("job-1",)


def test_series_spanning_two_associations_waits_for_both() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_seconds=1, require_release=True, clock=clock)
    tracker.instance_received("1.1", "1.1.2", "1.1.2.1", "a1")
    tracker.instance_received("1.1", "1.1.2", "1.1.2.2", "a2")
    tracker.association_ended("a1")
    clock.now += 10
    assert tracker.due() == []
    tracker.association_ended("a2")
    assert len(tracker.due()) == 1


def test_settled_series_are_listed_before_their_quiet_period_ends() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_seconds=5, require_release=True, clock=clock)
    tracker.instance_received("1.1", "1.1.5", "1.1.5.1", "a1")
    tracker.instance_received("1.1", "1.1.5", "1.1.5.2", "a1")
    clock.now += 1
    assert tracker.settled(0.5) == []  # its association is still open
    tracker.association_ended("a1")
    assert tracker.settled(2) == []  # nothing for 1 s only
    (settled,) = tracker.settled(0.5)
    assert settled.sop_uids == {"1.1.5.1", "1.1.5.2"} and settled.arrivals == 2
    # A duplicate leaves the instance set as it was, but counts as an arrival.
    tracker.instance_received("1.1", "1.1.5", "1.1.5.2", "a2")
    tracker.association_ended("a2")
    clock.now += 1
    (again,) = tracker.settled(0.5)
    assert again.fingerprint == settled.fingerprint and again.arrivals == 3
    clock.now += 4
    assert tracker.settled(0.5) == []  # due now, no longer only settled
    (due,) = tracker.due()
    assert due.arrivals == 3
    tracker.mark_processed(due.study_uid, due.series_uid, due.fingerprint, ("job-1",))
    clock.now -= 4.5
    assert tracker.settled(0.5) == []  # processed


def test_restored_series_waits_for_its_quiet_period() -> None:
    clock = Clock()
    tracker = SeriesTracker(quiet_seconds=2, require_release=True, clock=clock)
    tracker.restore("1.1", "1.1.3", {"1.1.3.1"}, processed_fingerprint=None)
    tracker.restore(
        "1.1",
        "1.1.4",
        {"1.1.4.1"},
        processed_fingerprint=instance_set_fingerprint({"1.1.4.1"}),
    )
    assert tracker.due() == []
    clock.now += 2
    assert [d.series_uid for d in tracker.due()] == ["1.1.3"]


def test_fingerprint_follows_every_change_of_the_instance_set() -> None:
    """The tracker keeps each series' fingerprint between scheduler passes; an arrival or a
    retention removal must still show in the next one."""
    clock = Clock()
    tracker = SeriesTracker(quiet_seconds=0, require_release=False, clock=clock)
    for sop in ("1.1.4.1", "1.1.4.2"):
        tracker.instance_received("1.1", "1.1.4", sop, "a1")
    (first,) = tracker.due()
    assert first.fingerprint == instance_set_fingerprint(["1.1.4.1", "1.1.4.2"])
    tracker.mark_processed("1.1", "1.1.4", first.fingerprint, ("job-1",))
    tracker.instance_received("1.1", "1.1.4", "1.1.4.3", "a2")
    (second,) = tracker.due()
    assert second.fingerprint == instance_set_fingerprint(["1.1.4.1", "1.1.4.2", "1.1.4.3"])
    tracker.mark_processed("1.1", "1.1.4", second.fingerprint, ("job-2",))
    tracker.forget("1.1", "1.1.4", ["1.1.4.1"])
    (third,) = tracker.due()
    assert third.fingerprint == instance_set_fingerprint(["1.1.4.2", "1.1.4.3"])
