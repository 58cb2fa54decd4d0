"""Keep credentials out of everything captiond prints or exports: one function, `redact`, used everywhere.

Two kinds of secret are hidden: the shapes a credential takes in an address (the user part of
``scheme://user:password@host`` and query parameters named like keys, tokens, secrets, passwords,
auth or signatures), and every value registered as secret (each Service/Endpoint Key, Password,
and the credentials found in configured Uris), wherever such a value appears in a text.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import traceback
from types import TracebackType
from typing import Any, TextIO, cast
from urllib.parse import quote, unquote

MASK = "***"

# scheme://USERINFO@ : everything between "://" and the last "@" before the host ends.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]{0,31}://)(?P<userinfo>[^/?#\s]*)@")
# A query (or fragment) parameter whose name says it holds a credential: ?api_key=..., &X-Amz-Signature=...
# (punctuation closing a sentence after the address is not part of the value)
_SECRET_WORD = re.compile(r"key|token|secret|passw|pwd|pass|auth|sig|credential|session|cookie", re.IGNORECASE)
# Any parameter; its name is checked against _SECRET_WORD (one bounded pass, no backtracking over long names).
_PARAMETER = re.compile(r"(?P<lead>[?&;#](?P<name>[A-Za-z0-9_.\-\[\]]{1,64})=)(?P<value>[^?&;#\s\"'<>]*)")
_BEARER = re.compile(r"(?P<lead>(?i:bearer|basic)\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def register_secret(value: str) -> None:
    """Remember a secret value (a Key, a password) so that `redact` hides it wherever it appears."""
    global _secrets
    value = value.strip()
    if not value:
        return
    forms = {value, quote(value, safe=""), quote(value, safe="/:"), unquote(value)}
    with _lock:
        _secrets = tuple(sorted(set(_secrets) | {form for form in forms if form}, key=len, reverse=True))


def register_uri(uri: str) -> None:
    """Remember the credentials found in an address (its user part, its secret-named parameters)."""
    for match in _USERINFO.finditer(uri):
        user, _, password = match.group("userinfo").partition(":")
        register_secret(password or user)  # a lone user part is a token (https://TOKEN@host)
    for match in _PARAMETER.finditer(uri):
        register_secret(match.group("value"))


def redact(text: str) -> str:
    """Return `text` with every credential-shaped part of an address and every registered secret replaced."""
    text = _USERINFO.sub(_redact_userinfo, text)
    text = _PARAMETER.sub(_redact_parameter, text)
    text = _BEARER.sub(lambda match: match.group("lead") + MASK, text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def _redact_parameter(match: re.Match[str]) -> str:
    """Mask a parameter's value, keeping punctuation that ends the sentence around the address (`...=***: ok`)."""
    value = match.group("value")
    if not _SECRET_WORD.search(match.group("name")):
        return match[0]
    secret = value.rstrip(":.,)]")
    return match.group("lead") + (MASK if secret else "") + value[len(secret):]


def _redact_userinfo(match: re.Match[str]) -> str:
    """Keep a user name that has a password (user:***@); a lone user part is itself the token (***@)."""
    user, colon, password = match.group("userinfo").partition(":")
    if not match.group("userinfo"):
        return match[0]
    shown = f"{user}:{MASK}" if colon and password and user else MASK
    return f"{match.group('scheme')}{shown}@"


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message and traceback before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Replace the record's message (arguments applied) and exception text with redacted ones."""
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


class _RedactingWriter:
    """A text stream that redacts what is written to it and passes everything else to the stream it wraps."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        """Write the redacted text; return the length of the text given."""
        self._stream.write(redact(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def redact_process_output() -> None:
    """Redact all of stdout and every traceback this process prints (a last line of defence behind `redact`)."""
    if not isinstance(sys.stdout, _RedactingWriter):
        sys.stdout = cast(TextIO, _RedactingWriter(sys.stdout))

    def print_exception(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, error, trace))))

    def print_thread_exception(arguments: threading.ExceptHookArgs) -> None:
        if arguments.exc_value is not None:
            name = arguments.thread.name if arguments.thread else "?"
            sys.stderr.write(f"Exception in thread {name}:\n")
            print_exception(arguments.exc_type, arguments.exc_value, arguments.exc_traceback)

    sys.excepthook = print_exception
    threading.excepthook = print_thread_exception
