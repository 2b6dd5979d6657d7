"""Network namespaces joined by veth links shaped with ``tc qdisc ... tbf`` (needs root and iproute2).

netem is not available on the benchmark machine, so links have a rate limit and a queue but no
added delay. Everything created here is torn down in ``close()`` (namespaces deleted, which also
removes their veth ends and kills nothing that is not already ours: callers stop their
processes first, and ``close`` kills any process still inside a namespace it created).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def available() -> str | None:
    """None when namespaces can be used here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root (ip netns, tc)"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "iproute2 (ip, tc) not installed"
    return None


class Lab:
    """A set of namespaces; ``link()`` joins two with a shaped veth pair."""

    def __init__(self) -> None:
        """Nothing is created until ``namespace()``."""
        self.tag = uuid.uuid4().hex[:6]
        self.names: list[str] = []
        self._links = 0

    def namespace(self) -> str:
        """Create a namespace with loopback up; returns its name."""
        name = f"pb{self.tag}{len(self.names)}"
        _ip("netns", "add", name)
        self.names.append(name)
        _ip("netns", "exec", name, "ip", "link", "set", "lo", "up")
        return name

    def prefix(self, ns: str) -> list[str]:
        """Command prefix that runs a program inside ``ns``."""
        return ["ip", "netns", "exec", ns]

    def link(self, ns_a: str, ns_b: str, rate_mbit: float | None) -> tuple[str, str]:
        """Join two namespaces with a veth pair, both directions shaped to ``rate_mbit``.

        Returns:
            The addresses of ``ns_a`` and ``ns_b`` on the link.
        """
        k = self._links
        self._links += 1
        a, b = f"pv{self.tag}{k}a", f"pv{self.tag}{k}b"
        _ip("link", "add", a, "type", "veth", "peer", "name", b)
        addrs = (f"10.77.{k}.1", f"10.77.{k}.2")
        for dev, ns, addr in ((a, ns_a, addrs[0]), (b, ns_b, addrs[1])):
            _ip("link", "set", dev, "netns", ns)
            _ip("netns", "exec", ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            _ip("netns", "exec", ns, "ip", "link", "set", dev, "up")
            if rate_mbit:
                # burst >= one GSO super-packet (64 KiB) or tbf drops it; >= rate/250 for HZ=250.
                burst = max(65536, int(rate_mbit * 1e6 / 8 / 250))
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf",
                                "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", "100ms"],
                               check=True, capture_output=True, text=True, timeout=30)
        return addrs

    def tx_bytes(self, ns: str, dev: str = "lo") -> int:
        """Bytes sent by ``dev`` inside ``ns`` (kernel counter; loopback counts every local packet once)."""
        out = subprocess.run(["ip", "netns", "exec", ns, "cat", f"/sys/class/net/{dev}/statistics/tx_bytes"],
                             check=True, capture_output=True, text=True, timeout=30)
        return int(out.stdout.strip())

    def close(self) -> None:
        """Kill anything left inside our namespaces, then delete them (and their veths)."""
        for name in self.names:
            pids = _ip("netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name, check=False)
        self.names.clear()

    def __enter__(self) -> Lab:
        """Use as a context manager so namespaces never outlive the benchmark."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Tear down."""
        self.close()


def leftover() -> list[str]:
    """Namespaces from an earlier benchmark that was SIGKILLed (named ``pb*``)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("pb")]


if __name__ == "__main__":
    print(available() or "ok", Path("/var/run/netns").exists(), leftover())
