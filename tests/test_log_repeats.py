"""Repeated identical errors are logged in full once, then counted (dicom_node/log_repeats.py)."""

from __future__ import annotations

import logging

import pytest

from dicom_node.log_repeats import RepeatedLog


def test_a_repeating_error_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.repeats")
    clock = [0.0]
    repeated = RepeatedLog(log, interval=60, clock=lambda: clock[0])
    full = OSError(28, "No space left on device")
    with caplog.at_level(logging.INFO, logger="test.repeats"):
        for _ in range(120):  # a minute of failures every half second
            repeated.error("scheduler pass failed", full)
            clock[0] += 0.5
        repeated.error("scheduler pass failed", full)  # past the interval: a summary
        repeated.error("another failure", ValueError("x"))  # a new error: in full again
        repeated.clear("it works again")
    records = caplog.records
    assert [bool(r.exc_info) for r in records] == [True, False, True, False]
    assert records[1].getMessage().startswith("scheduler pass failed (again 120 time(s) in the last 60 s; 121 in all)")
    assert "[Errno 28] No space left on device" in records[1].getMessage()
    assert records[2].getMessage() == "another failure" and records[3].getMessage() == "it works again"
    assert len(records) == 4
