"""The deterministic half of reading an instruction: vocabularies, coordinates, slices, targets,
sides, exclusions, negation, yes/no questions, clauses, typo guard (no sentence encoder needed)."""
from __future__ import annotations

import json
import re

import pytest

from agent.reading.load import reading_parts
from agent.reading.prompts import PromptError, read_prompts, read_slices
from agent.reading.slots import find_mentions, is_negated, is_polar
from agent.reading.text import split_clauses
from agent.reading.vocabulary import DATA_DIR, VocabularyError, build_vocabulary, load_vocabulary, tokens
from image_model.codes import structure_names

VOCAB = load_vocabulary()
WORDS = VOCAB.words


@pytest.mark.parametrize(
    ("text", "rows", "cols", "boxes", "points", "labels", "units"),
    [
        ("Segment the region in box [0.31, 0.42, 0.55, 0.61].", 512, 512, [(0.31, 0.42, 0.55, 0.61)], [], [], "normalised"),
        ("Segment x1=120, y1=80, x2=260, y2=200 please", 400, 520, [(0.2308, 0.2, 0.5, 0.5)], [], [], "pixels"),
        ("I clicked at (312, 240), segment that", 480, 640, [], [(0.4875, 0.5)], [1], "pixels"),
        ("from (100, 120) to (300, 260)", 520, 400, [(0.25, 0.2308, 0.75, 0.5)], [], [], "pixels"),
        ("from (300, 260) to (100, 120)", 520, 400, [(0.25, 0.2308, 0.75, 0.5)], [], [], "pixels"),
        ("point 0.4,0.55 and background point (0.1, 0.1)", 64, 64, [], [(0.4, 0.55), (0.1, 0.1)], [1, 0], "normalised"),
        ("bbox 10 20 30 40 px", 100, 100, [(0.1, 0.2, 0.3, 0.4)], [], [], "pixels"),
        ("x=100 y=50 w=40 h=30", 100, 200, [(0.5, 0.5, 0.7, 0.8)], [], [], "pixels"),
        ("between 20%,30% and 40%,50%", 64, 64, [(0.2, 0.3, 0.4, 0.5)], [], [], "normalised"),
        ("mask xmin: 0.1 ymin: 0.2 xmax: 0.3 ymax: 0.4", 64, 64, [(0.1, 0.2, 0.3, 0.4)], [], [], "normalised"),
    ],
)
def test_coordinates_in_every_form(text: str, rows: int, cols: int, boxes: list, points: list, labels: list, units: str) -> None:
    found = read_prompts(text, WORDS, rows, cols)
    assert [tuple(pytest.approx(v, abs=1e-4) for v in b) for b in found.boxes] == boxes
    assert [tuple(pytest.approx(v, abs=1e-4) for v in p) for p in found.points] == points
    assert list(found.point_labels) == labels and found.units == units


@pytest.mark.parametrize("text", ["haemoptysis x2 weeks, a 6 mm nodule (2024)", "CT 1-2 cm lesion", "How big is it?"])
def test_numbers_that_are_no_coordinates(text: str) -> None:
    assert not read_prompts(text, WORDS, 512, 512).given


@pytest.mark.parametrize(
    ("text", "rows", "cols", "reason"),
    [
        ("box [10, 10, 600, 20]", 512, 512, "outside the image (512 columns)"),
        ("box [0.5, 0.5, 0.4, 0.6]", 512, 512, "is empty"),
        ("point (300, 200)", None, None, "need the image size"),
    ],
)
def test_unusable_coordinates_say_why(text: str, rows: int | None, cols: int | None, reason: str) -> None:
    with pytest.raises(PromptError, match=re.escape(reason)):
        read_prompts(text, WORDS, rows, cols)


def test_slice_and_instance_numbers() -> None:
    found = read_slices("segment slices 40-42, and instance number 12; slice thickness 5 mm", WORDS)
    assert found.slices == (40, 41, 42) and found.instances == (12,)
    assert read_slices("what is the slice thickness?", WORDS).slices == ()


def _mentions(text: str) -> list[tuple[str, str | None, bool, bool]]:
    toks = tuple(tokens(text))
    return [(m.name, m.side, m.excluded, m.location) for m in find_mentions(VOCAB, toks)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("segment the left lung only", [("lung", "left", False, False)]),
        ("segment the left and right lungs", [("lung", None, False, False)]),
        ("both kidneys", [("kidney", None, False, False)]),
        ("is there an effusion on the left", [("pleural effusion", "left", False, False)]),
        ("left lower lobe nodule", [("nodule", "left", False, False)]),
        ("R kidney", [("kidney", "right", False, False)]),
        ("all organs except the liver and the spleen",
         [("all organs", None, False, False), ("liver", None, True, False), ("spleen", None, True, False)]),
        ("every abdominal organ", [("all organs", None, False, False)]),
        ("the nodule in the left lung", [("nodule", "left", False, False), ("lung", "left", False, True)]),
        ("any lung mass", [("lung", None, False, True), ("mass", None, False, False)]),
        ("outline the glioblastoma", [("glioblastoma", None, False, False)]),
        ("do i have fluid on my lungs", [("pulmonary edema", None, False, False)]),
        ("kidneys and the liver's capsule", [("kidney", None, False, False), ("liver", None, False, False)]),
    ],
)
def test_targets_sides_exclusions_and_locations(text: str, expected: list) -> None:
    assert _mentions(text) == expected


@pytest.mark.parametrize(
    ("text", "negated"),
    [("don't segment anything", True), ("no need for a report", True), ("report not needed", True),
     ("I'm not asking for a segmentation", True), ("no pneumothorax?", False), ("segment the liver", False),
     ("but skip the measurements", True)],
)
def test_negated_clauses(text: str, negated: bool) -> None:
    assert is_negated(VOCAB, tuple(tokens(text)), text.endswith("?")) is negated


@pytest.mark.parametrize(
    ("text", "polar"),
    [("is there a nodule", True), ("does this patient have pneumonia", True), ("can you segment the liver", False),
     ("can you tell me if there is a fracture", True), ("segment the liver", False), ("any effusion", True)],
)
def test_yes_no_questions(text: str, polar: bool) -> None:
    assert is_polar(VOCAB, tuple(tokens(text))) is polar


def test_clauses_split_at_tasks_not_at_lists() -> None:
    reader = reading_parts(False)
    split = [c.text for c in split_clauses(reader.normaliser.normalise(
        "Segment the liver and spleen and measure them; CXR: ?PTX, left only"), VOCAB)]
    assert split == ["segment the liver and spleen", "measure them", "chest x ray", "query ptx", "left only"]


def test_typos_are_corrected_but_real_words_are_not() -> None:
    normalise = reading_parts(False).normaliser.normalise
    assert normalise("Segmnet the kidny") == ["segment", "the", "kidney"]
    assert normalise("was the patient supine near the river") == ["was", "the", "patient", "supine", "near", "the", "river"]
    assert normalise("seg R kidney vols pls") == ["segment", "r", "kidney", "volumes", "please"]


def test_the_3d_organs_are_the_code_tables_anatomy() -> None:
    """targets.json flags as organ3d exactly the structures of the one code table."""
    assert VOCAB.organ3d == structure_names()


def test_every_vocabulary_file_validates_and_bad_ones_say_what_is_wrong() -> None:
    targets = json.loads((DATA_DIR / "targets.json").read_text())
    words = json.loads((DATA_DIR / "words.json").read_text())
    answers = json.loads((DATA_DIR / "answers.json").read_text())
    assert build_vocabulary(targets, words, answers).organ3d == VOCAB.organ3d
    clash = {"targets": [*targets["targets"], {"name": "pulmo", "kind": "organ", "synonyms": ["pulmo", "lungs"]}]}
    with pytest.raises(VocabularyError, match="'lungs' names both 'lung' and 'pulmo'"):
        build_vocabulary(clash, words, answers)
    wrong_kind = {"targets": [*targets["targets"], {"name": "x", "kind": "device", "synonyms": ["x"], "organ3d": True}]}
    with pytest.raises(VocabularyError, match="only organs"):
        build_vocabulary(wrong_kind, words, answers)
    with pytest.raises(VocabularyError, match="names two sides"):
        build_vocabulary(targets, {**words, "laterality": {**words["laterality"], "both": ["left"]}}, answers)
    with pytest.raises(VocabularyError, match="classifier_no must be below"):
        build_vocabulary(targets, words, {**answers, "classifier_no": 0.9})
