"""Environment faults: a full disk, an unwritable state folder, too few inotify watches, a lost-event burst.

Mounts are small tmpfs filesystems (root only; skipped elsewhere) and are always unmounted. The inotify
limits are changed only inside a user namespace made for the test (`/proc/sys/user/max_inotify_watches`
is per user namespace); the machine's own settings are never written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_support import (
    REPORT,
    Daemon,
    caption_for,
    captiond,
    daemons,
    fill_disk,
    free_bytes,
    leftovers,
    make_photos,
    pixel_digest,
    read_tag_records,
    records_failures,
    run_command,
    scaled,
    snapshot,
    state_counts,
    state_rows,
    tmpfs,
    wait_for,
    write_daemon_config,
)

from emulator import OllamaEmulator

WATCH_LIMIT_FILE = Path("/proc/sys/user/max_inotify_watches")
QUEUE_LIMIT_FILE = Path("/proc/sys/fs/inotify/max_queued_events")


def captions_on_disk(photos: list[Path], embedded: bool) -> dict[Path, str | None]:
    """Return each photo's caption as a separate exiftool reads it (sidecar, or inside the file)."""
    targets = photos if embedded else [Path(f"{photo}.xmp") for photo in photos]
    records = read_tag_records([target for target in targets if target.exists()], "XMP-dc:Description")
    return {photo: records.get(str(target), {}).get("XMP-dc:Description")
            for photo, target in zip(photos, targets, strict=True)}


def broken_sidecars(folder: Path) -> list[str]:
    """Return sidecars that a real exiftool cannot parse or that hold no caption (half-written ones)."""
    sidecars = sorted(folder.rglob("*.xmp"))
    records = read_tag_records(sidecars, "XMP-dc:Description")
    return [str(path) for path in sidecars if "XMP-dc:Description" not in records.get(str(path), {})]


# ----------------------------------------------------------------------------------------- a full disk
@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_a_full_disk_fails_cleanly_and_captioning_resumes_when_space_returns(
        write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: on a library disk that is full, then almost full (writes break half-way), `captiond run`
    reports every photo it cannot write with a reason, leaves 0 partial sidecars or temporary files and 0
    changed originals; once space returns the next run captions every photo."""
    with tmpfs(tmp_path / "disk", "2M") as disk:
        originals = disk / "originals"
        photos = make_photos(originals, 12, per_folder=6)
        expected = {photo: caption_for(photo) for photo in photos}
        originals_before = snapshot(originals)
        pixels_before = {photo: pixel_digest(photo) for photo in photos}
        filler = fill_disk(disk)
        with OllamaEmulator() as emulator:
            config = write_daemon_config(tmp_path, emulator.url, Write=write)
            full = captiond("run", "--config", config, "--originals", originals)
            after_full = snapshot(originals)
            left_full = leftovers(originals)
            # Almost full: room for a few sidecars but not for a copy of a photo; writes break half-way.
            os.truncate(filler, max(0, filler.stat().st_size - 24 * 1024))
            almost = captiond("run", "--config", config, "--originals", originals)
            left_almost = leftovers(originals)
            broken_almost = broken_sidecars(originals)
            filler.unlink()
            free_after = free_bytes(disk)
            again = captiond("run", "--config", config, "--originals", originals)
        captions = captions_on_disk(photos, embedded=write == "embedded")
        if write == "sidecar":  # byte for byte; in embedded mode the captioned photos keep their pixels
            unchanged = {name: digest for name, digest in snapshot(originals).items()
                         if not name.endswith(b".xmp")} == originals_before
        else:
            unchanged = all(pixel_digest(photo) == pixels_before[photo] for photo in photos)
        left_end = leftovers(originals)
        vanished = sum(1 for photo in photos if not photo.exists())

    failures_full = [line for line in full.stdout.splitlines() if line.startswith("  failed  ")]
    REPORT.record(request, write=write, photos=len(photos), faults_injected={"disk_full": 2},
                  failed_while_full=len(failures_full), free_bytes_after=free_after,
                  photos_not_captioned_after_space_returned=sum(1 for photo in photos
                                                                if captions[photo] != expected[photo]),
                  photos_lost=vanished,
                  originals_changed=0 if unchanged else 1,
                  leftovers=len(left_full) + len(left_almost) + len(left_end))
    assert full.exit_code == 1, full.stdout + full.stderr
    assert len(failures_full) == len(photos), full.stdout
    assert all(re.search(r"space|full|write|creat", line, re.IGNORECASE) for line in failures_full), full.stdout
    assert after_full == originals_before, "the library changed while the disk was full"
    assert not left_full and not left_almost and not left_end, (left_full, left_almost, left_end)
    assert not broken_almost, f"half-written sidecars: {broken_almost}"
    assert almost.exit_code in (0, 1) and "Traceback" not in almost.stderr, almost.stderr[-3000:]
    assert again.exit_code == 0, again.stdout + again.stderr[-3000:]
    assert captions == expected, "not every photo was captioned once space returned"
    assert unchanged, "originals changed"


@records_failures
def test_the_daemon_resumes_after_the_disk_was_full(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` on a full library disk keeps running, writes nothing partial and, once
    space returns, captions every photo by itself (rescans every 2 s): 0 photos lost to a full disk."""
    with tmpfs(tmp_path / "disk", "2M") as disk:
        originals = disk / "originals"
        photos = make_photos(originals, 10, per_folder=5)
        expected = {photo: caption_for(photo) for photo in photos}
        before = snapshot(originals)
        filler = fill_disk(disk)
        with OllamaEmulator() as emulator, daemons() as started:
            config = write_daemon_config(tmp_path, emulator.url, Rescan=2)
            daemon = Daemon(config, originals, tmp_path / "daemon.log")
            started.append(daemon)

            def attempted() -> bool:
                rows = state_rows(tmp_path) if (tmp_path / "state" / "captiond.db").exists() else {}
                return len(rows) == len(photos) and all(row["last_error"] or row["state"] == "failed"
                                                        for row in rows.values())

            tried = wait_for(attempted, timeout=30, interval=0.2)
            alive_while_full = daemon.alive()
            left_while_full = leftovers(originals)
            sidecars_while_full = sorted(originals.rglob("*.xmp"))
            filler.unlink()
            resumed = wait_for(lambda: state_counts(tmp_path).get("done", 0) == len(photos),
                               timeout=scaled(30, 60), interval=0.25)
            counts = state_counts(tmp_path)
            stopped = daemon.stop()
            log = daemon.log()
        captions = captions_on_disk(photos, embedded=False)
        after = {name: digest for name, digest in snapshot(originals).items() if not name.endswith(b".xmp")}

    REPORT.record(request, photos=len(photos), faults_injected={"disk_full": 1}, resumed=resumed,
                  state_counts=counts, daemon_exits_during_faults=0 if alive_while_full else 1,
                  photos_not_captioned_after_space_returned=sum(1 for photo in photos
                                                                if captions[photo] != expected[photo]),
                  photos_lost=len(before) - len(after), originals_changed=0 if after == before else 1)
    assert tried, f"the daemon did not try the photos while the disk was full:\n{log[-3000:]}"
    assert alive_while_full and stopped == 0, log[-3000:]
    assert not left_while_full and not sidecars_while_full, (left_while_full, sidecars_while_full)
    assert after == before
    assert resumed, (f"space returned but the daemon did not caption the photos (state {counts}); "
                     f"a full disk is not a property of the photo:\n{log[-3000:]}")
    assert captions == expected


# ----------------------------------------------------------------------------------------- the state folder
def watch_exit(config: Path, originals: Path, timeout: float = 30) -> tuple[int | None, str]:
    """Run `captiond watch` expecting it to stop by itself; return (exit code or None if it kept running, stderr)."""
    try:
        result = captiond("watch", "--config", config, "--originals", originals, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stderr or b""
        return None, output.decode("utf-8", "replace") if isinstance(output, bytes) else str(output)
    return result.exit_code, result.stderr


@records_failures
def test_an_unwritable_state_folder_stops_the_daemon_with_a_clear_error(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: `captiond watch` with its StateDir under a regular file, on a read-only filesystem, or
    holding a database that became read-only, exits with code 2 and one clear line naming the state
    folder (no traceback, no captioning without a durable queue)."""
    originals = tmp_path / "originals"
    make_photos(originals, 3)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    results: dict[str, tuple[int | None, str]] = {}
    with OllamaEmulator() as emulator:
        (tmp_path / "under-a-file").mkdir()
        config = write_daemon_config(tmp_path / "under-a-file", emulator.url, StateDir=str(blocker / "state"))
        results["under a regular file"] = watch_exit(config, originals)

        with tmpfs(tmp_path / "read-only-fs", "1M", read_only=True) as read_only:
            (tmp_path / "on-read-only-fs").mkdir()
            config = write_daemon_config(tmp_path / "on-read-only-fs", emulator.url,
                                         StateDir=str(read_only / "captiond"))
            results["on a read-only filesystem"] = watch_exit(config, originals)

        with tmpfs(tmp_path / "state-fs", "4M") as state_fs:
            (tmp_path / "became-read-only").mkdir()
            config = write_daemon_config(tmp_path / "became-read-only", emulator.url,
                                         StateDir=str(state_fs / "captiond"))
            with daemons() as started:
                first = Daemon(config, originals, tmp_path / "first.log")
                started.append(first)
                wait_for(lambda: "watching" in first.log(), timeout=20)
                assert first.stop() == 0
            make_photos(originals / "new", 2, first=10)  # work that needs the database
            remounted = run_command("mount", "-o", "remount,ro", state_fs)
            assert remounted.returncode == 0, remounted.stderr
            results["a database that became read-only"] = watch_exit(config, originals)

    problems = []
    for case, (code, stderr) in results.items():
        if code != 2:
            problems.append(f"{case}: exit code {code} (None: it kept running for 30 s), expected 2\n{stderr[-1500:]}")
        elif "Traceback" in stderr or not re.search(r"state", stderr, re.IGNORECASE):
            problems.append(f"{case}: no clear one-line error naming the state folder:\n{stderr[-1500:]}")
    REPORT.record(request, faults_injected={"state_dir_unwritable": len(results)},
                  exit_codes={case: code for case, (code, _) in results.items()}, problems=problems)
    assert not problems, "\n\n".join(problems)


# ----------------------------------------------------------------------------------------- inotify
def namespace_with_watch_limit(limit: int) -> list[str]:
    """Return a command prefix running a program in a new user namespace whose inotify watch limit is `limit`.

    /proc/sys/user/max_inotify_watches is per user namespace: writing it there changes nothing outside
    (checked before and after). Skips when user namespaces are unavailable.
    """
    host_before = WATCH_LIMIT_FILE.read_text() if WATCH_LIMIT_FILE.exists() else ""
    prefix = ["unshare", "--user", "--map-root-user", "sh", "-c",
              f'echo {limit} > {WATCH_LIMIT_FILE} && exec "$@"', "sh"]
    probe = run_command(*prefix, "cat", WATCH_LIMIT_FILE)
    host_after = WATCH_LIMIT_FILE.read_text() if WATCH_LIMIT_FILE.exists() else ""
    assert host_before == host_after, "the probe changed the machine's inotify limit"
    if probe.returncode != 0 or probe.stdout.strip() != str(limit):
        pytest.skip(f"cannot set an inotify watch limit in a user namespace here: {probe.stderr.strip()}")
    return prefix


WATCH_LIMIT = 8
FOLDERS = 30


@records_failures
def test_too_few_inotify_watches_miss_no_photo(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: with an inotify watch limit of 8 (set in a user namespace) and a library of 30 folders, every
    photo present at start and every photo added later to any folder (watched or not) is captioned; the
    rescans (every 3 s) find what the watcher cannot see."""
    prefix = namespace_with_watch_limit(WATCH_LIMIT)
    originals = tmp_path / "originals"
    photos = make_photos(originals, FOLDERS, per_folder=1)
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Rescan=3)
        daemon = Daemon(config, originals, tmp_path / "daemon.log", prefix=prefix)
        started.append(daemon)
        first = wait_for(lambda: state_counts(tmp_path).get("done", 0) == FOLDERS, timeout=30)
        # New photos in the existing folders: most of them are not watched.
        later = []
        for index, folder in enumerate(sorted(path.parent for path in photos)):
            later += make_photos(folder, 1, name=f"LATER{index:02d}", per_folder=10_000, first=500 + index)
        added = time.monotonic()
        found = wait_for(lambda: state_counts(tmp_path).get("done", 0) == 2 * FOLDERS, timeout=30)
        seconds = time.monotonic() - added
        alive = daemon.alive()
        stopped = daemon.stop()
        log = daemon.log()
    everything = photos + later
    captions = captions_on_disk(everything, embedded=False)
    lost = [photo.name for photo in everything if captions[photo] != caption_for(photo)]
    REPORT.record(request, photos=len(everything), faults_injected={"inotify_watch_limit": 1},
                  inotify_watch_limit=WATCH_LIMIT, folders=FOLDERS + 1, seconds_to_find_later_photos=round(seconds, 1),
                  photos_lost=len(lost), daemon_exits_during_faults=0 if alive else 1)
    assert first and found and alive and stopped == 0, log[-3000:]
    assert not lost, lost


@records_failures
def test_running_out_of_inotify_watches_is_logged(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: when the daemon cannot watch every folder (watch limit 8, 31 folders), its log says so and
    names the limit to raise (README: "the log says so with the sysctl line that fixes it")."""
    prefix = namespace_with_watch_limit(WATCH_LIMIT)
    originals = tmp_path / "originals"
    make_photos(originals, FOLDERS, per_folder=1)
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Rescan=3)
        daemon = Daemon(config, originals, tmp_path / "daemon.log", prefix=prefix)
        started.append(daemon)
        wait_for(lambda: state_counts(tmp_path).get("done", 0) == FOLDERS, timeout=30)
        time.sleep(1)
        stopped = daemon.stop()
        log = daemon.log()
    warned = bool(re.search(r"(WARNING|ERROR) .*(inotify|max_user_watches|max_inotify_watches|watch)", log))
    REPORT.record(request, inotify_watch_limit=WATCH_LIMIT, folders=FOLDERS + 1, warned=warned)
    assert stopped == 0
    assert warned, f"{FOLDERS + 1} folders, {WATCH_LIMIT} inotify watches, and the log does not say so:\n{log[-2000:]}"


@records_failures
def test_an_inotify_queue_overflow_misses_no_photo(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: a burst of more filesystem events than the kernel queues (fs.inotify.max_queued_events) while
    the daemon cannot read them (stopped with SIGSTOP, then continued) loses no photo: the overflow is
    noticed and a rescan finds the photos whose events were dropped (Daemon.Rescan is 1 h here, so only the
    overflow can have triggered it)."""
    queued_limit = int(QUEUE_LIMIT_FILE.read_text())
    junk_files = queued_limit // 4 + 2000  # each gives create, open, modify, close and delete events
    originals = tmp_path / "originals"
    photos = make_photos(originals, 6, per_folder=3)
    with OllamaEmulator() as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Rescan=3600)
        daemon = Daemon(config, originals, tmp_path / "daemon.log")
        started.append(daemon)
        assert wait_for(lambda: state_counts(tmp_path).get("done", 0) == len(photos), timeout=30), daemon.log()
        time.sleep(0.5)
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            junk = originals / "00" / "junk"
            junk.mkdir()
            for index in range(junk_files):
                path = junk / f"note-{index}.txt"
                path.write_bytes(b"x")
                path.unlink()
            later = make_photos(originals, 8, name="AFTER_BURST", per_folder=4, first=100)
            later += make_photos(originals / "00", 4, name="AFTER_BURST_OLD_FOLDER", per_folder=100, first=200)
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        found = wait_for(lambda: state_counts(tmp_path).get("done", 0) == len(photos) + len(later), timeout=30)
        alive = daemon.alive()
        stopped = daemon.stop()
        log = daemon.log()
    overflowed = "overflow" in log.lower()
    captions = captions_on_disk(photos + later, embedded=False)
    lost = [photo.name for photo in photos + later if captions[photo] != caption_for(photo)]
    REPORT.record(request, photos=len(photos) + len(later), faults_injected={"inotify_queue_overflow": 1},
                  events_in_burst=junk_files * 5, max_queued_events=queued_limit, overflow_seen=overflowed,
                  photos_lost=len(lost), daemon_exits_during_faults=0 if alive else 1)
    assert overflowed, f"the burst did not overflow the inotify queue, the test proves nothing:\n{log[-2000:]}"
    assert alive and stopped == 0, log[-3000:]
    assert found and not lost, f"photos missed after an overflow: {lost}\n{log[-3000:]}"
