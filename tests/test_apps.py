"""Telling PhotoPrism and Immich about written captions: against loopback emulators of their endpoints."""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from app_emulators import ImmichEmulator, PhotoPrismEmulator
from captiond.apps import AppNotifier
from captiond.config import AppConfig, DaemonConfig, parse_config
from captiond.errors import ConfigError
from conftest import add_fixture, run_captiond, write_config
from emulator import OllamaEmulator

PHOTO = "Canon_PowerShot_S40.jpg"
TOKEN = "pp-app-password-s3cret"
KEY = "immich-api-key-s3cret"


@pytest.fixture
def photoprism() -> Any:
    with PhotoPrismEmulator(token=TOKEN) as server:
        yield server


@pytest.fixture
def immich() -> Any:
    with ImmichEmulator(key=KEY) as server:
        yield server


def apps_config(tmp_path: Path, url: str, **apps: object) -> Path:
    return write_config(tmp_path, url, daemon=dict(apps))


@pytest.mark.subprocess
def test_run_asks_photoprism_to_index_each_written_folder_once(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, photoprism: PhotoPrismEmulator) -> None:
    for folder in ("2024/Holiday", "2024/Holiday", "2024/Work", ""):
        add_fixture(originals, PHOTO, f"{folder}/{len(list(originals.rglob('*.jpg')))}.jpg".lstrip("/"))
    add_fixture(originals, "no_exif.jpg", "Untouched/no_exif.jpg")  # a person's caption: nothing written there
    config = apps_config(tmp_path, emulator.url, PhotoPrism={"Url": photoprism.url, "Token": TOKEN})

    result = run_captiond("run", "--config", config, "--originals", originals, "-v")

    assert result.exit_code == 0, result.stderr
    assert "captioned 4" in result.stdout
    asked = photoprism.index_paths()
    assert set(asked) == {"/", "2024/Holiday", "2024/Work"}  # every written folder, and only those
    # Batched: at most one request per photo written there (one in all unless the run outlasts the 2 s quiet).
    assert asked.count("2024/Holiday") <= 2 and asked.count("2024/Work") == 1 and asked.count("/") == 1
    for call in photoprism.calls:
        assert call.body == {"path": call.body["path"], "rescan": False, "cleanup": False}
        assert call.headers["authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.subprocess
def test_run_asks_immich_to_refresh_exactly_the_changed_assets(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, immich: ImmichEmulator) -> None:
    known = [add_fixture(originals, PHOTO, f"a/{name}") for name in ("one.jpg", "two.jpg")]
    not_imported = add_fixture(originals, PHOTO, "a/three.jpg")
    ids = [immich.add_asset(f"/mnt/library/a/{photo.name}") for photo in known]
    immich.add_asset("/mnt/library/a/one.jpg.mp4")  # a substring match of one.jpg: must not be refreshed
    immich.add_asset("/mnt/library/b/untouched.jpg")
    config = apps_config(tmp_path, emulator.url,
                         Immich={"Url": immich.url, "Key": KEY, "Originals": "/mnt/library"})

    result = run_captiond("run", "--config", config, "--originals", originals, "-v")

    assert result.exit_code == 0, result.stderr
    assert "captioned 3" in result.stdout
    searched = sorted(call.body["originalPath"] for call in immich.calls if call.path == "/api/search/metadata")
    assert searched == [f"/mnt/library/a/{name}" for name in ("one.jpg", "three.jpg", "two.jpg")]
    assert [sorted(job["assetIds"]) for job in immich.jobs()] == [sorted(ids)]
    assert immich.jobs()[0]["name"] == "refresh-metadata"
    assert immich.sidecar_commands() == [{"command": "start", "force": False}]  # new sidecars: discovery
    assert all(call.headers["x-api-key"] == KEY for call in immich.calls)
    assert KEY not in result.stdout + result.stderr
    assert not_imported.with_suffix(".jpg.xmp").exists()


@pytest.mark.subprocess
def test_failures_never_affect_captioning_and_are_retried(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, photoprism: PhotoPrismEmulator,
        immich: ImmichEmulator) -> None:
    photo = add_fixture(originals, PHOTO, f"a/{PHOTO}")
    immich.add_asset(str(photo))
    photoprism.fail_next(500)
    immich.fail_next(503, 2)
    config = apps_config(tmp_path, emulator.url, PhotoPrism={"Url": photoprism.url, "Token": TOKEN},
                         Immich={"Url": immich.url, "Key": KEY})

    result = run_captiond("run", "--config", config, "--originals", originals)

    assert result.exit_code == 0, result.stderr
    assert "captioned 1" in result.stdout
    assert photoprism.index_paths() == ["a", "a"]  # the failed request, then the retry
    assert len(immich.jobs()) == 1
    assert "HTTP 500" in result.stderr and "HTTP 503" in result.stderr
    assert TOKEN not in result.stderr and KEY not in result.stderr


@pytest.mark.subprocess
def test_a_wrong_key_or_an_app_that_is_down_is_reported_and_the_run_succeeds(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, immich: ImmichEmulator) -> None:
    add_fixture(originals, PHOTO)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    config = apps_config(tmp_path, emulator.url, Immich={"Url": immich.url, "Key": "wrong-key"},
                         PhotoPrism={"Url": f"http://127.0.0.1:{closed_port}", "Token": TOKEN})

    result = run_captiond("run", "--config", config, "--originals", originals)

    assert result.exit_code == 0, result.stderr
    assert "captioned 1" in result.stdout
    assert "HTTP 401 Invalid API key" in result.stderr
    assert "PhotoPrism at http://127.0.0.1" in result.stderr and "did not answer" in result.stderr
    assert immich.rejected and not immich.calls
    assert "could not tell the photo apps about every change" in result.stderr
    assert TOKEN not in result.stderr and "wrong-key" not in result.stderr


def test_notifications_are_batched_per_folder_at_most_once_per_interval(photoprism: PhotoPrismEmulator,
                                                                         tmp_path: Path) -> None:
    now = [1000.0]
    daemon = DaemonConfig(photoprism=AppConfig(photoprism.url, TOKEN, interval=60.0))
    notifier = AppNotifier(daemon, tmp_path, clock=lambda: now[0])
    try:
        notifier.written(tmp_path / "a" / "1.jpg")
        notifier.written(tmp_path / "a" / "2.jpg")
        notifier.send_due()
        assert photoprism.index_paths() == []  # a burst is given a moment to finish
        now[0] += 2.0
        notifier.written(tmp_path / "b" / "3.jpg")
        notifier.send_due()
        assert photoprism.index_paths() == ["a"]
        now[0] += 2.0
        notifier.written(tmp_path / "a" / "4.jpg")
        notifier.send_due()
        assert photoprism.index_paths() == ["a", "b"]  # "a" again only after the interval
        now[0] += 57.0
        notifier.send_due()
        assert photoprism.index_paths() == ["a", "b"]
        now[0] += 1.0
        notifier.send_due()
        assert photoprism.index_paths() == ["a", "b", "a"]
        assert not notifier.has_pending()
    finally:
        notifier.stop(flush_seconds=0)


def test_a_failed_folder_waits_longer_each_time(photoprism: PhotoPrismEmulator, tmp_path: Path) -> None:
    now = [0.0]
    notifier = AppNotifier(DaemonConfig(photoprism=AppConfig(photoprism.url, TOKEN, interval=1.0)), tmp_path,
                           clock=lambda: now[0])
    photoprism.fail_next(429, 2)
    try:
        notifier.written(tmp_path / "a" / "1.jpg")
        now[0] += 1.0
        notifier.send_due()
        now[0] += 4.0
        notifier.send_due()
        assert len(photoprism.calls) == 1  # retried after 5 s, not before
        now[0] += 1.0
        notifier.send_due()
        assert len(photoprism.calls) == 2
        now[0] += 10.0
        notifier.send_due()
        assert len(photoprism.calls) == 3 and not notifier.has_pending()
        metrics = notifier.requests
        assert metrics.labels("photoprism", "failed")._value.get() == 2
        assert metrics.labels("photoprism", "ok")._value.get() == 1
    finally:
        notifier.stop(flush_seconds=0)


@pytest.mark.subprocess
def test_watch_tells_photoprism_and_counts_it_in_metrics(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, photoprism: PhotoPrismEmulator) -> None:
    from test_watch import Daemon, config_for, sidecar_caption, wait_for

    first = add_fixture(originals, PHOTO, f"a/{PHOTO}")
    config = config_for(tmp_path, emulator.url, Listen="127.0.0.1:0",
                        PhotoPrism={"Url": photoprism.url, "Token": TOKEN, "Interval": "1h"})
    daemon = Daemon(config, originals, tmp_path / "daemon.log")
    try:
        assert wait_for(lambda: photoprism.index_paths() == ["a"], timeout=30), daemon.log()
        address = re.search(r"serving /healthz and /metrics on (http://\S+)", daemon.log())
        assert address is not None, daemon.log()
        second = add_fixture(originals, "Nikon_COOLPIX_P1.jpg", "a/second.jpg")
        assert wait_for(lambda: bool(sidecar_caption(second)), timeout=30), daemon.log()
        assert wait_for(lambda: 'captiond_app_pending{app="photoprism"} 1.0' in httpx.get(
            f"{address.group(1)}/metrics", timeout=10).text), daemon.log()
        metrics = httpx.get(f"{address.group(1)}/metrics", timeout=10).text
        assert 'captiond_app_requests_total{app="photoprism",outcome="ok"} 1.0' in metrics
        assert 'captiond_app_pending{app="photoprism"} 1.0' in metrics
        assert photoprism.index_paths() == ["a"]  # the interval holds the second one back
        assert daemon.stop() == 0
    finally:
        if daemon.process.poll() is None:
            daemon.kill()
    assert photoprism.index_paths() == ["a", "a"]  # sent when stopping
    assert sidecar_caption(first)
    assert TOKEN not in daemon.log()


@pytest.mark.subprocess
def test_app_settings_are_checked_and_secrets_are_redacted(tmp_path: Path, emulator: OllamaEmulator) -> None:
    with pytest.raises(ConfigError) as problem:
        parse_config({"Daemon": {"PhotoPrism": {"Url": "photoprism:2342"}, "Immich": {"Url": "http://immich"}}},
                     {}, None)
    assert "Daemon.PhotoPrism.Url: expected an http:// or https:// address" in str(problem.value)
    assert "Daemon.PhotoPrism.Token: required" in str(problem.value)
    assert "Daemon.Immich.Key: required" in str(problem.value)
    config = parse_config({"Daemon": {"PhotoPrism": {"Url": "http://pp:2342/", "Token": "${PP_TOKEN}"}}},
                          {"PP_TOKEN": TOKEN}, None)
    assert config.daemon.photoprism == AppConfig("http://pp:2342", TOKEN)
    assert TOKEN not in repr(config)

    path = apps_config(tmp_path, emulator.url, PhotoPrism={"Url": "http://pp:2342", "Token": TOKEN},
                       Immich={"Url": "http://immich:2283", "Key": KEY})
    listing = run_captiond("ls", "--config", path)
    assert listing.exit_code == 0, listing.stderr
    assert "http://pp:2342 (token set)" in listing.stdout and "http://immich:2283 (token set)" in listing.stdout
    assert TOKEN not in listing.stdout + listing.stderr and KEY not in listing.stdout + listing.stderr
    as_json = run_captiond("ls", "--config", path, "--json")
    assert TOKEN not in as_json.stdout and KEY not in as_json.stdout


@pytest.mark.subprocess
def test_album_person_and_label_filters_are_resolved_through_photoprism(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator, photoprism: PhotoPrismEmulator) -> None:
    for name in ("2024/a.jpg", "2024/b.jpg", "2024/c.jpg", "Family/d.jpg", "Family/e.jpg"):
        add_fixture(originals, PHOTO, name)
    photoprism.search_results = {"album:Holiday": ["2024/a.jpg", "2024/b.jpg", "Family/d.jpg"],
                                 "person:Jane": ["2024/b.jpg", "Family/d.jpg", "Family/e.jpg"]}
    config = apps_config(tmp_path, emulator.url, PhotoPrism={"Url": photoprism.url, "Token": TOKEN})

    result = run_captiond("run", "--config", config, "--originals", originals, "album:Holiday", "person:Jane")

    assert result.exit_code == 0, result.stderr
    assert "captioned 2" in result.stdout  # terms ANDed, as in PhotoPrism's search
    assert sorted(path.name for path in originals.rglob("*.xmp")) == ["b.jpg.xmp", "d.jpg.xmp"]
    searches = [call for call in photoprism.calls if call.path == "/api/v1/photos"]
    assert [call.query["q"][0] for call in searches] == ["album:Holiday person:Jane"]  # one query
    assert all(call.headers["authorization"] == f"Bearer {TOKEN}" for call in searches)

    nothing = run_captiond("run", "--config", config, "--originals", originals, "label:volcano", "--dry-run")
    assert nothing.exit_code == 0, nothing.stderr
    assert "would caption" not in nothing.stderr and "captioned 0" in nothing.stdout  # never the whole library


@pytest.mark.subprocess
def test_photoprism_filters_need_photoprism(tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    add_fixture(originals, PHOTO)
    result = run_captiond("run", "--config", write_config(tmp_path, emulator.url), "--originals", originals,
                          "album:Holiday")
    assert result.exit_code == 2
    assert "album:, person: and label: filters are answered by PhotoPrism" in result.stderr
    assert not list(originals.rglob("*.xmp"))


@pytest.mark.subprocess
def test_a_key_that_may_not_start_sidecar_discovery_still_refreshes_the_assets(
        tmp_path: Path, originals: Path, emulator: OllamaEmulator) -> None:
    photo = add_fixture(originals, PHOTO)
    with ImmichEmulator(key=KEY, admin=False) as immich:
        asset = immich.add_asset(str(photo))
        config = apps_config(tmp_path, emulator.url, Immich={"Url": immich.url, "Key": KEY})

        result = run_captiond("run", "--config", config, "--originals", originals)

        assert result.exit_code == 0, result.stderr
        assert immich.jobs() == [{"assetIds": [asset], "name": "refresh-metadata"}]
        assert len(immich.sidecar_commands()) == 1  # refused (403), and not asked again
        assert "needs an admin's API key" in result.stderr
        assert "could not tell the photo apps" not in result.stderr
