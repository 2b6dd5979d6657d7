"""Real daemons: /metrics families exist and move, `peerd status` reads the admin endpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Swarm, wait_for

FAMILIES = {
    "peerd_train_steps": "counter", "peerd_train_samples": "counter", "peerd_train_loss": "gauge",
    "peerd_train_step_duration_seconds": "histogram", "peerd_eval_loss": "gauge", "peerd_rounds": "counter",
    "peerd_fragment_bytes": "counter", "peerd_round_duration_seconds": "histogram", "peerd_peers_live": "gauge",
    "peerd_revision": "gauge", "peerd_hash_mismatches": "counter", "peerd_resyncs": "counter",
    "peerd_sync_duration_seconds": "gauge", "peerd_sync_bytes": "counter", "peerd_dht_operations": "counter",
    "peerd_worker_utilization_ratio": "gauge", "peerd_build_info": "gauge", "peerd_rejected_streams": "counter",
    "peerd_dht_invalid_records": "counter", "peerd_transfer_duration_seconds": "histogram",
    "peerd_rpc_refused": "counter",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(values: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lab), v in values.items() if n == name and all((k, v2) in lab for k, v2 in labels.items()))


@pytest.mark.timeout(240)
def test_metrics_exist_move_and_status_reports(swarm: Swarm) -> None:
    a = swarm.start(["train.eval_every_steps=50"])
    a.wait_ready()
    b = swarm.start()
    b.wait_ready()
    wait_for(lambda: a.metric_value("peerd_rounds_total", 'outcome="committed"') >= 1, 120, "a committed round")
    first_text = a.metrics()
    kinds = {fam.name: fam.type for fam in text_string_to_metric_families(first_text)}
    for name, kind in FAMILIES.items():
        assert kinds.get(name) == kind, f"{name}: {kinds.get(name)} != {kind}"
    first = samples(first_text)
    assert all("peer_id" not in dict(lab) for _, lab in first), "peer id must not be a label"
    wait_for(lambda: a.metric_value("peerd_rounds_total", 'outcome="committed"')
             > total(first, "peerd_rounds_total", outcome="committed"), 60, "another committed round")
    second = samples(a.metrics())
    for name, labels in [("peerd_train_steps_total", {}), ("peerd_train_samples_total", {}),
                         ("peerd_fragment_bytes_total", {"direction": "tx"}),
                         ("peerd_fragment_bytes_total", {"direction": "rx"}),
                         ("peerd_dht_operations_total", {"op": "store", "outcome": "ok"}),
                         ("peerd_train_step_duration_seconds_count", {})]:
        assert total(second, name, **labels) > total(first, name, **labels), name
    assert total(second, "peerd_peers_live") == 2
    assert 0 < total(second, "peerd_worker_utilization_ratio") <= 1

    # peerd status: explicit admin address, discovery, JSON, probe.
    run = lambda *args: subprocess.run([sys.executable, "-m", "peerd", "status", *args], capture_output=True,  # noqa: E731
                                       text=True, timeout=60, env=swarm.env)
    res = run("--admin", str(a.info["admin"]), "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)[0]
    assert status["peer_id"] == a.info["peer_id"] and status["healthy"] and status["swarm_size"] == 2
    assert status["revision"] >= 1 and status["last_round"]["outcome"] in {"committed", "aborted", "skipped"}
    # Rates span rounds (30 s window): traffic comes in bursts once per round, yet never reads 0 here.
    assert status["health"] == "healthy" and status["tx_bytes_per_s"] > 0 and status["rx_bytes_per_s"] > 0
    assert "secret" not in res.stdout
    found = json.loads(run("--json").stdout)
    assert {s["peer_id"] for s in found} == {a.info["peer_id"], b.info["peer_id"]}
    assert run("--probe").returncode == 0
    table = run()
    assert table.returncode == 0 and "peerd status" in table.stdout
    assert run("--admin", "127.0.0.1:1", "--probe").returncode == 1
