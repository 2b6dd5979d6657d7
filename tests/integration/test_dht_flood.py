"""An outsider's DHT node floods a run's keys with forged records; members refuse, count and read on.

Three DHT nodes on 127.0.0.1: a victim and an honest member (with a swarm secret) and an outsider,
a bare hivemind node without a validator, so it keeps every forged record and serves them back to
anyone who asks. It stores forged records under the run's peers key (many subkeys), a plan key and
the runs directory (sealed without the MAC, so only the signature guards it), including keys with
a huge public exponent that would make each signature check cost milliseconds. Checked: members
refuse every one at store time and count it, none appears in any read, the honest view survives;
and the cheap checks refuse the expensive keys before any exponentiation runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from hivemind.dht.node import DHTNode
from hivemind.utils import get_dht_time

from bench.dht_flood import fake_key, forged  # the bench's forgeries: one definition of the attack
from peerd.core.config import DhtConfig
from peerd.net import records
from peerd.net.auth import derive_key
from peerd.net.membership import MAX_PEER_SUBKEYS, Membership
from peerd.net.peer_record import PeerRecord
from peerd.net.records import RUNS_KEY, RecordError, open_sealed
from tests.conftest import eventually

CFG = DhtConfig(host="127.0.0.1", heartbeat_s=0.5, ttl_s=30, op_timeout_s=10)
RUN = "flood"
PEERS = f"peerd/v1/{RUN}/peers"
N = 600


def record(pid: str) -> PeerRecord:
    return PeerRecord(pid, "127.0.0.1:1", 1, 0, "h", ("a",), 1.0, 0, True, False)


async def store_forged(node: DHTNode, key: str, kind: str, n: int) -> None:
    exp = get_dht_time() + 600
    for start in range(0, n, 200):
        items = [forged(kind, i, exp) for i in range(start, min(n, start + 200))]
        await asyncio.wait_for(node.store_many([key] * len(items), [v for _, v in items], exp,
                                               subkeys=[s for s, _ in items]), 60)


@pytest.mark.timeout(240)
async def test_outsider_flood_is_refused_counted_and_never_read() -> None:
    mac = derive_key("flood-secret-0123456789", RUN, "dht")
    victim, honest = Membership(CFG, RUN, lambda *_: None, mac), Membership(CFG, RUN, lambda *_: None, mac)
    outsider: DHTNode | None = None
    await victim.start([])
    try:
        await honest.start(await victim.visible_maddrs())
        outsider = await asyncio.wait_for(DHTNode.create(
            initial_peers=await victim.visible_maddrs(), host_maddrs=["/ip4/127.0.0.1/tcp/0"],
            record_validator=None, wait_timeout=5), 60)
        ids = {victim.signer.peer_id, honest.signer.peer_id}
        for m in (victim, honest):
            assert await m.heartbeat(record(m.signer.peer_id))

        async def honest_view():
            view = await victim.live_records()
            return view if view is not None and set(view) == ids else None

        await eventually(honest_view, 20, "the two members in the victim's view")
        before = victim.invalid_records
        await store_forged(outsider, PEERS, "garbage", N)
        await store_forged(outsider, PEERS, "near_valid", N)
        await store_forged(outsider, f"peerd/v1/{RUN}/plan.5", "near_valid", N)
        await store_forged(outsider, RUNS_KEY, "heavy_e", N)
        # The attack is real: the outsider holds its forgeries and serves them to whoever asks.
        assert len((await outsider.get(PEERS, latest=True)).value) >= 2 * N
        # Refused at store time by the victim's validator, every one counted.
        assert victim.invalid_records - before >= 4 * N
        for _ in range(3):  # reads keep returning exactly the honest members, the flood still held out there
            for m in (victim, honest):
                await m.heartbeat(record(m.signer.peer_id))
            assert await honest_view() is not None
            assert await victim.read_plans(5, 2) == []
            assert await victim.other_runs() is False
        # The members' own storage never took a forged record.
        for m in (victim, honest):
            held = await m.node.get(PEERS, latest=True)  # local storage first, then the network
            assert held is not None and set(held.value) <= ids
    finally:
        if outsider is not None:
            try:
                await asyncio.wait_for(outsider.shutdown(), 15)
            except (TimeoutError, Exception):  # noqa: BLE001 - a hung p2pd is killed instead
                child = getattr(outsider.p2p, "_child", None)
                if child is not None and child.returncode is None:
                    child.kill()
        await honest.shutdown()
        await victim.shutdown()


def test_expensive_keys_are_refused_by_the_cheap_checks() -> None:
    """A huge exponent or a signature of the wrong length is refused for that reason, not by a (slow) verify."""
    exp = time.time() + 60
    heavy_pk, n = fake_key(None)
    odd_sig_pk, _ = fake_key(65537)
    cases = {
        "exponent": (heavy_pk, (n // 3).to_bytes(256, "big")),
        "signature length": (odd_sig_pk, secrets.token_bytes(200)),
    }
    for reason, (pk, sig) in cases.items():
        value = {"s": 1, "body": b"\x80", "exp": exp, "pk": pk, "sig": sig, "mac": b""}
        with pytest.raises(RecordError, match=reason):
            open_sealed(PEERS, records.peer_id_of(pk), value, None, None)


def test_reads_open_a_bounded_number_of_subkeys_honest_lifetimes_first() -> None:
    m = Membership(CFG, RUN, lambda *_: None)
    now = get_dht_time()

    class Item:
        def __init__(self, exp: float) -> None:
            self.expiration_time, self.value = exp, None

    flood = {f"f{i}": Item(now + 10**6) for i in range(MAX_PEER_SUBKEYS + 50)}  # lifetimes no peer writes
    value = {**flood, "honest": Item(now + CFG.ttl_s)}
    kept = m._bounded_items(value, MAX_PEER_SUBKEYS)
    assert len(kept) == MAX_PEER_SUBKEYS and kept[0][0] == "honest"
    assert m.invalid_records == len(value) - MAX_PEER_SUBKEYS
