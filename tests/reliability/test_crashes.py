"""Crashes: the daemon is SIGKILLed at random moments of a backfill, again and again, and restarted.

Fast: 200 photos, 5 kills per write mode. Long (CAPTIOND_RELIABILITY=long): 400 photos, 20 kills.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from reliability_support import (
    REPORT,
    Daemon,
    JitteryEmulator,
    Problems,
    daemons,
    file_digest,
    image_key,
    leftovers,
    make_photos,
    model_jpeg,
    pixel_digest,
    read_tag_records,
    records_failures,
    request_key,
    scaled,
    seeded,
    state_counts,
    status,
    wait_for,
    write_daemon_config,
)

from emulator import expected_caption

PHOTOS = scaled(200, 400)
KILLS = scaled(5, 20)
PARALLEL = 2


@pytest.mark.parametrize("write", ["sidecar", "embedded"])
@records_failures
def test_sigkill_at_random_moments_loses_damages_and_repeats_nothing(
        write: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Figure: N SIGKILLs of `captiond watch` at random moments of a backfill (sidecar and embedded mode)
    are survived with 0 photos lost, 0 originals changed (pixels; bytes too in sidecar mode), 0 temporary or
    half-written files left, each photo captioned once with its own caption, the model asked at most
    photos + kills x (Parallel + 2) times, and the state database agreeing with the files."""
    rng = seeded(request.node.name)
    originals = tmp_path / "originals"
    photos = make_photos(originals, PHOTOS)
    keys = {photo: image_key(model_jpeg(photo)) for photo in photos}
    captions = {photo: expected_caption(model_jpeg(photo)) for photo in photos}
    bytes_before = {photo: file_digest(photo) for photo in photos}
    pixels_before = {photo: pixel_digest(photo) for photo in photos}
    # Kill when the model has been asked this often, plus a random pause: during a request, a write, a
    # state update or the start-up scan of the restarted daemon.
    thresholds = sorted(rng.sample(range(3, PHOTOS - 3), KILLS))
    kills: list[dict[str, object]] = []

    with JitteryEmulator((0.02, 0.05), seeded(f"{request.node.name}:latency")) as emulator, daemons() as started:
        config = write_daemon_config(tmp_path, emulator.url, Parallel=PARALLEL, Write=write)
        log = tmp_path / "daemon.log"
        started.append(Daemon(config, originals, log))
        for threshold in thresholds:
            reached = wait_for(lambda: len(emulator.generation_requests()) >= threshold, timeout=60)  # noqa: B023
            assert reached, f"the backfill stalled before {threshold} requests:\n{started[-1].log()[-3000:]}"
            time.sleep(rng.uniform(0.0, 0.12))
            victim = started[-1]
            assert victim.alive(), f"the daemon exited by itself (code {victim.process.returncode}):\n{victim.log()}"
            victim.kill()
            kills.append({"after_requests": len(emulator.generation_requests()),
                          "done_rows": state_counts(tmp_path).get("done", 0)})
            started.append(Daemon(config, originals, log))
        finished = wait_for(lambda: state_counts(tmp_path).get("done", 0) == PHOTOS, timeout=scaled(120, 300))
        last = started[-1]
        assert finished, f"not every photo finished: {state_counts(tmp_path)}\n{last.log()[-3000:]}"
        assert last.stop() == 0, last.log()[-3000:]
        report = status(config)
        requests = emulator.generation_requests()

    # What the model was asked: each photo at least once, in total at most one extra per request that
    # can be in flight or answered-but-unwritten when a kill lands.
    asked = Counter(request_key(item) for item in requests)
    # A kill while a request's body is on its way leaves the emulator a body it cannot read (key ""):
    # that is a request in flight at a kill, counted in the bound below, not an image from elsewhere.
    cut_short = asked.pop("", 0)
    bound = PHOTOS + KILLS * (PARALLEL + 2)
    unknown = set(asked) - set(keys.values())

    # What is on disk.
    if write == "sidecar":
        records = read_tag_records([Path(f"{photo}.xmp") for photo in photos], "XMP-dc:Description",
                                   "XMP-tiff:ImageDescription", "XMP-captiond:CaptionSource")
        tags = {photo: records.get(f"{photo}.xmp", {}) for photo in photos}
    else:
        records = read_tag_records(photos, "XMP-dc:Description", "IFD0:ImageDescription",
                                   "XMP-captiond:CaptionSource")
        tags = {photo: records.get(str(photo), {}) for photo in photos}
    wrong = {photo.name: tags[photo].get("XMP-dc:Description") for photo in photos
             if tags[photo].get("XMP-dc:Description") != captions[photo]
             or tags[photo].get("XMP-captiond:CaptionSource") != "ollama"}
    duplicated = [photo.name for photo in photos if any(" (1)" in key for key in tags[photo])]
    pixels_changed = [photo.name for photo in photos if pixel_digest(photo) != pixels_before[photo]]
    bytes_changed = [photo.name for photo in photos if file_digest(photo) != bytes_before[photo]]
    sidecars = sorted(originals.rglob("*.xmp"))
    sidecar_records = read_tag_records(sidecars, "XMP-dc:Description")
    broken_sidecars = [str(path) for path in sidecars
                       if "XMP-dc:Description" not in sidecar_records.get(str(path), {})
                       or "ExifTool:Error" in sidecar_records.get(str(path), {})]
    left = leftovers(originals)
    originals_changed = len(pixels_changed) + (len(bytes_changed) if write == "sidecar" else 0)

    problems = Problems()
    problems.expect(len(kills) == KILLS, f"{len(kills)} kills instead of {KILLS}")
    problems.expect(not wrong, f"photos without their own caption after the kills: {dict(list(wrong.items())[:10])}")
    problems.expect(not duplicated, f"captions written twice: {duplicated[:10]}")
    problems.expect(not pixels_changed, f"originals whose pixels changed: {pixels_changed[:10]}")
    if write == "sidecar":
        problems.expect(not bytes_changed, f"originals changed in sidecar mode: {bytes_changed[:10]}")
        problems.expect(len(sidecars) == PHOTOS, f"{len(sidecars)} sidecars for {PHOTOS} photos")
    else:
        problems.expect(not sidecars, f"sidecars written in embedded mode: {sidecars[:5]}")
    problems.expect(not left, f"temporary files left behind: {left}")
    problems.expect(not broken_sidecars, f"sidecars that do not parse or hold no caption: {broken_sidecars}")
    problems.expect(not unknown, "the model was sent images that are not the library's photos")
    problems.expect(set(asked) == set(keys.values()), "some photos were never asked about")
    problems.expect(cut_short <= KILLS * (PARALLEL + 2), f"{cut_short} requests cut short by {KILLS} kills")
    problems.expect(len(requests) <= bound, f"{len(requests)} model requests for {PHOTOS} photos and {KILLS} kills "
                                            f"(bound {bound})")
    problems.expect(report["counts"]["done"] == PHOTOS and report["queue"] == 0,
                    f"the state database disagrees with the files: {report['counts']}")
    problems.expect(report["counts"]["failed"] == report["counts"]["quarantined"] == 0,
                    f"photos recorded as failed: {report['failures']}")
    REPORT.record(request, write=write, photos=PHOTOS, crashes_survived=len(kills), kills=kills,
                  model_requests=len(requests), model_request_bound=bound,
                  photos_asked_more_than_once=sum(1 for count in asked.values() if count > 1),
                  photos_lost=len(wrong), originals_changed=originals_changed, leftovers=len(left),
                  broken_sidecars=len(broken_sidecars), status_counts=report["counts"], problems=problems)
    problems.assert_none()
