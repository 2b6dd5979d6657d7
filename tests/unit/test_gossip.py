"""Gossip mixing (pure): pairings, exact mass conservation under every codec, hypercube averaging, A2CiD2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peerd.core import codec
from peerd.mixing.gossip import a2cid2, mixing, topology

CODECS = ("fp32", "bf16", "int8", "int4")


@given(topo=st.sampled_from(topology.PAIRWISE), n=st.integers(1, 70), r=st.integers(0, 10_000))
def test_partners_form_a_matching(topo: str, n: int, r: int) -> None:
    partner = topology.partner_ranks(topo, "run", r, n)
    assert len(partner) == n
    for i, j in enumerate(partner):
        assert j == -1 or (j != i and partner[j] == i)  # an involution without fixed points
    if topo in ("random", "ring") and n % 2 == 0 and n >= 2:
        assert -1 not in partner  # perfect matching on even n


def test_pairs_are_derived_from_ids_alone() -> None:
    ids = [f"peer{i}" for i in range(13)]
    a = topology.pairs_for("random", "run", 7, ids)
    assert a == topology.pairs_for("random", "run", 7, list(reversed(ids)))
    assert a != topology.pairs_for("random", "run", 8, ids)  # a new matching every round
    assert all(a[b] == p for p, b in a.items())


def _exchange_all(z: torch.Tensor, w: torch.Tensor, partner: list[int], anchor: torch.Tensor, codec: str,
                  bs: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """One round the way the daemon runs it: per peer encode, then per pair both sides' updates."""
    msgs = [mixing.encode(z[i], float(w[i]), anchor, codec, bs)[1] for i in range(len(partner))]
    z2, w2 = z.clone(), w.clone()
    for i, j in enumerate(partner):
        if j < 0:
            continue
        d_i = mixing.pair_delta(msgs[i], float(w[i]), msgs[j], float(w[j]), anchor)
        d_j = mixing.pair_delta(msgs[j], float(w[j]), msgs[i], float(w[i]), anchor)
        assert torch.equal(d_j, -d_i)  # complementary to the last bit
        z2[i] = z[i] + d_i
        w2[i] = mixing.pair_weight(float(w[i]), float(w[j]))
        assert w2[i] == mixing.pair_weight(float(w[j]), float(w[i]))
    return z2, w2


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 40), codec=st.sampled_from(CODECS),
       topo=st.sampled_from(topology.PAIRWISE), rounds=st.integers(1, 8), seed=st.integers(0, 2**31))
def test_every_exchange_conserves_mass(n: int, d: int, codec: str, topo: str, rounds: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(n, 1, generator=g, dtype=torch.float64) + 0.1)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * w * 3
    anchor = torch.randn(d, generator=g)
    mass0, weight0 = z.sum(0), float(w.sum())
    for r in range(rounds):
        z, w = _exchange_all(z, w, topology.partner_ranks(topo, "x", r, n), anchor, codec)
    drift = float((z.sum(0) - mass0).abs().max()) / max(1.0, float(mass0.abs().max()))
    assert drift < 1e-13  # float64 rounding only, whatever the codec's error
    assert math.isclose(float(w.sum()), weight0, rel_tol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_hypercube_averages_exactly_in_log2_n_rounds(k: int) -> None:
    n = 1 << k
    z = torch.arange(n * 3, dtype=torch.float64).reshape(n, 3) * 7 % 11  # integers: halvings are exact
    w = torch.ones(n, 1, dtype=torch.float64)
    mean = z.mean(0)
    for r in range(k):
        z, w = _exchange_all(z, w, topology.partner_ranks("hypercube", "run", r, n), torch.zeros(3), "fp32")
    assert torch.equal(z, mean.expand(n, 3))


def test_consensus_floor_is_a_fraction_of_the_step_on_the_deviation_from_the_anchor() -> None:
    g = torch.Generator().manual_seed(0)
    n, d = 8, 512
    anchor = torch.randn(d, generator=g) * 3
    start = anchor.double() + torch.randn(n, d, generator=g, dtype=torch.float64) * 0.1
    floors = {}
    for name, ref in (("anchored", anchor), ("no_anchor", torch.zeros(d))):
        z, w = start.clone(), torch.ones(n, 1, dtype=torch.float64)
        for r in range(60):
            z, w = _exchange_all(z, w, topology.partner_ranks("hypercube", "run", r, n), ref, "int4", 64)
        floors[name] = mixing.consensus_distance(z, w) / math.sqrt(d)
    step = float(codec.quantization_step((start[0] - anchor.double()).float(), "int4", 64).mean())
    # Implicit error feedback: residuals stay home and ride in the next message, so the
    # disagreement ends well below the codec's half step on theta - A ...
    assert floors["anchored"] < step / 4
    # ... and the anchor is what makes that step small (raw parameters are 30x larger here).
    assert floors["no_anchor"] > 10 * floors["anchored"]


def test_churn_moves_mass_without_creating_or_losing_it() -> None:
    z, w = torch.randn(5, dtype=torch.float64), 0.75
    keep, w_keep = mixing.split(z, w)
    assert torch.equal(keep + keep, z) and w_keep * 2 == w
    z2, w2 = mixing.absorb(keep, w_keep, keep, w_keep)
    assert torch.equal(z2, z) and w2 == w


def test_outer_step_defaults_to_plain_gossip_of_trained_parameters() -> None:
    outer, local = torch.randn(10), torch.randn(10)
    new, mom = mixing.outer_step(outer, torch.zeros(10), local, 1.0, 0.0, True)
    assert torch.allclose(new, local, atol=1e-6)
    new2, _ = mixing.outer_step(outer, mom, local, 0.7, 0.9, True)
    assert not torch.allclose(new2, local)


def test_a2cid2_constants_match_the_research_table() -> None:
    ring16 = a2cid2.constants(topology.expected_laplacian("ring", 16))
    assert ring16.chi1 == pytest.approx(13.1, abs=0.05) and ring16.chi2 == pytest.approx(0.94, abs=0.01)
    assert ring16.eta == pytest.approx(0.14, abs=0.005) and ring16.alpha_t == pytest.approx(1.87, abs=0.01)
    ring64 = a2cid2.constants(topology.expected_laplacian("ring", 64))
    assert ring64.chi1 == pytest.approx(208, abs=0.5) and ring64.alpha_t == pytest.approx(7.3, abs=0.05)
    with pytest.raises(ValueError):
        a2cid2.constants(np.zeros((4, 4)))


def test_a2cid2_steps_conserve_both_copies() -> None:
    z, zt = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    z2, zt2 = a2cid2.ode_mix(z, zt, 0.3, 2.0)
    assert torch.allclose(z2 + zt2, z + zt)
    d = torch.randn(6, dtype=torch.float64)
    assert torch.allclose(a2cid2.on_exchange(zt[0], d, 1.5) + a2cid2.on_exchange(zt[1], -d, 1.5), zt[0] + zt[1])


def test_theory_matches_research_notes() -> None:
    # Research notes §5: exponential graph 1 - rho = 2 / (1 + log2 n); random matching (n-2)/(2(n-1)).
    assert math.sqrt(topology.theory_rate("exponential", 16)) == pytest.approx(1 - 2 / 5)
    assert topology.theory_rate("random", 64) == pytest.approx(62 / 126)
    ring = math.log(0.1) / math.log(math.sqrt(topology.theory_rate("ring3", 16)))
    assert ring == pytest.approx(44, abs=1)
    w = topology.static_weights("exponential", 16)
    assert np.allclose(w.sum(0), 1) and np.allclose(w.sum(1), 1)


def test_gossip_plans_admit_every_ready_peer_and_carry_their_topology() -> None:
    from peerd.core import schedule as sch

    # Gossip peers legitimately differ in revision and hash: none is left out for it.
    view = [sch.Candidate(f"p{i}", f"h:{i}", revision=i, state_hash=f"h{i}", ready=True, done=False)
            for i in range(5)] + [sch.Candidate("idle", "h:9", 0, "x", ready=False, done=False)]
    assert len(sch.eligible(view)) == 1  # diloco: top revision only
    plan = sch.make_plan("run", 7, 2, "p3", view, 2.0, 0.9, now=14.0, mode="gossip", topology="hypercube")
    assert plan is not None and len(plan.members) == 5 and (plan.mode, plan.topology) == ("gossip", "hypercube")
    assert plan.revision == 0 and plan.state_hash == ""
    assert sch.plan_from_record(plan.to_record(), "run", 2) == plan
    for bad in ({"topology": "star"}, {"mode": "gossip", "topology": ""}, {"mode": "diloco", "topology": "ring"}):
        with pytest.raises(sch.PlanError):
            sch.plan_from_record({**plan.to_record(), **bad}, "run", 2)
    # Every member derives the same pairs from the plan alone.
    pairs = topology.pairs_for(plan.topology, "run", plan.round, plan.members)
    assert all(pairs[pairs[m]] == m for m in pairs)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 12), topo=st.sampled_from(topology.PAIRWISE), r=st.integers(0, 64), data=st.data())
def test_clients_pair_only_with_reachable_peers(n: int, topo: str, r: int, data: st.DataObject) -> None:
    ids = [f"peer{i}" for i in range(n)]
    clients = set(data.draw(st.lists(st.sampled_from(ids), unique=True)))
    pairs = topology.pairs_for(topo, "run", r, ids, clients)
    assert all(pairs[b] == a and a != b for a, b in pairs.items())  # still a matching
    assert not any(a in clients and b in clients for a, b in pairs.items())  # never two clients
    # Deterministic from the plan's facts alone (member order does not matter).
    assert pairs == topology.pairs_for(topo, "run", r, list(reversed(ids)), sorted(clients))
    servers = [p for p in ids if p not in clients]
    served = [c for c in clients if c in pairs]
    # As many clients as there are reachable peers get a partner (a client is left out only for lack of one).
    assert len(served) == min(len(clients), len(servers))
    # Pairs between reachable peers that no client needed stay as the topology made them.
    plain = topology.pairs_for(topo, "run", r, ids)
    kept = {a for a, b in plain.items() if a not in clients and b not in clients and a in pairs and pairs[a] == b}
    broken = {a for a, b in plain.items() if a not in clients and b not in clients} - kept
    assert len(broken) <= 2 * len(clients)
    if not clients:
        assert pairs == plain


def test_a_client_meets_different_reachable_peers_over_rounds() -> None:
    ids = [f"peer{i}" for i in range(6)]
    met = {topology.pairs_for("random", "run", r, ids, {"peer1"}).get("peer1") for r in range(40)}
    assert len(met - {None}) >= 4, met


@pytest.mark.parametrize(("topo", "n", "period"), [("hypercube", 8, 3), ("hypercube", 4, 2), ("ring", 6, 2)])
def test_a_fragment_synced_at_a_fixed_period_meets_every_partner_when_paced(topo: str, n: int, period: int) -> None:
    """Work pacing may sync a fragment every ``period`` rounds; with the round index itself as the
    pairing index, a period that is a multiple of the topology's cycle (log2 n dimensions, 2 ring
    parities) meets one partner forever. Paced plans pair by a hash of the round instead."""
    def partners(paced: bool) -> set[int]:
        return {topology.partner_ranks(topo, "run", topology.pairing_round("run", r, paced), n)[0]
                for r in range(5, 5 + 40 * period, period)}

    assert len(partners(False)) == 1  # the defect: the same partner at every sync
    assert partners(True) == set(topology.partner_ranks(topo, "run", r, n)[0] for r in range(8)) - {-1}
    assert topology.pairing_round("run", 7, False) == 7  # clock rounds keep the exact cycle
    assert topology.pairing_round("run", 7, True) == topology.pairing_round("run", 7, True)  # agreed by all
