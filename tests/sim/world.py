"""A simulated swarm: N real peers (PeerNode, real mixers, codecs, state, worker) on virtual time.

Each :class:`SimPeer` is the real :class:`peerd.node.peer.PeerNode` over the in-memory network
and DHT, with a real :class:`peerd.train.worker.Worker` training a tiny task; a loop task steps the
worker every ``step_s`` of virtual time and serves its bridge commands at step boundaries, as
the worker thread does. :class:`World` runs a seeded :class:`Scenario` (latency, loss,
partitions, stalls, slow workers, crashes, restarts, joins), records every round's outcome and
checks the invariants after every round boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from peerd.core.bridge import Bridge
from peerd.core.config import PeerdConfig, load_config
from peerd.core.errors import Counters
from peerd.core.faults import NO_FAULTS
from peerd.core.fragments import FragmentLayout
from peerd.core.metrics import Metrics
from peerd.core.state import OuterState
from peerd.node.peer import PeerNode
from peerd.train.tasks.base import Task
from peerd.train.worker import Worker
from tests.sim.net import Link, SimDht, SimMembership, SimNetwork, SimTransport
from tests.sim.vloop import LoopClock, VirtualLoop

EPOCH = 1_800_000_000.0  # virtual Unix time of loop time 0 (any fixed value)
DIM = 24


class _Batches:
    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)
        self.k = 0

    def next_batch(self) -> torch.Tensor:
        self.k += 1
        return torch.randn(DIM, generator=self.g) * 0.1

    def samples_per_batch(self) -> int:
        return 8

    def state_dict(self) -> dict[str, Any]:
        return {"k": self.k}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.k = int(state["k"])


def tiny_task(shard: int) -> Task:
    """A quadratic toward a per-shard target: cheap, deterministic, and the swarm mean matters."""
    torch.manual_seed(0)
    model = torch.nn.Linear(DIM, 2, bias=True)
    target = torch.linspace(-1, 1, DIM) * (1 + 0.1 * shard)

    def loss(m: torch.nn.Module, noise: torch.Tensor) -> torch.Tensor:
        return ((m.weight - target - noise) ** 2).mean() + (m.bias ** 2).mean()

    def evaluate(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(((m.weight - torch.linspace(-1, 1, DIM)) ** 2).mean())

    return Task(model, lambda ps: torch.optim.SGD(ps, lr=0.05), _Batches(shard), loss, evaluate)


def sim_config(mode: str = "diloco", **overrides: Any) -> PeerdConfig:
    # Clock rounds (target_h 0): the sweep's short runs (16-24 steps) would hold under the default
    # H; tests/sim/pacing.py and test_paced.py cover work pacing.
    sets = ["round.round_s=2", "round.settle_s=0.15", "round.plan_slot_s=0.15", "round.plan_candidates=2",
            "round.target_h=0", f"mixing.mode={mode}", "mixing.num_fragments=2", "mixing.block_size=16",
            "dht.heartbeat_s=1", "dht.ttl_s=4", "transport.rpc_timeout_s=2", "transport.state_timeout_s=60"]
    if mode == "gossip":
        sets.append("mixing.topology=random")
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)


class SimPeer:
    """One real peer node on the simulated network, with its worker stepped on virtual time."""

    def __init__(self, world: World, index: int, incarnation: int, step_s: float, max_steps: int) -> None:
        self.world, self.index = world, index
        self.peer_id = f"peer-{index:02d}"
        self.step_s = step_s
        cfg = world.cfg
        task = tiny_task(index)
        self.layout = FragmentLayout.build([(n, tuple(p.shape)) for n, p in task.model.named_parameters()],
                                           cfg.mixing.num_fragments)
        params = dict(task.model.named_parameters())
        self.params = params
        self.state = OuterState(self.layout, [self.layout.flatten(params, f) for f in range(self.layout.num_fragments)])
        self.bridge, self.counters, self.metrics = Bridge(), Counters(), Metrics()
        self.clock = LoopClock(world.loop, EPOCH, world.rng.uniform(-0.02, 0.02))
        self.transport = SimTransport(world.net, self.peer_id, f"sim:{10000 + index}")
        self.membership = SimMembership(world.dht, world.net, self.peer_id, cfg.dht.ttl_s, world.dht_delay_s,
                                        random.Random(world.rng.random()), cfg.run_id)
        self.stopped: str | None = None
        self.node = PeerNode(cfg, self.peer_id, self.transport.endpoint, incarnation, self.membership,
                             self.transport, self.state, self.bridge, self.clock, self.metrics, self.counters,
                             NO_FAULTS, [], world.exit_when_done, self._stop)
        self.worker = Worker(task, self.layout, self.bridge, max_steps, 1, lambda *a: None,
                             pace=(cfg.train.max_steps_per_round, cfg.round.round_s), clock=self.clock)
        self.tasks: list[asyncio.Task] = []
        self.trained_steps = self.idle_steps = 0  # step slots trained / left idle by the worker's pacing

    def _stop(self, reason: str) -> None:
        if self.stopped is None:
            self.stopped = reason
            self.world.on_stop(self, reason)
            self.tasks.append(asyncio.ensure_future(self.leave()))

    async def start(self) -> None:
        await self.node.start_serving()
        await self.node.detect_reachability()
        await self.node.join(lambda frags: [self.layout.unflatten_into(self.params, f, t) for f, t in frags.items()])
        await self.node.become_ready()
        self.tasks = [asyncio.ensure_future(c) for c in self.node.loops(lambda: None).values()]
        self.tasks.append(asyncio.ensure_future(self._train()))

    async def _train(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            await self.world.net.gate(self.peer_id)
            self.worker.serve_commands(block=False)
            if not self.worker.idle():
                self.worker.train_step()
                self.trained_steps += 1
            elif not self.worker.bridge.stats.done:
                self.idle_steps += 1

    def kill(self) -> None:
        """SIGKILL: every task ends, the handler vanishes, the DHT record stays until its TTL."""
        for t in self.tasks:
            t.cancel()
        self.world.net.handlers.pop(self.transport.endpoint, None)
        self.stopped = self.stopped or "killed"

    async def leave(self) -> None:
        me = asyncio.current_task()
        for t in self.tasks:
            if t is not me:
                t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.node.leave(swarm_finishing=self.stopped == "done"), 10)
        self.world.net.handlers.pop(self.transport.endpoint, None)


@dataclass
class Event:
    """One scheduled fault: at virtual time ``at`` do ``kind`` to ``peer`` (and ``other``)."""

    at: float
    # stall | crash | restart | join | cut | heal | lose (peer -> other drops calls for arg s) | leave (graceful)
    # | rejoin (a restart that keeps its state, as from a checkpoint)
    kind: str
    peer: int
    arg: float = 0.0
    other: int = -1

    def __str__(self) -> str:
        tail = f" with {self.other}" if self.other >= 0 else ""
        return f"t={self.at:7.2f} {self.kind:<7} peer {self.peer}{tail} {self.arg:g}"


@dataclass
class Scenario:
    """Everything a run depends on; a seed and this replay it exactly."""

    seed: int
    peers: int = 4
    mode: str = "diloco"
    duration_s: float = 40.0
    max_steps: int = 0  # >0: workers stop training after this many steps
    exit_when_done: bool | None = None  # default: a finite run (max_steps > 0) exits when done
    latency_s: float = 0.005
    jitter_s: float = 0.002
    loss: float = 0.0
    dht_delay_s: float = 0.02
    bandwidth_bps: float = 1e9  # every link, each direction
    step_s: float = 0.25
    slow: dict[int, float] = field(default_factory=dict)  # peer -> step time factor
    asym: dict[tuple[int, int], float] = field(default_factory=dict)  # (a, b) -> one-way latency
    events: list[Event] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    clients: set[int] = field(default_factory=set)  # peers behind a NAT (cannot be dialled: client mode)
    # True: peers detect their reachability by dial-back (transport.mode=auto); False: it is configured
    # (server, or client for ``clients``), so a scenario without clients runs exactly as before.
    detect: bool = False
    uplink: dict[int, float] = field(default_factory=dict)  # peer -> upload cap in bytes/s, announced and enforced

    def describe(self) -> str:
        head = (f"seed={self.seed} peers={self.peers} mode={self.mode} duration={self.duration_s}s "
                f"max_steps={self.max_steps} latency={self.latency_s} dht_delay={self.dht_delay_s} "
                f"bandwidth={self.bandwidth_bps:g} loss={self.loss} slow={self.slow} "
                f"asym={self.asym} clients={sorted(self.clients)} uplink={self.uplink}")
        return "\n".join([head, *(f"  {e}" for e in self.events)])


class InvariantError(AssertionError):
    """An invariant failed; the message carries the scenario so the seed replays."""


@dataclass
class RoundLog:
    """What happened in one round, per live peer: revision, hash and outcome."""

    r: int
    rows: dict[str, tuple[int, str, str]]


class World:
    """Runs one scenario and checks invariants after every round."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rng = random.Random(sc.seed)
        self.loop = VirtualLoop()
        self.cfg = sim_config(sc.mode, **sc.config)
        self.exit_when_done = sc.max_steps > 0 if sc.exit_when_done is None else sc.exit_when_done
        self.dht_delay_s = sc.dht_delay_s
        self.net = SimNetwork(self.loop, random.Random(self.rng.random()),
                              Link(sc.latency_s, sc.jitter_s, sc.bandwidth_bps, sc.loss))
        self.dht = SimDht(self.loop, EPOCH)
        self.peers: dict[int, SimPeer] = {}
        self.gone: list[SimPeer] = []
        self.log: list[RoundLog] = []
        self.stops: list[tuple[float, str, str]] = []
        self.checks: list[Callable[[World, int], None]] = []
        self.epoch = EPOCH
        self._mass: tuple[tuple[str, ...], tuple[float, ...]] | None = None  # (live incarnations, totals)
        self.forks: dict[int, int] = {}  # revision -> first round it held two states
        self.orphans: list[SimPeer] = []  # clients that (re)started with no reachable peer up (see _add)
        self.peers_hook: Callable[[SimPeer], None] = lambda peer: None  # a test's change to each new peer

    def peer_id(self, i: int) -> str:
        return f"peer-{i:02d}"

    def on_stop(self, peer: SimPeer, reason: str) -> None:
        self.stops.append((self.loop.time(), peer.peer_id, reason))

    def live(self) -> list[SimPeer]:
        return [p for p in self.peers.values() if p.stopped is None]

    async def _add(self, i: int, keep: SimPeer | None = None) -> None:
        step = self.sc.step_s * self.sc.slow.get(i, 1.0)
        # Clients cannot be dialled, not even by each other: a client starting while only clients are up
        # can be handed the swarm's state by nobody; it waits until nobody is ahead and starts a lineage
        # of its own (seed 1516).
        orphan = i in self.sc.clients and all(p.index in self.sc.clients for p in self.live())
        if i in self.sc.clients:
            self.net.clients.add(self.peer_id(i))
        peer = SimPeer(self, i, int(self.loop.time() * 1e9) + i, step, self.sc.max_steps)
        if not self.sc.detect:
            peer.node.reach.mode = "client" if i in self.sc.clients else "server"
        if i in self.sc.uplink:  # as transport.max_upload_mbit would: paced, and announced in the record
            self.net.uplink[self.peer_id(i)] = self.sc.uplink[i]
            peer.node.view.uplink_bps = int(self.sc.uplink[i])
        self.peers_hook(peer)
        if orphan:
            self.orphans.append(peer)
        if keep is not None:  # as restored from a checkpoint: outer state and model as they were
            snap = keep.state.snapshot()
            peer.state.install(snap.revision, snap.theta, snap.momentum)
            for f, theta in snap.theta.items():
                peer.layout.unflatten_into(peer.params, f, theta)
        self.peers[i] = peer
        await peer.start()

    async def _apply(self, e: Event) -> None:
        net, pid = self.net, self.peer_id(e.peer)
        if e.kind == "stall":
            net.stalled_until[pid] = self.loop.time() + e.arg
        elif e.kind == "crash" and e.peer in self.peers:
            self.peers[e.peer].kill()
            self.gone.append(self.peers.pop(e.peer))
        elif e.kind in ("restart", "join") and e.peer not in self.peers:
            await self._add(e.peer)
        elif e.kind == "leave" and e.peer in self.peers:
            peer = self.peers.pop(e.peer)
            peer._stop("left")
            self.gone.append(peer)
        elif e.kind == "rejoin" and e.peer not in self.peers:
            await self._add(e.peer, keep=next((p for p in reversed(self.gone) if p.index == e.peer), None))
        elif e.kind == "cut":
            net.cut.add(frozenset((pid, self.peer_id(e.other))))
        elif e.kind == "heal":
            net.cut.discard(frozenset((pid, self.peer_id(e.other))))
        elif e.kind == "suspect" and e.peer in self.peers:  # as after a round that ``other`` failed
            self.peers[e.peer].node.view.suspect((self.peer_id(e.other),))
        elif e.kind == "lose":  # one direction drops every call for a while (asymmetric loss)
            key = (pid, self.peer_id(e.other))
            before = net.links.get(key)
            net.links[key] = Link(self.sc.latency_s, self.sc.jitter_s, self.sc.bandwidth_bps, 1.0)
            restore = (lambda: net.links.pop(key)) if before is None else (lambda: net.links.update({key: before}))
            self.loop.call_later(e.arg, restore)

    async def _events(self) -> None:
        for e in sorted(self.sc.events, key=lambda e: e.at):
            await asyncio.sleep(max(0.0, e.at - self.loop.time()))
            await self._apply(e)

    def snapshot_round(self, r: int) -> RoundLog:
        rows = {p.peer_id: (p.state.revision, p.state.state_hash(), p.node.driver.last_round.get("reason", ""))
                for p in self.live()}
        entry = RoundLog(r, rows)
        self.log.append(entry)
        return entry

    async def main(self) -> None:
        for (a, b), lat in self.sc.asym.items():
            self.net.links[(self.peer_id(a), self.peer_id(b))] = Link(lat, self.sc.jitter_s, self.sc.bandwidth_bps,
                                                                      self.sc.loss)
        # Start just after a round boundary, as a launcher would; peers join one by one.
        round_s = self.cfg.round.round_s
        for i in range(self.sc.peers):
            if not any(e.kind == "join" and e.peer == i for e in self.sc.events):
                await self._add(i)
        events = asyncio.ensure_future(self._events())
        r0 = int((EPOCH + self.loop.time()) // round_s) + 1
        end = self.sc.duration_s
        r = r0
        while self.loop.time() < end:
            # Check just before the next round's start: this round's commits are done.
            at = (r + 1) * round_s - EPOCH - 0.01
            await asyncio.sleep(max(0.0, at - self.loop.time()))
            self.snapshot_round(r)
            for check in self.checks:
                check(self, r)
            if self.exit_when_done and not self.live():
                break
            r += 1
        events.cancel()
        for p in list(self.peers.values()):
            for t in p.tasks:
                t.cancel()
        await asyncio.sleep(0)

    def run(self) -> World:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.main())
            for t in asyncio.all_tasks(self.loop):
                t.cancel()
            self.loop.run_until_complete(asyncio.sleep(0.01))
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()
        return self

    def fail(self, what: str) -> None:
        trail = "\n".join(f"  r={e.r}: " + ", ".join(f"{k[-2:]}:rev{v[0]}/{v[1][:6]}/{v[2]}"
                                                         for k, v in sorted(e.rows.items())) for e in self.log[-14:])
        raise InvariantError(f"{what}\nscenario (replay with this seed):\n{self.sc.describe()}\nlast rounds:\n{trail}")
