"""Reachability: whether other peers can dial this peer's gRPC endpoint (server) or not (client).

Detected, not configured: on join a peer asks up to three reachable peers to dial it back
(``DialBack``: the helper pings the caller's announced endpoint, and only if its host is the address
the call came from; see :meth:`peerd.net.transport.Transport.serve_dial_back`). The first answer
decides. With nobody to ask (the first peer of a swarm) the peer assumes it is reachable and asks
again once a reachable peer shows up. ``transport.mode: server|client`` skips the check.

A client-mode peer publishes ``reachable: false`` in its record: plans give it no shard, nobody
pushes to it, and it pulls reduced shards on calls it opens itself (peerd/mixing/diloco.py).
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

from peerd.core.log import get_logger
from peerd.net.ports import NetworkPort
from peerd.net.view import SwarmView

log = get_logger("peerd.reach")
HELPERS = 3
RECHECK_S = 30.0


@dataclass(frozen=True)
class Reachability:
    """The outcome shown in ``peerd status`` and the ready file."""

    mode: str  # "server" (others can dial this peer) or "client"
    how: str  # how it was decided: configured, a helper's answer, or an assumption
    assumed: bool = False  # nobody could check: ask again when a reachable peer appears

    def as_dict(self) -> dict[str, str | bool]:
        """Status fields."""
        return {"mode": self.mode, "how": self.how, "assumed": self.assumed}


class ReachCheck:
    """Decides this peer's reachability and keeps ``view.reachable`` in line with it."""

    def __init__(self, mode: str, network: NetworkPort, view: SwarmView, run_id: str) -> None:
        """``mode`` is ``transport.mode``: auto, server or client."""
        self.mode, self.network, self.view, self.run_id = mode, network, view, run_id
        self.result = Reachability("server", "not checked yet", assumed=True)

    def _set(self, result: Reachability) -> Reachability:
        if result.mode != self.result.mode or result.how != self.result.how:
            log.info("reachability", mode=result.mode, how=result.how)
        self.result = result
        self.view.reachable = result.mode == "server"
        return result

    async def detect(self) -> Reachability:
        """Configured mode, or a dial-back by a reachable peer of the current view."""
        if self.mode != "auto":
            return self._set(Reachability(self.mode, f"configured (transport.mode={self.mode})"))
        helpers = [rec for rec in self.view.records.values() if rec.reachable]
        # Spread the asking over helpers: the order depends on the asker.
        helpers.sort(key=lambda rec: hashlib.blake2b(f"{self.view.peer_id}\x00{rec.peer_id}".encode()).digest())
        failures = []
        for rec in helpers[:HELPERS]:
            try:
                ok, detail = await self.network.dial_back(rec.endpoint, self.view.endpoint, self.run_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a helper that fails is just not an answer
                failures.append(f"{rec.peer_id[-8:]}: {type(exc).__name__}")
                continue
            return self._set(Reachability("server" if ok else "client", f"{detail} (asked {rec.peer_id[-8:]})"))
        if not helpers:
            return self._set(Reachability("server", "no reachable peer to ask: assumed reachable", assumed=True))
        return self._set(Reachability("server", "no helper answered (" + ", ".join(failures) + "): assumed reachable",
                                      assumed=True))

    async def loop(self) -> None:
        """Ask again while the answer is only assumed (the first peers of a swarm had nobody to ask)."""
        while True:
            await asyncio.sleep(RECHECK_S)
            if self.mode == "auto" and self.result.assumed and any(r.reachable for r in self.view.records.values()):
                await self.detect()
