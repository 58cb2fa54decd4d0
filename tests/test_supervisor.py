"""The daemon's one owner of the model servers' status (supervisor.ModelSupervisor), in-process, on the emulator."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from captiond.config import load_config
from captiond.errors import ModelSetupError, ServerUnreachable
from captiond.health import Metrics
from captiond.model import ModelClient
from captiond.supervisor import ModelSupervisor
from conftest import write_config
from emulator import OllamaEmulator


@pytest.fixture
def supervisor(tmp_path: Path, emulator: OllamaEmulator) -> Iterator[ModelSupervisor]:
    config = load_config(write_config(tmp_path, emulator.url))
    model = config.model("caption")
    assert model is not None
    client = ModelClient(model, config.daemon)
    owner = ModelSupervisor(config, [client], Metrics(), threading.Event(), threading.Event())
    yield owner
    owner.shutdown()
    client.close()


def gauge(owner: ModelSupervisor) -> float | None:
    return owner.metrics.registry.get_sample_value("captiond_model_up")


def test_an_unavailable_server_pauses_once_and_an_answer_resumes(supervisor: ModelSupervisor,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="captiond.supervisor")
    supervisor.unavailable(ServerUnreachable("cannot reach the model server at x: refused"))
    supervisor.unavailable(ModelSetupError("model 'x' not found"))
    assert supervisor.error == "model 'x' not found"
    assert gauge(supervisor) == 0
    assert sum("pausing until it answers again" in record.message for record in caplog.records) == 1
    supervisor.answered()
    assert supervisor.error == ""


def test_a_probe_finds_the_server_back(supervisor: ModelSupervisor) -> None:
    supervisor.unavailable(ModelSetupError("the model server went away"))
    assert supervisor.probe()  # the emulator answers (after the first probe delay)
    assert supervisor.error == ""
    assert gauge(supervisor) == 1


def test_a_stop_ends_a_probe_without_resuming(supervisor: ModelSupervisor) -> None:
    supervisor.unavailable(ModelSetupError("the model server went away"))
    supervisor.stop.set()
    assert not supervisor.probe()
    assert supervisor.error == "the model server went away"
