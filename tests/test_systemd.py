"""The sample systemd unit: `systemd-analyze verify` accepts it and its exposure rating is 3.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captiond.sandbox import UNIT_ALLOWED

UNIT = Path(__file__).parent.parent / "systemd" / "captiond.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")


def installed_unit(tmp_path: Path) -> Path:
    """Return a copy of the unit whose ExecStart names an executable that exists here."""
    executable = Path(sys.executable).with_name("captiond")
    if not executable.exists():
        pytest.skip("the captiond console script is not installed in this environment")
    text = UNIT.read_text().replace("/opt/captiond/.venv/bin/captiond", str(executable))
    copy = tmp_path / "captiond.service"
    copy.write_text(text)
    return copy


@pytest.mark.subprocess
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(installed_unit(tmp_path))], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.subprocess
def test_unit_exposure_is_at_most_3(tmp_path: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(installed_unit(tmp_path))],
                            capture_output=True, text=True, check=False)
    match = re.search(r"Overall exposure level for captiond\.service: (\d+\.\d+)", result.stdout + result.stderr)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 3.0


def test_unit_has_the_settings_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "KillMode=mixed", "TimeoutStopSec=",
                    "User=", "Group=", "StateDirectory=captiond", "ProtectSystem=strict", "ReadWritePaths=",
                    "NoNewPrivileges=true", "PrivateTmp=true", "ProtectHome=true", "PrivateDevices=true",
                    "RestrictAddressFamilies=", "SystemCallFilter=@system-service"):
        assert setting in text, setting
    assert "captiond watch" in text


def unit_values(setting: str) -> list[str]:
    """Return every space-separated value the unit gives a setting, over all its lines."""
    return [value for line in UNIT.read_text().splitlines() if line.startswith(f"{setting}=")
            for value in line.partition("=")[2].split()]


def test_read_write_paths_that_may_not_exist_do_not_stop_the_unit() -> None:
    """A drop-in adds the real library; the sample path must not make the start fail with 226/NAMESPACE."""
    paths = unit_values("ReadWritePaths")
    assert paths and all(path.startswith("-") for path in paths)


def test_the_daemon_knows_the_units_allowed_addresses() -> None:
    assert tuple(unit_values("IPAddressAllow")) == UNIT_ALLOWED
    assert unit_values("IPAddressDeny") == ["any"]
