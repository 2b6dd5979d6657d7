"""Bytes of each kind of DHT operation: ``python -m bench.dht_cost --nodes 16``.

Starts ``--nodes`` real in-process DHT nodes (peerd's ``Membership``, hivemind and p2pd) on
127.0.0.1, lets each store a typical heartbeat record, then has every node do one operation of
each kind in turn and counts what the serving side answers (hivemind's ``rpc_find`` responses:
values and neighbour lists) and what stores carry (``rpc_store`` requests), as protobuf bytes,
before libp2p's framing and encryption. It explains ``bench.control_plane``'s totals: which
operation moves what.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from typing import Any

import msgpack
from hivemind.dht.protocol import DHTProtocol
from hivemind.p2p import P2PContext
from hivemind.proto import dht_pb2

from peerd.core.config import DhtConfig
from peerd.net.membership import Membership
from peerd.net.peer_record import PeerRecord

CFG = DhtConfig(host="127.0.0.1", heartbeat_s=1.0, ttl_s=4.0, op_timeout_s=10)
_stats: collections.Counter[str] = collections.Counter()


def _install_counters() -> None:
    """Count at the serving side of every node in this process (before any node starts)."""
    find, store = DHTProtocol.rpc_find, DHTProtocol.rpc_store

    async def rpc_find(self: DHTProtocol, req: dht_pb2.FindRequest, ctx: P2PContext) -> dht_pb2.FindResponse:
        resp = await find(self, req, ctx)
        _stats["answers"] += 1
        _stats["answer_bytes"] += resp.ByteSize()
        for item in resp.results:
            _stats["value_bytes"] += len(item.value)
            _stats["neighbour_bytes"] += sum(map(len, item.nearest_node_ids)) + sum(map(len, item.nearest_peer_ids))
        return resp

    async def rpc_store(self: DHTProtocol, req: dht_pb2.StoreRequest, ctx: P2PContext) -> dht_pb2.StoreResponse:
        _stats["stores"] += 1
        _stats["store_bytes"] += req.ByteSize()
        return await store(self, req, ctx)

    DHTProtocol.rpc_find, DHTProtocol.rpc_store = rpc_find, rpc_store  # type: ignore[method-assign]


def _record(pid: str, revision: int) -> PeerRecord:
    """A heartbeat as a daemon writes it (two fragments, one DHT address)."""
    return PeerRecord(pid, "198.18.0.5:40000", 1, revision, "ab" * 16, ("cd" * 16, "ef" * 16), 1.0, 3, True, False,
                      dht_maddrs=(f"/ip4/198.18.0.5/tcp/40001/p2p/{pid}",))


async def measure(n: int) -> dict[str, Any]:
    """Per operation kind, the mean bytes one operation moved among ``n`` nodes."""
    _install_counters()
    nodes = [Membership(CFG, "dht-cost", lambda op, outcome: None) for _ in range(n)]
    out: dict[str, Any] = {"nodes": n}
    try:
        await nodes[0].start([])
        for m in nodes[1:]:
            await m.start(await nodes[0].visible_maddrs())
        ids = [m.node.peer_id.to_base58() for m in nodes]  # type: ignore[union-attr]
        for m, pid in zip(nodes, ids, strict=True):  # the first heartbeat looks the replicas up
            await m.heartbeat(_record(pid, 0))

        def hivemind_store(m: Membership, pid: str) -> Any:  # the path heartbeats took before (a lookup first)
            assert m.node is not None and m.signer is not None
            exp = time.time() + CFG.ttl_s
            sealed = m.signer.seal(m._peers_key, _record(pid, 2).to_value(), exp)
            # Bounded like Membership's own calls: hivemind's store has no deadline of its own.
            return asyncio.wait_for(m.node.store(m._peers_key, sealed, exp, subkey=pid), CFG.op_timeout_s)

        ops = {"heartbeat": lambda m, pid: m.heartbeat(_record(pid, 1)),
               "heartbeat_by_hivemind_store": hivemind_store,
               "view_read": lambda m, pid: m.live_records(),
               "plan_read_none_published": lambda m, pid: m.read_plans(5, 2)}
        for name, op in ops.items():
            _stats.clear()
            for m, pid in zip(nodes, ids, strict=True):
                await op(m, pid)
            out[name] = {k: round(v / n) for k, v in sorted(_stats.items())}
        assert nodes[0].signer is not None
        sealed = nodes[0].signer.seal("k", _record(ids[0], 1).to_value(), time.time() + 4)
        out["sealed_record_bytes"] = len(msgpack.packb(sealed, use_bin_type=True))
    finally:
        for m in nodes:
            await m.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    """Measure and print the JSON."""
    ap = argparse.ArgumentParser(prog="python -m bench.dht_cost", description=__doc__)
    ap.add_argument("--nodes", type=int, default=16)
    a = ap.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.nodes)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
