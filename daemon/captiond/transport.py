"""HTTP with a deadline for the whole exchange, and answers bounded in size whatever their encoding.

httpx's read timeout starts again with every byte, so a server that trickles its headers (or its body)
one byte at a time would hold a request for ever. Every socket operation here is given at most the time
left until the request's deadline (`deadline(at)` around the request), headers included. Bodies are read
raw (we ask for `Accept-Encoding: identity`); a server that compresses anyway is decoded here, a bounded
number of bytes at a time, so a compression bomb cannot exhaust memory.
"""

from __future__ import annotations

import functools
import ssl
import time
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpcore
import httpx

_deadline: ContextVar[float | None] = ContextVar("captiond_http_deadline", default=None)


class TooLarge(Exception):
    """The answer (decoded) exceeded the size allowed for it."""


class UnknownEncoding(Exception):
    """The server compressed its answer in a way we do not decode (we asked for none)."""


@contextmanager
def deadline(at: float) -> Iterator[None]:
    """Bound every socket operation of the requests made inside by the monotonic time `at`."""
    token = _deadline.set(at)
    try:
        yield
    finally:
        _deadline.reset(token)


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """Return the timeout for one socket operation: the smaller of httpx's and the time left to the deadline."""
    at = _deadline.get()
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the request's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _left(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """Opens connections that honour the request's deadline."""

    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_tcp(host, port, _left(timeout, httpcore.ConnectTimeout),
                                                         local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._backend.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout),
                                                                 socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # httpx's default context, made once: making one reads the CA bundle (about 30 ms of CPU per client).
    return httpx.create_ssl_context()


def client(timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.Client:
    """Return an httpx client whose requests honour `deadline()` and ask for uncompressed answers."""
    transport = httpx.HTTPTransport(verify=_tls_context(), limits=limits)
    pool = transport._pool  # httpx offers no public way to give its pool a network backend
    pool._network_backend = _DeadlineBackend(pool._network_backend)
    return httpx.Client(headers={"User-Agent": "captiond", "Accept-Encoding": "identity"}, timeout=timeout,
                        transport=transport)


def read_bounded(response: httpx.Response, limit: int) -> Iterator[bytes]:
    """Yield the body of a streamed response, decoded if the server compressed it; raise TooLarge past `limit`."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        received = 0
        for chunk in response.iter_raw():
            received += len(chunk)
            if received > limit:
                raise TooLarge(f"the answer exceeded {limit} bytes")
            yield chunk
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise UnknownEncoding(f"the server sent its answer as {encoding!r} although asked for none")
    yield from _inflate(response.iter_raw(), limit)


def _inflate(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """Decompress gzip or zlib data, never holding more than `limit` decoded bytes."""
    decoder = zlib.decompressobj(wbits=zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    produced = 0
    try:
        for chunk in chunks:
            data = chunk
            while data:
                piece = decoder.decompress(data, limit - produced + 1)
                produced += len(piece)
                if produced > limit:
                    raise TooLarge(f"the decoded answer exceeded {limit} bytes")
                yield piece
                data = decoder.unconsumed_tail
        rest = decoder.flush()
        if produced + len(rest) > limit:
            raise TooLarge(f"the decoded answer exceeded {limit} bytes")
        yield rest
    except zlib.error as exc:
        raise UnknownEncoding(f"the server's compressed answer is damaged: {exc}") from exc
