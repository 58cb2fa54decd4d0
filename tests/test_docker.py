"""The Dockerfile, compose.yaml and the container's entrypoint, checked by reading them and running what runs here.

tests/deploy/README.md says how the image itself was built and run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_service_comes_back_after_a_reboot(name: str) -> None:
    """After a dockerd restart (or a reboot) only services with a restart policy start again."""
    service = COMPOSE["services"][name]
    expected = "on-failure" if name == "ollama-pull" else "unless-stopped"  # a one-shot job: only until it succeeds
    assert service.get("restart") == expected


def test_captiond_never_waits_for_the_model_pull() -> None:
    """An unreachable registry fails the pull; captiond starts anyway and waits for the model itself."""
    depends = COMPOSE["services"]["captiond"].get("depends_on", [])
    assert "ollama-pull" not in depends
    pull = " ".join(COMPOSE["services"]["ollama-pull"]["entrypoint"])
    assert "ollama show" in pull and "|| ollama pull" in pull  # only a missing model is pulled


def test_photoprism_is_set_up_as_its_own_compose_example() -> None:
    photoprism = COMPOSE["services"]["photoprism"]
    assert photoprism["working_dir"] == "/photoprism"
    environment = photoprism["environment"]
    assert environment["OLLAMA_BASE_URL"] == "http://ollama:11434"
    assert environment["PHOTOPRISM_UID"] == COMPOSE["services"]["captiond"]["environment"]["PUID"]
    assert environment["PHOTOPRISM_GID"] == COMPOSE["services"]["captiond"]["environment"]["PGID"]


def test_the_dependency_layer_comes_before_the_files_that_change_often() -> None:
    lines = [line for line in DOCKERFILE.splitlines() if line.startswith(("COPY", "RUN"))]
    dependencies = next(index for index, line in enumerate(lines) if "pip install" in line)
    assert all("README" not in line and "daemon" not in line for line in lines[:dependencies])
    assert any("README.md" in line for line in lines[dependencies:])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
@pytest.mark.parametrize("foreign", ["folder", "database"])
def test_a_state_volume_the_user_cannot_write_gets_a_message_and_a_wait_not_a_crash(foreign: str) -> None:
    """`docker run --user 1500:1500` with a state volume (or its database) owned by someone else."""
    home = Path(tempfile.mkdtemp(prefix="captiond-entrypoint-"))  # not under pytest's root-only folder
    home.chmod(0o755)
    state = home / "state"
    state.mkdir()
    state.chmod(0o755 if foreign == "folder" else 0o1777)  # 1777: the image's folder, after a root-started run
    database = state / "captiond.db"
    if foreign == "database":
        database.write_bytes(b"")
        database.chmod(0o644)
    started = home / "started"
    home.chmod(0o777)
    environment = {"PATH": os.environ["PATH"], "STATE_DIRECTORY": str(state), "CAPTIOND_CONFIG": str(ENTRYPOINT),
                   "CAPTIOND_ORIGINALS": str(home)}
    process = subprocess.Popen(["setpriv", "--reuid", "1500", "--regid", "1500", "--clear-groups", "sh",
                                str(ENTRYPOINT), "sh", "-c", f"echo started > {started}"],
                               env=environment, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        message = process.stderr.readline()
        assert "is not writable by 1500:1500" in message and "PUID/PGID" in message
        assert process.poll() is None  # waiting, not exiting into a restart loop
        os.chown(database if foreign == "database" else state, 1500, 1500)
        assert process.wait(timeout=30) == 0
        assert started.read_text().strip() == "started"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        shutil.rmtree(home)


def test_an_image_state_folder_is_usable_by_any_user() -> None:
    """A fresh named volume takes the image folder's mode: sticky and world-writable, like /tmp."""
    assert "chmod 1777 /state" in DOCKERFILE


def test_entrypoint_is_valid_sh() -> None:
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=False).returncode == 0

