"""Stores to one DHT key straight at its replicas: a lookup now and then, one record per store between.

``DHTNode.store`` looks the key up before every store, and every node on the way that holds the
key answers with its whole dictionary: each heartbeat moved three copies of all N records to
write one (16 daemons: about 100 kB sent per peer per second, most of it this). Here a lookup
finds the key's nearest nodes at most every ``REPLICAS_FRESH_S`` and the stores between send one
record to each of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.p2p import PeerID

# Nodes that store each key. Every key is rewritten each heartbeat or round, so three copies
# outlive any crash that matters, and each read or store (whose lookup returns every copy it
# passes) moves three copies of the run's records instead of hivemind's default five.
NUM_REPLICAS = 3
# A lookup finds the replicas at most this often (sooner after a replica failed a store): a
# swarm whose nodes come and go moves the key's nearest nodes, and a record stored at nodes that
# are no longer the nearest is read only while lookups still pass them. Readers' lookups are
# unchanged.
REPLICAS_FRESH_S = 30.0
# ``bounded(op, awaitable)``: the awaitable's result, or ``failed`` when it timed out or raised
# (counted and logged under ``op`` by the caller).
Bounded = Callable[[str, Awaitable[Any]], Awaitable[Any]]


class ReplicaStore:
    """Writes subkeys of ``key`` at the key's ``NUM_REPLICAS`` nearest nodes."""

    def __init__(self, node: DHTNode, key: str, bounded: Bounded, failed: object) -> None:
        self.node, self.key, self.key_id = node, key, DHTID.generate(source=key)
        self._bounded, self._failed = bounded, failed
        self.replicas: dict[DHTID, PeerID] = {}  # the key's nearest nodes, nearest first
        self.found_at = -1e9  # when a lookup last found them (monotonic)
        self._table: set[DHTID] = set()  # the routing table's nodes when the replicas were looked up

    def invalidate(self) -> None:
        """Look the replicas up again at the next store."""
        self.found_at = -1e9

    def known(self) -> bool:
        """Whether the replicas found by the last lookup still stand.

        Not after ``REPLICAS_FRESH_S``, nor once the routing table holds a node it did not hold
        then that may be one (fewer than ``NUM_REPLICAS`` were found, or it is nearer the key
        than one of them): a node that joined may be nearer the key, and one that was out of
        reach (routing tables apart on a loaded box) a replica that the lookup could not find.
        """
        if not self.replicas or time.monotonic() - self.found_at > REPLICAS_FRESH_S:
            return False
        new = set(self.node.protocol.routing_table.uid_to_peer_id) - self._table
        if not new:
            return True
        # Only a node nearer the key than the farthest replica can take a replica's place; the
        # others (most often a node back after a missed deadline) change nothing.
        farthest = max(self.key_id.xor_distance(n) for n in self.replicas)
        if len(self.replicas) >= NUM_REPLICAS and all(self.key_id.xor_distance(n) > farthest for n in new):
            self._table |= new
            return True
        return False

    async def store(self, value: Any, expiration: float, subkey: str) -> bool:
        """Store ``value`` under ``subkey`` at the replicas; True when at least one took it.

        A replica that gives no answer makes the next store look the key up again (hivemind
        drops it from the routing table too); a failed lookup falls back to hivemind's store.
        """
        node, key_id = self.node, self.key_id
        if not self.known():
            table = set(node.protocol.routing_table.uid_to_peer_id)
            found = await self._bounded("lookup", node.find_nearest_nodes([key_id], k_nearest=NUM_REPLICAS))
            nearest = found.get(key_id) if isinstance(found, dict) else None
            if not nearest:
                self.replicas = {}
                return await self._bounded("store", node.store(self.key, value, expiration, subkey=subkey)) is True
            self.replicas, self.found_at, self._table = dict(nearest), time.monotonic(), table
        proto = node.protocol
        subkey_bytes, value_bytes = proto.serializer.dumps(subkey), proto.serializer.dumps(value)

        async def one(node_id: DHTID, peer: PeerID) -> bool | None:
            """Stored; False: refused (it holds a later record of this subkey: two in flight); None: no answer."""
            if node_id == node.node_id:  # this node is a replica: store locally, checked as a remote one would
                rec = DHTRecord(key_id.to_bytes(), subkey_bytes, value_bytes, expiration)
                return bool(proto.record_validator is None or proto.record_validator.validate(rec)) and bool(
                    proto.storage.store(key_id, value_bytes, expiration, subkey=subkey))
            ok = await proto.call_store(peer, [key_id], [value_bytes], expiration, subkeys=[subkey])
            return None if not ok else bool(ok[0])

        results = await self._bounded("store", asyncio.gather(*(one(n, p) for n, p in self.replicas.items())))
        if results is self._failed or any(x is None for x in results):
            self.invalidate()
        return results is not self._failed and any(x is not None for x in results)
