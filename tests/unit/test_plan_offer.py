"""Plans offered over gRPC verify exactly like plans read from the DHT (pure: no node is started)."""

from __future__ import annotations

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.auth import derive_key
from peerd.config import DhtConfig
from peerd.membership import Membership
from peerd.proto.v1 import peer_pb2
from peerd.records import Signer
from peerd.schedule import Candidate, make_plan

KEY = derive_key("swarm-secret-0123456789", "run", "dht")


def member(mac_key: bytes = KEY) -> Membership:
    m = Membership(DhtConfig(), "run", lambda op, outcome: None, mac_key)
    m.signer = Signer(rsa.generate_private_key(public_exponent=65537, key_size=2048), mac_key)
    return m


A, B, INSIDER, OUTSIDER = member(), member(), member(), member(derive_key("a-guess-at-the-secret", "run", "dht"))


def plan_by(m: Membership, r: int = 8):
    ids = [x.signer.peer_id for x in (A, B, INSIDER, OUTSIDER)]
    cands = [Candidate(p, f"127.0.0.1:{i}", 0, "h", True, False) for i, p in enumerate(ids)]
    plan = make_plan("run", r, 2, m.signer.peer_id, cands, 2.0, 0.9, now=2.0 * r)
    assert plan is not None
    return plan


def test_an_honest_offer_opens_to_the_same_plan() -> None:
    plan = plan_by(A)
    offer = A.plan_offer(plan, A.seal_plan(plan, ttl_s=10))
    assert B.open_offer(offer, 2) == plan


def test_forged_mislabelled_outsider_and_replayed_offers_are_refused() -> None:
    plan = plan_by(A)
    sealed = A.seal_plan(plan, ttl_s=10)
    # Relabelled as another publisher's (the transport also requires the caller to be the publisher).
    offer = A.plan_offer(plan, sealed)
    offer.publisher = B.signer.peer_id
    with pytest.raises(ValueError):
        B.open_offer(offer, 2)
    # Replayed for another round.
    offer = A.plan_offer(plan, sealed)
    offer.round = 9
    with pytest.raises(ValueError):
        B.open_offer(offer, 2)
    # An insider signs a plan that names A as its publisher.
    value = INSIDER.signer.seal("peerd/v1/run/plan.8", plan.to_record(), 1e12)
    forged = peer_pb2.PlanOffer(round=8, publisher=A.signer.peer_id, sealed=msgpack.packb(value, use_bin_type=True))
    with pytest.raises(ValueError):
        B.open_offer(forged, 2)
    # An outsider's own plan lacks the swarm MAC.
    own = plan_by(OUTSIDER)
    with pytest.raises(ValueError):
        B.open_offer(OUTSIDER.plan_offer(own, OUTSIDER.seal_plan(own, ttl_s=10)), 2)
    # A plan for another layout (3 fragments here, 2 in the offer's swarm).
    with pytest.raises(ValueError):
        B.open_offer(A.plan_offer(plan, sealed), 3)


@given(st.binary(max_size=2048), st.integers(0, 2**40), st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_garbage_offers_raise_value_error_only(blob: bytes, r: int, publisher: str) -> None:
    with pytest.raises(ValueError):
        B.open_offer(peer_pb2.PlanOffer(round=r, publisher=publisher, sealed=blob), 2)
