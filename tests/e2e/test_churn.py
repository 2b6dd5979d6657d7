"""Real processes: a SIGKILLed peer never takes the others down, and SIGTERM is a clean leave."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import Swarm, wait_for


@pytest.mark.timeout(420)
def test_sigkill_mid_run_survivors_finish_and_agree(swarm: Swarm) -> None:
    # Enough steps that no peer can finish before the others have joined: a peer that is done
    # while it sees nobody leaves at once (CI once saw the first peer do 400 steps alone).
    steps = ["train.max_steps=1200"]
    first = swarm.start(steps, flags=["--exit-when-done"])
    first.wait_ready()
    others = [swarm.start(steps, flags=["--exit-when-done"]) for _ in range(2)]
    for p in others:
        p.wait_ready()
    assert first.proc.poll() is None, "first peer finished alone before the others joined: raise max_steps"
    committed = 'outcome="committed"'
    wait_for(lambda: first.metric_value("peerd_rounds_total", committed) >= 2, 120, "two committed rounds")
    victim = others[1]
    assert victim.proc.poll() is None, "victim finished before it could be killed: raise max_steps"
    before = first.metric_value("peerd_rounds_total", committed)
    os.kill(victim.proc.pid, signal.SIGKILL)
    survivors = [first, others[0]]
    for p in survivors:
        wait_for(lambda p=p: p.proc.poll() is not None, 300, f"peer {p.index} to finish")
        assert p.proc.returncode == 0, p.log_file.read_text()[-3000:]
    summaries = [p.summary() for p in survivors]
    assert all(s["exit"] == "done" for s in summaries)
    assert summaries[0]["revision"] == summaries[1]["revision"]
    assert summaries[0]["state_hash"] == summaries[1]["state_hash"]
    # Rounds kept committing after the kill.
    assert summaries[0]["rounds_committed"] > before
    assert not victim.summary_file.exists()
    # Recovery figures: seconds from the failure to the next committed round.
    assert summaries[0]["recoveries_s"] and all(0 < x < 60 for x in summaries[0]["recoveries_s"])


@pytest.mark.timeout(240)
def test_sigterm_is_a_graceful_leave_with_summary(swarm: Swarm) -> None:
    a = swarm.start()
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    committed = 'outcome="committed"'
    wait_for(lambda: a.metric_value("peerd_rounds_total", committed) >= 1, 120, "a committed round")
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(60) == 0
    s = b.summary()
    assert s["exit"] == "sigterm" and s["steps"] > 0 and s["rounds_committed"] >= 1
    assert s["final_eval_loss"] is not None and s["final_eval_loss"] < s["initial_eval_loss"]
    assert len(s["history"]) >= 2 and s["history"][-1]["eval_loss"] == s["final_eval_loss"]
    # peerd report turns this real summary into plots.
    out = b.workdir / "report"
    res = subprocess.run([sys.executable, "-m", "peerd", "report", str(b.summary_file), "--out", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    for name in ("eval_loss_vs_steps.png", "eval_loss_vs_bytes.png", "rounds.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The survivor notices the departure and keeps running alone.
    wait_for(lambda: a.metric_value("peerd_peers_live") == 1, 30, "survivor to see the leave")
    assert a.proc.poll() is None
    a.proc.send_signal(signal.SIGINT)
    assert a.proc.wait(60) == 0 and a.summary()["exit"] == "sigint"
