"""CLI contract: bad config input exits 2 and names the key; help works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peerd", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_unknown_key_exits_2_naming_it() -> None:
    res = run_cli("join", "--set", "mixing.codex=int8")
    assert res.returncode == 2
    assert "mixing.codex" in res.stderr and "unknown key" in res.stderr


def test_bad_value_exits_2_naming_it() -> None:
    res = run_cli("swarm", "--peers", "2", "--set", "round.round_s=-3")
    assert res.returncode == 2 and "round.round_s" in res.stderr


def test_malformed_yaml_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("mixing: {codec: int8\n")
    res = run_cli("join", "--config", str(cfg))
    assert res.returncode == 2 and "not valid YAML" in res.stderr
    cfg.write_text("mixing:\n  modee: diloco\n")
    res = run_cli("join", "--config", str(cfg))
    assert res.returncode == 2 and "mixing.modee" in res.stderr


def test_help_lists_commands() -> None:
    res = run_cli("--help")
    assert res.returncode == 0 and "join" in res.stdout and "swarm" in res.stdout


def _procs_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue  # exited meanwhile
    return pids


@pytest.mark.timeout(240)
def test_swarm_sigterm_stops_every_peer(tmp_path: Path) -> None:
    """The peers run in their own sessions: SIGTERM to the launcher must still take them down."""
    work = tmp_path / "swarm"
    launcher = subprocess.Popen([sys.executable, "-m", "peerd", "swarm", "--peers", "2", "--max-steps", "100000",
                                 "--workdir", str(work), "--set", "task_options.d_model=32",
                                 "--set", "task_options.n_layers=1", "--set", "data.max_corpus_bytes=200000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_for(lambda: (work / "peer-1.ready.json").exists() or launcher.poll() is not None, 150,
                 "both peers of the swarm up")
        assert launcher.poll() is None, f"launcher exited early with {launcher.returncode}"
        assert len(_procs_mentioning(str(work))) >= 2
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(90)
        assert _procs_mentioning(str(work)) == []  # the launcher waits for its peers before it exits
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _procs_mentioning(str(work)):
            os.kill(pid, signal.SIGKILL)
