"""CLI contract: bad config input exits 2 and names the key; help works."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Swarm, wait_for


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


@pytest.mark.parametrize("command", ["join", "swarm", "status", "report", "simulate"])
def test_help_metavars_name_values_and_flags_take_none(command: str) -> None:
    res = subprocess.run([sys.executable, "-m", "peerd", command, "--help"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "80"})
    assert res.returncode == 0, res.stderr
    for bad in ("<bool>", "<str>", "<list[str]>", "<int range>"):
        assert bad not in res.stdout, (bad, res.stdout)
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    if command == "join":
        assert "--exit-when-done  " in res.stdout and "--bootstrap MULTIADDR" in res.stdout


def test_join_checks_the_config_before_importing_torch_or_hivemind() -> None:
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "peerd", "join", "--set", "mixing.codex=int8",
                          "--bootstrap", "/ip4/127.0.0.1/tcp/1/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"],
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert res.returncode == 2 and "mixing.codex" in res.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
    assert "peerd.core.config" in imported  # -X importtime did report
    assert not imported & {"torch", "hivemind", "grpc"}, sorted(imported & {"torch", "hivemind", "grpc"})


@pytest.mark.timeout(240)
def test_graceful_leave_says_what_it_waits_for_and_prints_no_third_party_noise(swarm: Swarm) -> None:
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    wait_for(lambda: (a.status() or {}).get("rounds_committed", 0) >= 1, 120, "a committed round")
    for p in (a, b):
        p.proc.send_signal(signal.SIGTERM)
    for p in (a, b):
        assert p.proc.wait(60) == 0
        log = p.log_file.read_text()
        lines = log.strip().splitlines()
        assert '"leaving"' in log and "waits_for" in log
        assert '"stopped"' in lines[-1], lines[-5:]  # nothing after "stopped"
        for noise in ("Traceback", "never retrieved", "use of closed network connection", "ConnectionResetError"):
            assert noise not in log, noise
