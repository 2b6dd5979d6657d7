"""A peer SIGKILLed and restarted with its checkpoint directory keeps its identity, resumes, resyncs."""

from __future__ import annotations

import json
import os
import signal
import urllib.request

import pytest

from peerd.node import checkpoint
from tests.conftest import Swarm, wait_for


def status(peer) -> dict:
    with urllib.request.urlopen(f"http://{peer.info['admin']}/status", timeout=5) as resp:
        return json.loads(resp.read())


@pytest.mark.timeout(300)
def test_restart_with_checkpoint_resumes_and_resyncs(swarm: Swarm, tmp_path) -> None:
    ckpt = ["checkpoint.dir=" + str(tmp_path / "ckpt-a"), "checkpoint.every_s=1"]
    a = swarm.start(ckpt)
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    # A third peer keeps the swarm committing while a is down, so a's checkpoint is surely behind
    # and the restart must resync (with b alone the revision would stand still, and whether a's
    # last checkpoint caught its last commit would decide whether a sync happens at all).
    c = swarm.start()
    c.wait_ready()
    committed = 'outcome="committed"'
    wait_for(lambda: a.metric_value("peerd_rounds_total", committed) >= 2, 120, "two committed rounds")
    wait_for(lambda: len(list((tmp_path / "ckpt-a").glob("ckpt-*.pt"))) >= 1, 30, "a checkpoint file")
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    a.ready_file.unlink()
    loaded, problems = checkpoint.load_latest(tmp_path / "ckpt-a")
    assert loaded is not None, problems
    saved_step = loaded.content["worker"]["step"]
    saved_revision = loaded.content["outer"]["revision"]
    assert saved_step > 0 and saved_revision >= 1
    wait_for(lambda: status(b)["revision"] > saved_revision, 120, "b and c to commit past a's checkpoint")

    again = swarm.start(ckpt, bootstrap=list(b.info["dht_maddrs"]))
    again.wait_ready()
    assert again.info["peer_id"] == a.info["peer_id"], "same checkpoint dir must give the same identity"
    log = again.log_file.read_text()
    assert "checkpoint_loaded" in log
    assert status(again)["step"] >= saved_step  # resumed from the checkpoint, not from step 0

    def in_sync() -> bool:
        x, y = status(again), status(b)
        return x["revision"] == y["revision"] and x["state_hash"] == y["state_hash"] and x["rounds_committed"] > 0

    wait_for(in_sync, 120, "restarted peer back in sync with the swarm")
    for p in (again, b, c):
        p.proc.send_signal(signal.SIGTERM)
    for p in (again, b, c):
        assert p.proc.wait(60) == 0
    sa, sb = again.summary(), b.summary()
    assert sa["exit"] == "sigterm" and sb["exit"] == "sigterm"
    # The restarted peer resynced what it missed; the transfer is reported with its rate.
    assert sa["syncs"] and sa["syncs"][0]["bytes"] > 0 and sa["syncs"][0]["bytes_per_s"] > 0
