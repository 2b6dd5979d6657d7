"""An exchange in doubt settled over real gRPC: the outcome question and answer ride PullShard.

The simulation (tests/sim/test_gossip_mass.py) drives the protocol; this checks the wire: a
``PullRequest`` for ``OUTCOME_SHARD`` reaches the partner's mixer through the real servicer, its
answer (a gossip header, no payload) passes the real client's header and payload checks, and the
asking mixer applies exactly the partner's opposite change.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import torch

from peerd.core.bridge import Bridge
from peerd.core.clock import SYSTEM, RoundClock
from peerd.core.config import load_config
from peerd.core.errors import Counters
from peerd.core.fragments import FragmentLayout
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.mixing.gossip import mixing
from peerd.mixing.gossip.doubt import COMMITTED, OUTCOME_SHARD, Doubt, OutcomeSink
from peerd.mixing.gossip.round import GossipMixer
from peerd.net.transport import Transport
from peerd.net.view import SwarmView
from peerd.proto.v1 import peer_pb2
from tests.fakes import NoMembership

SHAPES = [("a.w", (8, 4)), ("b.w", (6,))]


@dataclass
class _Plan:
    """What an exchange in doubt keeps of its round's plan."""

    round: int
    fragment: int
    endpoints: tuple[str, ...]
    members: tuple[str, ...]
    plan_id: str = "plan"
    topology: str = "random"

    def index_of(self, peer: str) -> int:
        return self.members.index(peer)


def _mixer(peer_id: str, transport: Transport, seed: int) -> GossipMixer:
    cfg = load_config(None, ["transport.host=127.0.0.1", "round.round_s=30", "mixing.mode=gossip"])
    layout = FragmentLayout.build(SHAPES, 2)
    g = torch.Generator().manual_seed(seed)
    state = OuterState(layout, [torch.randn(n, generator=g) for n in layout.numels])
    bridge = Bridge()
    view = SwarmView(peer_id, "127.0.0.1:0", 1, NoMembership(), transport, state,  # type: ignore[arg-type]
                     lambda: bridge.stats, SYSTEM, cfg.dht.heartbeat_s, cfg.dht.ttl_s, [], lambda: None,
                     lambda live, invalid: None)
    return GossipMixer(cfg, peer_id, state, bridge, transport, view, RoundClock.from_config(cfg.round),
                       Metrics(), Counters())


@pytest.fixture
async def partner() -> AsyncIterator[tuple[GossipMixer, str]]:
    cfg = load_config(None, ["transport.host=127.0.0.1"])
    transport = Transport(cfg.transport, lambda d, n: None, lambda reason: None)
    mixer = _mixer("partner", transport, 1)
    port = await transport.start(mixer)
    yield mixer, f"127.0.0.1:{port}"
    await transport.stop(0)


@pytest.mark.parametrize("committed", [True, False])
async def test_the_side_in_doubt_applies_exactly_what_its_partner_committed(
        partner: tuple[GossipMixer, str], committed: bool) -> None:
    p, endpoint = partner
    cfg = load_config(None, ["transport.host=127.0.0.1"])
    x = _mixer("asker", Transport(cfg.transport, lambda d, n: None, lambda reason: None), 2)
    r = x.rc.index() - 1
    plan = _Plan(r, 1, ("127.0.0.1:1", endpoint), ("asker", "partner"))
    f = plan.fragment
    u_x, u_p = torch.randn(x.z[f].numel(), dtype=torch.float64), torch.randn(x.z[f].numel(), dtype=torch.float64)
    w_x, w_p = 0.5, 0.25
    x.w[f] = w_x
    x.z[f] = x.z[f] * w_x
    z_before = x.z[f].clone()
    # The partner's side of the exchange, as its commit left it (or not).
    p.doubts.decide(r, "asker", committed)
    x.doubts.doubts[(r, "partner")] = Doubt(plan, "partner", u_x, w_x, u_p, w_p)  # type: ignore[arg-type]

    request = peer_pb2.PullRequest(run_id=cfg.run_id, round=r, plan_id="plan", requester="asker",
                                   shard=OUTCOME_SHARD)
    t0 = time.monotonic()
    await x.network.pull_shard(endpoint, request, OutcomeSink(x.doubts, "partner"), 5.0)
    assert time.monotonic() - t0 < 5.0
    assert (r, "partner") not in x.doubts.doubts and x.doubts.decided[(r, "partner")] is committed
    if committed:
        d = mixing.pair_delta(u_x, w_x, u_p, w_p, x.anchors[f])
        assert torch.equal(x.z[f], z_before + d)  # exactly minus the partner's -d
        assert x.w[f] == w_x + (w_p - w_x) * 0.5 == (w_x + w_p) * 0.5
        assert x.doubts.resolved_late == 1
    else:
        assert torch.equal(x.z[f], z_before) and x.w[f] == w_x


async def test_questions_about_exchanges_never_made_are_refused_once_the_ledger_is_full(
        partner: tuple[GossipMixer, str]) -> None:
    from peerd.mixing.gossip.doubt import MAX_DECIDED
    from peerd.net.transport import Rejected

    p, _ = partner
    r = p.rc.index()
    # Each question about an unknown exchange is recorded as aborted (so it can never commit later);
    # the caller names the requester, so a flood of names must stop at the cap, not grow memory.
    p.doubts.decided = {(r, f"x{i}"): False for i in range(MAX_DECIDED)}
    request = peer_pb2.PullRequest(run_id=p.cfg.run_id, round=r, plan_id="plan", requester="stranger",
                                   shard=OUTCOME_SHARD)
    with pytest.raises(Rejected, match="too many"):
        await p.doubts.answer(request)
    assert len(p.doubts.decided) == MAX_DECIDED
    known = peer_pb2.PullRequest(run_id=p.cfg.run_id, round=r, plan_id="plan", requester="x7", shard=OUTCOME_SHARD)
    header, payload = await p.doubts.answer(known)  # an outcome already recorded is still answered
    assert header.codec.endswith("aborted") and payload == b""


async def test_an_outcome_is_taken_only_as_the_answer_of_the_partner_asked() -> None:
    from peerd.net.transport import Rejected

    cfg = load_config(None, ["transport.host=127.0.0.1"])
    x = _mixer("asker", Transport(cfg.transport, lambda d, n: None, lambda reason: None), 2)
    r = x.rc.index() - 1
    plan = _Plan(r, 1, ("127.0.0.1:1", "127.0.0.1:2"), ("asker", "partner"))
    u = torch.zeros(x.z[1].numel(), dtype=torch.float64)
    x.doubts.doubts[(r, "partner")] = Doubt(plan, "partner", u, 0.5, u, 0.25)  # type: ignore[arg-type]
    w_before = x.w[1]

    def answer(sender: str) -> peer_pb2.ShardHeader:
        return peer_pb2.ShardHeader(run_id=cfg.run_id, round=r, sender=sender, plan_id="plan",
                                    kind=peer_pb2.PAYLOAD_KIND_GOSSIP, shard=OUTCOME_SHARD, numel=0, codec=COMMITTED)

    with pytest.raises(Rejected, match="only taken as an answer"):  # pushed to this peer's server, unasked
        await x.admit(answer("partner"))
    with pytest.raises(Rejected, match="not from the partner asked"):  # the answer of someone else
        await OutcomeSink(x.doubts, "partner").admit(answer("mallory"))
    assert (r, "partner") in x.doubts.doubts and x.w[1] == w_before  # nothing applied

