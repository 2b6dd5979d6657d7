"""Rate-limited logging of remote-caused events, and tracebacks that keep their stack (pure, no I/O)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from peerd.core.log import RemoteLog, TokenBucket, get_logger, setup_logging


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = root.handlers[:], root.level, structlog.get_config()
    buf = io.StringIO()
    setup_logging("info", "json")
    root.handlers[0].stream = buf  # type: ignore[attr-defined]
    try:
        yield buf
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        structlog.configure(**saved[2])


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.startswith("{")]


def test_token_bucket_bursts_then_refills_at_its_rate() -> None:
    clock = Clock()
    b = TokenBucket(rate=1.0, burst=3, clock=clock)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    clock.t += 1.0
    assert b.take() and not b.take()
    clock.t += 100
    assert sum(b.take() for _ in range(10)) == 3  # never more than the burst


def test_remote_log_limits_per_peer_and_per_reason_and_counts_everything(json_log: io.StringIO) -> None:
    clock = Clock()
    counted: list[tuple[str, bool]] = []
    rl = RemoteLog(get_logger("t"), lambda r, logged: counted.append((r, logged)), reason_rate=1, reason_burst=4,
                   peer_rate=0.1, peer_burst=2, clock=clock)
    # One loud peer: only its own burst is logged, and it cannot use up the reason's budget.
    assert sum(rl.event("bad", "evil", "refused") for _ in range(1000)) == 2
    assert rl.event("bad", "honest", "refused")
    # Many peers (address churn) together stay within the reason's budget.
    assert sum(rl.event("bad", f"p{i}", "refused") for i in range(1000)) == 1
    # Another reason has its own budget.
    assert rl.event("other", "evil", "refused")
    assert len(counted) == 2002 and sum(logged for _, logged in counted) == 5
    clock.t += 10  # budgets refill; the next line says how many were dropped
    assert rl.event("bad", "evil", "refused")
    out = lines(json_log)
    # Each line logged for a reason says how many were dropped since the previous one.
    assert len(out) == 6 and out[2]["peer"] == "honest" and out[2]["dropped_since_last"] == 998
    assert out[-1]["peer"] == "evil" and out[-1]["dropped_since_last"] == 999  # the churning peers'
    assert all(o["reason"] in ("bad", "other") for o in out)


def test_remote_log_keeps_a_bounded_number_of_peer_buckets() -> None:
    rl = RemoteLog(get_logger("t"), max_keys=16, clock=Clock())
    for i in range(1000):
        rl.event("r", f"peer-{i}", "x")
    assert len(rl._peers) == 16


def test_logged_tracebacks_keep_their_stack_in_json(json_log: io.StringIO) -> None:
    rl = RemoteLog(get_logger("t"), clock=Clock())

    def inner() -> None:
        raise ValueError("boom")

    try:
        inner()
    except ValueError:
        rl.event("handler_error", "peer", "handler failed", level=logging.ERROR, exc_info=True)
    try:
        inner()
    except ValueError:  # a foreign (stdlib) logger, as grpc's own error lines are
        logging.getLogger("grpc._cython.cygrpc").exception("Unexpected [%s] raised", "ValueError")
    out = lines(json_log)
    assert len(out) == 2
    for o in out:
        assert "<traceback object" not in json.dumps(o)
        assert "Traceback (most recent call last)" in o["exception"] and "in inner" in o["exception"]


def test_grpc_error_lines_are_rate_limited_per_message(json_log: io.StringIO) -> None:
    grpc_log = logging.getLogger("grpc._cython.cygrpc")
    for _ in range(100):
        grpc_log.error("Unexpected [%s] raised by servicer method [%s]", "DecodeError", "/x")
    logging.getLogger("peerd.other").error("not grpc")
    out = lines(json_log)
    assert sum(o["logger"].startswith("grpc") for o in out) == 3 and out[-1]["logger"] == "peerd.other"
