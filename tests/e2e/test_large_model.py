"""A model well over the transport's chunk and message sizes: join, commits, checkpoint, restart, state fetch.

tinylm with d_model=256 and 4 layers has 3.3 M parameters (12.6 MiB of fp32), so a state fetch
(parameters and momentum, 25 MiB) and every shard push span several 1 MiB chunks and exceed the
4 MiB message cap; nothing on the way (inflight-byte caps, fetch ``max_bytes``, norm gate, codec
sizes) may refuse it.
"""

from __future__ import annotations

import json
import signal

import pytest

from tests.conftest import Swarm, wait_for

# fp32 and one fragment: every member's shard of the 12.6 MiB fragment (6.3 MiB for two members, 4.2 for
# three) is itself larger than the 4 MiB message cap, so pushes and pulls are multi-chunk streams too.
LARGE = ["task_options.d_model=256", "task_options.n_layers=4", "task_options.seq_len=32",
         "task_options.batch_size=8", "mixing.codec=fp32", "mixing.num_fragments=1"]
COMMITTED = 'outcome="committed"'


def _param_bytes(d_model: int = 256, n_layers: int = 4) -> int:
    from peerd.train.tasks.tinylm import TinyLM

    model = TinyLM(d_model=d_model, n_layers=n_layers, n_heads=4, seq_len=32)
    return 4 * sum(p.numel() for p in model.parameters())


@pytest.mark.timeout(240)
def test_large_model_joins_commits_checkpoints_restarts(swarm: Swarm, tmp_path) -> None:
    assert _param_bytes() > 8 << 20  # the point of the test: well past every 1-4 MiB size in the transport
    ckpt = [*LARGE, f"checkpoint.dir={tmp_path / 'ckpt-a'}", "checkpoint.every_s=1"]
    a = swarm.start(ckpt)
    a.wait_ready()
    b = swarm.start(LARGE)
    b.wait_ready()
    wait_for(lambda: a.metric_value("peerd_rounds_total", COMMITTED) >= 1, 60, "a committed round of the pair")
    c = swarm.start(LARGE)  # a joiner: fetches the 12 MiB outer state from the donors
    c.wait_ready()
    synced = [json.loads(line) for line in c.log_file.read_text().splitlines() if '"synced"' in line]
    assert synced and synced[0]["bytes"] > 8 << 20, "the joiner must download the whole large state"
    wait_for(lambda: c.metric_value("peerd_rounds_total", COMMITTED) >= 1, 60, "the joiner commits a round")
    wait_for(lambda: list((tmp_path / "ckpt-a").glob("ckpt-*.pt")), 30, "a checkpoint of the large model")

    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(60) == 0
    a.ready_file.unlink()
    again = swarm.start(ckpt, bootstrap=list(b.info["dht_maddrs"]))
    again.wait_ready()
    assert "checkpoint_loaded" in again.log_file.read_text()
    # A fresh process: its metrics count only rounds since the restart (status may carry saved counters).
    wait_for(lambda: again.metric_value("peerd_rounds_total", COMMITTED) >= 1, 60, "the restarted peer commits")
    peers = (again, b, c)

    def one_revision() -> bool:
        states = [p.status() for p in peers]
        if any(s is None for s in states):
            return False
        return len({(s["revision"], s["state_hash"]) for s in states}) == 1

    wait_for(one_revision, 60, "every peer at one revision and hash")
    for p in peers:
        p.proc.send_signal(signal.SIGTERM)
    for p in peers:
        assert p.proc.wait(60) == 0
    refused = [line for p in peers for line in p.log_file.read_text().splitlines()
               if any(w in line for w in ("RESOURCE_EXHAUSTED", "oversized", "too large", "exceeds"))]
    assert not refused, refused[:5]
