"""Health rules, windowed rates, the 80-column tables, and the join/refusal helpers (no processes)."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

import pytest
from rich.console import Console

from peerd.core.errors import FatalError
from peerd.node.health import RoundLog, assess, window_rates
from peerd.node.joincheck import MISSING_SECRET, RefusalLog, records_carry_mac, require_secret_if_swarm_has_one
from peerd.ops.progress import PeerView, Progress
from peerd.ops.status import render, short_id
from peerd.ops.swarm import disagreement, print_table

UP = {"ready": True, "worker_ok": True, "p2pd_ok": True}
PID = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_aborting_peer_with_company_is_degraded_with_the_reason() -> None:
    h = assess(**UP, others_live=1, aborted=79, skipped=0, last_round="aborted timeout")
    assert h.state == "degraded" and not h.healthy
    assert "no commit in the last 79 rounds (79 aborted, 0 skipped; last: aborted timeout)" in h.reasons[0]
    assert "1 other peer" in h.reasons[0]


@pytest.mark.parametrize(("others", "aborted", "skipped", "state"), [
    (0, 50, 50, "healthy"),  # alone: skipping rounds is what a lone peer does
    (3, 4, 0, "healthy"),  # a few misses are normal churn
    (3, 2, 3, "degraded"),  # skipped rounds count too (e.g. excluded from every plan)
])
def test_degraded_needs_company_and_a_run_of_misses(others: int, aborted: int, skipped: int, state: str) -> None:
    assert assess(**UP, others_live=others, aborted=aborted, skipped=skipped).state == state


def test_dead_parts_are_unhealthy_and_not_ready_is_starting() -> None:
    assert assess(ready=True, worker_ok=False, p2pd_ok=True, others_live=1, aborted=0).state == "unhealthy"
    h = assess(ready=True, worker_ok=True, p2pd_ok=False, others_live=1, aborted=0)
    assert h.state == "unhealthy" and "p2pd" in h.reasons[0]
    assert assess(ready=False, worker_ok=True, p2pd_ok=True, others_live=1, aborted=0).state == "starting"


def test_round_log_resets_on_commit_and_keeps_recent_outcomes() -> None:
    log = RoundLog()
    for outcome, reason in [("aborted", "timeout"), ("skipped", "no_plan"), ("committed", "ok"),
                            ("aborted", "hash_mismatch"), ("aborted", "timeout")]:
        log.observe(outcome, reason)
    aborted, skipped, recent = log.snapshot()
    assert (aborted, skipped) == (2, 0)
    assert recent == ["aborted:timeout", "skipped:no_plan", "committed", "aborted:hash_mismatch", "aborted:timeout"]


def test_rates_span_the_window_not_one_heartbeat() -> None:
    # Bursts once per 5 s round: 1 MB sent at t=5, 10, 15 ... A 1 s window read 0 most of the time.
    history = [{"t_s": float(t), "tx_bytes": (t // 5) * 1_000_000, "rx_bytes": 0} for t in range(0, 61, 2)]
    rates = window_rates(history, now_s=61.0, tx=12_000_000, rx=0, window_s=30)
    assert 150e3 < rates["tx_bytes_per_s"] < 250e3  # 1 MB per 5 s: about 200 kB/s in every sample
    assert window_rates([], 5.0, 10, 10) == {"tx_bytes_per_s": 0.0, "rx_bytes_per_s": 0.0}
    young = window_rates([{"t_s": 0.0, "tx_bytes": 0, "rx_bytes": 0}], 4.0, 400, 800)
    assert young == {"tx_bytes_per_s": 100.0, "rx_bytes_per_s": 200.0}


def lines_of(draw: object) -> list[str]:
    out = io.StringIO()
    draw(Console(file=out, width=80, force_terminal=False, color_system=None))  # type: ignore[operator]
    return out.getvalue().splitlines()


def test_status_table_fits_80_columns_and_explains_degraded() -> None:
    s = {"peer_id": PID, "run_id": "peerd", "health": "degraded", "healthy": False, "swarm_size": 2, "step": 12345,
         "health_reasons": ["no commit in the last 79 rounds (79 aborted, 0 skipped) while the swarm has 1 other peer"],
         "loss": 3.4567, "rounds_committed": 0, "rounds_aborted": 79, "revision": 123, "state_hash": "abcdef1234",
         "last_round": {"outcome": "aborted", "reason": "member_unreachable"}, "tx_bytes_per_s": 123456.0,
         "rx_bytes_per_s": 2345678.0}
    lines = lines_of(lambda c: render([s, {"admin": "127.0.0.1:1", "health": "unreachable",
                                             "error": "Connection refused"}], c))
    text = "\n".join(lines)
    assert max(map(len, lines)) <= 80, text
    for cell in (short_id(PID), "degraded", "12345", "3.457", "0/79", "123k/2.3M", "abcdef"):
        assert cell in text, (cell, text)
    assert "no commit in the last 79 rounds" in text and "127.0.0.1:1: unreachable: Connection refused" in text
    assert short_id(PID) == "…Wjhx5N" and "…" not in short_id("Qm12")


def test_swarm_table_fits_and_disagreement_is_reported() -> None:
    peers = [{"index": i, "peer_id": PID, "steps": 300, "initial_eval_loss": 5.5, "final_eval_loss": 3.2,
              "tx_bytes": 12_345_678, "rx_bytes": 2_345_678, "rounds_committed": 30, "rounds_aborted": 2,
              "revision": 30, "state_hash": "abcdef123456", "exit": "done"} for i in range(3)]
    result = {"run_id": "peerd", "mode": "diloco", "wall_s": 123.4, "peers": peers}
    assert disagreement(result) is None
    peers[2] = {**peers[2], "revision": 29, "exit": "error: the p2pd daemon died; the DHT is unusable"}
    assert "peer 2: revision 29" in str(disagreement(result))
    assert disagreement({**result, "mode": "gossip"}) is None
    lines = lines_of(lambda c: print_table(result, c))
    assert max(map(len, lines)) <= 80 and "the DHT is unusable" in " ".join(" ".join(lines).split())


def test_progress_line_and_timeout_report(tmp_path: object) -> None:
    views = [PeerView(i, tmp_path / f"peer-{i}.log", tmp_path / f"r{i}") for i in range(3)]  # type: ignore[operator]
    views[0].status = {"peer_id": PID, "step": 40, "loss": 3.2, "rounds_committed": 3, "rounds_aborted": 0,
                       "revision": 3, "health": "healthy", "recent_rounds": ["committed"]}
    views[1].status = {**views[0].status, "step": 20, "rounds_aborted": 9, "health": "degraded",
                       "recent_rounds": ["aborted:timeout", "aborted:timeout"]}
    views[2].exit_code = 0
    prog = Progress(views, 100, Console(file=io.StringIO(), width=80))
    line = prog.line()
    assert "2/3 up" in line and "step 20..40/100" in line and "aborted 0..9" in line and "1:degraded" in line
    report = prog.unfinished_report()
    assert len(report) == 2 and "peer 1 did not finish: step 20/100" in report[1]
    assert "aborted:timeout, aborted:timeout" in report[1] and str(views[1].log) in report[1]
    assert max(len(ln) for ln in lines_of(lambda c: c.print(prog.table()))) <= 80


def test_records_with_a_mac_mean_the_swarm_has_a_secret() -> None:
    item = lambda mac: SimpleNamespace(value={"mac": mac, "sig": b"x"})  # noqa: E731
    assert records_carry_mac({"a": item(b""), "b": item(b"\x01" * 32)}) is True
    assert records_carry_mac({"a": item(b"")}) is False
    assert records_carry_mac(None) is None and records_carry_mac({"a": SimpleNamespace(value=7)}) is None


@pytest.mark.asyncio
async def test_missing_secret_is_fatal_exit_2() -> None:
    class Membership:
        async def sealed_peer_records(self, timeout_s: float) -> object:
            return {"p": SimpleNamespace(value={"mac": b"\x02" * 32})}

    membership = Membership()
    with pytest.raises(FatalError) as err:
        await require_secret_if_swarm_has_one(membership, ["/ip4/127.0.0.1/tcp/1/p2p/Qm"])
    assert err.value.code == 2 and str(err.value) == MISSING_SECRET
    await require_secret_if_swarm_has_one(membership, [])  # no bootstrap: starts its own swarm


def test_refusals_are_logged_once_per_reason_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RefusalLog(every_s=3600)
    with caplog.at_level(logging.WARNING):
        logged = [limiter("missing") for _ in range(50)] + [limiter("bad_mac")]
    assert logged.count(True) == 2 and logged[0] and logged[-1]
