"""Hostile and broken inputs: files, names, paths, links and model answers built to break things.

Every case has a unique token (`hNN`) in its name, so its outcome can be found in the summary whatever
happens to the rest of the name. Each run checks, case by case: the outcome (captioned with clean text,
failed with a reason naming the file, or ignored for links), that no other file changed (every file
hashed before and after), that nothing appeared outside the library, and that nothing hangs (timeouts).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from reliability_support import (
    REPORT,
    Daemon,
    captiond,
    daemons,
    environment,
    file_digest,
    image_key,
    jpeg_for_model,
    leftovers,
    photo_bytes,
    pixel_digest,
    read_anywhere,
    records_failures,
    request_key,
    run_command,
    snapshot,
    state_rows,
    wait_for,
    write_daemon_config,
)

from conftest import FIXTURES
from emulator import OllamaEmulator, default_reply, expected_caption

RUN_TIMEOUT = 180
NAME_MAX = 255
XMP_NAMESPACES = {"x": "adobe:ns:meta/", "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
                  "dc": "http://purl.org/dc/elements/1.1/"}


@dataclass
class Case:
    """One hostile input and what must become of it."""

    token: str
    kind: str
    path: Path
    expect: str  # "captioned", "failed", "captioned or failed", "ignored"
    caption: Callable[[str], bool] | None = None
    reason: str = ""  # a regex the failure reason must match
    jpeg: bytes | None = None  # the JPEG the model gets, when the case reaches the model
    hint: str = ""  # what identifies its line in the summary (default: the token)


@dataclass
class Library:
    """A library of hostile cases, the world around it and the answers the model gives."""

    root: Path
    originals: Path
    outside: Path
    cases: list[Case] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # image key -> the model's answer
    secret_keys: set[str] = field(default_factory=set)  # images outside the library: never sent

    def case(self, token: str) -> Case:
        return next(case for case in self.cases if case.token == token)

    def reply(self, body: dict[str, Any]) -> str:
        """The emulator's answer: scripted per image, else the default caption naming the image."""
        from emulator import decode_images

        images = decode_images(body)
        key = image_key(images[0]) if images else ""
        return self.answers.get(key, default_reply(body))


def exactly(text: str) -> Callable[[str], bool]:
    return lambda caption: caption == text


def clean_single_line(*must_contain: str) -> Callable[[str], bool]:
    """A caption on one line, without control or format characters, holding the given words."""
    def check(caption: str) -> bool:
        bad = [c for c in caption if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") and c not in "\u200c\u200d"]
        return not bad and caption == caption.strip() and all(word in caption for word in must_contain)
    return check


def put(path: Path | bytes, data: bytes) -> None:
    """Write a file at a path given as text or raw bytes (any name the kernel accepts)."""
    raw = os.fsencode(path)
    os.makedirs(os.path.dirname(raw), exist_ok=True)
    with open(raw, "wb") as stream:
        stream.write(data)


def deep_directory(top: Path, total_bytes: int, segment: int = 200) -> bytes:
    """Create nested folders under top making a path of exactly total_bytes; return it (raw).

    Paths longer than PATH_MAX (4096) cannot be created in one call: each level is made relative to
    the one above through a directory descriptor.
    """
    top.mkdir(parents=True, exist_ok=True)
    path = os.fsencode(top)
    descriptor = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    level = 0
    try:
        while len(path) < total_bytes:
            size = min(segment, total_bytes - len(path) - 1)
            name = (f"{level:02d}-" + "d" * segment)[:max(size, 3)]
            os.mkdir(name, dir_fd=descriptor)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = child
            path += b"/" + name.encode()
            level += 1
    finally:
        os.close(descriptor)
    return path


def put_deep(directory: bytes, name: str, data: bytes) -> None:
    """Write a file in a folder whose path may be longer than PATH_MAX (walking down by descriptors)."""
    parts = directory.split(b"/")
    descriptor = os.open(b"/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if not part:
                continue
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=descriptor)
            os.close(descriptor)
            descriptor = child
        handle = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=descriptor)
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
    finally:
        os.close(descriptor)


def build_library(root: Path, part: str = "main") -> Library:
    """Build a hostile library: "main" (every case but two), or "breakers": the two inputs that make a
    system call or exiftool's error text fail (a 255-byte name, a broken file with a non-UTF-8 name)
    between plain photos, kept apart so that if they stop a run they cannot hide the other outcomes."""
    originals, outside = root / "originals", root / "outside"
    library = Library(root, originals, outside)
    originals.mkdir(parents=True)
    outside.mkdir(parents=True)
    index = iter(range(1000, 2000))

    def photo(token: str, kind: str, relative: str | bytes, *, answer: str | None = None,
              caption: Callable[[str], bool] | None = None, expect: str = "captioned", reason: str = "") -> Case:
        data = photo_bytes(next(index))
        jpeg = jpeg_for_model(data)
        raw = os.fsencode(originals) + b"/" + (relative if isinstance(relative, bytes) else relative.encode())
        put(raw, data)
        if answer is not None:
            library.answers[image_key(jpeg)] = answer
        case = Case(token, kind, Path(os.fsdecode(raw)), expect,
                    caption or exactly(expected_caption(jpeg)), reason, jpeg)
        library.cases.append(case)
        return case

    def broken(token: str, kind: str, relative: str | bytes, data: bytes, reason: str,
               expect: str = "failed") -> Case:
        raw = os.fsencode(originals) + b"/" + (relative if isinstance(relative, bytes) else relative.encode())
        put(raw, data)
        case = Case(token, kind, Path(os.fsdecode(raw)), expect, None, reason)
        library.cases.append(case)
        return case

    # Controls: plain photos that must simply work.
    photo("h01", "control", "control-h01.jpg")
    photo("h02", "control", "2024/control-h02.jpg")
    if part == "breakers":
        long_name = "L" * (NAME_MAX - len("-h30.jpg")) + "-h30.jpg"
        photo("h30", "file name of 255 bytes (its sidecar's name cannot exist)", f"names/{long_name}",
              expect="captioned or failed", reason=r"too long|name")
        broken("h31", "zero bytes, non-UTF-8 name (exiftool's error names it)", b"names/broken-\xe9-h31.jpg", b"",
               r"empty|0 bytes|exiftool")
        for number in range(3, 9):  # more plain photos, in the folders and names sorted around the breakers
            photo(f"h0{number}", "control", f"names/{'AKMNZz'[number - 3]}-control-h0{number}.jpg")
        return library

    # Broken files.
    camera_jpeg = (FIXTURES / "Olympus_boilerplate.jpg").read_bytes()
    png = (FIXTURES / "PNG_plain.png").read_bytes()  # PNG.png has a comment: a person's caption
    broken("h10", "truncated JPEG", "broken/truncated-h10.jpg", camera_jpeg[: len(camera_jpeg) * 2 // 5],
           r"truncated|corrupt")
    broken("h11", "truncated PNG", "broken/truncated-h11.png", png[: len(png) // 2], r"truncated|corrupt|exiftool")
    broken("h12", "corrupt JPEG (garbage after the SOI marker)", "broken/corrupt-h12.jpg",
           b"\xff\xd8\xff" + bytes(range(256)) * 40, r"corrupt|not an image|exiftool|format")
    scan_start = camera_jpeg.rfind(b"\xff\xda")
    garbled = bytearray(camera_jpeg)
    for offset in range(scan_start + 40, len(garbled) - 2, 7):
        garbled[offset] = (garbled[offset] * 31 + 17) % 255
    broken("h13", "JPEG with garbage image data", "broken/garbled-h13.jpg", bytes(garbled),
           r"corrupt|truncated|not an image", expect="captioned or failed")
    broken("h14", "zero-byte JPEG", "broken/empty-h14.jpg", b"", r"empty|0 bytes|exiftool")
    broken("h15", "zero-byte RAW", "broken/empty-h15.dng", b"", r"empty|0 bytes|exiftool|preview")
    broken("h16", "text file named .jpg", "broken/text-h16.jpg", b"Shopping list:\n- milk\n- eggs\n" * 20,
           r"not an image|exiftool|format|corrupt")
    broken("h17", "HTML page named .heic", "broken/page-h17.heic", b"<!doctype html><title>404</title>" * 10,
           r"not an image|exiftool|format|corrupt")
    bomb = io.BytesIO()
    Image.new("1", (20000, 15000)).save(bomb, format="PNG")
    broken("h18", "decompression bomb (1-bit PNG, 20000x15000, 36 kB)", "broken/bomb-h18.png", bomb.getvalue(),
           r"decompression bomb|too large")
    frames = [Image.open(io.BytesIO(photo_bytes(next(index)))).convert("P") for _ in range(3)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    put(originals / "broken/animated-h19.gif", animated.getvalue())
    jpeg = jpeg_for_model(animated.getvalue())  # the first frame, as captiond sees it
    library.cases.append(Case("h19", "multi-frame GIF", originals / "broken/animated-h19.gif", "captioned",
                              exactly(expected_caption(jpeg)), "", jpeg))

    # Hostile names.
    photo("h20", "name starting with -", "names/-o-h20.jpg")
    photo("h21", "name that is an exiftool option", "names/-IFD0:Artist=evil-h21.jpg")
    photo("h22", "name starting with --", "names/--help h22.jpg")
    photo("h23", "spaces and a tab", "names/two  spaces\tand tab h23.jpg")
    photo("h24", "quotes and shell syntax", "names/it's \"quoted\" $(touch pwned) `id` h24.jpg")
    photo("h25", "line break", "names/line\nbreak-h25.jpg")
    photo("h26", "carriage return", "names/carriage\rreturn-h26.jpg")
    photo("h27", "non-UTF-8 bytes (Latin-1)", b"names/latin1-caf\xe9-h27.jpg")
    photo("h28", "non-UTF-8 bytes (invalid)", b"names/\xff\xfe-h28.jpg")
    photo("h29", "Unicode (NFD, CJK, emoji)", unicodedata.normalize("NFD", "names/Ünïcödé 写真 📷 h29.jpg"))
    broken("h32", "zero bytes, line break in the name", "names/broken\nline-h32.jpg", b"", r"empty|0 bytes|exiftool")

    # Very long paths: just under PATH_MAX, and beyond it.
    near = deep_directory(originals / "deep", 4096 - 120)  # room for the photo's, sidecar's and temporary names
    data = photo_bytes(next(index))
    put_deep(near, "deep-h33.jpg", data)
    jpeg = jpeg_for_model(data)
    library.cases.append(Case("h33", "path of ~4000 bytes (just under PATH_MAX)",
                              Path(os.fsdecode(near + b"/deep-h33.jpg")), "captioned",
                              exactly(expected_caption(jpeg)), "", jpeg))
    far = deep_directory(originals / "deeper", 5000)
    data = photo_bytes(next(index))
    put_deep(far, "deeper-h34.jpg", data)
    jpeg = jpeg_for_model(data)
    # captiond cannot even list that folder: the summary must say so (naming the folder), not only a log line.
    library.cases.append(Case("h34", "path beyond PATH_MAX (5000 bytes)",
                              Path(os.fsdecode(far + b"/deeper-h34.jpg")), "captioned or failed",
                              exactly(expected_caption(jpeg)), r"too long|name|list", jpeg, hint="deeper/"))

    # Symlinks: never followed.
    secret = outside / "secret.jpg"
    secret.write_bytes(photo_bytes(next(index)))
    library.secret_keys.add(image_key(jpeg_for_model(secret.read_bytes())))
    (outside / "album").mkdir()
    album_photo = outside / "album" / "private.jpg"
    album_photo.write_bytes(photo_bytes(next(index)))
    library.secret_keys.add(image_key(jpeg_for_model(album_photo.read_bytes())))
    links = originals / "links"
    links.mkdir()
    for token, kind, name, target in [
        ("h40", "symlink to a photo outside the originals", "outside-h40.jpg", secret),
        ("h41", "symlink to a folder outside the originals", "album-h41", outside / "album"),
        ("h42", "symlink loop to its own folder", "loop-h42", Path(".")),
        ("h43", "symlink to itself", "self-h43.jpg", Path("self-h43.jpg")),
        ("h44", "dangling symlink", "dangling-h44.jpg", Path("/nonexistent/h44.jpg")),
    ]:
        os.symlink(target, links / name)
        library.cases.append(Case(token, kind, links / name, "ignored"))
    (links / "a").mkdir()
    os.symlink("../a", links / "a" / "cycle-h45")
    library.cases.append(Case("h45", "symlink cycle between folders", links / "a" / "cycle-h45", "ignored"))

    # Hostile model answers.
    escape = root / "escaped-h50.jpg"
    photo("h50", "answer with line breaks and exiftool options", "answers/injection-h50.jpg",
          answer=f"A boat\n-IFD0:Artist=evil\n-o\n{escape}\n-execute\n-overwrite_original",
          caption=clean_single_line("A boat", "-IFD0:Artist=evil"))
    photo("h51", "answer with an argument file and a deletion", "answers/argfile-h51.jpg",
          answer="A dog\r\n-@\r\n/etc/passwd\r\n-delete_original!\r\n-all=",
          caption=clean_single_line("A dog"))
    xml_text = 'A <b>"bold"</b> & \'odd\' ]]> <![CDATA[ x ]]> &amp; <x:xmpmeta> caption.'
    photo("h52", "answer with XML-breaking characters", "answers/xml-h52.jpg", answer=xml_text,
          caption=exactly(xml_text))
    photo("h53", "answer with control characters", "answers/control-h53.jpg",
          answer="A cat\x00 sits\x07 on\x1b[31m a mat\u2028today\u200b\x7f\ufeff.",
          caption=clean_single_line("A cat", "mat"))
    photo("h54", "answer of 2 MB (over MaxAnswerBytes)", "answers/huge-h54.jpg",
          answer="A " + "meow" * 500_000, expect="failed", reason=r"exceed|too large|bytes")
    photo("h55", "answer of 400 kB (under MaxAnswerBytes)", "answers/long-h55.jpg",
          answer="A long story. " + ("x" * 1990 + ". ") * 200,
          caption=lambda caption: 0 < len(caption) <= 500 and caption.startswith("A long story."))
    photo("h56", "answer with a <think> block", "answers/think-h56.jpg",
          answer=f"<think>The user wants a caption.\n-o\n{root / 'escaped-h56.jpg'}\nLet me look.</think>\n\n"
                 "A red kite over a field.",
          caption=exactly("A red kite over a field."))
    photo("h57", "answer with a preamble and quotes", "answers/preamble-h57.jpg",
          answer='Sure! Here is a caption:\n\n"A lighthouse at dusk."', caption=exactly("A lighthouse at dusk."))
    photo("h58", "answer that is only an unterminated <think>", "answers/only-think-h58.jpg",
          answer="<think>I will describe the image\nbut never finish", expect="failed",
          reason=r"no caption|held no caption")
    photo("h59", "answer that is only punctuation and whitespace", "answers/blank-h59.jpg",
          answer=" \n\t... \u3000 -- ", expect="failed", reason=r"no caption|held no caption")
    return library


def library_files(library: Library) -> dict[bytes, str]:
    """Hash everything under the library's root (originals and the outside world) but our own config."""
    return snapshot(library.root, skip=lambda name: name == b"vision.yml" or name.startswith(b"state"))


@dataclass
class Outcome:
    """What became of one case."""

    status: str  # captioned, failed, ignored, silent
    detail: str


def summary_failures(stdout: str) -> list[str]:
    """Return the summary's lines that follow `failed  ` (the summary lists up to 20 failures)."""
    return [line for line in stdout.splitlines() if line.startswith("  failed  ")]


def sidecar_caption(sidecar: bytes) -> str | None:
    """Return dc:description of a sidecar parsed as XML (a sidecar that is not XML shows), or None if absent."""
    data = read_anywhere(sidecar)
    if data is None:
        return None
    try:
        document = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        return f"<unparsable sidecar: {error}>"
    for node in document.iter(f"{{{XMP_NAMESPACES['dc']}}}description"):
        return " | ".join(item.text or "" for item in node.iter(f"{{{XMP_NAMESPACES['rdf']}}}li"))
    for node in document.iter(f"{{{XMP_NAMESPACES['rdf']}}}Description"):
        value = node.get(f"{{{XMP_NAMESPACES['dc']}}}description")
        if value is not None:
            return value
    return "<a sidecar without dc:description>"


def embedded_tags(path: Path | bytes) -> dict[str, Any]:
    """Return the tags inside a file, read by a separate real exiftool from stdin (any name, any length)."""
    data = read_anywhere(path)
    if data is None:
        return {}
    output = subprocess.run(["exiftool", "-j", "-G1", "-a", "-XMP-dc:Description", "-IFD0:ImageDescription",
                             "-IFD0:Artist", "-XMP-dc:Creator", "-"], input=data, capture_output=True,
                            timeout=30, check=False).stdout
    records = json.loads(output or b"[{}]")
    return {key: value for key, value in records[0].items() if key != "SourceFile"}


def outcome_of(case: Case, stdout: str, embedded: bool) -> Outcome:
    """Find what became of a case: a caption on disk, a failure line in the summary, or nothing."""
    if case.expect == "ignored":
        return Outcome("ignored", "")
    raw = os.fsencode(case.path)
    if embedded and case.path.suffix.lower() == ".jpg":
        caption = embedded_tags(raw).get("XMP-dc:Description")
        caption = None if caption is None else str(caption)
    else:
        caption = sidecar_caption(raw + b".xmp")
    if caption is not None:
        return Outcome("captioned", caption)
    failures = [line for line in summary_failures(stdout) if (case.hint or case.token) in line]
    if failures:
        return Outcome("failed", failures[0])
    return Outcome("silent", "")


@dataclass
class Verdict:
    """What a run did to a library: each case's outcome and every problem found."""

    outcomes: dict[str, Outcome]
    problems: list[str]
    changed: list[bytes]  # files that changed although they must not
    vanished: list[bytes]  # files that are gone
    silent: list[str]  # cases with no outcome at all

    @property
    def lost(self) -> int:
        """Photos gone, or ending with no outcome at all (neither captioned nor reported)."""
        return len(self.vanished) + len(self.silent)


def check_run(library: Library, emulator: OllamaEmulator, before: dict[bytes, str], pixels: dict[str, str],
              stdout: str, embedded: bool) -> Verdict:
    """Judge a run: each case's outcome against its expectation, and everything else left as it was."""
    problems: list[str] = []
    outcomes = {case.token: outcome_of(case, stdout, embedded) for case in library.cases}
    for case in library.cases:
        outcome = outcomes[case.token]
        if outcome.status not in case.expect.split(" or "):
            problems.append(f"{case.token} ({case.kind}): expected {case.expect}, got {outcome.status} "
                            f"{outcome.detail[:160]!r}")
        elif outcome.status == "captioned" and case.caption is not None and not case.caption(outcome.detail):
            problems.append(f"{case.token} ({case.kind}): wrong caption {outcome.detail[:200]!r}")
        elif outcome.status == "failed" and not re.search(case.reason, outcome.detail, re.IGNORECASE):
            problems.append(f"{case.token} ({case.kind}): the reason does not say why: {outcome.detail[:200]!r}")
        if embedded and outcome.status == "captioned" and case.token in pixels:
            if pixel_digest_anywhere(case.path) != pixels[case.token]:
                problems.append(f"{case.token} ({case.kind}): the photo's pixels changed")
            if any("evil" in str(value) for value in embedded_tags(case.path).values()
                   if not isinstance(value, str) or value != outcome.detail):
                problems.append(f"{case.token} ({case.kind}): an answer set another tag")
    # Each failure is one whole line: a name with a line break must not split (or forge) summary lines.
    for line in stdout.splitlines():
        if re.search(r"h\d\d\.", line) and not line.startswith("  failed  "):
            problems.append(f"a summary line broken by a file name: {line[:160]!r}")
    # Nothing else changed: originals byte for byte (sidecar mode; in embedded mode the captioned photos
    # keep their pixels, checked above), the world outside untouched, and no file appeared but the
    # sidecars of captioned cases.
    after = library_files(library)
    root = os.fsencode(library.root)
    rewritten = {os.path.relpath(os.fsencode(case.path), root) for case in library.cases
                 if embedded and outcomes[case.token].status == "captioned" and case.path.suffix.lower() == ".jpg"}
    new_sidecars = {os.path.relpath(os.fsencode(case.path), root) + b".xmp" for case in library.cases
                    if outcomes[case.token].status == "captioned"} - {name + b".xmp" for name in rewritten}
    changed = [name for name, digest in before.items()
               if name in after and after[name] != digest and name not in rewritten]
    vanished = [name for name in before if name not in after]
    problems += [f"a file changed that must not: {name!r}" for name in changed]
    problems += [f"a file vanished: {name!r}" for name in vanished]
    problems += [f"a file appeared that must not: {name!r}" for name in after.keys() - before.keys() - new_sidecars]
    if any((library.root / name).exists() for name in ("escaped-h50.jpg", "escaped-h56.jpg")):
        problems.append("an answer made exiftool write a file it named")
    # The model never saw anything from outside the library.
    sent = {request_key(request) for request in emulator.generation_requests()}
    if sent & library.secret_keys:
        problems.append("a photo outside the originals was sent to the model through a symlink")
    silent = [case.token for case in library.cases if outcomes[case.token].status == "silent"]
    return Verdict(outcomes, problems, changed, vanished, silent)


def pixel_digest_anywhere(path: Path) -> str:
    """Return the pixel digest of an image at any path length."""
    data = read_anywhere(path)
    if data is None:
        return "missing"
    with tempfile.NamedTemporaryFile(suffix=path.suffix) as stream:
        stream.write(data)
        stream.flush()
        return pixel_digest(Path(stream.name))


@pytest.fixture
def hostile(tmp_path: Path) -> Iterator[Library]:
    """A fresh hostile library (paths near PATH_MAX are measured from where it lies, so it is not copied)."""
    library = build_library(tmp_path / "world")
    try:
        yield library
    finally:
        run_command("chmod", "-R", "u+rwX", library.root)


def run_captiond_in(library: Library, config: Path, *, prefix: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """Run `captiond run` on the library from a scratch working folder; return (exit code, stdout, stderr)."""
    cwd = library.root / "cwd"
    cwd.mkdir()
    try:
        process = subprocess.run(
            [*prefix, sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
             str(library.originals)], capture_output=True, timeout=RUN_TIMEOUT, env=environment(), cwd=cwd,
            stdin=subprocess.DEVNULL, check=False)
    finally:
        leftover = sorted(os.listdir(cwd))
        shutil.rmtree(cwd)
    assert not leftover, f"files appeared in the working folder (a name or an answer ran a command?): {leftover}"
    return (process.returncode, process.stdout.decode("utf-8", "replace"),
            process.stderr.decode("utf-8", "replace"))


def traceback_of(stderr: str) -> list[str]:
    """Return a problem for a Python traceback in the output (captiond must never crash on an input)."""
    if "Traceback" not in stderr:
        return []
    return ["captiond crashed with a traceback: " + stderr[stderr.index("Traceback"):][-1500:]]


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_hostile_library_every_case_has_a_clear_outcome_and_nothing_else_changes(
        write: str, hostile: Library, request: pytest.FixtureRequest) -> None:
    """Figure: each of ~45 hostile inputs (broken files, a decompression bomb, a multi-frame GIF, names with
    dashes, quotes, line breaks and non-UTF-8 bytes, 255-byte names, paths near and beyond PATH_MAX, symlinks
    out of the library and in loops, model answers with option injection, XML breakers, control characters,
    2 MB, <think> blocks and preambles) ends captioned with clean text, failed with a reason on one summary
    line that names it, or ignored (symlinks); `captiond run` never crashes; 0 other files or tags change;
    nothing outside the library is read or written."""
    before = library_files(hostile)
    pixels = {case.token: pixel_digest_anywhere(case.path) for case in hostile.cases if case.jpeg is not None}
    with OllamaEmulator(reply=hostile.reply) as emulator:
        config = write_daemon_config(hostile.root, emulator.url, Write=write)
        exit_code, stdout, stderr = run_captiond_in(hostile, config)
        verdict = check_run(hostile, emulator, before, pixels, stdout, embedded=write == "embedded")
    problems = verdict.problems + traceback_of(stderr)
    REPORT.record(request, write=write, hostile_inputs_tried=len(hostile.cases), exit_code=exit_code,
                  outcomes={f"{case.token} {case.kind}": verdict.outcomes[case.token].status
                            for case in hostile.cases},
                  inputs_without_outcome=len(verdict.silent), originals_changed=len(verdict.changed),
                  photos_lost=verdict.lost, problems=problems)
    assert not problems, "\n".join(problems) + f"\n--- stdout:\n{stdout}\n--- stderr:\n{stderr[-4000:]}"
    assert exit_code == 1, f"exit code {exit_code} (some files failed: 1)\n{stdout}"


@records_failures
def test_inputs_that_break_a_system_call_fail_alone_and_the_run_goes_on(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: a photo whose name is 255 bytes (its sidecar's name would exceed NAME_MAX) and a broken file
    whose non-UTF-8 name exiftool repeats in its error each end with their own outcome (failed with a reason,
    or captioned) while `captiond run` goes on captioning the other photos, without a traceback."""
    library = build_library(tmp_path / "world", part="breakers")
    before = library_files(library)
    pixels = {case.token: pixel_digest_anywhere(case.path) for case in library.cases if case.jpeg is not None}
    with OllamaEmulator(reply=library.reply) as emulator:
        config = write_daemon_config(library.root, emulator.url)
        exit_code, stdout, stderr = run_captiond_in(library, config)
        verdict = check_run(library, emulator, before, pixels, stdout, embedded=False)
    problems = verdict.problems + traceback_of(stderr)
    REPORT.record(request, hostile_inputs_tried=2, exit_code=exit_code,
                  outcomes={f"{case.token} {case.kind}": verdict.outcomes[case.token].status
                            for case in library.cases},
                  inputs_without_outcome=len(verdict.silent), originals_changed=len(verdict.changed),
                  photos_lost=verdict.lost, problems=problems)
    assert not problems, "\n".join(problems) + f"\n--- stdout:\n{stdout}\n--- stderr:\n{stderr[-4000:]}"
    assert exit_code == 1, f"exit code {exit_code} (some files failed: 1)\n{stdout}"


@records_failures
def test_a_100_megapixel_jpeg_is_captioned_in_bounded_memory_and_a_bomb_refused(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: a 100 MP JPEG (12000x8400) is captioned and a decompression bomb (1-bit PNG of 20000x15000 in
    36 kB) refused, with captiond's peak memory under 250 MB (a full decode of the JPEG alone needs 302 MB)."""
    originals = tmp_path / "originals"
    originals.mkdir()
    gradient = Image.linear_gradient("L").resize((12000, 8400))
    big = Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                              gradient.transpose(Image.Transpose.ROTATE_180)))
    big.save(originals / "huge-100MP.jpg", quality=80)
    del big, gradient
    Image.new("1", (20000, 15000)).save(originals / "bomb.png")
    before = {path.name: file_digest(path) for path in originals.iterdir()}
    with OllamaEmulator() as emulator:
        config = write_daemon_config(tmp_path, emulator.url)
        measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:], timeout=300).returncode; "
                   "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(code)")
        result = captiond("run", "--config", config, "--originals", originals, "--parallel", "2",
                          prefix=[sys.executable, "-c", measure], timeout=RUN_TIMEOUT)
    peak_kib = int(result.stderr.strip().splitlines()[-1])
    caption = subprocess.run(["exiftool", "-s3", "-XMP-dc:Description", str(originals / "huge-100MP.jpg.xmp")],
                             capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    REPORT.record(request, hostile_inputs_tried=2, peak_memory_mb=round(peak_kib / 1024),
                  seconds=round(result.seconds, 1),
                  originals_changed=sum(file_digest(originals / name) != digest for name, digest in before.items()))
    assert result.exit_code == 1, result.stdout + result.stderr
    assert caption.startswith("A photo with a calm scene"), result.stdout + result.stderr[-2000:]
    assert re.search(r"failed  bomb\.png: .*decompression bomb", result.stdout), result.stdout
    assert not (originals / "bomb.png.xmp").exists()
    assert all(file_digest(originals / name) == digest for name, digest in before.items())
    assert peak_kib < 250 * 1024, f"captiond needed {peak_kib // 1024} MB"


def small_library(root: Path) -> tuple[Library, Callable[[str, str], Case]]:
    """An empty Library at root and a function adding a distinct photo (token, relative path) to it."""
    library = Library(root, root / "originals", root / "outside")
    library.originals.mkdir(parents=True)
    library.outside.mkdir()
    numbers = iter(range(3000, 3100))

    def add(token: str, relative: str) -> Case:
        data = photo_bytes(next(numbers))
        path = library.originals / relative
        put(path, data)
        jpeg = jpeg_for_model(data)
        case = Case(token, relative, path, "captioned", exactly(expected_caption(jpeg)), "", jpeg)
        library.cases.append(case)
        return case
    return library, add


ORDINARY_USER = ("unshare", "--user", "--map-user=1000", "--map-group=1000")
UNMAPPED_OWNER = ("unshare", "--user")


def unprivileged(prefix: tuple[str, ...]) -> tuple[str, ...]:
    """Return the prefix if it really runs a command without root's powers here, else skip.

    ORDINARY_USER: a user namespace where the files' owner is user 1000 and the program has no capability
    (an ordinary user owning the library: file modes apply again). UNMAPPED_OWNER: the files' owner is not
    mapped at all (how a rootless container sees a bind-mounted library: the owner shows as nobody).
    """
    probe = Path(tempfile.mkdtemp()) / "read-only"
    try:
        probe.write_text("x")
        probe.chmod(0o444)
        works = run_command(*prefix, "true").returncode == 0
        writable = run_command(*prefix, "sh", "-c", f"echo y >> '{probe}'").returncode == 0
    finally:
        shutil.rmtree(probe.parent, ignore_errors=True)
    if not works or writable:
        pytest.skip(f"cannot drop root's powers here with {' '.join(prefix)}")
    return prefix


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_read_only_originals_and_folders_as_an_ordinary_user(
        write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: run by an ordinary user (no root powers), a read-only photo (0444) is never modified in
    embedded mode (failed, named), a photo in a read-only folder (0555) and an unreadable photo (0000) fail
    with their reason, a folder that cannot be listed is reported, the rest is captioned; 0 originals change."""
    prefix = unprivileged(ORDINARY_USER)
    library, add = small_library(tmp_path / "world")
    add("h60", "control-h60.jpg")
    read_only = add("h61", "readonly-h61.jpg")
    if write == "embedded":
        read_only.expect, read_only.reason = "failed", r"read-only|permission|denied|not permitted"
    in_read_only_folder = add("h62", "ro-folder/in-ro-folder-h62.jpg")
    in_read_only_folder.expect, in_read_only_folder.reason = "failed", r"permission|denied|read-only|creat"
    unreadable = add("h63", "unreadable-h63.jpg")
    unreadable.expect, unreadable.reason = "failed", r"permission|denied|cannot read"
    locked = add("h64", "locked-folder/locked-h64.jpg")
    locked.expect, locked.reason, locked.hint = "failed", r"permission|denied|list|read", "locked-folder"
    before = library_files(library)
    pixels = {case.token: pixel_digest_anywhere(case.path) for case in library.cases}
    read_only.path.chmod(0o444)
    unreadable.path.chmod(0o000)
    in_read_only_folder.path.parent.chmod(0o555)
    locked.path.parent.chmod(0o000)
    try:
        with OllamaEmulator() as emulator:
            config = write_daemon_config(library.root, emulator.url, Write=write)
            exit_code, stdout, stderr = run_captiond_in(library, config, prefix=prefix)
            verdict = check_run(library, emulator, before, pixels, stdout, embedded=write == "embedded")
    finally:
        for folder in (in_read_only_folder.path.parent, locked.path.parent):
            folder.chmod(0o755)
    modes = {case.token: oct(case.path.stat().st_mode & 0o777) for case in (read_only, unreadable)}
    problems = verdict.problems + traceback_of(stderr) + leftover_problems(library)
    if modes != {"h61": "0o444", "h63": "0o0"}:
        problems.append(f"file modes changed: {modes}")
    REPORT.record(request, write=write, hostile_inputs_tried=len(library.cases), exit_code=exit_code,
                  outcomes={case.kind: verdict.outcomes[case.token].status for case in library.cases},
                  originals_changed=len(verdict.changed), photos_lost=verdict.lost, problems=problems)
    assert not problems, "\n".join(problems) + f"\n--- stdout:\n{stdout}\n--- stderr:\n{stderr[-3000:]}"
    assert exit_code == 1, stdout


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_immutable_originals_and_folders_as_root(write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: as root (where file modes do not bite), an immutable photo (chattr +i) is never modified in
    embedded mode and a photo in an immutable folder fails with its reason in both modes; 0 originals change."""
    library, add = small_library(tmp_path / "world")
    add("h65", "control-h65.jpg")
    immutable = add("h66", "immutable-h66.jpg")
    if write == "embedded":
        immutable.expect, immutable.reason = "failed", r"not permitted|permission|read-only|immutable"
    in_immutable_folder = add("h67", "frozen-folder/in-frozen-folder-h67.jpg")
    in_immutable_folder.expect, in_immutable_folder.reason = "failed", r"not permitted|permission|read-only|creat"
    before = library_files(library)
    pixels = {case.token: pixel_digest_anywhere(case.path) for case in library.cases}
    frozen = [immutable.path, in_immutable_folder.path.parent]
    if run_command("chattr", "+i", *frozen).returncode != 0:
        run_command("chattr", "-i", *frozen)
        pytest.skip("chattr +i does not work on this filesystem")
    try:
        with OllamaEmulator() as emulator:
            config = write_daemon_config(library.root, emulator.url, Write=write)
            exit_code, stdout, stderr = run_captiond_in(library, config)
            verdict = check_run(library, emulator, before, pixels, stdout, embedded=write == "embedded")
    finally:
        run_command("chattr", "-i", *frozen)
    problems = verdict.problems + traceback_of(stderr) + leftover_problems(library)
    REPORT.record(request, write=write, hostile_inputs_tried=len(library.cases), exit_code=exit_code,
                  outcomes={case.kind: verdict.outcomes[case.token].status for case in library.cases},
                  originals_changed=len(verdict.changed), photos_lost=verdict.lost, problems=problems)
    assert not problems, "\n".join(problems) + f"\n--- stdout:\n{stdout}\n--- stderr:\n{stderr[-3000:]}"
    assert exit_code == 1, stdout


@records_failures
def test_embedded_writes_where_the_owner_is_not_mapped(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: in a user namespace where the photos' owner is not mapped (a rootless container with a
    bind-mounted library: the owner shows as nobody), photos the process may write are captioned in
    embedded mode, pixels unchanged; copying the owner onto the new file is best effort, not a failure."""
    prefix = unprivileged(UNMAPPED_OWNER)
    library, add = small_library(tmp_path / "world")
    add("h68", "owned-by-nobody-h68.jpg")
    add("h69", "2024/owned-by-nobody-h69.jpg")
    before = library_files(library)
    pixels = {case.token: pixel_digest_anywhere(case.path) for case in library.cases}
    with OllamaEmulator() as emulator:
        config = write_daemon_config(library.root, emulator.url, Write="embedded")
        exit_code, stdout, stderr = run_captiond_in(library, config, prefix=prefix)
        verdict = check_run(library, emulator, before, pixels, stdout, embedded=True)
    problems = verdict.problems + traceback_of(stderr) + leftover_problems(library)
    REPORT.record(request, hostile_inputs_tried=len(library.cases), exit_code=exit_code,
                  originals_changed=len(verdict.changed), photos_lost=verdict.lost, problems=problems)
    assert not problems, "\n".join(problems) + f"\n--- stdout:\n{stdout}\n--- stderr:\n{stderr[-3000:]}"
    assert exit_code == 0, stdout


def leftover_problems(library: Library) -> list[str]:
    return [f"a temporary file was left: {path}" for path in leftovers(library.originals)]


def daemon_problems(library: Library, tmp_path: Path) -> tuple[list[str], dict[str, Any]]:
    """Run `captiond watch` on a hostile library until it settles and two rescans pass; judge every case."""
    expected = [case for case in library.cases if case.expect != "ignored" and case.token != "h34"]
    transient = {"h54"}  # a 2 MB answer: a transient failure, retried later with growing delays
    with OllamaEmulator(reply=library.reply) as emulator, daemons() as started:
        config = write_daemon_config(library.root, emulator.url, Rescan=2)
        daemon = Daemon(config, library.originals, tmp_path / "daemon.log")
        started.append(daemon)

        def finished() -> bool:
            if not daemon.alive():
                return True
            rows = state_rows(library.root) if (library.root / "state" / "captiond.db").exists() else {}
            return all(rows.get(str(case.path), {}).get("state") in ("done", "failed", "quarantined")
                       or (case.token in transient and rows.get(str(case.path), {}).get("last_error"))
                       for case in expected)

        settled = wait_for(finished, timeout=60, interval=0.25)
        asked_then = Counter(request_key(item) for item in emulator.generation_requests())
        alive_through_rescans = wait_for(lambda: not daemon.alive(), timeout=5.0) is False
        asked_later = Counter(request_key(item) for item in emulator.generation_requests())
        rows = state_rows(library.root)
        exit_code = daemon.stop() if daemon.alive() else daemon.process.returncode
        log = daemon.log()

    problems: list[str] = []
    if not settled:
        problems.append("the daemon did not finish the library within 60 s")
    if not alive_through_rescans or exit_code != 0:
        problems.append(f"the daemon exited (code {exit_code})")
    problems += traceback_of(log)
    for case in library.cases:
        row = rows.get(str(case.path), {})
        state = row.get("state")
        caption = sidecar_caption(os.fsencode(case.path) + b".xmp")
        if case.expect == "ignored":
            if row or caption is not None:
                problems.append(f"{case.token} ({case.kind}): a symlink was followed: {row or caption}")
            continue
        if case.token == "h34":
            if not re.search(r"(WARNING|ERROR) .*deeper/", log):
                problems.append("h34: the folder beyond PATH_MAX is not named in the log")
            continue
        allowed = {"captioned": {"done"}, "failed": {"failed", "quarantined"}}
        states = set().union(*(allowed[word] for word in case.expect.split(" or ")))
        if case.token in transient:
            states |= {"pending", "running"}  # waiting for its next retry, or being retried right now
        if state not in states:
            problems.append(f"{case.token} ({case.kind}): expected {case.expect}, state {state} "
                            f"{str(row.get('last_error', ''))[:160]!r}")
        elif state == "done" and (caption is None or (case.caption is not None and not case.caption(caption))):
            problems.append(f"{case.token} ({case.kind}): done with a wrong caption {caption!r}")
        elif state != "done" and not re.search(case.reason, str(row.get("last_error")), re.IGNORECASE):
            problems.append(f"{case.token} ({case.kind}): no reason recorded: {row.get('last_error')!r}")
        if case.jpeg is not None and case.token not in transient:
            key = image_key(case.jpeg)
            if asked_later[key] != asked_then[key]:
                problems.append(f"{case.token} ({case.kind}): asked again after it was finished")
    sent = {request_key(item) for item in emulator.generation_requests()}
    if sent & library.secret_keys:
        problems.append("a photo outside the originals was sent to the model through a symlink")
    figures = {"daemon_exits_during_faults": 0 if alive_through_rescans and exit_code == 0 else 1,
               "states": dict(Counter(str(row.get("state")) for row in rows.values())), "log_tail": log[-1500:]}
    return problems, figures


@records_failures
def test_the_daemon_on_the_hostile_library_keeps_running_and_records_every_outcome(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` on the hostile library never exits, records each case as done (with its clean
    caption) or failed (with its reason; transient ones wait for a retry), ignores symlinks, logs the folder
    it cannot list, and asks the model nothing again about finished or permanently failed files across
    two rescans."""
    library = build_library(tmp_path / "world")
    problems, figures = daemon_problems(library, tmp_path)
    REPORT.record(request, hostile_inputs_tried=len(library.cases), problems=problems, **figures)
    assert not problems, "\n".join(problems) + f"\n--- log:\n{figures['log_tail']}"


@records_failures
def test_the_daemon_survives_inputs_that_break_a_system_call(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` keeps running when a photo's name is 255 bytes or a broken file's non-UTF-8
    name appears in exiftool's error: those files are recorded as failed with a reason, the others captioned
    (a daemon that dies on one file would die again at every restart)."""
    library = build_library(tmp_path / "world", part="breakers")
    problems, figures = daemon_problems(library, tmp_path)
    REPORT.record(request, hostile_inputs_tried=2, problems=problems, **figures)
    assert not problems, "\n".join(problems) + f"\n--- log:\n{figures['log_tail']}"
