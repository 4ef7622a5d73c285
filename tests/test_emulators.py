"""The emulator helper leaves no process behind and fails with a useful message."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from session_core.testing import Emulator, EmulatorError, firestore_datastore_mode, port_open


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stopping_an_emulator_ends_its_java_process_too(tmp_path: Path) -> None:
    emulator = firestore_datastore_mode(tmp_path).start()
    assert emulator.process is not None
    pgid = emulator.process.pid
    members = [pid for pid in os.listdir("/proc") if pid.isdigit() and _pgid(int(pid)) == pgid]
    assert any("java" in _cmdline(int(pid)) for pid in members)
    emulator.stop()
    assert not group_alive(pgid)
    assert not port_open(emulator.port)()


def test_a_taken_port_is_reported(tmp_path: Path, datastore_emulator: Emulator) -> None:
    with pytest.raises(EmulatorError, match=f"port {datastore_emulator.port} is already taken"):
        firestore_datastore_mode(tmp_path, port=datastore_emulator.port).start()


def test_an_emulator_that_dies_names_its_log(tmp_path: Path) -> None:
    broken = Emulator("broken", ["sh", "-c", "echo no java here; exit 3"], 1, lambda: False, tmp_path / "b.log")
    with pytest.raises(EmulatorError, match=r"exited with 3 .*b\.log:\nno java here"):
        broken.start()


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return -1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""
