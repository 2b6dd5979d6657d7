"""Daemon: composes membership, schedule, transport, mixing, worker and metrics for one peer.

Runs on a uvloop event loop (the loop thread owns every network object); the worker thread
trains. Lifecycle: start metrics, build the task, serve gRPC, join the DHT, sync state from the
swarm if it already trained, start the worker, then run heartbeat and round loops until a
signal, a fatal error, or (with ``exit_when_done``) the common final rounds after every peer
reached ``train.max_steps``. Shutdown is bounded at every step and always writes the summary.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

from peerd import auth
from peerd.admin import AdminServer
from peerd.aio import abandon
from peerd.bridge import Bridge
from peerd.config import PeerdConfig
from peerd.diloco import Diloco
from peerd.errors import EXIT_CONFIG, EXIT_NETWORK, EXIT_OK, Counters, FatalError
from peerd.fragments import FragmentLayout, state_hash
from peerd.gossip.churn import GossipChurnMixin
from peerd.gossip.round import GossipMixer
from peerd.leave import LeaveMixin
from peerd.log import get_logger
from peerd.membership import DhtError, Membership, PeerRecord
from peerd.metrics import Metrics
from peerd.persist import PersistMixin
from peerd.resync import ResyncMixin
from peerd.rounds import RoundsMixin
from peerd.state import OuterState
from peerd.tasks.base import Task, TaskContext, load_task_factory
from peerd.transport import Transport
from peerd.view import ViewMixin
from peerd.worker import Worker

log = get_logger("peerd.daemon")

def resolve_device(spec: str) -> torch.device:
    """``auto`` trains on CUDA when present, CPU otherwise."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise FatalError(f"device: {spec} requested but CUDA is not available", EXIT_CONFIG)
    return torch.device(spec)


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


class Daemon(ViewMixin, RoundsMixin, ResyncMixin, PersistMixin, LeaveMixin, GossipChurnMixin):
    """One peer. Round protocol, state resync and persistence live in the mixins' modules."""

    def __init__(self, cfg: PeerdConfig, bootstrap: list[str], ready_file: str | None = None,
                 summary_path: str | None = None, exit_when_done: bool = False, wait_for_peers: int = 1) -> None:
        """Nothing starts until :meth:`run`.

        ``wait_for_peers``: hold training until this many peers (itself included) are in the
        view, bounded by 6x ``dht.startup_timeout_s`` (``peerd swarm`` uses it for a common start).
        """
        self.cfg = cfg
        self.bootstrap = bootstrap
        self.ready_file = ready_file
        self.summary_path = summary_path
        self.exit_when_done = exit_when_done
        self.wait_for_peers = wait_for_peers
        self.metrics = Metrics()
        self.bridge = Bridge()
        self.counters = Counters()
        self.stop_event = asyncio.Event()
        self.exit_code = EXIT_OK
        self.exit_reason = "ok"
        self.peer_id = ""
        self.endpoint = ""
        self.incarnation = time.time_ns()
        self.view: dict[str, PeerRecord] = {}
        # peer id -> (monotonic expiry, incarnation, step) of members that failed a round
        self.suspects: dict[str, tuple[float, int, int]] = {}
        self.laggard_waits = 0  # consecutive rounds held for a laggard at the end of a finite run
        self.lost: dict[str, float] = {}  # peer id -> when it left the view (monotonic)
        self.ready = False
        self.started_at = time.monotonic()
        self.last_round: dict[str, Any] = {}
        self.membership: Membership | None = None
        self.transport: Transport | None = None
        self.worker: Worker | None = None
        self.state: OuterState | None = None
        self.diloco: Diloco | None = None
        self.gossip: GossipMixer | None = None  # set in gossip mode; receives the shard pushes then
        self.metrics_port = 0
        self.admin: AdminServer | None = None
        self.rates = {"tx_bytes_per_s": 0.0, "rx_bytes_per_s": 0.0}
        self.history: list[dict[str, Any]] = []

    # ---- hooks for lower layers ----

    def _on_bytes(self, direction: str, n: int) -> None:
        self.metrics.fragment_bytes.labels(direction=direction).inc(n)
        if direction == "tx":
            self.counters.tx_bytes += n
        else:
            self.counters.rx_bytes += n

    def _on_step(self, dt: float, loss: float, samples: int) -> None:
        self.metrics.train_steps.inc()
        self.metrics.train_samples.inc(samples)
        self.metrics.train_loss.set(loss)
        self.metrics.step_duration.observe(dt)

    def _on_eval(self, loss: float) -> None:  # worker thread: gauge and an append, both thread-safe
        self.metrics.eval_loss.set(loss)
        self._record_history(loss)

    # ---- lifecycle ----

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        try:
            await self._start()
            await self._serve()
        except FatalError as exc:
            log.error("fatal", error=str(exc))
            self.exit_code, self.exit_reason = exc.code, str(exc)
        finally:
            await self._shutdown()
        return self.exit_code

    async def _start(self) -> None:
        cfg = self.cfg
        if cfg.metrics.enabled:
            try:
                self.metrics_port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except OSError as exc:
                raise FatalError(f"metrics: cannot bind {cfg.metrics.host}:{cfg.metrics.port} ({exc.strerror}); "
                                 "pick another metrics.port or 0", EXIT_NETWORK) from exc
        try:
            self.admin = AdminServer(cfg.admin.host, cfg.admin.port, self.status)
        except (OSError, ValueError) as exc:
            raise FatalError(f"admin: cannot serve on {cfg.admin.host}:{cfg.admin.port} ({exc}); "
                             "use a loopback host and a free admin.port (or 0)", EXIT_NETWORK) from exc
        rpc_key, dht_key = self._security_keys()
        self.membership = Membership(cfg.dht, cfg.run_id, self._on_dht_op, dht_key)
        ckpt_dir = Path(cfg.checkpoint.dir) if cfg.checkpoint.dir else None
        if ckpt_dir is not None:
            try:
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise FatalError(f"checkpoint.dir {ckpt_dir}: cannot create ({exc.strerror})", EXIT_CONFIG) from exc
        identity = str(ckpt_dir / "identity.key") if ckpt_dir is not None else None
        try:
            await self.membership.start(self.bootstrap, identity)
        except DhtError as exc:
            raise FatalError(f"{exc}; check --bootstrap addresses and dht.port", EXIT_NETWORK) from exc
        assert self.membership.node is not None
        self.peer_id = self.membership.node.peer_id.to_base58()
        task = await asyncio.to_thread(self._build_task)
        layout = FragmentLayout.build(
            [(n, tuple(p.shape)) for n, p in task.model.named_parameters()], cfg.mixing.num_fragments
        )
        params = dict(task.model.named_parameters())
        self.state = OuterState(layout, [layout.flatten(params, f) for f in range(layout.num_fragments)])
        self.diloco = Diloco(cfg, self.peer_id, self.state, self.bridge)
        self.diloco.on_rejected = self._on_rejected
        if cfg.mixing.mode == "gossip":
            self.gossip = GossipMixer(cfg, self.peer_id, self.state, self.bridge)
        self.transport = Transport(cfg.transport, self.gossip or self.diloco, self, self._on_bytes, self._on_rejected,
                                   lambda kind, sec: self.metrics.transfer_duration_one.labels(kind=kind).observe(sec),
                                   security=cfg.security, key=rpc_key, peer_id=self.peer_id,
                                   on_refused=self._on_refused, on_remote_event=lambda reason, logged: self.metrics
                                   .remote_events.labels(reason=reason, logged=str(logged).lower()).inc())
        try:
            port = await self.transport.start()
        except OSError as exc:
            raise FatalError(f"{exc}; pick another transport.port or 0", EXIT_NETWORK) from exc
        self.diloco.transport = self.transport
        if self.gossip is not None:
            self.gossip.transport = self.transport
        self.endpoint = f"{cfg.transport.announce_host or detect_host(cfg.transport.host)}:{port}"
        self.worker = Worker(task, layout, self.bridge, cfg.train.max_steps, cfg.train.threads, self._on_step,
                             cfg.train.eval_every_steps, self._on_eval,
                             pace=(cfg.train.max_steps_per_round, cfg.round.round_s))
        if ckpt_dir is not None:
            self._restore(ckpt_dir)
        await self._initial_sync()
        await self._check_joined_a_run()
        await self._announce()
        await self._wait_for_peers()
        self.worker.start()
        await asyncio.to_thread(self.worker.started.wait, 600)
        if self.worker.error is not None:
            raise FatalError(f"worker failed at start: {self.worker.error!r}")
        self.metrics.eval_loss.set(self.worker.initial_eval_loss)
        self.ready = True
        await self._heartbeat_once()

    def _build_task(self) -> Task:
        cfg = self.cfg
        try:
            factory = load_task_factory(cfg.task)
        except ValueError as exc:
            raise FatalError(f"task: {exc}", EXIT_CONFIG) from exc
        shard = cfg.data.shard
        if shard is None:
            shard = int.from_bytes(self.peer_id.encode()[-4:], "big") % cfg.data.num_shards
        ctx = TaskContext(seed=cfg.seed, shard=shard % cfg.data.num_shards, num_shards=cfg.data.num_shards,
                          device=resolve_device(cfg.device), data_path=cfg.data.path,
                          options={**cfg.task_options, "max_corpus_bytes": cfg.data.max_corpus_bytes,
                                   "heldout_fraction": cfg.data.heldout_fraction})
        try:
            return factory(ctx)
        except ValueError as exc:
            raise FatalError(f"task {cfg.task}: {exc}", EXIT_CONFIG) from exc

    async def _announce(self) -> None:
        assert self.membership is not None
        maddrs = await self.membership.visible_maddrs()
        await self._heartbeat_once()
        hint = "peerd join " + " ".join(f"--bootstrap {m}" for m in maddrs[:2])
        if self.cfg.run_id != "peerd":
            hint += f" --set run_id={self.cfg.run_id}"
        if self.admin is not None:
            self.admin.advertise(self.peer_id, self.cfg.run_id)
        log.info("joined", peer_id=self.peer_id, grpc=self.endpoint, metrics_port=self.metrics_port,
                 revision=self.state.revision if self.state else 0)
        print(f"To add a peer to this swarm, run:\n  {hint}", flush=True)
        if self.ready_file:
            info = {"peer_id": self.peer_id, "dht_maddrs": maddrs, "grpc": self.endpoint,
                    "metrics": f"{self.cfg.metrics.host}:{self.metrics_port}",
                    "admin": self.admin.address if self.admin else None}
            tmp = Path(self.ready_file + ".tmp")
            tmp.write_text(json.dumps(info))
            os.replace(tmp, self.ready_file)

    async def _wait_for_peers(self) -> None:
        if self.wait_for_peers <= 1:
            return
        deadline = time.monotonic() + 6 * self.cfg.dht.startup_timeout_s
        while time.monotonic() < deadline and not self.stop_event.is_set():
            await self.membership.heartbeat(self._my_record(ready=False))  # type: ignore[union-attr]
            if len(await self._refresh_view()) + 1 >= self.wait_for_peers:
                return
            await asyncio.sleep(0.2)
        log.warning("wait_for_peers_timeout", expected=self.wait_for_peers, seen=len(self.view) + 1)

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

    async def _check_joined_a_run(self) -> None:
        """A --bootstrap that finds no peer of this run but others' records is an operator mistake."""
        if not self.bootstrap or self.view or self.membership is None:
            return  # nobody behind --bootstrap any more is legitimate: this peer starts alone
        if await self.membership.other_runs():
            raise FatalError(f"run_id mismatch: no peer of run {self.cfg.run_id!r} behind --bootstrap, only peers "
                             "of another run; copy the join command (--set run_id included) from a running peer",
                             EXIT_CONFIG)
        # Same run, yet every record seen (read or offered for storage) failed its MAC.
        if self.membership.invalid_records > 0:
            raise FatalError("the swarm's records fail authentication: this peer's security.secret differs from "
                             "the swarm's; give it the swarm's secret", EXIT_CONFIG)

    def _on_refused(self, reason: str) -> None:
        self.metrics.rpc_refused.labels(reason=reason).inc()

    def _on_rejected(self, reason: str) -> None:
        self.metrics.rejected.labels(reason=reason).inc()

    def _on_dht_op(self, op: str, outcome: str) -> None:
        self.metrics.dht_ops.labels(op=op, outcome=outcome).inc()

    # ---- loops ----

    async def _serve(self) -> None:
        tasks = [asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                 asyncio.create_task(self._round_loop(), name="rounds"),
                 asyncio.create_task(self._status_loop(), name="status"),
                 asyncio.create_task(self._checkpoint_loop(), name="checkpoints"),
                 asyncio.create_task(self._reping_loop(), name="reping")]
        stop = asyncio.create_task(self.stop_event.wait())
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

    def _record_history(self, eval_loss: float | None = None) -> None:
        s = self.bridge.stats
        self.history.append({"t_s": round(time.monotonic() - self.started_at, 3), "step": s.step,
                             "train_loss": s.loss if math.isfinite(s.loss) else None,
                             "eval_loss": eval_loss if eval_loss is not None and math.isfinite(eval_loss) else None,
                             "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes})

    def status(self) -> dict[str, Any]:
        """Snapshot for the admin endpoint (read from the admin thread; values only, no secrets)."""
        s, state = self.bridge.stats, self.state
        healthy = (self.ready and self.worker is not None and self.worker.alive and self.worker.error is None
                   and self.membership is not None and self.membership.p2pd_alive())
        return {
            "peer_id": self.peer_id, "run_id": self.cfg.run_id, "mode": self.cfg.mixing.mode,
            "grpc": self.endpoint, "metrics": f"{self.cfg.metrics.host}:{self.metrics_port}",
            "ready": self.ready, "healthy": bool(healthy), "uptime_s": round(time.monotonic() - self.started_at, 1),
            "swarm_size": len(self.view) + 1, "step": s.step, "samples": s.samples,
            "loss": s.loss if math.isfinite(s.loss) else None, "samples_per_s": round(s.samples_per_s, 2),
            "done": s.done, "last_round": dict(self.last_round),
            "rounds_committed": self.counters.rounds_committed, "rounds_aborted": self.counters.rounds_aborted,
            "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes, **self.rates,
            "revision": state.revision if state else 0, "state_hash": state.state_hash() if state else None,
            "mass_weights": self.gossip.mass_weights() if self.gossip else None,  # gossip push-sum weights
        }

    async def _status_loop(self) -> None:
        self._record_history(self.worker.initial_eval_loss if self.worker else None)
        while True:
            await asyncio.sleep(self.cfg.train.log_every_s)
            self._record_history()
            s = self.bridge.stats
            log.info("status", step=s.step, loss=round(s.loss, 4), peers=len(self.view) + 1,
                     revision=self.state.revision if self.state else 0,
                     committed=self.counters.rounds_committed, aborted=self.counters.rounds_aborted,
                     tx_bytes=self.counters.tx_bytes, rx_bytes=self.counters.rx_bytes,
                     last_round=self.last_round.get("outcome"))

    def summary(self, final_loss: float) -> dict[str, Any]:
        """This peer's entry of the run summary (DESIGN section 5); NaN losses become null."""
        stats = self.bridge.stats
        initial = self.worker.initial_eval_loss if self.worker else float("nan")
        return {
            "peer_id": self.peer_id, "steps": stats.step, "samples": stats.samples,
            "initial_eval_loss": initial if math.isfinite(initial) else None,
            "final_eval_loss": final_loss if math.isfinite(final_loss) else None,
            "tx_bytes": self.counters.tx_bytes, "rx_bytes": self.counters.rx_bytes,
            "rounds_committed": self.counters.rounds_committed, "rounds_aborted": self.counters.rounds_aborted,
            "revision": self.state.revision if self.state else 0,
            "state_hash": self.state.state_hash() if self.state else state_hash(0, []),
            "exit": self.exit_reason if self.exit_code == EXIT_OK else f"error: {self.exit_reason}",
            "recoveries_s": self.counters.recoveries_s, "syncs": self.counters.syncs,
            "history": self.history,
        }
