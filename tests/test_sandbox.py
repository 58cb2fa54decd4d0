"""Hints for what the systemd unit's sandbox does silently: blocked addresses, and logging under journald."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from captiond.sandbox import blocked_address_hint, outside_unit_allowance
from conftest import SOURCE_ROOT

UNDER_SYSTEMD = {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "[::1]", "10.1.2.3", "172.16.0.9", "172.31.255.254",
                                  "192.168.1.20", "100.64.0.1", "100.127.255.254", "[fd12:3456::1]", "[fc00::5]",
                                  "169.254.10.20", "localhost"])
def test_addresses_the_unit_allows_get_no_hint(host: str) -> None:
    assert outside_unit_allowance([f"http://{host}:11434/api/generate"]) == []
    assert blocked_address_hint([f"http://{host}:11434/api/generate"], UNDER_SYSTEMD) == ""


@pytest.mark.parametrize("host, address", [("203.0.113.7", "203.0.113.7"), ("172.32.0.1", "172.32.0.1"),
                                           ("100.128.0.1", "100.128.0.1"), ("[2001:db8::7]", "2001:db8::7"),
                                           ("8.8.8.8", "8.8.8.8"), ("192.169.0.1", "192.169.0.1")])
def test_an_address_the_unit_blocks_gets_the_drop_in_line_that_allows_it(host: str, address: str) -> None:
    uri = f"http://user:secret@{host}:11434/api/generate"
    hint = blocked_address_hint([uri], UNDER_SYSTEMD)
    assert f"IPAddressAllow={address}`" in hint and "systemctl edit captiond" in hint
    assert "secret" not in hint
    assert blocked_address_hint([uri], {}) == ""  # not under systemd: no unit, no hint


@pytest.mark.subprocess
def test_under_journald_log_lines_carry_a_priority_and_no_second_timestamp(tmp_path: Path) -> None:
    """systemd sets JOURNAL_STREAM to the device:inode of the stderr it connects to the journal."""
    stderr_path = tmp_path / "stderr"
    for journal in (True, False):
        with stderr_path.open("wb") as stderr:
            status = os.fstat(stderr.fileno())
            environment = {**os.environ, "PYTHONPATH": str(SOURCE_ROOT), "CAPTIOND_CONFIG": "",
                           "XDG_CONFIG_HOME": str(tmp_path), "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"
                           if journal else "1:2"}
            subprocess.run([sys.executable, "-m", "captiond", "ls"], stderr=stderr, stdout=subprocess.DEVNULL,
                           cwd=tmp_path, env=environment, check=True, timeout=60)
        line = stderr_path.read_text().splitlines()[0]
        if journal:
            assert line.startswith("<4>WARNING no vision.yml found"), line
        else:
            assert line[:4].isdigit() and " WARNING no vision.yml found" in line, line
