"""Tell PhotoPrism and Immich about written captions, so they show up without a manual index.

    written(photo) ──▶ pending folders (PhotoPrism) / pending photos (Immich) ──▶ send_due() ──▶ the apps

PhotoPrism: `POST /api/v1/index {"path": FOLDER, "rescan": false, "cleanup": false}` with the app
password as `Authorization: Bearer`: it indexes that folder only, and only files whose modification
time changed (our sidecars). One request per folder, at most once per `Interval` per folder.

Immich: each photo is looked up by its original path (`POST /api/search/metadata {"originalPath"}`,
a substring match there, so only exact matches count), then one `POST /api/assets/jobs
{"assetIds", "name": "refresh-metadata"}` re-reads the metadata of exactly those assets (header
`x-api-key`). Metadata extraction reads only a sidecar Immich already knows; when we created a new
sidecar, sidecar discovery (`PUT /api/jobs/sidecar {"command": "start", "force": false}`, which
looks only at assets without a sidecar and extracts metadata for each one it finds; it needs an
admin key) is started as well.

Failures never touch captioning: they are logged (never with the secret), counted in /metrics,
and the folder or photos are tried again later with growing delays.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from .backoff import Backoff
from .config import AppConfig, DaemonConfig
from .errors import AppError, UsageError
from .executor import start_thread
from .library import printable

log = logging.getLogger(__name__)

QUIET_SECONDS = 2.0  # wait this long after a folder's first write, so one request covers a burst
RETRIES = Backoff(5.0, 600.0)  # a request to an app that failed transiently: 5 s doubling to 10 minutes
SEARCH_PAGE = 100


@dataclass
class _Pending:
    """Work for one app target (a folder, or the Immich batch) waiting to be sent."""

    since: float
    attempts: int = 0
    next_try: float = 0.0


class _Http:
    """One app's HTTP client: its secret header, its errors turned into AppError."""

    def __init__(self, app: AppConfig, name: str, headers: dict[str, str], timeout: float) -> None:
        self.app = app
        self.name = name
        self.client = httpx.Client(headers={"User-Agent": "captiond", **headers},
                                   timeout=httpx.Timeout(10.0, read=timeout))

    def call(self, method: str, path: str, body: Any) -> Any:
        """Send one request; return its JSON (None without a body); raise AppError when it failed."""
        try:
            response = self.client.request(method, f"{self.app.url}{path}", json=body)
        except httpx.HTTPError as exc:
            raise AppError(f"{self.name} at {self.app.url} did not answer: {type(exc).__name__}") from exc
        except RuntimeError as exc:  # the client was closed while stopping
            raise AppError(f"{self.name}: stopped") from exc
        if response.status_code >= 300:
            message = _error_message(response)
            transient = response.status_code in (408, 409, 423, 425, 429) or response.status_code >= 500
            raise AppError(f"{self.name} {method} {path}: HTTP {response.status_code} {message}", transient)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AppError(f"{self.name} {method} {path}: the answer is not JSON") from exc

    def close(self) -> None:
        """Close the connections."""
        self.client.close()


class PhotoPrismIndexer:
    """Asks PhotoPrism to index one folder of the originals (only files that changed)."""

    def __init__(self, app: AppConfig, originals: Path) -> None:
        self.app = app
        self.originals = originals
        # PhotoPrism indexes within the request and answers when done: allow it time.
        self.http = _Http(app, "PhotoPrism", {"Authorization": f"Bearer {app.token}"}, timeout=600.0)

    def folder_of(self, photo: Path) -> str:
        """Return the photo's folder relative to the originals, as PhotoPrism names it ('/' for the top)."""
        try:
            relative = photo.parent.relative_to(self.originals).as_posix()
        except ValueError:
            relative = "."
        return "/" if relative == "." else relative

    def index(self, folder: str) -> None:
        """Index one folder without a full rescan; raise AppError when PhotoPrism refused or did not answer."""
        self.http.call("POST", "/api/v1/index", {"path": folder, "rescan": False, "cleanup": False})

    def search_paths(self, query: str) -> list[Path]:
        """Return the files PhotoPrism finds for a search query (album:, label:, person: ...), as our paths."""
        paths: list[Path] = []
        offset = 0
        while True:
            query_string = httpx.QueryParams({"q": query, "count": 1000, "offset": offset, "merged": "false"})
            results = self.http.call("GET", f"/api/v1/photos?{query_string}", None) or []
            if not isinstance(results, list):
                raise AppError("PhotoPrism: the search answer is not a list", transient=False)
            paths += [self.originals / str(item["FileName"]) for item in results
                      if isinstance(item, dict) and item.get("FileName")]
            if len(results) < 1000:
                return paths
            offset += len(results)


class ImmichRefresher:
    """Asks Immich to re-read the metadata (and find new sidecars) of exactly the photos we wrote."""

    def __init__(self, app: AppConfig, originals: Path) -> None:
        self.app = app
        self.originals = originals
        self.http = _Http(app, "Immich", {"x-api-key": app.token}, timeout=60.0)
        self._discovery_refused = False

    def immich_path(self, photo: Path) -> str:
        """Return the photo's path as Immich sees it (Daemon.Immich.Originals replaces our originals folder)."""
        if not self.app.originals:
            return str(photo)
        try:
            return f"{self.app.originals}/{photo.relative_to(self.originals).as_posix()}"
        except ValueError:
            return str(photo)

    def asset_ids(self, photo: Path) -> list[str]:
        """Return the ids of the assets whose original path is exactly this photo's."""
        wanted = self.immich_path(photo)
        answer = self.http.call("POST", "/api/search/metadata",
                                {"originalPath": wanted, "size": SEARCH_PAGE, "withDeleted": False})
        assets = (answer or {}).get("assets") or {}
        items = assets.get("items") if isinstance(assets, dict) else None
        if not isinstance(items, list):
            raise AppError("Immich: the search answer holds no assets.items", transient=False)
        return [str(item["id"]) for item in items
                if isinstance(item, dict) and item.get("originalPath") == wanted and item.get("id")]

    def refresh(self, photos: Iterable[Path], new_sidecars: bool) -> int:
        """Queue metadata extraction for the photos' assets (and sidecar discovery); return how many assets."""
        ids = sorted({asset for photo in photos for asset in self.asset_ids(photo)})
        if ids:
            self.http.call("POST", "/api/assets/jobs", {"assetIds": ids, "name": "refresh-metadata"})
        if new_sidecars and ids:
            self.discover_sidecars()
        return len(ids)

    def discover_sidecars(self) -> None:
        """Start Immich's sidecar discovery; a key that may not (not an admin's) is a warning, once."""
        try:
            self.http.call("PUT", "/api/jobs/sidecar", {"command": "start", "force": False})
        except AppError as error:
            if error.transient:
                raise
            if not self._discovery_refused:
                log.warning("%s: Immich reads our new sidecars only at its next sidecar discovery job (it needs "
                            "an admin's API key to be started by captiond)", error.reason)
            self._discovery_refused = True


class AppNotifier:
    """Collects written photos and tells the configured apps; thread-safe; never raises to its callers."""

    def __init__(self, daemon: DaemonConfig, originals: Path, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.photoprism = PhotoPrismIndexer(daemon.photoprism, originals) if daemon.photoprism else None
        self.immich = ImmichRefresher(daemon.immich, originals) if daemon.immich else None
        self.clock = clock
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._folders: dict[str, _Pending] = {}
        self._last_index: dict[str, float] = {}
        self._photos: dict[Path, bool] = {}  # photo -> we created its sidecar
        self._immich_batch: _Pending | None = None
        self._last_refresh = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        registry = registry or CollectorRegistry()
        self.requests = Counter("captiond_app_requests", "Requests to PhotoPrism and Immich, by outcome",
                                ["app", "outcome"], registry=registry)
        self.pending = Gauge("captiond_app_pending", "Folders (PhotoPrism) or photos (Immich) waiting to be sent",
                             ["app"], registry=registry)

    @property
    def enabled(self) -> bool:
        """Return whether any app is configured."""
        return self.photoprism is not None or self.immich is not None

    def written(self, photo: Path, created_sidecar: bool = False) -> None:
        """Note a photo whose caption or keywords were written (cheap; the sending happens later)."""
        now = self.clock()
        with self._lock:
            if self.photoprism is not None:
                self._folders.setdefault(self.photoprism.folder_of(photo), _Pending(now))
                self.pending.labels("photoprism").set(len(self._folders))
            if self.immich is not None:
                self._photos[photo] = self._photos.get(photo, False) or created_sidecar
                if self._immich_batch is None:
                    self._immich_batch = _Pending(now)
                self.pending.labels("immich").set(len(self._photos))

    def send_due(self, everything: bool = False, wait: float = -1) -> bool:
        """Send what is due (everything pending when `everything`, e.g. at the end of a run).

        Returns False, having sent nothing, when another send still runs after `wait` seconds (-1: no limit).
        """
        if not self._send_lock.acquire(timeout=wait):
            return False
        try:
            for folder in self._due_folders(everything):
                self._index(folder)
            if self._immich_due(everything):
                self._refresh()
        finally:
            self._send_lock.release()
        return True

    def start(self) -> None:
        """Send in the background, once a second, until stop()."""
        if not self.enabled:
            return
        self._thread = start_thread(self._loop, "captiond-apps")

    def stop(self, flush_seconds: float = 10.0) -> None:
        """Stop the background sender, try once to send what is pending, and close the connections."""
        deadline = self.clock() + flush_seconds
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=flush_seconds)
        self.flush(max(0.0, deadline - self.clock()))
        for client in (self.photoprism, self.immich):
            if client is not None:
                client.http.close()

    def flush(self, seconds: float) -> None:
        """Send everything pending, retrying transient failures for up to `seconds`; log what is left."""
        deadline = self.clock() + seconds
        while self.has_pending():
            # A request of the background sender may still run (PhotoPrism answers when its index is done).
            if not self.send_due(everything=True, wait=max(0.0, deadline - self.clock())):
                break
            if not self.has_pending() or self.clock() >= deadline or not self._retryable():
                break
            time.sleep(min(1.0, max(0.0, deadline - self.clock())))  # the stop event is set by now
        with self._lock:
            folders, photos = len(self._folders), len(self._photos)
        if folders or photos:
            log.warning("could not tell the photo apps about every change (%d folders for PhotoPrism, %d photos "
                        "for Immich): they will see the new sidecars at their next index", folders, photos)

    def has_pending(self) -> bool:
        """Return whether anything waits to be sent."""
        with self._lock:
            return bool(self._folders or self._photos)

    # -- internals ---------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.send_due()

    def _retryable(self) -> bool:
        with self._lock:
            return any(pending.attempts < 3 for pending in self._folders.values()) or (
                self._immich_batch is not None and self._immich_batch.attempts < 3)

    def _due_folders(self, everything: bool) -> list[str]:
        assert self.photoprism is not None or not self._folders
        now = self.clock()
        interval = self.photoprism.app.interval if self.photoprism else 0.0
        with self._lock:
            return [folder for folder, pending in self._folders.items()
                    if everything or now >= max(pending.since + min(QUIET_SECONDS, interval),
                                                self._last_index.get(folder, float("-inf")) + interval,
                                                pending.next_try)]

    def _immich_due(self, everything: bool) -> bool:
        if self.immich is None:
            return False
        now = self.clock()
        interval = self.immich.app.interval
        with self._lock:
            batch = self._immich_batch
            if batch is None or not self._photos:
                return False
            return everything or now >= max(batch.since + min(QUIET_SECONDS, interval),
                                            self._last_refresh + interval, batch.next_try)

    def _index(self, folder: str) -> None:
        assert self.photoprism is not None
        with self._lock:
            pending = self._folders.pop(folder, None)
        if pending is None:
            return
        started = self.clock()
        try:
            self.photoprism.index(folder)
        except AppError as error:
            self._failed("photoprism", error, pending)
            with self._lock:
                since = self._folders.get(folder, pending).since
                self._folders[folder] = _Pending(min(since, pending.since), pending.attempts + 1,
                                                 self.clock() + RETRIES.delay(pending.attempts))
            return
        finally:
            with self._lock:
                self.pending.labels("photoprism").set(len(self._folders))
        self._last_index[folder] = started
        self.requests.labels("photoprism", "ok").inc()
        log.info("asked PhotoPrism to index %s", printable(folder))

    def _refresh(self) -> None:
        assert self.immich is not None
        with self._lock:
            photos, self._photos = self._photos, {}
            batch, self._immich_batch = self._immich_batch, None
        if not photos or batch is None:
            return
        started = self.clock()
        try:
            count = self.immich.refresh(list(photos), new_sidecars=any(photos.values()))
        except AppError as error:
            self._failed("immich", error, batch)
            with self._lock:
                for photo, created in photos.items():
                    self._photos[photo] = self._photos.get(photo, False) or created
                self._immich_batch = _Pending(batch.since, batch.attempts + 1,
                                              self.clock() + RETRIES.delay(batch.attempts))
                self.pending.labels("immich").set(len(self._photos))
            return
        self._last_refresh = started
        with self._lock:
            self.pending.labels("immich").set(len(self._photos))
        self.requests.labels("immich", "ok").inc()
        log.info("asked Immich to re-read the metadata of %d assets (%d photos written)", count, len(photos))

    def _failed(self, app: str, error: AppError, pending: _Pending) -> None:
        self.requests.labels(app, "failed").inc()
        if not error.transient:
            log.error("%s (captioning goes on; will try again later)", error.reason)
        else:
            log.warning("%s; will try again in %.0fs", error.reason, RETRIES.delay(pending.attempts))


def _error_message(response: httpx.Response) -> str:
    """Return the error text of a PhotoPrism ({"error"}) or Immich ({"message", "error"}) answer."""
    try:
        document = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(document, dict):
        message = document.get("message") or document.get("error") or ""
        if isinstance(message, list):
            message = "; ".join(str(part) for part in message)
        return str(message)[:200]
    return ""


def photoprism_files(query: str, app: AppConfig, originals: Path) -> frozenset[str]:
    """Return the files (relative to the originals) PhotoPrism's search finds for a query (album:, person: ...).

    Raises UsageError when PhotoPrism cannot answer. A query that finds nothing selects nothing (the filter
    never widens to the whole library).
    """
    indexer = PhotoPrismIndexer(app, originals)
    try:
        found = indexer.search_paths(query)
    except AppError as error:
        raise UsageError(f"cannot resolve {query} through PhotoPrism: {error.reason}") from error
    finally:
        indexer.http.close()
    log.info("PhotoPrism finds %d files for %s", len(found), printable(query))
    return frozenset(path.relative_to(originals).as_posix() for path in found)
