"""Instruction templates for the instruction-tuning data (data, not code).

Each template has an id (the unit of the train/eval split: no template is in both), the intents it
asks for (several for multi-tool instructions) and its text with slots: ``{target}`` (a structure
of the image), ``{disease}`` (a knowledge topic). Paraphrases are separate templates, so the eval
split measures how a planner copes with wording it was not tuned on.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Template:
    id: str
    intents: tuple[str, ...]
    text: str


def _group(prefix: str, intents: tuple[str, ...], texts: tuple[str, ...]) -> tuple[Template, ...]:
    return tuple(Template(f"{prefix}-{i:02d}", intents, t) for i, t in enumerate(texts))


SEGMENT = _group("seg", ("segment",), (
    "Segment the {target}.",
    "Can you segment the {target} in this image?",
    "Please outline the {target}.",
    "Delineate the {target} for me.",
    "Draw the contour of the {target}.",
    "I need a mask of the {target}.",
    "Could you isolate the {target} from the rest of the image?",
    "Trace the boundary of the {target}.",
    "Give me a pixel-wise segmentation of the {target}.",
    "Would you mark out the borders of the {target}?",
    "Please produce a segmentation mask for the {target} on this scan.",
    "Show the extent of the {target} by segmenting it.",
))

LOCATE = _group("loc", ("locate",), (
    "Can you locate the {target}?",
    "Where is the {target} in this image?",
    "Find the {target}.",
    "Detect the {target} and give me its bounding box.",
    "Please point out the {target}.",
    "Identify the location of the {target}.",
    "Is there a {target} visible? Show me where.",
    "Draw a box around the {target}.",
    "Pinpoint the {target} on this scan.",
    "Could you localize the {target} for me?",
    "Where exactly can the {target} be seen?",
    "Search for the {target} in this picture.",
))

MEASURE = _group("mea", ("measure",), (
    "Measure the volume of the {target}.",
    "How large is the {target}?",
    "Quantify the size of the {target}.",
    "What is the volume of the {target} in millilitres?",
    "Segment the {target} and measure its volume.",
    "Please compute how big the {target} is.",
    "Give me the measurements of the {target}.",
    "Report the size of the {target}.",
))

CLASSIFY = _group("cls", ("classify",), (
    "What modality is this image?",
    "What type of image is this?",
    "Classify this image.",
    "Which kind of scan is shown here?",
    "What imaging technique was used for this picture?",
    "Is this an X-ray or a CT?",
    "Can you tell me the imaging modality of this study?",
    "Categorize this medical image.",
    "Identify the type of this medical image.",
    "What sort of examination produced this image?",
))

REPORT = _group("rep", ("report",), (
    "Write a radiology report for this image.",
    "Can you generate a medical report from this image?",
    "What are the findings in this study?",
    "Please describe the findings of this scan.",
    "Give me your impression of this image.",
    "Are you able to derive a medical report from this image?",
    "Draft a report for this study.",
    "Could you interpret this scan for me?",
    "Summarize this image as a radiologist would.",
    "Could you perform a medical evaluation using this image?",
))

KNOWLEDGE = _group("kno", ("knowledge",), (
    "What are the symptoms of {disease}?",
    "How is {disease} treated?",
    "What causes {disease}?",
    "Explain {disease} to me.",
    "What is {disease}?",
    "What are the risk factors for {disease}?",
    "Tell me about the prognosis of {disease}.",
    "How is {disease} managed?",
    "Which medications are used for {disease}?",
    "What complications can {disease} lead to?",
))

PRESENCE = _group("pre", ("presence",), (
    "Is there a {target} in this image?",
    "Do you see any {target}?",
    "Does this patient have a {target}?",
    "Any sign of a {target}?",
    "Can you tell me whether a {target} is present?",
    "Is a {target} visible on this scan?",
    "Rule out a {target}.",
    "Is there evidence of a {target}?",
))

COUNT = _group("cnt", ("count",), (
    "How many {target} regions are there?",
    "Count every {target} in this image.",
    "Tell me the number of {target} regions you can see.",
    "How many separate {target} areas can you find?",
    "Give me a count of the {target} regions.",
    "Could you count how many {target} regions are visible?",
))

SIZE = _group("siz", ("size",), (
    "Is the {target} enlarged?",
    "Is the {target} bigger than normal?",
    "Is the {target} of normal size?",
    "Does the {target} look enlarged to you?",
    "Has the {target} grown larger than it should be?",
))

VQA = _group("vqa", (), (
    "How many slices does this series contain?",
    "Is this image in colour?",
    "What is the pixel spacing of this image?",
    "Is the patient lying down?",
    "Is this image of good quality?",
    "Does this image look normal to you?",
    "Is contrast visible in this image?",
    "What orientation is this image displayed in?",
))

MULTI = (
    Template("mul-00", ("segment", "classify"), "Segment the {target} and tell me what modality this is."),
    Template("mul-01", ("locate", "knowledge"), "Where is the {target}, and what are the symptoms of {disease}?"),
    Template("mul-02", ("measure", "report"), "Measure the {target} and write a report."),
    Template("mul-03", ("classify", "report"), "What kind of image is this? Also draft a report for it."),
    Template("mul-04", ("segment", "knowledge"), "Outline the {target}; then explain how {disease} is treated."),
    Template("mul-05", ("locate", "classify"), "Find the {target} and classify the image."),
    Template("mul-06", ("report", "knowledge"), "Give me the findings of this scan, and what causes {disease}?"),
    Template("mul-07", ("segment", "report"), "Please delineate the {target} as well as generate a radiology report."),
    Template("mul-08", ("locate", "report"), "Detect the {target}, then describe the findings of this image."),
    Template("mul-09", ("classify", "knowledge"), "Which imaging modality is this, and what are the risk factors for {disease}?"),
)

TEMPLATES: tuple[Template, ...] = (
    SEGMENT + LOCATE + MEASURE + PRESENCE + COUNT + SIZE + CLASSIFY + REPORT + KNOWLEDGE + VQA + MULTI
)

#: Knowledge topics and a short reference text used when no local knowledge base is configured.
DISEASES: dict[str, str] = {
    "pneumonia": "Pneumonia is an infection of the lung parenchyma; treatment is with antibiotics for bacterial causes.",
    "emphysema": "Emphysema is destruction of alveolar walls with air trapping, mostly caused by smoking.",
    "pulmonary embolism": "Pulmonary embolism is obstruction of a pulmonary artery by a clot; it is treated with anticoagulation.",
    "liver cirrhosis": "Cirrhosis is late-stage liver fibrosis, caused by alcohol, viral hepatitis or fatty liver disease.",
    "kidney stones": "Kidney stones are crystalline concretions; small stones pass, larger ones need lithotripsy.",
    "glioblastoma": "Glioblastoma is the most common malignant primary brain tumour; treated with surgery, radiotherapy and temozolomide.",
    "pleural effusion": "A pleural effusion is fluid in the pleural space; causes include heart failure, infection and cancer.",
    "lung cancer": "Lung cancer is the leading cause of cancer death; smoking is its main risk factor.",
    "splenomegaly": "Splenomegaly is an enlarged spleen, seen in portal hypertension, infection and blood cancers.",
    "stroke": "A stroke is loss of brain function from ischaemia or haemorrhage; time to treatment decides outcome.",
}

#: How a target may be written in an instruction (one is picked at random).
TARGET_WORDING: dict[str, tuple[str, ...]] = {
    "lung": ("lungs", "lung", "lung fields"),
    "kidney": ("kidneys", "kidney"),
    "tumor": ("tumor", "tumour", "brain tumor"),
    "nodule": ("nodule", "lung nodule", "pulmonary nodule"),
    "liver": ("liver",),
    "spleen": ("spleen",),
    "heart": ("heart", "cardiac silhouette"),
    "brain": ("brain",),
}

#: Targets to ask about in supplied images (no ground truth), by BodyPartExamined.
BODY_PART_TARGETS: dict[str, tuple[str, ...]] = {
    "CHEST": ("lung",),
    "THORAX": ("lung",),
    "LUNG": ("lung",),
    "ABDOMEN": ("liver", "kidney", "spleen"),
    "HEAD": ("brain",),
    "BRAIN": ("brain",),
}
