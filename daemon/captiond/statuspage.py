"""The status page at `/` on Daemon.Listen: one server-rendered HTML page, no JavaScript, no external assets.

Every text on it (file names, captions, reasons, addresses) is redacted and goes through html.escape; thumbnails are
inline data: URLs; a Content-Security-Policy forbids scripts and anything fetched from elsewhere.
It shows photos to whoever can reach the address: keep Listen on loopback (the default) or behind auth.
"""

from __future__ import annotations

import base64
import datetime
import functools
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .errors import CaptiondError
from .imaging import is_raw, prepare_file
from .redaction import redact
from .state import RowState

THUMBNAIL_PIXELS = 160
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; " \
                          "form-action 'none'; frame-ancestors 'none'"

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa;max-width:1100px}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}td,th{border:1px solid #ddd;padding:.35em .5em;
text-align:left;vertical-align:top;overflow-wrap:break-word}th{background:#f0f0f0}
.bad{color:#a00;font-weight:600}.ok{color:#070}.note{color:#666;font-size:.9em}
.bar{background:#e4e4e4;height:1em;width:100%;max-width:500px}.bar span{display:block;height:1em;background:#4a7}
img{max-width:160px;max-height:160px;display:block}
"""


@dataclass(frozen=True)
class Caption:
    """A caption captiond wrote recently."""

    path: Path
    name: str
    caption: str
    source: str
    when: float


@dataclass(frozen=True)
class PageData:
    """Everything the page shows, gathered by the daemon."""

    counts: Mapping[RowState, int]
    queued: int
    eta_seconds: float | None
    paused: str
    problem: str
    endpoints: Sequence[Mapping[str, object]]
    captions: Sequence[Caption]
    failures: Sequence[tuple[str, str, str]]  # name, state, reason
    now: float
    schedule: str = ""
    degraded: Mapping[str, str] = field(default_factory=dict)


def render(data: PageData) -> bytes:
    """Return the page as UTF-8 HTML; every text in it is escaped."""
    done = data.counts.get(RowState.DONE, 0)
    total = done + data.queued
    percent = 100.0 * done / total if total else 100.0
    state = (f'<p class="bad">{_e(data.problem)}</p>' if data.problem else
             f'<p class="bad">{_e(data.paused)}</p>' if data.paused else '<p class="ok">captioning</p>')
    degraded = "".join(f'<p class="bad">Degraded: {_e(endpoint)}: {_e(reason)}. Restart the model server '
                       "(e.g. <code>docker compose restart ollama</code>).</p>"
                       for endpoint, reason in data.degraded.items())
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta http-equiv="refresh" content="30">', "<title>captiond</title>", f"<style>{STYLE}</style>",
        "</head><body>", f"<h1>captiond {_e(__version__)}</h1>",
        f'<p class="note">as of {_e(_clock(data.now))}; this page reloads every 30 seconds</p>', state, degraded,
        "<h2>Progress</h2>",
        f'<div class="bar" role="progressbar" aria-valuenow="{percent:.0f}" aria-valuemin="0" aria-valuemax="100">'
        f'<span style="width:{percent:.1f}%"></span></div>',
        f"<p>{done} done, {data.queued} queued, {data.counts.get(RowState.FAILED, 0)} failed, "
        f"{data.counts.get(RowState.QUARANTINED, 0)} quarantined; {_e(_eta(data.eta_seconds, data.queued))}</p>",
    ]
    if data.schedule:
        parts.append(f"<p>Quiet hours: requests only in {_e(data.schedule)}"
                     f"{'; ' + _e(data.paused) if data.paused else ' (open now)'}</p>")
    parts += ["<h2>Model servers</h2>", _endpoints(data.endpoints), "<h2>Latest captions</h2>",
              _captions(data.captions), "<h2>Latest failures</h2>", _failures(data.failures),
              '<p class="note">This page shows your photos to whoever can reach this address.</p>',
              "</body></html>"]
    return "\n".join(parts).encode("utf-8")


def _endpoints(endpoints: Sequence[Mapping[str, object]]) -> str:
    if not endpoints:
        return "<p>No answers yet.</p>"
    rows = ["<table><tr><th>Endpoint</th><th>Health</th><th>Requests</th><th>Errors</th><th>Seconds per image</th>"
            "<th>Tokens per second (baseline)</th><th>In GPU memory</th><th>State</th></tr>"]
    for item in endpoints:
        healthy = item.get("healthy", True)
        baseline = item.get("baseline_tokens_per_second")
        vram = item.get("vram_fraction")
        rows.append(
            f"<tr><td>{_e(item.get('endpoint'))}</td>"
            f"<td class=\"{'ok' if healthy else 'bad'}\">{'answers' if healthy else 'set aside'}</td>"
            f"<td>{_e(item.get('requests', ''))}</td><td>{_e(item.get('errors', ''))}</td>"
            f"<td>{_e(_number(item.get('seconds_per_image') or item.get('mean_seconds')))}</td>"
            f"<td>{_e(_number(item.get('tokens_per_second')))}"
            f"{' (' + _e(_number(baseline)) + ')' if isinstance(baseline, int | float) else ''}</td>"
            f"<td>{_e(f'{vram:.0%}' if isinstance(vram, int | float) else '')}</td>"
            f"<td class=\"{'bad' if item.get('degraded') else 'ok'}\">"
            f"{_e('degraded: ' + str(item['degraded']) if item.get('degraded') else 'normal')}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _captions(captions: Sequence[Caption]) -> str:
    if not captions:
        return "<p>None yet.</p>"
    rows = ["<table><tr><th>Photo</th><th>File</th><th>Caption</th><th>Source</th><th>When</th></tr>"]
    for item in captions:
        source = thumbnail(item.path)
        image = f'<img alt="" src="{html.escape(source, quote=True)}">' if source else ""
        rows.append(f"<tr><td>{image}</td><td>{_e(item.name)}</td><td>{_e(item.caption)}</td>"
                    f"<td>{_e(item.source)}</td><td>{_e(_clock(item.when))}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _failures(failures: Sequence[tuple[str, str, str]]) -> str:
    if not failures:
        return "<p>None.</p>"
    rows = ["<table><tr><th>File</th><th>State</th><th>Reason</th></tr>"]
    rows += [f"<tr><td>{_e(name)}</td><td>{_e(state)}</td><td>{_e(reason)}</td></tr>"
             for name, state, reason in failures]
    rows.append("</table>")
    return "".join(rows)


def thumbnail(path: Path) -> str:
    """Return a small JPEG of a photo as a data: URL ("" when it cannot be made, e.g. RAW)."""
    try:
        status = path.stat()
    except OSError:
        return ""
    return _thumbnail(path, status.st_mtime_ns, status.st_size)


@functools.lru_cache(maxsize=64)
def _thumbnail(path: Path, mtime_ns: int, size: int) -> str:
    if is_raw(path):
        return ""
    try:
        jpeg = prepare_file(path, THUMBNAIL_PIXELS).jpeg
    except CaptiondError:
        return ""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _e(value: object) -> str:
    """Escape a text for HTML, with credentials redacted (an address or an error may carry one)."""
    return html.escape(redact("" if value is None else str(value)), quote=True)


def _number(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else ""


def _clock(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _eta(seconds: float | None, queued: int) -> str:
    if queued == 0:
        return "nothing waiting"
    if seconds is None:
        return "time left: not known yet"
    minutes = int(seconds // 60)
    if minutes >= 120:
        return f"about {minutes // 60} h {minutes % 60} min left at the current pace"
    return f"about {max(1, minutes)} min left at the current pace"
