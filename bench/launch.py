"""Launch ``peerd join`` processes the way ``peerd swarm`` does, optionally inside namespaces.

``peerd swarm`` pins every peer to 127.0.0.1; the shaped-link benchmarks need each peer in its
own network namespace with its own address, and the no-mixing baseline needs peers that never
see each other. Both are plain ``peerd join`` command lines, so this module only decides the
prefix (``ip netns exec NS``), the bind address, the run id and who bootstraps from whom.
Every wait is bounded; children run in their own process groups and are SIGTERMed, then
SIGKILLed, in ``finally``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerd.ops.swarm import wait_ready_file

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class PeerSpec:
    """Where and how one peer runs."""

    host: str = "127.0.0.1"
    prefix: list[str] = field(default_factory=list)
    run_id: str = "bench"
    bootstrap_from: int | None = 0  # index of the peer whose ready file we bootstrap from; None: alone
    extra: list[str] = field(default_factory=list)  # this peer's own overrides (applied last)


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = 30.0) -> None:
    """SIGTERM every process group, wait up to ``grace_s`` in total, then SIGKILL."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def run_peers(specs: list[PeerSpec], overrides: list[str], max_steps: int, workdir: Path,
              timeout_s: float = 900.0) -> dict[str, Any]:
    """Run one ``peerd join`` per spec until all exit; returns a ``peerd swarm``-shaped summary.

    Peers sharing a ``run_id`` form one swarm (``--wait-for-peers`` counts them), so they start
    training together as under ``peerd swarm``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    ready: dict[int, dict[str, Any]] = {}
    t0 = time.monotonic()
    try:
        for i, spec in enumerate(specs):
            same_run = [j for j, s in enumerate(specs) if s.run_id == spec.run_id]
            cmd = [*spec.prefix, sys.executable, "-m", "peerd", "join", "--exit-when-done",
                   "--wait-for-peers", str(len(same_run))]
            for item in [*overrides, f"transport.host={spec.host}", f"dht.host={spec.host}",
                         f"data.num_shards={len(specs)}", f"data.shard={i}", f"train.max_steps={max_steps}",
                         f"run_id={spec.run_id}", *spec.extra]:
                cmd += ["--set", item]
            rf, sf = workdir / f"peer-{i}.ready.json", workdir / f"peer-{i}.summary.json"
            for stale in (rf, sf):
                stale.unlink(missing_ok=True)
            cmd += ["--ready-file", str(rf), "--summary", str(sf)]
            if spec.bootstrap_from is not None and spec.bootstrap_from != i:
                cmd += [a for m in ready[spec.bootstrap_from]["dht_maddrs"][:2] for a in ("--bootstrap", m)]
            with open(workdir / f"peer-{i}.log", "wb") as log:
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                              env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True))
            if any(s.bootstrap_from == i for j, s in enumerate(specs) if j != i):
                ready[i] = wait_ready_file(rf, procs[i], 180)
        deadline = t0 + timeout_s
        for p in procs:
            p.wait(max(0.1, deadline - time.monotonic()))
    except (subprocess.TimeoutExpired, TimeoutError, RuntimeError) as exc:
        print(f"bench: peers stopping early: {exc!r}", file=sys.stderr, flush=True)
    finally:
        stop_all(procs)
    peers = []
    for i, p in enumerate(procs):
        sf = workdir / f"peer-{i}.summary.json"
        entry = json.loads(sf.read_text())["peers"][0] if sf.exists() else {"exit": f"no summary ({p.returncode})"}
        peers.append({**entry, "index": i})
    return {"wall_s": round(time.monotonic() - t0, 3), "peers": peers}


def training_rate(peer: dict[str, Any], max_steps: int) -> float | None:
    """Steps/s of one peer while it trained, from its status history (``train.log_every_s`` apart).

    Only points strictly between step 0 and ``max_steps`` count, so start-up, the initial eval
    and the idle tail after the last step are excluded.
    """
    pts = [(h["t_s"], h["step"]) for h in peer.get("history", []) if 0 < h["step"] < max_steps]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])


def wait_swarm(proc: subprocess.Popen[bytes], workdir: Path, timeout_s: float, stall_s: float = 90.0) -> str:
    """Wait for a ``peerd swarm`` process; stop it if it hangs.

    Peers of a healthy swarm leave within a common final round of each other. If some peer has
    already written its summary and the swarm is still running ``stall_s`` later, the remaining
    peers are stuck (seen: two peers aborting every round on ``missing_reduced_shards`` after
    the others left): the swarm gets SIGINT, on which ``peerd swarm`` SIGTERMs its peers (each
    leaves and writes its summary) and writes the merged summary. Not SIGTERM: that ends
    ``peerd swarm`` at once and orphans its peers, which run in their own sessions.

    Returns:
        ``"done"``, ``"stalled"`` (stopped after a stall) or ``"timeout"``.
    """
    deadline = time.monotonic() + timeout_s
    first_done: float | None = None
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if first_done is None and any(workdir.glob("peer-*.summary.json")):
                first_done = now
            if now > deadline or (first_done is not None and now - first_done > stall_s):
                _interrupt(proc)
                return "timeout" if now > deadline else "stalled"
            time.sleep(1.0)
    except BaseException:  # Ctrl-C of the benchmark: the swarm is in its own session, stop it too
        _interrupt(proc)
        raise
    return "done"


def _interrupt(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(90)  # peerd swarm gives its peers 30 s, then SIGKILLs them
    except subprocess.TimeoutExpired:
        stop_all([proc], grace_s=5)


def start_wan_daemons(wan: Any, peers: int, workdir: Path, items: list[str], args: list[str],
                      env: dict[str, str], procs: list[subprocess.Popen[bytes]],
                      ready_timeout_s: float = 240.0) -> list[dict[str, Any]]:
    """Start one ``peerd join`` per host of a :class:`bench.wan.WanEmulator` and wait until all are ready.

    Host ``i`` binds transport and DHT to its own address, trains shard ``i`` of ``peers`` and
    writes ``peer-i.{log,ready.json,summary.json}`` in ``workdir``; hosts after the first
    bootstrap from host 0 once it is ready. ``items`` are ``--set`` overrides for every host (after
    the per-host ones), ``args`` extra command-line arguments. Each process is appended to
    ``procs`` as it starts, so the caller can stop them whatever fails here (a wait raises
    ``TimeoutError`` or ``RuntimeError``; ``WanEmulator.close`` also kills what is left).

    Returns:
        The peers' ready files' contents, in host order.
    """
    boot: list[str] = []
    for i in range(peers):
        rf, sf = workdir / f"peer-{i}.ready.json", workdir / f"peer-{i}.summary.json"
        for stale in (rf, sf):
            stale.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "peerd", "join", "--ready-file", str(rf), "--summary", str(sf), *args]
        for item in [f"transport.host={wan.addr(i)}", f"dht.host={wan.addr(i)}", f"data.shard={i}",
                     f"data.num_shards={peers}", *items]:
            cmd += ["--set", item]
        for m in boot:
            cmd += ["--bootstrap", m]
        with open(workdir / f"peer-{i}.log", "wb") as log:
            procs.append(wan.popen(i, cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env))
        if i == 0:
            boot = list(wait_ready_file(rf, procs[0], 180)["dht_maddrs"])[:2]
    return [wait_ready_file(workdir / f"peer-{i}.ready.json", p, ready_timeout_s) for i, p in enumerate(procs)]
