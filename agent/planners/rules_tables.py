"""Keyword tables of the rule-based planner (data, not code): intents, target terms, tool choices.

Patterns are case-insensitive regular expressions. Extending the planner to a new phrasing or a
new structure is an edit here, with a line in tests/test_agent_rules_*.py.
"""
from __future__ import annotations

from image_model.codes import structure_names

#: Shorthand rewritten before anything else is read: (pattern, replacement), in order. Radiologist
#: abbreviations ("r/o", "?PTX", "seg", "vols") become the words the intent tables know.
SHORTHAND: tuple[tuple[str, str], ...] = (
    (r"(?<![\w?])\?\s*(?=[a-z])", "query "),
    (r"\br/o\b|\brule out\b", "rule out"),
    (r"\bseg\b", "segment"),
    (r"\bvols?\b", "volume"),
    (r"\bpls\b|\bplz\b", "please"),
    (r"\bprelim\b", "preliminary"),
    (r"\bmeas\b", "measure"),
    (r"\bloc\b", "locate"),
    (r"\bimp\b", "impression"),
    (r"\bsegs\b", "segment"),
    (r"\bmod\b", "modality"),
    (r"\brep\b", "report"),
    (r"\bu\b", "you"),
    (r"\bddx\b", "differential diagnosis"),
    (r"\bcxr\b", "chest x-ray"),
    (r"\bptx\b", "pneumothorax"),
    (r"\bpe\b", "pulmonary embolism"),
    (r"\bggos?\b", "ground-glass opacity"),
    (r"\brpt\b", "report"),
    (r"\bbodypart\b", "body part"),
    (r"\bdis\b", "this"),
    (r"\bcat scan\b|\bcomputed tomography\b|\bcomputeri[sz]ed tomography\b", "ct"),
    (r"\bmagnetic resonance(?: imaging)?\b", "mri"),
    (r"\bw[ao]t\b", "what"),
    (r"^\s*were(?= (?:is|are|was|'?s)\b)", "where"),
    (r"\bmets\b", "metastases"),
    (r"\babdo\b", "abdomen"),
    (r"\baaa\b", "abdominal aortic aneurysm"),
    (r"\bett\b", "endotracheal tube"),
    (r"\bngt?\b", "nasogastric tube"),
    (r"\b(?:rul|rml|rll)\b", "right lung"),
    (r"\b(?:lul|lll)\b", "left lung"),
    (r"(?<=[a-z])\s*\+\s*(?=[a-z])", " and "),
)

#: Verbs whose regular inflections (-s, -es, -ed, -d, -ing, a doubled final consonant, y -> ies/ied)
#: are read as the base form, so one pattern per verb serves "writing up", "drawn around", "mapped".
LEMMA_BASES: tuple[str, ...] = (
    "write", "draw", "read", "outline", "trace", "shade", "colour", "color", "map", "spot", "point",
    "pick", "search", "look", "box", "describe", "summarise", "summarize", "review", "check", "screen",
    "show", "label", "separate", "isolate", "cut", "carve", "walk", "talk", "go", "size", "demarcate",
    "classify", "categorise", "categorize", "identify", "tell", "give", "sketch",
)

#: Irregular forms of LEMMA_BASES verbs.
LEMMA_IRREGULAR: dict[str, str] = {
    "wrote": "write", "written": "write", "drew": "draw", "drawn": "draw", "went": "go", "gone": "go",
    "told": "tell", "gave": "give", "given": "give",
}

#: Inflected-looking words that are not inflections of a LEMMA_BASES verb (or must stay as written:
#: "findings" is a report word, "shown" points at the image).
LEMMA_KEEP = frozenset({"shown", "findings", "classes"})

#: Intent words a misspelt token is corrected to (one edit away: insertion, deletion, substitution,
#: transposition), when the token is not itself a word below or in TYPO_PROTECTED.
TYPO_TARGETS: tuple[str, ...] = (
    "segment", "segmentation", "outline", "delineate", "contour", "locate", "localise", "localize",
    "where", "detect", "measure", "measurement", "measurements", "volume", "volumes", "quantify",
    "classify", "modality", "report", "findings", "impression", "summarise", "summarize",
    "treatment", "symptoms", "explain", "lungs", "liver", "kidney", "kidneys", "spleen", "pancreas",
    "tumour", "tumor", "nodule", "lesion", "which", "image", "between", "difference", "stomach", "aorta",
    "prostate", "gallbladder", "bladder", "adrenal", "oesophagus", "esophagus", "something", "anything",
)

#: Words a token is corrected to when it is exactly them with two adjacent letters swapped ("waht",
#: "riks"): a swap rarely makes a real word, so short and common words are safe here.
SWAP_TARGETS: tuple[str, ...] = (
    "the", "how", "what", "where", "which", "this", "risk", "risks", "factors", "cause", "causes", "treat", "size",
    "scan", "image", "lung", "lungs", "brain", "heart", "show", "find", "mass", "cyst", "type",
    "normal", "report", "volume", "segment", "measure", "locate", "please", "liver", "kidney",
)

#: Real words one edit away from a TYPO_TARGETS word: never "corrected".
TYPO_PROTECTED = frozenset({
    "were", "here", "there", "whore", "wheres", "lung", "lunges", "liner", "lover", "river", "sliver",
    "deliver", "tumours", "tumors", "nodules", "lesions", "reports", "report", "volume", "volumes",
    "measured", "measures", "treatments", "explains", "detects", "locates", "located", "outlines",
    "contours", "segments", "kidney", "modal", "classic", "clarify", "witch", "whichever", "images",
    "imaged", "imago", "imager", "stomachs", "aortic", "prostrate", "ladder", "bladders", "adrenals",
})

#: Words just before an intent keyword (at most NEGATION_WINDOW words before it, in its clause)
#: that cancel the ask: "don't segment", "no need for a report", "skip the measurements".
NEGATION_CUES = (
    r"\b(?:don'?t|do not|does not|doesn'?t|not|no|without|skip(?:ping)?|instead of|rather than|never"
    r"|no need (?:to|for)|not interested in|no interest in|forget|omit|leave out)\b"
)
NEGATION_WINDOW = 4

#: Words just after an intent keyword that cancel the ask: "report not required", "segmentation
#: isn't needed", "measurements unnecessary".
POST_NEGATION_CUES = (
    r"^\W*(?:(?:is|are|was|will be)\s+)?(?:not\s+(?:\w+\s+)?(?:required|needed|necessary|wanted|requested)"
    r"|(?:isn'?t|aren'?t)\s+(?:\w+\s+)?(?:required|needed|necessary|wanted)|unnecessary|unneeded)\b"
)

#: Where an instruction splits into clauses (sentences, ", and", " and then", " as well as"...).
CLAUSE_SPLIT = (
    r"[.;?!]+\s*|\s*,\s*(?:and\s+|then\s+|also\s+)*|(?<!\bleft)(?<!\bright)\s+and\s+(?:then\s+|also\s+)?"
    r"|\s+then\s+|\s+as well as\s+|\s+plus\s+|\s+along with\s+|\s+after that\s+|\s+[-\u2013\u2014]+\s+"
)

#: A comma-separated piece that opens with one of these words continues the clause before it
#: ("the volume, roughly, of the right kidney"); so does a piece of one word ("roughly", "please").
CONTINUATION_WORDS = frozenset({
    "of", "in", "on", "for", "from", "within", "inside", "at", "with", "to", "into", "over", "by",
})

#: Body regions, as a user names them when asking which one an image shows ("chest or belly?").
BODY_REGION = (
    r"(?:head|skull|brain|cranial|neck|chest|thorax|thoracic|abdomen|abdominal|belly|tummy|stomach|pelvis|pelvic|hip"
    r"|spine|spinal|back|arm|leg|knee"
    r"|hand|wrist|foot|ankle|shoulder|elbow|limb|extremity)\b"
)

#: Intent -> patterns (the first that matches a clause counts).
INTENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "segment": (
        r"\bsegment\w*", r"\boutlin\w*", r"\bdelineat\w*", r"\bcontour\w*", r"\bmask\w*",
        r"\bborders?\b", r"\bboundar(?:y|ies)\b", r"\bcut out\b", r"\bisolat\w*", r"\bpixel[- ]?(?:wise|level)\b",
        r"\btrac(?:e|ing)\b", r"\bshade\b", r"\bcolou?r in\b", r"\bmap out\b", r"\bdraw (?:around|the (?:edges?|outline))",
        r"\bextent of\b", r"\bseparate\b", r"\bcarv(?:e|ing)\b", r"\bextract\w*",
        r"\bpaint\w*", r"\blabel ?maps?\b", r"\bdemarcat\w*", r"\bmargins?\b", r"\bedges?\b", r"\bsketch (?:around|out)\b",
        r"\bsilhouette of\b", r"\bfill in\b", r"\bpixels? (?:belonging|of|that|which|in|within|inside)\b",
        r"\bvoxels?\b", r"\bstand out\b", r"\bfrom the (?:background|rest)\b", r"\bcolou?r[- ]?(?:in|code\w*|each)\b",
        r"\b(?:its|their) own colou?rs?\b", r"\bcolou?r (?:it|them|that|this) in\b", r"\bshape of\b",
        r"\b3-?d (?:model|reconstruction|rendering|render|print)\b", r"\bcarve up\b", r"\bauto-?contour\w*", r"\bROIs?\b", r"\bregions? of interest\b",
    ),
    "locate": (
        r"\blocat\w*", r"\blocali[sz]\w*", r"\bdetect\w*", r"\bfind\b", r"\bwhere(?:'?s)?\b", r"\bbounding[- ]box\w*",
        r"\bbox(?:es)? (?:around|over)\b", r"\bpoint (?:me |us )?(?:out|to)\b", r"\bspot\b", r"\bpinpoint\w*",
        r"\b(?:position|location|site) of\b", r"\bground(?:ing|ed)?\b(?![- ]glass)", r"\bis there (?:a|an|any)\b", r"\bare there(?: any)?\b",
        r"\bmark\b", r"\bhighlight\w*", r"\bshow me where\b", r"\bsearch for\b", r"\blook for\b",
        r"\bwhereabouts\b", r"\bscan for\b", r"\bcircl\w*", r"\bindicat\w*", r"\bpick out\b",
        r"\bbox(?:es)?\b", r"\brule out\b", r"\b(?:check|assess|evaluate|eval|screen)(?:ing)? for\b", r"\bflag(?:ged|ging)?\b",
        r"\b(?:which|what) (?:part|region|area|side|quadrant|lobe|portion)\b(?! of (?:the |my )?(?:body|anatomy))",
        r"\bin what (?:place|location|position|spot)\b", r"\bin (?:which|what) [a-z]+ (?:is|are|was|were|lies|sits)\b",
        r"\b(?:which|what) (?:hemisphere|segment|level|compartment|zone|vertebra|rib|lobe)\b", r"\bsituated\b", r"\btips? of\b",
        r"\bcheck (?:whether|if)\b", r"\bwhether (?:there|it)\b", r"\bthere(?:'s| is| are) (?:a|an|any|some)\b",
        r"\bany (?:evidence|sign|signs|trace) of\b", r"\bevidence of\b", r"\bshow (?:me )?(?:the )?location\b",
        r"\bcoordinates?\b",
        r"\bidentify (?:the |its )?(?:region|area|location|position|site|spot)\b", r"\b(?:be|been|is|are|was|were) found\b",
    ),
    "measure": (
        r"\bmeasur\w*", r"(?<!ct )(?<!mr )(?<!3d )(?<!this )(?<!whole )\bvolumes?\b(?! rendering)", r"\bhow (?:big|large)\b", r"\bsizes?\b",
        r"\bquantif\w*", r"\bmean hu\b", r"\b(?:density|attenuation|hounsfield)\b", r"\bcapacity\b",
        r"\bmillilit\w*", r"\bhow much air\b", r"\bdiameters?\b", r"\bdimensions?\b", r"\bvolumetr\w*",
        r"\bhow (?:wide|thick|tall|deep|much space)\b", r"\bhow long\b(?! (?:does|do|did|will|would|can|could|should|until|before|after|to|has|have|they|it|he|she|you|i|we|till|until|(?:is|are) (?:the )?(?:recovery|healing|treatment|rehab\w*|stay|wait|course|survival))\b)",
        r"\bhu\b", r"\b(?:ml|cc|cm3|mm3|litres?|liters?)\b", r"\bestimat\w*", r"\bcalculat\w*", r"\bcomput\w*",
        r"\bwhat size\b", r"\bsized?\b", r"\bcubic\b", r"\b(?:centi|milli)met(?:re|er)s?\b", r"\bmagnitude\b", r"\bmetrics?\b", r"\bnumbers? (?:for|on)\b",
        r"\b(?:span|craniocaudal|length|width|height|long axis|short axis|longest axis)\b", r"\bhow many (?:cm|mm|ml|cc)\b",
        r"\b(?:in|how many) (?:cm|mm)\b",
    ),
    "classify": (
        r"\bmodalit\w*", r"\bclassif\w*", r"\bcategori[sz]\w*",
        r"\b(?:what|which) (?:type|kind|sort) of (?:image|scan|imaging|study|picture|exam|examination|modality)",
        r"\bimaging (?:technique|type|method|test)\b", r"\bwhat (?:imaging|scan)\b",
        r"\b(?:x-?ray|ct|mri?|ultrasound|radiograph|pet)(?: (?:scan|image|study|exam))? or (?:an? )?(?:x-?ray|ct|mri?|ultrasound|radiograph|pet)\b",
        r"\bwhat (?:body part|organ|region|anatomy) (?:is|does|do)\b", r"\bbody (?:part|region|area)\b",
        r"\bidentify the (?:type|modality|imaging|kind)\b", r"\bwhat is this (?:image|scan|picture)\b",
        r"\b(?:what|which) (?:type|kind|sort|category|class)e?s? of (?:\w+ ){0,2}(?:image|scan|imaging|study|picture|exam\w*|modality|data)",
        r"\bimage (?:category|type|class|kind)\b", r"\bcategory\b",
        (r"\bis (?:this|it)(?: one)? (?:image |scan |study |picture |exam )?(?:an? )?(?:ct|mri?|x-?ray|ultrasound|radiograph|pet|mammogram)\b"
        r"(?!(?: [\w-]+)? (?:normal|abnormal|ok|okay|clear|fine|healthy|unremarkable|alright)\b)"),
        r"\b(?:what|which) [a-z]{3,8} of (?:image|scan|imaging|picture|exam|study|radiograph) (?:is|was) (?:this|it)\b",
        r"\bhow was (?:this|the) (?:image|scan|picture) (?:acquired|taken|made|obtained)",
        r"\bwhat am i (?:look(?:ing)? at|seeing|viewing)\b",
        r"\b(?:scan|study|exam|examination|imaging|image|picture) (?:type|category|class|kind|modality)\b",
        r"\b(?:part|region|area|section) of (?:the |my |your |his |her )?body\b", r"\bwhich (?:organ|anatomy)\b",
        r"\b(?:type|kind|sort|category|form) of (?:\w+ )?(?:scan|image|imaging|study|exam\w*|picture|modality)\b",
        r"\bplain (?:film|x-?ray|radiograph)\b", r"\bmachine\b",
        r"^(?=.*\b(?:x-?ray|ct|mri?|ultrasound|radiograph|pet|mammogram)\b)\s*(?:(?:is it|or|an?|x-?ray|ct|mri?|ultrasound|radiograph|pet|mammogram)\b[\s,/]*)+$",
        r"\b(?:if|whether) (?:this|it) (?:is|was) (?:an? )?(?:ct|mri?|x-?ray|ultrasound|radiograph|pet|mammogram)\b",
        r"\b(?:what|which) (?:technique|method|technology|equipment|device)\b",
        r"\bproduced? (?:this|the) (?:image|scan|picture)\b",
        r"\b(?:taken|acquired|obtained|made|produced|performed|imaged) (?:with|on|using|by)\b",
        r"\bwhat (?:kind|type|sort) (?:is|was) (?:this|it)\b", r"\bwhich type is\b",
        r"\b(?:x-?ray|ct|mri?|ultrasound|radiograph|pet|mammogram) (?:or|vs\.?|versus) (?:an? )?(?:x-?ray|ct|mri?|ultrasound|radiograph|pet|mammogram)\b", r"\bwhat is this (?:an? )?(?:image|scan|picture|photo) of\b",
        r"\bscanner\b", r"\bused to (?:acquire|take|obtain|make|produce)\b",
        r"\b(?:which|what) (?:exam|examination|study|scan) is (?:this|it)\b",
        r"\b(?:part|region|area|section|bit) of (?:the |my )?anatomy\b",
        rf"\b{BODY_REGION}(?: (?:scan|image|film|study|x-?ray|ct|mri?))?,? or (?:my |the |an? )?{BODY_REGION}",
        r"\bused? to image\b",
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
        r"\b(?:walk|talk|take) (?:me|us) through\b", r"\bgo (?:through|over)\b", r"\bbottom line\b", r"\boverview\b",
        r"\brundown\b", r"\bconclusions?\b", r"\b(?:your|a|the) take on\b", r"\bgist\b", r"\bverdict\b",
        r"\bwhat (?:does|do|did) (?:this|the|my|our|these|his|her|it)\b(?: [\w-]+){0,3} (?:show|reveal|find|demonstrate|say)\b",
        r"\bwhat (?:this|the|my|our|his|her|it|they)\b(?: [\w-]+){0,3} (?:show|reveal|find|demonstrate|say)\b",
        r"\bexplain (?:the |my |these |his |her |our )?(?:results?|images?|scans?|x-?rays?|films?|findings|report)\b",
        r"\btell (?:me|us) (?:\w+ )?about (?:this|the|my|these|his|her|our) (?:image|scan|study|film|x-?ray|ct|mri|picture|radiograph)",
        r"\bread\b(?: \w+){0,2} (?:chest x-ray|film|study|image|x-?ray|radiograph|scan|ct|mri|mr|exam)\b",
        r"\b(?:results?|outcome) of (?:this|the|my)\b", r"\bwhat'?s going on\b", r"\banything (?:unusual|concerning|of note|worrying|suspicious)\b",
        r"\bkey (?:points|observations)\b", r"\bobservations\b", r"\bcomment\w* on\b", r"\bremarks?\b",
        (r"\b(?:if|whether|is|does|do|did) (?:this|the|my|our|his|her)(?: [\w-]+){0,2} (?:scan|image|film|x-?ray|study|mri|ct|radiograph|picture|results?|exam)"
        r"(?: [\w-]+)? (?:is |look |looks |seem |seems |appear |appears )?(?:\w+ )?(?:normal|healthy|ok|okay|fine|clear|abnormal|alright|all right|unremarkable)\b"),
        r"\bwhat (?:can|could|do|did) you (?:see|notice|find|make out)\b", r"\bwhat (?:is|does) show(?:ing)? (?:this|the|my)\b",
        r"\b(?:something|anything) (?:off|amiss|wrong|abnormal|not right)\b", r"\bclean (?:film|scan|study|x-?ray|image)\b",
        r"\b(?:does|did|do) (?:it|this|everything|all|that) (?:look|seem|appear) (?:\w+ )?(?:normal|healthy|ok|okay|fine|clear|abnormal|alright|all right|unremarkable)\b",
        r"\b(?:your|any) thoughts\b", r"\b(?:everything|anything) (?:you )?(?:see|notice|observe)\b", r"\bpreliminary\b", r"\bwhat'?s (?:there|here|going on|happening|visible)\b",
    ),
    "knowledge": (
        r"\bwhat (?:is|are) (?!(?:it|this|that|these|those|they)\b)(?:a |an |the )?", r"\bexplain\w*(?! (?:(?:it|this|that|them) )?(?:(?:to )?(?:me|us) )?(?:in (?:simple|plain|lay(?:man'?s?)?|easy|everyday|simpler) (?:words|english|terms|language)|simply)\b)",
        r"\btreat\w*", r"\btherap\w*",
        r"\bsymptoms?\b", r"\bcauses?\b", r"\bprognos\w*", r"\brisk factors?\b", r"\bmanag\w*", r"\bdefin\w*",
        r"\btell me about\b", r"\bmedications?\b", r"\bcomplications?\b", r"\bdiagnos\w*", r"\bsigns of\b",
        r"\bguidelines?\b", r"\bhow (?:common|serious|dangerous)\b",
        r"\bwhy (?:do|does|is|are|did|would)\b", r"\bprevent\w*", r"\bdifference between\b",
        r"\bhow (?:do|does|can) (?:people|patients|someone|one|you|i) (?:\w+ly )?(?:get|develop|catch)\b",
        r"\brevers(?:ed?|al)\b", r"\bepidemiolog\w*",
        r"\bwhat does .+ mean\b", r"\bmeaning of\b", r"\bpatients? with\b", r"\bavoid\b",
        r"\bcur(?:e|es|able|ed)\b", r"\bsurvival\b", r"\bcontagious\b", r"\bhereditary\b", r"\bpathophysiolog\w*",
        r"\bclinical (?:features|presentation|signs)\b", r"\bdrugs?\b", r"\bfirst-line\b",
        r"\bwhat'?s (?:a |an |the )?", r"\breversible\b", r"\blife expectancy\b", r"\bwho (?:gets|develops)\b",
        r"\bat risk\b", r"\b(?:fatal|deadly|lethal)\b", r"\bpresentation\b", r"\bstag(?:es?|ing)\b", r"\bbiops\w*",
        r"\bwork(?:ed)?[- ]?up\b", r"\bpatholog\w*", r"\bantibiotics?\b", r"\bdifferential (?:diagnos\w* )?(?:for|of)\b",
        r"\bwhen should\b", r"\bhow long (?:does|do|did|will|would|can|could|should|until|before|after|to|has|have|they|it|he|she|you|i|we|(?:is|are) (?:the )?(?:recovery|healing|treatment|rehab\w*|stay|wait|course|survival))\b",
        r"\bworr(?:y|ied|ying)\b", r"\bgo away\b", r"\brecommend\w*", r"\boutlook\b", r"\bheal(?:s|ed|ing)?\b", r"\brecover\w*",
        r"\bmortality\b", r"\bcommon (?:in|among)\b", r"\bwhat happens\b", r"\bside effects?\b",
        r"\btell (?:me|us) (?:\w+ )?about\b", r"\binfo(?:rmation)? (?:about|on)\b", r"\blearn about\b", r"\bmore about\b",
        r"\bcourse of\b", r"\bnatural history\b", r"\bserious\b", r"\bdangerous\b",
        r"\bleads? to\b", r"\btriggers?\b", r"\bresponsible for\b", r"\bcontribut\w* to\b", r"\bdescribe\b", r"\brisks?\b",
        r"\bchances? of\b", r"\bhow (?:fast|quickly|often|soon|likely)\b", r"\brun in (?:the )?famil\w*",
        r"\bgenetic\b", r"\binherit\w*", r"\bpainful\b",
        r"\bhow (?:does|do|did|can|could|would) (?:an? |the )?[\w-]+(?: [\w-]+)? (?:develop|form|spread|progress|occur|happen|start|arise)\b",
        r"\bsurveillance\b", r"\b(?:follow-?up|screening|surveillance|imaging) (?:intervals?|schedule|frequency)\b",
        r"\bmost (?:often|commonly|frequently)\b", r"\bmeaning\b", r"\bwith (?:age|ageing|aging)\b", r"\bage-related\b",
        (r"\b(?:can|could|should|may|when can) (?:i|he|she|they|we|you|patients?|one) (?:still |safely )?(?:go back|return|exercise|fly|drive"
        r"|work|play|travel|swim|lift)\b"),
        r"\b(?:usually|typically|generally|commonly) (?:cancerous|benign|malignant|serious|fatal|hereditary|treatable|curable|painful|dangerous)\b",
        r"\b(?:is|are) [\w-]+ (?:usually|typically|generally|always|often|ever|normally)\b",
        r"\bwhich (?:cancers|tumou?rs|diseases|conditions|infections|organisms|bacteria|viruses|drugs|medications|patients|people)\b",
        r"\bwhat (?:can|should|could) (?:he|she|i|they|we|you|one|patients?) do\b", r"\bbreathe better\b",
        (r"\bhow (?:is|are|was|were) (?:an? |the )?[\w-]+(?: [\w-]+){0,3} (?:repaired|treated|managed|removed|fixed|operated on"
        r"|diagnosed|prevented|cured|done|performed|staged|followed up|drained|excised|resected|ablated|embolised|embolized"
        r"|stented|coiled|clipped|monitored|biopsied|detected|screened for|graded|classified)\b"),
        r"\brepair\w*", r"\bsurg(?:ery|ical (?:options?|treatment|repair))\b", r"\boperations?\b", r"\bprocedures?\b",
        r"\bwhat (?:an? |the )?(?!(?:it|this|that|these|those|they|you|i|we)\b)[\w-]+(?: [\w-]+){0,3} (?:is|are|means?)\s*[.?!]*$",
    ),
}

#: Patterns that count for an intent only when their clause names a known target term
#: ("any nodules?" is a detection request; "any idea?" is not).
WEAK_INTENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "locate": (
        r"\bany\b", r"\bshow\b", r"\bvisible\b", r"\bpresent\b", r"\bsee\b", r"\bidentify\b", r"\bcontains?\b",
        r"\bquery\b", r"\b(?:has|have|got) (?:\w+ ){0,3}(?:a|an|any)\b", r"\bsuspect\w*", r"\bsuspicious\b",
        r"\bsigns? of\b", r"\b(?:clear|free) of\b", r"\b(?:is|are|was|were) there\b", r"\banything\b", r"\bgrow\w*", r"\bthere be\b",
        r"\b(?:somewhere|anywhere|hiding|something)\b", r"\b(?:position|positioned|placement|placed|sited)\b",
        r"\btell (?:me|us) (?:if|whether)\b", r"\blet (?:me|us) know (?:if|whether)\b",
        r"\b(?:do|does|did) (?:i|he|she|they|we|you|it|the patient|patient|my \w+) (?:still )?have\b",
    ),
    "segment": (r"\blabel\b", r"\bpixels?\b", r"\bregion\b"),
    "report": (r"\b(?:look|is|are|seem)s? (?:\w+ )?(?:okay|ok|alright|all right|fine|normal|healthy)\b",),
    "measure": (
        r"\benlarge\w*", r"\bswollen\b", r"\bshrunk\w*", r"\batroph\w*", r"\b(?:bigger|larger|smaller)\b",
        r"\bnormal size\b", r"\bhypertroph\w*",
    ),
}

#: Findings (not anatomy): a clause naming only findings ("Fracture?", "?effusion", "any nodules")
#: asks where they are; a clause naming only organs ("lungs?") adds them to the asks around it.
FINDING_TARGETS = frozenset({
    "tumor", "nodule", "lesion", "mass", "polyp", "cyst", "fracture", "effusion", "pneumothorax",
    "hemorrhage", "opacity", "consolidation", "cell", "fluid", "metastasis", "abscess", "aneurysm",
    "infarct", "embolism", "thrombus", "stone", "kidney stone", "gallstone", "calcification",
    "obstruction", "perforation", "free air", "edema", "dissection", "hernia", "collection",
    "pneumonia", "empyema", "bulla", "cavity", "infection", "collapse", "stenosis", "dislocation", "central line",
    "endotracheal tube", "nasogastric tube", "chest drain", "pacemaker", "stent", "catheter",
})

#: Finding words recognised by their form (disease suffixes: appendicitis, glioma, atelectasis,
#: cardiomegaly, hydronephrosis, nephrolithiasis...): the matched word is the target. Words with
#: these endings that are no finding are excluded.
FINDING_FORM = (
    r"\b(?!(?:diagnosis|prognosis|osmosis|hypnosis|diploma|aroma|coma|stoma|soma|sarcasm|enthusiasm)\b)"
    r"[a-z]{3,}(?:itis|omas?|omata|osis|ectasis|megaly|iasis|ocele|ysms?|pathy|plasia|liths?)\b"
)

#: Words that may stand around the structure names of a bare clause ("query L effusion on film").
BARE_CLAUSE_WORDS = frozenset({
    "query", "left", "right", "l", "r", "bilateral", "both", "small", "large", "big", "new", "possible",
    "probable", "likely", "suspected", "acute", "chest", "x-ray", "film", "cxr", "ok", "now", "still",
    "again", "too", "also", "or", "and", "not", "lobe", "side", "upper", "lower", "mid",
    # modality and region prefixes of a request line: "CT head: bleed", "CT abdomen/pelvis query ..."
    "ct", "cta", "ctpa", "mr", "mri", "mra", "xr", "us", "pet", "head", "abdomen", "abdominal", "pelvis",
    "pelvic", "neck", "spine", "thorax", "thoracic", "brain", "kub", "contrast", "non-contrast", "plain",
})

#: A clause that opens like this states the clinical context ("65M smoker", "Known lung cancer",
#: "This is a follow-up MRI for a patient treated for ...", "I was told I have ..."): beside a real
#: ask, what only its weak words, knowledge words or its embedding suggest is context, not an ask.
CONTEXT_OPENING = (
    r"^(?:this (?:is|was)|these are|it (?:is|was)|it's|the patient|patient|pt|he|she|they|known|history|hx|h/o"
    r"|s/p|status post|post[- ]\w+|follow[- ]?up|previous|prior|background|clinical (?:details|history|info\w*)"
    r"|my (?:mum|mom|mother|dad|father|son|daughter|wife|husband|partner|child|baby|brother|sister|friend|grand\w+|aunt|uncle)"
    r"|i (?:was|have|had|got)|i'(?:ve|m) (?:been|got|had)|i(?: am|'m) (?!after|looking|hoping|wondering|asking|interested|keen)|we (?:are|were|have|had|suspect|think)"
    r"|my (?:doctor|gp|physician|consultant|surgeon)|our patient|elderly|diabetic|smoker|child|adult|male|female|man|woman"
    r"|\d+\s*-?\s*(?:y/?o|yo|yrs?|years?|[mf])\b|\d+-year-old)\b"
)

#: Within one clause, asks of a key intent win over those of the listed intents ("tell me what this
#: image shows: is it an MRI or a CT?" asks for the modality, not a report; "your differential for
#: this film" is a read of the image, not a textbook question).
CLAUSE_PRECEDENCE: dict[str, tuple[str, ...]] = {
    "classify": ("report",),
    "report": ("knowledge", "locate"),
}

#: Vague asks: patterns that ask for an intent only when the instruction asks nothing else ("have a
#: look at the film" alone wants a read; "have a look at the film and tell me whether there is a
#: pneumothorax" wants the pneumothorax found).
VAGUE_INTENT_PATTERNS: dict[str, tuple[str, ...]] = {
    "report": (
        r"\b(?:have|take) a (?:quick )?look\b", r"\blook at (?:this|the|my|our|these)\b", r"\bred flags?\b",
        r"\b(?:everything|all|it|this|things) (?:look )?(?:okay|ok|alright|all right|fine|normal|good)\b",
        r"\bcheck (?:this|it|these) (?:out|over)\b", r"\bcheck (?:over |out )?(?:this|the|my) (?:image|scan|film|x-?ray|study|ct|mri)\b",
    ),
}

#: Knowledge words that keep a retrieval ask even next to image tasks or "this image".
KNOWLEDGE_STRONG = (
    r"\b(?:treat\w*|therap\w*|symptoms?|causes?|prognos\w*|risk factors?|manag\w*|medications?"
    r"|complications?|guidelines?|how (?:common|serious|dangerous)|prevent\w*|why (?:do|does|is|are|did|would)"
    r"|avoid|patients? with|cur(?:e|es|able|ed)|survival|contagious|hereditary|drugs?|reversible|life expectancy"
    r"|at risk|fatal|deadly|lethal|stag(?:es?|ing)|biops\w*|patholog\w*|antibiotics?|differential (?:diagnos\w* )?(?:for|of)"
    r"|how long (?:does|do|will|would|can|until|to)|worr(?:y|ied|ying)|go away|recommend\w*|outlook|side effects?|risks?"
    r"|recover\w*|repair\w*|heal(?:s|ed|ing)?|operations?|surgery|with (?:age|ageing|aging)|age-related)\b"
    r"|\bwhat does .+ mean\b"
)

#: Words that point at the image itself (a question about it is visual, not encyclopaedic).
DEICTIC = (
    r"\b(?:this|these|shown|visible|seen|here|slices?|thickness|spacing|resolution|pixels?|voxels?|orientation"
    r"|window\w*|series|matrix|field of view|fov|dimensions?)\b"
    r"|\b(?:the|my|our|his|her|their|patient'?s) (?:image|scan|picture|study|radiograph|film|x-?ray|ct|mri|results?)\b"
    r"|\b(?:the )?patient'?s?\b(?! with)|\b(?:position|view|projection|contrast|artifacts?|artefacts?|noise|quality|exposure)\b"
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
    (r"\b(?:all|every|each)(?: of)? (?:the )?(?:[a-z]+ )?(?:organs?|structures?|anatom\w*)\b|\beverything\b|\bmulti-?organ\b|\borgans\b", ALL_STRUCTURES),
    (r"\b(?:lung|pulmonary) nodules?\b", "nodule"),
    (r"\b(?:brain|liver|kidney|renal|hepatic|lung|pulmonary) (?:tumou?rs?|mass(?:es)?|cancers?|growths?)\b", "tumor"),
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
    (r"\b(?:abdominal )?aortic aneur[yi]sms?\b|\baneur[yi]sm\w*", "aneurysm"),
    (r"\b(?:kidney|renal|ureteric|ureteral) (?:stones?|calcul(?:i|us))\b", "kidney stone"),
    (r"\bgall ?stones?\b|\bgall ?bladder stones?\b", "gallstone"),
    (r"\bpulmonary emboli\w*|\bemboli\w*", "embolism"),
    (r"\b(?:central|picc|arterial|venous|cv) (?:venous )?(?:lines?|catheters?)\b|\bcvc\b|\bpicc\b", "central line"),
    (r"\b(?:endotracheal|tracheal|et|breathing) tubes?\b", "endotracheal tube"),
    (r"\b(?:nasogastric|feeding) tubes?\b", "nasogastric tube"),
    (r"\bchest (?:drains?|tubes?)\b|\bdrains?\b", "chest drain"),
    (r"\bpacemakers?\b|\bpacing (?:wires?|leads?)\b", "pacemaker"),
    (r"\btumou?rs?\b|\bneoplasms?\b|\bmalignan\w*|\bcancers?\b|\bcarcinoma\w*", "tumor"),
    (r"\bmetasta\w*", "metastasis"),
    (r"\babscess\w*", "abscess"),
    (r"\binfarct\w*", "infarct"),
    (r"\bthromb\w*|\bclots?\b", "thrombus"),
    (r"\bstones?\b|\bcalcul(?:i|us)\b", "stone"),
    (r"\bcalcifi\w*", "calcification"),
    (r"\bobstruct\w*", "obstruction"),
    (r"\bperforat\w*", "perforation"),
    (r"\bfree (?:air|gas)\b|\bpneumoperitoneum\b", "free air"),
    (r"\bo?edema\w*", "edema"),
    (r"\bdissections?\b", "dissection"),
    (r"\bhernia\w*", "hernia"),
    (r"\bcollections?\b", "collection"),
    (r"\bpneumonia\b", "pneumonia"),
    (r"\bempyemas?\b", "empyema"),
    (r"\bbullae?\b", "bulla"),
    (r"\bcavit(?:y|ies|ation)\b", "cavity"),
    (r"\binfections?\b", "infection"),
    (r"\bcollapsed?\b", "collapse"),
    (r"\bstenos[ie]s\b|\bnarrowing\b", "stenosis"),
    (r"\bdislocat\w*", "dislocation"),
    (r"\bstents?\b", "stent"),
    (r"\bcatheters?\b", "catheter"),
    (r"\bnodules?\b", "nodule"),
    (r"\blesions?\b", "lesion"),
    (r"\bmass(?:es)?\b", "mass"),
    (r"\b(?:free )?fluid(?: collections?)?\b", "fluid"),
    (r"\bpolyps?\b", "polyp"),
    (r"\bcells?\b|\bnucle(?:i|us)\b", "cell"),
    (r"\bcysts?\b", "cyst"),
    (r"\bfractures?\b|\bfractured\b|\bbroken\b|\bcracked\b", "fracture"),
    (r"\beffusions?\b", "effusion"),
    (r"\bpneumothora\w*", "pneumothorax"),
    (r"\bh(?:a)?emorrhag\w*|\bbleed\w*", "hemorrhage"),
    (r"\bopacit\w*", "opacity"),
    (r"\bconsolidation\w*", "consolidation"),
    (FINDING_FORM, ""),  # "": the matched word itself is the target
)

#: Organs a 3D organ segmentation network usually knows (used when its schema has no enum): the
#: anatomy of the one code table, so the planner and the encoders name the same organs.
ORGANS_3D = structure_names()

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
        ("grounding dino + MedSAM", ("has_target", "explicit")),
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

#: First words of a free phrase that name a property of the image, not a structure to find
#: ("are there any artefacts?"): such a phrase is no target.
NOT_STRUCTURES = frozenset({
    "artifact", "artifacts", "artefact", "artefacts", "contrast", "noise", "motion", "blur", "blurring",
    "text", "labels", "markers", "annotations", "problems", "issues", "errors", "differences", "changes",
    "abnormalities", "abnormality", "findings", "anything", "something", "other", "more", "slices",
    "missing", "ruler", "marker", "writing", "annotation", "label", "lettering", "date",
})

#: Acquisition parameters: a clause asking for one is answered from the header, not by classifying
#: the image ("What echo time was this acquired with?").
ACQUISITION_PARAMETERS = (
    r"\b(?:echo time|repetition time|inversion time|flip angle|kvp|kv|mas|tube current|exposure time|ctdi\w*|dlp"
    r"|field strength|tesla|b-?values?|sequence parameters|reconstruction kernel|kernel|pitch|rotation time)\b"
)

#: Properties of the image itself: a clause about one ("describe the image orientation", "are any
#: slices missing") asks for no report and no search for an unnamed structure.
IMAGE_PROPERTIES = (
    r"\b(?:orientation|quality|resolution|spacing|thickness|matrix|window(?:ing)?|format|field of view|fov"
    r"|exposure|artefacts?|artifacts?|noise|bit depth|contrast phase|pixel size|header|metadata"
    r"|voxel (?:size|spacing|dimensions?)|pixel spacing|how many (?:slices|images|frames|series|instances))\b"
)

#: Words skipped when a target is read as a free phrase after the intent keyword.
PHRASE_STOP = frozenset({
    "the", "a", "an", "any", "all", "this", "these", "that", "those", "in", "on", "of", "from", "within",
    "please", "for", "me", "us", "image", "images", "scan", "scans", "picture", "its", "their", "it", "them",
    "with", "to", "and", "is", "are", "there", "out", "up", "around", "each", "both", "visible", "shown",
    "seen", "present", "can", "you", "could", "would", "will", "i", "want", "need", "study", "series",
    "x-ray", "xray", "ct", "mri", "mr", "radiograph", "film", "volume", "slice", "slices", "here", "where",
    "located", "be", "do", "does", "show", "see", "at", "by", "into", "onto", "over", "under",
    "was", "were", "been", "still", "exactly", "precisely", "lies", "sits",
})
