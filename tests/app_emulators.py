"""Small loopback emulators of the PhotoPrism and Immich endpoints captiond calls, for tests.

PhotoPrism (internal/api/index.go, photos_search.go): ``POST /api/v1/index`` with the JSON body
``{"path", "rescan", "cleanup"}`` (form.IndexOptions), answered ``{"code": 200, "message": ...}``;
``GET /api/v1/photos?q=&count=&offset=&merged=`` answers a JSON list of photos with ``FileName``
(relative to the originals). Auth: an app password as ``Authorization: Bearer`` or ``X-Auth-Token``;
without it ``401 {"code": 401, "error": "Unauthorized"}``.

Immich (open-api spec): ``POST /api/search/metadata`` (MetadataSearchDto; ``originalPath`` is a
substring match) answers ``{"albums": {...}, "assets": {"total", "count", "items", "facets",
"nextPage"}}``; ``POST /api/assets/jobs`` (AssetJobsDto ``{"assetIds", "name"}``) answers 204;
``PUT /api/jobs/sidecar`` (QueueCommandDto ``{"command", "force"}``, admin only) answers the queue
status. Auth: ``x-api-key``; a wrong key is ``401 {"message": "Invalid API key", "error":
"Unauthorized", "statusCode": 401}``; a body that fails validation is 400 with a list of messages.

``fail_next(status, count)`` makes the next `count` authenticated requests answer that status.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JOB_NAMES = ("refresh-faces", "refresh-metadata", "regenerate-thumbnail", "transcode-video")


@dataclass
class Call:
    """One request an emulator received (after authentication)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


class _AppServer:
    """A threaded HTTP server on 127.0.0.1, port 0, with recorded calls and scripted failures."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.rejected: list[Call] = []
        self.all_headers: list[dict[str, str]] = []
        self._failures: list[int] = []
        self._lock = threading.Lock()
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                parsed = urllib.parse.urlsplit(self.path)
                call = Call(self.command, parsed.path, urllib.parse.parse_qs(parsed.query), body,
                            {key.lower(): value for key, value in self.headers.items()})
                status, answer = emulator.handle(call)
                data = b"" if answer is None else json.dumps(answer).encode()
                self.send_response(status)
                if data:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _AppServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail_next(self, status: int, count: int = 1) -> None:
        """Answer the next `count` authenticated requests with this HTTP status."""
        with self._lock:
            self._failures += [status] * count

    def handle(self, call: Call) -> tuple[int, Any]:
        with self._lock:
            self.all_headers.append(call.headers)
            if not self.authorized(call.headers):
                self.rejected.append(call)
                return self.unauthorized()
            if self._failures:
                status = self._failures.pop(0)
                self.calls.append(call)
                return status, self.error(status)
            self.calls.append(call)
        return self.route(call)

    def authorized(self, headers: dict[str, str]) -> bool:
        raise NotImplementedError

    def unauthorized(self) -> tuple[int, Any]:
        raise NotImplementedError

    def error(self, status: int) -> Any:
        raise NotImplementedError

    def route(self, call: Call) -> tuple[int, Any]:
        raise NotImplementedError


class PhotoPrismEmulator(_AppServer):
    """PhotoPrism's index and photo search endpoints; `search_results` maps search terms to FileNames.

    A query of several terms finds the files every one of its terms finds (PhotoPrism ANDs them).
    """

    def __init__(self, token: str = "app-password-0123") -> None:
        super().__init__()
        self.token = token
        self.search_results: dict[str, list[str]] = {}

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("authorization") == f"Bearer {self.token}" or headers.get("x-auth-token") == self.token

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"code": 401, "error": "Unauthorized"}

    def error(self, status: int) -> Any:
        return {"code": status, "error": {429: "Too many requests", 500: "Something went wrong, try again"}
                .get(status, "Failed")}

    def route(self, call: Call) -> tuple[int, Any]:
        if call.method == "POST" and call.path == "/api/v1/index":
            body = call.body
            if not isinstance(body, dict) or not isinstance(body.get("path", ""), str):
                return 400, {"code": 400, "error": "Unable to do that"}
            return 200, {"code": 200, "message": "Indexing completed in 1 s"}
        if call.method == "GET" and call.path == "/api/v1/photos":
            if not call.query.get("count"):
                return 400, {"code": 400, "error": "Unable to do that"}
            count, offset = int(call.query["count"][0]), int(call.query.get("offset", ["0"])[0])
            names = self.search(call.query.get("q", [""])[0])[offset:offset + count]
            return 200, [{"UID": f"p{index}", "FileName": name, "Type": "image"} for index, name in enumerate(names)]
        return 404, {"code": 404, "error": "Not found"}

    def search(self, query: str) -> list[str]:
        """Return the FileNames for a query: those every term finds, in the first term's order."""
        terms = re.findall(r'(?:[^\s"]|"[^"]*")+', query)
        if not terms:
            return []
        found = [self.search_results.get(term.replace('"', ""), []) for term in terms]
        return [name for name in found[0] if all(name in names for names in found[1:])]

    def index_paths(self) -> list[str]:
        """Return the folder of every index request, in order."""
        return [call.body["path"] for call in self.calls if call.path == "/api/v1/index"]


class ImmichEmulator(_AppServer):
    """Immich's metadata search, asset jobs and sidecar queue; `assets` maps originalPath to an asset id."""

    def __init__(self, key: str = "immich-key-0123", admin: bool = True) -> None:
        super().__init__()
        self.key = key
        self.admin = admin
        self.assets: dict[str, str] = {}

    def add_asset(self, original_path: str) -> str:
        """Register an asset (as if Immich had imported it); return its id."""
        self.assets[original_path] = str(uuid.uuid4())
        return self.assets[original_path]

    def authorized(self, headers: dict[str, str]) -> bool:
        return headers.get("x-api-key") == self.key

    def unauthorized(self) -> tuple[int, Any]:
        return 401, {"message": "Invalid API key", "error": "Unauthorized", "statusCode": 401}

    def error(self, status: int) -> Any:
        return {"message": "Internal server error" if status >= 500 else "Error", "statusCode": status}

    def route(self, call: Call) -> tuple[int, Any]:
        body = call.body if isinstance(call.body, dict) else {}
        if call.method == "POST" and call.path == "/api/search/metadata":
            wanted = body.get("originalPath", "")
            items = [{"id": asset, "originalPath": path, "type": "IMAGE"}
                     for path, asset in self.assets.items() if wanted in path]
            return 200, {"albums": {"total": 0, "count": 0, "items": [], "facets": []},
                         "assets": {"total": len(items), "count": len(items), "items": items, "facets": [],
                                    "nextPage": None}}
        if call.method == "POST" and call.path == "/api/assets/jobs":
            ids = body.get("assetIds")
            if body.get("name") not in JOB_NAMES or not isinstance(ids, list):
                return 400, {"message": ["name must be one of the following values: " + ", ".join(JOB_NAMES)],
                             "error": "Bad Request", "statusCode": 400}
            return 204, None
        if call.method == "PUT" and call.path == "/api/jobs/sidecar":
            if not self.admin:
                return 403, {"message": "Forbidden", "error": "Forbidden", "statusCode": 403}
            if body.get("command") not in ("start", "pause", "resume", "empty", "clear-failed"):
                return 400, {"message": ["command must be a valid enum value"], "error": "Bad Request",
                             "statusCode": 400}
            return 200, {"jobCounts": {"active": 1, "completed": 0, "failed": 0, "delayed": 0, "waiting": 0,
                                       "paused": 0}, "queueStatus": {"isActive": True, "isPaused": False}}
        return 404, {"message": f"Cannot {call.method} {call.path}", "error": "Not Found", "statusCode": 404}

    def jobs(self) -> list[dict[str, Any]]:
        """Return the body of every asset-jobs request, in order."""
        return [call.body for call in self.calls if call.path == "/api/assets/jobs"]

    def sidecar_commands(self) -> list[dict[str, Any]]:
        """Return the body of every sidecar-queue command, in order."""
        return [call.body for call in self.calls if call.path == "/api/jobs/sidecar"]
