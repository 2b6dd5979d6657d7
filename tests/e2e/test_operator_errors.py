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


@pytest.mark.timeout(300)
def test_missing_secret_exits_2_and_the_member_logs_the_refusal(swarm: Swarm) -> None:
    first = swarm.start()
    first.wait_ready()
    wait_for(lambda: first.status() is not None and first.status()["ready"], 60, "first peer ready")
    fast = [a for s in FAST_SETTINGS for a in ("--set", s)]
    # No secret at all (join() drops PEERD_SECURITY__SECRET): it used to say "joined" and abort every round.
    res = join("--bootstrap", list(first.info["dht_maddrs"])[0], *fast, timeout=240)  # type: ignore[index]
    out = res.stdout + res.stderr
    assert res.returncode == 2, out[-3000:]
    assert "requires a secret and this peer has none" in out and "PEERD_SECURITY__SECRET" in out
    assert swarm.secret not in out and "joined" not in out
    # The member's join hint says how to pass the secret, and never prints it.
    hint = first.log_file.read_text()
    assert "export this swarm's secret as PEERD_SECURITY__SECRET" in hint and swarm.secret not in hint
    # A caller without a credential reaches the member's gRPC port: refused, and logged with the reason.
    import grpc

    with grpc.insecure_channel(str(first.info["grpc"])) as channel:
        fetch = channel.unary_stream("/peerd.v1.Peer/FetchState", request_serializer=None, response_deserializer=None)
        for _ in range(20):
            with pytest.raises(grpc.RpcError) as err:
                list(fetch(b"", timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    wait_for(lambda: "refused_caller" in first.log_file.read_text(), 30, "the refusal in the member's log")
    lines = [ln for ln in first.log_file.read_text().splitlines() if "refused_caller" in ln]
    assert len(lines) == 1 and "missing" in lines[0], lines  # 20 refusals, one line (rate-limited)
    assert first.proc.poll() is None


@pytest.mark.timeout(300)
def test_dht_port_held_by_another_daemon_exits_3_naming_it(swarm: Swarm) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    first = swarm.start([f"dht.port={port}"], bootstrap=[])
    first.wait_ready()
    assert f"/tcp/{port}/" in list(first.info["dht_maddrs"])[0]  # type: ignore[index]
    # p2pd listens with SO_REUSEPORT: a second p2pd on the same port used to start and share it.
    res = join("--set", f"dht.port={port}", env={"PEERD_SECURITY__SECRET": swarm.secret}, timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 3, out[-3000:]
    assert f"dht.port {port}" in out and "not free" in out
    assert first.proc.poll() is None


@pytest.mark.parametrize("key", ["metrics.port", "admin.port", "dht.port"])
def test_every_port_in_use_exits_3_naming_its_key(key: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = join("--set", f"{key}={port}", "--set", "metrics.host=127.0.0.1", timeout=120)
    out = res.stdout + res.stderr
    assert res.returncode == 3, out[-3000:]
    assert key in out and str(port) in out


def test_status_of_an_unreachable_admin_exits_1_and_says_so() -> None:
    for args in ([], ["--json"]):
        res = subprocess.run([sys.executable, "-m", "peerd", "status", "--admin", "127.0.0.1:1", *args],
                             capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "no peerd daemon answers at 127.0.0.1:1" in res.stderr
