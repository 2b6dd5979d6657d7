"""``peerd status`` tells a peer that trains alone from a healthy one.

Two peers commit; then one is frozen (SIGSTOP) while its DHT record stays live (a long
``dht.ttl_s``), so the other's rounds abort or are skipped one after another. That peer must
turn ``degraded`` with the reason, ``--probe`` must fail, and after SIGCONT it must recover.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import Swarm, wait_for

TTL = ["dht.ttl_s=120"]  # the frozen peer stays in the other's view for the whole test


@pytest.mark.timeout(420)
def test_peer_without_commits_while_others_live_is_degraded(swarm: Swarm) -> None:
    a = swarm.start(TTL)
    a.wait_ready()
    b = swarm.start(TTL)
    b.wait_ready()

    def committed(n: int) -> bool:
        s = a.status()
        return bool(s and s["rounds_committed"] >= n and s["health"] == "healthy")

    wait_for(lambda: committed(1), 120, "a committed round, healthy")
    status = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "peerd", "status", "--admin", str(a.info["admin"]), *args],
        capture_output=True, text=True, timeout=60, env=swarm.env)
    assert status("--probe").returncode == 0
    os.kill(b.proc.pid, signal.SIGSTOP)
    try:
        def degraded() -> dict | None:
            assert a.proc.poll() is None, a.log_file.read_text()[-3000:]
            s = a.status()
            return s if s and s["health"] == "degraded" else None

        s = wait_for(degraded, 120, "the lone-training peer to be degraded")
        assert not s["healthy"] and s["swarm_size"] == 2 and s["rounds_without_commit"] >= 5
        assert "no commit in the last" in s["health_reasons"][0] and "1 other peer" in s["health_reasons"][0]
        res = status("--json")
        assert json.loads(res.stdout)[0]["health"] == "degraded"
        table = status()
        assert table.returncode == 0 and "degraded" in table.stdout and "no commit in the last" in table.stdout
        assert status("--probe").returncode == 1
    finally:
        os.kill(b.proc.pid, signal.SIGCONT)
    before = a.status()["rounds_committed"]  # type: ignore[index]
    wait_for(lambda: committed(before + 1), 180, "a commit again after SIGCONT, healthy")
    assert status("--probe").returncode == 0
