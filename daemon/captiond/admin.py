"""What `status`, `retry` and `ls` need to act on the running daemon: its state database, its settings, its user.

The daemon records its effective settings (model, addresses with secrets redacted, originals, config file,
user) in its state database at start, so `captiond status` from a shell checks the server the daemon uses,
not whatever that shell's environment would pick.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pwd
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__
from .config import API_FORMATS, KNOWN_ENGINES, Config, Endpoint, ModelConfig, one_of
from .errors import CaptiondError, UsageError
from .library import shown
from .model import ModelClient
from .pipeline import ModelRun
from .redaction import redact
from .schedule import QuietHours
from .service import RUNTIME_FILE
from .state import DATABASE_NAME, RowState, StateStore

log = logging.getLogger(__name__)

SYSTEMD_STATE_DIR = Path("/var/lib/captiond")  # the unit's StateDirectory=captiond
RUNTIME_FRESH = 120.0  # seconds: an older runtime.json belongs to a daemon that is gone


def daemon_settings(config: Config, runs: Mapping[str, ModelRun]) -> dict[str, object]:
    """Return what the daemon records about itself: no secrets, addresses redacted."""
    return {
        "version": __version__, "pid": os.getpid(), "uid": os.geteuid(), "user": _user_name(os.geteuid()),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": str(config.path) if config.path else "",
        "originals": str(config.daemon.originals or ""), "state_dir": str(config.daemon.state_dir),
        "write": config.daemon.write, "parallel": config.daemon.parallel, "listen": config.daemon.listen,
        "models": [_model_settings(kind, run.model) for kind, run in runs.items()],
    }


def _model_settings(kind: str, model: ModelConfig) -> dict[str, object]:
    service = model.service
    return {"type": kind, "model": model.model_id, "engine": model.engine,
            "request_format": service.request_format, "response_format": service.response_format,
            "endpoints": [{"uri": endpoint.redacted_uri(), "parallel": endpoint.parallel}
                          for endpoint in service.all_endpoints()],
            "key": "set" if any(endpoint.key for endpoint in service.all_endpoints()) or service.key else ""}


def recorded_model(settings: Mapping[str, Any], config: Config, kind: str = "caption") -> ModelConfig | None:
    """Return the model the daemon recorded using (its name and addresses), or None when it recorded none.

    Keys are not recorded; the one this shell's configuration gives is sent, if any.
    """
    for entry in settings.get("models") or []:
        if not isinstance(entry, dict) or entry.get("type") != kind:
            continue
        local = config.model(kind)
        key = local.service.key if local is not None else ""
        # The recorded addresses are redacted: where this configuration has the same address, use its
        # credentials (user part, token parameters, Key) rather than the *** that stands for them.
        known = {endpoint.redacted_uri(): endpoint for endpoint in (local.service.all_endpoints() if local else ())}
        endpoints = tuple(
            dataclasses.replace(known[str(item.get("uri"))], parallel=item.get("parallel"))
            if str(item.get("uri")) in known else Endpoint(str(item.get("uri", "")), item.get("parallel"), key)
            for item in entry.get("endpoints") or [] if isinstance(item, dict))
        if not endpoints:
            return None
        base = local if local is not None else ModelConfig(index=0, type=kind)
        service = dataclasses.replace(base.service, uri=endpoints[0].uri, key=key, endpoints=endpoints,
                                      request_format=one_of(str(entry.get("request_format")), API_FORMATS)
                                      or base.service.request_format,
                                      response_format=one_of(str(entry.get("response_format")), API_FORMATS)
                                      or base.service.response_format)
        return dataclasses.replace(base, name=str(entry.get("model") or base.model_id), version="",
                                   engine=one_of(str(entry.get("engine")), KNOWN_ENGINES) or base.engine,
                                   service=service)
    return None


def find_database(config: Config, explicit: bool) -> Path:
    """Return the state database to read: Daemon.StateDir's, else the systemd unit's (/var/lib/captiond)."""
    database = config.daemon.state_dir / DATABASE_NAME
    if database.exists():
        return database
    fallback = SYSTEMD_STATE_DIR / DATABASE_NAME
    if not explicit and fallback.exists():
        log.info("no state database at %s: using the systemd unit's, %s", database, fallback)
        return fallback
    raise UsageError(f"no state database at {database}: `captiond watch` has not run with this StateDir yet "
                     "(the systemd unit keeps it in /var/lib/captiond: --state-dir /var/lib/captiond)")


def act_as_owner(database: Path) -> None:
    """As root over another user's state database, become that user; refuse what would break the daemon.

    Root writing the daemon's database would leave root-owned files (its -wal and -shm) that the daemon
    cannot open. So root becomes the database's owner (dropping every other group); anyone else who cannot
    write it is told to run the command as its owner.
    """
    status = database.stat()
    owner = _user_name(status.st_uid)
    if os.geteuid() == 0 and status.st_uid != 0:
        try:
            os.setgroups([])
            os.setgid(status.st_gid)
            os.setuid(status.st_uid)
        except OSError as exc:
            raise UsageError(f"{database} belongs to {owner}, and this root cannot become {owner} ({exc.strerror}): "
                             f"run the command as that user (sudo -u {owner} {_command_line()})") from exc
        log.info("running as %s, the owner of %s", owner, database)
        return
    if status.st_uid != os.geteuid() and not os.access(database, os.W_OK):
        raise UsageError(f"cannot write {database}: it belongs to {owner}; run the command as that user "
                         f"(sudo -u {owner} {_command_line()})")


def _user_name(uid: int) -> str:
    """Return the user's name, or the number of a user without one (`docker run --user 1500`)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _command_line() -> str:
    return " ".join(["captiond", *sys.argv[1:]])


def describe_settings(settings: Mapping[str, Any]) -> list[str]:
    """Return the lines `status` prints about the daemon that recorded these settings."""
    if not settings:
        return ["daemon: no settings recorded (it has not started since they are kept)"]
    lines = [f"daemon: pid {settings.get('pid')} as {settings.get('user')}, started {settings.get('started')}, "
             f"captiond {settings.get('version')}",
             f"config: {settings.get('config') or '(none: defaults)'}",
             f"originals: {settings.get('originals')} ({settings.get('write')})"]
    for entry in settings.get("models") or []:
        if isinstance(entry, dict):
            addresses = ", ".join(str(item.get("uri")) for item in entry.get("endpoints") or []
                                  if isinstance(item, dict))
            lines.append(f"{entry.get('type')}: {entry.get('model')} ({entry.get('engine')}) on {addresses}")
    return lines



def root_over_library(originals: Path) -> str:
    """Return a warning when root works on a library another user owns (its new sidecars would be root's), or ""."""
    try:
        owner = originals.stat().st_uid
    except OSError:
        return ""
    if os.geteuid() != 0 or owner == 0:
        return ""
    name = _user_name(owner)
    return (f"running as root over {originals}, which belongs to {name}: new sidecars will belong to root, and a "
            f"daemon running as {name} cannot update them. Run as {name} instead (sudo -u {name} ..., or "
            f"docker compose exec --user {owner} captiond captiond run ...)")


def status_report(config: Config, database: Path) -> dict[str, Any]:
    """Return what `captiond status` shows: settings, queue counts, latest failures, the model server, the daemon."""
    state = StateStore(database.parent, readonly=True)
    try:
        counts, failures, next_due = state.counts(), state.recent_failures(10), state.next_due()
        settings = state.settings()
    finally:
        state.close()
    originals = Path(str(settings["originals"])) if settings.get("originals") else config.daemon.originals
    schedule = QuietHours(config.daemon.schedule).paused_until() if config.daemon.schedule else ""
    return {
        "database": str(database), "daemon": settings, "counts": counts,
        "queue": counts[RowState.PENDING] + counts[RowState.RUNNING],
        "schedule": (schedule or "open") if config.daemon.schedule else None,
        "running": _runtime(database.parent / RUNTIME_FILE),
        "next_due_in_seconds": None if next_due is None else max(0.0, round(next_due - time.time(), 1)),
        "model": _reachable(settings, config), "apps": app_addresses(config),
        "failures": [{"path": shown(row.path, originals), "state": row.state,
                      "attempts": row.attempts, "reason": redact(row.last_error)} for row in failures],
    }


def _reachable(settings: Mapping[str, Any], config: Config) -> str:
    """Return whether the daemon's model server answers, as one line."""
    # The server the daemon uses (it recorded it), not the one this shell's environment would pick.
    model = recorded_model(settings, config) or config.model("caption")
    if model is None or not model.usable:
        return "no caption model configured"
    client = ModelClient(model, config.daemon)
    try:
        client.check(retry=False)
        return f"{model.model_id} on {client.uri}: ok"
    except CaptiondError as error:
        return redact(str(error))
    finally:
        client.close()


def app_addresses(config: Config) -> dict[str, str]:
    """Return the photo apps captiond tells about written files, with their secrets redacted."""
    apps = {"PhotoPrism": config.daemon.photoprism, "Immich": config.daemon.immich}
    return {name: app.redacted() for name, app in apps.items() if app is not None}


def _runtime(path: Path) -> dict[str, Any] | None:
    """Return what the running daemon wrote about itself, or None when it is not running (or too old)."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or time.time() - float(document.get("updated", 0)) > RUNTIME_FRESH:
        return None
    return document


def model_row(config: Config, model: ModelConfig) -> dict[str, object]:
    """Return one row of `captiond ls`: a model as PhotoPrism's `vision ls` shows it, and what captiond does with it."""
    effective = config.model(model.type) is model
    builtin = model.engine not in ("ollama", "openai")
    if model.disabled:
        status = "Disabled"
    elif effective and model.usable:
        status = "Enabled (used by captiond" + (", from the caption model)" if model.implied else ")")
    elif effective:
        status = "Enabled (run by PhotoPrism, not captiond)"
    else:
        status = "Enabled (overridden by a later entry)"
    service = model.service
    return {
        "model": model.model_id, "type": model.type, "engine": model.engine,
        "endpoint": "" if builtin else f"{service.method} {service.redacted_uri()}",
        "format": "" if builtin else f"{service.request_format}:{service.response_format}"
        + (f" ({model.format})" if model.format else ""),
        "resolution": model.resolution, "run": model.run, "options": {} if builtin else dict(model.options),
        "status": status, "key": "set" if service.key else "", "think": service.think, "stream": service.stream,
    }
