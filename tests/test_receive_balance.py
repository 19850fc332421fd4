"""The receivers' load board (balance.py): which receiver accepts a new connection first.

Boards are real files mapped by several :class:`LoadBoard` objects, as the node and its
receiver processes map them; the node-level effect (idle connections spread over every receiver
do not hold up a legitimate peer) is in test_hostile_connections.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.receive.balance import (
    ABSENT,
    ACCEPT_DELAY_MAX,
    ACCEPT_DELAY_PER_CONNECTION,
    LoadBoard,
    create_board,
)


def _boards(tmp_path: Path, count: int) -> tuple[LoadBoard, list[LoadBoard]]:
    path = tmp_path / "loads"
    create_board(path, count)
    return LoadBoard(path), [LoadBoard(path, i) for i in range(count)]


def test_a_fresh_board_waits_for_nobody(tmp_path: Path) -> None:
    node, (a, *_) = _boards(tmp_path, 3)
    assert node.loads() == [ABSENT] * 3
    # Receivers not yet accepting are never waited for, whatever this one holds.
    assert a.before_accept(50) == 0.0
    assert node.loads() == [50, ABSENT, ABSENT]


def test_the_busier_receiver_waits_by_the_difference(tmp_path: Path) -> None:
    _, (a, b) = _boards(tmp_path, 2)
    b.publish(1)
    assert a.before_accept(3) == pytest.approx(2 * ACCEPT_DELAY_PER_CONNECTION)
    assert b.before_accept(1) == 0.0  # the less busy one accepts at once
    b.publish(0)
    assert a.before_accept(40) == ACCEPT_DELAY_MAX


def test_equally_loaded_receivers_do_not_wait(tmp_path: Path) -> None:
    """Two hundred idle connections spread over both receivers: neither waits (each used to
    wait 0.1 s per accept, keeping a legitimate peer in the listen queue for ~10 s)."""
    _, (a, b) = _boards(tmp_path, 2)
    a.publish(100)
    assert b.before_accept(100) == 0.0
    assert a.before_accept(101) == pytest.approx(ACCEPT_DELAY_PER_CONNECTION)
    assert b.before_accept(99) == 0.0


def test_a_dead_receiver_is_not_waited_for(tmp_path: Path) -> None:
    node, (a, b) = _boards(tmp_path, 2)
    b.publish(0)
    assert a.before_accept(5) > 0
    node.mark_absent(1)
    assert a.before_accept(5) == 0.0
    assert node.loads() == [5, ABSENT]


def test_negative_loads_are_published_as_zero(tmp_path: Path) -> None:
    node, (a,) = _boards(tmp_path, 1)
    a.publish(-3)
    assert node.loads() == [0]


def test_a_malformed_board_or_index_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "loads"
    path.write_bytes(b"\x00" * 6)
    with pytest.raises(ValueError, match="malformed"):
        LoadBoard(path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="malformed"):
        LoadBoard(path)
    create_board(path, 2)
    with pytest.raises(ValueError, match="not on a board of 2"):
        LoadBoard(path, 2)


def test_the_busier_receiver_waits_until_the_other_took_the_connection(tmp_path: Path) -> None:
    """The wait is re-checked: it ends as soon as the connection is gone, or the other
    receiver's load rose to this one's, and never exceeds the maximum in all."""
    _, (a, b) = _boards(tmp_path, 2)
    b.publish(1)
    step = 2 * ACCEPT_DELAY_PER_CONNECTION
    # Nothing changes (the other receiver is slow to run): waits the maximum, in steps.
    assert a.wait_turn(lambda: 3, lambda: True) == pytest.approx(ACCEPT_DELAY_MAX)
    # The other took the connection while this one slept: one step.
    answers = iter([True, False])
    assert a.wait_turn(lambda: 3, lambda: next(answers)) == pytest.approx(step)

    # The other accepted and published its new load: one step.
    def other_accepts() -> bool:  # asked before the sleep: still waiting, and then taken
        still_waiting = b.loads()[1] == 1
        b.publish(3)
        return still_waiting

    assert a.wait_turn(lambda: 3, other_accepts) == pytest.approx(step)
    # Not the busier one: no wait at all, the connection is not even looked at.
    assert b.wait_turn(lambda: 2, lambda: pytest.fail("not asked")) == 0.0
