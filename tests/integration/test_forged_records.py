"""Forged, replayed and outsider DHT records are refused by real DHT nodes; honest views survive.

Four in-process DHT nodes on 127.0.0.1: two honest members, an insider that holds the swarm
secret but runs hostile software (its node stores anything: validator removed), and an outsider
without the secret. Honest nodes refuse the bad records at store time and drop them on read.
"""

from __future__ import annotations

import time

import pytest
from hivemind.dht.routing import DHTID

from peerd.core.config import DhtConfig
from peerd.core.schedule import Candidate, make_plan
from peerd.net.auth import derive_key
from peerd.net.membership import Membership
from peerd.net.peer_record import PeerRecord
from peerd.net.records import SealValidator, Signer
from tests.conftest import eventually

CFG = DhtConfig(host="127.0.0.1", heartbeat_s=0.5, ttl_s=1.5, op_timeout_s=5)
DHT_KEY = derive_key("swarm-secret-0123456789", "run", "dht")
PEERS = "peerd/v1/run/peers"


def record(pid: str, endpoint: str = "127.0.0.1:1") -> PeerRecord:
    return PeerRecord(pid, endpoint, 1, 0, "h", ("a", "b"), 1.0, 3, True, False)


@pytest.mark.timeout(180)
async def test_forged_replayed_and_outsider_records_are_refused() -> None:
    a = Membership(CFG, "run", lambda op, outcome: None, DHT_KEY)
    b = Membership(CFG, "run", lambda op, outcome: None, DHT_KEY)
    insider = Membership(CFG, "run", lambda op, outcome: None, DHT_KEY)
    outsider = Membership(CFG, "run", lambda op, outcome: None, derive_key("a-guess-at-the-secret", "run", "dht"))
    await a.start([])
    nodes = [a]
    try:
        for m in (b, insider, outsider):
            await m.start(await a.visible_maddrs())
            nodes.append(m)
        ida, idb, idi, ido = (m.signer.peer_id for m in nodes)
        for m in nodes:
            await m.heartbeat(record(m.signer.peer_id))

        async def honest_view():
            view = await a.live_records()
            return view if view is not None and set(view) == {ida, idb, idi} else None

        view = await eventually(honest_view, 20, "a's view of the three swarm members")
        assert ido not in view  # the outsider's self-signed record lacks the swarm MAC
        # Hostile software: the insider's node stores whatever it is given, unchecked.
        insider.node.protocol.record_validator = None
        signer: Signer = insider.signer
        far = time.time() + 3600
        # 1. A record for b's subkey, signed with the insider's own key, meant to outlive b's.
        forged = signer.seal(PEERS, record(idb, "6.6.6.6:1").to_value(), far)
        forged["pk"] = b.signer.public_der  # claiming b's key does not help: the signature is not b's
        await insider.node.store(PEERS, forged, far, subkey=idb)
        await insider.node.store(PEERS, signer.seal(PEERS, record(idb, "6.6.6.6:1").to_value(), far), far, subkey=idb)
        # 2. b's genuine record replayed with a longer lifetime.
        genuine = await insider.node.get(PEERS, latest=True)
        value = genuine.value[idb].value
        await insider.node.store(PEERS, value, far, subkey=idb)
        # 3. A plan that claims to be a's, signed by the insider.
        cands = [Candidate(p, f"127.0.0.1:{i}", 0, "h", True, False) for i, p in enumerate((ida, idb, idi))]
        plan = make_plan("run", 8, 2, ida, cands, 2.0, 0.9, now=16.0)
        key8 = "peerd/v1/run/plan.8"
        await insider.node.store(key8, signer.seal(key8, plan.to_record(), far), far, subkey=ida)
        # 4. The outsider tries again with a fresh record of its own.
        await outsider.heartbeat(record(ido))

        # A hostile node also serves whatever it likes from its own storage, replica or not (the
        # stores above land on the key's nearest nodes only, which need not include it).
        ser = insider.node.protocol.serializer
        # Subkeys are held deserialized (as hivemind's rpc_store keeps them), values serialized.
        insider.node.protocol.storage.store_subkey(DHTID.generate(source=PEERS), idb, ser.dumps(value), far)
        # The attack is real: the hostile node holds a forged b record that outlives b's own.
        held = insider.node.protocol.storage.get(DHTID.generate(source=PEERS))
        assert held is not None and held.value.get(idb).expiration_time == far
        before = a.invalid_records
        for _ in range(5):  # several reads, while b keeps heartbeating honestly
            await b.heartbeat(record(idb))
            view = await a.live_records()
            assert view is not None and view[idb].endpoint == "127.0.0.1:1" and ido not in view
            assert await a.read_plans(8, 2) == []
        # The insider may still publish its own plan: membership is not the signature's job.
        own = make_plan("run", 10, 2, idi, cands, 2.0, 0.9, now=20.0)
        insider.node.protocol.record_validator = SealValidator(DHT_KEY)
        # (store's return reflects whichever replica answered last, possibly the outsider's refusal)
        await insider.publish_plan(own, ttl_s=30)
        assert await eventually(lambda: a.read_plans(10, 2), 10, "the insider's own plan") == [own]
        assert a.invalid_records + b.invalid_records > before  # refusals are counted
    finally:
        for m in reversed(nodes):
            await m.shutdown()
