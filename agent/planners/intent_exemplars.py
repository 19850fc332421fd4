"""Extra labelled exemplars for the rules planner's embedding fallback (data, not code).

:mod:`agent.planners.intent_embed` puts these beside the instruction templates of
:mod:`agent.dataset_templates`: the templates are written in one voice (polite imperatives), so
each intent gets exemplars here in the others: questions, clinicians' and patients' wording, terse
requests, odd verbs. ``{target}``-free: structure names are masked in the bank anyway. Written and
tuned against tests/agent_rules_devset.py only, never the held-out sets. Intent "none" means a
question answered without a tool.
"""
from __future__ import annotations

INTENT_EXEMPLARS: dict[str, tuple[str, ...]] = {
    "segment": (
        "Make the structure stand out from everything around it.",
        "I want every pixel of the structure coloured in.",
        "Separate the structure from its surroundings.",
        "Give me the exact shape of the structure.",
        "Cut the structure out of the picture.",
        "Which pixels belong to the structure?",
        "Trace around the edge of the structure.",
        "I need the structure's outline for radiotherapy planning.",
        "Produce a label map.",
    ),
    "locate": (
        "Is there any structure here?",
        "Can you see a structure anywhere?",
        "Does the patient have a structure?",
        "Could there be a structure on this image?",
        "Tell me where the structure is.",
        "Which side is the structure on?",
        "Put a box on the structure.",
        "Is the structure present or absent?",
        "Has a structure developed?",
        "Any sign of a structure?",
    ),
    "measure": (
        "How much space does the structure take up?",
        "What does the structure measure?",
        "Is the structure bigger than normal?",
        "Give me numbers for the structure.",
        "How many millilitres is the structure?",
        "Work out the structure's volume.",
        "What is the size of the structure in centimetres?",
        "How heavy or big is the structure?",
    ),
    "classify": (
        "What kind of machine made this image?",
        "Was this done on a scanner or an X-ray machine?",
        "Which imaging type is this?",
        "What are we looking at, an image or an image?",
        "Name the kind of image.",
        "Which part of the body is shown?",
        "What sort of image is this one?",
        "Tell me what type of image this is.",
    ),
    "report": (
        "What would a radiologist say about this image?",
        "Give me your read.",
        "What do you see on this image?",
        "Is anything abnormal?",
        "Go through this image and tell me what you find.",
        "I'd like your opinion on this image.",
        "Please provide the findings.",
        "Can you review this image for me?",
        "Is my image normal?",
        "What does this image show?",
        "Any concerns on this image?",
        "Tell me what is going on in this image.",
    ),
    "knowledge": (
        "How serious is emphysema?",
        "What should patients with pneumonia do?",
        "Is stroke treatable?",
        "How do doctors treat asthma?",
        "Why does splenomegaly happen?",
        "What is the outlook for sarcoidosis?",
        "Which specialist treats glioblastoma?",
        "Can you explain cirrhosis simply?",
        "What medicine is given for tuberculosis?",
        "How long does pneumonia last?",
    ),
    "none": (
        "Hello.",
        "Thank you.",
        "Is the image rotated?",
        "Thanks a lot!",
        "Okay.",
        "Good evening.",
        "What is the slice thickness?",
        "Is the image sharp enough?",
        "Was the patient lying flat?",
        "How many pixels wide is the image?",
        "How many frames does the series have?",
        "When was this image acquired?",
        "Is there an annotation on the image?",
    ),
}
