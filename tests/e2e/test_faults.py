"""A member SIGKILLed at each named point of the protocol never hurts the survivors.

The fault hook (peerd/core/faults.py) makes the daemon SIGKILL itself when it reaches the point, so
the crash lands exactly there: before sending, mid-stream, after sending but before committing,
as leader before publishing the plan, and as a donor in the middle of a state transfer.
"""

from __future__ import annotations

import json
import signal
import urllib.request

import pytest

from tests.conftest import Peer, Swarm, wait_for

COMMITTED = 'outcome="committed"'


def status(peer: Peer) -> dict:
    with urllib.request.urlopen(f"http://{peer.info['admin']}/status", timeout=5) as resp:
        return json.loads(resp.read())


def finish(survivors: list[Peer]) -> list[dict]:
    for p in survivors:
        p.proc.send_signal(signal.SIGTERM)
    for p in survivors:
        assert p.proc.wait(60) == 0, p.log_file.read_text()[-2000:]
    return [p.summary() for p in survivors]


POINTS = ["before_send@2", "mid_stream@3", "after_send@2", "leader_before_publish@1"]


@pytest.mark.timeout(480)
def test_member_killed_at_each_point(swarm: Swarm) -> None:
    """Two survivors see one victim per fault point die, in turn, and keep committing each time."""
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    for point in POINTS:
        # Small chunks so every shard push is a multi-chunk stream (mid_stream needs one).
        victim = swarm.start(["transport.chunk_bytes=1024"], env={"PEERD_TEST_FAULTS": point})
        victim.wait_ready()
        wait_for(lambda v=victim: v.proc.poll() is not None, 150, f"the fault {point} to fire")
        assert victim.proc.returncode == -signal.SIGKILL, f"{point}: {victim.log_file.read_text()[-2000:]}"
        base = a.metric_value("peerd_rounds_total", COMMITTED)
        # Survivors keep committing: at most one round deadline lost, then rounds without the victim.
        wait_for(lambda base=base: a.metric_value("peerd_rounds_total", COMMITTED) >= base + 2, 60,
                 f"two commits after the crash at {point}")
        assert a.proc.poll() is None and b.proc.poll() is None, f"a survivor died after the crash at {point}"
    sa, sb = finish([a, b])
    assert sa["revision"] == sb["revision"] and sa["state_hash"] == sb["state_hash"]
    assert sa["final_eval_loss"] < sa["initial_eval_loss"]


@pytest.mark.timeout(240)
def test_donor_killed_mid_transfer_joiner_survives(swarm: Swarm) -> None:
    donor = swarm.start(["transport.chunk_bytes=1024"], env={"PEERD_TEST_FAULTS": "donor_mid_transfer"})
    donor.wait_ready()
    other = swarm.start()
    other.wait_ready()
    wait_for(lambda: donor.metric_value("peerd_rounds_total", COMMITTED) >= 1, 120, "a committed round")
    other.proc.send_signal(signal.SIGKILL)  # leave the faulty donor as the only one
    other.proc.wait(10)
    joiner = swarm.start(bootstrap=list(donor.info["dht_maddrs"]))
    wait_for(lambda: donor.proc.poll() is not None, 60, "the donor to die mid-transfer")
    assert donor.proc.returncode == -signal.SIGKILL
    # The joiner neither crashes nor hangs: once the dead donor's record expires it starts on its own.
    joiner.wait_ready(120)
    wait_for(lambda: status(joiner)["healthy"], 120, "joiner healthy")
    assert "sync_failed" in joiner.log_file.read_text()
    assert finish([joiner])[0]["exit"] == "sigterm"
