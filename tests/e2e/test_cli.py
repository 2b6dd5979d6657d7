"""CLI contract: bad config input exits 2 and names the key; help works."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
