"""Model server addresses: OLLAMA_HOST read as Ollama reads it, and Uris that carry the wrong API path.

PhotoPrism's vision.yml names the generation endpoint itself (``http://ollama:11434/api/generate``);
``OLLAMA_BASE_URL`` (PhotoPrism's) and ``OLLAMA_HOST`` (Ollama's own) name only the server. People mix
them up, so an address with no API path, with two, or with the wrong one is understood where its meaning
is plain and refused with a message naming the fix where it is not.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_OLLAMA_PORT = "11434"
GENERATION_PATHS = {"ollama": ("/api/generate", "/api/chat"), "openai": ("/v1/chat/completions", "/v1/responses")}
DEFAULT_PATHS = {"ollama": "/api/generate", "openai": "/v1/chat/completions"}
BASES = {"ollama": "/api", "openai": "/v1"}
FORMAT_NAMES = {"ollama": "Ollama", "openai": "OpenAI-compatible"}
# Every API path of Ollama and of OpenAI-compatible servers that a Uri may wrongly end in or repeat.
KNOWN_API_PATHS = frozenset({
    "/api", "/api/generate", "/api/chat", "/api/show", "/api/tags", "/api/ps", "/api/version", "/api/pull",
    "/api/embed", "/api/embeddings", "/v1", "/v1/chat/completions", "/v1/completions", "/v1/models",
    "/v1/responses", "/v1/embeddings",
})
_SPLIT = re.compile(r"^(?P<origin>[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*)(?P<path>[^?#]*)(?P<rest>.*)$", re.DOTALL)


def ollama_host(value: str) -> str:
    """Return the base URL Ollama's own client connects to for an OLLAMA_HOST value.

    As envconfig.Host and ConnectableHost in Ollama: host, host:port, [ipv6]:port, with or without
    http:// or https:// (default port 11434, or 80/443 with a scheme), an optional path (a proxy
    prefix), quotes and spaces stripped; 0.0.0.0 and [::] (bind-all addresses) connect to the loopback.
    """
    text = value.strip().strip("\"'").strip()
    default_port = DEFAULT_OLLAMA_PORT
    scheme, separator, hostport = text.partition("://")
    if not separator:
        scheme, hostport = "http", text
        if text == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    host, port = _split_host_port(hostport, default_port)
    if not port.lstrip("-").isdigit() or not 0 <= int(port) <= 65535:
        port = default_port
    host = _connectable(host)
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def _split_host_port(hostport: str, default_port: str) -> tuple[str, str]:
    """Split as Go's net.SplitHostPort, falling back the way envconfig.Host does when it fails."""
    match = re.fullmatch(r"\[(?P<host>[^\]]*)\]:(?P<port>[^:]*)|(?P<name>[^:\[\]]*):(?P<nameport>[^:]*)", hostport)
    if match:
        return (match.group("host") if match.group("host") is not None else match.group("name"),
                match.group("port") if match.group("port") is not None else match.group("nameport"))
    try:
        return str(ipaddress.ip_address(hostport.strip("[]"))), default_port
    except ValueError:
        return (hostport or "127.0.0.1"), default_port


def _connectable(host: str) -> str:
    """Return a host a client can connect to: the loopback for bind-all or empty addresses, IPv6 in brackets."""
    if not host:
        return "127.0.0.1"  # Go dials ":port" on the local machine
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_unspecified:
        address = ipaddress.ip_address("127.0.0.1" if address.version == 4 else "::1")
    return f"[{address}]" if address.version == 6 else str(address)


def ollama_base_url(environ: Mapping[str, str], default: str) -> str:
    """Return the Ollama server's base URL: OLLAMA_BASE_URL (PhotoPrism's), else OLLAMA_HOST (Ollama's), else default.

    An API path at the end of OLLAMA_BASE_URL (``/api/generate``, ``/v1``) is dropped: the variable
    names the server, and the endpoint is added to it.
    """
    if environ.get("OLLAMA_BASE_URL", "").strip():
        return strip_api_path(environ["OLLAMA_BASE_URL"].strip())
    if environ.get("OLLAMA_HOST", "").strip():
        return strip_api_path(ollama_host(environ["OLLAMA_HOST"]))
    return default


def strip_api_path(url: str) -> str:
    """Return the address without a trailing API path (``/api/...``, ``/v1/...``) and trailing slashes."""
    match = _SPLIT.match(url)
    if not match:
        return url.rstrip("/")
    path = match.group("path")
    start = _first_api_path(path)
    return match.group("origin") + (path[:start] if start is not None else path).rstrip("/")


def _first_api_path(path: str) -> int | None:
    """Return where the first /api or /v1 segment of a path starts, or None."""
    found = re.search(r"/(?:api|v1)(?=/|$)", path)
    return found.start() if found else None


@dataclass(frozen=True)
class UnderstoodUri:
    """A Uri as captiond will use it, with a warning when it was changed or a problem when it cannot be used."""

    uri: str
    warning: str = ""
    problem: str = ""


def understand_uri(uri: str, request_format: str) -> UnderstoodUri:
    """Return the generation endpoint a configured Uri means for a request format (ollama or openai).

    A Uri with no path gets the format's endpoint; one that holds two API paths (OLLAMA_BASE_URL set to a
    full endpoint and then extended) keeps the last; one that ends in another API path (``/api/tags``,
    ``/v1/models``, ``/api``) is refused. Any other path (a proxy's) is left as it is.
    """
    match = _SPLIT.match(uri)
    if not match or request_format not in GENERATION_PATHS:
        return UnderstoodUri(uri)
    origin, path, rest = match.group("origin"), match.group("path"), match.group("rest")
    endpoints = GENERATION_PATHS[request_format]
    expected = " or ".join(endpoints)
    if path.strip("/") == "":
        fixed = f"{origin}{DEFAULT_PATHS[request_format]}{rest}"
        return UnderstoodUri(fixed, warning=f"{uri} has no API path; using {fixed}")
    start = _first_api_path(path)
    if start is None:
        return UnderstoodUri(uri)  # a proxy's own path: the server's answer will tell
    prefix, api_path = f"{origin}{path[:start]}", path[start:].rstrip("/")
    if api_path in endpoints:
        return UnderstoodUri(f"{prefix}{api_path}{rest}")
    if api_path == BASES[request_format]:
        fixed = f"{prefix}{DEFAULT_PATHS[request_format]}{rest}"
        return UnderstoodUri(fixed, warning=f"{uri} names the API, not its endpoint; using {fixed}")
    doubled = bool(re.match(r"/(?:api|v1)/(?:api|v1)(?:/|$)", api_path)) or any(
        api_path.startswith(f"{known}/") for known in KNOWN_API_PATHS - set(BASES.values()))
    ending = next((endpoint for endpoint in endpoints if api_path.endswith(endpoint)), None)
    if doubled and ending is not None:
        fixed = f"{prefix}{ending}{rest}"
        return UnderstoodUri(fixed, warning=f"{uri} holds more than one API path (is OLLAMA_BASE_URL set to a "
                             f"full endpoint? it names only the server, e.g. http://ollama:11434); using {fixed}")
    other = next((name for name, paths in GENERATION_PATHS.items() if name != request_format and api_path in paths),
                 None)
    if other is not None:
        return UnderstoodUri(uri, problem=f"{uri} is an {FORMAT_NAMES[other]} endpoint, but the requests would be "
                             f"{FORMAT_NAMES[request_format]}'s: set RequestFormat: {other} (and ResponseFormat), "
                             f"or use {prefix}{DEFAULT_PATHS[request_format]}")
    if api_path in KNOWN_API_PATHS or doubled:
        return UnderstoodUri(uri, problem=f"{uri} ends in {api_path}, which does not caption images: expected "
                             f"{expected} (e.g. {prefix}{DEFAULT_PATHS[request_format]})")
    return UnderstoodUri(uri)  # some other path under /api or /v1: the server's answer will tell
