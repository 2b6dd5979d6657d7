"""Client mode in the simulation tier: peers behind a NAT (nobody can dial them) on the real protocol.

- Peers detect that they cannot be dialled (dial-back), own no shard, pull reduced shards, and their
  contributions are in the reduce of nearly every round they take part in.
- A swarm whose only reachable peer leaves keeps its state, says why rounds stop (no plan can be
  made: ``no_reachable_peer``, no aborted rounds), and resumes once a reachable peer is back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tests.sim import invariants
from tests.sim.world import Event, Scenario, World


def _counted(w: World, counted: dict[str, list[bool]], r: int) -> None:
    """Per client: whether every owner's reduced shard of round ``r`` includes its contribution."""
    clients = [w.peer_id(i) for i in w.sc.clients]
    shards = []
    for p in w.live():
        rs = p.node.mixer.inbox.get(r)
        if rs is not None and rs.me >= 0:
            shards.append(rs.reduced.get(rs.me))
    if not shards:
        return
    for c in clients:
        peer = next((p for p in w.live() if p.peer_id == c), None)
        if peer is None or not peer.node.view.ready:
            continue
        counted.setdefault(c, []).append(all(s is not None and c in s.contributors for s in shards))


def test_nat_peers_detected_and_counted() -> None:
    sc = Scenario(seed=7, peers=5, clients={2, 4}, detect=True, duration_s=40.0, latency_s=0.03, jitter_s=0.01,
                  asym={(2, 0): 0.15, (1, 4): 0.1})
    counted: dict[str, list[bool]] = {}
    w = World(sc)
    w.checks += [invariants.safety, lambda w, r: _counted(w, counted, r)]
    w.run()
    invariants.liveness(w)
    modes = {p.peer_id: p.node.reach.result.mode for p in w.peers.values()}
    assert modes == {"peer-00": "server", "peer-01": "server", "peer-02": "client", "peer-03": "server",
                     "peer-04": "client"}, modes
    for p in w.peers.values():
        assert p.node.view.my_record().reachable == (modes[p.peer_id] == "server")
    rounds = counted["peer-02"][2:] + counted["peer-04"][2:]  # the first rounds include joining
    assert len(rounds) >= 20 and sum(rounds) >= 0.9 * len(rounds), counted
    ends = {(p.state.revision, p.state.state_hash()) for p in w.peers.values()}
    assert len(ends) == 1 and next(iter(ends))[0] >= 10, ends


def _run_checked(sc: Scenario) -> tuple[World, Callable[[object], float]]:
    """Run ``sc`` with the safety invariant; returns the world and a log row's start time in scenario seconds."""
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    round_s = w.cfg.round.round_s
    return w, lambda x: x.r * round_s - w.epoch  # type: ignore[attr-defined]


def test_only_reachable_peer_leaves_then_returns() -> None:
    left_at, back_at = 11.0, 25.0
    sc = Scenario(seed=11, peers=3, clients={1, 2}, duration_s=40.0, latency_s=0.02,
                  events=[Event(left_at, "leave", 0), Event(back_at, "rejoin", 0)])
    w, t = _run_checked(sc)
    round_s = w.cfg.round.round_s

    before = [x for x in w.log if t(x) < left_at - round_s]
    gap = [x for x in w.log if left_at + 2 * round_s <= t(x) < back_at - round_s]
    after = [x for x in w.log if t(x) >= back_at + 3 * round_s]
    assert before and any(row[2] == "ok" for row in before[-1].rows.values())
    assert len(gap) >= 4
    for x in gap:  # clients only: they wait, say why, and keep one state
        assert set(x.rows) == {"peer-01", "peer-02"}, x.rows
        assert {row[2] for row in x.rows.values()} == {"no_reachable_peer"}, x.rows
        assert len({row[:2] for row in x.rows.values()}) == 1 and x.rows == {**gap[0].rows}, x.rows
    clients = [p for p in w.peers.values() if p.peer_id != "peer-00"]
    for p in clients:
        assert p.node.driver.last_round["reason"] == "ok" and p.node.reach.result.mode == "client"
    # Nothing aborted while they waited: the only aborts are around the leave itself.
    assert all(p.counters.rounds_aborted <= 2 for p in clients), [p.counters.rounds_aborted for p in clients]
    assert after and all(any(row[2] == "ok" for row in x.rows.values()) for x in after[-3:]), after[-3:]
    assert after[-1].rows["peer-00"][0] > gap[-1].rows["peer-01"][0]
    ends = {(p.state.revision, p.state.state_hash()) for p in w.peers.values()}
    assert len(ends) == 1, ends


def test_gossip_clients_pair_with_reachable_peers_and_commit() -> None:
    sc = Scenario(seed=5, peers=5, mode="gossip", clients={1, 3}, detect=True, duration_s=40.0, latency_s=0.02,
                  jitter_s=0.005)
    w = World(sc)
    w.checks += [invariants.safety, invariants.mass]
    w.run()
    invariants.liveness(w)
    clients = {w.peer_id(i) for i in sc.clients}
    assert {p.peer_id for p in w.peers.values() if p.node.reach.result.mode == "client"} == clients
    rounds = w.log[3:]
    assert len(rounds) >= 15
    for c in clients:
        # Revision in gossip = this peer's committed exchanges: a client is counted in most rounds it
        # was paired in. With 3 reachable peers and 2 clients each client is paired in every round.
        commits = sum(1 for a, b in zip(rounds, rounds[1:], strict=False) if b.rows[c][0] > a.rows[c][0])
        assert commits >= 0.8 * (len(rounds) - 1), (c, commits, len(rounds))
        reasons = [x.rows[c][2] for x in rounds]
        assert "client_pair" not in reasons, reasons
    # The clients' mass mixed with the swarm: every peer's theta is near the swarm mean.
    thetas = torch.stack([p.state.snapshot().theta[0] for p in w.peers.values()])
    assert float((thetas - thetas.mean(0)).norm(dim=1).max()) < float(thetas.mean(0).norm())


def _capped_run(cap_aware: bool, seed: int = 3) -> World:
    """4 peers; client peer 3's upload cap makes its contribution (60 bytes of fragment 0 at 48 B/s)
    take 1.25 s of a ~1.55 s exchange window: more than the usual collection share."""
    # Short worker steps: the snapshot comes at once, so only the cap decides (not a step's wait).
    sc = Scenario(seed=seed, peers=4, clients={3}, duration_s=40.0, latency_s=0.01, step_s=0.05, uplink={3: 48.0})
    w = World(sc)
    if not cap_aware:  # as before this change: the cap is enforced but not announced
        w.peers_hook = lambda p: setattr(p.node.view, "uplink_bps", 0)
    weighted: list[bool] = []
    w.checks += [invariants.safety, lambda w, r: _weighted(w, r, weighted)]
    w.run()
    w.weighted = weighted  # type: ignore[attr-defined]
    return w


def _weighted(w: World, r: int, out: list[bool]) -> None:
    """Whether peer 0 (an owner) holds peer 3's contribution of round ``r`` with its samples (not a weightless one)."""
    rs = w.peers[0].node.mixer.inbox.get(r)
    if rs is not None and rs.me >= 0:
        got = rs.contributions.get("peer-03")
        out.append(got is not None and got.weight > 0)


def _included(w: World) -> tuple[int, int]:
    """(committed rounds whose every reduced shard includes peer 3's contribution, committed rounds) at peer 0."""
    mixer = w.peers[0].node.mixer
    return mixer.included.get("peer-03", 0), mixer.commits


def test_capped_member_is_late_not_dropped() -> None:
    w = _capped_run(True)
    invariants.liveness(w)
    assert w.peers[3].node.view.my_record().uplink_bps == 48  # announced in its record, read by all
    assert all(p.node.view.records["peer-03"].uplink_bps == 48 for i, p in w.peers.items() if i != 3)
    ends = {(p.state.revision, p.state.state_hash()) for p in w.peers.values()}
    assert len(ends) == 1 and next(iter(ends))[0] >= 15, ends
    included, commits = _included(w)
    # 17 of 20 on seeds 1-8 (18 on half of them before peers were kept out of rounds they sit out,
    # peerd/node/driver.py start_round; the bound was 0.9 then, met by no margin at this seed).
    assert commits >= 15 and included >= 0.85 * commits, (included, commits)
    assert sum(w.weighted[2:]) >= 0.9 * len(w.weighted[2:]), w.weighted  # with its work: a snapshot, not a zero
    # Unannounced, the same cap gets its contribution to the large fragment dropped (about half the rounds).
    included, commits = _included(_capped_run(False))
    assert commits >= 15 and included <= 0.6 * commits, (included, commits)


def test_reachable_newcomer_is_handed_the_state_of_a_client_only_swarm() -> None:
    left_at, join_at = 7.0, 17.0
    sc = Scenario(seed=13, peers=4, clients={1, 2}, duration_s=40.0, latency_s=0.02,
                  events=[Event(0.5, "join", 3), Event(left_at, "leave", 0), Event(join_at, "join", 4)])
    sc.clients = {1, 2, 3}  # peer 0 is the only reachable peer; peer 4 joins fresh, reachable
    w, t = _run_checked(sc)
    round_s = w.cfg.round.round_s

    before = [x for x in w.log if t(x) < left_at - round_s]
    gap = [x for x in w.log if left_at + 2 * round_s <= t(x) < join_at - round_s]
    assert before and before[-1].rows["peer-01"][0] >= 2 and len(gap) >= 2, (before, gap)
    kept = gap[-1].rows["peer-01"][:2]  # the clients' state while nobody reachable was there
    assert all(set(x.rows) == {"peer-01", "peer-02", "peer-03"} and
               {row[:2] for row in x.rows.values()} == {kept} for x in gap), gap
    newcomer = w.peers[4]
    assert newcomer.node.reach.result.mode == "server"
    assert newcomer.counters.syncs, "the newcomer installed no state"
    # It started from the clients' state (not its own initialisation, which the clients would then adopt).
    rounds_in = [x.rows["peer-04"] for x in w.log if x.rows.get("peer-04", (0, "", ""))[2]]
    assert rounds_in and all(row[0] >= kept[0] for row in rounds_in), (rounds_in, kept)
    after = [x for x in w.log if t(x) >= join_at + 4 * round_s]
    assert len(after) >= 5
    assert all(any(row[2] == "ok" for row in x.rows.values()) for x in after[-4:]), after[-4:]
    ends = {(p.state.revision, p.state.state_hash()) for p in w.live()}
    assert len(ends) == 1 and next(iter(ends))[0] > kept[0] + 3, (ends, kept)


def test_a_lone_client_hands_its_state_to_a_reachable_newcomer() -> None:
    """One client is fewer than round.min_members: it skips as too_few_peers and still hands the state over."""
    sc = Scenario(seed=17, peers=2, clients={1}, duration_s=30.0, latency_s=0.02,
                  events=[Event(7.0, "leave", 0), Event(13.0, "join", 2)])
    w = World(sc)
    w.checks.append(invariants.safety)
    w.run()
    alone = [x for x in w.log if set(x.rows) == {"peer-01"}]
    assert alone and {x.rows["peer-01"][2] for x in alone[1:]} == {"too_few_peers"}, alone
    kept = alone[-1].rows["peer-01"][:2]
    assert kept[0] >= 2 and w.peers[2].counters.syncs
    ends = {(p.state.revision, p.state.state_hash()) for p in w.live()}
    assert len(ends) == 1 and next(iter(ends))[0] > kept[0] + 3, (ends, kept)
