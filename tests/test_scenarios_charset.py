"""End-user scenario: Japanese patient names in the ISO 2022 form a PACS sends
(Specific Character Set ``\\ISO 2022 IR 87``: empty value 1 = the default repertoire, PS3.3
C.12.1.1.2). The SEG, SR and secondary-capture overlays must be built, conform (dciodvfy) and
carry the name intact; before the fix highdicom refused the empty value and the job failed."""
from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from config.schema import OutputConfig
from sr_templates.charset import ISO2022_DEFAULT, UTF8, character_set_for
from sr_templates.outputs import build_outputs, build_overlays
from tests.dicom_validate import dciodvfy_errors
from tests.outputs_helpers import load_volume, two_lung_output, write_ct_series

CFG = OutputConfig(seg_series_number=77, sr_series_number=78, pipeline_version="9.9")
NAME = "Yamada^Tarou=山田^太郎=やまだ^たろう"


def _japanese_series(folder: Path, charset: list[str] | str, name: str) -> list[Path]:
    paths = write_ct_series(folder)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = charset
        ds.PatientName = name
        ds.save_as(path)
    return paths


@pytest.mark.parametrize(
    ("charset", "name"),
    [(["", "ISO 2022 IR 87"], NAME), ("", "Phantom^Out"), ("ISO_IR 6", "Phantom^Out")],
    ids=["iso2022-jp", "empty", "unknown-term"],
)
def test_outputs_of_a_series_with_an_iso2022_or_odd_charset(
    tmp_path: Path, charset: list[str] | str, name: str
) -> None:
    volume = load_volume(_japanese_series(tmp_path / "ct", charset, name))
    outputs = [two_lung_output(volume)]
    seg, sr = build_outputs(volume, outputs, "Both lungs segmented.", CFG, "Segment the lungs.", "rules")
    overlays = build_overlays(volume, outputs, CFG)
    assert overlays
    for label, ds in (("seg", seg), ("sr", sr), ("overlay", overlays[0])):
        path = tmp_path / f"{label}.dcm"
        ds.save_as(path)
        assert dciodvfy_errors(path) == [], label
        back = pydicom.dcmread(path)
        assert str(back.PatientName) == name, label


def test_character_set_choice() -> None:
    assert character_set_for(["ascii"], ["", "ISO 2022 IR 87"]) == [ISO2022_DEFAULT, "ISO 2022 IR 87"]
    assert character_set_for(["ascii"], "ISO_IR 100") is None  # copied as it is
    assert character_set_for(["ascii"], None) is None
    assert character_set_for(["ascii"], "") == UTF8
    assert character_set_for(["≥ 5 mm"], ["", "ISO 2022 IR 87"]) == UTF8
