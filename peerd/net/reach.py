"""Reachability: whether other peers can dial this peer's gRPC endpoint (server) or not (client).

Detected, not configured: on join a peer asks up to three reachable peers to dial it back
(``DialBack``: the helper pings the caller's announced endpoint, and only if its host is the address
the call came from; see :meth:`peerd.net.transport.Transport.serve_dial_back`). The first answer
decides. With nobody to ask (the first peer of a swarm) the peer assumes it is reachable and asks
again once a reachable peer shows up. ``transport.mode: server|client`` skips the check.

A client-mode peer publishes ``reachable: false`` in its record: plans give it no shard, nobody
pushes to it, and it pulls reduced shards on calls it opens itself (peerd/mixing/diloco.py).

The same helper also opens a TCP connection to the caller's own address at its DHT port (the one
other peers' DHT nodes dial), so a peer learns when its gRPC port is forwarded but its DHT port is
not: it then still takes part in rounds, but other DHT nodes drop it from their routing tables and
new peers cannot bootstrap from it. That is said once, with the fix, and shown in ``peerd status``.
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
    dht: str = "unchecked"  # the DHT port as others dial it: "reachable", "unreachable" or "unchecked"
    dht_how: str = ""

    def as_dict(self) -> dict[str, str | bool]:
        """Status fields."""
        return {"mode": self.mode, "how": self.how, "assumed": self.assumed, "dht": self.dht, "dht_how": self.dht_how}


class ReachCheck:
    """Decides this peer's reachability and keeps ``view.reachable`` in line with it."""

    def __init__(self, mode: str, network: NetworkPort, view: SwarmView, run_id: str, dht_port: int = 0) -> None:
        """``mode`` is ``transport.mode``: auto, server or client; ``dht_port``: this peer's DHT port (0: unknown)."""
        self.mode, self.network, self.view, self.run_id = mode, network, view, run_id
        self.dht_port = dht_port  # the daemon sets it once the DHT has started
        self.result = Reachability("server", "not checked yet", assumed=True)

    def _set(self, result: Reachability) -> Reachability:
        if result.mode != self.result.mode or result.how != self.result.how:
            log.info("reachability", mode=result.mode, how=result.how, dht=result.dht)
        if result.dht == "unreachable" and self.result.dht != "unreachable":
            log.warning("dht_unreachable", grpc=result.mode, detail=result.dht_how,
                        fix=f"forward TCP port {self.dht_port} (dht.port) to this machine as well"
                            + (" as the gRPC port" if result.mode == "server" else "")
                            + ", and set dht.announce_host to the public address; until then other peers "
                            "drop this node from their DHT routing tables and nobody can bootstrap from it")
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
                res = await self.network.dial_back(rec.endpoint, self.view.endpoint, self.run_id, self.dht_port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a helper that fails is just not an answer
                failures.append(f"{rec.peer_id[-8:]}: {type(exc).__name__}")
                continue
            dht = "unchecked" if res.dht_reachable is None else "reachable" if res.dht_reachable else "unreachable"
            return self._set(Reachability("server" if res.reachable else "client",
                                          f"{res.detail} (asked {rec.peer_id[-8:]})", dht=dht, dht_how=res.dht_detail))
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
