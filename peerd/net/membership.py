"""Membership: an in-process hivemind ``DHTNode`` with heartbeat records, live view and plans.

Runs on the daemon's loop thread. Every DHT call is bounded by ``dht.op_timeout_s`` and so is
shutdown: under uvloop ``P2P.shutdown()`` waits for p2pd forever when p2pd died first (group
SIGTERM). A watchdog notices a dead p2pd child, because hivemind then
answers every ``get`` with ``None`` silently and the peer would believe it is alone.

Records are plain msgpack values (hivemind's serializer; no pickle), sealed with this peer's
identity key (and the swarm secret's MAC, when set; see peerd/net/records.py) and validated on read:
forged, replayed, wrong-shape, wrong-type or oversized records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

import msgpack
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P, PeerID
from hivemind.utils import get_dht_time
from hivemind.utils.multiaddr import Multiaddr

from peerd.core.aio import bounded
from peerd.core.config import DhtConfig
from peerd.core.log import RemoteLog, get_logger
from peerd.core.schedule import RoundPlan, plan_from_record
from peerd.net.peer_record import PeerRecord
from peerd.net.records import RUNS_KEY, SealValidator, Signer, open_sealed, run_tag
from peerd.net.replicas import NUM_REPLICAS, ReplicaStore
from peerd.proto.v1 import peer_pb2

T = TypeVar("T")
log = get_logger("peerd.dht")
FAIL_LOG_EVERY_S = 30.0  # a failing kind of DHT operation is logged at most this often (with a count of the rest)
_FAILED: Any = object()  # distinguishes "the call failed" from a call that returned None
MAX_PLAN_OFFER_BYTES = (256 << 10) + 4096  # a sealed record: its body (records.MAX_BODY_BYTES) plus key, signature, MAC
# Subkeys opened per read (each costs a signature check). Above any swarm this design serves, and far
# above the publishers of one round's plans; what lies beyond is dropped and counted, so a flood of
# records that pass the store-time checks (Sybils of an open swarm) costs a reader a bounded amount.
MAX_PEER_SUBKEYS = 4096
MAX_PLAN_SUBKEYS = 64
MAX_RUNS_SUBKEYS = 256


def _expiration(item: Any) -> float:
    exp = getattr(item, "expiration_time", None)
    return exp if isinstance(exp, (int, float)) else float("-inf")


class DhtError(RuntimeError):
    """The DHT could not be started or its p2pd daemon died."""


def probe_port(host: str, port: int) -> None:
    """Fail when ``host:port`` is taken, before p2pd starts.

    p2pd listens with SO_REUSEPORT, so a second p2pd on a taken port starts without complaint and
    both answer one address. A plain bind (SO_REUSEADDR only, which tolerates TIME_WAIT leftovers
    but not a listener) tells. Port 0 (any free port) needs no check.

    Raises:
        DhtError: the port is in use or cannot be bound, naming it.
    """
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise DhtError(f"dht.port {port} on {host} is not free ({exc.strerror}); another process (a peerd "
                           "daemon?) holds it: pick another dht.port or 0") from None


class Membership:
    """The DHT node plus the run's keys: ``peers`` (one subkey per peer) and ``plan.<round>``."""

    def __init__(self, cfg: DhtConfig, run_id: str, on_op: Callable[[str, str], None],
                 mac_key: bytes | None = None) -> None:
        """``on_op(op, outcome)`` is called for every DHT operation (metrics).

        ``mac_key`` (derived from the swarm secret) makes every record carry, and every read
        require, the swarm's MAC in addition to the author's signature.
        """
        self.cfg = cfg
        self.run_id = run_id
        self.mac_key = mac_key
        self.signer: Signer | None = None
        self._on_op = on_op
        self.node: DHTNode | None = None
        self.invalid_records = 0
        self._runs_at = -1e9  # when the runs directory entry was last stored (monotonic)
        self._peers_key = f"peerd/v1/{run_id}/peers"
        self.replicas: ReplicaStore | None = None  # heartbeats' writer, once the node runs
        # A dead peer fails every ping: one line per kind of failing operation and FAIL_LOG_EVERY_S.
        self._fail_log = RemoteLog(log, reason_rate=1 / FAIL_LOG_EVERY_S, reason_burst=1, peer_rate=1, peer_burst=1)

    async def start(self, initial_peers: list[str], identity_path: str | None = None) -> None:
        """Start p2pd and join the DHT (bounded by ``dht.startup_timeout_s``).

        Raises:
            DhtError: startup failed or timed out (bad bootstrap address, port in use, ...).
        """
        probe_port(self.cfg.host, self.cfg.port)
        host = f"/ip4/{self.cfg.host}/tcp/{self.cfg.port}"
        kwargs: dict[str, Any] = {"host_maddrs": [host], "startup_timeout": self.cfg.startup_timeout_s,
                                  "wait_timeout": self.cfg.rpc_timeout_s}
        if self.cfg.announce_host:
            if self.cfg.port == 0:
                raise DhtError("dht.announce_host needs a fixed dht.port (p2pd rejects port 0 announces)")
            kwargs["announce_maddrs"] = [f"/ip4/{self.cfg.announce_host}/tcp/{self.cfg.port}"]
        # No caching: every key here is rewritten each heartbeat or round and lives seconds. With
        # hivemind's caches every node that had read the peers key answered each later lookup with
        # its merged copy (N lookups x N nodes x N records), pushed each read's result to one more
        # node and scheduled one more read: 16 daemons with direct connections aborted 17 of 24
        # rounds with it, on DHT calls that took seconds (bench.control_plane, 2026-11-30).
        # Records are signed with the p2pd identity key, so this process must hold it: without a
        # checkpoint dir the key lives in a private temporary file only until p2pd has read it.
        tmp = None
        if identity_path is None:
            tmp = tempfile.mkdtemp(prefix="peerd-id-")
            identity_path = os.path.join(tmp, "identity.key")
            await asyncio.to_thread(P2P.generate_identity, identity_path)  # RSA keygen: ~0.1-0.5 s
            kwargs["check_if_identity_free"] = False  # fresh key: nobody else can have it
        kwargs["identity_path"] = identity_path
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        try:
            # No initial peers for hivemind itself: it pings them once, for one rpc_timeout_s, and
            # gives up, which a loaded bootstrap peer fails easily (a joiner then exits for nothing).
            # _bootstrap below dials and pings them until one answers or startup_timeout_s runs out.
            self.node = await asyncio.wait_for(
                DHTNode.create(initial_peers=None, client_mode=False, num_replicas=NUM_REPLICAS, cache_locally=False,
                               cache_nearest=0, cache_refresh_before_expiry=0,
                               record_validator=SealValidator(self.mac_key, self._count_invalid), **kwargs),
                self.cfg.startup_timeout_s,
            )
        except (TimeoutError, Exception) as exc:  # hivemind raises bare Exceptions here
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            raise DhtError(f"could not start the DHT node: {exc!r}") from exc
        self.replicas = ReplicaStore(self.node, self._peers_key, self._bounded, _FAILED)
        if initial_peers:
            try:
                await self._bootstrap(initial_peers, deadline)
            except DhtError:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                await self.shutdown()
                raise
        try:
            self.signer = Signer.from_identity_file(identity_path, self.mac_key)
        except (OSError, ValueError) as exc:
            raise DhtError(f"identity key {identity_path}: unreadable ({exc})") from exc
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        if self.signer.peer_id != self.node.peer_id.to_base58():
            raise DhtError(f"identity key {identity_path} does not match p2pd's peer id")

    def _count_invalid(self) -> None:
        self.invalid_records += 1

    async def visible_maddrs(self) -> list[str]:
        """Multiaddrs other peers can bootstrap from."""
        assert self.node is not None
        maddrs = await self._bounded("maddrs", self.node.get_visible_maddrs(latest=True))
        return [] if maddrs is _FAILED else [str(m) for m in maddrs]

    async def reping(self, peer_ids: list[str], maddrs: list[str]) -> int:
        """Ping peers this node may have dropped; returns how many answered.

        hivemind removes a node from its routing table after one failed RPC, so two live peers
        that were each frozen for a moment can stop seeing each other for good (nobody else
        remembers them). Pinging known peer ids (p2pd keeps their addresses) and the bootstrap
        addresses puts responders back in both routing tables. Each ping is bounded.
        """
        return len(await self._ping_all(self._targets(peer_ids, maddrs)))

    async def connect(self, maddrs: list[str]) -> list[str]:
        """Dial the DHT nodes at ``maddrs`` (each ending in ``/p2p/<peer id>``) and ping them.

        Returns the peer ids that answered. A direct connection is what keeps DHT traffic off
        the bootstrap peer: p2pd learns other peers' addresses only through libp2p's own
        discovery, which (most likely) drops the reserved test ranges the WAN emulator uses, and
        p2pd then reached every peer through a relay on the bootstrap.
        """
        return await self._ping_all(self._targets([], maddrs))

    def _targets(self, peer_ids: list[str], maddrs: list[str]) -> dict[str, list[Multiaddr]]:
        """Peer id -> addresses to dial first (none: p2pd's own), less this node and unparsable addresses."""
        assert self.node is not None
        targets: dict[str, list[Multiaddr]] = {pid: [] for pid in peer_ids}
        for text in maddrs:
            try:
                maddr = Multiaddr(text)
                targets.setdefault(maddr["p2p"], []).append(maddr.decapsulate(f"/p2p/{maddr['p2p']}"))
            except Exception:  # noqa: BLE001 - a bad address was reported at startup already
                continue
        targets.pop(self.node.peer_id.to_base58(), None)
        return targets

    async def _ping_all(self, targets: dict[str, list[Multiaddr]]) -> list[str]:
        """Dial (when addresses are given) and ping each target concurrently, each bounded."""
        assert self.node is not None
        node = self.node

        async def one(pid: str, addrs: list[Multiaddr]) -> bool:
            peer = PeerID.from_base58(pid)
            if addrs:
                await node.p2p._client.connect(peer, addrs)  # hivemind has no public connect
            if await node.protocol.call_ping(peer) is None:
                return False
            # The ping put it back in the routing table, but lookups also skip a peer that failed
            # lookups lately: hivemind's blacklist bans it for 5 s, doubling with every failure in a
            # row, so a live peer that missed a few 1 s deadlines on a loaded box would stay hidden
            # for 40 s and more (the backoff is right for the dead, wrong for a peer that answers).
            if peer in node.blacklist:
                node.blacklist.register_success(peer)
            return True

        results = await asyncio.gather(*(self._bounded("ping", one(pid, addrs)) for pid, addrs in targets.items()))
        return [pid for pid, ok in zip(targets, results, strict=True) if ok is True]

    async def _bootstrap(self, initial_peers: list[str], deadline: float) -> None:
        """Join through ``initial_peers``: dial and ping them until one answers.

        Then look up this node's own neighbourhood, so the routing table holds more than the
        bootstrap peers.

        Raises:
            DhtError: none answered before ``deadline`` (monotonic).
        """
        assert self.node is not None
        tries = 0
        while True:
            tries += 1
            if await self.reping([], initial_peers) > 0:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise DhtError(f"none of the {len(initial_peers)} bootstrap address(es) answered a DHT ping "
                               f"in {self.cfg.startup_timeout_s:g}s ({tries} tries)")
            if tries == 1:
                log.info("bootstrap_waiting", addresses=len(initial_peers), retry_for_s=round(left, 1))
            await asyncio.sleep(min(1.0, left))
        await self._bounded("bootstrap", self.node.find_nearest_nodes([self.node.node_id]))

    def p2pd_alive(self) -> bool:
        """False once the p2pd child has exited (the DHT is then silently useless)."""
        child = getattr(getattr(self.node, "p2p", None), "_child", None)
        return child is not None and child.returncode is None

    async def _bounded(self, op: str, coro: Awaitable[T]) -> T:
        try:
            result = await bounded(coro, self.cfg.op_timeout_s)
        except TimeoutError:
            self._failed(op, "timeout", f"no answer within {self.cfg.op_timeout_s:g}s")
            return _FAILED
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # we are being cancelled (shutdown): propagate
            # hivemind let an internal cancellation escape: an error outcome, not our cancellation.
            self._failed(op, "error", "cancelled inside hivemind")
            return _FAILED
        except Exception as exc:  # noqa: BLE001 - a DHT failure is an outcome, not a crash
            self._failed(op, "error", repr(exc)[:300])
            return _FAILED
        self._on_op(op, "ok")
        return result

    def _failed(self, op: str, outcome: str, error: str) -> None:
        """Count a failed operation and log it (rate-limited per kind of operation)."""
        self._on_op(op, outcome)
        self._fail_log.event(op, "dht", "dht_op_failed", logging.INFO, outcome=outcome, error=error)

    async def heartbeat(self, record: PeerRecord, ttl_s: float | None = None) -> bool:
        """Publish this peer's record, living ``ttl_s`` (default ``dht.ttl_s``).

        A DHT node keeps, per subkey, the value that expires last: a lifetime shorter than the
        last heartbeat's is refused (a departure is announced as a record that is not ready).
        """
        assert self.node is not None
        assert self.signer is not None and record.peer_id == self.signer.peer_id
        expiration = get_dht_time() + (self.cfg.ttl_s if ttl_s is None else ttl_s)
        value = self.signer.seal(self._peers_key, record.to_value(), expiration)
        assert self.replicas is not None
        ok = await self.replicas.store(value, expiration, record.peer_id)
        # The runs directory, refreshed rarely, by ready peers only: a peer leaving (its departure
        # record is not ready) or one that fails its join checks must not announce its run for
        # the entry's 3 minutes, or a joiner of the right run with a wrong secret is told that
        # its run_id is wrong (tests/e2e/test_operator_errors.py).
        if ttl_s is None and record.ready and time.monotonic() - self._runs_at > 60:
            exp = get_dht_time() + 180
            runs = self.signer.seal(RUNS_KEY, {"run": run_tag(self.run_id)}, exp)
            if await self._bounded("store_runs", self.node.store(RUNS_KEY, runs, exp, subkey=record.peer_id)) is True:
                self._runs_at = time.monotonic()
        return ok is True

    async def other_runs(self) -> bool:
        """Whether peers of another run (or of a run this peer's secret cannot read) are in this DHT."""
        assert self.node is not None
        found = await self._bounded("get_runs", self.node.get(RUNS_KEY, latest=True))
        if found is None or found is _FAILED or not isinstance(found.value, dict):
            return False
        mine = run_tag(self.run_id)
        for subkey, item in self._bounded_items(found.value, MAX_RUNS_SUBKEYS):
            try:
                body = open_sealed(RUNS_KEY, subkey, item.value, item.expiration_time, None)
            except ValueError:
                continue
            if isinstance(body, dict) and isinstance(body.get("run"), str) and body["run"] != mine:
                return True
        return False

    async def sealed_peer_records(self, timeout_s: float) -> Any:
        """The run's peer records as stored, sealed and unverified; None if the read failed.

        For the join-time secret check only: a peer without the swarm's secret cannot open the
        records, but it can see whether they carry a MAC. Bounded by ``timeout_s`` with
        ``aio.bounded`` (hivemind's get can swallow a cancellation and never return).
        """
        if self.node is None:
            return None
        try:
            found = await bounded(self.node.get(self._peers_key, latest=True), timeout_s)
        except Exception:  # noqa: BLE001 - a failed lookup proves nothing either way
            return None
        return getattr(found, "value", None)

    async def live_records(self) -> dict[str, PeerRecord] | None:
        """Unexpired, valid records by peer id; None when the lookup itself failed.

        By a lookup, which takes the key from every replica it passes: each holds every live
        record but those whose store it missed. (Reading one replica moved a third of the bytes,
        but while peers joined, views missed the joiners whose first stores went to the nodes
        their half-filled routing tables took for the replicas: 16 daemons split their first
        rounds in 4 of 4 runs, against 0 of 4 with lookups; BENCHMARKS.md.)
        """
        assert self.node is not None
        found = await self._bounded("get", self.node.get(self._peers_key, latest=True))
        if found is _FAILED:
            return None
        out: dict[str, PeerRecord] = {}
        if found is None:
            return out
        if not isinstance(found.value, dict):
            self.invalid_records += 1
            return out
        for subkey, item in self._bounded_items(found.value, MAX_PEER_SUBKEYS):
            try:
                body = open_sealed(self._peers_key, subkey, item.value, item.expiration_time, self.mac_key)
                rec = PeerRecord.from_value(subkey, body)
            except ValueError:  # RecordError (forged, replayed, malformed) or a schema violation
                self.invalid_records += 1
                continue
            out[rec.peer_id] = replace(rec, expires=float(item.expiration_time))
        return out

    def _bounded_items(self, value: dict[Any, Any], limit: int) -> list[tuple[Any, Any]]:
        """At most ``limit`` of a read's subkeys; the rest are dropped and counted as invalid.

        Kept first: records whose lifetime does not exceed what a peer of this run writes (a
        heartbeat's ``dht.ttl_s``, plus slack for clock skew), latest first, since an honest peer
        rewrites its record every heartbeat; a flood that sets long lifetimes to stay on top sorts last.
        """
        if len(value) <= limit:
            return list(value.items())
        self.invalid_records += len(value) - limit
        horizon = get_dht_time() + self.cfg.ttl_s + 60

        def rank(kv: tuple[Any, Any]) -> tuple[bool, float]:
            exp = _expiration(kv[1])
            return exp > horizon, -exp

        return sorted(value.items(), key=rank)[:limit]

    async def publish_plan(self, plan: RoundPlan, ttl_s: float) -> bool:
        """Store a plan under the round's key with the publisher as subkey."""
        assert self.node is not None
        assert self.signer is not None and plan.publisher == self.signer.peer_id
        key = self._plan_key(plan.round)
        expiration = get_dht_time() + ttl_s
        value = self.signer.seal(key, plan.to_record(), expiration)
        ok = await self._bounded("store_plan", self.node.store(key, value, expiration, subkey=plan.publisher))
        return ok is True

    def _plan_key(self, r: int) -> str:
        return f"peerd/v1/{self.run_id}/plan.{r}"

    def plan_offer(self, plan: RoundPlan, ttl_s: float) -> peer_pb2.PlanOffer:
        """The plan sealed exactly as its DHT copy, as a gRPC offer to the members (msgpack: plain data)."""
        assert self.signer is not None and plan.publisher == self.signer.peer_id
        value = self.signer.seal(self._plan_key(plan.round), plan.to_record(), get_dht_time() + ttl_s)
        return peer_pb2.PlanOffer(round=plan.round, publisher=plan.publisher,
                                  sealed=msgpack.packb(value, use_bin_type=True))

    def open_plan_offer(self, offer: peer_pb2.PlanOffer, num_fragments: int) -> RoundPlan:
        """Verify an offered plan like one read from the DHT (CPU only: call it off the loop).

        Raises:
            ValueError: not plain msgpack, oversized, bad signature or MAC, an expired seal, a
                malformed plan, or a plan for another publisher or round than the offer says.
        """
        if len(offer.sealed) > MAX_PLAN_OFFER_BYTES:
            raise ValueError("plan offer oversized")
        try:
            value = msgpack.unpackb(offer.sealed, raw=False, strict_map_key=True)
        except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            raise ValueError(f"plan offer is not plain msgpack: {type(exc).__name__}") from None
        body = open_sealed(self._plan_key(offer.round), offer.publisher, value, None, self.mac_key)
        if isinstance(value, dict) and isinstance(value.get("exp"), float) and value["exp"] < get_dht_time():
            raise ValueError("plan offer expired")
        plan = plan_from_record(body, self.run_id, num_fragments)
        if plan.publisher != offer.publisher or plan.round != offer.round:
            raise ValueError("offered plan is for another publisher or round")
        return plan

    async def read_plans(self, r: int, num_fragments: int) -> list[RoundPlan]:
        """Valid plans published for round ``r`` (invalid ones are dropped and counted)."""
        assert self.node is not None
        key = self._plan_key(r)
        found = await self._bounded("get_plans", self.node.get(key, latest=True))
        if found is None or found is _FAILED or not isinstance(found.value, dict):
            return []
        plans = []
        for subkey, item in self._bounded_items(found.value, MAX_PLAN_SUBKEYS):
            try:
                body = open_sealed(key, subkey, item.value, item.expiration_time, self.mac_key)
                plan = plan_from_record(body, self.run_id, num_fragments)
            except ValueError:  # RecordError or PlanError
                self.invalid_records += 1
                continue
            if plan.publisher != subkey or plan.round != r:
                self.invalid_records += 1
                continue
            plans.append(plan)
        return plans

    async def shutdown(self) -> None:
        """Stop the node; bounded because it can hang forever under uvloop."""
        if self.node is None:
            return
        node, self.node = self.node, None
        t0 = time.monotonic()
        try:
            await bounded(node.shutdown(), self.cfg.shutdown_timeout_s)
        except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001
            child = getattr(getattr(node, "p2p", None), "_child", None)
            if child is not None and child.returncode is None:
                child.kill()
        self._on_op("shutdown", "ok" if time.monotonic() - t0 < self.cfg.shutdown_timeout_s else "timeout")
