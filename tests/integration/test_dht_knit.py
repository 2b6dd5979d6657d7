"""Real in-process DHT nodes: joining through a slow bootstrap peer, and re-knitting two live peers
that lost each other (the routing-table and blacklist trap of a loaded box)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys

import pytest
from hivemind.p2p import PeerID
from hivemind.utils import get_dht_time

from peerd.core.config import DhtConfig
from peerd.net.membership import DhtError, Membership
from peerd.net.peer_record import PeerRecord
from tests.conftest import eventually

CFG = DhtConfig(host="127.0.0.1", heartbeat_s=0.5, ttl_s=1.5, op_timeout_s=5)


def record(pid: str) -> PeerRecord:
    return PeerRecord(pid, "127.0.0.1:1", 1, 0, "h", ("a", "b"), 1.0, 3, True, False)


def sees(m: Membership, pid: str):
    async def check() -> bool:
        view = await m.live_records()
        return view is not None and pid in view
    return check


@pytest.mark.timeout(120)
async def test_a_live_peer_lost_to_routing_table_and_blacklist_is_found_again_by_reping() -> None:
    a = Membership(CFG, "run", lambda op, outcome: None)
    b = Membership(CFG, "run", lambda op, outcome: None)
    await a.start([])
    try:
        await b.start(await a.visible_maddrs())
        ida, idb = a.node.peer_id.to_base58(), b.node.peer_id.to_base58()

        async def beat() -> None:
            while True:
                await a.heartbeat(record(ida))
                await b.heartbeat(record(idb))
                await asyncio.sleep(0.3)

        beats = asyncio.create_task(beat())
        try:
            await eventually(sees(a, idb), 20, "b in a's view")
            # What a loaded box does: a few RPCs past their deadline remove each peer from the
            # other's routing table (hivemind drops a node after one failed call) and ban it from
            # lookups. Here the ban is a minute long, so only lifting it can bring b back in time.
            for m, other in ((a, idb), (b, ida)):
                node_id = m.node.protocol.routing_table.get(peer_id=PeerID.from_base58(other))
                assert node_id is not None
                del m.node.protocol.routing_table[node_id]
                m.node.blacklist.banned_peers.store(PeerID.from_base58(other), 9, get_dht_time() + 60)
                m.replicas.invalidate()  # the same missed deadlines failed its calls to the key's replicas

            async def b_gone() -> bool:
                view = await a.live_records()
                return view is not None and idb not in view

            await eventually(b_gone, 20, "the two peers apart (b's last record on a expired)")
            assert await a.reping([idb], []) == 1
            assert PeerID.from_base58(idb) not in a.node.blacklist
            await eventually(sees(a, idb), 10, "b back in a's view within 10 s of the reping (its ban had 60 s left)")
            # Not just once (b hands its stored records to a peer it meets anew): b stays in the
            # view past the records' TTL, so a's own lookups reach b again.
            for _ in range(12):
                await asyncio.sleep(0.3)
                assert await sees(a, idb)(), "b fell out of a's view again after the reping"
        finally:
            beats.cancel()
            await asyncio.gather(beats, return_exceptions=True)
    finally:
        await b.shutdown()
        await a.shutdown()


# A DHT node in its own process: SIGSTOP on the Python process alone leaves its p2pd accepting
# connections while nobody answers an RPC, which is what an overloaded bootstrap peer looks like.
NODE = """
import asyncio, json, sys
from peerd.core.config import DhtConfig
from peerd.net.membership import Membership
async def main():
    m = Membership(DhtConfig(host="127.0.0.1"), "run", lambda op, outcome: None)
    await m.start([])
    print(json.dumps(await m.visible_maddrs()), flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
"""


@pytest.mark.timeout(120)
async def test_join_waits_for_a_bootstrap_peer_that_answers_late() -> None:
    proc = subprocess.Popen([sys.executable, "-c", NODE], stdout=subprocess.PIPE, start_new_session=True)
    b = Membership(CFG, "run", lambda op, outcome: None)
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        maddrs = json.loads(line)
        proc.send_signal(signal.SIGSTOP)  # p2pd still accepts; no RPC is answered for 4 s
        try:
            joining = asyncio.create_task(b.start(maddrs))
            done, _ = await asyncio.wait({joining}, timeout=4.0)
            assert not done, f"the join ended while its only bootstrap peer was frozen: {joining.exception()!r}"
        finally:
            proc.send_signal(signal.SIGCONT)
        await asyncio.wait_for(joining, CFG.startup_timeout_s)
        assert b.node is not None and len(b.node.protocol.routing_table.uid_to_peer_id) >= 1
    finally:
        await b.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@pytest.mark.timeout(60)
async def test_join_through_dead_addresses_fails_with_a_clear_error_in_time() -> None:
    a = Membership(CFG, "run", lambda op, outcome: None)
    await a.start([])
    maddrs = await a.visible_maddrs()
    await a.shutdown()  # its address is now dead
    b = Membership(CFG.model_copy(update={"startup_timeout_s": 3.0}), "run", lambda op, outcome: None)
    with pytest.raises(DhtError, match="none of the .* bootstrap address"):
        await asyncio.wait_for(b.start(maddrs), 20)
    assert b.node is None  # p2pd stopped, nothing left running
