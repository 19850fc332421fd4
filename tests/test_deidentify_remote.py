"""Nothing identifying leaves for a remote endpoint (PS3.15 Annex E Basic Profile).

A real CT series with a full set of identifiers is written to disk and read back by the node's loader;
the agent then plans with the ``openai`` backend against a real HTTP stand-in on loopback configured
as remote, runs the report tool (whose template report quotes the study date and description), and
answers. Every byte the stand-in received is searched for the identifiers. The same run with the
endpoint left local shows that the search would find them.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset

from agent.loop import run_agent
from agent.planners.openai_compat import OpenAICompatPlanner
from config.schema import PlannerConfig
from image_model.deidentify import (
    DISCLOSURE_LOGGER,
    Disclosure,
    basic_profile,
    deidentify_dataset,
    derived_uid,
    identifying_values,
    image_verdict,
    is_remote_endpoint,
    scrub_text,
)
from image_model.loader import load_series
from testkit.model_files import ct_phantom, write_series
from tests.agent_helpers import registry_of
from tests.agent_hf_helpers import ChatServer, reply
from tools.report import LanguageModel, LanguageModelSettings, ReportGeneration

PHI = {
    "PatientName": "SMITH^JANE^Q",
    "PatientID": "MRN448812",
    "PatientBirthDate": "19580317",
    "AccessionNumber": "ACC20260412X",
    "InstitutionName": "St Elsewhere General",
    "InstitutionAddress": "12 Harbour Road",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "StudyDate": "20260412",
    "SeriesDate": "20260412",
    "StudyDescription": "CT CHEST SMITH FOLLOWUP",
    "OperatorsName": "CHASE^ROBERT",
    "PatientComments": "allergic to iodine, lives alone",
}
#: Strings that must not reach a remote endpoint in any form.
FORBIDDEN = (
    "SMITH", "Jane", "MRN448812", "19580317", "1958-03-17", "17/03/1958", "ACC20260412X", "Elsewhere",
    "Harbour", "HOUSE", "GREGORY", "20260412", "2026-04-12", "CHASE", "iodine",
)
QUESTION = "Jane Smith, MRN448812, scanned 2026-04-12: please report the findings."
TOOL_TURN = json.dumps({"thoughts": "A report is needed.", "value": "Drafting the report.",
                        "actions": [{"API_name": "report generation", "API_params": {"image": "<imagepath>"}}]})
FINAL_TURN = json.dumps({"thoughts": "Done.", "actions": [], "value": "The report is ready."})


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    chat = ChatServer([reply(TOOL_TURN), reply(FINAL_TURN)]).start()
    yield chat
    chat.stop()


def _series(folder: Path, **extra: str) -> Path:
    """A small CT series carrying :data:`PHI` (and ``extra``), written as DICOM files."""
    phantom = ct_phantom((3, 24, 24))
    for ds in phantom.volume.datasets:
        for keyword, value in {**PHI, **extra}.items():
            setattr(ds, keyword, value)
        ds.add_new(0x00091010, "LO", "private SMITH note")
    write_series(phantom.volume.datasets, folder)
    return folder


def _sent(chat: ChatServer) -> str:
    return "\n".join(json.dumps(r["body"], ensure_ascii=False) for r in chat.requests)


def _run(chat: ChatServer, series: Path, *, remote: bool) -> None:
    volume = load_series(series)
    cfg = PlannerConfig(backend="openai", endpoint=chat.base_url, model="m", timeout_seconds=5, retries=0,
                        treat_as_remote=remote)
    result = run_agent(QUESTION, volume, registry_of(ReportGeneration), OpenAICompatPlanner(cfg))
    assert result.planner == "openai" and result.answer == "The report is ready.", result.errors
    assert [o.api_name for o in result.outputs] == ["report generation"]


def _images(chat: ChatServer) -> int:
    return sum(1 for r in chat.requests for m in r["body"]["messages"] if isinstance(m["content"], list)
               for part in m["content"] if part["type"] == "image_url")


def test_remote_planner_receives_no_identifiers(server: ChatServer, tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=DISCLOSURE_LOGGER)
    _run(server, _series(tmp_path / "s", BurnedInAnnotation="NO"), remote=True)
    sent = _sent(server)
    assert len(server.requests) == 2
    leaked = [s for s in FORBIDDEN if s.lower() in sent.lower()]
    assert not leaked, leaked
    # What the planner needs is still there: the modality, the body part, the tool's measurements.
    assert "Modality: CT" in sent and "Body part: CHEST" in sent and "Template report" in sent
    assert _images(server) == 2  # a CT that says BurnedInAnnotation NO is sent, with each request
    disclosures = [r.disclosure for r in caplog.records if hasattr(r, "disclosure")]
    assert len(disclosures) == 2 and all(isinstance(d, Disclosure) for d in disclosures)
    assert disclosures[0].image == "sent" and disclosures[0].removed.header_values >= 3
    assert disclosures[1].removed.header_values > disclosures[0].removed.header_values  # the report's date
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert not [s for s in FORBIDDEN if s.lower() in logged.lower()]


def test_the_same_run_to_a_local_endpoint_shows_the_search_would_find_them(server: ChatServer, tmp_path: Path) -> None:
    _run(server, _series(tmp_path / "s"), remote=False)
    sent = _sent(server).lower()
    assert {"smith", "mrn448812", "2026-04-12", "20260412"} <= {s.lower() for s in FORBIDDEN if s.lower() in sent}


@pytest.mark.parametrize("extra", [
    {"BurnedInAnnotation": "YES"},
    {"Modality": "US"},  # ultrasound without BurnedInAnnotation NO
    {"RecognizableVisualFeatures": "YES", "BurnedInAnnotation": "NO"},
])
def test_images_flagged_or_likely_to_carry_text_are_withheld(server: ChatServer, tmp_path: Path,
                                                             extra: dict[str, str]) -> None:
    series = _series(tmp_path / "s", **extra)
    volume = load_series(series)
    cfg = PlannerConfig(backend="openai", endpoint=server.base_url, model="m", retries=0, treat_as_remote=True)
    run_agent(QUESTION, volume, registry_of(ReportGeneration), OpenAICompatPlanner(cfg))
    assert len(server.requests) == 2 and _images(server) == 0


def test_remote_report_language_model_gets_a_deidentified_prompt(tmp_path: Path) -> None:
    chat = ChatServer([reply("Findings: none. Impression: normal.")]).start()
    try:
        volume = load_series(_series(tmp_path / "s"))
        tool = ReportGeneration({"backend": "openai", "endpoint": chat.base_url, "model": "m",
                                 "treat_as_remote": True})
        out = tool.run(volume, {"indication": QUESTION, "findings": {"ct lung": {"volume_ml": 4321.5}}})
        assert "Impression: normal." in (out.text or "")
        sent = _sent(chat)
        assert not [s for s in FORBIDDEN if s.lower() in sent.lower()]
        assert "volume_ml 4322" in sent and "Modality: CT" in sent
    finally:
        chat.stop()


@pytest.mark.parametrize("url, remote", [
    ("http://127.0.0.1:8000/v1", False), ("http://127.3.4.5/v1", False), ("http://localhost:1234", False),
    ("http://[::1]:80/v1", False), ("http://10.0.0.7:8000/v1", True), ("https://api.example.org/v1", True),
    ("http://127.0.0.1.example.org/v1", True), ("http://gpu-box/v1", True),
    ("http://llm.localhost:8000/v1", True),
])
def test_loopback_is_local_and_everything_else_remote(url: str, remote: bool) -> None:
    assert is_remote_endpoint(url) is remote
    assert is_remote_endpoint(url, treat_as_remote=True) is True
    assert LanguageModel(LanguageModelSettings(backend="openai", endpoint=url, model="m")).remote is remote


def test_profile_table_matches_the_data_dictionary() -> None:
    rules = basic_profile()
    assert len(rules) >= 100
    for tag, rule in rules.items():
        assert keyword_for_tag(tag) == rule.keyword
        assert rule.effect in {"remove", "empty", "dummy", "uid"}
    by_keyword = {r.keyword: r for r in rules.values()}
    assert by_keyword["PatientName"].action == "Z" and by_keyword["StudyInstanceUID"].action == "U"
    assert by_keyword["InstitutionName"].effect == "remove" and by_keyword["PatientComments"].action == "X"


def test_deidentify_dataset_on_a_real_header() -> None:
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.ReferringPhysicianName, ds.InstitutionName, ds.OperatorsName = "HOUSE^GREGORY", "St Elsewhere", "CHASE^R"
    ds.ReferencedStudySequence = [Dataset()]
    ds.ReferencedStudySequence[0].ReferencedSOPInstanceUID = ds.StudyInstanceUID
    before = str(ds.PatientName)
    out = deidentify_dataset(ds)
    assert str(ds.PatientName) == before and ds.InstitutionName == "St Elsewhere"  # the source is untouched
    assert not out.PatientName and not out.PatientID and not out.StudyDate and not out.AccessionNumber
    for keyword in ("InstitutionName", "OperatorsName", "ReferencedStudySequence", "StudyDescription"):
        assert keyword not in out
    assert not [e for e in out if e.tag.is_private]
    assert out.StudyInstanceUID == derived_uid(ds.StudyInstanceUID) != ds.StudyInstanceUID
    assert out.SeriesInstanceUID == derived_uid(ds.SeriesInstanceUID)
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.Modality == ds.Modality and out.Rows == ds.Rows and out.PixelData == ds.PixelData
    # Every value the copy lost is one the scrubber looks for in text (if long enough to search).
    values = identifying_values([ds])
    assert str(ds.PatientID) in values and "HOUSE^GREGORY" in values and "GREGORY HOUSE" in values


def test_scrub_text_removes_values_dates_and_uids_but_not_look_alikes() -> None:
    text, count = scrub_text(
        "Jane Smith (Smithson's scan) on 03/17/1958 and 1958.03.17; uid 1.2.840.113619.2.55.3; volume 2500 mL",
        ("JANE SMITH", "SMITH", "JANE"),
    )
    assert "Smith" not in text.replace("Smithson", "") and "Smithson" in text
    assert "1958" not in text and "1.2.840" not in text and "2500 mL" in text
    assert count.header_values == 1 and count.dates == 2 and count.uids == 1


@pytest.mark.parametrize("attrs, allowed", [
    ({"Modality": "CT"}, True),
    ({"Modality": "CT", "BurnedInAnnotation": "YES"}, False),
    ({"Modality": "US"}, False),
    ({"Modality": "US", "BurnedInAnnotation": "NO"}, True),
    ({"Modality": "CR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, False),
    ({"Modality": "MR", "RecognizableVisualFeatures": "YES"}, False),
])
def test_image_verdict(attrs: dict[str, str], allowed: bool) -> None:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    assert image_verdict(ds).allowed is allowed
    assert image_verdict(None).allowed is False
