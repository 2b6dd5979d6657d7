"""Invariants checked on every simulated round, and at the end of a run.

- **safety**: two states at one revision (a partial commit whose committer was out of sight)
  are resolved within ``FORK_ROUNDS`` quiet rounds, and a peer's revision never goes back (a
  client-mode peer's lone commit is dropped when it resyncs).
- **liveness**: whenever at least two ready peers can reach each other and no fault is active
  for ``LIVENESS_ROUNDS`` consecutive rounds, one of those rounds commits. In a work-paced run
  (``round.target_h``) rounds hold while no fragment is due, so the window grows by the rounds
  the slowest worker needs for H steps (:func:`hold_rounds`).
- **termination**: a finite run (``--exit-when-done``) ends with every peer done, at one
  revision and hash (but a client that started while no reachable peer was up: it had no donor).
- **bounded loss**: a crash costs the survivors at most ``CRASH_ROUNDS`` rounds without a commit.
- **mass** (gossip): the swarm's total push-sum weight per fragment is conserved by exchanges,
  joins and partitions (only crashes and departures take mass away).
"""

from __future__ import annotations

import math

from tests.sim.world import World

LIVENESS_ROUNDS = 4
FORK_ROUNDS = 4  # a partial commit's minority resyncs within this many quiet rounds
CRASH_ROUNDS = 6  # suspicion of a dead member lasts ttl + one round: 3 rounds at 2 s rounds, plus slack


def safety(w: World, r: int) -> None:
    """Every round: two states at one revision never outlive ``FORK_ROUNDS`` quiet rounds; revisions never go back.

    The strict form (never two states at one revision) does not hold without an atomic commit:
    a round can commit at some members and abort at others (a reduced shard lost on the way to
    one of them), and when a committer cannot be seen at the next settle point (its loop stalled,
    its link cut) the others commit a different round at the same revision. The two states are
    never mixed (every plan names the revision and hash its members must hold) and the minority
    resyncs from the majority as soon as it sees it, so what is checked is that such a fork is
    resolved within ``FORK_ROUNDS`` rounds once no fault is active.
    """
    if w.sc.mode != "diloco":
        return
    by_rev: dict[int, set[str]] = {}
    for p in w.live():
        if p.node.view.ready:
            by_rev.setdefault(p.state.revision, set()).add(p.state.state_hash())
    forked = {rev for rev, hashes in by_rev.items() if len(hashes) > 1}
    w.forks = {rev: since for rev, since in w.forks.items() if rev in forked}
    round_s = w.cfg.round.round_s
    for rev in forked:
        since = w.forks.setdefault(rev, r)
        t0, t1 = since * round_s - w.epoch, (r + 1) * round_s - w.epoch
        if r - since >= FORK_ROUNDS and not _fault_active(w, t1 - FORK_ROUNDS * round_s, t1):
            w.fail(f"safety: round {r}: {len(by_rev[rev])} different states at revision {rev} since round {since} "
                   f"({t0:.1f}s), not resolved in {FORK_ROUNDS} quiet rounds")
    if len(w.log) >= 2:
        prev, cur = w.log[-2].rows, w.log[-1].rows
        clients = {w.peer_id(i) for i in w.sc.clients}
        since = (w.log[-2].r + 1) * round_s - w.epoch - 1.0
        restarted = {w.peer_id(e.peer) for e in w.sc.events if e.kind == "restart" and e.at > since}
        for pid, (rev, _, _) in cur.items():
            # A client-mode peer's lone commit is dropped when it resyncs (schedule.eligible); a
            # restarted peer (no checkpoint in the simulation) starts again from the swarm's state.
            if pid in prev and rev < prev[pid][0] and pid not in clients | restarted:
                w.fail(f"safety: round {r}: {pid} went back from revision {prev[pid][0]} to {rev}")


def _fault_active(w: World, t0: float, t1: float) -> bool:
    """Whether any fault event touches [t0 - settle, t1] (a stall's whole span counts)."""
    for e in w.sc.events:
        end = e.at + (e.arg if e.kind in ("stall", "lose") else 0.0)
        if e.at <= t1 and end >= t0 - 6.0:
            return True
    return bool(w.net.cut)


def _servers(w: World, rows: dict[str, object]) -> int:
    """Live peers of a round that can be dialled (client-mode peers own no shard: alone they cannot commit)."""
    clients = {w.peer_id(i) for i in w.sc.clients}
    return sum(1 for pid in rows if pid not in clients)


def hold_rounds(w: World) -> int:
    """Rounds a work-paced run may hold in a row: the slowest worker's H steps, plus one (0 when unpaced)."""
    target = w.cfg.pace_h
    if not target:
        return 0
    slowest = w.sc.step_s * max(w.sc.slow.values(), default=1.0)
    return math.ceil(target * slowest / w.cfg.round.round_s) + 1


def liveness(w: World) -> None:
    """After the run: every quiet stretch of LIVENESS_ROUNDS rounds with >= 2 ready peers commits."""
    round_s = w.cfg.round.round_s
    logs = w.log[2:]  # the first rounds include joining
    span = LIVENESS_ROUNDS + hold_rounds(w)
    for i in range(len(logs) - span + 1):
        window = logs[i:i + span]
        t0 = window[0].r * round_s - w.epoch
        t1 = (window[-1].r + 1) * round_s - w.epoch
        if _fault_active(w, t0, t1) or min(len(x.rows) for x in window) < 2:
            continue
        if min(_servers(w, x.rows) for x in window) < 1:  # no reachable peer: rounds wait, by design
            continue
        if any(row[2] == "ok" for x in window for row in x.rows.values()):
            continue
        revs_before = {pid: row[0] for pid, row in window[0].rows.items()}
        if any(row[0] > revs_before.get(pid, 10**9) for pid, row in window[-1].rows.items()):
            continue
        # A finished swarm that has left is not stuck.
        if all(p.stopped is not None for p in w.peers.values()):
            continue
        w.fail(f"liveness: rounds {window[0].r}..{window[-1].r}: no commit with "
               f"{min(len(x.rows) for x in window)} reachable ready peers and no fault active")


def termination(w: World) -> None:
    """After a finite run: every peer left done, all at one revision and hash."""
    if not w.exit_when_done:
        return
    left = [p for p in [*w.peers.values(), *w.gone] if p.stopped != "killed"]
    not_done = [p.peer_id for p in left if p.stopped != "done"]
    if not_done:
        w.fail(f"termination: {not_done} did not finish within {w.sc.duration_s}s")
    if w.sc.mode == "diloco":
        # A client that (re)started while only clients were up could fetch the state from nobody
        # (no donor can be dialled) and legitimately ends on a lineage of its own.
        ends = {(p.state.revision, p.state.state_hash()) for p in left if p not in w.orphans}
        if len(ends) > 1:
            w.fail(f"termination: peers ended on {len(ends)} different revisions/hashes: {sorted(ends)}")


def bounded_loss(w: World) -> None:
    """After the run: within CRASH_ROUNDS rounds of a crash, the survivors commit again."""
    round_s = w.cfg.round.round_s
    for e in w.sc.events:
        if e.kind != "crash":
            continue
        later = [x for x in w.log if x.r * round_s - w.epoch > e.at and len(x.rows) >= 2 and _servers(w, x.rows)]
        if _fault_active(w, e.at + 0.1, e.at + CRASH_ROUNDS * round_s) and any(
                o is not e and o.kind != "crash" for o in w.sc.events):
            continue
        span = CRASH_ROUNDS + hold_rounds(w)
        window = later[:span]
        if len(window) == span and not any(row[2] == "ok" for x in window for row in x.rows.values()):
            w.fail(f"bounded loss: no commit within {CRASH_ROUNDS} rounds after the crash at t={e.at:.2f}")


def mass(w: World, r: int) -> None:
    """Every round (gossip): the swarm's push-sum weight per fragment is conserved.

    Compared between consecutive rounds with the same live peers (a crashed or departed peer
    takes its mass with it; a joiner takes half of its donor's). An exchange whose partner
    committed while this side holds it in doubt (a lost acknowledgement; peerd/mixing/gossip/doubt.py)
    is mass in transit: it is counted at the side that will apply it once the partner answers,
    exactly as the partner's change. Lossy links are excluded: under random loss an exchange can
    stay in doubt until it is given up, a documented gap of the gossip protocol.
    """
    if w.sc.mode != "gossip" or w.sc.loss > 0 or any(e.kind == "lose" for e in w.sc.events):
        return
    # By incarnation: a peer that crashed and came back between two looks lost its mass.
    ready = [p for p in w.live() if p.node.view.ready]
    live = tuple(sorted(f"{p.peer_id}/{p.node.view.incarnation}" for p in ready))
    sums = [sum(p.node.mixer.w[f] for p in ready) for f in range(w.cfg.mixing.num_fragments)]
    by_id = {p.peer_id: p for p in ready}
    for p in ready:
        for (r, partner), d in p.node.mixer.doubts.doubts.items():
            q = by_id.get(partner)
            if q is not None and q.node.mixer.doubts.decided.get((r, p.peer_id)) is True:
                sums[d.plan.fragment] += (d.w_other - d.w_own) * 0.5
    totals = tuple(round(x, 9) for x in sums)
    previous, w._mass = w._mass, (live, totals)
    if previous is not None and previous[0] == live and previous[1] != totals:
        w.fail(f"mass: round {r}: total weight per fragment moved from {previous[1]} to {totals}")
