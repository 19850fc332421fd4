"""Paraphrases the templates of make-data never use: the rules planner must still pick the tools.

A regression table for the keyword tables in agent/planners/rules_tables.py; a new phrasing that
fails goes here with the fix.
"""
from __future__ import annotations

import jsonschema
import pytest

from agent.planners.rules import RulesPlanner, make_plan
from tests.test_agent_rules_choice import CR, CT_2D, CT_VOL, MR_2D, MR_VOL, ctx_for

L = "ct lung segmentation"
G = "grounding dino"
GS = "grounding dino + MedSAM"
O = "organ segmentation 3d"
B = "BiomedClip"
R = "report generation"
K = "retrieval"

PARAPHRASES = [
    ("Compute the lung volumes.",CT_VOL,[L]),
    ("I'd like to know the total lung capacity on this CT.",CT_VOL,[L]),
    ("Give me left and right lung volumes in mL.",CT_VOL,[L]),
    ("Run lung segmentation.",CT_VOL,[L]),
    ("Quantify both lungs.",CT_VOL,[L]),
    ("What's the mean attenuation of the lungs?",CT_VOL,[L]),
    ("Could you highlight the kidneys?",CR,[G]),
    ("Show me the lesion.",MR_2D,[G]),
    ("Where's the mass located?",CR,[G]),
    ("Any nodules in this radiograph?",CR,[G]),
    ("Can you spot a fracture?",CR,[G]),
    ("Provide bounding boxes for the cells.",MR_2D,[G]),
    ("Identify where the polyp is.",MR_2D,[G]),
    ("Segment out the liver from this CT volume.",CT_VOL,[O]),
    ("Generate masks for the kidneys and spleen.",CT_VOL,[O]),
    ("Please give me a segmentation of the pancreas.",CT_VOL,[O]),
    ("Label the pixels belonging to the tumour.",MR_2D,[GS]),
    ("Create a contour around the heart.",CR,[GS]),
    ("Mask the brain lesion.",MR_2D,[GS]),
    ("What kind of medical image is this?",CR,[B]),
    ("Tell me what this image shows: is it an MRI, CT or X-ray?",MR_2D,[B]),
    ("Which modality was used to acquire this?",CT_2D,[B]),
    ("Determine the image category.",CR,[B]),
    ("Which body part is imaged here?",CR,[B]),
    ("Produce a radiology report.",CR,[R]),
    ("Please write up this chest film.",CR,[R]),
    ("What do you see in this X-ray? Give a full report.",CR,[R]),
    ("Provide a diagnostic summary of this study.",CR,[R]),
    ("Could you read this radiograph for me?",CR,[R]),
    ("What's your impression?",CR,[R]),
    ("Describe this image in detail.",CR,[R]),
    ("How do you treat a pneumothorax?",CR,[K]),
    ("What is the standard therapy for glioblastoma?",MR_2D,[K]),
    ("Could you explain what emphysema is?",CT_VOL,[K]),
    ("What are typical signs of a stroke?",MR_2D,[K]),
    ("What is the difference between a benign and a malignant nodule?",CT_VOL,[K]),
    ("Tell me about pulmonary fibrosis.",CT_VOL,[K]),
    ("Why do people get kidney stones?",CR,[K]),
    ("Is the heart enlarged?",CR,[]),
    ("How many slices are in this series?",CT_VOL,[]),
    ("Hello, who are you?",CR,[]),
    ("Segment the liver and tell me what modality this is.",CT_VOL,[O,B]),
    ("Locate the tumour and write a report.",MR_2D,[G,R]),
    ("Outline the lungs, then explain the causes of emphysema.",CT_VOL,[L,K]),
    ("Find the nodule; also, what kind of image is this?",CR,[G,B]),
    ("Measure the lungs as well as produce a report of the findings.",CT_VOL,[L,R]),
    ("Classify the image and detect any masses.",CR,[B,G]),
    ("Please quantify the lung volume.",CT_VOL,[L]),
    ("How much air is in the lungs?",CT_VOL,[L]),
    ("Estimate the size of each lung.",CT_VOL,[L]),
    ("Lung volumetry please.",CT_VOL,[L]),
    ("Perform lung volumetry on this series.",CT_VOL,[L]),
    ("Separate the left and right lungs.",CT_VOL,[L]),
    ("Get me the volume of the liver.",CT_VOL,[O]),
    ("How big is the spleen?",CT_VOL,[O]),
    ("Can you tell me where the kidneys are?",CR,[G]),
    ("Is there any sign of a tumor?",MR_2D,[G]),
    ("Could you detect abnormalities in the lungs?",CR,[G]),
    ("Mark the location of the nodule.",CT_2D,[G]),
    ("Please circle the lesion.",MR_2D,[G]),
    ("Do you see a pneumothorax?",CR,[G]),
    ("Extract the tumor region.",MR_2D,[GS]),
    ("Segment everything you can find in the abdomen.",CT_VOL,[O]),
    ("Give me the outline of the heart.",CR,[GS]),
    ("Is this a CT scan?",CT_2D,[B]),
    ("Is this image an MRI?",MR_2D,[B]),
    ("Which modality do you think this is?",CR,[B]),
    ("What am I looking at here, an X-ray or an MRI?",CR,[B]),
    ("Recognize the imaging modality.",MR_2D,[B]),
    ("Generate the report.",CR,[R]),
    ("Prepare a structured radiology report.",CT_VOL,[R]),
    ("Can you give me a preliminary read?",CR,[R]),
    ("Please analyse this X-ray and report what you find.",CR,[R]),
    ("Anything abnormal in this chest X-ray? Write your findings.",CR,[R]),
    ("What is the recommended treatment for a pleural effusion?",CR,[K]),
    ("What does cardiomegaly mean?",CR,[K]),
    ("Define atelectasis.",CR,[K]),
    ("How is pneumonia diagnosed?",CR,[K]),
    ("What are common causes of liver lesions?",CT_VOL,[K]),
    ("What should a patient with emphysema avoid?",CT_VOL,[K]),
    ("Thank you!",CR,[]),
    ("Is this image rotated?",CR,[]),
    ("What is the slice thickness?",CT_VOL,[]),
    ("Segment the lungs; additionally classify the image.",CT_VOL,[L,B]),
    ("Where is the tumor? Please also write a report.",MR_2D,[G,R]),
    ("Find the liver and the kidneys.",CT_2D,[G]),
    ("Segment the liver, locate the nodule, and write a report.",CT_VOL,[O,G,R]),
    ("Would you be able to segment the lungs for me?",CT_VOL,[L]),
    ("lung seg pls",CT_VOL,[L]),
    ("Calculate lung volumes.",CT_VOL,[L]),
    ("Determine the volume of each lung.",CT_VOL,[L]),
    ("I want the lung masks.",CT_VOL,[L]),
    ("Evaluate the lungs quantitatively.",CT_VOL,[L]),
    ("Locate any lung nodules.",CT_VOL,[G]),
    ("Can you find where the liver is located in this image?",CT_2D,[G]),
    ("Put a bounding box on the tumour.",MR_2D,[G]),
    ("Indicate the position of the heart.",CR,[G]),
    ("Detect lesions.",MR_2D,[G]),
    ("Which part of the image contains the tumor?",MR_2D,[G]),
    ("Could you show where the kidney is?",CT_2D,[G]),
    ("Segment the tumor in this brain MRI.",MR_2D,[GS]),
    ("Please delineate the kidney boundaries.",CT_VOL,[O]),
    ("Produce a mask for the spleen.",CT_2D,[GS]),
    ("Annotate the liver region.",CT_2D,[GS]),
    ("Make a segmentation of the brain.",MR_VOL,[O]),
    ("What modality?",CR,[B]),
    ("Is this picture a radiograph or a CT?",CR,[B]),
    ("Can you recognise which type of scan this is?",MR_2D,[B]),
    ("Please identify the imaging modality and body region.",CT_2D,[B]),
    ("What type of scan was performed?",CT_VOL,[B]),
    ("Generate a radiological report.",CT_VOL,[R]),
    ("Could you write the report for this CT?",CT_VOL,[R]),
    ("Report this study.",CR,[R]),
    ("What is your assessment of this X-ray?",CR,[R]),
    ("Provide an interpretation of the image.",MR_2D,[R]),
    ("What are the key findings?",CT_VOL,[R]),
    ("What is the treatment of choice for pneumothorax?",CR,[K]),
    ("Explain the pathophysiology of emphysema.",CT_VOL,[K]),
    ("What are the clinical features of stroke?",MR_2D,[K]),
    ("How do doctors treat glioblastoma?",MR_2D,[K]),
    ("Is lung cancer curable?",CT_VOL,[K]),
    ("What are the first-line drugs for pulmonary embolism?",CT_VOL,[K]),
    ("What is the size of the image matrix?",CT_VOL,[]),
    ("Describe the patient's position.",CR,[]),
    ("Segment the lungs, classify the image and write a report.",CT_VOL,[L,B,R]),
    ("Please find the tumor and explain how it is usually treated.",MR_2D,[G,K]),
    ("Give the lung volumes and the modality.",CT_VOL,[L,B]),
]


@pytest.mark.parametrize(("instruction", "series", "tools"), PARAPHRASES)
def test_unseen_paraphrase(instruction: str, series: tuple[str, tuple[int, int, int]], tools: list[str]) -> None:
    ctx = ctx_for(instruction, series)
    # All the tools of the plan (a report asked with other tools follows them in a second round).
    assert sorted(name for name, _ in make_plan(ctx).actions) == sorted(tools)
    turn = RulesPlanner().next_turn(ctx)
    assert set(turn.api_names) <= set(tools)
    schemas = {t.name: t.params_schema for t in ctx.tools}
    for action in turn.actions:
        jsonschema.validate(action.api_params, schemas[action.api_name])


@pytest.mark.parametrize(
    ("instruction", "series", "expected"),
    [
        ("Segment everything you can find in the abdomen.", CT_VOL, (O, {"image": "<imagepath>"})),
        ("Segment all organs and the tumor.", MR_2D, (GS, {"image": "<imagepath>", "prompts": ["tumor"]})),
        ("Segment everything you can find in the abdomen.", CT_2D, None),
    ],
)
def test_all_structures(instruction: str, series: tuple[str, tuple[int, int, int]], expected: tuple | None) -> None:
    turn = RulesPlanner().next_turn(ctx_for(instruction, series))
    if expected is None:
        assert turn.actions == []
    else:
        assert [(a.api_name, a.api_params) for a in turn.actions] == [expected]
