"""Model server faults: a server that fails at random (seeded) in every way Ollama does, and goes away.

Fast: 60 + 20 photos, faults on ~35% of requests, the server down for 10 s.
Long (CAPTIOND_RELIABILITY=long): 300 + 60 photos, the server down for 3 minutes.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from reliability_support import (
    REPORT,
    Daemon,
    Fault,
    FaultyEmulator,
    Problems,
    daemons,
    image_key,
    leftovers,
    make_photos,
    model_jpeg,
    read_tag_records,
    records_failures,
    scaled,
    seeded,
    state_counts,
    state_rows,
    status,
    wait_for,
    write_daemon_config,
)

from emulator import (
    BUSY,
    RATE_LIMITED,
    RUNNER_CRASHED,
    CutStream,
    Drop,
    Endless,
    Garbage,
    Hang,
    Reply,
    StreamError,
    expected_caption,
)

BACKFILL = scaled(60, 300)
ARRIVING_WHILE_DOWN = scaled(20, 60)
DOWN_SECONDS = scaled(10.0, 180.0)
TIMEOUT = 1.0
ATTEMPTS = 3
PARALLEL = 2
CAPTION = re.compile(r"A photo with a calm scene, image [0-9a-f]{8}\.")


def fault_menu() -> list[Fault]:
    """Every way a model server fails, each with its probability per generation request (35% in all).

    The emulator also gives each kind once at the start (so a short run sees every kind)."""
    return [
        Fault("http_503_busy", 0.06, BUSY),
        Fault("http_500_runner_crashed", 0.04, RUNNER_CRASHED),
        Fault("http_429_retry_after", 0.01, RATE_LIMITED),
        Fault("hang_beyond_timeout", 0.03, Hang(TIMEOUT * 3)),
        Fault("dropped_connection", 0.06, Drop()),
        Fault("endless_stream", 0.03, Endless()),
        Fault("garbage_body", 0.04, Garbage()),
        Fault("cut_stream", 0.03, CutStream()),
        Fault("error_inside_stream", 0.02, StreamError("an error was encountered while running the model")),
        Fault("empty_text", 0.03, Reply("")),
    ]


def failed_for_a_fault_it_was_given(row: dict[str, Any], faults_given: Counter[str | None]) -> bool:
    """Return whether a photo's failure is one the faults it received explain (and the README documents):
    an empty answer is that image's failure; two runner crashes quarantine it."""
    if row.get("state") == "failed":
        return bool(faults_given["empty_text"]) and "no caption" in str(row.get("last_error"))
    if row.get("state") == "quarantined":
        return faults_given["http_500_runner_crashed"] >= 2
    return False


@records_failures
def test_random_model_faults_and_an_outage_lose_nothing_and_retry_within_bounds(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: with ~35% of model requests failing at random (503 busy, 500 runner crashed, 429, hangs past
    Daemon.Timeout, dropped connections, endless streams, garbage bodies, cut streams, errors inside the
    stream, empty answers) and the server down for a while, the daemon never exits, 0 photos are lost,
    nothing is marked done without a real caption, a photo fails only for a reason it was really given
    (an empty answer; quarantine only after two runner crashes), and the model sees at most Retry.Attempts
    tries per processing attempt of a photo."""
    originals = tmp_path / "originals"
    photos = make_photos(originals, BACKFILL, name="BACKFILL")
    faults = fault_menu()
    server = FaultyEmulator(faults, seeded(request.node.name))
    server.start()
    daemon_exits = 0
    down_checks = 0
    try:
        with daemons() as started:
            config = write_daemon_config(tmp_path, server.url, Parallel=PARALLEL, Timeout=TIMEOUT,
                                         Retry={"Attempts": ATTEMPTS})
            daemon = Daemon(config, originals, tmp_path / "daemon.log")
            started.append(daemon)

            def settled(total: int) -> bool:
                counts = state_counts(tmp_path)
                return (counts.get("pending", 0) + counts.get("running", 0) == 0
                        and sum(counts.values()) == total) or not daemon.alive()

            # Phase 1: the backfill, under random faults.
            backfilled = wait_for(lambda: settled(BACKFILL), timeout=scaled(120, 600), interval=0.2)
            assert daemon.alive(), f"the daemon exited under model faults:\n{daemon.log()[-3000:]}"
            assert backfilled, f"the backfill did not settle: {state_counts(tmp_path)}\n{daemon.log()[-3000:]}"

            # Phase 2: the server goes away; photos keep arriving; the daemon waits without exiting.
            server.stop()
            down_since = time.monotonic()
            arriving = make_photos(originals / "arrived", ARRIVING_WHILE_DOWN, name="ARRIVED", first=BACKFILL)
            while time.monotonic() - down_since < DOWN_SECONDS:
                time.sleep(0.5)
                down_checks += 1
                if not daemon.alive():
                    daemon_exits += 1
                    break
            assert daemon.alive(), f"the daemon exited while the server was down:\n{daemon.log()[-3000:]}"
            assert "pausing until it answers again" in daemon.log(), daemon.log()[-3000:]
            written_while_down = [photo.name for photo in arriving if Path(f"{photo}.xmp").exists()]

            # Phase 3: the server is back (same port, faults still on): everything is finished.
            server.start()
            photos += arriving
            everything = wait_for(lambda: settled(len(photos)), timeout=scaled(120, 600), interval=0.2)
            assert daemon.alive(), f"the daemon exited after the outage:\n{daemon.log()[-3000:]}"
            assert everything, f"photos still queued: {state_counts(tmp_path)}\n{daemon.log()[-3000:]}"
            assert daemon.stop() == 0, daemon.log()[-3000:]
            log = daemon.log()
            report = status(config)
    finally:
        server.stop()

    keys = {photo: image_key(model_jpeg(photo)) for photo in photos}
    rows = state_rows(tmp_path)
    given = server.per_image()
    injected = server.injected()
    records = read_tag_records([Path(f"{photo}.xmp") for photo in photos], "XMP-dc:Description")

    captioned, failed_for_cause, lost, wrongly_done, over_retried = [], [], [], [], []
    failed_for_a_transient_fault = []
    for photo in photos:
        row = rows.get(str(photo), {})
        faults_given = Counter(given.get(keys[photo], []))
        caption = records.get(f"{photo}.xmp", {}).get("XMP-dc:Description")
        if row.get("state") == "done":
            if caption == expected_caption(model_jpeg(photo)) and CAPTION.fullmatch(caption or ""):
                captioned.append(photo)
            else:
                wrongly_done.append((photo.name, caption))
        elif caption is None and failed_for_a_fault_it_was_given(row, faults_given):
            failed_for_cause.append(photo)
        elif caption is None and row.get("state") in ("failed", "quarantined"):  # reported, but given up on
            failed_for_a_transient_fault.append((photo.name, row["state"], row["last_error"], dict(faults_given)))
        else:
            lost.append((photo.name, row.get("state"), row.get("last_error"), dict(faults_given)))
        # One processing attempt = one describe(): at most ATTEMPTS requests. Processing attempts = the
        # counted transient ones + the last one + the one the outage may have cut short (not counted).
        processing_attempts = int(row.get("attempts", 0)) + 1 + 1
        if len(given.get(keys[photo], [])) > ATTEMPTS * processing_attempts:
            over_retried.append((photo.name, len(given[keys[photo]]), row.get("attempts")))
    left = leftovers(originals)

    problems = Problems()
    problems.expect(daemon_exits == 0 and down_checks > 0, "the daemon exited during the faults")
    problems.expect(not written_while_down, f"captions written while the server was down: {written_while_down}")
    problems.expect(not wrongly_done, f"marked done without their real caption: {wrongly_done[:10]}")
    problems.expect(not failed_for_a_transient_fault, "photos given up on (never retried) after a transient fault: "
                    f"{failed_for_a_transient_fault[:10]}")
    problems.expect(not lost, f"photos neither captioned nor failed: {lost[:10]}")
    problems.expect(not over_retried, f"more than {ATTEMPTS} requests per processing attempt: {over_retried[:10]}")
    problems.expect(not left, f"temporary files left: {left}")
    problems.expect(report["queue"] == 0 and report["counts"]["done"] == len(captioned),
                    f"the state database disagrees with the files: {report['counts']}")
    problems.expect(report["counts"]["failed"] + report["counts"]["quarantined"] == len(failed_for_cause),
                    f"{report['counts']['failed'] + report['counts']['quarantined']} failed or quarantined in the "
                    f"state database, {len(failed_for_cause)} explained by the faults they were given")
    problems.expect(sum(injected.values()) >= len(photos) // 5, f"too few faults to mean anything: {injected}")
    REPORT.record(request, photos=len(photos), faults_injected={**injected, "server_down": 1},
                  server_down_seconds=DOWN_SECONDS, model_requests=len(server.injections),
                  captioned=len(captioned), failed_with_their_cause=len(failed_for_cause), photos_lost=len(lost),
                  given_up_after_a_transient_fault=len(failed_for_a_transient_fault),
                  done_without_caption=len(wrongly_done), over_retried=len(over_retried),
                  daemon_exits_during_faults=daemon_exits, retries_logged=log.count("will retry"),
                  status_counts=report["counts"], problems=problems)
    problems.assert_none()
