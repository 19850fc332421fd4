"""The one code table: every tool asks it for a segment's codes, the planner for the organs it
knows, and no tool carries a code literal of its own."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from agent.reading.vocabulary import load_vocabulary
from image_model.codes import concept, laterality_of, segment_codes, structure_names, unit
from image_model.findings import Code
from image_model.measure import mask_size, pixel_spacing_note
from image_model.volume import Volume
from tools.organ3d import LabelSetting, label_codes

TOOLS = Path(__file__).resolve().parent.parent / "tools"
SCT = "SCT"
#: A SNOMED CT concept id: 6 to 18 digits (the SCTID format).
SNOMED_ID = re.compile(r"[1-9][0-9]{5,17}")


def test_organs_and_sides() -> None:
    right_lung = segment_codes("Right lung")
    assert right_lung.category == concept("anatomical_structure")
    assert right_lung.type == Code("39607008", SCT, "Lung")  # the side is never folded into the type
    assert right_lung.laterality == concept("right") and right_lung.anatomic_region is None
    assert segment_codes("left-kidney").type.meaning == "Kidney"
    assert segment_codes("left-kidney").laterality == concept("left")
    assert segment_codes("Adrenal glands").type.meaning == "Adrenal gland"  # an alias, two words
    assert segment_codes("femoral head").type == segment_codes("head of femur").type
    assert laterality_of("kidney") is None and laterality_of("left and right kidney") is None


def test_abnormalities_take_the_organ_as_region() -> None:
    mass = segment_codes("left kidney mass")
    assert mass.category == concept("morphologically_abnormal_structure")
    assert mass.type.meaning == "Mass" and mass.anatomic_region == segment_codes("kidney").type
    assert mass.laterality == concept("left")
    tumour = segment_codes("brain tumour")
    assert tumour.type.value == "108369006" and tumour.anatomic_region == segment_codes("brain").type
    assert segment_codes("nodule").anatomic_region is None


def test_unknown_labels_claim_no_anatomy() -> None:
    tissue = concept("tissue")
    assert segment_codes("wibble") == segment_codes(None) == segment_codes("")
    assert (segment_codes("wibble").category, segment_codes("wibble").type) == (tissue, tissue)
    # An organ network's unknown channel is still an organ; its config's codes win.
    assert label_codes(LabelSetting(index=4, name="label 4")).type == concept("organ")
    assert label_codes(LabelSetting(index=1, name="right kidney")).laterality == concept("right")
    custom = LabelSetting.model_validate({"index": 2, "name": "x", "code": {"value": "1", "meaning": "X"}})
    assert label_codes(custom).type == Code("1", SCT, "X")


def test_the_planner_knows_the_organs_of_the_code_table() -> None:
    assert load_vocabulary().organ3d == structure_names()
    assert {"liver", "lung", "kidney", "head of femur"} <= structure_names()


def test_no_tool_carries_a_snomed_literal() -> None:
    """Codes come from codes.json: no string constant in tools/ is a SNOMED CT concept id, and no
    tool reads pydicom's code dictionaries (a second table, with older codes)."""
    found = []
    for path in sorted(TOOLS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SNOMED_ID.fullmatch(node.value):
                found.append(f"{path.name}:{node.lineno}: {node.value}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pydicom.sr"):
                found.append(f"{path.name}:{node.lineno}: a second code table ({node.module})")
    assert found == [], "SNOMED CT ids in tools (use image_model.codes): " + ", ".join(found)


def _volume(slices: int, meta: dict[str, object]) -> Volume:
    return Volume(
        pixels=np.zeros((slices, 4, 4), np.float32), spacing=(2.0, 0.5, 0.5),
        positions=np.array([[0.0, 0.0, 2.0 * k] for k in range(slices)]), orientation=(1, 0, 0, 0, 1, 0),
        datasets=[], modality="CT", meta=meta,
    )


@pytest.mark.parametrize(
    "slices,meta,name,unit_name,value",
    [
        (3, {}, "volume", "mL", 3 * 4 * 2.0 * 0.25 / 1000.0),
        (3, {"pixel_spacing_source": "assumed 1.0 mm"}, "volume", "voxels", 12.0),
        (3, {"geometry": "no plane positions: assumed"}, "volume", "voxels", 12.0),
        (1, {}, "area", "mm2", 4 * 0.25),
        (1, {"pixel_spacing_source": "assumed 1.0 mm (no usable PixelSpacing)"}, "area", "pixels", 4.0),
    ],
)
def test_sizes_are_physical_only_when_the_spacing_is_known(
    slices: int, meta: dict[str, object], name: str, unit_name: str, value: float
) -> None:
    mask = np.zeros((slices, 4, 4), dtype=bool)
    mask[:, 1:3, 1:3] = True
    size = mask_size(mask, _volume(slices, meta))
    assert size.name == concept(name) and size.unit == unit(unit_name)
    assert size.value == pytest.approx(value)
    assert (pixel_spacing_note(_volume(slices, meta)) is None) == ("pixel_spacing_source" not in meta)
