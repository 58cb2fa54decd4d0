"""The pipeline's and the daemon's policies, in-process and in seconds: real exiftool, the emulator on loopback.

`Captioner.process` decides and writes one photo; `WatchService` runs the daemon's loop in a thread. Nothing of
captiond is replaced: the model server is the emulator (a real HTTP server on 127.0.0.1) and exiftool is the real
one. The subprocess tests (test_run.py, test_watch.py) keep what only a process shows: exit codes, signals,
the console script and its output.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from captiond.config import Config, load_config
from captiond.errors import ModelSetupError
from captiond.exiftool_process import Exiftool
from captiond.modelruns import clients as _clients
from captiond.modelruns import model_runs
from captiond.pipeline import Captioner, ModelRun, Outcome, RunOptions, Status
from captiond.service import WatchService
from captiond.state import FileState, RowState, StateStore
from conftest import add_fixture, file_hash, read_tags, stored_row, write_config
from emulator import BUSY, RUNNER_CRASHED, OllamaEmulator
from emulator import Status as Answer

DEADLINE = 30.0  # seconds to wait for a condition; never an assertion on elapsed time
PERSON = "33-type_error.jpg"  # carries a person's caption (meta, 16)
CAMERA = "Olympus_boilerplate.jpg"  # carries camera boilerplate only: captionable
OTHER_CAMERA = "Canon_PowerShot_S40.jpg"


def caption_of(photo: Path) -> str:
    sidecar = Path(f"{photo}.xmp")
    return read_tags(sidecar, "XMP-dc:Description").get("XMP-dc:Description", "") if sidecar.exists() else ""


def wait_for(condition: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


# ---------------------------------------------------------------- Captioner.process


Process = Callable[..., Outcome]


@pytest.fixture(scope="module")
def exiftool() -> Iterator[Exiftool]:
    """One exiftool for the module, as the daemon keeps one for all files (starting one costs CPU)."""
    with Exiftool() as running:
        yield running


@pytest.fixture
def process(tmp_path: Path, originals: Path, emulator: OllamaEmulator, exiftool: Exiftool) -> Iterator[Process]:
    """Return `process(path, **RunOptions)`: one file through a Captioner built as `captiond run` builds it."""
    config = load_config(write_config(tmp_path, emulator.url)).with_daemon(originals=originals)
    opened: list[dict[str, ModelRun]] = []

    def run(path: Path, **options: object) -> Outcome:
        runs = model_runs(config, "caption")
        opened.append(runs)
        return Captioner(config, runs, exiftool, RunOptions(**options)).process(path)  # type: ignore[arg-type]

    yield run
    for runs in opened:
        for client in _clients(runs):
            client.close()


def test_a_photo_without_a_caption_is_captioned_into_its_sidecar(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    before = file_hash(photo)

    outcome = process(photo)

    assert outcome.status == Status.CAPTIONED and outcome.written, outcome.reason
    assert caption_of(photo) == outcome.caption and outcome.caption.startswith("A photo with a calm scene")
    assert file_hash(photo) == before and not outcome.wrote_original and outcome.created_sidecar
    assert len(emulator.generation_requests()) == 1


def test_a_persons_caption_is_skipped_without_asking_the_model(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    person = add_fixture(originals, PERSON)
    before = file_hash(person)

    outcome = process(person)

    assert outcome.status == Status.SKIPPED and "has a caption from meta" in outcome.reason
    assert emulator.generation_requests() == []
    assert file_hash(person) == before and not Path(f"{person}.xmp").exists()


def test_our_own_caption_is_kept_unless_forced_with_a_source_that_ranks_as_high(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    assert process(photo).status == Status.CAPTIONED
    first = caption_of(photo)
    emulator.reply = lambda body: "A second opinion about the picture."

    again = process(photo)
    forced_auto = process(photo, force=True)  # PhotoPrism's --force with auto (1) replaces nothing
    assert (again.status, forced_auto.status) == (Status.SKIPPED, Status.SKIPPED)
    assert caption_of(photo) == first and len(emulator.generation_requests()) == 1

    forced = process(photo, force=True, source="ollama")  # ollama (16) >= ollama (16)

    assert forced.status == Status.CAPTIONED, forced.reason
    assert caption_of(photo) == "A second opinion about the picture."


def test_a_persons_caption_is_replaced_only_by_a_source_that_outranks_it(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    person = add_fixture(originals, OTHER_CAMERA)
    Path(f"{person}.xmp").write_text(
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
        'xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
        "My daughter at the lake</rdf:li></rdf:Alt></dc:description></rdf:Description></rdf:RDF></x:xmpmeta>\n"
        '<?xpacket end="w"?>')  # a sidecar caption: xmp (32)

    ollama = process(person, force=True, source="ollama")
    assert ollama.status == Status.SKIPPED and "higher than --source ollama (16)" in ollama.reason
    assert caption_of(person) == "My daughter at the lake" and emulator.generation_requests() == []

    manual = process(person, force=True, source="manual")  # manual (64) >= xmp (32)

    assert manual.status == Status.CAPTIONED, manual.reason
    assert caption_of(person) == manual.caption != "My daughter at the lake"


def test_a_dry_run_asks_nothing_and_writes_nothing(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    before = file_hash(photo)

    outcome = process(photo, dry_run=True)

    assert outcome.status == Status.WOULD_CAPTION
    assert emulator.generation_requests() == [] and not Path(f"{photo}.xmp").exists() and file_hash(photo) == before


def test_a_busy_server_is_a_transient_failure_and_nothing_is_written(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    emulator.default_behaviour = BUSY

    outcome = process(photo)

    assert outcome.status == Status.FAILED and outcome.transient and not outcome.written, outcome.reason
    assert "HTTP 503" in outcome.reason and not Path(f"{photo}.xmp").exists()
    assert len(emulator.generation_requests()) == 3  # Retry.Attempts


def test_a_refused_image_is_a_permanent_failure_of_that_photo(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    emulator.default_behaviour = Answer(400, "illegal base64 data at input byte 4")

    outcome = process(photo)

    assert outcome.status == Status.FAILED and not outcome.transient, outcome.reason
    assert not Path(f"{photo}.xmp").exists()


def test_a_model_the_server_does_not_have_stops_the_run_instead_of_failing_the_photo(
        originals: Path, emulator: OllamaEmulator, process: Process) -> None:
    photo = add_fixture(originals, CAMERA)
    emulator.models.clear()

    with pytest.raises(ModelSetupError, match="not found"):
        process(photo)
    assert not Path(f"{photo}.xmp").exists()


# ---------------------------------------------------------------- the daemon's loop


class Daemon:
    """A WatchService running in a thread on its own state database."""

    def __init__(self, config: Config, exiftool: Exiftool) -> None:
        runs = model_runs(config, "caption", watch=True)
        self.state = StateStore(config.daemon.state_dir)
        self.service = WatchService(config, Captioner(config, runs, exiftool, RunOptions()), _clients(runs),
                                    self.state)
        self.thread = threading.Thread(target=self.service.run, name="test-daemon", daemon=True)
        self.thread.start()

    def row(self, photo: Path) -> FileState | None:
        return stored_row(self.state, photo)

    def stop(self) -> None:
        self.service.request_stop()
        self.thread.join(timeout=DEADLINE)
        for client in self.service.clients:
            client.close()
        self.state.close()


@pytest.fixture
def daemon(tmp_path: Path, originals: Path, emulator: OllamaEmulator,
           exiftool: Exiftool) -> Iterator[Callable[..., Daemon]]:
    """Return `start(**Daemon settings)`: the daemon on `originals`, with a short Settle and fast retries."""
    started: list[Daemon] = []

    def start(**settings: object) -> Daemon:
        path = write_config(tmp_path, emulator.url, daemon={"Settle": 0.1, **settings})
        started.append(Daemon(load_config(path).with_daemon(originals=originals), exiftool))
        return started[-1]

    yield start
    for running in started:
        running.stop()
    assert all(not running.thread.is_alive() for running in started)


def test_the_daemon_captions_new_photos_and_records_them_done(
        originals: Path, emulator: OllamaEmulator, daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, CAMERA)
    person = add_fixture(originals, PERSON)
    running = daemon()

    assert wait_for(lambda: caption_of(photo) != "")
    assert wait_for(lambda: getattr(running.row(person), "state", None) == RowState.DONE)
    assert wait_for(lambda: getattr(running.row(photo), "state", None) == RowState.DONE)
    assert not Path(f"{person}.xmp").exists() and len(emulator.generation_requests()) == 1
    late = add_fixture(originals, OTHER_CAMERA)  # arrives while the daemon watches
    assert wait_for(lambda: caption_of(late) != "")


def test_a_transient_failure_waits_for_a_retry_and_is_never_recorded_done(
        originals: Path, emulator: OllamaEmulator, daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, CAMERA)
    emulator.default_behaviour = BUSY
    running = daemon(Retry={"Attempts": 1, "Delay": 0.05, "MaxDelay": "10m", "Total": 20})

    assert wait_for(lambda: getattr(running.row(photo), "attempts", 0) >= 1)
    row = running.row(photo)
    assert row is not None and row.state == RowState.PENDING and "HTTP 503" in row.last_error
    assert row.next_try > time.time() + 60  # waits its backoff: not tried again at once
    assert not Path(f"{photo}.xmp").exists()


def test_a_photo_that_crashes_the_model_runner_twice_is_quarantined(
        originals: Path, emulator: OllamaEmulator, daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, CAMERA)
    emulator.default_behaviour = RUNNER_CRASHED
    running = daemon(Retry={"Attempts": 1, "Delay": 0.01, "MaxDelay": 0.01, "Total": 20})

    assert wait_for(lambda: getattr(running.row(photo), "state", None) == RowState.QUARANTINED)
    row = running.row(photo)
    assert row is not None and row.crashes == 2 and "crashed the model server twice" in row.last_error
    asked = len(emulator.generation_requests())
    time.sleep(0.5)  # a quarantined photo is not asked about again
    assert len(emulator.generation_requests()) == asked == 2


def test_the_daemon_pauses_while_the_model_is_missing_and_charges_no_attempt(
        originals: Path, emulator: OllamaEmulator, daemon: Callable[..., Daemon]) -> None:
    photo = add_fixture(originals, CAMERA)
    models = dict(emulator.models)
    emulator.models.clear()
    running = daemon()

    assert wait_for(lambda: "not found" in running.service.healthy()[1])
    assert not running.service.healthy()[0]
    row = running.row(photo)
    assert row is None or (row.state != RowState.DONE and row.attempts == 0)

    emulator.models.update(models)  # `ollama pull`: the next probe finds it

    assert wait_for(lambda: caption_of(photo) != "")
    assert wait_for(lambda: running.service.healthy()[0])
    row = running.row(photo)
    assert row is not None and row.attempts == 0
