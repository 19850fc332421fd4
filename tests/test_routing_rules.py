"""Routing rules: every operator, priority, first vs all, fallback, AE title keys, config errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file

from config.loader import ConfigError, load_config
from config.schema import AppConfig, Condition
from dicom_node.receive.routing import (
    evaluate_condition,
    evaluate_routes,
    rule_keywords,
    select_routes,
    series_tags_from_dataset,
)

CT_TAGS: dict[str, Any] = {
    "Modality": "CT",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "SliceThickness": "5.000000",
    "PixelSpacing": ["0.661468", "0.661468"],
    "SeriesDescription": "Chest LUNG 1.0",
    "BodyPartExamined": "CHEST",
    "Rows": 512,
    "StudyDate": "20240301",
}


def check(key: str, condition: dict[str, Any], tags: dict[str, Any] = CT_TAGS) -> bool:
    results = evaluate_condition(key, Condition.model_validate(condition), tags.get(key))
    assert results, "a condition yields at least one check"
    return all(r.held for r in results)


@pytest.mark.parametrize(
    ("key", "condition", "expected"),
    [
        # equals: text, case-sensitive; unquoted numbers compare numerically
        ("Modality", {"equals": "CT"}, True),
        ("Modality", {"equals": "ct"}, False),
        ("Modality", {"equals": "MR"}, False),
        ("SliceThickness", {"equals": 5}, True),
        ("SliceThickness", {"equals": "5"}, False),
        ("Rows", {"equals": 512}, True),
        ("ImageType", {"equals": "ORIGINAL\\PRIMARY\\AXIAL"}, True),
        ("Manufacturer", {"equals": "X"}, False),
        # regex: the whole value must match
        ("Modality", {"regex": "C"}, False),
        ("Modality", {"regex": "C."}, True),
        ("SeriesDescription", {"regex": "(?i).*lung.*"}, True),
        ("SeriesDescription", {"regex": "LUNG"}, False),
        ("Manufacturer", {"regex": ".*"}, False),
        # in / not_in
        ("Modality", {"in": ["MR", "CT"]}, True),
        ("Modality", {"in": ["MR", "PT"]}, False),
        ("SliceThickness", {"in": [1, 5]}, True),
        ("Modality", {"not_in": ["MR", "PT"]}, True),
        ("Modality", {"not_in": ["CT"]}, False),
        ("Manufacturer", {"not_in": ["X"]}, True),
        # contains / excludes: membership among values, not substrings
        ("ImageType", {"contains": "AXIAL"}, True),
        ("ImageType", {"contains": "AX"}, False),
        ("ImageType", {"contains": "LOCALIZER"}, False),
        ("BodyPartExamined", {"contains": "CHEST"}, True),
        ("ImageType", {"excludes": "LOCALIZER"}, True),
        ("ImageType", {"excludes": "PRIMARY"}, False),
        ("Manufacturer", {"excludes": "X"}, True),
        # numeric comparisons (DS text, IS/US numbers); multi-valued: every value
        ("SliceThickness", {"gt": 4.9}, True),
        ("SliceThickness", {"gt": 5}, False),
        ("SliceThickness", {"ge": 5}, True),
        ("SliceThickness", {"lt": 5}, False),
        ("SliceThickness", {"le": 5}, True),
        ("SliceThickness", {"ge": 1, "le": 3}, False),
        ("SliceThickness", {"ge": 1, "le": 6}, True),
        ("PixelSpacing", {"lt": 1}, True),
        ("PixelSpacing", {"lt": 0.5}, False),
        ("Rows", {"ge": 256}, True),
        ("StudyDate", {"ge": 20240101}, True),
        ("Modality", {"gt": 0}, False),  # not a number
        ("Manufacturer", {"lt": 10}, False),  # absent
        # present
        ("Modality", {"present": True}, True),
        ("Manufacturer", {"present": True}, False),
        ("Manufacturer", {"present": False}, True),
        ("Modality", {"present": False}, False),
    ],
)
def test_operator_table(key: str, condition: dict[str, Any], expected: bool) -> None:
    assert check(key, condition) is expected


def test_empty_and_padded_values_are_handled_as_dicom_writes_them() -> None:
    tags = {"Modality": "CT ", "Manufacturer": "", "ImageType": "ORIGINAL\\PRIMARY"}
    assert check("Modality", {"equals": "CT"}, tags)
    assert check("Manufacturer", {"present": False}, tags)
    assert check("ImageType", {"contains": "PRIMARY"}, tags)  # backslash-joined text is split


def test_reasons_name_the_value_seen() -> None:
    (result,) = evaluate_condition("SliceThickness", Condition.model_validate({"le": 2.5}), "5.000000")
    assert not result.held
    assert "5.000000" in result.describe() and "le" in result.describe()
    (absent,) = evaluate_condition("BodyPartExamined", Condition.model_validate({"equals": "CHEST"}), None)
    assert "absent" in absent.describe()


def config(routes: list[dict[str, Any]], mode: str = "first") -> AppConfig:
    return AppConfig.model_validate({
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 104}},
        "routing_mode": mode,
        "routes": [{"instruction": "x", **r} for r in routes],
    })


ROUTES: list[dict[str, Any]] = [
    {"name": "any-ct", "match": {"Modality": "CT"}},
    {"name": "thin-ct", "match": {"Modality": "CT", "SliceThickness": {"le": 2}}, "priority": 5},
    {"name": "chest-ct", "match": {"Modality": "CT", "BodyPartExamined": "CHEST"}, "priority": 5},
    {"name": "mr", "match": {"Modality": "MR"}, "priority": 9},
    {"name": "catch-all", "fallback": True},
]


def names(cfg: AppConfig, tags: dict[str, Any], calling: str | None = "ORTHANC") -> list[str]:
    return [m.route.name for m in select_routes(cfg, tags, calling, "MMEDNODE")]


def test_first_mode_takes_highest_priority_then_file_order() -> None:
    assert names(config(ROUTES), CT_TAGS) == ["chest-ct"]  # thin-ct (same priority) fails
    thin = {**CT_TAGS, "SliceThickness": "1.0"}
    assert names(config(ROUTES), thin) == ["thin-ct"]  # earlier in the file at priority 5


def test_all_mode_fires_every_match_in_priority_order() -> None:
    thin = {**CT_TAGS, "SliceThickness": "1.0"}
    assert names(config(ROUTES, "all"), thin) == ["thin-ct", "chest-ct", "any-ct"]


def test_evaluation_order_is_priority_descending_stable() -> None:
    order = [m.route.name for m in evaluate_routes(config(ROUTES), CT_TAGS, None, None)]
    assert order == ["mr", "thin-ct", "chest-ct", "any-ct", "catch-all"]


@pytest.mark.parametrize("mode", ["first", "all"])
def test_fallback_fires_only_when_nothing_else_matched(mode: str) -> None:
    cr = {"Modality": "CR", "BodyPartExamined": "CHEST"}
    assert names(config(ROUTES, mode), cr) == ["catch-all"]
    assert "catch-all" not in names(config(ROUTES, mode), CT_TAGS)


def test_fallbacks_in_all_mode_and_unrouted() -> None:
    routes: list[dict[str, Any]] = [
        {"name": "ct", "match": {"Modality": "CT"}},
        {"name": "fb-chest", "match": {"BodyPartExamined": "CHEST"}, "fallback": True},
        {"name": "fb-any", "fallback": True, "priority": -1},
    ]
    assert names(config(routes, "all"), {"Modality": "CR", "BodyPartExamined": "CHEST"}) == [
        "fb-chest", "fb-any"]
    assert names(config(routes, "first"), {"Modality": "CR", "BodyPartExamined": "CHEST"}) == [
        "fb-chest"]
    assert names(config(routes[:1]), {"Modality": "CR"}) == []  # unrouted


def test_ae_title_keys() -> None:
    routes: list[dict[str, Any]] = [
        {"name": "from-er", "match": {"CallingAETitle": {"in": ["ER_PACS", "ER2"]}}},
        {"name": "to-research", "match": {"CalledAETitle": {"regex": "RESEARCH.*"}}},
    ]
    cfg = config(routes, "all")
    assert [m.route.name for m in select_routes(cfg, CT_TAGS, "ER_PACS", "MMEDNODE")] == ["from-er"]
    assert [m.route.name for m in select_routes(cfg, CT_TAGS, "OTHER", "RESEARCH1")] == [
        "to-research"]
    assert select_routes(cfg, CT_TAGS, None, "MMEDNODE") == []
    # an AE title in the tags (spoofed in a header) does not count: the association decides
    assert select_routes(cfg, {**CT_TAGS, "CallingAETitle": "ER_PACS"}, "X", "Y") == []


def test_shorthands_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"routes": [
        {"name": "r", "match": {"Modality": ["CT", "MR"], "SliceThickness": 5},
         "instruction": "x"}]}))
    cfg = load_config(path)
    assert names(cfg, CT_TAGS) == ["r"]
    assert names(cfg, {**CT_TAGS, "Modality": "CR"}) == []
    assert rule_keywords(cfg) == {"Modality", "SliceThickness"}


@pytest.mark.parametrize(
    ("route", "expected_fragments"),
    [
        ({"match": {"Modality": {"equal": "CT"}}}, ["routes.1.match.Modality.equal", "'bad'"]),
        ({"match": {"Modalty": "CT"}}, ["routes.1.match", "'bad'", "Modalty"]),
        ({"match": {"Modality": {"regex": "(("}}}, ["Modality.regex", "'bad'", "does not compile"]),
        ({"match": {"SliceThickness": {"gt": "thin"}}}, ["SliceThickness.gt", "'bad'"]),
        ({"match": {"Modality": {}}}, ["routes.1.match.Modality", "'bad'", "no test"]),
        ({"match": {"ReferencedImageSequence": {"present": True}}},
         ["'bad'", "ReferencedImageSequence", "sequence"]),
        ({"send_to": ["nowhere"]}, ["routes.1.send_to", "'bad'", "nowhere"]),
    ],
)
def test_bad_rules_fail_at_load_naming_route_and_key(
    tmp_path: Path, route: dict[str, Any], expected_fragments: list[str]
) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({"routes": [
        {"name": "good", "match": {"Modality": "CT"}, "instruction": "x"},
        {"name": "bad", "instruction": "y", **route},
    ]}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected_fragments:
        assert fragment in message, message


def test_series_tags_from_dataset_on_a_real_ct() -> None:
    ds = dcmread(str(get_testdata_file("CT_small.dcm")), stop_before_pixels=True)
    tags = series_tags_from_dataset(ds)
    assert tags["Modality"] == "CT"
    assert tags["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert float(tags["SliceThickness"]) == pytest.approx(5.0)
    assert "PixelData" not in tags
    assert all(isinstance(v, (str, list)) for v in tags.values())  # JSON-serialisable text
    only = series_tags_from_dataset(ds, {"Modality", "BodyPartExamined"})
    assert set(only) <= {"Modality", "BodyPartExamined"} and only["Modality"] == "CT"
    cfg = config([{"name": "ct-thick", "match": {"Modality": "CT", "SliceThickness": {"ge": 5},
                                                 "ImageType": {"contains": "AXIAL"}}}])
    assert names(cfg, tags) == ["ct-thick"]


def _explicit_le(group: int, element: int, vr: bytes, value: bytes) -> bytes:
    import struct

    return struct.pack("<HH", group, element) + vr + struct.pack("<H", len(value)) + value


def test_a_malformed_value_the_routes_do_not_read_does_not_stop_routing() -> None:
    """Found by the fuzzer (seed 7): a binary element whose length is not a multiple of its VR's
    size made reading ANY tag of the header raise, and the series was never routed."""
    from io import BytesIO

    from pydicom.errors import BytesLengthException
    from pydicom.filereader import read_dataset

    data = (
        _explicit_le(0x0008, 0x0060, b"CS", b"CT")
        + _explicit_le(0x0008, 0x103E, b"LO", b"Chest ")
        + _explicit_le(0x0018, 0x1150, b"IS", b"abc ")  # ExposureTime: not an integer string
        + _explicit_le(0x0028, 0x0010, b"US", b"\x01\x02\x03")  # Rows: 3 bytes for a 2-byte VR
    )
    ds = read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)
    with pytest.raises(BytesLengthException):
        [elem.value for elem in ds]  # what reading every element did before
    tags = series_tags_from_dataset(ds)
    assert tags["Modality"] == "CT" and tags["SeriesDescription"] == "Chest"
    assert "Rows" not in tags
    assert series_tags_from_dataset(ds, {"Modality", "Rows"}) == {"Modality": "CT"}
    assert names(config([{"name": "ct", "match": {"Modality": "CT"}}]), tags) == ["ct"]
