"""State resync of a daemon: initial sync of a joiner, resync of laggards, serving donors.

A mixin of :class:`peerd.daemon.Daemon`. A peer behind the swarm's top revision, or off the
majority hash there, fetches only the differing fragments, spread across the eligible donors,
and installs them only once every part verified (PCCL's rule).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from peerd import schedule as sch
from peerd.errors import EXIT_NETWORK, FatalError
from peerd.log import get_logger
from peerd.sync import SyncedState, SyncError, merge_parts, request_for, serve_state, verify_state

log = get_logger("peerd.resync")


class ResyncMixin:
    """Join-time sync, per-round resync and the donor side."""

    async def _initial_sync(self) -> None:
        """A joiner adopts the swarm's outer state before it trains (never mixes a fresh init)."""
        # Donors may die mid-transfer: retry while any is announced; once the dead ones' records
        # expire and nobody is ahead, this peer is in sync by definition (or starts the swarm).
        if self.gossip is not None:
            await self._gossip_join()
            return
        deadline = time.monotonic() + self.cfg.transport.state_timeout_s
        while time.monotonic() < deadline:
            # A failed lookup is not an empty swarm: never start from a fresh init on a DHT error.
            if await self.membership.live_records() is not None:
                await self._refresh_view()
                if await self._sync_if_needed(install_into_model=True):
                    return
            await asyncio.sleep(self.cfg.dht.heartbeat_s)
        raise FatalError("could not sync state from any donor within transport.state_timeout_s", EXIT_NETWORK)

    def state_for(self, request: Any) -> Any:
        """StateSource for the transport (runs in a thread)."""
        if self.gossip is not None:
            return self._gossip_state_for(request)
        assert self.state is not None
        return serve_state(self.state, self.cfg.run_id, request)

    async def _sync_if_needed(self, install_into_model: bool, not_before: float | None = None) -> bool:
        """Resync from a donor when the swarm is ahead or this peer's hash is off the majority.

        ``not_before`` (Unix time; a laggard inside the round loop): fetch only then, from one
        donor that sends whatever differs at its *current* revision. A laggard that fetched at
        the settle point got the revision the others held before this round and was behind
        again once they committed; fetching after the round's deadline gets what they
        committed, and the next heartbeat makes it a member again.

        Returns True when this peer is in sync afterwards (or nobody is ahead of it).
        """
        if self.gossip is not None:
            return True  # gossip: no shared state to be out of sync with (peerd/gossip/round.py)
        state, transport = self.state, self.transport
        assert state is not None and transport is not None and self.worker is not None
        me = self._my_record(ready=True).candidate()
        others = [rec.candidate() for rec in self.view.values() if rec.ready]
        elig = sch.eligible(others + [me])
        if not others or me in elig:
            return True
        if elig and elig[0].revision == me.revision:
            self.metrics.hash_mismatches.inc()
        donors = [c for c in elig if c.peer_id != self.peer_id]
        if not_before is not None:
            await asyncio.sleep(max(0.0, not_before - time.time()))
        synced = await self._fetch_from_donors(donors, donor_decides=not_before is not None)
        if synced is not None:
            state.install(synced.revision, synced.theta, synced.momentum)
            assert self.diloco is not None
            for f in synced.theta:
                self.diloco.residuals[f].zero_()
            if install_into_model:
                # The worker thread has not started yet: write its parameters directly.
                params = dict(self.worker.task.model.named_parameters())
                for f, t in synced.theta.items():
                    self.worker.layout.unflatten_into(params, f, t)
            else:
                # Queued, not awaited: the worker applies it before any later snapshot/merge.
                self.bridge.submit("install", fragments=synced.theta)
            self.metrics.resyncs.labels(outcome="ok").inc()
            self.metrics.sync_seconds.set(synced.seconds)
            self.metrics.sync_bytes.inc(synced.nbytes)
            self.counters.syncs.append({"seconds": round(synced.seconds, 3), "bytes": synced.nbytes,
                                        "bytes_per_s": round(synced.nbytes / max(synced.seconds, 1e-9))})
            self.metrics.revision.set(state.revision)
            log.info("synced", donors=len(donors), revision=synced.revision, fragments=len(synced.theta),
                     bytes=synced.nbytes, seconds=round(synced.seconds, 3),
                     bytes_per_s=round(synced.nbytes / max(synced.seconds, 1e-9)))
            return True
        return False

    async def _fetch_from_donors(self, donors: list[sch.Candidate], donor_decides: bool = False
                                 ) -> SyncedState | None:
        """Fetch the differing fragments, spread across donors; retry a failed part elsewhere.

        Every part is verified per fragment (hash) and the parts must agree on revision and
        hashes before anything is installed. ``donor_decides``: one donor at a time sends every
        fragment that differs from ours at its current revision (the records may be a round old).
        """
        state, transport = self.state, self.transport
        assert state is not None and transport is not None
        records = {pid: rec for pid, rec in self.view.items()}
        t0 = time.monotonic()
        for _attempt in range(3):
            live = [d for d in donors if d.peer_id in records]
            if not live:
                return None
            assignment: dict[str, list[int]] = {}
            if donor_decides:
                assignment[live[0].peer_id] = []  # an empty list asks for every differing fragment
            else:
                ref = records[live[0].peer_id].fragment_hashes
                local = state.fragment_hashes
                wanted = [f for f in range(state.layout.num_fragments) if f >= len(ref) or ref[f] != local[f]] or \
                    list(range(state.layout.num_fragments))  # revision differs only: let the donor decide
                for i, f in enumerate(wanted):
                    assignment.setdefault(live[i % len(live)].peer_id, []).append(f)
            by_id = {d.peer_id: d for d in live}

            async def part(pid: str, frags: list[int], by_id: dict = by_id) -> SyncedState:
                header, payload = await transport.fetch_state(
                    by_id[pid].endpoint, request_for(state, self.cfg.run_id, self.peer_id, frags),
                    max_bytes=8 * sum(state.layout.numels) + 1024)
                return await asyncio.to_thread(verify_state, state, header, payload, time.monotonic() - t0,
                                               set(frags) or None)

            results = await asyncio.gather(*(part(pid, frags) for pid, frags in assignment.items()),
                                           return_exceptions=True)
            failed = [pid for pid, res in zip(assignment, results, strict=True) if isinstance(res, BaseException)]
            for pid, res in zip(assignment, results, strict=True):
                if isinstance(res, BaseException):
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
