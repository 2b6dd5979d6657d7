"""Round schedule: wall-clock rounds, fragment choice, rendezvous election and round plans (pure).

Round ``r`` covers ``[r*round_s, (r+1)*round_s)`` in Unix time and syncs fragment
``r mod P``; in a work-paced run (``round.target_h``) the plan's publisher chooses the fragment
that is due, or none (a hold plan: the round costs no exchange), see peerd/core/pace.py.
Candidates for a round are the ready members at the top revision, ordered by
rendezvous hashing ``H(run_id, r, peer_id)``; candidate ``k`` may publish the round's plan once
``k`` plan slots have passed without one. Readers take the plan of the best-ranked publisher they
see, and a plan's id (a hash of its content) travels in every message of the round, so two peers
that ended up following different plans refuse each other's data instead of mixing it: a split
costs liveness (an aborted round), never correctness.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any


class PlanError(ValueError):
    """A round plan record is malformed or inconsistent."""


def round_index(now: float, round_s: float) -> int:
    """Index of the round that contains Unix time ``now``."""
    return math.floor(now / round_s)


def round_start(r: int, round_s: float) -> float:
    """Unix time at which round ``r`` starts."""
    return r * round_s


def fragment_for_round(r: int, num_fragments: int) -> int:
    """Fragment synchronised in round ``r``."""
    return r % num_fragments


def rendezvous_score(run_id: str, r: int, peer_id: str) -> bytes:
    """Rendezvous hash of a peer for a round; lower sorts first."""
    return hashlib.blake2b(f"{run_id}\x00{r}\x00{peer_id}".encode(), digest_size=16).digest()


def rendezvous_order(run_id: str, r: int, peer_ids: Iterable[str]) -> list[str]:
    """Peers ordered by rendezvous score; element 0 is the round leader."""
    return sorted(set(peer_ids), key=lambda p: (rendezvous_score(run_id, r, p), p))


@dataclass(frozen=True)
class Candidate:
    """What the schedule needs to know about a live peer (from its heartbeat)."""

    peer_id: str
    endpoint: str
    revision: int
    state_hash: str
    ready: bool
    done: bool
    reachable: bool = True  # False: client mode (cannot be dialled; owns no shard)
    # Work pacing (peerd/core/pace.py): announced throughput and per-fragment steps since sync. Not
    # compared: this peer's own candidate is built twice per round while its worker keeps stepping.
    steps_per_s: float = field(default=0.0, compare=False)
    steps_since: tuple[int, ...] = field(default=(), compare=False)
    # Its state was downloaded a round or two ago: it leads no round (PlanElection._order).
    newcomer: bool = field(default=False, compare=False)
    # Its round loop starts with this round (0: running): plans of earlier rounds leave it out.
    from_round: int = field(default=0, compare=False)


def eligible(candidates: Iterable[Candidate], mode: str = "diloco") -> list[Candidate]:
    """Ready peers at the top revision that agree with the majority hash there.

    A peer behind the top revision, or off the majority hash at it, must resync before it may
    take part (PCCL's rule), so it is left out of plans. In ``gossip`` mode parameters differ per
    peer by design and a revision is only a peer's own count of committed exchanges, so every
    ready peer is eligible.

    The consensus (top revision, majority hash) is what reachable peers hold whenever one is
    ready: a client-mode peer cannot serve state, so a commit that only clients made (they held
    every reduced shard while the owners aborted) could never spread and would stall everyone
    behind it. Such a client is out of sync and resyncs from a reachable donor: its lone commit
    is dropped, like an aborted round.
    """
    ready = [c for c in candidates if c.ready]
    if not ready or mode == "gossip":
        return ready
    base = [c for c in ready if c.reachable] or ready
    top = max(c.revision for c in base)
    at_top = [c for c in ready if c.revision == top]
    counts: dict[str, int] = {}
    for c in at_top:
        if c.reachable or base is ready:
            counts[c.state_hash] = counts.get(c.state_hash, 0) + 1
    majority = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return [c for c in at_top if c.state_hash == majority]


def assume_committed(candidates: Iterable[Candidate], plan: RoundPlan | None, revision: int,
                     state_hash: str) -> list[Candidate]:
    """``candidates`` as seen after this peer committed ``plan``: its co-members moved with it.

    After a commit every member announces its new revision, but on a loaded box or a slow DHT
    that store lands a second or more later. A view read before then shows the members at the
    plan's revision: behind this peer, so not eligible, and each peer that committed saw a
    different few of them move. Their plans came out small and different, several peers each
    thought itself the leader, and one partial commit grew into rounds of splits. A member of
    ``plan`` whose record shows exactly its starting point (revision and hash) is taken to be
    where this peer is now (``revision``, ``state_hash``: one commit past the plan). One that in
    fact missed the commit is then named while behind: it catches up by replaying the round from
    its reduced shards, or takes part without a contribution and resyncs after
    (peerd/node/driver.py), so the round survives. Peers that were not members are left as their
    records say: a peer that missed the plan altogether is the likeliest to miss the next one, and
    a named member that does not show up aborts the round for everyone.
    """
    candidates = list(candidates)
    if plan is None or plan.mode == "gossip" or revision != plan.revision + 1:
        return candidates
    members = set(plan.members)
    start = plan.revision, plan.state_hash
    return [replace(c, revision=revision, state_hash=state_hash)
            if c.peer_id in members and (c.revision, c.state_hash) == start else c
            for c in candidates]


def recall_missing(candidates: Iterable[Candidate], plan: RoundPlan, revision: int,
                   state_hash: str, departed: Iterable[str] = ()) -> list[Candidate]:
    """``candidates`` plus the co-members of ``plan`` that they lack, taken to be where this peer is.

    For the round right after this peer committed ``plan`` (``revision``, ``state_hash``: one
    commit past it). A view read on a loaded box misses live records whole (16 daemons on 2 cores
    read 11 to 14 of the same 16 peers in steady rounds), and a peer missing from the publisher's
    view was left out of its plan: 34-58 member-rounds per 120 s run, most by peers that had just
    committed with the publisher. Such a co-member was alive a few seconds ago (its reduced shard
    or contribution reached this peer). One that crashed since aborts one round, as one whose record
    has not expired yet does; the round after, the commit is no longer the last round's and it
    is not recalled. Nor is one in ``departed`` (its last record said it was leaving or done), nor
    any in gossip (members do not share one state).
    """
    candidates = list(candidates)
    if plan.mode == "gossip" or revision != plan.revision + 1:
        return candidates
    seen = {c.peer_id for c in candidates} | set(departed)
    return candidates + [Candidate(pid, endpoint, revision, state_hash, True, False, reachable=i < plan.owners)
                         for i, (pid, endpoint) in enumerate(zip(plan.members, plan.endpoints, strict=True))
                         if pid not in seen]


@dataclass(frozen=True)
class RoundPlan:
    """The one fact every member of a round follows; never changed once published."""

    run_id: str
    round: int
    fragment: int
    revision: int
    state_hash: str
    members: tuple[str, ...]  # owners first, then clients, each in rendezvous order; member i < owners owns shard i
    endpoints: tuple[str, ...]  # gRPC host:port of each member, same order
    publisher: str
    publisher_rank: int
    collect_deadline: float  # owners stop waiting for contributions
    deadline: float  # members stop waiting for reduced shards
    final: bool  # every member has finished training
    mode: str = "diloco"  # mixing mode every member runs this round
    topology: str = ""  # gossip: pairing rule over the hash-ordered members (peerd/mixing/gossip/topology.py)
    # The last ``clients`` members cannot be dialled (client mode): they own no shard, only push to
    # owners and pull reduced shards. 0 is left out of the record, so such plans (and their ids) are
    # exactly what peers without client mode publish and accept.
    clients: int = 0
    # Work-paced run: the target H its publisher paced by; the fragment is then the one due, or -1 (hold:
    # nothing is due, the round exchanges nothing). 0 (unpaced) is left out of the record, like clients.
    paced: int = 0

    @property
    def syncs(self) -> bool:
        """Whether this round exchanges a fragment (a paced hold plan does not)."""
        return self.fragment >= 0

    @property
    def owners(self) -> int:
        """How many members own a shard (the first ``owners`` members)."""
        return len(self.members) - self.clients

    def is_client(self, peer_id: str) -> bool:
        """Whether a member is in client mode in this plan."""
        return self.index_of(peer_id) >= self.owners

    @functools.cached_property
    def plan_id(self) -> str:
        """Content hash that identifies this plan in every message of the round (computed once)."""
        blob = json.dumps(self.to_record(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.blake2b(blob, digest_size=12).hexdigest()

    def index_of(self, peer_id: str) -> int:
        """Position (and owned shard) of a member; -1 when not a member."""
        try:
            return self.members.index(peer_id)
        except ValueError:
            return -1

    def to_record(self) -> dict[str, Any]:
        """Plain msgpack-able dict for the DHT."""
        record = asdict(self) | {"members": list(self.members), "endpoints": list(self.endpoints)}
        if not self.clients:
            del record["clients"]
        if not self.paced:
            del record["paced"]
        return record


_FIELDS: dict[str, type | tuple[type, ...]] = {
    "run_id": str, "round": int, "fragment": int, "revision": int, "state_hash": str,
    "members": (list, tuple), "endpoints": (list, tuple), "publisher": str,
    "publisher_rank": int, "collect_deadline": (int, float), "deadline": (int, float), "final": bool,
    "mode": str, "topology": str,
}
_TOPOLOGIES = {"diloco": ("",), "gossip": ("random", "hypercube", "ring")}
MAX_MEMBERS = 1024


def plan_from_record(record: Any, run_id: str, num_fragments: int) -> RoundPlan:
    """Validate a DHT record and build a plan from it.

    Raises:
        PlanError: missing/extra/ill-typed fields, wrong run, inconsistent members.
    """
    if not isinstance(record, Mapping) or set(record) - {"clients", "paced"} != set(_FIELDS):
        raise PlanError("plan record has wrong fields")
    paced = record.get("paced", 0)
    if "paced" in record and (type(paced) is not int or not 0 < paced < 1 << 40):
        raise PlanError("plan paced target out of range")
    clients = record.get("clients", 0)
    if "clients" in record and (type(clients) is not int or not 0 < clients < len(record["members"] or ())):
        raise PlanError("plan clients out of range (at least one member must own a shard)")
    for key, typ in _FIELDS.items():
        value = record[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise PlanError(f"plan field {key} has wrong type")
    members = tuple(record["members"])
    endpoints = tuple(record["endpoints"])
    if record["run_id"] != run_id:
        raise PlanError("plan for another run")
    # Element types first: set() below would raise TypeError on an unhashable member.
    if not all(isinstance(x, str) and x for x in members + endpoints):
        raise PlanError("plan members and endpoints must be non-empty strings")
    if not 0 < len(members) <= MAX_MEMBERS or len(set(members)) != len(members):
        raise PlanError("plan members empty, too many or duplicated")
    if len(endpoints) != len(members) or not all(isinstance(x, str) and x for x in members + endpoints):
        raise PlanError("plan endpoints do not match members")
    lowest = -1 if paced else 0  # a paced plan may hold (-1): nothing due this round
    if not lowest <= record["fragment"] < num_fragments or record["round"] < 0 or record["revision"] < 0:
        raise PlanError("plan fragment, round or revision out of range")
    if not paced and record["fragment"] != fragment_for_round(record["round"], num_fragments):
        raise PlanError("plan fragment does not match its round")
    if paced and record["final"] and record["fragment"] < 0:
        raise PlanError("a final plan must sync a fragment")
    if record["publisher"] not in members or not record["collect_deadline"] <= record["deadline"]:
        raise PlanError("plan publisher or deadlines inconsistent")
    if record["topology"] not in _TOPOLOGIES.get(record["mode"], ()):
        raise PlanError("plan mode or topology unknown")
    return RoundPlan(**{**record, "members": members, "endpoints": endpoints,
                        "collect_deadline": float(record["collect_deadline"]),
                        "deadline": float(record["deadline"]), "clients": clients, "paced": paced})


def make_plan(
    run_id: str,
    r: int,
    num_fragments: int,
    publisher: str,
    candidates: Iterable[Candidate],
    round_s: float,
    deadline_fraction: float,
    now: float,
    mode: str = "diloco",
    topology: str = "",
    collect_deadline: float | None = None,
    deadline: float | None = None,
    paced: int = 0,
    fragment: int | None = None,
    publisher_rank: int | None = None,
) -> RoundPlan | None:
    """The plan ``publisher`` would publish at time ``now`` for round ``r``, or None if it may not.

    Only an eligible candidate publishes; members are all eligible candidates. Deadlines: given
    (the round clock sizes them from measurements), or by default owners collect contributions
    for a bit more than half of the time left and reduced shards use the rest. Shards go to
    reachable members only: client-mode members come last and own none; without a reachable
    member there is no plan (see :func:`has_owner`). ``paced``: the run's target H; the fragment is
    then ``fragment`` (chosen by peerd/core/pace.py; -1 holds), else ``r mod num_fragments``.
    ``publisher_rank``: the publisher's place in the order its plan slots followed (default: in
    rendezvous order over the eligible candidates).
    """
    candidates = list(candidates)
    elig = eligible(candidates, mode)
    by_id = {c.peer_id: c for c in elig}
    if publisher not in by_id or not has_owner(elig) or (paced > 0) != (fragment is not None):
        return None
    servers = rendezvous_order(run_id, r, [c.peer_id for c in elig if c.reachable])
    clients = rendezvous_order(run_id, r, [c.peer_id for c in elig if not c.reachable])
    order = servers + clients
    start = round_start(r, round_s)
    if deadline is None:
        deadline = start + deadline_fraction * round_s
    if collect_deadline is None:
        collect_deadline = max(start, now) + 0.55 * max(0.0, deadline - max(start, now))
    return RoundPlan(
        run_id=run_id,
        round=r,
        fragment=fragment_for_round(r, num_fragments) if fragment is None else fragment,
        # gossip: no shared state, so no shared revision or hash to agree on
        revision=by_id[publisher].revision if mode != "gossip" else 0,
        state_hash=by_id[publisher].state_hash if mode != "gossip" else "",
        members=tuple(order),
        endpoints=tuple(by_id[p].endpoint for p in order),
        publisher=publisher,
        publisher_rank=rendezvous_order(run_id, r, by_id).index(publisher) if publisher_rank is None
        else publisher_rank,  # the driver's slot order
        collect_deadline=min(collect_deadline, deadline),
        deadline=deadline,
        final=is_final(candidates, mode),
        mode=mode,
        topology=topology if mode == "gossip" else "",
        clients=len(clients),
        paced=paced,
    )


def is_final(candidates: Iterable[Candidate], mode: str = "diloco") -> bool:
    """Whether a plan over ``candidates`` is final: every ready peer is eligible and done.

    A laggard that is resyncing must take part in the last rounds, or it would end the run on a
    state of its own.
    """
    candidates = list(candidates)
    ready = [c for c in candidates if c.ready]
    return all(c.done for c in ready) and len(ready) == len(eligible(candidates, mode))


def has_owner(candidates: Iterable[Candidate]) -> bool:
    """Whether a reachable peer is among ``candidates`` (someone must own shards / be dialled)."""
    return any(c.reachable for c in candidates)


def publish_time(r: int, rank: int, round_s: float, plan_slot_s: float, settle_s: float = 0.0) -> float:
    """Earliest time candidate ``rank`` may publish a plan for round ``r``."""
    return round_start(r, round_s) + settle_s + rank * plan_slot_s


def choose_plan(plans: Iterable[RoundPlan]) -> RoundPlan | None:
    """Among published plans for one round, the best-ranked publisher's (ties: plan id)."""
    return min(plans, key=lambda p: (p.publisher_rank, p.plan_id), default=None)
