"""``WanEmulator``: one network namespace per host, joined through the delay line.

Each host ``i`` gets namespace ``wanem<pid>-<serial>-<i>`` with loopback and one TUN device ``wan0``
holding ``198.18.0.<i+1>/15`` (the benchmarking range of RFC 2544): the only route in the
namespace, so a process inside can reach the other hosts and nothing else. The TUN devices are
opened by one forwarder process (:mod:`bench.wan.delayline`) that applies the profile. All of it
goes away on ``close()``: on leaving the ``with`` block, on an exception, on SIGTERM (turned into
``SystemExit`` while the emulator is open) and at interpreter exit. Namespaces whose creating
process is dead (a SIGKILLed benchmark) are deleted when the next emulator starts.
"""

from __future__ import annotations

import atexit
import functools
import ipaddress
import itertools
import json
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.wan import profiles
from bench.wan.profiles import Profile

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "wanem"
BASE = ipaddress.IPv4Address("198.18.0.0")
_STALE = re.compile(rf"^{PREFIX}(\d+)-\d+(-\d+)?$")
_serial = itertools.count()


@functools.cache
def available() -> str | None:
    """None when the emulator can run here, else why not (tried once: a namespace and /dev/net/tun)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, TUN devices)"
    if not shutil.which("ip"):
        return "iproute2 (the ip command) is not installed"
    try:
        os.close(os.open("/dev/net/tun", os.O_RDWR))
    except OSError as exc:
        return f"cannot open /dev/net/tun: {exc}"
    probe = f"{PREFIX}{os.getpid()}-999"  # named like ours, so a crash here is cleaned up later too
    res = _ip("netns", "add", probe, check=False)
    _ip("netns", "del", probe, check=False)
    if res.returncode:
        return f"cannot create a network namespace: {res.stderr.strip()}"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def namespaces() -> list[str]:
    """Every emulator namespace on the machine (ours and others')."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def _kill_inside(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale() -> list[str]:
    """Delete emulator namespaces whose creator is no longer running; returns their names."""
    gone = []
    for ns in namespaces():
        m = _STALE.match(ns)
        if m and not _alive(int(m.group(1))):
            _kill_inside(ns)
            _ip("netns", "del", ns, check=False)
            gone.append(ns)
    return gone


class WanEmulator:
    """``n_hosts`` namespaces under one profile (or one profile per host), with a seeded delay line.

    ``count_ports`` makes the forwarder count bytes per TCP/UDP port pair (costs some CPU per packet).
    """

    def __init__(self, n_hosts: int, profile: str | Profile | list[str | Profile] = "lan", seed: int = 0,
                 start_timeout_s: float = 20.0, count_ports: bool = False) -> None:
        """Nothing is created until ``start()`` (or entering the ``with`` block)."""
        if not 2 <= n_hosts <= 250:
            raise ValueError("n_hosts must be between 2 and 250")
        plist = profile if isinstance(profile, list) else [profile] * n_hosts
        if len(plist) != n_hosts:
            raise ValueError(f"{len(plist)} profiles for {n_hosts} hosts")
        self.profiles = [profiles.get(p) for p in plist]
        self.n, self.seed, self.start_timeout_s, self.count_ports = n_hosts, seed, start_timeout_s, count_ports
        self.tag = f"{PREFIX}{os.getpid()}-{next(_serial)}"  # several emulators may share a process
        # named at random: they exist in the root namespace only until moved, and may not clash
        self.devs = [f"wt{secrets.token_hex(6)}" for _ in range(n_hosts)]
        self.ns: list[str] = []
        self.procs: list[subprocess.Popen[Any]] = []
        self._fwd: subprocess.Popen[bytes] | None = None
        self._old_sigterm: Any = None
        self._lock = threading.Lock()

    # --- addresses and commands -------------------------------------------------------------
    def addr(self, i: int) -> str:
        """Host ``i``'s address."""
        return str(BASE + i + 1)

    def prefix(self, i: int) -> list[str]:
        """Command prefix that runs a program in host ``i``'s namespace."""
        return ["ip", "netns", "exec", self.ns[i]]

    def popen(self, i: int, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in host ``i``'s namespace (own session); it is killed on ``close()``."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen([*self.prefix(i), *argv], **kw)
        self.procs.append(proc)
        return proc

    def run_in(self, i: int, argv: list[str], timeout: float = 60.0, **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in host ``i``'s namespace to completion (bounded by ``timeout``)."""
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run([*self.prefix(i), *argv], timeout=timeout, **kw)

    def stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The forwarder's counters per directed link (``"0->1"``: sent, delivered, lost, queue_drops, bytes).

        With ``count_ports``, also ``by_port``: ``[src, sport, dst, dport, bytes]`` per TCP/UDP flow direction.
        """
        assert self._fwd and self._fwd.stdin and self._fwd.stdout
        with self._lock:
            self._fwd.stdin.write(b"stats\n")
            self._fwd.stdin.flush()
            return self._read_line(timeout_s)

    @property
    def forwarder_pid(self) -> int | None:
        """Pid of the delay line process (for its CPU time)."""
        return self._fwd.pid if self._fwd else None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> WanEmulator:
        """Create namespaces, the forwarder and its devices; on any failure undo what was done."""
        why = available()
        if why:
            raise RuntimeError(f"WAN emulator unavailable: {why}")
        clean_stale()
        atexit.register(self.close)
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_exit)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def _start(self) -> None:
        for i in range(self.n):
            ns = f"{self.tag}-{i}"
            _ip("netns", "add", ns)
            self.ns.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        devs = self.devs
        hosts = [{"dev": d, "addr": self.addr(i), "queue_s": profiles.queue_s(p),
                  "up_bps": p.up_mbit and p.up_mbit * 1e6, "down_bps": p.down_mbit and p.down_mbit * 1e6}
                 for i, (d, p) in enumerate(zip(devs, self.profiles, strict=True))]
        links = [[profiles.link_params(a, b) for b in self.profiles] for a in self.profiles]
        self._fwd = subprocess.Popen([sys.executable, "-m", "bench.wan.delayline"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=ROOT, start_new_session=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self._fwd.stdin
        self._fwd.stdin.write(json.dumps({"hosts": hosts, "links": links, "seed": self.seed,
                                          "count_ports": self.count_ports}).encode() + b"\n")
        self._fwd.stdin.flush()
        if not self._read_line(self.start_timeout_s).get("ready"):
            raise RuntimeError("delay line did not start")
        for i, (ns, dev) in enumerate(zip(self.ns, devs, strict=True)):
            _ip("link", "set", "dev", dev, "netns", ns)
            _ip("-n", ns, "link", "set", "dev", dev, "name", "wan0")
            # no IPv6 link-local address, so no router solicitations or DAD through the delay line
            _ip("-n", ns, "link", "set", "dev", "wan0", "addrgenmode", "none")
            _ip("-n", ns, "addr", "add", f"{self.addr(i)}/15", "dev", "wan0")
            _ip("-n", ns, "link", "set", "dev", "wan0", "up", "txqueuelen", "1000")

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self._fwd and self._fwd.stdout
        fd = self._fwd.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], timeout_s)
        if not ready:
            raise TimeoutError(f"delay line silent for {timeout_s}s")
        line = self._fwd.stdout.readline()
        if not line:
            raise RuntimeError(f"delay line exited ({self._fwd.poll()})")
        return json.loads(line)

    def close(self) -> None:
        """Stop our processes and the forwarder, delete the namespaces (and so the devices). Idempotent."""
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 10
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        self.procs.clear()
        for ns in self.ns:
            _kill_inside(ns)  # whatever the caller started without popen()
        if self._fwd is not None:
            try:
                if self._fwd.stdin:
                    self._fwd.stdin.close()  # end of file: the forwarder closes its devices and exits
                self._fwd.wait(5)
            except (subprocess.TimeoutExpired, BrokenPipeError):
                self._fwd.kill()
                self._fwd.wait(5)
            if self._fwd.stdout:
                self._fwd.stdout.close()
            self._fwd = None
        for ns in self.ns:
            _ip("netns", "del", ns, check=False)
        self.ns.clear()
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        atexit.unregister(self.close)

    def __enter__(self) -> WanEmulator:
        """Start; see ``start()``."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Tear everything down."""
        self.close()


def _sigterm_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the with block, so close() runs
