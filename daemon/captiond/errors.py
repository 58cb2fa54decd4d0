"""The one exception tree of captiond.

Every failure that crosses a module boundary is one of these; lower libraries'
exceptions (httpx, PIL, exiftool, sqlite3, yaml) are translated where they are
raised (``raise OurError(...) from exc``) and never leak.

    CaptiondError                      exit 1 unless stated
    ├── ConfigError                    exit 2: vision.yml or a flag is wrong (lists every problem)
    ├── UsageError                     exit 2: the command line is wrong
    ├── ExiftoolError                  exit 2: exiftool is missing or cannot be started
    ├── StateError                     exit 2: the state database cannot be opened or written
    ├── AppError                       PhotoPrism or Immich refused or did not answer (never stops captioning)
    ├── ModelSetupError                exit 3: stops the run; the model cannot be used at all
    │   ├── ServerUnreachable          nobody answers at the Uri (after retries)
    │   ├── ModelNotFound              the server does not have the model (`ollama pull` it)
    │   ├── ModelCannotSee             no vision capability (no projector loaded), or answers without seeing (self-test)
    │   ├── ModelCannotThink           Service.Think asks a model that cannot think
    │   └── ContextTooSmall            the image does not fit into the model's context on that server
    └── FileError                      exit 1 at the end of `run`: one file failed; the run goes on.  ``transient``
        ├── ImageError                 cannot be decoded: truncated, corrupt, a bomb, not an image
        ├── MetadataError              exiftool could not read or write this file's metadata, or died on it
        │   └── ChangedMeanwhile       the photo or a sidecar changed since it was read: read and decide again
        └── ModelError                 the model failed on this image
            ├── TransientModelError    5xx, 429, timeouts, dropped connections, cut streams
            │   └── AllEndpointsDown   every endpoint is set aside (model.py retries, then reports the server)
            └── AnswerError            4xx, or the answer holds no usable caption

    Interrupted (a KeyboardInterrupt) exit 130: Ctrl-C
    └── Terminated                     exit 143: SIGTERM, handled like Ctrl-C

``FileError.transient`` says whether trying the same file again later may work:
transient failures are retried and never recorded as done. Exit code 0 is success; every other
exit code of the command line is one of these classes' ``exit_code``.
"""

from __future__ import annotations


class CaptiondError(Exception):
    """Base of every error captiond raises on purpose."""

    exit_code = 1


class ConfigError(CaptiondError):
    """vision.yml (or a flag that overrides it) is invalid; holds every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "vision.yml", warnings: list[str] | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        self.warnings = list(warnings or [])
        lines = "\n".join(f"  {problem}" for problem in self.problems)
        notes = "".join(f"\n  (warning) {warning}" for warning in self.warnings)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}{notes}")


class UsageError(CaptiondError):
    """The command line asks for something impossible."""

    exit_code = 2


class ExiftoolError(CaptiondError):
    """exiftool is not installed or cannot be started."""

    exit_code = 2


class StateError(CaptiondError):
    """The state database cannot be opened or written."""

    exit_code = 2


class AppError(CaptiondError):
    """A photo app (PhotoPrism, Immich) could not be told about written files; `transient`: try again later."""

    def __init__(self, reason: str, transient: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


class ModelSetupError(CaptiondError):
    """The model cannot be used at all: the run stops instead of failing every file."""

    exit_code = 3


class ServerUnreachable(ModelSetupError):
    """Nothing answers at the model server's address."""


class ModelNotFound(ModelSetupError):
    """The server answers but does not have the model."""


class ModelCannotSee(ModelSetupError):
    """The model exists but cannot take images, or answers the self-test without seeing its image."""


class ModelCannotThink(ModelSetupError):
    """Thinking was asked of a model that cannot think."""


class ContextTooSmall(ModelSetupError):
    """The server's context is too small for the image and prompt."""


class FileError(CaptiondError):
    """One file could not be captioned; names the file and the reason."""

    transient = False

    def __init__(self, reason: str, path: str | None = None, transient: bool | None = None) -> None:
        self.reason = reason
        self.path = path
        if transient is not None:
            self.transient = transient
        super().__init__(f"{path}: {reason}" if path else reason)

    def for_file(self, path: str) -> FileError:
        """Return this error with the file's path attached (keeps the type and the cause)."""
        if self.path is None:
            self.path = path
            self.args = (f"{path}: {self.reason}",)
        return self


class ImageError(FileError):
    """The file cannot be decoded as an image."""


class MetadataError(FileError):
    """exiftool could not read or write this file's metadata."""


class ChangedMeanwhile(MetadataError):
    """The photo or one of its sidecars changed after the decision was made: nothing was written."""

    transient = True


class ModelError(FileError):
    """The model server failed on this image."""


class TransientModelError(ModelError):
    """A failure that may pass: try again later, never record as done."""

    transient = True

    def __init__(self, reason: str, path: str | None = None, retry_after: float | None = None,
                 crashed: bool = False) -> None:
        super().__init__(reason, path)
        self.retry_after = retry_after
        self.crashed = crashed  # the model runner died on this image (poison after twice)


class AllEndpointsDown(TransientModelError):
    """Every endpoint is set aside and none comes back before the deadline."""

    def __init__(self) -> None:
        super().__init__("every endpoint is set aside")


class AnswerError(ModelError):
    """The server refused this image (4xx) or answered nothing usable."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C: writes under way finish, nothing new starts, the summary is printed."""

    exit_code = 130  # 128 + SIGINT, as a shell reports it


class Terminated(Interrupted):
    """SIGTERM during `run`: handled like Ctrl-C (nothing new starts, requests abandoned, summary printed)."""

    exit_code = 143  # 128 + SIGTERM
