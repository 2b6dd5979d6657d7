"""Operator mistakes end ``peerd join`` with one line naming the fix and a documented exit code."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST as FAST_SETTINGS
from tests.conftest import Swarm, wait_for

FAST = ["--set", "transport.host=127.0.0.1", "--set", "dht.host=127.0.0.1"]


def join(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PEERD_SECURITY__SECRET"}
    return subprocess.run([sys.executable, "-m", "peerd", "join", *FAST, *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**base, **(env or {})})


@pytest.mark.parametrize("addr", ["1.2.3.4:7001", "/ip4/1.2.3.4/tcp/7001", "/ip4/999.1.1.1/tcp/1/p2p/Qm"])
def test_bad_bootstrap_address_exits_2_with_the_expected_form(addr: str) -> None:
    res = join("--bootstrap", addr, timeout=60)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "--bootstrap" in res.stderr and "/p2p/PEER_ID" in res.stderr


def test_missing_secret_file_exits_2_with_the_fix(tmp_path: Path) -> None:
    res = join("--set", f"security.secret_file={tmp_path / 'nope'}")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    out = res.stdout + res.stderr
    assert "security.secret_file" in out and "cannot read" in out and "openssl rand" in out


@pytest.mark.timeout(240)
def test_port_in_use_exits_3_and_the_secret_is_never_printed() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # Open swarm: a loud warning before anything else.
        res = join("--set", f"transport.port={port}")
        assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
        out = res.stdout + res.stderr
        assert "swarm is open" in out and "PEERD_SECURITY__SECRET" in out
        assert "transport.port" in out
        secret = "do-not-print-" + os.urandom(8).hex()
        res = join("--set", f"transport.port={port}", env={"PEERD_SECURITY__SECRET": secret})
        assert res.returncode == 3
        out = res.stdout + res.stderr
        assert secret not in out and "swarm is open" not in out


@pytest.mark.timeout(600)
def test_run_id_or_secret_mismatch_exits_2_with_the_fix(swarm: Swarm) -> None:
    first = swarm.start()
    first.wait_ready()
    wait_for(lambda: first.status() is not None and first.status()["ready"], 60, "first peer ready")
    fast = [a for s in FAST_SETTINGS for a in ("--set", s)]
    boot = ["--bootstrap", list(first.info["dht_maddrs"])[0]]  # type: ignore[index]
    res = join(*boot, *fast, "--set", "run_id=another-run", env={"PEERD_SECURITY__SECRET": swarm.secret}, timeout=240)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert "run_id mismatch" in res.stdout + res.stderr
    res = join(*boot, *fast, env={"PEERD_SECURITY__SECRET": "not-the-swarm-secret-at-all"}, timeout=240)
    assert res.returncode == 2, res.stdout[-3000:] + res.stderr[-3000:]
    assert "secret differs" in res.stdout + res.stderr
    assert first.proc.poll() is None  # the swarm is unaffected
