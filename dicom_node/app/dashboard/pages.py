"""The dashboard's HTML, rendered on the server. Every value goes through :func:`h` (HTML
escaping, quotes included): UIDs, AE titles, error texts, the agent's words and the SR's text
come from peers or models and may hold markup. The pages load one script and one style sheet
from ``/ui/static/`` (the Content-Security-Policy allows nothing else: no inline script)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from dicom_node.app.dashboard.views import JobView, Turn, stage_rows
from dicom_node.deliver.outbox import DeliveryState
from dicom_node.jobs.stages import ORDER

#: Longest error text shown in a list (the job page shows it whole).
SHORT_ERROR = 160
#: SR lines deeper than this are indented as this (dashboard.css has classes d0..d12).
MAX_DEPTH_CLASS = 12


def h(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else ""


def seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _short(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= SHORT_ERROR else text[: SHORT_ERROR - 1] + "…"


def layout(title: str, body: str, csrf: str | None = None, live: bool = False) -> str:
    logout = _button("/ui/logout", "Log out", csrf) if csrf else ""
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{h(title)} - mmed-node</title>"
        '<link rel="icon" href="/ui/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/ui/static/dashboard.css">'
        '<script src="/ui/static/dashboard.js" defer></script></head>'
        f'<body data-live="{1 if live else 0}">'
        f'<header><a href="/ui/">mmed-node</a> <span class="title">{h(title)}</span>{logout}</header>'
        f"<main>{body}</main></body></html>"
    )


def login_page(error: str | None = None) -> str:
    message = f'<p class="error">{h(error)}</p>' if error else ""
    return layout("Log in", (
        f"{message}<form method=\"post\" action=\"/ui/login\" class=\"login\">"
        "<label>API token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" "
        "autofocus></label> <button type=\"submit\">Log in</button></form>"
        "<p class=\"hint\">The value of the environment variable named by <code>api.token_env</code>.</p>"
    ))


def badge(state: Any) -> str:
    return f'<span class="state state-{h(state)}">{h(state)}</span>'


def _table(head: Sequence[str], rows: Iterable[str], body_id: str = "") -> str:
    ident = f' id="{h(body_id)}"' if body_id else ""
    return ("<table><thead><tr>" + "".join(f"<th>{h(c)}</th>" for c in head)
            + f"</tr></thead><tbody{ident}>" + "".join(rows) + "</tbody></table>")


def stage_cells(stages: Mapping[str, float]) -> str:
    """One cell per stage: the time it took from the previous one (its time as a tooltip)."""
    cells = []
    for row in stage_rows(dict(stages)):
        if row["at"] is None:
            cells.append('<td class="stage pending"></td>')
        else:
            cells.append(f'<td class="stage" title="{h(when(row["at"]))}">'
                         f'{h(seconds(row["seconds"]) or "✓")}</td>')
    return "".join(cells)


STAGE_HEAD = [stage.value for stage in ORDER]
JOB_HEAD = ["job", "state", "route", "series", "n", *STAGE_HEAD, "deliveries", "error"]


def job_rows(jobs: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for job in jobs:
        text = " ".join(str(job.get(k) or "") for k in
                        ("job_id", "state", "route", "study_uid", "series_uid", "error"))
        deliveries = " ".join(f"{d['destination']}:{d['state']}" for d in job.get("deliveries", []))
        rows.append(
            f'<tr data-state="{h(job["state"])}" data-route="{h(job.get("route") or "")}" '
            f'data-text="{h(text.lower())}">'
            f'<td><a href="/ui/jobs/{h(job["job_id"])}">{h(job["job_id"][:12])}</a></td>'
            f'<td>{badge(job["state"])}</td><td>{h(job.get("route") or "-")}</td>'
            f'<td class="uid" title="study {h(job["study_uid"])}">{h(job["series_uid"])}</td>'
            f'<td>{h(job.get("instance_count"))}</td>{stage_cells(job.get("stages") or {})}'
            f'<td>{h(deliveries)}</td><td class="error">{h(_short(job.get("error")))}</td></tr>'
        )
    return "".join(rows) or f'<tr><td colspan="{len(JOB_HEAD)}">no jobs yet</td></tr>'


def size(nbytes: int) -> str:
    """Bytes in the largest binary unit that keeps a number >= 1 ("148 KiB", "12.6 GiB")."""
    value, unit = float(nbytes), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.0f} {unit}" if unit == "bytes" or value >= 100 else f"{value:.1f} {unit}"


def _disk(disk: Mapping[str, Any]) -> str:
    parts = [f"data_dir {size(disk.get('data_dir_bytes', 0))}"]
    parts += [f"{area} {size(disk.get(area + '_bytes', 0))}"
              for area in ("spool", "results", "outbox", "jobs")]
    if "free_bytes" in disk:
        parts.append(f"free {size(disk['free_bytes'])} ({disk['free_percent']}%), "
                     f"watermark {size(disk['low_mark_bytes'])}")
    refusing = ' <strong class="error">refusing new instances</strong>' \
        if disk.get("refusing_instances") else ""
    return f'<p class="disk">{h(", ".join(parts))}{refusing}</p>'


def overview_page(data: Mapping[str, Any], csrf: str) -> str:
    states = sorted({j["state"] for j in data["jobs"]})
    routes = sorted({j.get("route") or "" for j in data["jobs"]} - {""})
    options = "".join(f'<option value="{h(s)}">{h(s)}</option>' for s in states)
    route_options = "".join(f'<option value="{h(r)}">{h(r)}</option>' for r in routes)
    filters = (
        '<div class="filters"><input id="filter-text" type="search" placeholder="filter: id, UID, error">'
        f'<select id="filter-state"><option value="">every state</option>{options}</select>'
        f'<select id="filter-route"><option value="">every route</option>{route_options}</select>'
        '<span id="refreshed"></span></div>'
    )
    series = "".join(
        f'<tr><td class="uid">{h(s["series_uid"])}</td><td class="uid">{h(s["study_uid"])}</td>'
        f'<td>{h(s["instances"])}</td><td>{h(s["calling_ae"])}</td><td>{badge(s["state"])}</td></tr>'
        for s in data["series"]) or '<tr><td colspan="5">no series held</td></tr>'
    destinations = "".join(
        f"<tr><td>{h(name)}</td>" + "".join(
            f"<td>{h(counts.get(state.value, 0))}</td>" for state in DeliveryState) + "</tr>"
        for name, counts in sorted(data["destinations"].items()))
    oldest = data.get("oldest_undelivered")
    oldest_line = (f'<p>oldest undelivered: <a href="/ui/jobs/{h(oldest["job_id"])}">'
                   f'{h(oldest["delivery_id"])}</a> to {h(oldest["destination"])}, '
                   f'{h(oldest["state"])}, {h(oldest["age_seconds"])} s old</p>') if oldest else ""
    body = (
        "<h2>Jobs</h2>" + filters + _table(JOB_HEAD, [job_rows(data["jobs"])], "jobs")
        + "<h2>Deliveries by destination</h2>"
        + _table(["destination", *(s.value for s in DeliveryState)], [destinations])
        + oldest_line + "<h2>Series held</h2>"
        + _table(["series", "study", "instances", "from AE", "state"], [series])
        + "<h2>Disk</h2>" + _disk(data["disk"])
    )
    return layout("Overview", body, csrf, live=True)


def _button(action: str, label: str, csrf: str) -> str:
    return (f'<form method="post" action="{h(action)}" class="inline">'
            f'<input type="hidden" name="csrf" value="{h(csrf)}">'
            f'<button type="submit">{h(label)}</button></form>')


def _turn(turn: Turn) -> str:
    actions = "".join(
        f'<div class="action"><span class="tool">{h(a.get("API_name"))}</span> '
        f'<code>{h(json.dumps(a.get("API_params"), ensure_ascii=False))}</code></div>'
        for a in turn.actions)
    thoughts = f'<div class="thoughts">{h(turn.thoughts)}</div>' if turn.thoughts else ""
    return (f'<div class="turn turn-{h(turn.speaker)}"><div class="speaker">{h(turn.speaker)}</div>'
            f'{thoughts}{actions}<div class="value">{h(turn.value)}</div></div>')


def job_page(view: JobView, csrf: str) -> str:
    r = view.record
    facts = [("state", badge(r.state.value)), ("route", h(r.route or "-")),
             ("study", h(r.study_uid)), ("series", h(r.series_uid)),
             ("instances", h(r.instance_count)), ("from AE", h(r.calling_ae)),
             ("attempt", h(f"{r.attempt} (retries {r.retries})")), ("worker", h(r.worker or "-"))]
    if r.error:
        facts.append(("error", f'<span class="error">{h(r.error)}</span>'))
    retry = _button(f"/ui/jobs/{r.job_id}/retry", "Retry job", csrf) \
        if r.state.value == "failed" else ""
    body = ["<dl class=\"facts\">" + "".join(f"<dt>{h(k)}</dt><dd>{v}</dd>" for k, v in facts)
            + f"</dl>{retry}", "<h2>Stages</h2>", _table(
                ["stage", "reached", "took"],
                [f"<tr><td>{h(s['stage'])}</td><td>{h(when(s['at']))}</td>"
                 f"<td>{h(seconds(s['seconds']))}</td></tr>" for s in stage_rows(r.stages)])]
    body.append(_previews(view))
    m = view.manifest
    if m is not None:
        body.append("<h2>Answer</h2>" + f'<p class="answer">{h(m.answer or "")}</p>'
                    + (f'<p class="note">planner {h(m.planner)}'
                       + (f", fallback: {h(m.fallback_reason)}" if m.fallback_reason else "")
                       + "</p>")
                    + "".join(f'<p class="error">{h(e)}</p>' for e in m.errors))
        if m.tool_runs:
            body.append("<h2>Tool calls</h2>" + _table(
                ["tool", "took", "refused"],
                [f"<tr><td>{h(t.get('api_name'))}</td><td>{h(seconds(t.get('seconds')))}</td>"
                 f"<td>{'yes' if t.get('refused') else ''}</td></tr>" for t in m.tool_runs]))
    if view.turns:
        body.append("<h2>Agent turns</h2>" + "".join(_turn(t) for t in view.turns))
    if view.sr:
        body.append("<h2>Structured report</h2><div class=\"sr\">" + "".join(
            f'<div class="sr-line d{min(int(line.depth), MAX_DEPTH_CLASS)}">'
            f'<span class="sr-name">{h(line.name)}</span>'
            + (f' <span class="sr-value">{h(line.value)}</span>' if line.value else "")
            + "</div>" for line in view.sr) + "</div>")
    body.append("<h2>Deliveries</h2>" + _deliveries(view, csrf))
    body.extend(f'<p class="note">{h(n)}</p>' for n in view.notes)
    return layout(f"Job {r.job_id}", "".join(body), csrf, live=not r.state.finished)


def _previews(view: JobView) -> str:
    previews = view.previews
    if previews is None or not previews.previews:
        return ""
    names = {s.number: s for s in previews.segments}
    legend = "".join(
        f'<span class="legend"><span class="swatch" data-rgb="{h(",".join(map(str, s.rgb)))}">'
        f"</span>{h(s.label)}</span>" for s in previews.segments)
    images = "".join(
        f'<figure data-sop-uid="{h(p.sop_uid)}" data-frame="{h(p.frame)}">'
        f'<img src="/ui/jobs/{h(view.record.job_id)}/preview/{index}.png" '
        f'alt="preview {index}"><figcaption>'
        + h(", ".join(f"{names[n].label if n in names else n}: {px} px"
                      for n, px in p.segments.items() if px)
            + (f"; {p.boxes} region(s)" if p.boxes else ""))
        + "</figcaption></figure>" for index, p in enumerate(previews.previews))
    notes = "".join(f'<p class="note">{h(n)}</p>' for n in previews.notes)
    return f'<h2>Previews</h2><div class="legends">{legend}</div><div class="previews">{images}</div>{notes}'


def _deliveries(view: JobView, csrf: str) -> str:
    if not view.deliveries:
        return "<p>none</p>"
    rows = []
    for d in view.deliveries:
        buttons = ""
        if d.state is DeliveryState.FAILED:
            buttons += _button(f"/ui/deliveries/{d.delivery_id}/retry", "Retry", csrf)
        if d.state in (DeliveryState.DONE, DeliveryState.FAILED):
            buttons += _button(f"/ui/deliveries/{d.delivery_id}/resend", "Resend", csrf)
        rows.append(
            f"<tr><td>{h(d.destination)}</td><td>{badge(d.state.value)}</td>"
            f"<td>{h(len(d.sent))}/{h(len(d.files) - len(d.skipped))}</td><td>{h(d.attempts)}</td>"
            f"<td>{h(when(d.updated_at.timestamp()))}</td>"
            f'<td class="error">{h(d.last_error or "")}</td><td>{buttons}</td></tr>')
    return _table(["destination", "state", "sent", "attempts", "updated", "last error", ""], rows)
