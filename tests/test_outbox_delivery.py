"""The outbox against real peers: dcmtk storescp as the PACS, a hung TCP peer, a killed node."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.schema import AppConfig
from dicom_node.deliver.outbox import (
    Delivery,
    DeliveryState,
    Outbox,
    backoff_seconds,
    load_delivery,
    write_delivery,
)
from dicom_node.deliver.sender import send_files
from tests.outbox_helpers import (
    HungPeer,
    StoreSCP,
    free_port,
    payload,
    sop_instance_uid,
    wait_for,
)

#: Short timeouts keep a hung peer from holding a test for long (the real sender, parametrised).
SENDER = functools.partial(send_files, timeout=3.0)


def make_config(ports: dict[str, int], window: float = 60.0, **dest_extra: dict[str, Any]) -> AppConfig:
    return AppConfig.model_validate({
        "node": {"ae_title": "MMEDNODE"},
        "destinations": {
            name: {"ae_title": "PACS", "host": "127.0.0.1", "port": port, **dest_extra.get(name, {})}
            for name, port in ports.items()
        },
        "routes": [],
        "outbox": {"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5,
                   "retry_window_seconds": window},
    })


@pytest.fixture
def peers() -> Iterator[list[Any]]:
    """Everything a test starts; stopped (by PID / socket) afterwards."""
    started: list[Any] = []
    yield started
    for peer in reversed(started):
        if isinstance(peer, (Outbox, StoreSCP)):
            peer.stop()
        elif isinstance(peer, HungPeer):
            peer.close()


def state_of(outbox: Outbox, delivery_id: str) -> Delivery:
    return outbox.get(delivery_id)


def all_done(outbox: Outbox, *delivery_ids: str, timeout: float = 15) -> bool:
    return wait_for(
        lambda: all(outbox.get(d).state is DeliveryState.DONE for d in delivery_ids), timeout)


def test_delivers_ct_to_running_pacs(tmp_path: Path, peers: list[Any]) -> None:
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port).start()
    peers.append(pacs)
    files = payload(tmp_path / "job1", "CT_small.dcm", "MR_small.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"pacs": port}), sender=SENDER)
    (did,) = outbox.enqueue("job1", files, ["pacs"])
    record = outbox.get(did)
    assert record.state is DeliveryState.PENDING and record.files == [str(f) for f in files]
    assert (tmp_path / "var" / "outbox" / f"{did}.json").is_file()

    outbox.start()
    peers.append(outbox)
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.DONE, 15)
    record = outbox.get(did)
    assert record.attempts == 1 and record.last_error is None
    assert sorted(record.sent) == sorted(str(f) for f in files)
    assert set(pacs.received()) == {sop_instance_uid(f) for f in files}


def test_destination_down_then_started_is_delivered(tmp_path: Path, peers: list[Any]) -> None:
    port = free_port()
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"pacs": port}), sender=SENDER)
    (did,) = outbox.enqueue("job-down", [ct], ["pacs"])
    outbox.start()
    peers.append(outbox)
    assert wait_for(lambda: state_of(outbox, did).attempts >= 2, 10)
    record = outbox.get(did)
    assert record.state in (DeliveryState.PENDING, DeliveryState.SENDING)
    assert record.last_error and "cannot connect" in record.last_error
    assert record.next_attempt_at is not None or record.state is DeliveryState.SENDING

    pacs = StoreSCP(tmp_path / "pacs", port).start()
    peers.append(pacs)
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.DONE, 15)
    assert set(pacs.received()) == {sop_instance_uid(ct)}
    assert outbox.get(did).last_error is None


def test_hung_destination_does_not_delay_another(tmp_path: Path, peers: list[Any]) -> None:
    hung_port, pacs_port = free_port(), free_port()
    peers.append(HungPeer(hung_port))  # accepts TCP, never answers the A-ASSOCIATE-RQ
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    peers.append(pacs)
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"hung": hung_port, "pacs": pacs_port}),
                    sender=SENDER)
    hung_id, pacs_id = outbox.enqueue("job2", [ct], ["hung", "pacs"])
    began = time.monotonic()
    outbox.start()
    peers.append(outbox)
    assert wait_for(lambda: state_of(outbox, pacs_id).state is DeliveryState.DONE, 10)
    elapsed = time.monotonic() - began
    assert elapsed < 2.5, f"the working PACS waited {elapsed:.1f} s behind the hung one"
    assert set(pacs.received()) == {sop_instance_uid(ct)}
    assert state_of(outbox, hung_id).state in (DeliveryState.SENDING, DeliveryState.PENDING)
    assert wait_for(lambda: state_of(outbox, hung_id).attempts >= 1
                    and state_of(outbox, hung_id).last_error is not None, 10)


def test_retry_window_exceeded_marks_failed_and_visible(tmp_path: Path, peers: list[Any]) -> None:
    port = free_port()
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    config = make_config({"pacs": port}, window=1.0)
    outbox = Outbox(tmp_path / "var", config, sender=SENDER)
    (did,) = outbox.enqueue("job-fail", [ct], ["pacs"])
    outbox.start()
    peers.append(outbox)
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.FAILED, 10)
    record = outbox.get(did)
    assert record.attempts >= 3  # backoff 0.2, 0.4, then the window's end
    assert record.last_error and "gave up" in record.last_error and "cannot connect" in record.last_error
    assert record.next_attempt_at is None
    # visible to a separate reader (mmed-node status) after the fact
    listed = Outbox(tmp_path / "var", config).list()
    assert [(d.delivery_id, d.state) for d in listed] == [(did, DeliveryState.FAILED)]
    attempts = record.attempts
    time.sleep(0.6)
    assert outbox.get(did).attempts == attempts  # no more attempts once failed

    pacs = StoreSCP(tmp_path / "pacs", port).start()  # an operator fixes the PACS and retries
    peers.append(pacs)
    outbox.retry(did)
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.DONE, 10)
    assert set(pacs.received()) == {sop_instance_uid(ct)}


def test_restart_resumes_pending_and_interrupted_deliveries(tmp_path: Path, peers: list[Any]) -> None:
    port = free_port()
    files = payload(tmp_path / "job", "CT_small.dcm", "MR_small.dcm")
    config = make_config({"pacs": port})
    first = Outbox(tmp_path / "var", config, sender=SENDER)
    pending_id, = first.enqueue("job-a", files[:1], ["pacs"])
    sending_id, = first.enqueue("job-b", files[1:], ["pacs"])
    # the node died while job-b was on the wire
    record = first.get(sending_id)
    record.state, record.attempts = DeliveryState.SENDING, 1
    write_delivery(first.directory, record)

    pacs = StoreSCP(tmp_path / "pacs", port).start()
    peers.append(pacs)
    second = Outbox(tmp_path / "var", config, sender=SENDER)
    second.start()
    peers.append(second)
    assert all_done(second, pending_id, sending_id)
    assert second.get(sending_id).attempts == 2
    assert set(pacs.received()) == {sop_instance_uid(f) for f in files}


KILLED_NODE = textwrap.dedent("""
    import functools, sys, time
    from pathlib import Path
    from config.schema import AppConfig
    from dicom_node.deliver.outbox import Outbox
    from dicom_node.deliver.sender import send_files
    config = AppConfig.model_validate_json(Path(sys.argv[1]).read_text())
    outbox = Outbox(sys.argv[2], config, sender=functools.partial(send_files, timeout=60))
    outbox.enqueue("job-k", [sys.argv[3]], ["pacs"])
    outbox.start()
    time.sleep(120)
""")


def test_kill_9_while_sending_then_restart_delivers(tmp_path: Path, peers: list[Any]) -> None:
    port = free_port()
    hung = HungPeer(port)  # the send blocks here, so the record stays 'sending'
    peers.append(hung)
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    config = make_config({"pacs": port})
    config_path = tmp_path / "config.json"
    config_path.write_text(config.model_dump_json(by_alias=True))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_NODE, str(config_path),
                             str(tmp_path / "var"), str(ct)], env=env)
    try:
        outbox_dir = tmp_path / "var" / "outbox"

        def sending() -> bool:
            records = list(outbox_dir.glob("*.json")) if outbox_dir.is_dir() else []
            return bool(records) and load_delivery(records[0]).state is DeliveryState.SENDING

        assert wait_for(sending, 20)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    hung.close()
    (record_path,) = outbox_dir.glob("*.json")
    assert load_delivery(record_path).state is DeliveryState.SENDING

    pacs = StoreSCP(tmp_path / "pacs", port).start()
    peers.append(pacs)
    outbox = Outbox(tmp_path / "var", config, sender=SENDER)
    outbox.start()
    peers.append(outbox)
    did = record_path.stem
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.DONE, 15)
    assert set(pacs.received()) == {sop_instance_uid(ct)}


def test_seg_skipped_for_destination_without_seg(tmp_path: Path, peers: list[Any]) -> None:
    pacs_port, viewer_port = free_port(), free_port()
    pacs = StoreSCP(tmp_path / "pacs", pacs_port).start()
    viewer = StoreSCP(tmp_path / "viewer", viewer_port).start()
    peers.extend([pacs, viewer])
    ct, seg = payload(tmp_path / "job", "CT_small.dcm", "liver.dcm")
    config = make_config({"pacs": pacs_port, "viewer": viewer_port},
                         viewer={"accepts_seg": False})
    outbox = Outbox(tmp_path / "var", config, sender=SENDER)
    pacs_id, viewer_id = outbox.enqueue("job3", [ct, seg], ["pacs", "viewer"])
    assert outbox.get(viewer_id).skipped == {
        str(seg): "destination viewer does not accept Segmentation Storage"}
    outbox.start()
    peers.append(outbox)
    assert all_done(outbox, pacs_id, viewer_id)
    assert set(pacs.received()) == {sop_instance_uid(ct), sop_instance_uid(seg)}
    assert set(viewer.received()) == {sop_instance_uid(ct)}


def test_refused_transfer_syntax_fails_at_once_others_delivered(
    tmp_path: Path, peers: list[Any]
) -> None:
    port = free_port()
    pacs = StoreSCP(tmp_path / "pacs", port).start()  # no +xa: uncompressed syntaxes only
    peers.append(pacs)
    ct, j2k = payload(tmp_path / "job", "CT_small.dcm", "JPEG2000.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"pacs": port}), sender=SENDER)
    (did,) = outbox.enqueue("job4", [ct, j2k], ["pacs"])
    outbox.start()
    peers.append(outbox)
    assert wait_for(lambda: state_of(outbox, did).state is DeliveryState.FAILED, 10)
    record = outbox.get(did)
    assert record.attempts == 1  # permanent: not retried for the whole window
    assert record.sent == [str(ct)]
    assert list(record.rejected) == [str(j2k)]
    assert record.last_error and "JPEG2000.dcm" in record.last_error
    assert set(pacs.received()) == {sop_instance_uid(ct)}


def test_enqueue_rejects_unknown_destination(tmp_path: Path) -> None:
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"pacs": free_port()}))
    with pytest.raises(ValueError, match="nowhere"):
        outbox.enqueue("job5", [ct], ["pacs", "nowhere"])
    assert outbox.list() == []


def test_backoff_doubles_up_to_the_maximum() -> None:
    assert [backoff_seconds(n, 2.0, 60.0) for n in range(1, 8)] == [2, 4, 8, 16, 32, 60, 60]


def test_record_round_trips_and_summarises(tmp_path: Path) -> None:
    (ct,) = payload(tmp_path / "job", "CT_small.dcm")
    outbox = Outbox(tmp_path / "var", make_config({"pacs": free_port()}))
    (did,) = outbox.enqueue("job/6 ../x", [ct], ["pacs"])
    assert "/" not in did and ".." not in did.split(".")  # ids are safe file names
    record = outbox.get(did)
    assert Delivery.from_dict(record.to_dict()) == record
    assert record.summary().startswith(f"{did}  pacs  pending  0/1 sent  attempts 0")
