"""Hostile folder and file names, generated as a class: nothing is ever written outside the originals.

exiftool expands format codes (`%d`, `%f`, `%e`, `%2.1f`, `%-c`, ...) in output paths and reads a name
starting with `-` as an option; its argument stream cannot carry a line break. Every such name, alone,
combined and nested, must lead to a captioned photo (or a failure with a reason) and to no file or folder
anywhere but the photo itself and its sidecar.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    EXIFTOOL_CONFIG,
    REPORT,
    Daemon,
    Problems,
    daemons,
    environment,
    leftovers,
    photo_bytes,
    records_failures,
    rows_so_far,
    seeded,
    wait_for,
    write_daemon_config,
)

from emulator import OllamaEmulator

# Every code exiftool's FilenameSPrintf and NextUnusedFilename know, with widths, signs and modifiers.
FORMAT_CODES = ("%d", "%D", "%f", "%F", "%e", "%E", "%t", "%g1", "%s", "%o", "%c", "%C", "%-c", "%+c", "%2.1f",
                "%-2.1f", "%:1d", "%-:1D", "%.3f", "%lf", "%ue", "%3nc", "%%d", "%")
OTHER_PIECES = ("-", "--", "-o", "-@", "-execute", "-ver", "..", "...", " ", "  x ", "\n", "\r", "\t", "é", "日本",
                "🙂", "\u202e", "'", '"', "$(id)", "*", "?", "[a]", "\\", "=", ";", "b..")
PIECES = FORMAT_CODES + OTHER_PIECES


def hostile_name(rng: random.Random, pieces: int) -> str:
    """Return a name built from `pieces` random hostile pieces (never hidden: a leading '.' is skipped by design)."""
    name = "".join(rng.choice(PIECES) for _ in range(pieces))
    return name if name and not name.startswith(".") and name not in ("..", ".") else f"x{name}"


def hostile_layout(rng: random.Random) -> list[str]:
    """Return relative photo paths: every piece alone as a folder and as a file, plus random nestings."""
    visible = [piece if not piece.startswith(".") else f"x{piece}" for piece in PIECES]
    paths = [f"{piece}/IMG{index}.jpg" for index, piece in enumerate(visible)]
    paths += [f"plain/{piece}{index}.jpg" for index, piece in enumerate(visible)]
    paths += ["%2.1f/b...jpg", "%2.1f/%2.1f/b...jpg", "%d/%f.%e.jpg", "-o/--.jpg", "a/%-c.jpg", "%:1d/%-c/%c.jpg"]
    for index in range(12):
        depth = rng.randint(1, 3)
        folders = "/".join(hostile_name(rng, rng.randint(1, 3)) for _ in range(depth))
        paths.append(f"{folders}/{hostile_name(rng, rng.randint(1, 3))}{index}.jpg")
    return sorted(set(paths))


SIDECAR_WITH_KEYWORD = (
    b"<?xpacket begin='\xef\xbb\xbf' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
    b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
    b" <rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/'>\n"
    b"  <dc:subject><rdf:Bag><rdf:li>kept</rdf:li></rdf:Bag></dc:subject>\n"
    b" </rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end='w'?>")


def build(world: Path, rng: random.Random) -> list[Path]:
    """Make world/originals with the hostile layout (half the photos with a sidecar already) and a world around it."""
    originals = world / "originals"
    photos = []
    for index, relative in enumerate(hostile_layout(rng)):
        photo = originals / relative
        photo.parent.mkdir(parents=True, exist_ok=True)
        photo.write_bytes(photo_bytes(index))
        if index % 2:  # an existing sidecar is updated through exiftool (a new one is written without it)
            Path(f"{photo}.xmp").write_bytes(SIDECAR_WITH_KEYWORD)
        photos.append(photo)
    (world / "outside").mkdir()
    (world / "outside" / "b...jpg").write_bytes(photo_bytes(9999))
    (world / "cwd").mkdir()
    return photos


def tree(folder: Path) -> dict[bytes, tuple[str, int]]:
    """Return {raw relative path: (kind, size)} of every entry under a folder, never following symlinks."""
    entries: dict[bytes, tuple[str, int]] = {}
    root = os.fsencode(folder)
    for directory, subdirectories, files, descriptor in os.fwalk(root):
        for name in [*subdirectories, *files]:
            status = os.stat(name, dir_fd=descriptor, follow_symlinks=False)
            kind = "dir" if name in subdirectories else "file"
            entries[os.path.relpath(os.path.join(directory, name), root)] = (kind, status.st_size)
    return entries


def captions(photos: list[Path], embedded: bool) -> dict[Path, dict[str, Any]]:
    """Return {photo: tags} read by a separate exiftool, given absolute names as argv (argv carries any name)."""
    targets = [photo if embedded else Path(f"{photo}.xmp") for photo in photos]
    output = subprocess.run(["exiftool", "-config", str(EXIFTOOL_CONFIG), "-j", "-G1", "-XMP-dc:Description",
                             "-XMP-dc:Subject", "-XMP-captiond:CaptionSource", *map(str, targets)],
                            capture_output=True, check=False, timeout=120).stdout
    records = json.loads(output.decode("utf-8", "surrogateescape") or "[]")
    by_name = {record["SourceFile"]: record for record in records}
    return {photo: by_name.get(str(target), {}) for photo, target in zip(photos, targets, strict=True)}


def judge(world: Path, photos: list[Path], before: dict[bytes, tuple[str, int]], embedded: bool) -> Problems:
    """Return what is wrong: any entry created or changed outside the photos and their existing sidecars
    (embedded) or their sidecars (sidecar mode), a temporary file left, a photo without its caption, or a
    keyword of the old sidecar lost."""
    problems = Problems()
    after = tree(world)
    allowed = {os.fsencode(photo.relative_to(world)) + (b"" if embedded else b".xmp") for photo in photos}
    if embedded:  # the photo's existing sidecar is updated too (readers prefer it), never a new one made
        allowed |= {os.fsencode(photo.relative_to(world)) + b".xmp" for photo in photos
                    if os.fsencode(photo.relative_to(world)) + b".xmp" in before}
    for name in sorted(set(before) | set(after)):
        if before.get(name) != after.get(name) and not (name in allowed and name in after):
            problems.append(f"{os.fsdecode(name)!r}: {before.get(name)} became {after.get(name)}")
    problems.extend(f"a temporary file was left: {path!r}" for path in leftovers(world))
    had_sidecar = {photo for photo in photos if before.get(os.fsencode(photo.relative_to(world)) + b".xmp")}
    for photo, tags in captions(photos, embedded).items():
        relative = os.fsdecode(photo.relative_to(world))
        problems.expect(tags.get("XMP-dc:Description") and tags.get("XMP-captiond:CaptionSource") == "ollama",
                        f"{relative!r} was not captioned: {tags}")
        if not embedded and photo in had_sidecar:
            problems.expect("kept" in str(tags.get("XMP-dc:Subject")), f"{relative!r} lost its keyword: {tags}")
    return problems


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_hostile_names_run_writes_nothing_outside_the_originals(
        write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond run` over ~70 photos in folders and files named with every exiftool format code
    (alone, combined, nested), leading dashes, line breaks, dot runs, quotes and Unicode, half of them with an
    existing sidecar, captions every photo and creates or changes no file or folder other than the photos
    (embedded) or their sidecars, anywhere in the world around the library."""
    world = tmp_path / "world"
    photos = build(world, seeded(f"names-{write}"))
    before = tree(world)
    with OllamaEmulator() as emulator:
        config = write_daemon_config(tmp_path, emulator.url, Write=write)
        process = subprocess.run([sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
                                  str(world / "originals")], capture_output=True, timeout=300, env=environment(),
                                 cwd=world / "cwd", stdin=subprocess.DEVNULL, check=False)
    output = process.stdout.decode("utf-8", "replace") + process.stderr.decode("utf-8", "replace")
    problems = judge(world, photos, before, embedded=write == "embedded")
    problems.expect(process.returncode == 0, f"exit code {process.returncode}")
    problems.expect("Traceback" not in output, "a traceback")
    REPORT.record(request, write=write, hostile_inputs_tried=len(photos), problems=list(problems))
    problems.assert_none(output[-4000:])


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_hostile_names_watch_writes_nothing_outside_the_originals(
        write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` on the same kind of library (its first scan, then the same names copied in
    while it runs) captions every photo, never exits, and creates nothing outside the photos and sidecars."""
    world = tmp_path / "world"
    rng = seeded(f"watch-names-{write}")
    photos = build(world, rng)
    arriving = [photo.with_name(f"new-{photo.name}") for photo in photos[::3]]
    before = tree(world)
    before.update({os.fsencode(photo.relative_to(world)): ("file", len(photo_bytes(7))) for photo in arriving})
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Write=write)
        daemon = Daemon(config, world / "originals", tmp_path / "daemon.log")
        started.append(daemon)

        def all_done(expected: list[Path]) -> bool:
            rows = rows_so_far(tmp_path)
            return not daemon.alive() or all(rows.get(str(photo), {}).get("state") == "done" for photo in expected)

        first = wait_for(lambda: all_done(photos), timeout=180, interval=0.25)
        for photo in arriving:
            temporary = photo.with_name(f".{photo.name}.part")
            temporary.write_bytes(photo_bytes(7))
            shutil.move(temporary, photo)
        second = wait_for(lambda: all_done(photos + arriving), timeout=180, interval=0.25)
        alive = daemon.alive()
        exit_code = daemon.stop()
    problems = judge(world, photos + arriving, before, embedded=write == "embedded")
    problems.expect(first and second, "the daemon did not caption the library within 180 s")
    problems.expect(alive and exit_code == 0, f"the daemon exited (code {exit_code})")
    problems.expect("Traceback" not in daemon.log(), "a traceback in the log")
    REPORT.record(request, write=write, hostile_inputs_tried=len(photos) + len(arriving), problems=list(problems))
    problems.assert_none(daemon.log()[-4000:])
