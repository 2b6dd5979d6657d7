"""The end of a finite run (``--exit-when-done``): when a peer leaves, and what it may do until then.

A peer leaves once it committed a final round of every fragment and every ready peer it sees is
done at its revision and hash, in two consecutive looks (:meth:`RunEnd.look`). A leaver decides at
a round's settle point, so what the others do in that very round is out of its sight: a round
that commits without it then ends the run on two states. Two rules keep the rest from doing that:

- **Adopt.** A done peer whose last look saw everyone ready done at its state, and which now
  misses some of them (they left; their records are gone or announce ``ready=False``), holds one
  round and, if they are still missing, leaves on that state too, instead of mixing with whoever
  is left. That the others have not finished themselves (a final round of some fragment missed)
  does not matter then: a final round they missed committed elsewhere, so their catch-up installed
  that fragment over their own progress and they have nothing left to send; a round among them
  would only bump the revision (seed 1468 of the simulation sweep ended on revisions 15 and 16
  with identical parameters). The hold is the second look: a read that missed a record must not
  end a peer's run, so it only costs a round.
- **Name them.** While a peer's view is settled, the plans it publishes name every ready peer,
  suspected or not (:meth:`RunEnd.must_name`): a plan without one that is leaving this round
  would commit at the others' and split the end before any look could tell. Bounded to
  ``NAME_SETTLED_LOOKS`` looks, so that a done peer that cannot be reached (a partition) does not
  abort every round for ever when nobody has finished yet.

Gossip has no shared state: a peer leaves once it ran every fragment's final round.
"""

from __future__ import annotations

from dataclasses import dataclass

from peerd.core import schedule as sch
from peerd.core.errors import Counters
from peerd.core.log import get_logger

log = get_logger("peerd.rounds")

# At the end of a finite run, rounds the in-sync peers hold so a peer behind them can resync.
LAGGARD_WAIT_ROUNDS = 3
# Settled looks during which a publisher names suspected peers too. A leaver's second look is at most
# a look or so after a reader's first (views a heartbeat apart); past this, suspicion applies again.
NAME_SETTLED_LOOKS = LAGGARD_WAIT_ROUNDS + 1


@dataclass(frozen=True)
class _Settled:
    """A look at which every ready peer was done at this peer's revision and hash."""

    state: tuple[int, str]  # (revision, state hash)
    peers: frozenset[str]  # the ready peers then, this one included
    looks: int  # consecutive settled looks at this state


class RunEnd:
    """End-of-run decisions of one peer's round driver, made at each round's settle point."""

    def __init__(self, exit_when_done: bool, shared_state: bool, num_fragments: int, counters: Counters) -> None:
        self.exit_when_done, self.shared_state = exit_when_done, shared_state
        self.num_fragments, self.counters = num_fragments, counters
        self.finishing: tuple[int, int, str] | None = None  # (round, revision, hash) when the run looked over
        self.laggard_waits = 0  # consecutive rounds held for a laggard
        self._settled: _Settled | None = None  # the last settled look (kept while peers are missing from it)
        self._missing: frozenset[str] = frozenset()  # peers of that look missing at the previous look

    def look(self, r: int, me: sch.Candidate, candidates: list[sch.Candidate]) -> str | None:
        """At round ``r``'s settle point: ``"done"`` (leave), ``"hold"`` (sit this round out) or None.

        Shared state: this peer committed a final round of every fragment and every ready peer
        it sees is done and at its revision and hash, in two consecutive rounds. Between the two
        it publishes no plan (it still takes part in a plan that names it, so a peer still
        missing final rounds gets them, and then the revisions moved and the count restarts).
        The second look guards against a view one heartbeat old: a peer that left on a stale
        view would end the run on a state of its own. Or, whatever its final rounds: peers that
        were settled with it at its last look have left (see the module docstring).
        """
        if not self.exit_when_done:
            return None
        final = len(self.counters.final_fragments) >= self.num_fragments
        if not self.shared_state:
            return "done" if final else None
        ready = [c for c in candidates if c.ready]
        state = (me.revision, me.state_hash)
        settled = me.done and all(c.done and (c.revision, c.state_hash) == state for c in ready)
        before, self._settled = self._settled, None
        missing = before.peers - {c.peer_id for c in ready} if before and before.state == state and me.done else set()
        if missing:
            if self._missing & missing:
                log.info("run_over_peers_left", revision=me.revision, left=sorted(p[-8:] for p in missing))
                return "done"
            # First look without them: hold (no plan, so no round among the rest), look again.
            self._settled, self._missing, self.finishing = before, frozenset(missing), None
            return "hold"
        self._missing = frozenset()
        if settled:
            looks = before.looks + 1 if before is not None and before.state == state else 1
            self._settled = _Settled(state, frozenset(c.peer_id for c in ready), looks)
        if not final:
            self.finishing = None
            return None
        mark = (r, *state)
        previous, self.finishing = self.finishing, mark if settled else None
        again = previous is not None and previous[0] == r - 1 and previous[1:] == mark[1:]
        return "done" if settled and again else None

    def must_name(self) -> frozenset[str]:
        """Peers a plan this peer publishes names even if it suspects them (none unless settled lately)."""
        s = self._settled
        return s.peers if s is not None and not self._missing and s.looks <= NAME_SETTLED_LOOKS else frozenset()

    def await_laggards(self, candidates: list[sch.Candidate], elig: list[sch.Candidate]) -> bool:
        """Whether to hold this round so that finished peers behind the swarm can catch up.

        When every live peer has finished training, the last rounds decide the run's final
        state. A laggard catches up just after a round's deadline; if its fetch or its next
        heartbeat is late (a busy box), the others' next commit leaves it behind again, and
        once they have left it would end the run on a state of its own. So while everyone is
        done and someone ready is not in sync, the in-sync peers hold for at most
        ``LAGGARD_WAIT_ROUNDS`` rounds; the laggard's record then matches and the final rounds
        include it.
        """
        ready = [c for c in candidates if c.ready]
        waiting = self.shared_state and len(elig) < len(ready) and all(c.done for c in ready)
        self.laggard_waits = self.laggard_waits + 1 if waiting else 0
        return waiting and self.laggard_waits <= LAGGARD_WAIT_ROUNDS
