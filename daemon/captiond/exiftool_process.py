"""The only code that starts exiftool: read a file's caption and provenance, apply planned tag changes.

One long-lived `exiftool -stay_open` process (pyexiftool) answers every read and write. In that
mode every line is one argument, so nothing that could hold a line break ever reaches it raw:
values are made single-line by `plan_caption` and checked again in `Exiftool.run`. No byte of a
library path ever reaches exiftool either: every file and folder it is given is a private symlink
with a name of ours (hex digits and a plain extension) in a folder of ours. exiftool expands format
codes (`%d`, `%f`, `%2.1f`, `%c`, ...) in `-o` paths and has no escape for them, a relative name
starting with `-` would be an option, and a line break cannot travel through the argument stream.

Writes never use `-overwrite_original`: exiftool writes a complete new file (`-o`) beside the
target under a temporary name of ours, which we fsync and rename over the target in one step.
A crash leaves at worst that temporary file, which `remove_stale_temporaries` deletes.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path

import exiftool  # pyexiftool
from exiftool.exceptions import ExifToolException

from .atomic import (
    low_on_space,
    new_sidecar_xmp,
    plain_suffix,
    refuse_special,
    refuse_unwritable,
    replacing,
    stat_or_none,
    write_new_sidecar,
)
from .config import SidecarName
from .errors import ChangedMeanwhile, ExiftoolError, MetadataError
from .imaging import RAW_EXTENSIONS
from .metadata import PREVIEW_TAGS, FileMetadata, OtherSidecar, WritePlan, inert
from .sidecars import Fingerprint, fingerprints, other_sidecars, sidecar_path, unchanged

log = logging.getLogger(__name__)
EXIFTOOL_TIMEOUT = 120.0  # no single exiftool command of ours takes this long
PR_SET_PDEATHSIG = 1
_STATUS_ENDING = re.compile(rb"=(\d+)=$")


class _StayOpen(exiftool.ExifTool):  # type: ignore[misc]  # pyexiftool has no type hints
    """pyexiftool's `exiftool -stay_open` process, with what captiond needs changed (pyexiftool 0.5).

    exiftool runs in a session of its own: a Ctrl-C or a SIGTERM sent to captiond's process group must
    not kill it in the middle of a write (captiond stops it itself, after the write); it still ends when
    the thread that started it ends (PR_SET_PDEATHSIG). Reading its answer raises OSError on end of file
    (exiftool died) and on silence (exiftool hung), where pyexiftool's reader loops forever and would
    hang a worker and the daemon with it. A death is not warned about: captiond restarts exiftool.
    """

    def run(self) -> None:
        """Start exiftool, reading one argument a line from its standard input."""
        arguments = [str(self.executable), "-config", str(self.config_file), "-stay_open", "True", "-@", "-",
                     "-common_args", *(self.common_args or [])]
        self._process = subprocess.Popen(arguments, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_end_with_parent)
        self._running = True

    @property
    def running(self) -> bool:
        """Return whether exiftool still runs."""
        if self._running and self._process.poll() is not None:
            self._flag_running_false()
        return bool(self._running)

    def execute(self, *parameters: str | bytes, raw_bytes: bool = False) -> str | bytes:
        """Run one command; its stderr and exit status are left in `last_stderr` and `last_status`."""
        process = self._process if self.running else None
        if process is None or process.stdin is None or process.stdout is None or process.stderr is None:
            raise OSError("exiftool is not running")
        number = secrets.randbelow(900_000) + 100_000
        ready, post = f"{{ready{number}}}".encode(), f"post{number}".encode()
        command = [item if isinstance(item, bytes) else item.encode("utf-8") for item in parameters]
        command += [b"-echo4", b"=${status}=" + post, f"-execute{number}\n".encode()]
        process.stdin.write(b"\n".join(command))
        process.stdin.flush()
        stdout = _read_until(process.stdout.fileno(), ready, self.block_size).strip()[:-len(ready)]
        stderr = _read_until(process.stderr.fileno(), post, self.block_size).strip()[:-len(post)]
        ending = _STATUS_ENDING.search(stderr)  # -echo4 printed "=STATUS=" after exiftool's own messages
        if ending is None:
            raise OSError(f"exiftool answered outside its protocol: {stderr[-200:]!r}")
        self._last_stdout, self._last_stderr, self._last_status = stdout, stderr[:ending.start()], int(ending[1])
        return stdout if raw_bytes else stdout.decode("utf-8", "replace")


def _end_with_parent() -> None:
    """Have the kernel end exiftool when the thread that started it ends (run in the child, before exec)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _read_until(descriptor: int, ending: bytes, block_size: int) -> bytes:
    """Return what exiftool writes up to `ending`; raise OSError when it exits or is silent for too long."""
    chunks: list[bytes] = []
    tail = b""
    while not tail.strip().endswith(ending):
        ready, _, _ = select.select([descriptor], [], [], EXIFTOOL_TIMEOUT)
        if not ready:
            raise TimeoutError(f"exiftool gave no answer for {EXIFTOOL_TIMEOUT:.0f}s")
        chunk = os.read(descriptor, block_size)
        if not chunk:
            raise OSError("exiftool exited")
        chunks.append(chunk)
        tail = (tail + chunk)[-(len(ending) + 8):]
    return b"".join(chunks)


READ_TAGS = (
    "-XMP-dc:Description-*", "-XMP-tiff:ImageDescription-*",  # every language alternative, not only x-default
    "-XMP-dc:Description", "-IFD0:ImageDescription", "-IPTC:all", "-Photoshop:IPTCDigest",
    "-XMP-tiff:ImageDescription", "-XMP-captiond:all", "-IFD0:Orientation", "-File:FileType",
    "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject", "-ExifIFD:DateTimeOriginal", "-XMP-exif:DateTimeOriginal",
    "-XMP-photoshop:DateCreated", "-IFD0:Make", "-IFD0:Model", "-XMP-digiKam:TagsList", "-File:Comment",
    "-PNG:Comment", "-ExifIFD:UserComment", "-XMP-microsoft:LastKeywordXMP",
    *(f"-{tag}" for tag in PREVIEW_TAGS),
)
LIST_TAGS = frozenset({"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "IPTC:Keywords", "XMP-captiond:AddedKeywords",
                       "XMP-digiKam:TagsList", "XMP-microsoft:LastKeywordXMP"})
# exiftool cannot write these to a new file with -o ("Can't write RIFF files"): we copy the original
# to our temporary name and let exiftool rewrite that copy instead.
COPY_FIRST_EXTENSIONS = frozenset({".webp"})
_INERT_PATH = re.compile(rb"/[^%\n\r\0]*")  # no format code, no line break: exiftool takes it as it is


class Exiftool:
    """One long-lived exiftool process, shared by all threads (calls are serialised)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._process: _StayOpen | None = None
        self._links = tempfile.TemporaryDirectory(prefix="captiond-links-")
        if not _INERT_PATH.fullmatch(os.fsencode(self._links.name)):
            self._links.cleanup()
            raise ExiftoolError(f"the temporary folder {self._links.name!r} holds characters exiftool would "
                                "interpret (% or a line break): set TMPDIR to a plain path")

    def __enter__(self) -> Exiftool:
        # Start now, from the calling (main) thread: pyexiftool ties exiftool's life to the starting
        # thread (PR_SET_PDEATHSIG), and a worker thread may end before the program does.
        with self._lock:
            self._process = self._start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the exiftool process (waits for the current command)."""
        with self._lock:
            self._closed = True
            self._stop_process()
        self._links.cleanup()

    def _start(self) -> _StayOpen:
        executable = shutil.which("exiftool")
        if executable is None:
            raise ExiftoolError("exiftool is not installed (Debian/Ubuntu: apt-get install libimage-exiftool-perl)")
        config = resources.files("captiond") / "exiftool.config"
        process = _StayOpen(executable=executable, common_args=["-G1", "-n"], config_file=str(config),
                            encoding="utf-8")
        try:
            process.run()
        except (ExifToolException, OSError, RuntimeError) as exc:
            raise ExiftoolError(f"cannot start exiftool: {exc}") from exc
        return process

    def run(self, *arguments: str | bytes, raw: bool = False) -> tuple[int, str | bytes, str]:
        """Run one exiftool command; return (status, stdout, stderr). Refuses any argument holding a line break."""
        for argument in arguments:
            text = argument if isinstance(argument, bytes) else argument.encode("utf-8", "surrogateescape")
            if b"\n" in text or b"\r" in text or b"\0" in text:
                raise MetadataError(f"refusing an exiftool argument with a line break: {argument!r}")
        with self._lock:
            if self._closed:
                raise ExiftoolError("exiftool was stopped")
            if self._process is None or not self._process.running:
                self._process = self._start()
            try:
                # Raw bytes: exiftool's messages may hold file names that are not UTF-8.
                output = self._process.execute(*arguments, raw_bytes=True)
                stderr = self._process.last_stderr or b""
                stderr_text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
                if not raw and isinstance(output, bytes):
                    return self._process.last_status or 0, output.decode("utf-8", "replace"), stderr_text
                return self._process.last_status or 0, output, stderr_text
            except (ExifToolException, OSError) as exc:
                # Died or hung mid-command: the next command starts a new exiftool. This file is
                # tried again later (our writes are atomic, so nothing is half-written).
                log.warning("exiftool stopped while working (%s); it will be restarted", exc)
                self._stop_process()
                raise MetadataError(f"exiftool stopped while working on this file ({exc}); will try again",
                                    transient=True) from exc

    def _stop_process(self) -> None:
        if self._process is not None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._process.terminate(timeout=5)
        self._process = None

    @contextlib.contextmanager
    def _argument_path(self, path: Path) -> Iterator[bytes]:
        """Yield an inert name for a file or folder: a private symlink to it, named by us (see the module's doc)."""
        link = Path(self._links.name) / f"{secrets.token_hex(8)}{plain_suffix(path)}"
        os.symlink(os.path.abspath(path), link)
        try:
            yield os.fsencode(link)
        finally:
            link.unlink(missing_ok=True)

    def read(self, path: Path, sidecar_naming: SidecarName = "ext") -> FileMetadata:
        """Return the caption-related tags of an original and of its sidecar, in one exiftool call."""
        sidecar, sidecar_exists = sidecar_path(path, sidecar_naming)
        refuse_special(sidecar, "the sidecar")
        before = fingerprints(path)
        others = [other for other in other_sidecars(path, sidecar) if _is_regular(other)]  # never a symlink or FIFO
        with contextlib.ExitStack() as stack:
            files = [stack.enter_context(self._argument_path(path))]
            if sidecar_exists:
                files.append(stack.enter_context(self._argument_path(sidecar)))
            other_arguments = [stack.enter_context(self._argument_path(other)) for other in others]
            files += other_arguments
            # -fast2: no maker notes and no trailer scan, a third of exiftool's time on a camera JPEG;
            # RAW files need -fast only, some keep their preview inside the maker notes.
            # -fast2 stops a PNG at its image data, before a Comment chunk stored after it.
            speed = "-fast" if path.suffix.lower() in {*RAW_EXTENSIONS, ".png"} else "-fast2"
            _, output, stderr = self.run("-j", speed, *READ_TAGS, *files)
        try:
            # Numbers as exiftool printed them: a keyword "2023.10" or "1e3" is text, never 2023.1 or 1000.0.
            records = json.loads(output or "[]", parse_float=str, parse_int=str)
        except json.JSONDecodeError as exc:
            raise MetadataError(f"exiftool gave no readable answer: {stderr.strip()[:200]}", str(path)) from exc
        if not records:
            raise MetadataError(f"exiftool cannot read the file: {_first_line(stderr)}", str(path))
        original = _flatten(records[0])
        if "ExifTool:Error" in original:
            raise MetadataError(f"exiftool cannot read the file: {original['ExifTool:Error']}", str(path))
        sidecar_record = records[1] if sidecar_exists and len(records) > 1 else {}
        other_records = records[2 if sidecar_exists else 1:]
        # exiftool leaves out a file it cannot read: match the records by name, not by position.
        by_name = {str(record.get("SourceFile", "")): record for record in other_records}
        read_others = tuple(OtherSidecar(other, _flatten(record), _lists(record))
                            for other, argument in zip(others, other_arguments, strict=True)
                            if (record := by_name.get(os.fsdecode(argument))) is not None)
        return FileMetadata(path, sidecar, sidecar_exists, original, _flatten(sidecar_record),
                            _lists(records[0]), _lists(sidecar_record), read_others, before)

    def extract_previews(self, metadata: FileMetadata) -> list[bytes]:
        """Return every embedded preview image of a RAW file (in one exiftool call; empty if it has none)."""
        if not metadata.preview_sizes():
            return []
        with self._argument_path(metadata.path) as argument:
            _, output, _ = self.run("-j", "-a", "-b", "-fast", *(f"-{tag}" for tag in PREVIEW_TAGS), argument)
        try:
            records = json.loads(output or "[]")
        except json.JSONDecodeError:
            return []
        return [base64.b64decode(value[len("base64:"):]) for value in (records[0] if records else {}).values()
                if isinstance(value, str) and value.startswith("base64:")]


    def apply(self, plan: WritePlan, expected: Mapping[Path, Fingerprint | None] | None = None) -> None:
        """Write a plan: exiftool writes a new file under a temporary name, which replaces the target atomically.

        The new file is made from the target itself (the photo, or the existing sidecar), or from nothing
        (a new sidecar). `expected` holds the fingerprints the plan was made from (see
        FileMetadata.fingerprints): they are compared before exiftool starts and again right before the
        rename, and any difference raises ChangedMeanwhile with nothing written.
        """
        if plan.empty:
            return
        expected = dict(expected or {})
        if not unchanged(expected):
            raise ChangedMeanwhile("the photo or its sidecar changed since it was read", str(plan.target))
        before = stat_or_none(plan.target)
        if before is not None:
            refuse_unwritable(plan.target, plan.what)
        elif not plan.embedded and (packet := new_sidecar_xmp(plan.tags)) is not None:
            write_new_sidecar(plan.target, packet, expected)
            return
        try:
            with replacing(plan.target, plan.what, keep_attributes_of_target=before is not None) as temporary:
                self._write_into(temporary, plan, existing=before is not None)
                if (before is not None and stat_or_none(plan.target) != before) or not unchanged(expected):
                    raise ChangedMeanwhile("the file changed while its metadata was written", str(plan.target))
        except OSError as exc:
            raise MetadataError(f"cannot write: {exc.strerror or exc}", str(plan.target)) from exc

    def _write_into(self, temporary: Path, plan: WritePlan, existing: bool) -> None:
        """Have exiftool write the target with the plan's changes as `temporary` (a new file, or a copy it rewrites)."""
        assignments = _assignments(plan.tags)
        with self._argument_path(plan.target) as source, self._argument_path(temporary.parent) as folder:
            destination = folder + b"/" + os.fsencode(temporary.name)
            command: list[str | bytes] = [*assignments, destination]
            if existing and plan.target.suffix.lower() in COPY_FIRST_EXTENSIONS:
                shutil.copy2(plan.target, temporary)
                command = ["-overwrite_original", *assignments, destination]
            elif existing:
                command = ["-o", destination, *assignments, source]
            status, output, stderr = self.run(*command)
        if status != 0 or not temporary.exists():
            reason = _first_line(stderr) or _text(output)
            if low_on_space(temporary.parent, plan.target if plan.embedded else None):
                raise MetadataError(f"no space left on the disk ({reason}); will try again", str(plan.target),
                                    transient=True)
            raise MetadataError(f"exiftool could not write: {reason}", str(plan.target))


def _assignments(tags: Mapping[str, str | tuple[str, ...]]) -> list[str]:
    """Return exiftool arguments; a tuple becomes one assignment per item (the first replaces the list)."""
    arguments = []
    for tag, value in tags.items():
        if tag in LANGUAGE_ALTERNATIVE_TAGS:
            tag = f"{tag}-x-default"  # ours only: a person's caption in another language stays
        if isinstance(value, tuple):
            arguments += [f"-{tag}={inert(item)}" for item in value] or [f"-{tag}="]
        else:
            arguments.append(f"-{tag}={inert(value)}")
    return arguments


LANGUAGE_ALTERNATIVE_TAGS = frozenset({"XMP-dc:Description", "XMP-tiff:ImageDescription"})


def _flatten(record: Mapping[str, object]) -> dict[str, str]:
    """Return exiftool's JSON record with every value as text (lists joined by ', ')."""
    flat = {}
    for key, value in record.items():
        if isinstance(value, list):
            flat[key] = ", ".join(str(item) for item in value)
        elif isinstance(value, dict):
            flat[key] = json.dumps(value, ensure_ascii=False)
        else:
            flat[key] = str(value)
    return flat


def _text(output: str | bytes) -> str:
    return output.decode("utf-8", "replace") if isinstance(output, bytes) else output


def _lists(record: Mapping[str, object]) -> dict[str, tuple[str, ...]]:
    """Return the list-type tags of exiftool's JSON record as tuples (a single item arrives as a scalar)."""
    lists = {}
    iptc_lists = {key for key, value in record.items() if key.startswith("IPTC:") and isinstance(value, list)}
    for tag in LIST_TAGS | iptc_lists:
        value = record.get(tag)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        lists[tag] = tuple(str(item) for item in items if str(item).strip())
    return lists


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _is_regular(path: Path) -> bool:
    """Return whether `path` is a regular file and not a symlink."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
