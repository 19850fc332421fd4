"""Routing: which routes fire for a series, and why.

Routes are data (``routes:`` in the YAML config, :class:`config.schema.RouteConfig`): each has a
``match`` mapping of DICOM keywords (or ``CallingAETitle`` / ``CalledAETitle``) to a
:class:`config.schema.Condition`. Nothing here evaluates expression strings.

Semantics, as an administrator reads them:

* A route matches when every condition in its ``match`` holds (an empty ``match`` matches every
  series). Every test in one condition must hold too (``{ge: 1, le: 3}`` is a range).
* Routes are tried by ``priority`` (highest first), then in file order. With
  ``routing_mode: first`` the first matching route fires; with ``all`` every matching route fires.
  Routes marked ``fallback: true`` fire only when no other route matched (the first matching
  fallback in ``first`` mode, every matching fallback in ``all`` mode).
* Values are compared as DICOM writes them: text with padding stripped. A multi-valued element
  (value multiplicity > 1, PS3.5 6.4, e.g. ImageType ``ORIGINAL\\PRIMARY\\AXIAL``) is compared as
  that backslash-joined text by ``equals``, ``regex``, ``in`` and ``not_in``.
* ``equals``/``in``/``not_in`` compare text case-sensitively (Code Strings are upper case, PS3.5
  6.2); a number written unquoted in YAML (``SliceThickness: 5``) compares numerically, so
  ``5.000000`` equals ``5``.
* ``regex`` must match the WHOLE value (``re.fullmatch``): ``regex: CT`` does not match ``CTX``.
  ``re.search`` semantics would make a pattern quietly fire on substrings, which surprises
  administrators; write ``.*LUNG.*`` (or ``(?i).*lung.*``) to match a part of the value.
* ``contains``/``excludes`` test membership among the element's values (``ImageType contains
  LOCALIZER``); a single-valued element is a one-item list. They do not test substrings.
* ``gt``/``ge``/``lt``/``le`` convert values (DS, IS, US, ...) to numbers; for a multi-valued
  element every value must satisfy the comparison (``PixelSpacing lt 1`` means both spacings).
  A value that is not a number fails the test, with the reason given.
* An absent or empty element fails every positive test; ``not_in`` and ``excludes`` hold for it,
  and ``present: false`` tests for it explicitly.
* ``match_any`` lists alternatives: besides every condition of ``match``, at least one of its
  condition sets must hold (e.g. BodyPartExamined, SeriesDescription or ProtocolName naming the
  chest).
* ``coverage`` is an image check made once the header conditions hold: the series must show that
  region of the body (``thorax``: lung-like air over ``min_extent_mm`` of its length,
  :func:`tools.lung_coverage.thorax_coverage`, which reads a subsample of the slices). A series
  that fails it does not fire the route; when no route fires and some route failed only its
  coverage, the series is *skipped*, with the reason, rather than unrouted.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from config.schema import (
    ASSOCIATION_KEYS,
    UNMATCHABLE_VRS,
    AppConfig,
    Condition,
    CoverageConfig,
    RouteConfig,
)
from image_model.header_values import DECODE_ERRORS
from tools.lung_coverage import ThoraxCoverage, thorax_coverage

#: Image coverage checks by region name (``coverage: {region: ...}`` of a route).
COVERAGE_CHECKS: dict[str, Callable[[Sequence[Path]], ThoraxCoverage]] = {"thorax": thorax_coverage}

#: Condition fields in the order they are checked and reported.
_OPERATORS: tuple[str, ...] = (
    "present", "equals", "regex", "in_", "not_in", "contains", "excludes", "gt", "ge", "lt", "le",
)
_COMPARISONS = {
    "gt": (lambda a, b: a > b, ">"),
    "ge": (lambda a, b: a >= b, ">="),
    "lt": (lambda a, b: a < b, "<"),
    "le": (lambda a, b: a <= b, "<="),
}


@dataclass(frozen=True)
class CheckResult:
    """One test of one condition: e.g. ``Modality equals 'CT'``."""

    key: str
    operator: str
    expected: Any
    held: bool
    #: Why it held or failed, in words (includes the value that was seen).
    reason: str

    def describe(self) -> str:
        mark = "held" if self.held else "failed"
        return f"{self.key} {self.operator} {self.expected!r}: {mark} ({self.reason})"


@dataclass(frozen=True)
class CoverageOutcome:
    """The route's image check on one series."""

    region: str
    covers: bool
    #: What the check saw, in words (no tag values: safe to log).
    reason: str

    def describe(self) -> str:
        return f"coverage {self.region}: {'held' if self.covers else 'failed'} ({self.reason})"


@dataclass(frozen=True)
class RouteMatch:
    """A route and the outcome of each of its checks."""

    route: RouteConfig
    matched: bool
    checks: tuple[CheckResult, ...]
    #: The checks of each ``match_any`` alternative (one of them must all hold).
    alternatives: tuple[tuple[CheckResult, ...], ...] = ()
    #: The image check, once made (None: the route has none, or its header checks failed).
    coverage: CoverageOutcome | None = None

    @property
    def headers_matched(self) -> bool:
        """Every ``match`` condition and some ``match_any`` alternative hold."""
        alternative = not self.alternatives or any(all(c.held for c in a) for a in self.alternatives)
        return all(c.held for c in self.checks) and alternative

    @property
    def reasons(self) -> list[str]:
        """Human-readable lines, one per check, saying why it held or failed."""
        if not self.checks and not self.alternatives and self.coverage is None:
            return ["no conditions: matches every series"]
        lines = [c.describe() for c in self.checks]
        for i, alternative in enumerate(self.alternatives, start=1):
            verdict = "held" if all(c.held for c in alternative) else "failed"
            lines.append(f"match_any[{i}] {verdict}: " + "; ".join(c.describe() for c in alternative))
        if self.coverage is not None:
            lines.append(self.coverage.describe())
        return lines


# --------------------------------------------------------------------------- values


def _values(raw: Any) -> tuple[str, ...]:
    """Normalise a tag value to its text values; ``()`` means absent or empty."""
    if raw is None:
        return ()
    if isinstance(raw, (MultiValue, list, tuple)):
        items: Sequence[Any] = raw
    elif isinstance(raw, str):
        items = raw.split("\\") if "\\" in raw else [raw]
    else:
        items = [raw]
    texts = tuple(_text(v) for v in items)
    return () if all(t == "" for t in texts) else texts


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \x00")
    return str(value).strip(" \x00")


def _number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _same(text: str, expected: str | float) -> bool:
    """Text equality, or numeric equality when the expected value is a number."""
    if isinstance(expected, (int, float)) and not isinstance(expected, bool):
        number = _number(text)
        return number is not None and number == float(expected)
    return text == expected


def _show(values: tuple[str, ...]) -> str:
    if not values:
        return "element absent or empty"
    if len(values) == 1:
        return f"value '{values[0]}'"
    joined = "\\".join(values)
    return f"values '{joined}'"


# --------------------------------------------------------------------------- checks


def _check(key: str, operator: str, expected: Any, values: tuple[str, ...]) -> CheckResult:
    """Evaluate one operator of one condition against the element's text values."""
    name = "in" if operator == "in_" else operator
    seen = _show(values)
    joined = "\\".join(values)

    if operator == "present":
        held = bool(values) == bool(expected)
        return CheckResult(key, name, expected, held, seen)
    if operator in ("not_in", "excludes"):
        if not values:
            return CheckResult(key, name, expected, True, seen)
        if operator == "not_in":
            held = not any(_same(joined, item) for item in expected)
        else:
            held = expected not in values
        return CheckResult(key, name, expected, held, seen)
    if not values:
        return CheckResult(key, name, expected, False, seen)
    if operator == "equals":
        return CheckResult(key, name, expected, _same(joined, expected), seen)
    if operator == "regex":
        held = re.fullmatch(expected, joined) is not None
        why = seen if held else f"{seen}; the pattern must match the whole value"
        return CheckResult(key, name, expected, held, why)
    if operator == "in_":
        return CheckResult(key, name, expected, any(_same(joined, i) for i in expected), seen)
    if operator == "contains":
        return CheckResult(key, name, expected, expected in values, seen)
    compare, symbol = _COMPARISONS[operator]
    numbers = [_number(v) for v in values]
    if any(n is None for n in numbers):
        return CheckResult(key, name, expected, False, f"{seen} is not a number")
    held = all(compare(n, expected) for n in numbers)
    verdict = "" if held else "not "
    return CheckResult(key, name, expected, held, f"{seen} {verdict}{symbol} {expected:g}")


def evaluate_condition(key: str, condition: Condition, raw_value: Any) -> list[CheckResult]:
    """All tests of one condition on one element's value (tag value as read or as stored)."""
    values = _values(raw_value)
    results = []
    for operator in _OPERATORS:
        expected = getattr(condition, operator)
        if expected is not None:
            results.append(_check(key, operator, expected, values))
    return results


def evaluate_route(
    route: RouteConfig, tags: Mapping[str, Any], calling_ae: str | None, called_ae: str | None
) -> RouteMatch:
    """Evaluate every condition of ``route``; the route matches when all checks hold."""
    association = {"CallingAETitle": calling_ae, "CalledAETitle": called_ae}

    def run(conditions: Mapping[str, Condition]) -> tuple[CheckResult, ...]:
        checks: list[CheckResult] = []
        for key, condition in conditions.items():
            value = association[key] if key in ASSOCIATION_KEYS else tags.get(key)
            checks.extend(evaluate_condition(key, condition, value))
        return tuple(checks)

    match = RouteMatch(route, False, run(route.match), tuple(run(a) for a in route.match_any))
    # A route with an image check matches only once the check held (check_coverage).
    return replace(match, matched=match.headers_matched and route.coverage is None)


def evaluate_routes(
    config: AppConfig, tags: Mapping[str, Any], calling_ae: str | None, called_ae: str | None
) -> list[RouteMatch]:
    """Every route's outcome, in the order routes are tried (priority desc, then file order)."""
    ordered = sorted(config.routes, key=lambda r: -r.priority)  # sorted() is stable: file order
    return [evaluate_route(r, tags, calling_ae, called_ae) for r in ordered]


def check_coverage(evaluated: Sequence[RouteMatch], files: Sequence[Path]) -> list[RouteMatch]:
    """Make the image check of every route whose header conditions hold (each region checked
    once per series); a route matches when its check holds."""
    seen: dict[str, ThoraxCoverage] = {}
    out = []
    for match in evaluated:
        config: CoverageConfig | None = match.route.coverage
        if config is None or not match.headers_matched:
            out.append(match)
            continue
        if config.region not in seen:
            seen[config.region] = COVERAGE_CHECKS[config.region](files)
        result = seen[config.region]
        covers = result.covers(config.min_extent_mm, config.min_fraction)
        needs = f"; the route needs {config.min_extent_mm:g} mm or {config.min_fraction:.0%} of the volume"
        reason = result.describe() + ("" if covers else needs)
        out.append(replace(match, matched=covers, coverage=CoverageOutcome(config.region, covers, reason)))
    return out


@dataclass(frozen=True)
class RoutingOutcome:
    """Which routes fire for a series, every route's outcome, and why none fired."""

    fired: list[RouteMatch]
    evaluated: list[RouteMatch]

    @property
    def skipped(self) -> bool:
        """No route fired, and some route failed only its image check."""
        return not self.fired and any(m.coverage is not None and not m.coverage.covers for m in self.evaluated)

    @property
    def reason(self) -> str:
        """Why no route fired: per route, the checks that failed. It may quote tag values (patient
        data): for the job record, not the log."""
        if self.fired:
            return ""
        if not self.evaluated:
            return "no route matched (no routes configured)"
        why = []
        for m in self.evaluated:
            failed = [c.describe() for c in m.checks if not c.held]
            if m.alternatives and not any(all(c.held for c in a) for a in m.alternatives):
                failed.append("no match_any alternative held")
            if m.coverage is not None and not m.coverage.covers:
                failed.append(m.coverage.describe())
            why.append(f"{m.route.name}: " + "; ".join(failed))
        head = "skipped: the series does not cover what the routes need" if self.skipped else "no route matched"
        return f"{head} ({' | '.join(why)})"


def route_series(
    config: AppConfig,
    tags: Mapping[str, Any],
    calling_ae: str | None,
    called_ae: str | None,
    files: Sequence[Path],
) -> RoutingOutcome:
    """Route one series: header conditions, then the image checks on its instance ``files``."""
    evaluated = check_coverage(evaluate_routes(config, tags, calling_ae, called_ae), files)
    return RoutingOutcome(choose(evaluated, config.routing_mode), evaluated)


def choose(evaluated: Sequence[RouteMatch], mode: str) -> list[RouteMatch]:
    """The routes that fire, given every route's outcome in trial order and the routing mode."""
    regular = [m for m in evaluated if m.matched and not m.route.fallback]
    chosen = regular or [m for m in evaluated if m.matched and m.route.fallback]
    return chosen[:1] if mode == "first" else chosen


def select_routes(
    config: AppConfig, tags: Mapping[str, Any], calling_ae: str | None, called_ae: str | None
) -> list[RouteMatch]:
    """The routes that fire for a series with these tags, received on this association, judging
    by headers alone: a route with an image check (``coverage``) never fires here; use
    :func:`route_series` with the series' files.

    ``tags`` maps DICOM keywords to values (as :func:`series_tags_from_dataset` returns them, or
    pydicom values). An empty list means the series is unrouted.
    """
    return choose(evaluate_routes(config, tags, calling_ae, called_ae), config.routing_mode)


# --------------------------------------------------------------------------- tags


def rule_keywords(config: AppConfig) -> set[str]:
    """The DICOM keywords the routes test (what a receiver must read from each series)."""
    keys = {k for r in config.routes for conditions in (r.match, *r.match_any) for k in conditions}
    return keys - ASSOCIATION_KEYS


def series_tags_from_dataset(ds: Dataset, keywords: Iterable[str] | None = None) -> dict[str, Any]:
    """Matchable tag values of a dataset, JSON-serialisable: text, or a list of texts.

    With ``keywords`` only those are taken (absent ones are left out); otherwise every top-level
    element with a keyword and a textual VR. Binary elements and sequences are never taken.

    Each element is decoded only when it is wanted, and one whose value cannot be decoded (a
    peer's malformed value: wrong length for its VR, bad characters) is left out, as if absent:
    a broken element the routes never look at must not stop the series from being routed.
    """
    wanted = set(keywords) if keywords is not None else None
    out: dict[str, Any] = {}
    for tag in list(ds.keys()):
        keyword = keyword_for_tag(tag)
        if not keyword or (wanted is not None and keyword not in wanted):
            continue
        raw = ds.get_item(tag)
        # A tag with a keyword is in the data dictionary: its VR there stands in for an implicit one.
        vr = getattr(raw, "VR", None) or dictionary_VR(tag)
        if vr in UNMATCHABLE_VRS:
            continue
        values = _values(_decoded(ds, tag))
        if values:
            out[keyword] = values[0] if len(values) == 1 else list(values)
    return out


def _decoded(ds: Dataset, tag: BaseTag) -> Any:
    """The element's value, or None (as if absent) when a peer's malformed value cannot be
    decoded; the value is never echoed."""
    try:
        return ds[tag].value
    except DECODE_ERRORS:
        return None
