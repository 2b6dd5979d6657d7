"""A peer behind a NAT takes part in rounds: 3 reachable daemons + 1 behind iptables MASQUERADE.

Topology (network namespaces of :class:`bench.wan.WanEmulator`, ``lan`` profile): hosts 0-2 run
reachable peers on 198.18.0.1-3; host 3 (198.18.0.4) is a home router whose LAN namespace holds
the fourth peer on 192.0.2.2. The router masquerades the LAN's outbound connections and drops
every inbound one (only replies of connections the LAN opened pass), like a home NAT box.

The NATed peer must find out by itself that it cannot be dialled (``transport.mode`` is auto
everywhere), say ``client`` in ``peerd status`` and the ready file, and have its contributions in
the reduce of at least 90% of the rounds the swarm commits while it is ready; all four end on one
revision and hash. Runs only as root with iptables installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.wan import WanEmulator, available
from bench.wan.netns import ROOT, _ip
from tests.conftest import FAST, wait_for

pytestmark = pytest.mark.skipif(available() is not None or shutil.which("iptables") is None,
                                reason=f"needs the WAN emulator ({available()}) and iptables")
LAN_ROUTER, LAN_PEER = "192.0.2.1", "192.0.2.2"
ROUND_S = 3


def _nat(wan: WanEmulator) -> int:
    """Add the LAN namespace behind host 3 with a MASQUERADE NAT that drops inbound; returns its index."""
    lan = f"{wan.tag}-{wan.n}"
    _ip("netns", "add", lan)
    wan.ns.append(lan)  # deleted (and its processes killed) with the emulator's own namespaces
    router = wan.ns[3]
    _ip("-n", lan, "link", "set", "lo", "up")
    _ip("-n", router, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", lan)
    _ip("-n", router, "addr", "add", f"{LAN_ROUTER}/24", "dev", "lan0")
    _ip("-n", router, "link", "set", "lan0", "up")
    _ip("-n", lan, "addr", "add", f"{LAN_PEER}/24", "dev", "eth0")
    _ip("-n", lan, "link", "set", "eth0", "up")
    _ip("-n", lan, "route", "add", "default", "via", LAN_ROUTER)
    rules = [
        ["sysctl", "-qw", "net.ipv4.ip_forward=1"],
        ["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "wan0", "-j", "MASQUERADE"],
        ["iptables", "-A", "FORWARD", "-i", "wan0", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED",
         "-j", "ACCEPT"],
        ["iptables", "-A", "FORWARD", "-i", "wan0", "-j", "DROP"],
        ["iptables", "-A", "INPUT", "-i", "wan0", "-m", "conntrack", "--ctstate", "NEW", "-j", "DROP"],
    ]
    for rule in rules:
        res = wan.run_in(3, rule, timeout=30)
        assert res.returncode == 0, f"{rule}: {res.stderr}"
    return wan.n


def _status(wan: WanEmulator, host: int, admin: str) -> dict[str, Any] | None:
    """A daemon's admin /status, read from inside its namespace (its admin listens on that loopback)."""
    code = "import sys,urllib.request;print(urllib.request.urlopen(sys.argv[1],timeout=3).read().decode())"
    try:
        res = wan.run_in(host, [sys.executable, "-c", code, f"http://{admin}/status"], timeout=20)
    except subprocess.TimeoutExpired:
        return None
    try:
        return json.loads(res.stdout) if res.returncode == 0 else None
    except ValueError:
        return None


@contextlib.contextmanager
def _swarm(tmp_path: Path, extra: list[str]) -> Iterator[tuple[WanEmulator, list[tuple[int, str]], list[dict[str, Any]],
                                                                 dict[str, str]]]:
    """3 reachable daemons and 1 behind the NAT, each started once the previous one is ready."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT), "XDG_STATE_HOME": str(tmp_path / "state"),
           "PEERD_SECURITY__SECRET": secrets.token_hex(16)}
    sets = [s for s in FAST if not s.startswith(("transport.host", "dht.host", "round."))]
    sets += [f"round.round_s={ROUND_S}", "round.settle_s=0.2", "round.plan_slot_s=0.2", "round.plan_candidates=2",
             "data.num_shards=8", "run_id=nat-e2e", *extra]
    with WanEmulator(4, "lan", seed=1) as wan:
        lan = _nat(wan)
        hosts = [(0, wan.addr(0)), (1, wan.addr(1)), (2, wan.addr(2)), (lan, LAN_PEER)]
        procs: list[subprocess.Popen[bytes]] = []
        infos: list[dict[str, Any]] = []
        try:
            for k, (ns, addr) in enumerate(hosts):
                rf = tmp_path / f"peer-{k}.ready.json"
                cmd = [sys.executable, "-m", "peerd", "join", "--ready-file", str(rf)]
                for item in [*sets, f"transport.host={addr}", f"dht.host={addr}", f"data.shard={k}"]:
                    cmd += ["--set", item]
                for m in infos[0]["dht_maddrs"][:2] if infos else []:
                    cmd += ["--bootstrap", m]
                with open(tmp_path / f"peer-{k}.log", "wb") as log:
                    procs.append(wan.popen(ns, cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env))

                def ready(k: int = k, rf: Path = rf) -> bool:
                    assert procs[k].poll() is None, (tmp_path / f"peer-{k}.log").read_text()[-3000:]
                    return rf.exists()

                wait_for(ready, 180, f"peer {k} ready")
                infos.append(json.loads(rf.read_text()))
            yield wan, hosts, infos, env
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)


@pytest.mark.timeout(600)
def test_nat_peer_is_a_client_and_is_counted(tmp_path: Path) -> None:
    with _swarm(tmp_path, []) as (wan, hosts, infos, env):
        lan = hosts[3][0]
        assert [i["reachability"] for i in infos] == ["server", "server", "server", "client"], infos
        # The DHT port is checked too (the first peer had nobody to ask; the NAT drops inbound).
        dht = [i["dht_reachability"] for i in infos]
        assert dht == ["unchecked", "reachable", "reachable", "unreachable"], infos
        nat_id = str(infos[3]["peer_id"])

        def status(k: int) -> dict[str, Any] | None:
            return _status(wan, hosts[k][0], str(infos[k]["admin"]))

        def nat_counted() -> dict[str, Any] | None:  # the NATed peer's work is in a committed round
            s = status(0)
            return s if s and (s["contributions"]["included"].get(nat_id, 0) >= 1) else None

        first = wait_for(nat_counted, 120, "a round that includes the NATed peer's contribution", 1.0)
        t0, c0, n0 = time.monotonic(), first["contributions"]["commits"], first["contributions"]["included"][nat_id]
        later = wait_for(lambda: (s := status(0)) and s["contributions"]["commits"] >= c0 + 15 and s, 240,
                         "15 more committed rounds", 1.0)
        elapsed = (time.monotonic() - t0) / ROUND_S
        commits = later["contributions"]["commits"] - c0
        counted = later["contributions"]["included"].get(nat_id, 0) - n0
        print(f"NATed peer counted in {counted}/{commits} committed rounds ({elapsed:.0f} rounds elapsed)")
        assert counted >= 0.9 * commits, (counted, commits)

        nat = status(3)
        assert nat is not None and nat["reachability"]["mode"] == "client", nat
        table = wan.run_in(lan, [sys.executable, "-m", "peerd", "status", "--admin", str(infos[3]["admin"])],
                           timeout=60, env={**env, "COLUMNS": "200"}, cwd=ROOT)
        assert "client" in table.stdout, table.stdout + table.stderr

        def one_state() -> set[tuple[int, str]] | None:
            with ThreadPoolExecutor(4) as pool:  # at about one moment: not straddling a commit
                got = list(pool.map(status, range(4)))
            ends = {(s["revision"], s["state_hash"]) for s in got if s}
            return ends if len(ends) == 1 and all(got) and next(iter(ends))[0] > 0 else None

        wait_for(one_state, 60, "all four peers at one revision and hash", 0.2)


@pytest.mark.timeout(600)
def test_nat_peer_pairs_with_reachable_peers_in_gossip(tmp_path: Path) -> None:
    """Gossip mode: the NATed peer is paired with reachable peers only and opens both calls (pull, then push)."""
    with _swarm(tmp_path, ["mixing.mode=gossip", "mixing.topology=random"]) as (wan, hosts, infos, _env):
        assert [i["reachability"] for i in infos] == ["server", "server", "server", "client"], infos

        def status(k: int) -> dict[str, Any] | None:
            return _status(wan, hosts[k][0], str(infos[k]["admin"]))

        first = wait_for(lambda: (s := status(3)) and s["revision"] >= 1 and s, 120,
                         "a gossip commit of the NATed peer", 1.0)
        t0, rev0 = time.monotonic(), first["revision"]
        later = wait_for(lambda: (s := status(3)) and s["revision"] >= rev0 + 10 and s, 120,
                         "10 more gossip commits of the NATed peer", 1.0)
        rounds = (time.monotonic() - t0) / ROUND_S
        print(f"NATed gossip peer committed {later['revision'] - rev0} exchanges in {rounds:.1f} rounds")
        # With 3 reachable peers and 1 client, every round pairs the client with a reachable peer.
        assert later["revision"] - rev0 >= 0.7 * rounds, (later["revision"] - rev0, rounds)
        assert later["reachability"]["mode"] == "client"
