"""Containment: captiond reads and writes only regular files inside the originals, never through a symlink.

Layouts: symlinked folders and photos, symlinked sidecars, FIFOs named like photos and sidecars, and
symlinks that appear while the model answers (the emulator's reply makes the swap, so the moment is
exact): the photo, its folder or its sidecar replaced by a symlink to the world outside. Both write
modes, `captiond run` and `captiond watch` (inotify and polling, which follows symlinked folders).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    REPORT,
    Daemon,
    Problems,
    daemons,
    environment,
    image_key,
    model_jpeg,
    photo_bytes,
    records_failures,
    rows_so_far,
    wait_for,
    write_daemon_config,
)

from emulator import OllamaEmulator, decode_images, default_reply

SIDECAR = (b"<?xpacket begin='\xef\xbb\xbf' id='W5M0MpCehiHzreSzNTczkc9d'?>\n"
           b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><rdf:RDF xmlns:rdf='http://www.w3.org/1999/02/22-rdf-syntax-ns#'>\n"
           b" <rdf:Description rdf:about='' xmlns:dc='http://purl.org/dc/elements/1.1/'>\n"
           b"  <dc:subject><rdf:Bag><rdf:li>outside</rdf:li></rdf:Bag></dc:subject>\n"
           b" </rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end='w'?>")


def outside_state(world: Path) -> dict[str, str]:
    """Return {relative path: kind and digest} of everything outside the originals (symlinks not followed)."""
    found = {}
    for directory, folders, files, descriptor in os.fwalk(world):
        relative_directory = os.path.relpath(directory, world)
        if relative_directory == "originals" or relative_directory.startswith("originals/"):
            continue
        for name in [*folders, *files]:
            relative = os.path.normpath(os.path.join(relative_directory, name))
            if relative == "originals":
                continue
            if os.path.islink(os.path.join(directory, name)) or name in folders:
                found[relative] = "entry"
                continue
            with open(name, "rb", opener=lambda path, flags, fd=descriptor: os.open(path, flags, dir_fd=fd)) as stream:
                found[relative] = hashlib.sha256(stream.read()).hexdigest()
    return found


class World:
    """world/originals (the library) and world/outside (photos and a sidecar a symlink may point at)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.originals = root / "originals"
        self.outside = root / "outside"
        self.originals.mkdir(parents=True)
        self.outside.mkdir()
        self.swaps: dict[str, Callable[[], None]] = {}  # image key -> what to do while the model answers
        self.inside: list[Path] = []  # photos that must end captioned
        self.refused: list[Path] = []  # photos that must end failed (or ignored), never written through
        self.secret_keys: set[str] = set()

    def photo(self, relative: str, index: int, directory: Path | None = None) -> Path:
        path = (directory or self.originals) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(photo_bytes(index))
        return path

    def reply(self, body: dict[str, Any]) -> str:
        images = decode_images(body)
        swap = self.swaps.pop(image_key(images[0]), None) if images else None
        if swap is not None:
            swap()
        return default_reply(body)


def build(root: Path, embedded: bool) -> World:
    """Make every symlink and special-file layout of the class (see the module's doc)."""
    world = World(root)
    originals, outside = world.originals, world.outside
    for index in range(3):
        world.inside.append(world.photo(f"plain/IMG_{index}.jpg", index))
    secret = world.photo("secret.jpg", 100, outside)
    world.photo("album/IMG_9.jpg", 101, outside)
    (outside / "album" / "IMG_9.jpg.xmp").write_bytes(SIDECAR)
    (outside / "person.xmp").write_bytes(SIDECAR)
    world.secret_keys |= {image_key(model_jpeg(secret)), image_key(model_jpeg(outside / "album" / "IMG_9.jpg"))}
    os.symlink(outside / "album", originals / "linked-album")
    os.symlink(secret, originals / "linked-photo.jpg")
    (originals / "nested").mkdir()
    os.symlink("../../outside", originals / "nested" / "up")
    os.mkfifo(originals / "fifo.jpg")
    # A sidecar that is a symlink out of the library, and one that is a FIFO: refused, never opened.
    world.refused.append(world.photo("sidecars/linked.jpg", 10))
    os.symlink(outside / "person.xmp", originals / "sidecars" / "linked.jpg.xmp")
    world.refused.append(world.photo("sidecars/fifo.jpg", 11))
    os.mkfifo(originals / "sidecars" / "fifo.jpg.xmp")
    # While the model answers: the photo becomes a symlink to the outside photo ...
    raced = world.photo("race/photo.jpg", 20)
    world.refused.append(raced)
    world.swaps[image_key(model_jpeg(raced))] = lambda: (raced.unlink(), os.symlink(secret, raced))
    # ... the photo's folder becomes a symlink to an outside folder holding a photo of the same name ...
    folder_photo = world.photo("race-folder/inner/photo.jpg", 21)
    world.photo("decoy/photo.jpg", 22, outside)
    world.refused.append(folder_photo)

    def swap_folder() -> None:
        shutil.rmtree(folder_photo.parent)
        os.symlink(outside / "decoy", folder_photo.parent)

    world.swaps[image_key(model_jpeg(folder_photo))] = swap_folder
    # ... and (sidecar mode) its sidecar appears as a symlink to an outside sidecar.
    sidecar_photo = world.photo("race-sidecar/photo.jpg", 23)
    if embedded:
        world.inside.append(sidecar_photo)
    else:
        world.refused.append(sidecar_photo)
        (outside / "later.xmp").write_bytes(SIDECAR)
        world.swaps[image_key(model_jpeg(sidecar_photo))] = lambda: os.symlink(
            outside / "later.xmp", Path(f"{sidecar_photo}.xmp"))
    return world


def judge(world: World, before: dict[str, str], embedded: bool, sent: set[str]) -> Problems:
    """Return what is wrong: the outside changed, a photo outside was sent, a refused photo written, ..."""
    problems = Problems()
    after = outside_state(world.root)
    for name in sorted(set(before) | set(after)):
        problems.expect(before.get(name) == after.get(name),
                        f"outside the originals, {name!r} changed: {before.get(name)} -> {after.get(name)}")
    problems.expect(not sent & world.secret_keys, "a photo outside the originals was sent to the model")
    for photo in world.inside:
        target = photo if embedded else Path(f"{photo}.xmp")
        problems.expect(target.exists() and b"captiond" in target.read_bytes(), f"{photo} was not captioned")
    problems.expect(os.path.islink(world.originals / "race" / "photo.jpg"), "the symlinked photo was replaced")
    problems.expect(os.path.islink(world.originals / "linked-photo.jpg"), "a symlinked photo was replaced")
    for directory, _, files in os.walk(world.originals):
        for name in files:
            problems.expect(".captiond-tmp-" not in name, f"a temporary file was left: {directory}/{name}")
    return problems


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_run_never_reads_or_writes_through_a_symlink(write: str, tmp_path: Path,
                                                     request: pytest.FixtureRequest) -> None:
    """Figure: `captiond run` on a library with symlinked folders and photos, symlinked and FIFO sidecars, a
    FIFO photo, and a photo, a folder and a sidecar swapped for symlinks out of the library while the model
    answers: nothing outside the originals changes or is sent to the model, symlinked photos stay symlinks,
    the refused photos fail with a reason, the others are captioned, and nothing blocks on a FIFO."""
    world = build(tmp_path / "world", embedded=write == "embedded")
    before = outside_state(world.root)
    with OllamaEmulator(reply=world.reply) as emulator:
        config = write_daemon_config(tmp_path, emulator.url, Write=write)
        process = subprocess.run([sys.executable, "-m", "captiond", "run", "--config", str(config), "--originals",
                                  str(world.originals)], capture_output=True, timeout=300, env=environment(),
                                 stdin=subprocess.DEVNULL, check=False)
        sent = {image_key(images[0]) for item in emulator.generation_requests() if (images := item.images())}
    output = process.stdout.decode("utf-8", "replace") + process.stderr.decode("utf-8", "replace")
    problems = judge(world, before, write == "embedded", sent)
    problems.expect(process.returncode == 1, f"exit code {process.returncode} (the refused photos fail: 1)")
    problems.expect("Traceback" not in output, "a traceback")
    for photo in world.refused:
        name = photo.relative_to(world.originals).as_posix()
        problems.expect(f"failed  {name}: " in output, f"{name} is not reported as failed")
    REPORT.record(request, write=write, hostile_inputs_tried=len(world.refused) + 5, problems=list(problems))
    problems.assert_none(output[-3000:])


@pytest.mark.parametrize(("write", "watcher"), [("sidecar", "inotify"), ("embedded", "inotify"),
                                                ("sidecar", "polling")])
@records_failures
def test_watch_never_reads_or_writes_through_a_symlink(write: str, watcher: str, tmp_path: Path,
                                                       request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` (inotify, and polling, which follows symlinked folders) on the same layouts,
    plus a symlinked folder, a symlinked photo and a FIFO that appear while it runs: it stays alive, never
    changes anything outside the originals nor sends it to the model, and records the refused photos as
    failed with a reason."""
    world = build(tmp_path / "world", embedded=write == "embedded")
    before = outside_state(world.root)
    with OllamaEmulator(reply=world.reply) as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Write=write, Watcher=watcher, PollInterval=0.3)
        daemon = Daemon(config, world.originals, tmp_path / "daemon.log")
        started.append(daemon)
        refused = {str(photo) for photo in world.refused}

        def finished() -> bool:
            rows = rows_so_far(tmp_path)
            return not daemon.alive() or (
                all(rows.get(str(photo), {}).get("state") == "done" for photo in world.inside)
                and all(rows.get(path, {}).get("state") in ("failed", None) for path in refused))

        first = wait_for(finished, timeout=120, interval=0.25)
        os.symlink(world.outside / "album", world.originals / "plain" / "late-album")
        os.symlink(world.outside / "secret.jpg", world.originals / "plain" / "late.jpg")
        os.mkfifo(world.originals / "plain" / "late-fifo.jpg")
        late = world.photo("plain/late-real.jpg", 30)
        world.inside.append(late)
        second = wait_for(finished, timeout=120, interval=0.25)
        alive = daemon.alive()
        rows = rows_so_far(tmp_path)
        exit_code = daemon.stop()
        sent = {image_key(images[0]) for item in emulator.generation_requests() if (images := item.images())}
    problems = judge(world, before, write == "embedded", sent)
    problems.expect(first and second, "the daemon did not finish within 120 s")
    problems.expect(alive and exit_code == 0, f"the daemon exited (code {exit_code})")
    problems.expect("Traceback" not in daemon.log(), "a traceback in the log")
    for path in rows:
        problems.expect(not os.path.relpath(path, world.originals).startswith(("linked", "nested", "plain/late-a")),
                        f"a path through a symlink was queued: {path}")
    REPORT.record(request, write=write, hostile_inputs_tried=len(world.refused) + 8, problems=list(problems))
    problems.assert_none(daemon.log()[-3000:])
