"""Keyword tables of the rule-based planner (data, not code): intents, target terms, tool choices.

Patterns are case-insensitive regular expressions. Extending the planner to a new phrasing or a
new structure is an edit here, with a line in tests/test_agent_rules_*.py.
"""
from __future__ import annotations

#: Shorthand rewritten before anything else is read: (pattern, replacement), in order. Radiologist
#: abbreviations ("r/o", "?PTX", "seg", "vols") become the words the intent tables know.
SHORTHAND: tuple[tuple[str, str], ...] = (
    (r"(?<![\w?])\?\s*(?=[a-z])", "query "),
    (r"\br/o\b|\brule out\b", "rule out"),
    (r"\bseg\b", "segment"),
    (r"\bvols?\b", "volume"),
    (r"\bpls\b|\bplz\b", "please"),
    (r"\bu\b", "you"),
    (r"\bddx\b", "differential diagnosis"),
    (r"\bcxr\b", "chest x-ray"),
    (r"\bptx\b", "pneumothorax"),
    (r"\bpe\b", "pulmonary embolism"),
    (r"\bggos?\b", "ground-glass opacity"),
    (r"(?<=[a-z])\s*\+\s*(?=[a-z])", " and "),
)

#: Intent words a misspelt token is corrected to (one edit away: insertion, deletion, substitution,
#: transposition), when the token is not itself a word below or in TYPO_PROTECTED.
TYPO_TARGETS: tuple[str, ...] = (
    "segment", "segmentation", "outline", "delineate", "contour", "locate", "localise", "localize",
    "where", "detect", "measure", "measurement", "measurements", "volume", "volumes", "quantify",
    "classify", "modality", "report", "findings", "impression", "summarise", "summarize",
    "treatment", "symptoms", "explain", "lungs", "liver", "kidney", "kidneys", "spleen", "pancreas",
    "tumour", "tumor", "nodule", "lesion",
)

#: Real words one edit away from a TYPO_TARGETS word: never "corrected".
TYPO_PROTECTED = frozenset({
    "were", "here", "there", "whore", "wheres", "lung", "lunges", "liner", "lover", "river", "sliver",
    "deliver", "tumours", "tumors", "nodules", "lesions", "reports", "report", "volume", "volumes",
    "measured", "measures", "treatments", "explains", "detects", "locates", "located", "outlines",
    "contours", "segments", "kidney", "modal", "classic", "clarify",
})

#: Words just before an intent keyword (at most NEGATION_WINDOW words before it, in its clause)
#: that cancel the ask: "don't segment", "no need for a report", "skip the measurements".
NEGATION_CUES = (
    r"\b(?:don'?t|do not|does not|doesn'?t|not|no|without|skip(?:ping)?|instead of|rather than|never"
    r"|no need (?:to|for)|not interested in|no interest in|forget|omit|leave out)\b"
)
NEGATION_WINDOW = 4

#: Where an instruction splits into clauses (sentences, ", and", " and then", " as well as"...).
CLAUSE_SPLIT = (
    r"[.;?!]+\s*|\s*,\s*(?:and\s+|then\s+|also\s+)*|\s+and\s+(?:then\s+|also\s+)?"
    r"|\s+then\s+|\s+as well as\s+|\s+plus\s+|\s+along with\s+|\s+after that\s+|\s+[-\u2013\u2014]+\s+"
)

#: Intent -> patterns (the first that matches a clause counts).
INTENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "segment": (
        r"\bsegment\w*", r"\boutlin\w*", r"\bdelineat\w*", r"\bcontour\w*", r"\bmask\w*",
        r"\bborders?\b", r"\bboundar(?:y|ies)\b", r"\bcut out\b", r"\bisolat\w*", r"\bpixel[- ]?(?:wise|level)\b",
        r"\btrac(?:e|ing)\b", r"\bshade\b", r"\bcolou?r in\b", r"\bmap out\b", r"\bdraw (?:around|the (?:edges?|outline))",
        r"\bextent of\b", r"\bseparate\b", r"\bcarv(?:e|ing)\b", r"\bextract\w*",
        r"\bpaint\w*", r"\blabel ?maps?\b",
    ),
    "locate": (
        r"\blocat\w*", r"\blocali[sz]\w*", r"\bdetect\w*", r"\bfind\b", r"\bwhere\b", r"\bbounding[- ]box\w*",
        r"\bbox(?:es)? (?:around|over)\b", r"\bpoint (?:out|to)\b", r"\bspot\b", r"\bpinpoint\w*",
        r"\b(?:position|location|site) of\b", r"\bground(?:ing|ed)?\b(?![- ]glass)", r"\bis there (?:a|an|any)\b", r"\bare there(?: any)?\b",
        r"\bmark\b", r"\bhighlight\w*", r"\bshow me where\b", r"\bsearch for\b", r"\blook for\b",
        r"\bwhereabouts\b", r"\bscan for\b", r"\bcircl\w*", r"\bindicat\w*", r"\bpick out\b",
        r"\bbox(?:es)?\b", r"\brule out\b", r"\b(?:check|assess|evaluate|eval|screen)(?:ing)? for\b", r"\bflag\w*",
        r"\b(?:which|what) (?:part|region|area|side|quadrant|lobe|portion)\b",
    ),
    "measure": (
        r"\bmeasur\w*", r"(?<!ct )(?<!mr )(?<!3d )(?<!this )(?<!whole )\bvolumes?\b(?! rendering)", r"\bhow (?:big|large)\b", r"\bsizes?\b",
        r"\bquantif\w*", r"\bmean hu\b", r"\b(?:density|attenuation|hounsfield)\b", r"\bcapacity\b",
        r"\bmillilit\w*", r"\bhow much air\b", r"\bdiameters?\b", r"\bdimensions?\b", r"\bvolumetr\w*",
        r"\bhow (?:wide|long|thick|tall|deep)\b", r"\bhu\b", r"\b(?:ml|cc)\b",
    ),
    "classify": (
        r"\bmodalit\w*", r"\bclassif\w*", r"\bcategori[sz]\w*",
        r"\b(?:what|which) (?:type|kind|sort) of (?:image|scan|imaging|study|picture|exam|examination|modality)",
        r"\bimaging (?:technique|type|method|test)\b", r"\bwhat (?:imaging|scan)\b",
        r"\b(?:x-?ray|ct|mri?|ultrasound|radiograph|pet) or (?:an? )?(?:x-?ray|ct|mri?|ultrasound|radiograph|pet)\b",
        r"\bwhat (?:body part|organ|region|anatomy) (?:is|does|do)\b", r"\bbody (?:part|region)\b",
        r"\bidentify the (?:type|modality|imaging|kind)\b", r"\bwhat is this (?:image|scan|picture)\b",
        r"\b(?:what|which) (?:type|kind|sort|category|class)e?s? of (?:\w+ ){0,2}(?:image|scan|imaging|study|picture|exam\w*|modality|data)",
        r"\bimage (?:category|type|class|kind)\b", r"\bcategory\b",
        r"\bis (?:this|it) (?:image |scan |study |picture |exam )?(?:an? )?(?:ct|mri?|x-?ray|ultrasound|radiograph|pet|mammogram)\b",
        r"\bhow was (?:this|the) (?:image|scan|picture) (?:acquired|taken|made|obtained)",
        r"\bwhat am i (?:looking at|seeing|viewing)\b", r"\bwhat is this (?:an? )?(?:image|scan|picture|photo) of\b",
        r"\bscanner\b", r"\bused to (?:acquire|take|obtain|make|produce)\b",
        r"\b(?:which|what) (?:exam|examination|study|scan) is (?:this|it)\b",
    ),
    "report": (
        r"\breports?\b(?! (?:on )?(?:the |its |their )?(?:size|volume|dimension|measure|area|diameter|length|location|position))",
        r"\bfindings\b", r"\bimpressions?\b", r"\bwrite[- ]?up\b",
        r"\bdescribe (?:the|this|what)(?: \w+)? (?:image|scan|study|x-?ray|radiograph|film|ct|mri|findings)",
        r"\bdictat\w*", r"\bsummari[sz]e (?:the |this )?(?:image|scan|study|x-?ray|radiograph|film)",
        r"\binterpret\w*", r"\bread (?:this|the) (?:film|study|image|x-?ray|radiograph|scan)",
        r"\bradiolog\w* (?:read|assessment|evaluation|opinion)", r"\bmedical (?:assessment|evaluation|analysis)\b",
        r"\bdiagnostic (?:summary|report|read)", r"\b(?:preliminary|wet|quick|formal|full) read\b",
        r"\bassessment\b", r"\bopinion\b", r"\bwhat do you (?:see|think|make of)\b", r"\bsummary of (?:this|the) (?:study|image|scan|x-?ray|radiograph|film|exam)",
        r"\bsummar(?:i[sz]e|y)\b", r"\bwrite (?:it |this |that )?up\b", r"\b(?:your|a|the) read\b",
        r"\b(?:what'?s|what is|anything|something) (?:abnormal|wrong)\b", r"\bwhat you (?:see|think|notice)\b",
        r"\b(?:your|the) differential\b", r"\breview (?:this|the)\b", r"\blook over\b", r"\bnormal or abnormal\b",
    ),
    "knowledge": (
        r"\bwhat (?:is|are) (?:a |an |the )?", r"\bexplain\w*", r"\btreat\w*", r"\btherap\w*",
        r"\bsymptoms?\b", r"\bcauses?\b", r"\bprognos\w*", r"\brisk factors?\b", r"\bmanag\w*", r"\bdefin\w*",
        r"\btell me about\b", r"\bmedications?\b", r"\bcomplications?\b", r"\bdiagnos\w*", r"\bsigns of\b",
        r"\bguidelines?\b", r"\bhow (?:common|serious|dangerous)\b",
        r"\bwhy (?:do|does|is|are|did|would)\b", r"\bprevent\w*", r"\bdifference between\b",
        r"\bhow (?:do|does|can) (?:people|patients|someone|one) (?:get|develop|catch)\b", r"\bepidemiolog\w*",
        r"\bwhat does .+ mean\b", r"\bmeaning of\b", r"\bpatients? with\b", r"\bavoid\b",
        r"\bcur(?:e|es|able|ed)\b", r"\bsurvival\b", r"\bcontagious\b", r"\bhereditary\b", r"\bpathophysiolog\w*",
        r"\bclinical (?:features|presentation|signs)\b", r"\bdrugs?\b", r"\bfirst-line\b",
        r"\bwhat'?s (?:a |an |the )?", r"\breversible\b", r"\blife expectancy\b", r"\bwho (?:gets|develops)\b",
        r"\bat risk\b", r"\b(?:fatal|deadly|lethal)\b", r"\bpresentation\b", r"\bstag(?:es?|ing)\b", r"\bbiops\w*",
        r"\bwork(?:ed)?[- ]?up\b", r"\bpatholog\w*", r"\bantibiotics?\b", r"\bdifferential (?:diagnos\w* )?(?:for|of)\b",
        r"\bwhen should\b",
    ),
}

#: Patterns that count for an intent only when their clause names a known target term
#: ("any nodules?" is a detection request; "any idea?" is not).
WEAK_INTENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "locate": (
        r"\bany\b", r"\bshow\b", r"\bvisible\b", r"\bpresent\b", r"\bsee\b", r"\bidentify\b", r"\bcontains?\b",
        r"\bquery\b",
    ),
    "segment": (r"\blabel\b", r"\bpixels?\b", r"\bregion\b"),
}

#: Knowledge words that keep a retrieval ask even next to image tasks or "this image".
KNOWLEDGE_STRONG = (
    r"\b(?:treat\w*|therap\w*|symptoms?|causes?|prognos\w*|risk factors?|manag\w*|medications?"
    r"|complications?|guidelines?|how (?:common|serious|dangerous)|prevent\w*|why (?:do|does|is|are|did|would)"
    r"|avoid|patients? with|cur(?:e|es|able|ed)|survival|contagious|hereditary|drugs?|reversible|life expectancy"
    r"|at risk|fatal|deadly|lethal|stag(?:es?|ing)|biops\w*|patholog\w*|antibiotics?|differential (?:diagnos\w* )?(?:for|of))\b"
    r"|\bwhat does .+ mean\b"
)

#: Words that point at the image itself (a question about it is visual, not encyclopaedic).
DEICTIC = (
    r"\b(?:this|these|shown|visible|seen|here|slices?|thickness|spacing|resolution|pixels?|orientation"
    r"|window\w*|series|matrix|field of view|fov|dimensions?)\b"
    r"|\bthe (?:image|scan|picture|study|radiograph|film|x-?ray|ct|mri)\b"
)

#: Intents that need a target; without one they inherit the previous clause's targets.
TARGET_REQUIRED = frozenset({"segment", "locate", "measure"})

#: An ask of a listed intent is dropped when an ask of the key intent covers its targets.
SUPPRESSES: dict[str, tuple[str, ...]] = {
    "segment": ("locate",),
    "measure": ("locate",),
}

#: Known structures: (pattern, canonical prompt). Longer matches win over overlapping shorter ones.
#: The target meaning "every structure the tool knows" (the 3D tool then gets no label filter).
ALL_STRUCTURES = "all organs"

TARGET_TERMS: tuple[tuple[str, str], ...] = (
    (r"\b(?:all|every|each)(?: of)? (?:the )?(?:[a-z]+ )?(?:organs?|structures?|anatom\w*)\b|\beverything\b|\bmulti-?organ\b", ALL_STRUCTURES),
    (r"\b(?:lung|pulmonary) nodules?\b", "nodule"),
    (r"\b(?:brain|liver|kidney|renal|hepatic|lung) (?:tumou?rs?|masses)\b", "tumor"),
    (r"\b(?:brain|liver|kidney|renal|hepatic|lung|skin) lesions?\b", "lesion"),
    (r"\bpleural effusions?\b", "effusion"),
    (r"\bhead of (?:the )?femur\b|\bfemoral heads?\b", "head of femur"),
    (r"\badrenal(?: glands?)?\b|\badrenals\b", "adrenal gland"),
    (r"\bgall ?bladder\b", "gallbladder"),
    (r"\b(?:urinary )?bladder\b", "bladder"),
    (r"\blungs?\b|\bpulmonary\b", "lung"),
    (r"\bliver\b|\bhepatic\b", "liver"),
    (r"\bspleen\b|\bsplenic\b", "spleen"),
    (r"\bkidneys?\b|\brenal\b", "kidney"),
    (r"\bpancrea\w*", "pancreas"),
    (r"\bheart\b|\bcardiac\b", "heart"),
    (r"\bbrain\b|\bcerebr\w*", "brain"),
    (r"\bstomach\b|\bgastric\b", "stomach"),
    (r"\baort\w*", "aorta"),
    (r"\b(?:o)?esophag\w*", "esophagus"),
    (r"\bcolon\b", "colon"),
    (r"\bduoden\w*", "duodenum"),
    (r"\bprostat\w*", "prostate"),
    (r"\bintestin\w*|\bbowels?\b", "intestine"),
    (r"\brect(?:um|al)\b", "rectum"),
    (r"\btrachea\w*", "trachea"),
    (r"\btumou?rs?\b|\bneoplasms?\b|\bmalignan\w*", "tumor"),
    (r"\bnodules?\b", "nodule"),
    (r"\blesions?\b", "lesion"),
    (r"\bmass(?:es)?\b", "mass"),
    (r"\bpolyps?\b", "polyp"),
    (r"\bcells?\b|\bnucle(?:i|us)\b", "cell"),
    (r"\bcysts?\b", "cyst"),
    (r"\bfractures?\b", "fracture"),
    (r"\beffusions?\b", "effusion"),
    (r"\bpneumothora\w*", "pneumothorax"),
    (r"\bh(?:a)?emorrhag\w*|\bbleed\w*", "hemorrhage"),
    (r"\bopacit\w*", "opacity"),
    (r"\bconsolidation\w*", "consolidation"),
)

#: Organs a 3D organ segmentation network usually knows (used when its schema has no enum).
ORGANS_3D = frozenset({
    "liver", "spleen", "kidney", "pancreas", "lung", "heart", "stomach", "gallbladder", "aorta",
    "esophagus", "bladder", "duodenum", "adrenal gland", "colon", "brain", "prostate", "intestine",
    "rectum", "trachea", "head of femur",
})

#: Intent -> candidate tools in order of preference, each with the named conditions it needs
#: (see ``agent.planners.rules.CONDITIONS``). The first available candidate whose conditions hold wins.
TOOL_CHOICES: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "segment": (
        ("ct lung segmentation", ("lung_target", "ct_volume")),
        ("organ segmentation 3d", ("volume", "organ_targets")),
        ("grounding dino + MedSAM", ("has_target",)),
        ("ct lung segmentation", ("ct_volume", "chest")),
    ),
    "measure": (
        ("ct lung segmentation", ("lung_target", "ct_volume")),
        ("organ segmentation 3d", ("volume", "organ_targets")),
        ("grounding dino + MedSAM", ("has_target",)),
        ("ct lung segmentation", ("ct_volume", "chest")),
    ),
    "locate": (
        ("grounding dino", ("has_target",)),
        ("grounding dino + MedSAM", ("has_target",)),
    ),
    "classify": (
        ("BiomedClip", ()),
        ("metadata classification", ()),
    ),
    "report": (("report generation", ()),),
    "knowledge": (("retrieval", ()),),
}

#: When an instruction has no recognisable ask: (conditions, intent, targets) tried in order.
DEFAULT_ASKS: tuple[tuple[tuple[str, ...], str, tuple[str, ...]], ...] = (
    (("ct_volume", "chest_words"), "measure", ("lung",)),
)

#: API_params property name -> what the planner puts there.
PARAM_ROLES: dict[str, str] = {
    "image": "image",
    "image_path": "image",
    "img": "image",
    "prompts": "targets",
    "prompt": "targets",
    "text_prompt": "targets",
    "text_prompts": "targets",
    "caption": "targets",
    "organs": "targets",
    "structures": "targets",
    "targets": "targets",
    "query": "question",
    "question": "question",
    "instruction": "question",
    "indication": "question",
}

#: Tools that take other tools' outputs (API_name -> the param receiving ``{tool: summary}``). When
#: other tools are planned too, these run in the next round, on their results.
DEFERRED_TOOLS: dict[str, str] = {
    "report generation": "findings",
}

#: Per-tool overrides of PARAM_ROLES (a tool whose property name means something else there).
PARAM_ROLES_BY_TOOL: dict[str, dict[str, str]] = {
    "organ segmentation 3d": {"labels": "targets"},
}

#: How each intent reads in the planner's thoughts.
INTENT_WORDING: dict[str, str] = {
    "segment": "segment",
    "locate": "locate",
    "measure": "measure",
    "classify": "identify the image type",
    "report": "write a report",
    "knowledge": "answer a medical knowledge question",
}

#: Key suffix -> unit, for stating tool results in words (``left_volume_ml`` -> "left volume ... mL").
UNIT_SUFFIXES: dict[str, str] = {
    "ml": "mL", "hu": "HU", "mm": "mm", "cm": "cm", "mm2": "mm2", "mm3": "mm3", "cm3": "cm3",
    "pct": "%", "percent": "%", "s": "s",
}

#: Words skipped when a target is read as a free phrase after the intent keyword.
PHRASE_STOP = frozenset({
    "the", "a", "an", "any", "all", "this", "these", "that", "those", "in", "on", "of", "from", "within",
    "please", "for", "me", "us", "image", "images", "scan", "scans", "picture", "its", "their", "it", "them",
    "with", "to", "and", "is", "are", "there", "out", "up", "around", "each", "both", "visible", "shown",
    "seen", "present", "can", "you", "could", "would", "will", "i", "want", "need", "study", "series",
    "x-ray", "xray", "ct", "mri", "mr", "radiograph", "film", "volume", "slice", "slices", "here", "where",
    "located", "be", "do", "does", "show", "see", "at", "by", "into", "onto", "over", "under",
})

#: Extra labelled exemplars for the embedding fallback (agent.planners.intent_embed), beside the
#: instruction templates: phrasings the templates lack. Tuned on tests/agent_rules_devset.py only.
#: Intent "none" means a question answered without a tool.
INTENT_EXEMPLARS: dict[str, tuple[str, ...]] = {
    "none": (
        "Hello.",
        "Thank you.",
        "Is the image rotated?",
    ),
}
