"""Several receiver processes on one port (``node.receivers: 2``), against an in-process node and
real peers: duplicates sent at once are stored once, the association limits hold across the
receivers, a receiver killed mid-association loses nothing it acknowledged and is started again,
and the series is handed on once its associations ended (TLS with receivers:
test_tls_listener.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from config.loader import load_config
from config.schema import LimitsConfig, NodeConfig
from dicom_node.app.node import Node
from dicom_node.receive.ledger import OverLimit, SharedLedger, create_table
from dicom_node.receive.processes import receiver_count
from testkit import dicom_wire as wire
from tests.receive_helpers import (
    DCMTK_BIN,
    counting_runner,
    dcmtk_env,
    free_port,
    make_ct_series,
    node_config,
    wait_for,
)

ECHO_CONTEXT = [(wire.VERIFICATION, [ImplicitVRLittleEndian])]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("receivers")
    config = node_config(tmp / "var", free_port(), receivers=2, series_quiet_seconds=0.5, limits={
        "max_associations": 6, "max_associations_per_peer": 4, "associate_timeout_seconds": 2.0,
    })
    with Node(config, runner=counting_runner, use_default_outbox=False) as running:
        assert running.receivers is not None and len(running.receivers.pids()) == 2
        yield running


def _series_jobs(node: Node, series_uid: str) -> list[Any]:
    return [r for r in node.jobs.all() if r.series_uid == series_uid]


def _spooled(node: Node, series_uid: str) -> set[str]:
    return {p.stem for p in node.spool.root.glob(f"*/{series_uid}/*.dcm")}


def test_duplicates_sent_at_once_are_stored_once(node: Node, tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "in", 12)
    ds = pydicom.dcmread(files[0])
    # Four storescu at once, each the whole series: four associations over both receivers.
    senders = [
        subprocess.Popen([str(DCMTK_BIN / "storescu"), "-aec", "MMEDNODE", "127.0.0.1", str(node.port),
                          *map(str, files)], env=dcmtk_env(), stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    for sender in senders:
        _, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
    sops = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert _spooled(node, ds.SeriesInstanceUID) == sops
    jobs = wait_for(lambda: _series_jobs(node, ds.SeriesInstanceUID), 30)
    assert len(jobs) == 1 and jobs[0].instance_count == len(sops)


def test_association_limits_hold_across_receivers(node: Node) -> None:
    pool = node.receivers
    assert pool is not None
    held: list[wire.WireClient] = []
    try:
        for _ in range(4):
            client = wire.WireClient(node.port)
            assert client.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
            held.append(client)
        with wire.WireClient(node.port) as fifth:  # per peer, whichever receiver accepts it
            assert fifth.associate(wire.associate_rq(ECHO_CONTEXT)).reject == (2, 3, 2)
        for _ in range(2):
            client = wire.WireClient(node.port, source="127.0.0.2")
            assert client.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
            held.append(client)
        for _ in range(3):  # in total: three tries, whichever receivers take them
            with wire.WireClient(node.port, source="127.0.0.3") as over:
                assert over.associate(wire.associate_rq(ECHO_CONTEXT)).reject == (2, 3, 2)
        assert sum(pool.open_associations().values()) == 6
    finally:
        for client in held:
            client.close()
    assert wait_for(lambda: sum(pool.open_associations().values()) == 0, 10)
    counts = node.refusals()  # told by the receivers to the node
    assert counts["too_many_per_peer"] >= 1 and counts["too_many_associations"] >= 3


def test_associations_spread_over_the_receivers(node: Node) -> None:
    """Four associations opened one after the other: two per receiver (the busier one lets the
    other accept first, balance.py), whichever wins each race."""
    pool = node.receivers
    assert pool is not None
    held: list[wire.WireClient] = []
    try:
        for source in ("127.0.0.1", "127.0.0.1", "127.0.0.2", "127.0.0.2"):
            client = wire.WireClient(node.port, source=source)
            held.append(client)
            assert client.associate(wire.associate_rq(ECHO_CONTEXT)).pdu_type == wire.A_ASSOCIATE_AC
        assert sorted(pool.open_associations().values()) == [2, 2], pool.open_associations()
    finally:
        for client in held:
            client.close()
    assert wait_for(lambda: sum(pool.open_associations().values()) == 0, 10)


def test_killed_receiver_loses_nothing_acknowledged(node: Node, tmp_path: Path) -> None:
    pool = node.receivers
    assert pool is not None
    files = make_ct_series(tmp_path / "in", 40)
    datasets = [pydicom.dcmread(f) for f in files]
    series_uid = datasets[0].SeriesInstanceUID
    ae = AE(ae_title="KILLTEST")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="MMEDNODE")
    assert assoc.is_established
    holder = wait_for(lambda: list(pool.open_associations()), 10)[0]
    acknowledged: list[str] = []
    killed = False
    for ds in datasets:
        if len(acknowledged) == 10 and not killed:
            os.kill(holder, signal.SIGKILL)  # between two C-STOREs of its association
            killed = True
            wait_for(lambda: not assoc.is_established, 10)  # the SCU sees its connection closed
            wire.echo(node.port)  # the other receiver accepts meanwhile
        if not assoc.is_established:
            break
        answer = assoc.send_c_store(ds)
        if answer and answer.Status == 0:
            acknowledged.append(ds.SOPInstanceUID)
    assoc.abort()
    assert killed and 10 <= len(acknowledged) < len(datasets)
    assert set(acknowledged) <= _spooled(node, series_uid)
    tracked = next(s for s in node.tracker.snapshot() if s.series_uid == series_uid)
    assert set(acknowledged) <= tracked.instances
    # Started again; the node kept accepting meanwhile (the other receiver, the socket's queue).
    assert wait_for(lambda: holder not in pool.pids() and len(pool.pids()) == 2, 30)
    wire.echo(node.port)
    assert pool.restarts >= 1
    scraped = node.metrics.exposition().decode()
    assert "mmed_receiver_processes 2.0" in scraped and "mmed_receiver_restarts_total 1.0" in scraped
    # The sender sends the whole series again: every instance stored once, the series handed on.
    ae2 = AE(ae_title="KILLTEST")
    ae2.add_requested_context(CTImageStorage)
    again = ae2.associate("127.0.0.1", node.port, ae_title="MMEDNODE")
    assert again.is_established
    statuses = [again.send_c_store(ds).Status for ds in datasets]
    again.release()
    assert statuses == [0] * len(datasets)
    assert _spooled(node, series_uid) == {ds.SOPInstanceUID for ds in datasets}
    # (A job may have started on the acknowledged part meanwhile: the whole set supersedes it.)
    assert wait_for(lambda: [j for j in _series_jobs(node, series_uid) if j.instance_count == len(datasets)], 30)


def test_shared_ledger_counts_every_process(tmp_path: Path) -> None:
    """The slot table itself: two owners' claims count together; a dead owner's slots are freed."""
    limits = LimitsConfig(max_associations=3, max_associations_per_peer=2)
    path = tmp_path / "slots"
    create_table(path, limits)
    first, second = SharedLedger(path, limits, owner=101), SharedLedger(path, limits, owner=202)
    assert isinstance(first.claim("10.0.0.1"), int) and isinstance(second.claim("10.0.0.1"), int)
    refused = first.claim("10.0.0.1")
    assert isinstance(refused, OverLimit) and refused.reason == "too_many_per_peer"
    ticket = second.claim("10.0.0.2")
    assert isinstance(ticket, int)
    refused = first.claim("10.0.0.3")
    assert isinstance(refused, OverLimit) and refused.reason == "too_many_associations"
    second.cancel(ticket)
    assert first.open_by_owner() == {101: 1, 202: 1}
    assert first.release_owner(202) == 1
    assert isinstance(first.claim("10.0.0.3"), int)
    first.close()
    second.close()


@pytest.mark.parametrize(("cores", "expected"), [(1, 2), (2, 2), (3, 3), (16, 4)])
def test_auto_is_one_receiver_per_core_from_two_to_four(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                         expected: int) -> None:
    """The default: never receiving in the node's process beside its jobs, never more than four."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert load_config().node.receivers == "auto"
    assert receiver_count(NodeConfig(receivers="auto")) == expected
    assert receiver_count(NodeConfig(receivers=1)) == 1
    assert receiver_count(NodeConfig(receivers=6)) == 6
