"""A peer frozen with SIGSTOP never holds the others up, and after SIGCONT it resyncs and rejoins.

SIGSTOP models a hung process (swapping, a debugger, a VM paused): its sockets stay open and
the kernel still accepts connections for it, but nothing answers. Only the daemon's own pid is
stopped (its p2pd child keeps running), so the DHT can still route to it while its handlers
hang. The two others must keep committing rounds within bounded time, and the frozen peer, once
continued, must catch up (same revision and state hash as the others) and commit again.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import Peer, Swarm, wait_for

ROUND_S = 2.0  # round.round_s of the FAST settings in tests/conftest.py


def status(peer: Peer, timeout_s: float = 3.0) -> dict | None:
    return peer.status(timeout_s)


def counters(peer: Peer) -> dict[str, float]:
    """Round outcomes and DHT operation outcomes from /metrics (for the printed diagnostics)."""
    out = {}
    for line in peer.metrics().splitlines():
        if line.startswith(("peerd_rounds_total{", "peerd_dht_operations_total{")):
            name, value = line.rsplit(" ", 1)
            out[name.replace("peerd_", "").replace("_total", "")] = float(value)
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> str:
    return ", ".join(f"{k} +{v - before.get(k, 0):g}" for k, v in sorted(after.items()) if v > before.get(k, 0))


def revision(peer: Peer) -> int:
    s = status(peer)
    return int(s["revision"]) if s else -1


def assert_running(*peers: Peer) -> None:
    """A peer that exits on its own is a crash: fail at once with its log, not after a timeout."""
    for p in peers:
        code = p.proc.poll()
        assert code is None, f"peer-{p.index} exited on its own with {code}:\n{p.log_file.read_text()[-4000:]}"


def others_at(a: Peer, b: Peer, rev: int) -> bool:
    assert_running(a, b)
    return min(revision(a), revision(b)) >= rev


@pytest.mark.timeout(300)
def test_sigstop_peer_does_not_block_swarm_and_resyncs_after_sigcont(swarm: Swarm) -> None:
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    c = swarm.start()
    b.wait_ready()
    c.wait_ready()
    wait_for(lambda: all(revision(p) >= 2 for p in (a, b, c)), 120, "two commits on all three peers", 0.5)
    wait_for(lambda: all((status(p) or {}).get("swarm_size") == 3 for p in (a, b, c)), 30,
             "all three peers in every view", 0.5)
    frozen_committed = int(status(c)["rounds_committed"])  # type: ignore[index]

    before = counters(a)
    os.kill(c.proc.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        base = max(revision(a), revision(b))
        # Nothing may wait on the frozen peer unboundedly: its record expires (dht.ttl_s 4 s)
        # and rounds without it commit.
        wait_for(lambda: others_at(a, b, base + 1), 60,
                 "the two others to commit a round while the third is frozen", 0.25)
        t_first = time.monotonic() - t_stop
        wait_for(lambda: others_at(a, b, base + 2), 60,
                 "the two others to commit 2 rounds while the third is frozen", 0.25)
        t_progress = time.monotonic() - t_stop
        # Keep it frozen for at least 3 round lengths in all.
        time.sleep(max(0.0, 3 * ROUND_S - (time.monotonic() - t_stop)))
        assert_running(a, b)
    finally:
        os.kill(c.proc.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    frozen_s = t_cont - t_stop
    print(f"\nfreeze: others committed a round {t_first:.1f}s and 2 rounds {t_progress:.1f}s after SIGSTOP; "
          f"frozen for {frozen_s:.1f}s; peer-0 meanwhile: {delta(before, counters(a))}", flush=True)

    def in_sync() -> bool:
        assert_running(a, b, c)
        sa, sb, sc = status(a), status(b), status(c)
        if not (sa and sb and sc):
            return False
        return (sc["revision"] > base and sa["revision"] == sb["revision"] == sc["revision"]
                and sa["state_hash"] == sb["state_hash"] == sc["state_hash"])

    wait_for(in_sync, 90, "the continued peer back in sync with the others", 0.5)
    t_sync = time.monotonic() - t_cont

    def committed_again() -> bool:
        assert_running(a, b, c)
        return int((status(c) or {}).get("rounds_committed", -1)) > frozen_committed

    wait_for(committed_again, 60, "the continued peer to commit a round again", 0.5)
    t_commit = time.monotonic() - t_cont
    wait_for(in_sync, 30, "all three in sync after the continued peer's commit", 0.5)
    print(f"freeze: continued peer in sync {t_sync:.1f}s after SIGCONT, committed again after {t_commit:.1f}s",
          flush=True)
    assert_running(a, b, c)

    for p in (a, b, c):
        p.proc.send_signal(signal.SIGTERM)
    for p in (a, b, c):
        assert p.proc.wait(60) == 0, p.log_file.read_text()[-3000:]
        s = p.summary()
        assert s["exit"] == "sigterm", s["exit"]


@pytest.mark.timeout(300)
def test_two_peers_frozen_in_turn_find_each_other_again(swarm: Swarm) -> None:
    """Each of two peers is frozen past the record TTL in turn; they must train together again.

    hivemind drops a node from its routing table after one failed RPC; with only two peers,
    nobody else remembers either of them, so without re-pinging they would stay apart forever.
    """
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    wait_for(lambda: others_at(a, b, 2), 120, "two commits on both peers", 0.5)
    for frozen in (a, b):
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(4 * ROUND_S)  # the frozen peer's record (ttl 4 s) expires meanwhile
        finally:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        t_cont = time.monotonic()

        def together() -> bool:
            assert_running(a, b)
            sa, sb = status(a), status(b)
            return bool(sa and sb and sa["swarm_size"] == sb["swarm_size"] == 2)

        wait_for(together, 60, f"peer-{frozen.index} and the other to see each other again", 0.5)
        rev = max(revision(a), revision(b))
        wait_for(lambda rev=rev: others_at(a, b, rev + 1), 60, "a round committed by both after the freeze", 0.5)
        print(f"\nfreeze in turn: peer-{frozen.index} back in a common round {time.monotonic() - t_cont:.1f}s "
              "after SIGCONT", flush=True)
    for p in (a, b):
        p.proc.send_signal(signal.SIGTERM)
    for p in (a, b):
        assert p.proc.wait(60) == 0, p.log_file.read_text()[-3000:]
