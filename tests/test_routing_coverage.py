"""Routing that fits real traffic: the default route and the README's examples fire for chest CTs
and skip, with the reason, CTs that do not show the thorax (abdomen with only the lung bases,
neck with only the apices, head, pelvis, upper abdomen), on realistic body phantoms.

The image check (``coverage: {region: thorax}``) reads a subsample of the series' files; a real
node receives the series over DICOM (dcmtk storescu) and records the outcome in job records.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from config.loader import load_config
from config.schema import AppConfig
from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from dicom_node.receive.routing import route_series, series_tags_from_dataset
from tests.body_cases import instance_files, named
from tests.receive_helpers import counting_runner, free_port, storescu, wait_for
from tools.lung_coverage import thorax_coverage

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHEST = ["chest", "chest-apex-clipped", "chest-clipped-fov", "chest-metal-noise-localizer-odd-headers"]
NOT_THORAX = ["abdomen-lung-bases", "neck-apices", "upper-abdomen", "head", "pelvis-hip-prosthesis"]


def outcome(config: AppConfig, name: str) -> tuple[list[str], str, bool]:
    import pydicom

    files = instance_files(named(name))
    header = pydicom.dcmread(named(name).truth.files[0], stop_before_pixels=True)
    result = route_series(config, series_tags_from_dataset(header), "PACS", "MMEDNODE", files)
    return [m.route.name for m in result.fired], result.reason, result.skipped


@pytest.mark.parametrize("name", CHEST + NOT_THORAX)
def test_thorax_coverage_check(name: str) -> None:
    coverage = thorax_coverage(instance_files(named(name)))
    assert not coverage.error
    assert coverage.covers(120.0, 0.6) is (name in CHEST), coverage.describe()
    assert coverage.slices_checked <= 64


@pytest.mark.parametrize("name", CHEST + NOT_THORAX)
def test_default_route(name: str) -> None:
    fired, reason, skipped = outcome(load_config(), name)
    if name in CHEST:
        assert fired == ["ct-lungs"]
    else:
        assert fired == [] and skipped
        assert "coverage thorax: failed" in reason and "the route needs 120 mm" in reason


def readme_routes() -> dict:
    """The routing example of README.md (the block that sets routing_mode)."""
    text = (PROJECT_ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    (example,) = [b for b in blocks if b.startswith("routing_mode:")]
    data = yaml.safe_load(example)
    data["destinations"] = {name: {"ae_title": "X", "host": "127.0.0.1", "port": 104} for name in ("pacs", "viewer")}
    return data


@pytest.mark.parametrize(
    ("name", "headers", "fires"),
    [
        ("chest", "as written", ["ct-chest"]),
        # No BodyPartExamined or ProtocolName; the description "1.0 x 5 B70f" names nothing.
        ("chest-metal-noise-localizer-odd-headers", "as written", ["catch-all"]),
        ("chest-apex-clipped", "as written", ["ct-chest"]),
        ("abdomen-lung-bases", "as written", ["catch-all"]),
        # A chest body part on an abdomen (a mislabelled series): the image check still skips it.
        ("abdomen-lung-bases", "CHEST", ["catch-all"]),
        ("head", "as written", ["catch-all"]),
    ],
)
def test_readme_example(name: str, headers: str, fires: list[str]) -> None:
    import pydicom

    config = load_config(overrides=readme_routes())
    header = pydicom.dcmread(named(name).truth.files[0], stop_before_pixels=True)
    tags = series_tags_from_dataset(header)
    if headers != "as written":
        tags["BodyPartExamined"] = headers
    result = route_series(config, tags, "PACS", "MMEDNODE", instance_files(named(name)))
    assert [m.route.name for m in result.fired] == fires
    chest_route = next(m for m in result.evaluated if m.route.name == "ct-chest")
    if chest_route.headers_matched and fires != ["ct-chest"]:
        assert chest_route.coverage is not None and not chest_route.coverage.covers


def test_match_any_needs_one_alternative() -> None:
    config = load_config(overrides={
        "routes": [{"name": "r", "match": {"Modality": "CT"}, "instruction": "x",
                    "match_any": [{"BodyPartExamined": "CHEST"}, {"SeriesDescription": {"regex": "(?i).*thorax.*"}}]}],
    })
    from dicom_node.receive.routing import evaluate_routes

    def fires(tags: dict) -> bool:
        return evaluate_routes(config, tags, None, None)[0].matched

    assert fires({"Modality": "CT", "BodyPartExamined": "CHEST"})
    assert fires({"Modality": "CT", "SeriesDescription": "Thorax 1.0 B70f"})
    assert not fires({"Modality": "CT", "BodyPartExamined": "ABDOMEN", "SeriesDescription": "Abdomen"})
    assert not fires({"Modality": "MR", "BodyPartExamined": "CHEST"})
    with pytest.raises(ValueError, match="no condition"):
        load_config(overrides={"routes": [{"name": "r", "instruction": "x", "match_any": [{}]}]})
    with pytest.raises(ValueError, match="not a DICOM keyword"):
        load_config(overrides={"routes": [{"name": "r", "instruction": "x", "match_any": [{"BodyPart": "X"}]}]})


def test_unreadable_series_is_skipped_not_guessed(tmp_path: Path) -> None:
    (tmp_path / "a.dcm").write_bytes(b"not dicom")
    config = load_config()
    result = route_series(config, {"Modality": "CT"}, "PACS", "MMEDNODE", [tmp_path / "a.dcm"])
    assert result.fired == [] and result.skipped
    assert "thorax coverage not checked" in result.reason


def test_rules_cli_runs_the_image_check_on_a_folder() -> None:
    folder = named("abdomen-lung-bases").folder
    run = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "rules", "test", str(folder), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert run.returncode == 1, run.stderr
    data = json.loads(run.stdout)
    (route,) = data["routes"]
    assert route["coverage"]["held"] is False and "lung-like air over" in route["coverage"]["reason"]
    text = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "rules", "test", str(named("chest").folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert text.returncode == 0 and "coverage thorax: held" in text.stdout


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    config = load_config(overrides={"node": {
        "port": free_port(), "data_dir": str(tmp_path / "var"), "series_quiet_seconds": 0.3,
    }})
    started = Node(config, runner=counting_runner, use_default_outbox=False)
    started.start()
    yield started
    started.stop()


def test_node_routes_chest_and_records_the_others_skipped(node: Node) -> None:
    """Over DICOM, with the default routes: the chest gets a job, the abdomen (lung bases only),
    the head and the pelvis are kept and recorded as skipped, with what the check saw."""
    sent = ["chest-metal-noise-localizer-odd-headers", "abdomen-lung-bases", "head", "pelvis-hip-prosthesis"]
    for name in sent:
        assert storescu(node.port, instance_files(named(name))).returncode == 0
    records = wait_for(lambda: len([r for r in node.jobs.all() if r.state.finished]) == 4 and node.jobs.all(), 60)
    by_series = {r.series_uid: r for r in records}
    chest = by_series[named(sent[0]).truth.series_uid]
    assert chest.state is JobState.DONE and chest.route == "ct-lungs"
    for name in sent[1:]:
        record = by_series[named(name).truth.series_uid]
        assert record.state is JobState.SKIPPED and record.route is None
        assert "coverage thorax: failed" in (record.error or "")
    assert "at the top of the volume" in (by_series[named("abdomen-lung-bases").truth.series_uid].error or "")
    assert "no lung-like air" in (by_series[named("head").truth.series_uid].error or "")


def test_a_malformed_position_in_one_file_leaves_that_file_out(tmp_path: Path) -> None:
    """Found by the fuzzer: a value written malformed in one instance (here its Number of Frames
    and Image Position) made the image check raise for the whole series, so it was never routed.
    The check now does without that one file."""
    import shutil

    import pydicom

    files = instance_files(named("chest"))
    copies = []
    for path in files:
        copies.append(tmp_path / path.name)
        shutil.copy(path, copies[-1])
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    broken = pydicom.dcmread(copies[len(copies) // 2])
    for tag, vr, raw in ((0x00280008, "IS", b"2$"), (0x00200032, "DS", b"0.0^0.0 ")):
        broken._dict[Tag(tag)] = RawDataElement(Tag(tag), vr, len(raw), raw, 0, False, True)
    broken.save_as(copies[len(copies) // 2])
    with pytest.raises((TypeError, ValueError)):
        int(pydicom.dcmread(copies[len(copies) // 2]).NumberOfFrames)
    coverage = thorax_coverage(copies)
    assert not coverage.error, coverage.error
    assert coverage.covers(120.0, 0.6), coverage.describe()
