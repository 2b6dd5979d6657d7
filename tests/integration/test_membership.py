"""Real in-process DHT nodes on 127.0.0.1: heartbeats, live view, TTL expiry, record validation."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.config import DhtConfig
from peerd.core.schedule import Candidate, make_plan
from peerd.net.membership import Membership
from peerd.net.peer_record import PeerRecord
from tests.conftest import eventually

CFG = DhtConfig(host="127.0.0.1", heartbeat_s=0.5, ttl_s=1.5, op_timeout_s=5)


def record(pid: str, revision: int = 0) -> PeerRecord:
    return PeerRecord(pid, "127.0.0.1:1", 1, revision, "h", ("a", "b"), 1.0, 3, True, False)


@pytest.mark.timeout(120)
async def test_heartbeats_views_expiry_and_plans() -> None:
    ops: list[tuple[str, str]] = []
    a = Membership(CFG, "run", lambda op, outcome: ops.append((op, outcome)))
    b = Membership(CFG, "run", lambda op, outcome: None)
    await a.start([])
    try:
        await b.start(await a.visible_maddrs())
        ida, idb = a.node.peer_id.to_base58(), b.node.peer_id.to_base58()
        assert await a.heartbeat(record(ida)) and await b.heartbeat(record(idb, revision=2))

        async def both_seen():
            view = await a.live_records()
            return view if view and set(view) == {ida, idb} else None

        view = await eventually(both_seen, 20, "both peers in each view")
        assert view[idb].revision == 2
        # A record written under another peer's subkey is dropped and counted.
        forged = record(ida).to_value()
        await b.node.store("peerd/v1/run/peers", forged, time.time() + 10, subkey="someone-else")
        await eventually(lambda: _count(a), 10, "an invalid record counted")
        assert "someone-else" not in (await a.live_records())
        # Plans: published once, read back valid by the other node.
        cands = [Candidate(ida, "x:1", 0, "h", True, False), Candidate(idb, "x:2", 0, "h", True, False)]
        plan = make_plan("run", 7, 2, ida, cands, 2.0, 0.9, now=14.0)
        assert plan is not None and await a.publish_plan(plan, ttl_s=10)
        plans = await eventually(lambda: b.read_plans(7, 2), 10, "the published plan")
        assert plans == [plan]
        # A departure: a record that is not ready (a shorter lifetime than the last heartbeat's
        # would be refused: a DHT node keeps the value that expires last), gone once it expires.
        assert await b.heartbeat(replace(record(idb), ready=False))

        async def b_leaving():
            view = await a.live_records()
            return view is not None and idb in view and not view[idb].ready

        await eventually(b_leaving, 10, "the departure record read")

        async def b_gone():
            view = await a.live_records()
            return view is not None and idb not in view

        await eventually(b_gone, 10, "the departed peer gone from the view")
        assert a.p2pd_alive()
        assert ("store", "ok") in ops and ("get", "ok") in ops
    finally:
        await b.shutdown()
        await a.shutdown()
    assert not a.p2pd_alive()


async def _count(m: Membership):
    await m.live_records()
    return m.invalid_records > 0


@given(st.dictionaries(st.sampled_from(["v", "peer_id", "endpoint", "incarnation", "revision", "state_hash",
                                        "fragment_hashes", "samples_per_s", "step", "ready", "done", "x"]),
                       st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=4)
                       | st.lists(st.text(max_size=3)),
                       max_size=12))
@settings(max_examples=300, deadline=None)
def test_record_decoder_rejects_garbage_cleanly(value: dict) -> None:
    try:
        rec = PeerRecord.from_value(value.get("peer_id"), value)
    except ValueError:
        return
    assert rec.peer_id == value["peer_id"]


def test_valid_record_round_trips_and_oversize_is_rejected() -> None:
    rec = record("p")
    assert PeerRecord.from_value("p", rec.to_value()) == rec
    with pytest.raises(ValueError):
        PeerRecord.from_value("q", rec.to_value())
    big = {**rec.to_value(), "endpoint": "x" * 10_000}
    with pytest.raises(ValueError, match="oversized"):
        PeerRecord.from_value("p", big)


@pytest.mark.timeout(120)
async def test_heartbeats_store_at_the_replicas_without_a_lookup() -> None:
    """After the first, heartbeats send one record to each replica: no lookup, which returned all N records."""
    nodes = [Membership(CFG, "run", lambda op, outcome: None) for _ in range(4)]
    finds = [0]
    try:
        await nodes[0].start([])
        for m in nodes[1:]:
            await m.start(await nodes[0].visible_maddrs())
        ids = [m.node.peer_id.to_base58() for m in nodes]
        for m, pid in zip(nodes, ids, strict=True):
            assert await m.heartbeat(record(pid))
        for m in nodes:  # count the lookups from here on
            call_find = m.node.protocol.call_find

            async def counted(*args, _f=call_find, **kwargs):
                finds[0] += 1
                return await _f(*args, **kwargs)

            m.node.protocol.call_find = counted
        for revision in (1, 2, 3):
            for m, pid in zip(nodes, ids, strict=True):
                assert await m.heartbeat(record(pid, revision))
        assert finds[0] == 0, f"{finds[0]} lookup calls for 12 heartbeats"

        async def all_at_3():
            view = await nodes[1].live_records()
            return view if view and {pid: r.revision for pid, r in view.items()} == dict.fromkeys(ids, 3) else None

        await eventually(all_at_3, 20, "every peer's latest heartbeat in a reader's view")
    finally:
        for m in nodes:
            await m.shutdown()
