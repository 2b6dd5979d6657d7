"""Plans offered over gRPC verify exactly like plans read from the DHT; the inbox keeps only good ones."""

from __future__ import annotations

import asyncio

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core.clock import RoundClock
from peerd.core.config import DhtConfig, RoundConfig
from peerd.core.schedule import Candidate, RoundPlan, make_plan
from peerd.net.auth import derive_key
from peerd.net.membership import Membership
from peerd.net.records import Signer
from peerd.node.offers import PlanInbox
from peerd.proto.v1 import peer_pb2
from tests.fakes import ManualClock

KEY = derive_key("swarm-secret-0123456789", "run", "dht")


def member(mac_key: bytes = KEY) -> Membership:
    m = Membership(DhtConfig(), "run", lambda op, outcome: None, mac_key)
    m.signer = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), mac_key)
    return m


A, B, INSIDER, OUTSIDER = member(), member(), member(), member(derive_key("a-guess-at-the-secret", "run", "dht"))


def plan_by(m: Membership, r: int = 8) -> RoundPlan:
    assert m.signer is not None
    ids = [x.signer.peer_id for x in (A, B, INSIDER, OUTSIDER) if x.signer is not None]
    cands = [Candidate(p, f"127.0.0.1:{i}", 0, "h", True, False) for i, p in enumerate(ids)]
    plan = make_plan("run", r, 2, m.signer.peer_id, cands, 2.0, 0.9, now=2.0 * r)
    assert plan is not None
    return plan


def test_an_honest_offer_opens_to_the_same_plan() -> None:
    plan = plan_by(A)
    assert B.open_plan_offer(A.plan_offer(plan, ttl_s=10), 2) == plan


def test_forged_mislabelled_outsider_and_replayed_offers_are_refused() -> None:
    plan = plan_by(A)
    assert A.signer is not None and B.signer is not None
    # Relabelled as another publisher's (the transport also requires the caller to be the publisher).
    offer = A.plan_offer(plan, ttl_s=10)
    offer.publisher = B.signer.peer_id
    with pytest.raises(ValueError):
        B.open_plan_offer(offer, 2)
    # Replayed for another round.
    offer = A.plan_offer(plan, ttl_s=10)
    offer.round = 9
    with pytest.raises(ValueError):
        B.open_plan_offer(offer, 2)
    # An insider signs a plan that names A as its publisher.
    value = INSIDER.signer.seal("peerd/v1/run/plan.8", plan.to_record(), 1e12)  # type: ignore[union-attr]
    forged = peer_pb2.PlanOffer(round=8, publisher=A.signer.peer_id, sealed=msgpack.packb(value, use_bin_type=True))
    with pytest.raises(ValueError):
        B.open_plan_offer(forged, 2)
    # An outsider's own plan lacks the swarm MAC.
    with pytest.raises(ValueError):
        B.open_plan_offer(OUTSIDER.plan_offer(plan_by(OUTSIDER), ttl_s=10), 2)
    # A plan for another layout (3 fragments here, 2 in the offer's swarm).
    with pytest.raises(ValueError):
        B.open_plan_offer(A.plan_offer(plan, ttl_s=10), 3)
    # An expired seal.
    with pytest.raises(ValueError):
        B.open_plan_offer(A.plan_offer(plan, ttl_s=-1), 2)


@given(st.binary(max_size=2048), st.integers(0, 2**40), st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_garbage_offers_raise_value_error_only(blob: bytes, r: int, publisher: str) -> None:
    with pytest.raises(ValueError):
        B.open_plan_offer(peer_pb2.PlanOffer(round=r, publisher=publisher, sealed=blob), 2)


def test_inbox_keeps_verified_offers_of_nearby_rounds_and_counts_the_rest() -> None:
    refused: list[str] = []
    rc = RoundClock.from_config(RoundConfig(round_s=2.0, settle_s=0.1, plan_slot_s=0.1), ManualClock(16.5))  # round 8
    inbox = PlanInbox(B, rc, 2, refused.append)
    plan = plan_by(A, 8)

    async def main() -> None:
        assert await inbox.offer_plan(A.plan_offer(plan, ttl_s=10))
        assert inbox.offered(8) == [plan]
        # A later offer from the same publisher replaces, never adds.
        assert await inbox.offer_plan(A.plan_offer(plan, ttl_s=10))
        assert inbox.offered(8) == [plan]
        assert not await inbox.offer_plan(A.plan_offer(plan_by(A, 3), ttl_s=10))  # long past
        bad = A.plan_offer(plan, ttl_s=10)
        bad.sealed = bad.sealed[:-5]
        before = B.invalid_records
        assert not await inbox.offer_plan(bad)
        assert B.invalid_records == before + 1
        await asyncio.wait_for(inbox.wait(8, 0.01), 1)  # bounded even with no new offer

    asyncio.run(main())
    assert refused == ["stale_round", "invalid"]
