"""Slots of one clause, read by small deterministic parsers over the vocabularies.

* **targets**: the longest synonym of ``targets.json`` at each position (plurals and possessives
  included), or a word with a disease suffix ("glioma", "hydronephrosis");
* **side**: a left/right word before the target (skipping "upper lobe" and the like: "left lower
  lobe nodule") or after it ("effusion on the left"); "left and right", "both" mean no side;
* **exclusion**: targets after an exclusion cue ("all organs except the liver");
* **negation**: the clause opens with a negation cue ("don't segment", "no need for a report") or
  closes with one ("report not needed");
* **polar**: the clause is a yes/no question ("is there", "does the patient have", "tell me if"),
  not a request phrased as one ("can you segment ...").
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.reading.vocabulary import Vocabulary, tokens

#: Words that may open a clause before its cue ("but don't", "please just skip", "so is there").
_LEAD = frozenset({"but", "and", "so", "also", "please", "just", "ok", "okay", "then", "hi", "hello", "now", "oh", "well"})


@dataclass(frozen=True)
class Mention:
    """A target named in a clause (``name`` canonical) with its side, token span and exclusion."""

    name: str
    side: str | None
    start: int
    end: int
    excluded: bool = False
    #: An organ named only as where a finding is ("lung mass", "nodule in the left lung").
    location: bool = False

    @property
    def sided_name(self) -> str:
        return f"{self.side} {self.name}" if self.side else self.name


def _phrase(vocab: Vocabulary, toks: tuple[str, ...], i: int) -> tuple[str, int] | None:
    for n in range(min(vocab.longest_phrase, len(toks) - i), 0, -1):
        name = vocab.phrases.get(tuple(toks[i:i + n]))
        if name is not None:
            return name, n
    return None


def _suffix_finding(vocab: Vocabulary, token: str) -> bool:
    words = vocab.words
    return (
        len(token) >= 6
        and token.isalpha()
        and token not in words.finding_suffix_exceptions
        and any(token.endswith(s) for s in words.finding_suffixes)
    )


def _side_word(vocab: Vocabulary, toks: tuple[str, ...], i: int) -> str | None:
    lat = vocab.words.laterality
    if 0 <= i < len(toks):
        if toks[i] in lat.left:
            return "left"
        if toks[i] in lat.right:
            return "right"
    return None


def _side_before(vocab: Vocabulary, toks: tuple[str, ...], start: int) -> str | None:
    words = vocab.words
    i = start - 1
    skipped = 0
    while i >= 0 and (toks[i] in words.side_modifiers or toks[i] in ("side", "sided")) and skipped < 3:
        i -= 1
        skipped += 1
    side = _side_word(vocab, toks, i)
    if side is None:
        return None
    if toks[i] in words.side_abbreviations and skipped:
        return None  # "r" far from its target is not a side
    if i >= 2 and toks[i - 1] in ("and", "or", "&") and _side_word(vocab, toks, i - 2) not in (None, side):
        return None  # "left and right lungs"
    return side


def _side_after(vocab: Vocabulary, toks: tuple[str, ...], end: int) -> str | None:
    window = toks[end:end + 5]
    for k, tok in enumerate(window):
        if tok in (",", ".", "?", ";") or _phrase(vocab, toks, end + k) is not None:
            return None
        side = _side_word(vocab, toks, end + k)
        if side is not None and tok not in vocab.words.side_abbreviations:
            if k > 0 and window[k - 1] in ("and", "or"):
                return None
            return side
    return None


def _starts_with(toks: tuple[str, ...], phrase: tuple[str, ...], at: int) -> bool:
    return tuple(toks[at:at + len(phrase)]) == phrase


ALL = "all organs"


def _all_structures(vocab: Vocabulary, toks: tuple[str, ...], i: int) -> int:
    """Length of an "all/every/each (of the) (abdominal) organs" phrase at ``i``, or 0."""
    words = vocab.words
    if toks[i] not in words.all_quantifiers:
        return 0
    for k in range(i + 1, min(i + 5, len(toks))):
        if toks[k] in words.all_nouns:
            return k + 1 - i
        if toks[k] in (",", ".", "?", ";"):
            return 0
    return 0


def find_mentions(vocab: Vocabulary, toks: tuple[str, ...]) -> list[Mention]:
    """The targets named in the clause ``toks``, in order."""
    cues = [tuple(tokens(c)) for c in vocab.words.exclusion_cues]
    excluding_from: int | None = None
    both = set(vocab.words.laterality.both)
    out: list[Mention] = []
    i = 0
    while i < len(toks):
        if excluding_from is None and any(_starts_with(toks, c, i) for c in cues):
            excluding_from = i
        found = _phrase(vocab, toks, i)
        span = _all_structures(vocab, toks, i)
        if span and (found is None or span > found[1]):
            found = (ALL, span)
        if found is None and _suffix_finding(vocab, toks[i]):
            found = (toks[i], 1)
        if found is None:
            i += 1
            continue
        name, n = found
        entry = vocab.entry(name)
        side = None
        if entry is None or entry.sided or entry.kind == "finding":
            side = _side_before(vocab, toks, i) or _side_after(vocab, toks, i + n)
        if any(t in both for t in toks[max(0, i - 2):i]):
            side = None
        out.append(Mention(name, side, i, i + n, excluding_from is not None and excluding_from < i))
        i += n
    return _mark_locations(vocab, toks, out)


def _mark_locations(vocab: Vocabulary, toks: tuple[str, ...], mentions: list[Mention]) -> list[Mention]:
    """Organs right before a finding ("lung mass") or after a finding and a locative ("mass in the
    left lung") are where the finding is, not targets of their own."""
    def is_finding(m: Mention) -> bool:
        entry = vocab.entry(m.name)
        return entry is None or entry.kind in ("finding", "device")

    findings = [m for m in mentions if is_finding(m)]
    if not findings:
        return mentions
    skip = vocab.words.determiners | set(vocab.words.laterality.left) | set(vocab.words.laterality.right) | vocab.words.side_modifiers
    out = []
    for m in mentions:
        where = False
        if not is_finding(m) and m.name != ALL:
            before_finding = any(f.start == m.end for f in findings)
            k = m.start - 1
            while k >= 0 and toks[k] in skip:
                k -= 1
            after_finding = k >= 0 and toks[k] in vocab.words.locatives and any(f.end <= k for f in findings)
            where = before_finding or after_finding
        out.append(Mention(m.name, m.side, m.start, m.end, m.excluded, where) if where else m)
    return out


def _content_start(toks: tuple[str, ...]) -> int:
    i = 0
    while i < len(toks) and toks[i] in _LEAD:
        i += 1
    return i


def is_negated(vocab: Vocabulary, toks: tuple[str, ...], question: bool) -> bool:
    """The clause asks not to do something ("don't segment", "no report needed")."""
    start = _content_start(toks)
    words = vocab.words
    for cue in sorted(words.negation_openers, key=len, reverse=True):
        phrase = tuple(tokens(cue))
        if _starts_with(toks, phrase, start):
            return not (phrase == ("no",) and question)
    text = " " + " ".join(toks) + " "
    return any(f" {' '.join(tokens(c))} " in text for c in words.negation_closers)


def is_polar(vocab: Vocabulary, toks: tuple[str, ...]) -> bool:
    """The clause is a yes/no question (not a request worded as one)."""
    words = vocab.words
    start = _content_start(toks)
    text = " " + " ".join(toks[start:]) + " "
    if any(text.startswith(" " + " ".join(tokens(r)) + " ") for r in words.request_openers):
        return any(f" {' '.join(tokens(p))} " in text for p in words.polar_phrases)
    if start < len(toks) and toks[start] in words.polar_openers:
        return True
    return any(f" {' '.join(tokens(p))} " in text for p in words.polar_phrases)


def only_fillers(vocab: Vocabulary, toks: tuple[str, ...], heading: bool = False, question: bool = False) -> bool:
    """The clause says nothing of its own: courtesy ("please", "thanks a lot"), or a heading of
    filler words before a colon ("CT abdomen:")."""
    words = vocab.words
    allowed = words.clause_fillers if heading else words.courtesy_words
    if all(t in allowed or t in "?.,;:!" for t in toks):
        return True
    # "Abdo CT ?appendicolith": a clause of image and filler words only is a heading too.
    images = {w for phrase in vocab.image_phrases for w in phrase}
    return not question and all(t in words.clause_fillers or t in images for t in toks)


def is_bare(vocab: Vocabulary, toks: tuple[str, ...], mentions: list[Mention]) -> bool:
    """Nothing but targets, sides and filler words ("query L effusion", "and the spleen")."""
    covered = {k for m in mentions for k in range(m.start, m.end)}
    words = vocab.words
    sides = set(words.laterality.left) | set(words.laterality.right) | set(words.laterality.both)
    for k, tok in enumerate(toks):
        if k in covered or tok in words.clause_fillers or tok in sides or tok in words.anaphora or tok in "?.,":
            continue
        return False
    return True


def side_only(vocab: Vocabulary, toks: tuple[str, ...]) -> str | None:
    """The side a clause of side words and fillers names ("left only", "the right one"), else None."""
    side = None
    for k, tok in enumerate(toks):
        found = _side_word(vocab, toks, k)
        if found is not None:
            if side not in (None, found):
                return None
            side = found
        elif tok not in vocab.words.clause_fillers and tok not in vocab.words.anaphora and tok not in "?.,":
            return None
    return side


def unknown_word(vocab: Vocabulary, known: frozenset[str], token: str) -> bool:
    """A word neither the sentence encoder nor the vocabularies know."""
    words = vocab.words
    return (
        bool(known) and len(token) >= 5 and token.isalpha() and token not in known
        and token not in vocab.target_words and token not in words.correction_words
        and token not in words.clause_fillers
    )


def unknown_terms(vocab: Vocabulary, toks: tuple[str, ...], known: frozenset[str]) -> set[int]:
    """Positions of unknown words used as nouns: right after a determiner (or another such word)
    and not followed by a known word they qualify ("a pneumomediastinum", "the osteolytic lesion";
    not "a radiology report"). In an instruction these are nearly always the medical term asked
    about, and the classifier reads them as noise."""
    words = vocab.words
    found: set[int] = set()
    for k, tok in enumerate(toks):
        if not unknown_word(vocab, known, tok) or k == 0:
            continue
        if not (toks[k - 1] in words.determiners or k - 1 in found):
            continue
        nxt = toks[k + 1] if k + 1 < len(toks) else ""
        qualifies = (
            nxt.isalpha() and nxt in known and nxt not in vocab.target_words and nxt not in words.phrase_stops
            and nxt not in words.determiners
        )
        if not qualifies:
            found.add(k)
    return found


def free_phrase(vocab: Vocabulary, toks: tuple[str, ...], known: frozenset[str] = frozenset()) -> str | None:
    """A target named with no known term: the run of unknown words, else up to three words after
    the first determiner."""
    words = vocab.words
    terms = sorted(unknown_terms(vocab, toks, known))
    if terms:
        run = [terms[0]]
        while run[-1] + 1 in terms and len(run) < 3:
            run.append(run[-1] + 1)
        return " ".join(toks[k] for k in run)
    for k, tok in enumerate(toks):
        if tok not in words.determiners:
            continue
        picked: list[str] = []
        for w in toks[k + 1:]:
            if w in words.phrase_stops or w in words.determiners or not w.isalpha():
                break
            picked.append(w)
            if len(picked) == 3:
                break
        if picked and picked[0] not in words.not_structures and picked[-1] not in words.not_structures:
            return " ".join(picked)
    return None


def is_context(vocab: Vocabulary, toks: tuple[str, ...], question: bool) -> bool:
    """A statement of clinical context: it opens like one ("Known lung cancer", "The patient fell",
    "71M"), is no question, and is no first-person request ("I need the lungs outlined")."""
    start = _content_start(toks)
    if question or start >= len(toks) or is_polar(vocab, toks):
        return False
    text = " " + " ".join(toks[start:]) + " "
    if any(text.startswith(" " + " ".join(tokens(r)) + " ") for r in vocab.words.first_person_requests):
        return False
    while start < len(toks) - 1 and toks[start] in vocab.words.determiners:
        start += 1  # "the patient ...", "my mum ...", "this is ..."; not "the modality", "a report"
    first = toks[start]
    if first in vocab.words.context_openers or any(c.isdigit() for c in first):
        return True
    # A longer statement that opens with no request word ("urology will decide after the scan",
    # "surgeons are considering a re-resection"): a clinician's narrative.
    return len(toks) - start >= 5 and first not in vocab.request_verbs and first not in vocab.words.request_openers


def has_presence_cue(vocab: Vocabulary, toks: tuple[str, ...]) -> bool:
    """The clause asks whether something is there in so many words ("r/o PE", "?PTX")."""
    text = " " + " ".join(toks) + " "
    return any(f" {' '.join(tokens(c))} " in text for c in vocab.words.presence_cues)


def mask_text(vocab: Vocabulary, toks: tuple[str, ...], mentions: list[Mention], known: frozenset[str] = frozenset()) -> str:
    """The clause with every target (and every unknown word, see :func:`unknown_word`) replaced by
    the placeholder word and every name of the image or its modality by the image word (the
    classifier's input: the intent is in the wording around them, not in the organ or the
    modality)."""
    out: list[str] = []
    k = 0
    starts = {m.start: m for m in mentions}
    images = vocab.image_phrases
    placeholder = vocab.words.placeholder
    unknown = unknown_terms(vocab, toks, known)
    while k < len(toks):
        if k in starts or k in unknown:
            if not out or out[-1] != placeholder:
                out.append(placeholder)
            k = starts[k].end if k in starts else k + 1
            continue
        for phrase, n in images.items():
            if tuple(toks[k:k + n]) == phrase:
                out.append(vocab.words.image_placeholder)
                k += n
                break
        else:
            out.append(toks[k])
            k += 1
    return " ".join(out)
