"""The forwarder: one process that moves IP packets between the hosts' TUN devices, late.

Run as ``python -m bench.wan.delayline`` by :class:`bench.wan.WanEmulator`; it reads one JSON
config line on stdin, creates one TUN device per host (in its own network namespace, so the
emulator can move them), prints ``{"ready": true}`` and forwards until stdin closes, so it never
outlives its parent. A ``stats`` line on stdin is answered by one JSON line of counters.

Every IPv4 packet a host sends goes through three stages, as over an access link, the internet
and the far access link: the sender's up queue (rate and tail drop), the link (delay, jitter,
random loss) and the receiver's down queue. Times are computed when the packet is read, and the
packet is written to the receiver's TUN at its delivery time (a heap and ``select`` with a
microsecond timeout, which epoll's millisecond timeout would not give). Jitter never reorders a
link's packets: TCP reads reordering as loss, and real paths reorder rarely. Each link draws its
loss and jitter from its own generators seeded from the run seed, so the same seed drops the
same packets (the n-th packet of a link is lost or not, whatever the timing).
"""

from __future__ import annotations

import fcntl
import heapq
import json
import os
import random
import select
import struct
import sys
import time
from typing import Any

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
MAX_BATCH = 64  # packets read from one device before looking at the others and the clock


def open_tun(name: str) -> int:
    """Create TUN device ``name`` (layer 3, no packet-info header); returns its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


SPARSE_BYTES = 128  # pure TCP ACKs and small control packets


class Queue:
    """A link of fixed rate with a tail-drop buffer ``limit_s`` deep (in time at the rate).

    Packets of at most ``SPARSE_BYTES`` skip the backlog, as sparse flows do under fq_codel (the
    default qdisc of Linux and of most home routers): in a plain FIFO, the ACKs of a host's
    downloads queue and drop behind its uploads, and 4 peers exchanging in a ring reached half
    their rate. They still take their share of the rate.
    """

    def __init__(self, rate_bps: float | None, limit_s: float) -> None:
        self.byte_s = 8.0 / rate_bps if rate_bps else 0.0
        self.limit_s = limit_s
        self.free_at = 0.0

    def admit(self, t: float, size: int) -> float | None:
        """When a packet arriving at ``t`` has left the queue; None when the buffer is full."""
        if not self.byte_s:
            return t
        if size <= SPARSE_BYTES:
            self.free_at = max(t, self.free_at) + size * self.byte_s
            return t + size * self.byte_s
        start = max(t, self.free_at)
        if start - t > self.limit_s:
            return None
        self.free_at = start + size * self.byte_s
        return self.free_at


class Jitter:
    """A delay offset in ``[-amp, amp]`` that drifts linearly between random knots ``period`` apart.

    Per-packet independent jitter would reorder packets, and holding them in order instead
    raises the mean delay by nearly ``amp`` under load (every packet waits for the slowest before
    it). A drifting offset whose slope stays below 1 keeps order and a zero mean: queueing
    delay on a real path varies like that too, over tens of milliseconds rather than per packet.
    """

    def __init__(self, amp: float, rng: random.Random) -> None:
        self.amp, self.rng = amp, rng
        self.period = max(0.05, 4 * amp)  # slope <= 2 amp / period <= 0.5
        self.t0 = self.t1 = -1.0
        self.v0 = self.v1 = 0.0

    def offset(self, t: float) -> float:
        """The offset at time ``t`` (non-decreasing ``t`` across calls)."""
        if not self.amp:
            return 0.0
        if t >= self.t1 + self.period:  # idle for a while (or first packet): start afresh here
            self.t1, self.v1 = t, self.rng.uniform(-self.amp, self.amp)
        while t >= self.t1:
            self.t0, self.v0 = self.t1, self.v1
            self.t1, self.v1 = self.t1 + self.period, self.rng.uniform(-self.amp, self.amp)
        return self.v0 + (self.v1 - self.v0) * (t - self.t0) / self.period


class Link:
    """One direction between two hosts: delay, jitter, loss, FIFO delivery.

    Loss and jitter draw from two generators seeded from ``seed``, so which packets are lost
    depends on the seed and on nothing else (not on timing).
    """

    def __init__(self, delay_s: float, jitter_s: float, loss: float, seed: str) -> None:
        self.delay_s, self.loss = delay_s, loss
        self.rng = random.Random(f"{seed}:loss")
        self.jitter = Jitter(jitter_s, random.Random(f"{seed}:jitter"))
        self.last = 0.0
        self.sent = self.delivered = self.lost = self.queue_drops = self.bytes = 0

    def arrival(self, t: float) -> float | None:
        """When a packet entering at ``t`` reaches the far end; None when it is lost."""
        if self.loss and self.rng.random() < self.loss:
            self.lost += 1
            return None
        self.last = max(self.last, t + max(0.0, self.delay_s + self.jitter.offset(t)))
        return self.last


class Forwarder:
    """All hosts' devices, queues and links, and the delivery heap."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        hosts = cfg["hosts"]
        self.fds = [open_tun(h["dev"]) for h in hosts]
        self.index = {fd: i for i, fd in enumerate(self.fds)}
        self.by_addr = {bytes(int(x) for x in h["addr"].split(".")): i for i, h in enumerate(hosts)}
        self.up = [Queue(h.get("up_bps"), h["queue_s"]) for h in hosts]
        self.down = [Queue(h.get("down_bps"), h["queue_s"]) for h in hosts]
        seed = cfg.get("seed", 0)
        self.links = [[Link(**lk, seed=f"{seed}:{i}:{j}") for j, lk in enumerate(row)]
                      for i, row in enumerate(cfg["links"])]
        self.by_port: dict[tuple[int, int, int, int], int] | None = {} if cfg.get("count_ports") else None
        self.heap: list[tuple[float, int, int, bytes]] = []
        self.seq = 0
        self.unroutable = self.write_errors = 0

    def receive(self, src: int, pkt: bytes, now: float) -> None:
        """Route one packet read from host ``src``'s device and schedule (or drop) it."""
        if len(pkt) < 20 or pkt[0] >> 4 != 4:
            self.unroutable += 1  # IPv6 is off in the namespaces; anything else is not ours to carry
            return
        dst = self.by_addr.get(pkt[16:20])
        if dst is None or dst == src:
            self.unroutable += 1
            return
        link = self.links[src][dst]
        link.sent += 1
        if self.by_port is not None and pkt[9] in (6, 17):  # TCP, UDP: bytes per (src, sport, dst, dport)
            ihl = (pkt[0] & 0x0F) * 4
            sport, dport = struct.unpack_from("!HH", pkt, ihl)
            key = (src, sport, dst, dport)
            self.by_port[key] = self.by_port.get(key, 0) + len(pkt)
        t = self.up[src].admit(now, len(pkt))
        if t is not None:
            t = link.arrival(t)
            if t is None:
                return
            t = self.down[dst].admit(t, len(pkt))
        if t is None:
            link.queue_drops += 1
            return
        link.delivered += 1
        link.bytes += len(pkt)
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, dst, pkt))

    def deliver_due(self, now: float) -> None:
        """Write every packet whose time has come."""
        heap = self.heap
        while heap and heap[0][0] <= now:
            _, _, dst, pkt = heapq.heappop(heap)
            try:
                os.write(self.fds[dst], pkt)
            except OSError:  # the device's queue is full or it went down: the packet is lost
                self.write_errors += 1

    def stats(self) -> dict[str, Any]:
        """Counters per directed link ``"i->j"`` and in total."""
        links = {f"{i}->{j}": {"sent": lk.sent, "delivered": lk.delivered, "lost": lk.lost,
                               "queue_drops": lk.queue_drops, "bytes": lk.bytes}
                 for i, row in enumerate(self.links) for j, lk in enumerate(row) if lk.sent}
        out = {"links": links, "unroutable": self.unroutable, "write_errors": self.write_errors,
               "in_flight": len(self.heap)}
        if self.by_port is not None:  # as sent, before any loss
            out["by_port"] = [[*k, n] for k, n in self.by_port.items()]
        return out

    def run(self, control: int) -> None:
        """Forward until ``control`` (stdin) reaches end of file."""
        os.set_blocking(control, False)
        pending = b""
        watch = [control, *self.fds]
        while True:
            now = time.monotonic()
            self.deliver_due(now)
            timeout = min(1.0, max(0.0, self.heap[0][0] - time.monotonic())) if self.heap else 1.0
            ready, _, _ = select.select(watch, [], [], timeout)
            now = time.monotonic()
            for fd in ready:
                if fd == control:
                    chunk = os.read(control, 4096)
                    if not chunk:
                        return
                    pending += chunk
                    while b"\n" in pending:
                        line, pending = pending.split(b"\n", 1)
                        if line.strip() == b"stats":
                            _say(self.stats())
                    continue
                src = self.index[fd]
                for _ in range(MAX_BATCH):
                    try:
                        pkt = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    self.receive(src, pkt, now)


def _say(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def main() -> None:
    """Read the config line, open the devices, report ready, forward."""
    cfg = json.loads(sys.stdin.buffer.readline())
    fwd = Forwarder(cfg)
    _say({"ready": True, "pid": os.getpid()})
    fwd.run(sys.stdin.fileno())
    for fd in fwd.fds:  # closing a (non-persistent) TUN fd deletes the device
        os.close(fd)


if __name__ == "__main__":
    main()
