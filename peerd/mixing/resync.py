"""State resync for shared-state mixing: a joiner's initial sync, a laggard's catch-up, donors.

A peer behind the swarm's top revision, or off the majority hash there, fetches only the
differing fragments, spread across the eligible donors, and installs them only once every part
verified (PCCL's rule). Owned by the DiLoCo mixer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import torch

from peerd.core import schedule as sch
from peerd.core.bridge import Bridge
from peerd.core.clock import Clock
from peerd.core.config import PeerdConfig
from peerd.core.errors import EXIT_NETWORK, Counters, FatalError
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.mixing.handover import HandOver, clients_hold_the_state, install
from peerd.mixing.sync import SyncedState, SyncError, merge_parts, request_for, verify_state
from peerd.net.ports import NetworkPort
from peerd.net.view import SwarmView

log = get_logger("peerd.resync")

# Heartbeats a joiner waits for the ready members' records to agree before it syncs anyway.
UNSETTLED_BEATS = 3


class StateSync:
    """Fetches outer state from donors and installs it all at once."""

    def __init__(self, cfg: PeerdConfig, peer_id: str, state: OuterState, network: NetworkPort, view: SwarmView,
                 bridge: Bridge, clock: Clock, metrics: Metrics, counters: Counters,
                 on_installed: Callable[[list[int]], None]) -> None:
        """``on_installed(fragments)`` runs after an install (the mixer clears its residuals)."""
        self.cfg, self.peer_id, self.state, self.network, self.view = cfg, peer_id, state, network, view
        self.bridge, self.clock, self.metrics, self.counters = bridge, clock, metrics, counters
        self.on_installed = on_installed
        self.handover = HandOver(cfg, peer_id, state, network, view, clock)

    async def initial(self, write_model: Callable[[dict[int, torch.Tensor]], None]) -> None:
        """A joiner adopts the swarm's outer state before it trains.

        Donors may die mid-transfer: retry while any is announced; once the dead ones' records
        expire and nobody is ahead, this peer is in sync by definition (or starts the swarm).
        A failed lookup is not an empty swarm: never start from a fresh init on a DHT error.
        """
        deadline = self.clock.monotonic() + self.cfg.transport.state_timeout_s
        unsettled = 0
        while self.clock.monotonic() < deadline:
            if await self.view.membership.live_records() is not None:
                await self.view.refresh()
                ready = [r for r in self.view.records.values() if r.ready]
                # Records are a heartbeat apart: right after a commit one member may still
                # announce the previous revision. Give the view a few heartbeats to agree, so
                # the state comes from every member that holds it, not from one by accident.
                if len({(r.revision, r.state_hash) for r in ready}) > 1 and unsettled < UNSETTLED_BEATS:
                    unsettled += 1
                elif (top := clients_hold_the_state(self.view, self.state)) is not None:
                    # Only clients hold the state: none can be fetched from, so one hands it over.
                    left = deadline - self.clock.monotonic()
                    synced = await self.handover.wait(min(left, 2 * self.cfg.round.round_s + self.cfg.dht.heartbeat_s))
                    if synced is not None:
                        install(self.state, synced, self.on_installed, write_model)
                        self.metrics.resyncs.labels(outcome="handed_over").inc()
                        self.counters.syncs.append({"seconds": round(synced.seconds, 3), "bytes": synced.nbytes,
                                                    "bytes_per_s": round(synced.nbytes / max(synced.seconds, 1e-9))})
                        log.info("synced_by_handover", revision=synced.revision, clients_at=top.revision,
                                 fragments=len(synced.theta), bytes=synced.nbytes)
                        return
                    continue
                elif await self.if_needed(write_model=write_model):
                    return
            # Announced (not ready) while it retries: a done client that leaves meanwhile hands its
            # state to a joiner it sees. Unannounced, a joiner retrying a dead donor had no record,
            # and the last client left without handing over (sim seed 423).
            await self.view.heartbeat(ready=False)
            await asyncio.sleep(self.cfg.dht.heartbeat_s)
        raise FatalError("could not sync state from any donor within transport.state_timeout_s", EXIT_NETWORK)

    async def if_needed(self, write_model: Callable[[dict[int, torch.Tensor]], None] | None = None,
                        not_before: float | None = None) -> bool:
        """Resync from a donor when the swarm is ahead or this peer's hash is off the majority.

        ``write_model``: the worker has not started, write its parameters directly; otherwise
        the install is queued on the bridge (applied before any later snapshot or merge).
        ``not_before`` (Unix time; a laggard inside the round loop): fetch only then, from one
        donor that sends whatever differs at its *current* revision. A laggard that fetched at
        the settle point got the revision the others held before this round and was behind
        again once they committed; fetching after the round's deadline gets what they
        committed, and the next heartbeat makes it a member again.

        Returns True when this peer is in sync afterwards (or nobody is ahead of it).
        """
        me = self.view.my_record(ready=True).candidate()
        others = [rec.candidate() for rec in self.view.records.values() if rec.ready]
        elig = sch.eligible(others + [me])
        if not others or me in elig:
            return True
        if elig and elig[0].revision == me.revision:
            self.metrics.hash_mismatches.inc()
        # Client-mode peers cannot be dialled: state comes from reachable donors only.
        donors = [c for c in elig if c.peer_id != self.peer_id and c.reachable]
        if not_before is not None:
            await asyncio.sleep(max(0.0, not_before - self.clock.time()))
        synced = await self._fetch(donors, donor_decides=not_before is not None)
        if synced is not None and elig and synced.revision < min(elig[0].revision, max(self.state.revision, 0)):
            # The donor is behind what its record announced (it restarted without its checkpoint
            # under the same identity while its old record lived on): installing would throw away
            # this peer's committed rounds. Refused and counted; the next round looks again.
            self.metrics.resyncs.labels(outcome="stale_donor").inc()
            log.warning("sync_refused", reason="donor behind its record", revision=synced.revision,
                        announced=elig[0].revision, mine=self.state.revision)
            return False
        if synced is None:
            return False
        self.state.install(synced.revision, synced.theta, synced.momentum)
        self.on_installed(list(synced.theta))
        if write_model is not None:
            write_model(synced.theta)
        else:
            self.bridge.submit("install", fragments=synced.theta)
        self.metrics.resyncs.labels(outcome="ok").inc()
        self.metrics.sync_seconds.set(synced.seconds)
        self.metrics.sync_bytes.inc(synced.nbytes)
        rate = round(synced.nbytes / max(synced.seconds, 1e-9))
        self.counters.syncs.append({"seconds": round(synced.seconds, 3), "bytes": synced.nbytes, "bytes_per_s": rate})
        self.metrics.revision.set(self.state.revision)
        log.info("synced", donors=len(donors), revision=synced.revision, fragments=len(synced.theta),
                 bytes=synced.nbytes, seconds=round(synced.seconds, 3), bytes_per_s=rate)
        return True

    async def _fetch(self, donors: list[sch.Candidate], donor_decides: bool) -> SyncedState | None:
        """Fetch the differing fragments, spread across donors; retry a failed part elsewhere.

        Every part is verified per fragment (hash) and the parts must agree on revision and
        hashes before anything is installed. ``donor_decides``: one donor at a time sends every
        fragment that differs from ours at its current revision (the records may be a round old).
        """
        state = self.state
        records = dict(self.view.records)
        t0 = self.clock.monotonic()
        for _attempt in range(3):
            live = [d for d in donors if d.peer_id in records]
            if not live:
                return None
            assignment: dict[str, list[int]] = {}
            if donor_decides:
                assignment[live[0].peer_id] = []  # an empty list asks for every differing fragment
            else:
                ref, local = records[live[0].peer_id].fragment_hashes, state.fragment_hashes
                nf = state.layout.num_fragments
                # revision differs only: let the donor decide
                wanted = [f for f in range(nf) if f >= len(ref) or ref[f] != local[f]] or list(range(nf))
                for i, f in enumerate(wanted):
                    assignment.setdefault(live[i % len(live)].peer_id, []).append(f)
            by_id = {d.peer_id: d for d in live}

            async def part(pid: str, frags: list[int], by_id: dict = by_id) -> SyncedState:
                header, payload = await self.network.fetch_state(
                    by_id[pid].endpoint, request_for(state, self.cfg.run_id, self.peer_id, frags),
                    max_bytes=8 * sum(state.layout.numels) + 1024)
                return await asyncio.to_thread(verify_state, state, header, payload,
                                               self.clock.monotonic() - t0, set(frags) or None)

            results = await asyncio.gather(*(part(pid, frags) for pid, frags in assignment.items()),
                                           return_exceptions=True)
            failed = False
            for pid, res in zip(assignment, results, strict=True):
                if isinstance(res, BaseException):
                    failed = True
                    self.metrics.resyncs.labels(outcome="failed").inc()
                    log.warning("sync_failed", donor=pid, error=repr(res)[:200])
                    records.pop(pid, None)
            if failed:
                continue
            try:
                return merge_parts([r for r in results if isinstance(r, SyncedState)], state.fragment_hashes)
            except SyncError as exc:
                log.warning("sync_failed", error=str(exc))
        return None
