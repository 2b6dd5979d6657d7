"""Daemon: one real peer process, built from real parts around a :class:`~peerd.node.peer.PeerNode`.

Runs on a uvloop event loop (the loop thread owns every network object); the worker thread
trains. Lifecycle: start metrics and admin, join the DHT, build the task, bind gRPC, build the
node (view, one mixer, round driver), restore a checkpoint, sync state from the swarm, start the
worker, then run the node's loops until a signal, a fatal error, or (with ``exit_when_done``)
the common final rounds after every peer reached ``train.max_steps``. Shutdown is bounded at
every step and always writes the summary (see :mod:`peerd.node.leave`).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import torch

from peerd.core.aio import abandon
from peerd.core.bridge import Bridge
from peerd.core.clock import SYSTEM
from peerd.core.config import PeerdConfig, test_faults_spec, test_hostile_spec
from peerd.core.errors import EXIT_CONFIG, EXIT_NETWORK, Counters, FatalError
from peerd.core.faults import FaultInjector
from peerd.core.fragments import FragmentLayout
from peerd.core.log import get_logger
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.net import auth
from peerd.net.hostile import Hostile
from peerd.net.membership import DhtError, Membership
from peerd.net.peer_record import MAX_DHT_MADDRS
from peerd.net.transport import Transport
from peerd.net.view import maddrs_on_host
from peerd.node import joincheck
from peerd.node.admin import AdminServer
from peerd.node.checkpointer import Checkpointer
from peerd.node.hint import join_hint
from peerd.node.leave import Leaver
from peerd.node.peer import PeerNode
from peerd.node.telemetry import Telemetry
from peerd.train.tasks.base import Task, TaskContext, load_task_factory
from peerd.train.worker import Worker

log = get_logger("peerd.daemon")


def resolve_device(spec: str) -> torch.device:
    """``auto`` trains on CUDA when present, CPU otherwise."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError(f"device: {spec} requested but CUDA is not available", EXIT_CONFIG)
    return torch.device(spec)


def dht_port_of(maddrs: list[str]) -> int:
    """The TCP port of this node's DHT multiaddrs (``/ip4/h/tcp/N/p2p/..``); 0 when none names one."""
    for maddr in maddrs:
        parts = maddr.split("/")
        if "tcp" in parts and parts.index("tcp") + 1 < len(parts) and parts[parts.index("tcp") + 1].isdigit():
            return int(parts[parts.index("tcp") + 1])
    return 0


def detect_host(bind_host: str) -> str:
    """Address to announce for a bind host; a wildcard bind announces the outbound interface."""
    if bind_host not in ("0.0.0.0", "::", ""):
        return bind_host
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET address: connect() on UDP sends nothing
            return str(s.getsockname()[0])
    except OSError:
        return "127.0.0.1"


class Daemon:
    """One peer process: real DHT, real gRPC, a torch worker thread, metrics and admin."""

    def __init__(self, cfg: PeerdConfig, bootstrap: list[str], ready_file: str | None = None,
                 summary_path: str | None = None, exit_when_done: bool = False, wait_for_peers: int = 1) -> None:
        """Nothing starts until :meth:`run`.

        ``wait_for_peers``: hold training until this many peers (itself included) are in the
        view, bounded by 6x ``dht.startup_timeout_s`` (``peerd swarm`` uses it for a common start).
        """
        self.cfg, self.bootstrap, self.ready_file = cfg, bootstrap, ready_file
        self.exit_when_done, self.wait_for_peers = exit_when_done, wait_for_peers
        self.metrics, self.bridge, self.counters = Metrics(), Bridge(), Counters()
        self.faults = FaultInjector(test_faults_spec())
        self.hostile = Hostile(test_hostile_spec())
        self.leaver = Leaver(self.metrics, self.bridge)
        self.telemetry = Telemetry(cfg, self.bridge, self.counters, self.metrics, summary_path)

    def request_stop(self, reason: str = "signal") -> None:
        """Ask for a graceful leave (signal handlers call this)."""
        self.leaver.request_stop(reason)

    def stopping(self) -> bool:
        """Whether a leave was asked for (the log filters of peerd/ops/quiet.py demote noise from then on)."""
        return self.leaver.stop_event.is_set()

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        try:
            await self._start()
            await self._serve()
        except FatalError as exc:
            log.error("fatal", error=str(exc))
            self.leaver.fail(exc.code, str(exc))
        finally:
            await self.leaver.shutdown(self.telemetry)
        return self.leaver.exit_code

    async def _start(self) -> None:
        cfg, lv = self.cfg, self.leaver
        if cfg.metrics.enabled:
            try:
                self.telemetry.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                raise FatalError(f"metrics: cannot bind {cfg.metrics.host}:{cfg.metrics.port} ({exc.strerror}); "
                                 "pick another metrics.port or 0", EXIT_NETWORK) from exc
        lv.metrics_started = cfg.metrics.enabled
        try:
            lv.admin = AdminServer(cfg.admin.host, cfg.admin.port, self.telemetry.status)
        except (OSError, ValueError) as exc:
            raise FatalError(f"admin: cannot serve on {cfg.admin.host}:{cfg.admin.port} ({exc}); "
                             "use a loopback host and a free admin.port (or 0)", EXIT_NETWORK) from exc
        rpc_key, dht_key = self._security_keys()
        membership = Membership(cfg.dht, cfg.run_id, self._on_dht_op, dht_key)
        lv.membership = membership
        ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
        if ckpt_dir is not None:
            try:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FatalError(f"checkpoint.dir {ckpt_dir}: cannot create ({exc.strerror})", EXIT_CONFIG) from exc
        identity = str(ckpt_dir / "identity.key") if ckpt_dir is not None else None
        try:
            await membership.start(self.bootstrap, identity)
        except DhtError as exc:
            raise FatalError(f"{exc}; check --bootstrap addresses and dht.port", EXIT_NETWORK) from exc
        assert membership.node is not None
        peer_id = membership.node.peer_id.to_base58()
        task = await asyncio.to_thread(self._build_task, peer_id)
        layout = FragmentLayout.build(
            [(n, tuple(p.shape)) for n, p in task.model.named_parameters()], cfg.mixing.num_fragments
        )
        params = dict(task.model.named_parameters())
        state = OuterState(layout, [layout.flatten(params, f) for f in range(layout.num_fragments)])
        m = self.metrics
        transport = Transport(cfg.transport, self.telemetry.on_bytes, lambda r: m.rejected.labels(reason=r).inc(),
                              lambda kind, sec: m.transfer_duration_one.labels(kind=kind).observe(sec),
                              security=cfg.security, key=rpc_key, peer_id=peer_id,
                              on_refused=self._on_refused, on_remote_event=lambda reason, logged: m.remote_events
                              .labels(reason=reason, logged=str(logged).lower()).inc(),
                              faults=self.faults, hostile=self.hostile)
        lv.transport = transport
        try:
            port = transport.bind()
        except OSError as exc:
            raise FatalError(f"{exc}; pick another transport.port or 0", EXIT_NETWORK) from exc
        endpoint = f"{cfg.transport.announce_host or detect_host(cfg.transport.host)}:{port}"
        node = PeerNode(cfg, peer_id, endpoint, time.time_ns(), membership, transport, state, self.bridge, SYSTEM,
                        self.metrics, self.counters, self.faults, self.bootstrap, self.exit_when_done,
                        self.request_stop)
        worker = Worker(task, layout, self.bridge, cfg.train.max_steps, cfg.train.threads, self.telemetry.on_step,
                        cfg.train.eval_every_steps, self.telemetry.on_eval,
                        pace=(cfg.train.max_steps_per_round, cfg.round.round_s), nice=cfg.train.worker_nice)
        checkpointer = Checkpointer(ckpt_dir, cfg.run_id, peer_id, state, node.mixer, self.counters, worker,
                                    self.bridge) if ckpt_dir is not None else None
        self.node, self.worker, self.checkpointer = node, worker, checkpointer
        lv.attach(node, worker, checkpointer)
        self.telemetry.attach(node, worker, membership, endpoint)
        await node.start_serving()
        if checkpointer is not None:
            checkpointer.restore()
            self.metrics.revision.set(state.revision)
        if rpc_key is None:  # no secret: a swarm that has one would refuse every call; say so now
            await joincheck.require_secret_if_swarm_has_one(membership, self.bootstrap)
        params = dict(task.model.named_parameters())
        maddrs = await membership.visible_maddrs()
        node.reach.dht_port = dht_port_of(maddrs)  # probed by the dial-back too
        # Announced, so that peers dial each other's DHT nodes directly (SwarmView.knit).
        node.view.dht_maddrs = maddrs_on_host(maddrs, node.view.endpoint)[:MAX_DHT_MADDRS]
        await node.detect_reachability()  # before the sync: a joiner's heartbeats then say what it is
        await node.join(lambda frags: [layout.unflatten_into(params, f, t) for f, t in frags.items()])
        await self._check_joined_a_run(membership, node)
        await self._announce(membership, node)
        await self._wait_for_peers(node)
        worker.start()
        await asyncio.to_thread(worker.started.wait, 600)
        if worker.error is not None:
            raise FatalError(f"worker failed at start: {worker.error!r}")
        self.metrics.eval_loss.set(worker.initial_eval_loss)
        await node.become_ready()

    def _build_task(self, peer_id: str) -> Task:
        cfg = self.cfg
        try:
            factory = load_task_factory(cfg.task)
        except ValueError as exc:
            raise FatalError(f"task: {exc}", EXIT_CONFIG) from exc
        shard = cfg.data.shard
        if shard is None:
            shard = int.from_bytes(peer_id.encode()[-4:], "big") % cfg.data.num_shards
        ctx = TaskContext(seed=cfg.seed, shard=shard % cfg.data.num_shards, num_shards=cfg.data.num_shards,
                          device=resolve_device(cfg.device), data_path=cfg.data.path,
                          options={**cfg.task_options, "max_corpus_bytes": cfg.data.max_corpus_bytes,
                                   "heldout_fraction": cfg.data.heldout_fraction})
        try:
            return factory(ctx)
        except ValueError as exc:
            raise FatalError(f"task {cfg.task}: {exc}", EXIT_CONFIG) from exc

    async def _announce(self, membership: Membership, node: PeerNode) -> None:
        maddrs = await membership.visible_maddrs()
        await node.view.heartbeat()
        admin = self.leaver.admin
        if admin is not None:
            admin.advertise(node.peer_id, self.cfg.run_id)
        log.info("joined", peer_id=node.peer_id, grpc=node.view.endpoint, metrics_port=self.telemetry.metrics_port,
                 revision=node.state.revision)
        print(join_hint(maddrs, self.cfg.run_id, self.cfg.security), flush=True)
        if self.ready_file:
            info = {"peer_id": node.peer_id, "dht_maddrs": maddrs, "grpc": node.view.endpoint,
                    "metrics": f"{self.cfg.metrics.host}:{self.telemetry.metrics_port}",
                    "admin": admin.address if admin else None, "reachability": node.reach.result.mode,
                    "dht_reachability": node.reach.result.dht}
            tmp = Path(self.ready_file + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self.ready_file)

    async def _wait_for_peers(self, node: PeerNode) -> None:
        if self.wait_for_peers <= 1:
            return
        deadline = time.monotonic() + 6 * self.cfg.dht.startup_timeout_s
        while time.monotonic() < deadline and not self.leaver.stop_event.is_set():
            await node.view.heartbeat(ready=False)
            if len(await node.view.refresh()) + 1 >= self.wait_for_peers:
                return
            await asyncio.sleep(0.2)
        log.warning("wait_for_peers_timeout", expected=self.wait_for_peers, seen=len(node.view.records) + 1)

    def _security_keys(self) -> tuple[bytes | None, bytes | None]:
        """RPC and DHT keys from the swarm secret (None, None: open swarm, said loudly)."""
        sec = self.cfg.security
        try:
            secret = auth.resolve_secret(sec)
            auth.server_credentials(sec)  # read the TLS files now: a wrong path fails at start, with the fix
        except auth.AuthConfigError as exc:
            raise FatalError(str(exc), EXIT_CONFIG) from exc
        if secret is None:
            log.warning("swarm is open: no security.secret or security.secret_file, anyone who can reach this "
                        "peer's ports can join and send it data", fix="give every peer the same PEERD_SECURITY__SECRET")
            return None, None
        run_id = self.cfg.run_id
        return auth.derive_key(secret, run_id, "rpc"), auth.derive_key(secret, run_id, "dht")

    async def _check_joined_a_run(self, membership: Membership, node: PeerNode) -> None:
        """A --bootstrap that finds no peer of this run but others' records is an operator mistake."""
        if not self.bootstrap or node.view.records:
            return  # nobody behind --bootstrap any more is legitimate: this peer starts alone
        if await membership.other_runs():
            raise FatalError(f"run_id mismatch: no peer of run {self.cfg.run_id!r} behind --bootstrap, only peers "
                             "of another run; copy the join command (--set run_id included) from a running peer",
                             EXIT_CONFIG)
        # Same run, yet every record seen (read or offered for storage) failed its MAC.
        if membership.invalid_records > 0:
            raise FatalError("the swarm's records fail authentication: this peer's security.secret differs from "
                             "the swarm's; give it the swarm's secret", EXIT_CONFIG)

    def _on_refused(self, reason: str) -> None:
        self.metrics.rpc_refused.labels(reason=reason).inc()
        joincheck.REFUSALS(reason)  # rate-limited log line with the reason

    def _on_dht_op(self, op: str, outcome: str) -> None:
        self.metrics.dht_ops.labels(op=op, outcome=outcome).inc()
        self.counters.dht_ops[op] = self.counters.dht_ops.get(op, 0) + 1

    def _check(self) -> None:
        """Raised from the heartbeat loop: a dead p2pd or worker stops the peer."""
        if not self.leaver.membership.p2pd_alive():  # type: ignore[union-attr]
            raise FatalError("the p2pd daemon died; the DHT is unusable", EXIT_NETWORK)
        if self.worker.error is not None:
            raise FatalError(f"worker failed: {self.worker.error!r}")

    async def _serve(self) -> None:
        coros = self.node.loops(self._check)
        coros["status"] = self.telemetry.status_loop()
        coros["loop_lag"] = self.telemetry.lag.loop()
        if self.checkpointer is not None:
            coros["checkpoints"] = self.checkpointer.loop(self.cfg.checkpoint.every_s)
        tasks = [asyncio.create_task(c, name=name) for name, c in coros.items()]
        stop = asyncio.create_task(self.leaver.stop_event.wait())
        try:
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is stop:
                    continue
                # A loop task never ends on its own: cancelled or returned is a failure too.
                exc = None if t.cancelled() else t.exception()
                if isinstance(exc, FatalError):
                    raise exc
                raise FatalError(f"{t.get_name()} ended unexpectedly: {exc!r}")
        finally:
            for t in [*tasks, stop]:
                t.cancel()
            # Bounded: a task stuck in code that ignores cancellation must not block the leave.
            ended, stuck = await asyncio.wait([*tasks, stop], timeout=10)
            for t in ended:
                if not t.cancelled():
                    t.exception()  # retrieved: already reported above if it mattered
            for t in stuck:
                log.warning("task_ignored_cancel", task=t.get_name())
                abandon(t)

